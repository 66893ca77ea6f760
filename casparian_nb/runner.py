"""Standalone runs: ``casparian run PLUGIN INPUT...`` without a sentinel.

The same plugin hosts, lineage, staging and promotion the workers use, driven in-process: one
job per input file on up to ``parallel`` warm hosts; this process is the committer that promotes
each successful job's outputs. One bad file does not stop the others.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import plugins, sinks
from ._inputs import expand_inputs
from .config import Settings, load_settings
from .worker.pool import HostPool, HostResult

__all__ = ["FileResult", "RunResult", "run"]


@dataclass
class FileResult:
    """The outcome of one input file."""

    job_id: str
    input_file: str
    status: str  # COMPLETED | FAILED | ABORTED
    rows: dict[str, int] = field(default_factory=dict)
    quarantine_rows: int = 0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunResult:
    """Summary of a standalone run (``str()`` is the human summary)."""

    run_id: str
    plugin_name: str
    plugin_version: str
    sink: str
    mode: str
    files: list[FileResult]
    duration_s: float

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status != "COMPLETED"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def rows(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.files:
            for name, n in f.rows.items():
                total[name] = total.get(name, 0) + n
        return total

    @property
    def quarantine_rows(self) -> int:
        return sum(f.quarantine_rows for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "plugin_name": self.plugin_name,
            "plugin_version": self.plugin_version, "sink": self.sink, "mode": self.mode,
            "files": len(self.files), "succeeded": len(self.files) - len(self.failed),
            "failed": len(self.failed), "rows": self.rows,
            "quarantine_rows": self.quarantine_rows, "duration_s": round(self.duration_s, 3),
            "jobs": [f.to_dict() for f in self.files],
        }

    def __str__(self) -> str:
        lines = [
            f"casparian run {self.plugin_name} {self.plugin_version}: {len(self.files)} files, "
            f"{len(self.files) - len(self.failed)} succeeded, {len(self.failed)} failed "
            f"in {self.duration_s:.2f}s"
        ]
        for name, n in sorted(self.rows.items()):
            lines.append(f"  rows   {name}: {n:,}")
        if self.quarantine_rows:
            lines.append(f"  quarantined rows: {self.quarantine_rows:,} (see the *_quarantine outputs)")
        for f in self.failed:
            lines.append(f"  failed {f.input_file}: {f.error}")
        lines.append(f"  outputs: {self.sink} (mode {self.mode})")
        return "\n".join(lines)


class _Progress:
    """A one-line progress bar on a terminal's stderr; silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and total > 0
        self._last = 0.0
        self._lock = threading.Lock()

    def step(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += 0 if ok else 1
            now = time.monotonic()
            if self.enabled and (now - self._last > 0.1 or self.done == self.total):
                self._last = now
                width = 30
                filled = int(width * self.done / self.total)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                                 f"  failed {self.failed}")
                if self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()


def _one_line(error: dict[str, Any] | None, fallback: str) -> str:
    if not error:
        return fallback
    return f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".strip()


def run(
    plugin: str | Path,
    inputs: str | Path | Iterable[str | Path],
    *,
    sink: str | None = None,
    mode: str = "append",
    parallel: int | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
    progress: bool | None = None,
    timeout: float | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> RunResult:
    """Run ``plugin`` over ``inputs`` (files, directories, globs) and promote the outputs.

    Returns a :class:`RunResult`; raises a :class:`~casparian_nb.errors.CasparianError` only
    for problems that stop the whole run (bad plugin, bad sink, no inputs).
    """
    settings = settings or load_settings(home)
    started = time.perf_counter()
    plugin_path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    spec = plugins.inspect_plugin(plugin_path)
    plugins.check_trust(spec, settings.trust)
    sink_uri = sinks.parse_sink_uri(sink or settings.effective_default_sink)
    sink_mode = sinks.SinkMode.parse(mode)
    specs: Sequence[str | Path] = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files = expand_inputs(specs)

    run_id = uuid.uuid4().hex[:12]
    processed_at = datetime.now(UTC).isoformat()
    jobs = [
        {
            "job_id": f"run-{run_id}-{i:06d}",
            "plugin_path": str(spec.path),
            "plugin_source_hash": spec.source_hash,
            "plugin_name": spec.name,
            "parser_version": spec.version,
            "input_file": str(path),
            "sink": str(sink_uri),
            "mode": sink_mode.value,
            "staging_root": str(settings.staging_dir),
            "processed_at": processed_at,
            "attempt": 1,
        }
        for i, path in enumerate(files)
    ]
    run_job_ids = frozenset(j["job_id"] for j in jobs)
    size = max(1, min(parallel or settings.effective_slots, len(jobs)))
    bar = _Progress(len(jobs), sys.stderr.isatty() if progress is None else progress)
    promote_lock = threading.Lock()  # this process is the one committer for the sink
    results: list[FileResult] = []

    def finish(job: dict[str, Any], res: HostResult) -> FileResult:
        out = FileResult(job["job_id"], job["input_file"], "FAILED",
                         duration_ms=float(res.data.get("duration_ms", 0.0)))
        if res.status == "SUCCESS":
            staged = sinks.StagedJob.from_dict(res.data["staged"])
            try:
                with promote_lock:
                    artifacts = sinks.promote(staged, mode=sink_mode, run_job_ids=run_job_ids)
            except Exception as exc:  # one bad promotion must not stop the other files
                sinks.discard(staged)
                out.error = f"{type(exc).__name__}: {exc}"
                return out
            out.status = "COMPLETED"
            out.rows = dict(res.data.get("rows", {}))
            out.quarantine_rows = int(res.data.get("quarantine_rows", 0))
            out.artifacts = [a.to_dict() for a in artifacts]
        elif res.status == "ABORTED":
            out.status = "ABORTED"
            out.error = str(res.data.get("reason", "aborted"))
        else:
            out.error = _one_line(res.error, "failed")
        return out

    with HostPool(size, log_dir=settings.logs_dir, cancel_grace=settings.cancel_grace,
                  memory_limit_mb=settings.job_memory_limit_mb, name="run") as pool:
        limit = timeout if timeout is not None else settings.job_timeout
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="cf-run") as ex:
            futures = {ex.submit(pool.run, job, timeout=limit): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                file_result = finish(job, fut.result())
                results.append(file_result)
                bar.step(file_result.status == "COMPLETED")
                if on_file is not None:
                    on_file(file_result)

    order = {j["job_id"]: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r.job_id])
    return RunResult(run_id, spec.name, spec.version, str(sink_uri), sink_mode.value, results,
                     time.perf_counter() - started)

"""Standalone runs: ``casparian run PLUGIN INPUT...`` without a sentinel.

The same plugin hosts, lineage, staging and promotion the workers use, driven in-process: one
job per input file on up to ``parallel`` warm hosts; this process is the committer that promotes
each successful job's outputs. One bad file does not stop the others.

Each run stages under ``<home>/staging/run-<run id>/`` with an ``OWNER`` file naming this
process. A run that is killed outright (``kill -9``) leaves that directory behind; the next run
in the same home finishes any promotion it interrupted (:func:`casparian_nb.sinks.recover`,
so each job's outputs appear all together or not at all) and removes the rest.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from . import contracts, lineage, plan, plugins, sinks
from ._inputs import expand_inputs
from ._progress import ProgressCounts, ProgressSink, terminal_progress
from .config import Settings, load_settings
from .errors import CasparianError, PluginError, SinkModeError
from .joblogs import job_log_path, job_logs_root
from .protocol import (
    ErrorInfo,
    HostJob,
    InputDecision,
    JobSpec,
    JobStatus,
    QuarantinePolicy,
    Receipt,
    ReceiptStatus,
)
from .sinks.staging import JOURNAL
from .store import StateReader
from .store.ledger import LedgerRecord, RunLedger
from .worker.pool import HostPool

__all__ = ["FileResult", "RunResult", "run"]


@dataclass(frozen=True)
class FileResult:
    """The outcome of one input file."""

    job_id: str
    input_file: str
    status: JobStatus  # COMPLETED | FAILED | ABORTED
    rows: dict[str, int] = field(default_factory=dict)
    quarantine_rows: int = 0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    duration_ms: float = 0.0
    #: FAILED by the plugin: the remote traceback (``casparian run -v`` / ``--json``).
    traceback: str | None = None
    #: The file of its captured output, when it wrote any (:mod:`casparian_nb.joblogs`).
    log_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def details(self, indent: str = "    ") -> list[str]:
        """The remote traceback and where the captured output is, as indented lines."""
        lines = [indent + ln for ln in (self.traceback or "").rstrip("\n").splitlines()]
        return lines + ([f"{indent}output: {self.log_path}"] if self.log_path else [])


@dataclass(frozen=True)
class RunResult:
    """Summary of a standalone run (``str()`` is the human summary)."""

    run_id: str
    plugin_name: str
    plugin_version: str
    sink: str
    mode: str
    files: tuple[FileResult, ...]
    duration_s: float
    #: Inputs not run: every planned output already materialized by this plugin and source.
    skipped: tuple[str, ...] = ()
    #: Inputs not run because this plugin version already materialized them, but from a
    #: different source of it (F15): ``force=True`` / ``--force`` re-runs them.
    stale: tuple[str, ...] = ()

    @property
    def ran(self) -> int:
        """How many files ran (completed, failed or aborted)."""
        return len(self.files)

    @property
    def failed(self) -> list[FileResult]:
        """The files that did not complete (failed or aborted), in input order."""
        return [f for f in self.files if f.status != JobStatus.COMPLETED]

    @property
    def succeeded(self) -> int:
        """How many files completed."""
        return len(self.files) - len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def rows(self) -> dict[str, int]:
        """Rows written per output, summed over the files."""
        total: dict[str, int] = {}
        for f in self.files:
            for name, n in f.rows.items():
                total[name] = total.get(name, 0) + n
        return total

    @property
    def quarantine_rows(self) -> int:
        return sum(f.quarantine_rows for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The ``casparian run --json`` document."""
        return {
            "run_id": self.run_id, "plugin_name": self.plugin_name,
            "plugin_version": self.plugin_version, "sink": self.sink, "mode": self.mode,
            "files": len(self.files), "ran": self.ran, "succeeded": self.succeeded,
            "failed": len(self.failed), "skipped": len(self.skipped), "stale": len(self.stale),
            "stale_files": list(self.stale), "rows": self.rows,
            "quarantine_rows": self.quarantine_rows, "duration_s": round(self.duration_s, 3),
            "jobs": [f.to_dict() for f in self.files],
        }

    def _counts(self) -> str:
        total = self.ran + len(self.skipped) + len(self.stale)
        return (f"{total} files, {self.succeeded} succeeded, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped, {len(self.stale)} stale")

    def __str__(self) -> str:
        return self.format()

    def format(self, *, failures: bool = True, verbose: bool = False) -> str:
        """The human summary: with ``failures``, a line per failed file, and with
        ``verbose`` under it its remote traceback and the file holding its captured output."""
        lines = [
            f"casparian run {self.plugin_name} {self.plugin_version}: {self._counts()} "
            f"in {self.duration_s:.2f}s"
        ]
        for name, n in sorted(self.rows.items()):
            lines.append(f"  rows   {name}: {n:,}")
        if self.quarantine_rows:
            lines.append(f"  quarantined rows: {self.quarantine_rows:,} (see the *_quarantine outputs)")
        for f in self.failed if failures else ():
            lines.append(f"  {f.status.lower()} {f.input_file}: {f.error}")
            if verbose:
                lines += f.details()
        lines.append(f"  outputs: {self.sink} (mode {self.mode})")
        if self.stale:
            lines.append("  warning: " + plan.stale_warning(len(self.stale), self.plugin_name,
                                                          self.plugin_version, flag="--force"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"RunResult({self.plugin_name} {self.plugin_version}: {self._counts()}, "
                f"rows={self.rows})")

    def _repr_html_(self) -> str:
        failed = "".join(f"<li>{html.escape(f.input_file)}: {html.escape(str(f.error))}</li>"
                         for f in self.failed)
        stale = ("<p><b>warning:</b> " + html.escape(plan.stale_warning(
            len(self.stale), self.plugin_name, self.plugin_version, flag="force=True"))
            + "</p>") if self.stale else ""
        rows = ", ".join(f"{html.escape(k)}: {v:,}" for k, v in sorted(self.rows.items()))
        return (f"<div class='cf-run-result'><b>casparian run</b> "
                f"{html.escape(self.plugin_name)} {html.escape(self.plugin_version)}: "
                f"{html.escape(self._counts())} in {self.duration_s:.2f}s"
                f"<br>rows {rows or '0'}{stale}"
                + (f"<ul>{failed}</ul>" if failed else "") + "</div>")


def _progress_counts(done: int, finished: int, total: int, slots: int) -> ProgressCounts:
    """``done`` of ``finished`` files completed, of ``total``, on ``slots`` hosts."""
    left = total - finished
    return ProgressCounts(done, finished - done, min(slots, left), max(0, left - slots))


def _one_line(error: ErrorInfo | None, fallback: str) -> str:
    if not error:
        return fallback
    return f"{error.ename}: {error.evalue}".strip()


def run(
    plugin: str | Path,
    inputs: str | Path | Iterable[str | Path],
    *,
    sink: str | Mapping[str, str] | None = None,
    mode: str = "append",
    parallel: int | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
    progress: bool | ProgressSink | None = None,
    timeout: float | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    quarantine: Mapping[str, Any] | QuarantinePolicy | None = None,
    force: bool = False,
) -> RunResult:
    """Run ``plugin`` over ``inputs`` (files, directories, globs) and promote the outputs.

    Returns a :class:`RunResult`; raises a :class:`~casparian_nb.errors.CasparianError` only
    for problems that stop the whole run: a bad plugin (including one that fails to import in
    the host), a bad sink, no inputs, or ``mode="error"`` finding data of another run in an
    output — then nothing of this run is written. Jobs still running are killed.

    ``sink`` is one URI, or a mapping of output names to URIs with ``"*"`` for the rest
    (``{"orders": "duckdb://db.duckdb", "*": "parquet://out"}``); a file's outputs promote
    into all their sinks or none.

    ``quarantine={"max_pct": 10, "max_rows": 1000}`` fails (and promotes nothing of) a file
    whose output sends more rows to quarantine; it overrides the plugin's ``quarantine``.

    Inputs whose every planned output this plugin already materialized (by a standalone run
    or a sentinel of this home) are skipped by the sentinel's rule (:func:`plan.decide`);
    ``force=True`` runs them anyway.
    """
    settings = settings or load_settings(home)
    started = time.perf_counter()
    plugin_path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    spec = plugins.inspect_plugin(plugin_path)
    plugins.check_trust(spec, settings.trust)
    sink_uri = sinks.SinkRouting.parse(sink or settings.effective_default_sink)
    sink_mode = sinks.SinkMode.parse(mode)
    policy = contracts.quarantine_policy(quarantine)
    specs: Sequence[str | Path] = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files = expand_inputs(specs)
    version = plan.declared_version(spec.version, spec.version_declared)
    targets = plan.output_plan(manifest=spec.manifest, default_output=spec.default_output,
                               sink_uri=str(sink_uri), sink_mode=sink_mode.value)
    ledger = RunLedger.open(settings.run_ledger)
    try:
        return _run(spec, files, ledger, targets, version, sink_uri, sink_mode, settings,
                    parallel=parallel, progress=progress, timeout=timeout, on_file=on_file,
                    force=force, started=started, policy=policy)
    finally:
        ledger.close()


def _decide(files: Sequence[Path], spec: plugins.PluginSpec, ledger: RunLedger,
            targets: list[plan.OutputTarget], version: str | None, settings: Settings,
            force: bool) -> dict[Path, tuple[InputDecision, str, list[str]]]:
    """Each input's decision, source hash and materialization keys: the sentinel's rule
    over this home's standalone runs and, when there is one, its state DB."""
    key_version = plan.key_version(version, spec.source_hash)
    keyed = []
    for path in files:
        source_hash = lineage.hash_file(path)
        keyed.append((path, source_hash,
                      plan.plan_keys(targets, source_hash, spec.name, key_version)))
    recorded: dict[str, str | None] = {}
    if not force:
        every = [k for _, _, keys in keyed for k in keys]
        reader = StateReader.open_if_ready(settings.state_db)
        if reader is not None:
            with reader:
                recorded.update(reader.materialized_by(every))
        recorded.update(ledger.materialized_by(every))
    return {path: (plan.decide(keys, recorded, spec.source_hash, force=force), source_hash, keys)
            for path, source_hash, keys in keyed}


def _run(spec: plugins.PluginSpec, all_files: Sequence[Path], ledger: RunLedger,
         targets: list[plan.OutputTarget], version: str | None, sink_uri: sinks.SinkRouting,
         sink_mode: sinks.SinkMode, settings: Settings, *, parallel: int | None,
         progress: bool | ProgressSink | None, timeout: float | None,
         on_file: Callable[[FileResult], None] | None, force: bool,
         started: float, policy: QuarantinePolicy | None) -> RunResult:
    decisions = _decide(all_files, spec, ledger, targets, version, settings, force)
    files = [p for p in all_files if decisions[p][0] == InputDecision.RUN]
    skipped = tuple(str(p) for p in all_files if decisions[p][0] == InputDecision.SKIP)
    stale = tuple(str(p) for p in all_files if decisions[p][0] == InputDecision.STALE)
    if not files:
        return RunResult(uuid.uuid4().hex[:12], spec.name, spec.version, str(sink_uri),
                         sink_mode.value, (), time.perf_counter() - started, skipped, stale)
    sweep_stale_runs(settings.staging_dir)
    run_id = uuid.uuid4().hex[:12]
    staging_root = _claim_staging(settings.staging_dir, run_id)
    processed_at = datetime.now(UTC).isoformat()
    jobs = [
        HostJob(job=JobSpec(
            job_id=f"run-{run_id}-{i:06d}", input_file=str(path), plugin_path=str(spec.path),
            plugin_name=spec.name, plugin_name_declared=spec.name_declared,
            plugin_source_hash=spec.source_hash, parser_version=version,
            sink=str(sink_uri), mode=sink_mode.value, processed_at=processed_at,
            quarantine=policy,
        ), attempt=1, staging_root=str(staging_root), sync_staging=False,
            log_root=str(job_logs_root(settings.home)), redact_log=settings.tape_redact)
        for i, path in enumerate(files)
    ]
    run_job_ids = frozenset(j.job.job_id for j in jobs)
    size = max(1, min(parallel or settings.effective_slots, len(jobs)))
    # progress: a sink (the notebook's bar), or a terminal bar (True; None: when on a TTY)
    bar = progress if not isinstance(progress, bool | None) else (
        terminal_progress(f"run {spec.name}", progress) if jobs else None)
    results: list[FileResult] = []
    completed = 0  # of results (the progress bar counts them as each file ends)
    # Set when the whole run must stop: mode=error met another run's data, or the plugin
    # cannot even be loaded (the same for every file). Running jobs are then killed.
    stop: CasparianError | None = None

    def ended(attempt: HostJob, res: Receipt) -> Callable[..., FileResult]:
        job = attempt.job
        log = job_log_path(attempt.log_root or "", job.job_id, attempt.attempt)
        return functools.partial(FileResult, job.job_id, job.input_file,
                                 duration_ms=float(res.duration_ms or 0.0),
                                 log_path=str(log) if log.exists() else None)

    def commit(group: list[tuple[HostJob, Receipt]]) -> list[FileResult]:
        """The outcomes of a group of receipts, promoting the successful ones together."""
        nonlocal stop
        out: dict[int, FileResult] = {}
        todo: list[tuple[int, sinks.StagedJob]] = []
        for i, (attempt, res) in enumerate(group):
            done = ended(attempt, res)
            if res.status == ReceiptStatus.ABORTED:
                out[i] = done(JobStatus.ABORTED, error=res.reason or "aborted")
            elif res.status != ReceiptStatus.SUCCESS:
                if stop is None and res.error and res.error.phase == "load":
                    ename, evalue = res.error.ename, res.error.evalue
                    stop = PluginError(evalue if ename == "PluginError" else f"{ename}: {evalue}")
                out[i] = done(JobStatus.FAILED, error=_one_line(res.error, "failed"),
                              traceback=(res.error.traceback or None) if res.error else None)
            else:
                staged = sinks.StagedJob.from_dict(res.staged or {})
                if stop is not None:
                    sinks.discard(staged)
                    out[i] = done(JobStatus.ABORTED, error=f"run stopped: {stop}")
                else:
                    todo.append((i, staged))
        # Hosts staged without fsync (sync_staging=False): the staged files become durable
        # with the group's journal, and one ledger transaction records the group.
        promoted = sinks.promote_group([staged for _, staged in todo], mode=sink_mode,
                                       run_job_ids=run_job_ids, sync=True) if todo else []
        records = []
        for (i, staged), got in zip(todo, promoted, strict=True):
            attempt, res = group[i]
            done = ended(attempt, res)
            if isinstance(got, Exception):  # one bad promotion must not stop the others
                with contextlib.suppress(Exception):
                    sinks.discard(staged)
                if isinstance(got, SinkModeError):
                    stop = got
                out[i] = done(JobStatus.FAILED, error=f"{type(got).__name__}: {got}")
                continue
            _, source_hash, keys = decisions[Path(attempt.job.input_file)]
            records.append(LedgerRecord(keys, source_hash, spec.name, version, spec.source_hash,
                                        attempt.job.input_file, run_id))
            out[i] = done(JobStatus.COMPLETED, rows=dict(res.rows or {}),
                          quarantine_rows=int(res.quarantine_rows or 0),
                          artifacts=[a.to_dict() for a in got])
        ledger.record_many(records)
        return [out[i] for i in range(len(group))]

    # Two stages, so a host never waits on the disk: one thread per host runs jobs back to
    # back and queues each receipt; one committer thread promotes what has queued meanwhile
    # as a group (one journal, one sync of the staged files and of each sink dir, one
    # ledger transaction): the disk's cost per file shrinks as the hosts get faster.
    limit = timeout if timeout is not None else settings.job_timeout
    pool: HostPool | None = None
    finished: queue.SimpleQueue[FileResult | BaseException] = queue.SimpleQueue()
    receipts: queue.SimpleQueue[tuple[HostJob, Receipt] | None] = queue.SimpleQueue()

    def committer() -> None:
        last = False
        while not last:
            item = receipts.get()
            if item is None:
                return
            group = [item]
            while len(group) < _GROUP_MAX:
                try:
                    item = receipts.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    last = True
                    break
                group.append(item)
            try:
                for result in commit(group):
                    finished.put(result)
            except BaseException as exc:  # a bug, or the ledger failed: the run stops
                finished.put(exc)
                return

    def attempt(job: HostJob) -> None:
        assert pool is not None
        try:
            receipt = pool.run(job, timeout=limit)
        except BaseException as exc:
            finished.put(exc)
            return
        receipts.put((job, receipt))

    committing = threading.Thread(target=committer, name="cf-commit", daemon=True)
    try:
        pool = HostPool(size, log_dir=settings.logs_dir, cancel_grace=settings.cancel_grace,
                        memory_limit_mb=settings.job_memory_limit_mb, name="run",
                        log_max_bytes=settings.host_log_max_mb * 1024 * 1024,
                        warm=str(spec.path))
        committing.start()
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="cf-run") as hosts:
            futures = [hosts.submit(attempt, job) for job in jobs]
            expected = len(jobs)
            stopped = False
            try:
                while len(results) < expected:
                    got = finished.get()
                    if isinstance(got, BaseException):
                        raise got
                    if stop is not None and not stopped:
                        stopped = True
                        # jobs not started never report; running ones are killed and do
                        expected -= sum(1 for f in futures if f.cancel())
                        for job_id in pool.running():
                            pool.cancel(job_id, f"run stopped: {stop}")
                    results.append(got)
                    completed += got.status == JobStatus.COMPLETED
                    if bar is not None:
                        bar.update(_progress_counts(completed, len(results), len(jobs), size))
                    if on_file is not None:
                        on_file(got)
            except BaseException:
                # Ctrl-C (or a bug): kill the hosts now rather than wait for their jobs.
                for f in futures:
                    f.cancel()
                pool.close()
                raise
    finally:
        if committing.is_alive():  # what has queued is promoted before recovery runs
            receipts.put(None)
            committing.join()
        if bar is not None:
            bar.finish(_progress_counts(completed, len(results), len(jobs), size))
        if pool is not None:
            pool.close()
        # Hosts are gone and this process is the committer: finish (or roll back) any
        # promotion an interrupt cut short, then drop what is left of this run's staging.
        with contextlib.suppress(Exception):
            sinks.recover(staging_root)
        _remove_tree(staging_root)
    if stop is not None:
        raise stop
    order = {j.job.job_id: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r.job_id])
    return RunResult(run_id, spec.name, spec.version, str(sink_uri), sink_mode.value,
                     tuple(results), time.perf_counter() - started, skipped, stale)


#: Most receipts promoted as one group (one journal, one ledger transaction).
_GROUP_MAX = 64


# -- staging ownership ----------------------------------------------------------------------

_OWNER = "OWNER"


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "create_time": psutil.Process().create_time()}


def _claim_staging(staging_dir: Path, run_id: str) -> Path:
    """Create ``<staging>/run-<id>/`` with an ``OWNER`` file, atomically (never seen empty)."""
    staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = staging_dir / f".run-{run_id}"
    tmp.mkdir(mode=0o700)
    (tmp / _OWNER).write_text(json.dumps(_me()), encoding="utf-8")
    final = staging_dir / f"run-{run_id}"
    os.rename(tmp, final)
    return final


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / _OWNER).read_text(encoding="utf-8"))
        proc = psutil.Process(int(owner["pid"]))
        return bool(abs(proc.create_time() - float(owner["create_time"])) < 1.0)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False


def sweep_stale_runs(staging_dir: Path, *, tmp_age: float = 60.0) -> list[str]:
    """Clean up after standalone runs that were killed: finish their interrupted promotions
    (all of a job's outputs appear, or none) and remove their staging. Returns the run dirs
    removed. Runs whose owner process is alive are left alone."""
    removed: list[str] = []
    if not staging_dir.is_dir():
        return removed
    now = time.time()
    for entry in sorted(staging_dir.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".run-"):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > tmp_age:
                    _remove_tree(entry)
            continue
        if not entry.name.startswith("run-") or _owner_alive(entry):
            continue
        try:
            sinks.recover(entry)
        except Exception:  # a broken journal must not block new runs; keep it for a human
            continue
        if not any((d / JOURNAL).exists() for d in entry.iterdir() if d.is_dir()):
            _remove_tree(entry)
            removed.append(entry.name)
    return removed


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)

"""What a standalone run returns: :class:`RunResult`, with a :class:`FileResult` per input
file that ran — the ``casparian run`` summary (``str()``), its ``--json`` document
(``to_dict()``) and the notebook's HTML repr.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, fields
from typing import Any

from . import plan
from .protocol import JobStatus

__all__ = ["FileResult", "RunResult"]


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

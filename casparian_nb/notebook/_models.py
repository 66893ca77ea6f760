"""What the controller hands back: Job, QueueStats, WaitResult — each with an HTML repr for
notebooks and a readable text repr everywhere else — plus the errors of waiting."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from ..errors import CasparianError, RemoteJobError
from ..protocol import FINISHED_JOB_STATUSES, JobStatus
from ._reprs import STATUS_COLORS, badge, esc, html_rows, kv_table, short_path, traceback_html

__all__ = ["Job", "QueueStats", "WaitInterrupted", "WaitResult", "WaitTimeoutError"]

TERMINAL = FINISHED_JOB_STATUSES
#: Final statuses that count as success for :attr:`WaitResult.ok`.
_OK = frozenset({JobStatus.COMPLETED, JobStatus.SKIPPED})
_SHOWN = ("status", "plugin_name", "parser_version", "input_file", "worker_id", "rows",
          "quarantine_rows", "retry_count", "attempt", "created_at", "claimed_at", "started_at",
          "ended_at", "sink_uri", "sink_mode", "error_kind", "error_message")


class WaitTimeoutError(CasparianError, TimeoutError):
    """``ctl.wait(timeout=...)`` ran out of time; the jobs keep running."""

    def __init__(self, message: str, pending: list[int]) -> None:
        super().__init__(message)
        self.pending = pending


class WaitInterrupted(KeyboardInterrupt):
    """Ctrl-C / "interrupt kernel" during ``ctl.wait()``; says how to cancel what is left.

    Still a KeyboardInterrupt, so "Run All" stops here; IPython shows just the message.
    """

    def __init__(self, message: str, pending: list[int]) -> None:
        super().__init__(message)
        self.pending = pending

    def _render_traceback_(self) -> list[str]:
        return [f"WaitInterrupted: {self.args[0]}"]


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the state DB has it (``ctl.job(id)``); ``raw`` holds every column, and any
    column is also an attribute (``job.submission_id``, ``job.outputs_json``, ...)."""

    id: int
    status: JobStatus
    plugin_name: str
    input_file: str
    parser_version: str | None = None
    worker_id: str | None = None
    rows: int = 0
    quarantine_rows: int = 0
    retry_count: int = 0
    attempt: int = 0
    created_at: str | None = None
    claimed_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    sink_uri: str | None = None
    sink_mode: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    traceback: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """The job of a state DB row (``StateReader.get_job``)."""
        def text(key: str) -> str | None:
            value = row.get(key)
            return None if value is None else str(value)

        return cls(
            id=int(row["id"]), status=JobStatus(row["status"]),
            plugin_name=str(row.get("plugin_name") or ""),
            input_file=str(row.get("input_file") or ""),
            parser_version=text("parser_version"), worker_id=text("worker_id"),
            rows=int(row.get("rows") or 0), quarantine_rows=int(row.get("quarantine_rows") or 0),
            retry_count=int(row.get("retry_count") or 0), attempt=int(row.get("attempt") or 0),
            created_at=text("created_at"), claimed_at=text("claimed_at"),
            started_at=text("started_at"), ended_at=text("ended_at"),
            sink_uri=text("sink_uri"), sink_mode=text("sink_mode"),
            error_kind=text("error_kind"), error_message=text("error_message"),
            traceback=text("traceback"), raw=dict(row))

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the other columns of the row.
        raw = object.__getattribute__(self, "raw")
        if name in raw:
            return raw[name]
        raise AttributeError(f"Job has no attribute or column {name!r}")

    @property
    def done(self) -> bool:
        """True once the job is COMPLETED, FAILED, ABORTED or SKIPPED."""
        return self.status in TERMINAL

    @property
    def error(self) -> RemoteJobError | None:
        """The plugin's failure with its remote traceback (None unless FAILED)."""
        if self.status != JobStatus.FAILED:
            return None
        message = self.error_message or ""
        ename, sep, evalue = message.partition(": ")
        if not sep or " " in ename:
            ename, evalue = "Error", message
        return RemoteJobError(ename, evalue, self.traceback or "",
                              job_id=str(self.id), input_file=self.input_file)

    def raise_for_status(self) -> Job:
        """Raise the job's :class:`RemoteJobError` if it FAILED; else return the job."""
        err = self.error
        if err is not None:
            raise err
        return self

    def _fields(self) -> list[tuple[str, Any]]:
        values = [(k, getattr(self, k)) for k in _SHOWN]
        return [(k, v) for k, v in values if v not in (None, "", 0) or k in ("status", "rows")]

    def __repr__(self) -> str:
        lines = [f"Job {self.id}: {self.status}"]
        lines += [f"  {k:>16}: {v}" for k, v in self._fields() if k != "status"]
        if self.status == JobStatus.FAILED and self.traceback:
            lines += ["  remote traceback:",
                      *("    " + ln for ln in self.traceback.rstrip().splitlines())]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [("status", badge(self.status))]
        rows += [(k, esc(short_path(v, 80) if k == "input_file" else v))
                 for k, v in self._fields() if k != "status"]
        html = kv_table(rows, f"Job {self.id}")
        err = self.error
        if err is not None and self.traceback:
            html += traceback_html(err.ename, err.evalue, self.traceback)
        return html


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Jobs per status (``ctl.stats()``): ``stats.queued``, ``stats["running"]``, ..."""

    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    aborted: int = 0
    skipped: int = 0
    #: RUNNING jobs being aborted (counted in ``running`` too).
    cancel_requested: int = 0
    #: Every job, whatever its status.
    total: int = 0
    #: Loads the jobs behind the counts (``ctl.jobs``-like), for :meth:`plot`.
    history: Callable[[], pd.DataFrame] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> QueueStats:
        """From ``StateReader.queue_stats()`` (lower-case status -> count)."""
        values: dict[str, Any] = {f: int(counts.get(f, 0)) for f in _STATS_FIELDS}
        return cls(**values)

    @property
    def counts(self) -> dict[str, int]:
        """Lower-case status (and ``cancel_requested``, ``total``) -> count."""
        return {f: getattr(self, f) for f in _STATS_FIELDS}

    def __getitem__(self, status: str) -> int:
        return self.counts.get(status.lower(), 0)

    def to_dict(self) -> dict[str, int]:
        """:attr:`counts` as a new dict."""
        return self.counts

    def __repr__(self) -> str:
        parts = [f"{k} {v}" for k, v in self.counts.items() if v and k != "total"]
        return f"QueueStats(total {self.total}" + (": " + ", ".join(parts) if parts else "") + ")"

    def plot(self) -> Any:
        """Jobs per status over time and throughput (an Altair chart with a static SVG; the
        current counts as bars when nothing has finished or there is no job history)."""
        from .charts import stats_chart

        jobs = self.history() if self.history is not None else pd.DataFrame()
        return stats_chart(jobs, self.counts)

    def _repr_html_(self) -> str:
        cells = [(badge(k.upper()) if k.upper() in STATUS_COLORS else esc(k), esc(f"{v:,}"))
                 for k, v in self.counts.items() if k != "total"]
        return html_rows(["status", "jobs"], [*cells, ("<b>total</b>", f"<b>{self.total:,}</b>")])


_STATS_FIELDS = tuple(f.name for f in fields(QueueStats) if f.name != "history")


@dataclass(frozen=True, slots=True)
class WaitResult:
    """What ``ctl.wait()`` saw when every job it waited for had finished: each job's final
    status, or ``"UNKNOWN"`` for a job the state DB does not have."""

    statuses: dict[int, str]

    @property
    def counts(self) -> dict[str, int]:
        """Final status -> how many of the jobs ended so."""
        out: dict[str, int] = {}
        for s in self.statuses.values():
            out[s] = out.get(s, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """True when no job FAILED or was ABORTED."""
        return all(s in _OK for s in self.statuses.values())

    @property
    def failed(self) -> list[int]:
        """Ids of the jobs that FAILED, ascending."""
        return sorted(j for j, s in self.statuses.items() if s == JobStatus.FAILED)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(self.counts.items()))
        more = f"; failed jobs: {self.failed[:10]}" if self.failed else ""
        n = len(self.statuses)
        return f"WaitResult({n} job{'s' * (n != 1)}: {parts}{more})"

    def _repr_html_(self) -> str:
        chips = " ".join(f"{badge(k)} {v:,}" for k, v in sorted(self.counts.items()))
        more = (f"<div style='font-size:12px'>failed: {esc(self.failed[:20])} — "
                "<code>ctl.job(id)</code> shows the traceback</div>") if self.failed else ""
        return f"<div>{len(self.statuses):,} jobs finished: {chips}{more}</div>"

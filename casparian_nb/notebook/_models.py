"""What the controller hands back: Job, QueueStats, WaitResult — each with an HTML repr for
notebooks and a readable text repr everywhere else — plus the errors of waiting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CasparianError, RemoteJobError
from ._reprs import STATUS_COLORS, badge, esc, html_rows, kv_table, short_path

__all__ = ["Job", "QueueStats", "WaitInterrupted", "WaitResult", "WaitTimeoutError"]

TERMINAL = frozenset({"COMPLETED", "FAILED", "ABORTED", "SKIPPED"})
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


@dataclass
class Job:
    """One job as the state DB has it (``ctl.job(id)``); ``raw`` holds every column."""

    id: int
    status: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(int(row["id"]), str(row["status"]), dict(row))

    def __getattr__(self, name: str) -> Any:
        # Columns as attributes: job.plugin_name, job.rows, job.error_message, ...
        raw = self.__dict__.get("raw", {})
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
        if self.status != "FAILED":
            return None
        message = str(self.raw.get("error_message") or "")
        ename, sep, evalue = message.partition(": ")
        if not sep or " " in ename:
            ename, evalue = "Error", message
        return RemoteJobError(ename, evalue, str(self.raw.get("traceback") or ""),
                              job_id=str(self.id), input_file=self.raw.get("input_file"))

    def raise_for_status(self) -> Job:
        """Raise the job's :class:`RemoteJobError` if it FAILED; else return the job."""
        err = self.error
        if err is not None:
            raise err
        return self

    def _fields(self) -> list[tuple[str, Any]]:
        return [(k, self.raw.get(k)) for k in _SHOWN if self.raw.get(k) not in (None, "", 0)
                or k in ("status", "rows")]

    def __repr__(self) -> str:
        lines = [f"Job {self.id}: {self.status}"]
        lines += [f"  {k:>16}: {v}" for k, v in self._fields() if k != "status"]
        tb = self.raw.get("traceback")
        if self.status == "FAILED" and tb:
            lines += ["  remote traceback:", *("    " + ln for ln in str(tb).rstrip().splitlines())]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [("status", badge(self.status))]
        rows += [(k, esc(short_path(v, 80) if k == "input_file" else v))
                 for k, v in self._fields() if k != "status"]
        html = kv_table(rows, f"Job {self.id}")
        tb = self.raw.get("traceback")
        if self.status == "FAILED" and tb:
            html += ('<details open><summary style="cursor:pointer">remote traceback</summary>'
                     f'<pre style="font-size:11px;color:{STATUS_COLORS["FAILED"]};'
                     f'white-space:pre-wrap">{esc(tb)}</pre></details>')
        return html


@dataclass
class QueueStats:
    """Jobs per status (``ctl.stats()``)."""

    counts: dict[str, int]

    def __getitem__(self, status: str) -> int:
        return self.counts.get(status.lower(), 0)

    @property
    def total(self) -> int:
        return self.counts.get("total", 0)

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def __repr__(self) -> str:
        parts = [f"{k} {v}" for k, v in self.counts.items() if v and k != "total"]
        return f"QueueStats(total {self.total}" + (": " + ", ".join(parts) if parts else "") + ")"

    def _repr_html_(self) -> str:
        cells = [(badge(k.upper()) if k.upper() in STATUS_COLORS else esc(k), esc(f"{v:,}"))
                 for k, v in self.counts.items() if k != "total"]
        return html_rows(["status", "jobs"], [*cells, ("<b>total</b>", f"<b>{self.total:,}</b>")])


@dataclass
class WaitResult:
    """What ``ctl.wait()`` saw when every job it waited for had finished."""

    statuses: dict[int, str]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.statuses.values():
            out[s] = out.get(s, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """True when no job FAILED or was ABORTED."""
        return all(s in ("COMPLETED", "SKIPPED") for s in self.statuses.values())

    @property
    def failed(self) -> list[int]:
        return sorted(j for j, s in self.statuses.items() if s == "FAILED")

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

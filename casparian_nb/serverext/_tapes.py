"""What the `.tape` viewer shows, built with the notebook timeline's own code — the one seam
between the server extension and the timeline front end.

The viewer mounts ``casparian_nb/notebook/static/timeline.js`` (the same module the
:class:`~casparian_nb.notebook.timeline.TimelineWidget` renders) on the JSON below:
``data`` is the widget's compact timeline, ``state``/``position`` its replayed scrubber state.
Swapping in another payload builder means changing the imports in this module only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..notebook.timeline import _compact, _event_label, _job_summary
from ..protocol import JobStatus
from ..tape import ReplayIndex, explain_tape, validate_tape

__all__ = ["TapeView", "tape_document"]

#: Tape statuses of a job still in the queue or on a worker (as the widget's state panel).
_UNFINISHED = frozenset(s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                               JobStatus.RUNNING))
_ACTIVE_LIMIT = 100
_EPS = 1e-6
#: Validation issues sent to the browser (the count says how many there were).
_ISSUE_LIMIT = 200


class TapeView:
    """One loaded tape: its compact timeline and the replayed queue at any moment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = ReplayIndex(path)
        self.data: dict[str, Any] = _compact(self.index)

    def _start(self) -> float | None:
        events = self.index.events
        return events[0].time if events else None

    def at(self, *, t: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """``{"state", "position"}`` after the event ``seq``, at ``t`` seconds from the start,
        or (neither) at the end — what the widget's scrubber shows there."""
        start = self._start()
        if seq is not None:
            count = self.index.count_at(seq=seq)
        elif t is not None and start is not None and t < self.data.get("duration_s", 0.0):
            count = self.index.count_at(time=start + max(0.0, t) + _EPS)
        else:
            count = len(self.index)
        if t is None:
            event = self.index.events[count - 1] if count else None
            t = (event.time or start or 0.0) - (start or 0.0) if event else 0.0
        seq_at = self.index.events[count - 1].seq if count else None
        return {"state": self._state(count), "position": {"t": round(float(t), 6), "seq": seq_at}}

    def _state(self, count: int) -> dict[str, Any]:
        full = self.index.reducer_after(count).state()
        jobs: Mapping[str, Mapping[str, Any]] = full["jobs"]
        active = [j for j in jobs.values() if j["status"] in _UNFINISHED]
        event = self.index.events[count - 1] if count else None
        return {
            "seq": full["seq"], "timestamp": full["timestamp"], "event_count": count,
            "event": None if event is None else _event_label(event.kind, event.name),
            "counts": full["counts"], "jobs_total": len(jobs),
            "aborting": sum(1 for j in active if j["cancel_requested"]),
            "active": [_job_summary(j) for j in active[:_ACTIVE_LIMIT]],
            "workers": [{"worker_id": w["worker_id"], "status": w["status"], "jobs": w["jobs"]}
                        for w in full["workers"].values()],
            "retries": full["retries"], "cancels": full["cancels"],
        }

    def event(self, seq: int) -> dict[str, Any] | None:
        """The full envelope of the event ``seq`` (None if the tape has none)."""
        return next((e.to_dict() for e in self.index.events if e.seq == seq), None)


class ViewCache(Protocol):
    def get(self, path: Path) -> TapeView: ...


def tape_document(path: Path, title: str, *, views: ViewCache | None = None) -> dict[str, Any]:
    """Everything the viewer opens with: validation, the explain summary, the timeline and
    the scrubber at the end. A tape too damaged to replay still answers, with its errors.
    ``views`` keeps the loaded tape for the scrubbing requests that follow."""
    report = validate_tape(path).to_json()
    report["issues"] = report["issues"][:_ISSUE_LIMIT]
    doc: dict[str, Any] = {"title": title, "validation": report, "explain": None,
                           "explain_text": "", "data": None, "replay_error": None}
    try:
        explained = explain_tape(path)
        view = views.get(path) if views is not None else TapeView(path)
    except ValueError as exc:  # TapeError: nothing readable; the validation says why
        doc["replay_error"] = _first_line(exc).replace(str(path), title)
        return doc
    summary = {k: v for k, v in explained.to_json().items() if k != "jobs"}
    doc.update(explain=summary, explain_text=_summary_text(summary), data=view.data, **view.at())
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _summary_text(summary: Mapping[str, Any]) -> str:
    """A few lines of ``casparian tape explain``: jobs per status, commands, errors."""
    counts = summary.get("summary", {})
    lines = [f"{summary.get('event_count', 0)} events, {counts.get('total', 0)} jobs, "
             f"{summary.get('duration_s') or 0:.2f} s",
             "jobs: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                  if k not in ("total", "total_rows") and v),
             f"rows written: {counts.get('total_rows', 0)} · retries {summary.get('retries', 0)}"
             f" · cancels {summary.get('cancels', 0)}",
             "commands: " + (", ".join(summary.get("commands", [])[:20]) or "none")]
    lines += [f"error: {e}" for e in summary.get("errors", [])[:10]]
    return "\n".join(lines)

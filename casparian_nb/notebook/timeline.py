"""The tape timeline widget: what happened, when, on which worker — and the queue at any moment.

>>> cf.timeline("tapes/golden_session.tape")                        # doctest: +SKIP
>>> ctl.timeline()                                                  # the live session tape

One lane per worker (a job that never reached a worker gets its own lane), a bar per job
attempt from dispatch to its end coloured by the job's final status, and markers for
commands, cancels, retries, errors and workers joining or leaving. Hover shows the event,
click shows its payload, the wheel zooms and dragging pans. The scrubber replays the queue
as the sentinel had it at the chosen moment, using the tape package's replay reducer
(:class:`~casparian_nb.tape.ReplayIndex`); no sentinel is needed at all.

Front-end → kernel messages (``static/timeline.js``)::

    {"type": "scrub", "t": 12.5}      seconds from the tape's start
    {"type": "scrub", "seq": 17}      or an event's seq (the step buttons)
    {"type": "payload", "seq": 17}    → answered with {"type": "payload", "seq", "event"}
    {"type": "reload"}                re-read the tape (a live session tape grows)

Only the compact timeline and the replayed state of the scrubber position are synced; event
payloads travel one at a time, on click.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..protocol import JobStatus
from ..tape import ReplayIndex, build_timeline

#: Tape statuses of a job still in the queue or on a worker.
_UNFINISHED = frozenset(s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                               JobStatus.RUNNING))

__all__ = ["TimelineWidget", "timeline"]

_STATIC = Path(__file__).parent / "static"
#: Jobs listed in the scrubber's state panel (the counts cover all of them).
_ACTIVE_LIMIT = 100
_EPS = 1e-6


def timeline(tape: str | os.PathLike[str] | ReplayIndex, **kwargs: Any) -> TimelineWidget:
    """An interactive timeline of ``tape`` (a file, or a loaded :class:`ReplayIndex`)."""
    return TimelineWidget(tape, **kwargs)


class TimelineWidget(anywidget.AnyWidget):
    """Lanes, bars and markers of one tape, with a replaying scrubber."""

    _esm = _STATIC / "timeline.js"
    _css = _STATIC / "timeline.css"

    #: ``{start, end, duration_s, lanes, bars, markers}`` (compact; see :func:`_compact`).
    data = traitlets.Dict().tag(sync=True)
    #: The replayed queue at the scrubber position.
    state = traitlets.Dict().tag(sync=True)
    #: Scrubber position: ``{"t": seconds from start, "seq": last event applied}``.
    position = traitlets.Dict().tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    reloadable = traitlets.Bool(False).tag(sync=True)

    def __init__(self, tape: str | os.PathLike[str] | ReplayIndex, *, title: str | None = None,
                 **kwargs: Any) -> None:
        self._path = None if isinstance(tape, ReplayIndex) else Path(tape)
        self._index = tape if isinstance(tape, ReplayIndex) else ReplayIndex(tape)
        data = _compact(self._index)
        end = len(self._index)
        super().__init__(data=data, state=self._state(end), reloadable=self._path is not None,
                         position={"t": data["duration_s"], "seq": self._seq_of(end)},
                         title=title or (self._path.name if self._path else "tape"), **kwargs)
        self.on_msg(self._on_frontend_msg)

    @property
    def index(self) -> ReplayIndex:
        """The loaded tape (events, snapshots) behind the widget."""
        return self._index

    # -- scrubbing ---------------------------------------------------------------------------
    def scrub(self, *, t: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """Move the scrubber to ``t`` seconds from the start, to event ``seq``, or (neither) to
        the end; returns the replayed state (also synced to the front-end)."""
        start = self._start_time()
        if seq is not None:
            count = self._index.count_at(seq=seq)
        elif t is not None and start is not None and t < self.data.get("duration_s", 0.0):
            # Bar times are rounded to microseconds; the tolerance keeps an event drawn at t
            # on the side of the scrubber it is drawn on.
            count = self._index.count_at(time=start + max(0.0, t) + _EPS)
        else:
            count = len(self._index)  # at (or past) the end: every event, whatever rounding
        state = self._state(count)
        if t is None:
            event = self._index.events[count - 1] if count else None
            t = (event.time or start or 0.0) - (start or 0.0) if event else 0.0
        with self.hold_sync():
            self.position = {"t": round(float(t), 6), "seq": self._seq_of(count)}
            self.state = state
        return state

    def _start_time(self) -> float | None:
        events = self._index.events
        return events[0].time if events else None

    def _seq_of(self, count: int) -> int | None:
        return self._index.events[count - 1].seq if count else None

    def _state(self, count: int) -> dict[str, Any]:
        """The reducer's state after ``count`` events, trimmed for the wire."""
        full = self._index.reducer_after(count).state()
        jobs: Mapping[str, Mapping[str, Any]] = full["jobs"]
        active = [j for j in jobs.values() if j["status"] in _UNFINISHED]
        event = self._index.events[count - 1] if count else None
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

    # -- front-end messages ------------------------------------------------------------------
    def _on_frontend_msg(self, _widget: Any, content: Any, buffers: Sequence[bytes]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "scrub":
            seq, t = content.get("seq"), content.get("t")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self.scrub(seq=seq)
            elif isinstance(t, int | float) and not isinstance(t, bool):
                self.scrub(t=float(t))
        elif kind == "payload":
            self.send({"type": "payload", "seq": content.get("seq"),
                       "event": self.event(content.get("seq"))})
        elif kind == "reload":
            self.reload()

    def event(self, seq: Any) -> dict[str, Any] | None:
        """The full envelope of the event with ``seq`` (None if there is none)."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            return None
        count = self._index.count_at(seq=seq)
        if count and self._index.events[count - 1].seq == seq:
            return self._index.events[count - 1].to_dict()
        return next((e.to_dict() for e in self._index.events if e.seq == seq), None)

    def reload(self) -> None:
        """Re-read the tape file (a session tape keeps growing); the scrubber goes to its end."""
        if self._path is None:
            return
        self._index = ReplayIndex(self._path)
        with self.hold_sync():
            self.data = _compact(self._index)
            self.scrub()

    def __repr__(self) -> str:
        return f"<TimelineWidget {self.title!r}>"


def _event_label(kind: str, name: str | None) -> str:
    return f"{kind}: {name}" if name else kind


def _job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    return {"job_id": job["job_id"], "status": job["status"], "worker_id": job["worker_id"],
            "plugin_name": job["plugin_name"], "cancel_requested": job["cancel_requested"],
            "retries": job["retries"]}


def _compact(index: ReplayIndex) -> dict[str, Any]:
    """The timeline as the front-end draws it: lanes by index, times in seconds."""
    tl = build_timeline(index.events).to_dict()
    lanes: list[str] = tl["lanes"]
    lane_of = {name: i for i, name in enumerate(lanes)}
    bars = []
    for b in tl["bars"]:
        if b.get("t0") is None:
            continue
        bars.append({"job": b["job_id"], "lane": lane_of.get(b["lane"], 0), "t0": b["t0"],
                     "t1": b["t1"], "status": b["status"], "final": b["final_status"],
                     "attempt": b["attempt"], "plugin": b.get("plugin_name"),
                     "worker": b.get("worker_id")})
    markers = [{"seq": m["seq"], "t": m["t"], "kind": m["kind"], "label": m["label"],
                "job": m.get("job_id"), "lane": lane_of.get(str(m.get("worker_id")), None)}
               for m in tl["markers"] if m.get("t") is not None]
    # Markers about a job sit on the lane of that job's bar at that moment.
    by_job: dict[str, list[dict[str, Any]]] = {}
    for b in bars:
        by_job.setdefault(b["job"], []).append(b)
    for m in markers:
        if m["lane"] is None and m["job"] is not None:
            m["lane"] = _lane_at(by_job.get(m["job"], []), m["t"])
    return {"start": tl["start"], "end": tl["end"], "duration_s": tl["duration_s"],
            "lanes": lanes, "bars": bars, "markers": markers, "events": len(index),
            "truncated": index.truncated, "skipped": len(index.skipped)}


def _lane_at(bars: list[dict[str, Any]], t: float) -> int | None:
    """The lane of the bar (of one job) open at ``t``, else of its first bar."""
    for b in bars:
        if b["t0"] <= t and (b["t1"] is None or t <= b["t1"] + 1e-9):
            return int(b["lane"])
    return int(bars[0]["lane"]) if bars else None

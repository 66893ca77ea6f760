"""A tape as any timeline front end sees it, kernel-free: payloads, scrubber states, events.

The notebook widget (:class:`~casparian_nb.notebook.timeline.TimelineWidget`) and the
JupyterLab ``.tape`` viewer's server extension both answer the front end
(``notebook/static/timeline_draw.js``) from one :class:`TimelineSource`::

    src = TimelineSource("runs/golden.tape")
    src.payload()                       # the first render (whole tape)      -> "data"
    src.payload((10.0, 20.0), 900)      # a zoom: the view's level of detail -> {"type": "view"}
    src.end()                           # {"state", "position"} at the end (no replay needed)
    src.at(t=2.5) / src.at(seq=17)      # the scrubber: the queue replayed to that moment
    src.event(17)                       # one event's full envelope (a marker click)
    src.reload()                        # re-read a growing tape

The first render reads the tape once (:func:`.timeline_data.load_timeline`); the replay index
behind :meth:`at` and :meth:`event` is built on first use, so a big tape opens fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..protocol import JobStatus
from ._timeline_pass import state_dict
from .replay import ReplayIndex, TapeReducer
from .timeline_data import TimelineData, load_timeline, timeline_from_events, timeline_payload

__all__ = ["TimelineSource", "replayed_state"]

#: Tape statuses of a job still in the queue or on a worker.
_UNFINISHED = frozenset(s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                               JobStatus.RUNNING))
_EPS = 1e-6


class TimelineSource:
    """One tape (a file, or a loaded :class:`ReplayIndex`) for a timeline front end."""

    def __init__(self, tape: str | os.PathLike[str] | ReplayIndex) -> None:
        self.path = None if isinstance(tape, ReplayIndex) else Path(tape)
        self._replay: ReplayIndex | None = tape if isinstance(tape, ReplayIndex) else None
        self.timeline = self._load()

    def _load(self) -> TimelineData:
        if self.path is None:
            assert self._replay is not None
            return timeline_from_events(self._replay.events)
        return load_timeline(self.path)

    def reload(self) -> None:
        """Re-read the tape file (a session tape keeps growing)."""
        if self.path is not None:
            self._replay = None
            self.timeline = self._load()

    @property
    def index(self) -> ReplayIndex:
        """The tape loaded for scrubbing (built on first use: a big tape takes a while)."""
        if self._replay is None:
            assert self.path is not None
            self._replay = ReplayIndex(self.path)
        return self._replay

    def payload(self, view: tuple[float, float] | None = None,
                width_px: int = 800) -> dict[str, Any]:
        """What the front end draws for ``view`` (None: the whole tape); see
        :func:`.timeline_data.timeline_payload`."""
        return timeline_payload(self.timeline, view, width_px=width_px)

    def end(self) -> dict[str, Any]:
        """``{"state", "position"}`` after the last event, from the first read alone."""
        d = self.timeline
        return {"state": d.end_state, "position": {"t": d.duration_s, "seq": d.last_seq}}

    def at(self, *, t: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """``{"state", "position"}`` after the event ``seq``, at ``t`` seconds from the start,
        or (neither) at the end: the queue as the sentinel had it then."""
        index = self.index
        start = index.events[0].time if index.events else None
        if seq is not None:
            count = index.count_at(seq=seq)
        elif t is not None and start is not None and t < self.timeline.duration_s:
            # Bar times are rounded to microseconds; the tolerance keeps an event drawn at t
            # on the side of the scrubber it is drawn on.
            count = index.count_at(time=start + max(0.0, t) + _EPS)
        else:
            count = len(index)  # at (or past) the end: every event, whatever rounding
        event = index.events[count - 1] if count else None
        state = replayed_state(index.reducer_after(count), count,
                               None if event is None else (event.kind, event.name))
        if t is None:
            t = (event.time or start or 0.0) - (start or 0.0) if event else 0.0
        return {"state": state,
                "position": {"t": round(float(t), 6), "seq": event.seq if event else None}}

    def event(self, seq: Any) -> dict[str, Any] | None:
        """The full envelope of the event with ``seq`` (None if there is none)."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            return None
        index = self.index
        count = index.count_at(seq=seq)
        if count and index.events[count - 1].seq == seq:
            return index.events[count - 1].to_dict()
        return next((e.to_dict() for e in index.events if e.seq == seq), None)


def replayed_state(reducer: TapeReducer, count: int,
                   event: tuple[Any, Any] | None) -> dict[str, Any]:
    """The replayed queue after ``count`` events, trimmed for the wire (read off the
    reducer's records directly: a full ``state()`` of 100,000 jobs is slow and not needed)."""
    core = reducer.core
    active = [j for j in core.jobs.values() if j.status in _UNFINISHED]
    return state_dict(
        seq=reducer.seq, timestamp=reducer.timestamp, count=count, event=event,
        counts=core.counts(), jobs_total=len(core.jobs),
        aborting=sum(1 for j in active if j.cancel_requested), active=active,
        workers=[{"worker_id": w["worker_id"], "status": w["status"], "jobs": w["jobs"]}
                 for w in (rec.to_dict() for rec in core.workers.values())],
        retries=core.retries, cancels=core.cancels)

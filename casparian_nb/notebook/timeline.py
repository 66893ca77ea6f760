"""The tape timeline widget: what happened, when, in which worker slot — and the queue then.

>>> cf.timeline("tapes/golden_session.tape")                        # doctest: +SKIP
>>> cf.timeline(ctl)                   # a live controller's session tape, followed as it grows

A thin anywidget over :mod:`casparian_nb.tape.timeline_data` (lanes are worker slots, a
queue-depth strip, binned density when zoomed out and exact bars when zoomed in) drawn by
``static/timeline_draw.js`` (shared with the JupyterLab ``.tape`` viewer). The scrubber
replays the queue as the sentinel had it at the chosen moment with the tape package's
:class:`~casparian_nb.tape.ReplayIndex`, built on the first scrub (a big tape's first render
does not wait for it); no sentinel is needed at all.

Front-end → kernel messages (``static/timeline.js``)::

    {"type": "view", "id": n, "t0": s, "t1": s, "width": px}
                                      → {"type": "view", "id": n, "payload": {...}} (zoom/pan)
    {"type": "scrub", "t": 12.5}      seconds from the tape's start
    {"type": "scrub", "seq": 17}      or an event's seq (the step buttons)
    {"type": "payload", "seq": 17}    → answered with {"type": "payload", "seq", "event"}
    {"type": "reload"}                re-read the tape (a live session tape grows)

The display data also carries a static SVG snapshot (:mod:`._timeline_svg`) as ``text/html``,
so a saved notebook shows the timeline without a kernel.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..protocol import JobStatus
from ..tape import ReplayIndex, TapeReducer
from ..tape.timeline_data import TimelineData, load_timeline, timeline_from_events, timeline_payload
from ._scheduling import Scheduler, default_scheduler
from ._timeline_svg import timeline_svg

#: Tape statuses of a job still in the queue or on a worker.
_UNFINISHED = frozenset(s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                               JobStatus.RUNNING))

__all__ = ["TimelineWidget", "timeline"]

_STATIC = Path(__file__).parent / "static"
#: Jobs listed in the scrubber's state panel (the counts cover all of them).
_ACTIVE_LIMIT = 100
_EPS = 1e-6


def _inline_esm() -> str:
    """``timeline_draw.js`` followed by the wrapper ``timeline.js`` as one module: anywidget
    loads a single module, so the wrapper's relative imports (lines marked ``cf:inline``)
    are dropped."""
    wrapper = (_STATIC / "timeline.js").read_text(encoding="utf-8")
    kept = [line for line in wrapper.splitlines() if not line.rstrip().endswith("// cf:inline")]
    return (_STATIC / "timeline_draw.js").read_text(encoding="utf-8") + "\n" + "\n".join(kept)


def timeline(tape: Any, **kwargs: Any) -> TimelineWidget:
    """An interactive timeline of ``tape``: a tape file, a loaded :class:`ReplayIndex`, or a
    live controller (its session tape, followed while it grows)."""
    path = getattr(tape, "tape_path", None)
    if isinstance(path, Path):
        kwargs.setdefault("title", f"session {path.name}")
        widget = TimelineWidget(path, follow=True, **kwargs)
        tape._widgets.add(widget)  # its blocking calls pump it, stop() closes it
        return widget
    return TimelineWidget(tape, **kwargs)


class TimelineWidget(anywidget.AnyWidget):
    """Slot lanes, bars (or density) and markers of one tape, with a replaying scrubber."""

    _esm = _inline_esm()
    _css = _STATIC / "timeline.css"

    #: The payload of :func:`~casparian_nb.tape.timeline_data.timeline_payload` (whole tape).
    data = traitlets.Dict().tag(sync=True)
    #: The replayed queue at the scrubber position.
    state = traitlets.Dict().tag(sync=True)
    #: Scrubber position: ``{"t": seconds from start, "seq": last event applied}``.
    position = traitlets.Dict().tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    reloadable = traitlets.Bool(False).tag(sync=True)
    following = traitlets.Bool(False).tag(sync=True)

    def __init__(self, tape: str | os.PathLike[str] | ReplayIndex, *, title: str | None = None,
                 follow: bool = False, interval: float = 1.0, width_px: int = 800,
                 scheduler: Scheduler | None = None, **kwargs: Any) -> None:
        self._path = None if isinstance(tape, ReplayIndex) else Path(tape)
        self._replay: ReplayIndex | None = tape if isinstance(tape, ReplayIndex) else None
        self._timeline = self._load()
        self._width = width_px
        self._size = self._tape_size()
        self._scheduler = scheduler or default_scheduler()
        #: Seconds between two looks at a followed tape (re-reads are coalesced to this).
        self.interval = interval
        self._last_look = time.monotonic()
        self._closed = False
        self._handle: Any = None
        self._hooked: Any = None  # the IPython shell whose post_run_cell hook is ours
        data = timeline_payload(self._timeline, width_px=width_px)
        super().__init__(data=data, state=self._state_of(self._timeline),
                         reloadable=self._path is not None, following=follow and self._path is not None,
                         position={"t": data["duration_s"], "seq": self._timeline.last_seq},
                         title=title or (self._path.name if self._path else "tape"), **kwargs)
        self.on_msg(self._on_frontend_msg)
        if self.following:
            self._scheduler.call_later(interval, self._follow_tick)

    def _load(self) -> TimelineData:
        if self._path is None:
            assert self._replay is not None
            return timeline_from_events(self._replay.events)
        return load_timeline(self._path)

    @property
    def index(self) -> ReplayIndex:
        """The tape loaded for scrubbing (built on first use: a big tape takes a while)."""
        if self._replay is None:
            assert self._path is not None
            self._replay = ReplayIndex(self._path)
        return self._replay

    @property
    def timeline_data(self) -> TimelineData:
        """The reduced tape behind the drawing (lanes, bars, queue depth)."""
        return self._timeline

    # -- level of detail ----------------------------------------------------------------------
    def view_payload(self, t0: float, t1: float, width_px: int | None = None) -> dict[str, Any]:
        """The payload for the view ``[t0, t1]`` seconds (what a zoom fetches)."""
        return timeline_payload(self._timeline, (t0, t1), width_px=width_px or self._width)

    # -- scrubbing ---------------------------------------------------------------------------
    def scrub(self, *, t: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """Move the scrubber to ``t`` seconds from the start, to event ``seq``, or (neither) to
        the end; returns the replayed state (also synced to the front-end)."""
        index = self.index
        start = index.events[0].time if index.events else None
        if seq is not None:
            count = index.count_at(seq=seq)
        elif t is not None and start is not None and t < self.data.get("duration_s", 0.0):
            # Bar times are rounded to microseconds; the tolerance keeps an event drawn at t
            # on the side of the scrubber it is drawn on.
            count = index.count_at(time=start + max(0.0, t) + _EPS)
        else:
            count = len(index)  # at (or past) the end: every event, whatever rounding
        event = index.events[count - 1] if count else None
        state = _state(index.reducer_after(count), count,
                       None if event is None else (event.kind, event.name))
        if t is None:
            t = (event.time or start or 0.0) - (start or 0.0) if event else 0.0
        with self.hold_sync():
            self.position = {"t": round(float(t), 6), "seq": event.seq if event else None}
            self.state = state
        return state

    def _state_of(self, data: TimelineData) -> dict[str, Any]:
        return _state(data.final, data.events, data.last_event)

    # -- front-end messages ------------------------------------------------------------------
    def _on_frontend_msg(self, _widget: Any, content: Any, buffers: Sequence[bytes]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "view":
            t0, t1, width = content.get("t0"), content.get("t1"), content.get("width")
            if isinstance(t0, int | float) and isinstance(t1, int | float):
                px = int(width) if isinstance(width, int | float) and width > 0 else None
                self.send({"type": "view", "id": content.get("id"),
                           "payload": self.view_payload(float(t0), float(t1), px)})
        elif kind == "scrub":
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
        index = self.index
        count = index.count_at(seq=seq)
        if count and index.events[count - 1].seq == seq:
            return index.events[count - 1].to_dict()
        return next((e.to_dict() for e in index.events if e.seq == seq), None)

    # -- a growing tape ----------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the tape file (a session tape keeps growing); the scrubber goes to its end."""
        if self._path is None:
            return
        self._size = self._tape_size()
        self._replay = None
        self._timeline = self._load()
        with self.hold_sync():
            self.data = timeline_payload(self._timeline, width_px=self._width)
            self.position = {"t": self.data["duration_s"], "seq": self._timeline.last_seq}
            self.state = self._state_of(self._timeline)

    def _tape_size(self) -> int:
        try:
            return self._path.stat().st_size if self._path is not None else 0
        except OSError:
            return 0

    def pump(self) -> None:
        """Re-read a followed tape if it grew, at most once per ``interval`` (a blocking call
        such as ``ctl.wait()`` calls this between its polls)."""
        now = time.monotonic()
        if self._closed or not self.following or now - self._last_look < self.interval:
            return
        self._last_look = now
        if self._tape_size() != self._size:
            self.reload()

    def sync(self) -> None:
        """Catch up with the tape now (the end of a blocking call)."""
        if not self._closed and self._path is not None and self._tape_size() != self._size:
            self.reload()

    def _follow_tick(self) -> None:
        if self._closed or not self.following:
            return
        self.pump()
        self._scheduler.call_later(self.interval, self._follow_tick)

    def close(self) -> None:
        """Stop following and close the widget."""
        self._closed = True
        self._unhook()
        super().close()

    # -- the saved snapshot of a followed tape -----------------------------------------------
    def _ipython_display_(self) -> None:
        """Display with a display id; while it follows a growing tape, refresh the display
        (and so the static SVG a saved notebook keeps) whenever a cell finishes."""
        from IPython import get_ipython
        from IPython.display import display

        data, meta = self._repr_mimebundle_() or ({}, {})
        self._handle = display(data, metadata=meta, raw=True,  # type: ignore[no-untyped-call]
                               display_id=True)
        shell = get_ipython()
        if self.following and shell is not None and self._hooked is None:
            shell.events.register("post_run_cell", self._after_cell)
            self._hooked = shell

    def _after_cell(self, *_: Any) -> None:
        if self._closed:
            self._unhook()
            return
        size = self._size
        self.sync()
        if self._size != size and self._handle is not None:
            data, meta = self._repr_mimebundle_() or ({}, {})
            self._handle.update(data, metadata=meta, raw=True)

    def _unhook(self) -> None:
        if self._hooked is not None:
            with contextlib.suppress(ValueError):
                self._hooked.events.unregister("post_run_cell", self._after_cell)
            self._hooked = None

    # -- static snapshot ---------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """A static SVG of the whole tape with its counts (what a saved notebook shows)."""
        return timeline_svg(self._timeline, title=self.title)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = {**data, "text/html": self.snapshot_html(), "text/plain": self.summary()}
        return data, meta

    def summary(self) -> str:
        """One line: the tape, its events, jobs and final counts."""
        d = self._timeline
        counts = ", ".join(f"{k} {n}" for k, n in d.final.core.counts().items() if n)
        return (f"{self.title}: {d.events} events, {d.jobs} jobs, {len(d.lanes)} worker "
                f"slots, {d.duration_s:.2f} s" + (f" ({counts})" if counts else ""))

    def __repr__(self) -> str:
        return f"<TimelineWidget {self.title!r}>"


def _state(reducer: TapeReducer, count: int, event: tuple[Any, Any] | None) -> dict[str, Any]:
    """The replayed queue after ``count`` events, trimmed for the wire (read off the
    reducer's records directly: a full ``state()`` of 100,000 jobs is slow and not needed)."""
    core = reducer.core
    active = [j for j in core.jobs.values() if j.status in _UNFINISHED]
    return {
        "seq": reducer.seq, "timestamp": reducer.timestamp, "event_count": count,
        "event": None if event is None else (f"{event[0]}: {event[1]}" if event[1]
                                             else str(event[0])),
        "counts": core.counts(), "jobs_total": len(core.jobs),
        "aborting": sum(1 for j in active if j.cancel_requested),
        "active": [{"job_id": j.job_id, "status": j.status, "worker_id": j.worker_id,
                    "plugin_name": j.plugin_name, "cancel_requested": j.cancel_requested,
                    "retries": j.retries} for j in active[:_ACTIVE_LIMIT]],
        "workers": [{"worker_id": w["worker_id"], "status": w["status"], "jobs": w["jobs"]}
                    for w in (rec.to_dict() for rec in core.workers.values())],
        "retries": core.retries, "cancels": core.cancels,
    }

"""The tape timeline widget: what happened, when, in which worker slot — and the queue then.

>>> cf.timeline("tapes/golden_session.tape")                        # doctest: +SKIP
>>> cf.timeline(ctl)                   # a live controller's session tape, followed as it grows

A thin anywidget over the kernel-free :class:`~casparian_nb.tape.timeline_view.TimelineSource`
(lanes are worker slots, a queue-depth strip, binned density when zoomed out and exact bars
when zoomed in; see :mod:`casparian_nb.tape.timeline_data`) drawn by
``static/timeline_draw.js`` — the JupyterLab ``.tape`` viewer uses the same two. The
scrubber replays the queue as the sentinel had it at the chosen moment with the tape
package's :class:`~casparian_nb.tape.ReplayIndex`, built on the first scrub (a big tape's
first render does not wait for it); no sentinel is needed at all.

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

from ..tape import ReplayIndex
from ..tape.timeline_data import TimelineData
from ..tape.timeline_view import TimelineSource
from ._scheduling import Scheduler, default_scheduler
from ._timeline_svg import timeline_svg

__all__ = ["TimelineWidget", "timeline"]

_STATIC = Path(__file__).parent / "static"


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
        self._source = TimelineSource(tape)
        self._path = self._source.path
        self._width = width_px
        self._size = self._tape_size()
        self._scheduler = scheduler or default_scheduler()
        #: Seconds between two looks at a followed tape (re-reads are coalesced to this).
        self.interval = interval
        self._last_look = time.monotonic()
        self._closed = False
        self._handle: Any = None
        self._hooked: Any = None  # the IPython shell whose post_run_cell hook is ours
        end = self._source.end()
        super().__init__(data=self._source.payload(width_px=width_px), state=end["state"],
                         position=end["position"], reloadable=self._path is not None,
                         following=follow and self._path is not None,
                         title=title or (self._path.name if self._path else "tape"), **kwargs)
        self.on_msg(self._on_frontend_msg)
        if self.following:
            self._scheduler.call_later(interval, self._follow_tick)

    @property
    def source(self) -> TimelineSource:
        """The kernel-free tape behind the widget (payloads, replayed states, events)."""
        return self._source

    @property
    def index(self) -> ReplayIndex:
        """The tape loaded for scrubbing (built on first use: a big tape takes a while)."""
        return self._source.index

    @property
    def timeline_data(self) -> TimelineData:
        """The reduced tape behind the drawing (lanes, bars, queue depth)."""
        return self._source.timeline

    # -- level of detail ----------------------------------------------------------------------
    def view_payload(self, t0: float, t1: float, width_px: int | None = None) -> dict[str, Any]:
        """The payload for the view ``[t0, t1]`` seconds (what a zoom fetches)."""
        return self._source.payload((t0, t1), width_px or self._width)

    # -- scrubbing ---------------------------------------------------------------------------
    def scrub(self, *, t: float | None = None, seq: int | None = None) -> dict[str, Any]:
        """Move the scrubber to ``t`` seconds from the start, to event ``seq``, or (neither) to
        the end; returns the replayed state (also synced to the front-end)."""
        at = self._source.at(t=t, seq=seq)
        with self.hold_sync():
            self.position = at["position"]
            self.state = at["state"]
        state: dict[str, Any] = at["state"]
        return state

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
        return self._source.event(seq)

    # -- a growing tape ----------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the tape file (a session tape keeps growing); the scrubber goes to its end."""
        if self._path is None:
            return
        self._size = self._tape_size()
        self._source.reload()
        end = self._source.end()
        with self.hold_sync():
            self.data = self._source.payload(width_px=self._width)
            self.position = end["position"]
            self.state = end["state"]

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
        return timeline_svg(self._source.timeline, title=self.title)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = {**data, "text/html": self.snapshot_html(), "text/plain": self.summary()}
        return data, meta

    def summary(self) -> str:
        """One line: the tape, its events, jobs and final counts."""
        d = self._source.timeline
        counts = ", ".join(f"{k} {n}" for k, n in d.counts.items() if n)
        return (f"{self.title}: {d.events} events, {d.jobs} jobs, {len(d.lanes)} worker "
                f"slots, {d.duration_s:.2f} s" + (f" ({counts})" if counts else ""))

    def __repr__(self) -> str:
        return f"<TimelineWidget {self.title!r}>"

"""The progress bar of a blocking call in a notebook: ``ctl.wait()``, ``cf.run(...)``,
``ctl.submit(..., wait=True)``.

>>> ctl.wait()                     # a live bar: done / failed / running / queued, rate, ETA
>>> ctl.wait(progress=False)       # none

One display, updated in place: the widget's traits change at most 10 times a second, less
while the queue widget updates too (one budget per kernel, :mod:`._pace`) (the blocking call
reports as often as it likes), and when the call ends the display is updated
once more with the final counts, so the saved notebook's ``text/html`` and ``text/plain``
say what happened even where no widget renders (GitHub, nbviewer, nbconvert). Outside a
kernel the same calls draw a terminal bar on stderr (:mod:`casparian_nb._progress`).

Front-end: ``static/progress.js`` (draws the traits; sends nothing back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from .._progress import INTERVAL, ProgressCounts, ProgressSink, terminal_progress
from ._kernel import in_kernel
from ._pace import CommPace, pace_for
from ._reprs import STATUS_COLORS, esc

__all__ = ["ProgressWidget", "progress_for"]

_STATIC = Path(__file__).parent / "static"


class ProgressWidget(anywidget.AnyWidget):
    """Counts, rate and ETA of one blocking call; ends as a static line of final counts."""

    _esm = _STATIC / "progress.js"
    _css = _STATIC / "progress.css"

    label = traitlets.Unicode("").tag(sync=True)
    #: ``{"done", "failed", "running", "queued"}``
    counts = traitlets.Dict().tag(sync=True)
    total = traitlets.Int(0).tag(sync=True)
    rate = traitlets.Float(0.0).tag(sync=True)
    #: seconds left at the rate so far; -1 before the first job finishes
    eta_s = traitlets.Float(-1.0).tag(sync=True)
    elapsed_s = traitlets.Float(0.0).tag(sync=True)
    finished = traitlets.Bool(False).tag(sync=True)

    def __init__(self, label: str = "jobs", *, clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL, pace: CommPace | None = None,
                 **kwargs: Any) -> None:
        self._clock = clock
        self._started = clock()
        self._last = -1e9
        self._counts = ProgressCounts()
        #: Minimum seconds between two syncs (0.1 → at most 10 updates per second).
        self.interval = interval
        #: The update budget this widget shares with the kernel's other live widgets.
        self._pace = pace or pace_for(interval, clock)
        #: Syncs sent, for tests and benchmarks.
        self.flushes = 0
        self._handle: Any = None
        super().__init__(label=label, counts=_as_dict(self._counts), **kwargs)
        self._pace.join(self)

    def update(self, counts: ProgressCounts) -> None:
        """Record the counts; sync them if ``interval`` has passed since the last sync."""
        self._counts = counts
        now = self._clock()
        if not self.finished and self._pace.delay(self._last) <= 0:
            self._sync(now)

    def _sync(self, now: float, *, final: bool = False) -> None:
        self._last = now
        c = self._counts
        elapsed = now - self._started
        eta = c.eta_s(elapsed)
        with self.hold_sync():
            self.counts = _as_dict(c)
            self.total = c.total
            self.elapsed_s = round(elapsed, 3)
            self.rate = round(c.rate(elapsed), 3)
            self.eta_s = -1.0 if eta is None else round(eta, 1)
            if final:
                self.finished = True  # in the same message as the final counts
        self.flushes += 1
        self._pace.took()

    def finish(self, counts: ProgressCounts | None = None) -> None:
        """The call is over: final counts, and the display's static snapshot refreshed (the
        widget stays open, showing the final line)."""
        if counts is not None:
            self._counts = counts
        self._sync(self._clock(), final=True)
        self._pace.leave(self)
        if self._handle is not None:
            self._handle.update(self)  # the saved notebook keeps the final counts

    def show(self) -> ProgressWidget:
        """Display it (once), keeping the display's id to refresh its snapshot at the end."""
        if self._handle is None:
            from IPython.display import display

            self._handle = display(self, display_id=True)  # type: ignore[no-untyped-call]
        return self

    # -- static snapshot ---------------------------------------------------------------------
    def summary(self) -> str:
        """``label: 12 done, 1 failed of 13 in 4.2 s (3.1/s)``."""
        return f"{self.label}: {self._counts.line(self._clock() - self._started)}"

    def snapshot_html(self) -> str:
        """A static bar with the counts (inline styles: nbviewer and GitHub load no CSS)."""
        c = self._counts
        total = max(1, c.total)
        parts = "".join(
            f'<div title="{k} {n}" style="width:{100 * n / total:.2f}%;background:{color}"></div>'
            for k, n, color in (("done", c.done, STATUS_COLORS["COMPLETED"]),
                                ("failed", c.failed, STATUS_COLORS["FAILED"]),
                                ("running", c.running, STATUS_COLORS["RUNNING"]),
                                ("queued", c.queued, STATUS_COLORS["QUEUED"])) if n)
        return ('<div class="cf-progress-snapshot" style="font:12px sans-serif;max-width:640px">'
                f'<div style="display:flex;height:10px;border-radius:3px;overflow:hidden;'
                f'background:#e5e7eb">{parts}</div>'
                f'<div style="color:#374151;margin-top:2px">{esc(self.summary())}</div></div>')

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        return {**data, "text/html": self.snapshot_html(), "text/plain": self.summary()}, meta

    def __repr__(self) -> str:
        return f"<ProgressWidget {self.summary()}>"


def _as_dict(c: ProgressCounts) -> dict[str, int]:
    return {"done": c.done, "failed": c.failed, "running": c.running, "queued": c.queued}


def progress_for(label: str, enabled: bool | None = None) -> ProgressSink | None:
    """Where a blocking call reports: a displayed widget in a kernel, a terminal bar when
    stderr and stdout are terminals, else nothing; ``enabled=False``: nothing."""
    if enabled is False:
        return None
    if in_kernel():
        return ProgressWidget(label).show()
    return terminal_progress(label, enabled)

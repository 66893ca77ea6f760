"""One budget of widget updates per kernel: the live widgets together sync at most about
``1 / interval`` times a second.

Each widget coalesces its own updates (the queue at most 10 a second, a progress bar too);
with the queue open and a progress bar under a ``ctl.wait()``, the front-end got both, up to
17 comm messages a second. So the widgets that update on their own share a :class:`CommPace`:

* a widget syncs at most once per ``interval x live widgets`` (two live: each at most 5 a
  second), so none can take every turn and starve the other;
* and no two syncs of any of them are closer than ``interval``.

A widget asks :meth:`CommPace.delay` before it syncs and calls :meth:`CommPace.took` after.
Everything runs on the widget thread (the kernel's main thread, :mod:`._scheduling`), so the
pace needs no lock. Widgets made outside a kernel (scripts, tests) each get a private pace,
which is the old per-widget limit.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from ._kernel import in_kernel

__all__ = ["CommPace", "pace_for"]

#: Seconds between two syncs of the kernel's widgets, together (10 a second).
INTERVAL = 0.1


class CommPace:
    """The shared update budget of a kernel's self-updating widgets."""

    def __init__(self, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        # Weak: a widget dropped without close() stops counting when it is collected.
        self._live: weakref.WeakSet[object] = weakref.WeakSet()
        self._next = -1e18  # the earliest moment any member may sync again

    def join(self, widget: object) -> None:
        """``widget`` updates on its own from now on."""
        self._live.add(widget)

    def leave(self, widget: object) -> None:
        """``widget`` is closed or finished: its share goes to the others."""
        self._live.discard(widget)

    @property
    def live(self) -> int:
        return len(self._live)

    def spacing(self) -> float:
        """The least time between two syncs of one widget: the budget split among the live."""
        return self.interval * max(1, len(self._live))

    def delay(self, last_sync: float) -> float:
        """Seconds until a widget whose last sync was at ``last_sync`` may sync (0: now)."""
        now = self.clock()
        return max(0.0, last_sync + self.spacing() - now, self._next - now)

    def took(self) -> None:
        """A member just synced."""
        self._next = self.clock() + self.interval


_kernel_pace: CommPace | None = None


def pace_for(interval: float, clock: Callable[[], float]) -> CommPace:
    """The kernel's shared pace (with the default interval and clock), else a private one."""
    global _kernel_pace
    if interval != INTERVAL or clock is not time.monotonic or not in_kernel():
        return CommPace(interval, clock)
    if _kernel_pace is None:
        _kernel_pace = CommPace()
    return _kernel_pace

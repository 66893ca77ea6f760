"""Run widget updates on the kernel's own thread, however many threads produce events.

Widget state (traitlets) and ipywidgets' ``hold_sync`` bookkeeping are not thread-safe, and
the front-end's messages (clicks, paging) are handled on the kernel's main thread. So every
change to a widget happens on that thread too:

* **In ipykernel** (6 and 7: in 7 the main thread runs a tornado ``IOLoop`` over asyncio, and
  ``Kernel.io_loop`` is that loop) a background thread only appends events to a deque and calls
  ``io_loop.add_callback`` — tornado's one thread-safe entry point — to wake the main thread,
  which then schedules the coalesced flush with ``call_later``. Comm messages handled in between
  run on the same thread, so no lock is needed around widget state.
* While a cell blocks the main thread (``ctl.wait()``), loop callbacks cannot run; ``wait()``
  calls each live widget's ``pump()`` between its polls — on the main thread — so the queue
  keeps updating during a wait.
* **Outside a kernel** (scripts, tests) there is no loop: :class:`ManualScheduler` queues the
  callbacks and runs them when :meth:`run_due` is called, on the caller's thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["IOLoopScheduler", "ManualScheduler", "Scheduler", "default_scheduler"]


class Scheduler(Protocol):
    """Where widget callbacks run."""

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the widget thread soon; callable from any thread."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the widget thread after ``delay`` seconds; widget thread only."""

    def run_due(self) -> int:
        """Run callbacks that are due now, if this scheduler has such a queue; the count."""


class IOLoopScheduler:
    """Callbacks on a tornado IOLoop (the kernel's main-thread loop)."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.loop.add_callback(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.loop.call_later(delay, fn)

    def run_due(self) -> int:
        return 0  # the loop runs its own callbacks; a blocked cell pumps widgets directly


class ManualScheduler:
    """Callbacks queued until :meth:`run_due` (or :meth:`run_all`) runs them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.call_later(0.0, fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, (self.clock() + delay, next(self._order), fn))

    def run_due(self) -> int:
        ran = 0
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > self.clock():
                    return ran
                _, _, fn = heapq.heappop(self._heap)
            fn()
            ran += 1

    def next_due(self) -> float | None:
        """Seconds until the next callback is due (None: nothing queued)."""
        with self._lock:
            return max(0.0, self._heap[0][0] - self.clock()) if self._heap else None


def default_scheduler() -> Scheduler:
    """The running kernel's loop when there is one, else a :class:`ManualScheduler`."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        return ManualScheduler()
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    loop = getattr(kernel, "io_loop", None)
    if loop is not None and threading.current_thread() is threading.main_thread():
        return IOLoopScheduler(loop)
    return ManualScheduler()

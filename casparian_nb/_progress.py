"""Progress of a blocking run or wait: counts, rate and ETA, and a terminal bar on stderr.

One vocabulary for every front end: :class:`ProgressCounts` (done / failed / running /
queued of a known total). The terminal bar (:class:`TerminalProgress`, ``rich`` on stderr)
serves ``casparian run`` and scripts; the notebook's live widget
(:mod:`casparian_nb.notebook.progress`) takes the same counts. Both redraw at most 10 times
a second and end with one static line of final counts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

__all__ = ["ProgressCounts", "ProgressSink", "TerminalProgress", "terminal_progress"]

#: Seconds between two redraws (10 per second at most).
INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class ProgressCounts:
    """How far a batch of jobs is: ``done`` (completed or skipped), ``failed`` (failed or
    aborted), ``running`` and ``queued``."""

    done: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def total(self) -> int:
        return self.done + self.failed + self.running + self.queued

    def rate(self, elapsed_s: float) -> float:
        """Jobs finished per second so far."""
        return self.finished / elapsed_s if elapsed_s > 0 else 0.0

    def eta_s(self, elapsed_s: float) -> float | None:
        """Seconds left at the rate so far (None before the first job finishes)."""
        rate = self.rate(elapsed_s)
        return (self.total - self.finished) / rate if rate > 0 else None

    def line(self, elapsed_s: float) -> str:
        """The static final line: ``12 done, 1 failed of 13 in 4.2 s (3.1/s)``."""
        extra = "".join(f", {n} {k}" for k, n in (("running", self.running),
                                                   ("queued", self.queued)) if n)
        return (f"{self.done} done, {self.failed} failed{extra} of {self.total} in "
                f"{elapsed_s:.1f} s ({self.rate(elapsed_s):.1f}/s)")


class ProgressSink(Protocol):
    """What a blocking call reports to: ``update`` often (coalesced by the sink), ``finish``
    once with the final counts."""

    def update(self, counts: ProgressCounts) -> None: ...

    def finish(self, counts: ProgressCounts | None = None) -> None: ...


class TerminalProgress:
    """A ``rich`` bar on ``stream`` (stderr) that ends as one plain line of final counts."""

    def __init__(self, label: str, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._stream = stream or sys.stderr
        self._clock = clock
        self._started = clock()
        self._last = -1e9
        self._counts = ProgressCounts()
        self._console = Console(file=self._stream, stderr=stream is None)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[detail]}"), TimeRemainingColumn(),
                             console=self._console, transient=True, auto_refresh=False)
        self._task = self._bar.add_task(label, total=None, detail="")
        self._label = label
        self._bar.start()
        self._closed = False

    def update(self, counts: ProgressCounts) -> None:
        self._counts = counts
        now = self._clock()
        if self._closed or now - self._last < INTERVAL:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        c = self._counts
        rate = c.rate(now - self._started)
        self._bar.update(self._task, total=max(1, c.total), completed=c.finished,
                         detail=f"{c.finished}/{c.total} · failed {c.failed} · running "
                                f"{c.running} · queued {c.queued} · {rate:.1f}/s")
        self._bar.refresh()

    def finish(self, counts: ProgressCounts | None = None) -> None:
        """Stop the bar and write the final counts as one plain line."""
        if self._closed:
            return
        self._closed = True
        if counts is not None:
            self._counts = counts
        self._bar.stop()
        self._stream.write(f"{self._label}: {self._counts.line(self._clock() - self._started)}\n")
        self._stream.flush()


def terminal_progress(label: str, enabled: bool | None = None,
                      stream: Any = None) -> TerminalProgress | None:
    """A terminal bar when ``enabled`` (default: stderr and stdout are terminals), else None
    (no progress output when stdout is piped)."""
    if enabled is None:
        enabled = sys.stderr.isatty() and sys.stdout.isatty()
    return TerminalProgress(label, stream) if enabled else None

"""Rate-limited logging of what hostile input causes (re-exported by :mod:`casparian_nb.protocol`)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

__all__ = ["LogLimiter"]


@dataclass
class LogLimiter:
    """Rate-limits the log lines that hostile input causes (F14: anyone who can reach a port,
    key or no key, must not be able to grow the logs at will).

    At most ``burst`` lines per ``interval`` seconds go to ``logger``; the rest are counted,
    and the count is logged once the next window opens — at the next line, or at
    :meth:`flush`, which a serving loop may call as often as it likes::

        limiter = LogLimiter(log, name="control", what="rejected messages")
        limiter.log("control: rejected message: %s", exc)   # False when suppressed
    """

    logger: logging.Logger
    name: str = "socket"
    what: str = "bad messages"
    burst: int = 10
    interval: float = 10.0
    level: int = logging.WARNING
    _window: float = field(default=-math.inf, init=False, repr=False)
    _logged: int = field(default=0, init=False, repr=False)
    _suppressed: int = field(default=0, init=False, repr=False)

    def log(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless this window's burst is used up; whether it was logged."""
        self._roll(time.monotonic())
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(self.level, msg, *args)
            return True
        self._suppressed += 1
        return False

    def flush(self) -> None:
        """Log the count of suppressed lines if their window is over (cheap; call often)."""
        if self._suppressed:
            self._roll(time.monotonic())

    def _roll(self, now: float) -> None:
        if now - self._window >= self.interval:
            if self._suppressed:
                self.logger.log(self.level, "%s: %d more %s not logged", self.name,
                                self._suppressed, self.what)  # fmt: skip
            self._window, self._logged, self._suppressed = now, 0, 0

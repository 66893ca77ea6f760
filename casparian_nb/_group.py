"""Group commit: many threads each need their items made durable before they go on; the
first to find no commit under way commits every item waiting at that moment, in one go.

The disk's cost (an fsync, a SQLite commit) is paid per group rather than per item, and no
thread returns before the commit holding its items is done — the same promise as committing
alone. The run ledger uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Calls ``commit(items)`` for groups of items submitted from many threads."""

    def __init__(self, commit: Callable[[list[T]], None]) -> None:
        self._commit = commit
        self._turn = threading.Condition()
        self._waiting: list[T] = []
        self._next = 1  # the group the items now waiting will be committed in
        self._done = 0  # groups are committed one at a time, in order
        self._committing = False
        self._errors: dict[int, BaseException] = {}

    def submit(self, items: Iterable[T]) -> None:
        """Return once ``items`` are committed; raise what their group's commit raised."""
        with self._turn:
            self._waiting.extend(items)
            mine = self._next
            while self._done < mine:
                if self._committing:
                    self._turn.wait()
                    continue
                self._committing = True  # lead this group
                batch, self._waiting = self._waiting, []
                self._next += 1
                self._turn.release()
                error: BaseException | None = None
                try:
                    self._commit(batch)
                except BaseException as exc:  # every thread of the group gets it
                    error = exc
                finally:
                    self._turn.acquire()
                    self._committing = False
                    self._done = mine
                    if error is not None:
                        self._errors[mine] = error
                    self._turn.notify_all()
            error = self._errors.get(mine)
        if error is not None:
            raise error

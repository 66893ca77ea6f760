"""DuckDB connections held open across promotions by one thread (the sentinel's committer).

See :mod:`.duckdb_sink`: a burst of small jobs into one DuckDB file would otherwise pay an
open and a close (with its checkpoint) per job. Importing this module does not import duckdb
(the sentinel imports it whatever its sinks are).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

__all__ = ["ConnectionHolder", "current_holder", "holding_connections"]

_THREAD = threading.local()


class ConnectionHolder:
    """DuckDB files a thread keeps open between promotions (see the module docstring).

    Each held file keeps its ``<file>.lock`` flock and its read-write connection until
    :meth:`release`. Only the thread that created the holder uses it.
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        #: file -> (connection, its exclusive-lock context, when it was opened)
        self._held: dict[Path, tuple[duckdb.DuckDBPyConnection,
                                     contextlib.ExitStack, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def connection(self, db: Path, deadline: float) -> duckdb.DuckDBPyConnection:
        """The open connection to ``db``, opening (and locking) it if needed."""
        db = Path(os.path.realpath(db))  # one connection per file, however it is spelled
        entry = self._held.get(db)
        if entry is not None:
            return entry[0]
        from ._duckdb_open import connect, exclusive

        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive(db, deadline))
            con = connect(db, deadline)
        except BaseException:
            stack.close()
            raise
        self._held[db] = (con, stack, time.monotonic())
        return con

    def close(self, db: Path) -> None:
        """Close one file (its connection, then its lock)."""
        entry = self._held.pop(Path(os.path.realpath(db)), None)
        if entry is not None:
            try:
                with contextlib.suppress(Exception):  # duckdb.Error: closing what broke
                    entry[0].close()
            finally:
                entry[1].close()

    def release(self, *, only_old: bool = False) -> None:
        """Close every held file, or (``only_old``) those open longer than ``max_age``."""
        now = time.monotonic()
        for db, (_, _, opened) in list(self._held.items()):
            if not only_old or now - opened >= self.max_age:
                self.close(db)


@contextlib.contextmanager
def holding_connections(max_age: float = 1.0) -> Iterator[ConnectionHolder]:
    """Within this block, this thread's DuckDB promotions keep their files open (until the
    holder's ``release``, and always when the block ends)."""
    holder = ConnectionHolder(max_age)
    previous = getattr(_THREAD, "holder", None)
    _THREAD.holder = holder
    try:
        yield holder
    finally:
        _THREAD.holder = previous
        holder.release()


def current_holder() -> ConnectionHolder | None:
    """This thread's holder, if it is inside :func:`holding_connections`."""
    holder: ConnectionHolder | None = getattr(_THREAD, "holder", None)
    return holder

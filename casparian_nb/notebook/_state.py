"""Light, read-only reads of the state DB for the widgets and ``wait()``.

:class:`~casparian_nb.store.StateReader` returns whole rows with their JSON columns decoded —
right for ``ctl.job(id)``, too heavy to re-read 10,000 queued jobs every few seconds from the
kernel's thread. These queries fetch only the columns the queue table shows, and take any
number of ids in one bound parameter (``json_each``). Same connection discipline as
StateReader: ``mode=ro`` URI, autocommit, so each statement is its own short WAL snapshot and
the sentinel (the only writer) is never blocked (F5).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["JOB_COLUMNS", "JobRows", "connect_ro"]

#: What the queue widget needs of a job (QueueModel.load reads these keys).
JOB_COLUMNS = ("id", "status", "plugin_name", "input_file", "worker_id", "rows", "claimed_at",
               "started_at", "ended_at", "cancel_requested_at", "error_message", "retry_count")
_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM cf_processing_queue"


def connect_ro(db: Path) -> sqlite3.Connection | None:
    """A read-only connection to an initialised state DB, or None (missing / not ours yet)."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA busy_timeout = 1000")  # WAL readers wait only in recovery
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT 1 FROM cf_processing_queue LIMIT 0")
    except sqlite3.Error:
        conn.close()
        return None
    return conn


class JobRows:
    """The queue-table projection of jobs, straight from the state DB."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            if self._conn is None:
                self._conn = connect_ro(self.db)
                if self._conn is None:
                    return []
            cur = self._conn.execute(sql, tuple(params))
            return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, newest first."""
        return self._rows(f"{_SELECT} ORDER BY id DESC LIMIT ?", (max(0, int(limit)),))

    def by_ids(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """These jobs (any number of ids in one query)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        return self._rows(f"{_SELECT} WHERE id IN (SELECT value FROM json_each(?))",
                          (json.dumps(wanted),))

    def statuses(self, ids: Iterable[int]) -> dict[int, str]:
        """``{id: status}`` of these jobs (ids missing from the DB are left out)."""
        return {int(r["id"]): str(r["status"]) for r in self.by_ids(ids)}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

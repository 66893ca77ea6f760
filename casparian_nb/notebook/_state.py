"""Light, read-only reads of the state DB for the widgets and ``wait()``.

:meth:`StateReader.get_job <casparian_nb.store.StateReader.get_job>` returns whole rows with
their JSON columns decoded — right for ``ctl.job(id)``, too heavy to re-read 10,000 queued jobs
every few seconds from the kernel's thread. :class:`JobRows` asks the store for the queue-table
projection instead (:meth:`~casparian_nb.store.StateReader.queue_rows`), and opens its reader
only once the sentinel has created the DB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..protocol import JobStatus
from ..store import QUEUE_ROW_COLUMNS, StateReader

__all__ = ["JOB_COLUMNS", "JobRows"]

#: What the queue widget needs of a job (QueueModel.load reads these keys).
JOB_COLUMNS = QUEUE_ROW_COLUMNS


class JobRows:
    """The queue-table projection of jobs, straight from the state DB."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._reader: StateReader | None = None
        self._lock = threading.Lock()

    def _store(self) -> StateReader | None:
        with self._lock:
            if self._reader is None:
                self._reader = StateReader.open_if_ready(self.db)
            return self._reader

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, newest first."""
        reader = self._store()
        return reader.queue_rows(newest=limit) if reader is not None else []

    def by_ids(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """These jobs (any number of ids in one query)."""
        reader = self._store()
        return reader.queue_rows(ids=ids) if reader is not None else []

    def statuses(self, ids: Iterable[int]) -> dict[int, JobStatus]:
        """``{id: status}`` of these jobs (ids missing from the DB are left out)."""
        return {int(r["id"]): JobStatus(r["status"]) for r in self.by_ids(ids)}

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

"""SQLite state store (``<home>/state.sqlite``): the one job model, materializations, plugins.

``StateStore`` is the single writer (the sentinel); ``StateReader`` is for everyone else and
is never blocked by the writer (WAL). Both share the query API of ``JobQueries``.
"""

from __future__ import annotations

from .reader import JobQueries, StateReader, job_to_info
from .schema import (
    COMPLETION_STATUSES,
    JOB_STATUSES,
    MATERIALIZATION_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    iso_from_epoch,
    now_iso,
)
from .store import Materialization, NewJob, StateStore

__all__ = [
    "COMPLETION_STATUSES",
    "JOB_STATUSES",
    "MATERIALIZATION_STATUSES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "JobQueries",
    "Materialization",
    "Migration",
    "NewJob",
    "StateReader",
    "StateStore",
    "iso_from_epoch",
    "job_to_info",
    "now_iso",
]

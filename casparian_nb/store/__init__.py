"""SQLite state store (``<home>/state.sqlite``): the one job model, materializations, plugins.

Every SQL statement of the state DB lives in this package. ``StateStore`` is the single
writer (the sentinel uses it as ``BatchingStateStore``: one transaction per loop iteration);
``StateReader`` is for everyone else (CLI, notebook, widgets) and is never blocked by the
writer (WAL). Both share the query API of ``JobQueries``. Statuses are the enums of
:mod:`casparian_nb.protocol`; the schema's CHECK constraints are generated from them.
"""

from __future__ import annotations

from ._transitions import CANCELLED_BY_USER
from .reader import QUEUE_ROW_COLUMNS, TABLES, JobQueries, StateReader, job_to_info
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
from .store import (
    SKIPPED_REASON,
    STALE_REASON,
    BatchingStateStore,
    Materialization,
    NewJob,
    StateStore,
)

__all__ = [
    "CANCELLED_BY_USER",
    "COMPLETION_STATUSES",
    "JOB_STATUSES",
    "MATERIALIZATION_STATUSES",
    "MIGRATIONS",
    "QUEUE_ROW_COLUMNS",
    "SCHEMA_VERSION",
    "SKIPPED_REASON",
    "STALE_REASON",
    "TABLES",
    "BatchingStateStore",
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

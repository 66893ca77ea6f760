"""The state DB's migrations (F11): version ``v`` -> ``v + 1``, each run inside the writer's
transaction by :func:`~casparian_nb.store.schema.ensure_schema` after a backup of the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["ATTEMPTS_DDL", "MIGRATIONS", "Migration"]

#: A migration upgrades an open connection from version ``v`` to ``v + 1``. It runs inside the
#: writer's transaction, so it must not COMMIT; it must never drop user data.
Migration = Callable[[sqlite3.Connection], None]


def _add_host_kills(conn: sqlite3.Connection) -> None:
    """1 -> 2: how often a job's plugin host was killed by a signal (its own retry budget)."""
    conn.execute("ALTER TABLE cf_processing_queue"
                 " ADD COLUMN host_kills INTEGER NOT NULL DEFAULT 0")


ATTEMPTS_DDL = """
CREATE TABLE cf_job_attempts (
    job_id          INTEGER NOT NULL REFERENCES cf_processing_queue (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    status          TEXT NOT NULL,
    error_message   TEXT,
    error_kind      TEXT,
    traceback       TEXT,
    worker_id       TEXT,
    host_pid        INTEGER,
    claimed_at      TEXT,
    started_at      TEXT,
    ended_at        TEXT,
    reason          TEXT,
    PRIMARY KEY (job_id, attempt)
)"""


def _add_retries(conn: sqlite3.Connection) -> None:
    """2 -> 3 (retry, dead letters, staleness): the history of a job's earlier attempts
    (``cf_job_attempts``), how often its user retried it (``manual_retries``), whether it
    is dead-lettered (``dead_letter``: the reason, backfilled from ``cf_dead_letter``) and
    which plugin source made each materialization (``parser_fingerprint``, from its job)."""
    conn.execute(ATTEMPTS_DDL)
    conn.execute("ALTER TABLE cf_processing_queue"
                 " ADD COLUMN manual_retries INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE cf_processing_queue ADD COLUMN dead_letter TEXT")
    conn.execute("UPDATE cf_processing_queue SET dead_letter = (SELECT d.reason FROM"
                 " cf_dead_letter AS d WHERE d.original_job_id = cf_processing_queue.id)"
                 " WHERE id IN (SELECT original_job_id FROM cf_dead_letter)")
    conn.execute("ALTER TABLE cf_output_materializations ADD COLUMN parser_fingerprint TEXT")
    conn.execute("UPDATE cf_output_materializations SET parser_fingerprint = (SELECT"
                 " q.parser_fingerprint FROM cf_processing_queue AS q"
                 " WHERE q.id = cf_output_materializations.job_id)")


def _add_submission_options(conn: sqlite3.Connection) -> None:
    """3 -> 4: the quarantine limits (``QuarantinePolicy`` as JSON; NULL: the plugin's own)
    and resource hints (``{"GPU": 1.0}``; NULL: none) a job was submitted with, so a restarted
    sentinel dispatches it with the same ones."""
    conn.execute("ALTER TABLE cf_processing_queue ADD COLUMN quarantine_json TEXT")
    conn.execute("ALTER TABLE cf_processing_queue ADD COLUMN resources_json TEXT")


#: version -> migration to version + 1.
MIGRATIONS: dict[int, Migration] = {1: _add_host_kills, 2: _add_retries,
                                    3: _add_submission_options}

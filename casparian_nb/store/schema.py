"""State DB schema: DDL, the schema version, and explicit migrations (F11).

The version lives in ``cf_meta(key='schema_version')``. Only the writer (the sentinel) creates
or migrates the schema; readers only check it. Nothing here ever drops a table: an unknown or
unversioned file is refused with a message saying what to do, and an upgrade first backs the
file up to ``<db>.bak-v<old>`` (the fix for the original's silent schema resets, §13.14).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Final
from urllib.parse import quote

from ..errors import SchemaVersionError, StoreError
from ..protocol import STORED_JOB_STATUSES, CompletionStatus, JobStatus, MaterializationStatus
from ._clock import check_iso, iso_from_epoch, now_iso, stamp
from ._migrations import ATTEMPTS_DDL, MIGRATIONS, Migration

__all__ = [
    "COMPLETION_STATUSES",
    "JOB_STATUSES",
    "MATERIALIZATION_STATUSES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "check_iso",
    "check_schema",
    "ddl_columns",
    "ensure_schema",
    "iso_from_epoch",
    "not_a_file",
    "now_iso",
    "stamp",
    "stored_version",
]

#: Schema version this build reads and writes (2: ``cf_processing_queue.host_kills``;
#: 3: retries by hand and dead letters, ``cf_job_attempts``; 4: a submission's quarantine
#: limits and resource hints, ``cf_processing_queue.quarantine_json`` / ``resources_json``).
SCHEMA_VERSION = 4

#: ``cf_processing_queue.status`` (one spelling: upper case), from the protocol's vocabulary.
JOB_STATUSES: Final[tuple[JobStatus, ...]] = STORED_JOB_STATUSES
#: ``cf_processing_queue.completion_status`` (the worker receipt's verdict).
COMPLETION_STATUSES: Final[tuple[CompletionStatus, ...]] = tuple(CompletionStatus)
#: ``cf_output_materializations.status`` (lower case, as in the original).
MATERIALIZATION_STATUSES: Final[tuple[MaterializationStatus, ...]] = tuple(MaterializationStatus)

def _in(values: tuple[StrEnum, ...]) -> str:
    """The SQL list of a CHECK constraint, e.g. ``'QUEUED', 'RUNNING'``."""
    return ", ".join(f"'{v.value}'" for v in values)


#: The schema of :data:`SCHEMA_VERSION`; its CHECK lists come from the enums above. A column a
#: migration adds comes last, where its ALTER TABLE puts it: ``host_kills`` (version 2) counts
#: the plugin hosts killed by a signal while running the job; ``manual_retries`` and
#: ``dead_letter`` (version 3) count retries by hand and name why a job was dead-lettered;
#: ``quarantine_json`` and ``resources_json`` (version 4) hold the quarantine limits and
#: resource hints the job was submitted with.
DDL: Final = f"""
CREATE TABLE cf_meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE cf_plugins (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    source_hash    TEXT NOT NULL,
    source         TEXT,
    path           TEXT,
    trust_status   TEXT,
    manifest_json  TEXT,
    default_output TEXT,
    registered_at  TEXT NOT NULL,
    UNIQUE (name, version, source_hash)
);
CREATE TABLE cf_processing_queue (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id       TEXT,
    plugin_id           INTEGER REFERENCES cf_plugins (id),
    plugin_name         TEXT NOT NULL,
    parser_version      TEXT,
    parser_fingerprint  TEXT,
    input_file          TEXT NOT NULL,
    source_hash         TEXT,
    sink_uri            TEXT,
    sink_mode           TEXT,
    plan_json           TEXT,
    status              TEXT NOT NULL DEFAULT '{JobStatus.QUEUED.value}' CHECK (status IN ({_in(JOB_STATUSES)})),
    completion_status   TEXT CHECK (completion_status IS NULL
                                    OR completion_status IN ({_in(COMPLETION_STATUSES)})),
    priority            INTEGER NOT NULL DEFAULT 0,
    retry_count         INTEGER NOT NULL DEFAULT 0,
    attempt             INTEGER NOT NULL DEFAULT 0,
    timeout_s           REAL,
    worker_id           TEXT,
    host_pid            INTEGER,
    created_at          TEXT NOT NULL,
    claimed_at          TEXT,
    started_at          TEXT,
    ended_at            TEXT,
    scheduled_at        TEXT,
    cancel_requested_at TEXT,
    updated_at          TEXT,
    error_message       TEXT,
    error_kind          TEXT,
    traceback           TEXT,
    rows                INTEGER NOT NULL DEFAULT 0,
    quarantine_rows     INTEGER NOT NULL DEFAULT 0,
    outputs_json        TEXT,
    -- What the worker staged, kept until promotion: lets a restarted sentinel re-promote.
    staged_json         TEXT,
    artifacts_json      TEXT,
    result_summary      TEXT,
    host_kills          INTEGER NOT NULL DEFAULT 0,
    manual_retries      INTEGER NOT NULL DEFAULT 0,
    dead_letter         TEXT,
    quarantine_json     TEXT,
    resources_json      TEXT
);
-- Dispatch order (best QUEUED job first).
CREATE INDEX ix_queue_dispatch ON cf_processing_queue (status, priority DESC, id);
-- ListJobs(status) newest first: without it, a status filter sorts every matching row.
CREATE INDEX ix_queue_status_id ON cf_processing_queue (status, id);
CREATE INDEX ix_queue_submission ON cf_processing_queue (submission_id, id);
CREATE INDEX ix_queue_source_hash ON cf_processing_queue (source_hash);
CREATE TABLE cf_output_materializations (
    materialization_key TEXT PRIMARY KEY,
    output_target_key   TEXT NOT NULL,
    source_hash         TEXT NOT NULL,
    plugin_name         TEXT NOT NULL,
    parser_version      TEXT,
    output_name         TEXT NOT NULL,
    table_name          TEXT,
    sink_uri            TEXT,
    sink_mode           TEXT,
    schema_hash         TEXT,
    status              TEXT NOT NULL CHECK (status IN ({_in(MATERIALIZATION_STATUSES)})),
    rows                INTEGER NOT NULL DEFAULT 0,
    -- No foreign key: a materialization outlives any pruning of old job rows.
    job_id              INTEGER,
    created_at          TEXT NOT NULL,
    -- The plugin source that made it (version 3): an edit under the same version is stale.
    parser_fingerprint  TEXT
);
CREATE INDEX ix_mat_source_hash ON cf_output_materializations (source_hash);
CREATE INDEX ix_mat_target ON cf_output_materializations (output_target_key);
CREATE INDEX ix_mat_plugin ON cf_output_materializations (plugin_name);
CREATE TABLE cf_dead_letter (
    id              INTEGER PRIMARY KEY,
    original_job_id INTEGER NOT NULL UNIQUE,
    plugin_name     TEXT,
    input_file      TEXT,
    error_message   TEXT,
    retry_count     INTEGER,
    moved_at        TEXT NOT NULL,
    reason          TEXT
);
{ATTEMPTS_DDL};
"""


def ddl_columns(table: str) -> list[tuple[str, str]]:
    """``(column, declared type)`` of ``table`` as this build's :data:`DDL` creates it (for a
    view of the state DB before any sentinel created the file)."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(DDL)
        rows = mem.execute(f"PRAGMA table_info({table})").fetchall()
        return [(str(r[1]), str(r[2]).upper()) for r in rows]
    finally:
        mem.close()


def _version_of(conn: sqlite3.Connection, path: Path) -> int | None:
    """The stored schema version; None for an empty (fresh) database.

    Refuses a file that holds tables but no version row: it is not ours, or it is damaged,
    and guessing would risk the user's data.
    """
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"state DB {path} cannot be read ({exc}); it is not a casparian_nb state database "
            f"or it is damaged: move it aside (mv {path} {path}.broken) and start again"
        ) from exc
    user_tables = {t for t in tables if not t.startswith("sqlite_")}
    if not user_tables:
        return None
    row = None
    if "cf_meta" in user_tables:
        row = conn.execute("SELECT value FROM cf_meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        what = "casparian tables" if any(t.startswith("cf_") for t in user_tables) else "tables"
        raise SchemaVersionError(
            f"state DB {path} has {what} but no schema version, so this casparian_nb cannot "
            f"tell what it holds: move it aside (mv {path} {path}.old) and start again"
        )
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise SchemaVersionError(
            f"state DB {path} has an unreadable schema version {row[0]!r}: "
            f"move it aside (mv {path} {path}.old) and start again"
        ) from None


def stored_version(path: Path) -> int | None:
    """The schema version of the state DB at ``path``, read-only and without any check (for
    diagnostics such as the support bundle); None when there is no readable version."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True,
                               timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM cf_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else None
    except (sqlite3.Error, TypeError, ValueError):
        return None
    finally:
        conn.close()


def _newer(path: Path, found: int, supported: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"state DB {path} has schema version {found}, newer than this casparian_nb supports "
        f"({supported}): upgrade casparian_nb, or start with another --home"
    )


def check_schema(conn: sqlite3.Connection, path: Path, expected: int = SCHEMA_VERSION) -> int:
    """Reader-side check: the DB must exist and be exactly at ``expected``."""
    found = _version_of(conn, path)
    if found is None:
        raise StoreError(
            f"state DB {path} is not initialised yet: start a sentinel for this home "
            "(casparian start) first"
        )
    if found > expected:
        raise _newer(path, found, expected)
    if found < expected:
        if all(v in MIGRATIONS for v in range(found, expected)):
            todo = "start the sentinel of this version once to migrate it"
        else:  # the same advice the writer gives: a sentinel would refuse it too
            todo = (f"no migration exists from version {found}: move it aside "
                    f"(mv {path} {path}.old) to start fresh, or use the casparian_nb that made it")
        raise SchemaVersionError(
            f"state DB {path} has schema version {found}, older than this casparian_nb "
            f"expects ({expected}): {todo}"
        )
    return found


def not_a_file(path: Path) -> StoreError | None:
    """The error for a state DB path that exists but is no regular file (a directory, a
    socket...): SQLite would only say "unable to open database file"."""
    if path.exists() and not path.is_file():
        return StoreError(
            f"state DB {path} is not a regular file: move it aside (mv {path} {path}.old) "
            "and start again"
        )
    return None


def _backup_path(path: Path, old: int) -> Path:
    # Never overwrite an earlier backup: it may be the only copy of older data.
    candidate = path.with_name(f"{path.name}.bak-v{old}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak-v{old}.{n}")
        n += 1
    return candidate


def _backup(conn: sqlite3.Connection, path: Path, old: int) -> Path:
    """Copy the DB (including un-checkpointed WAL content) with SQLite's backup API."""
    dest_path = _backup_path(path, old)
    os.close(os.open(dest_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    dest = sqlite3.connect(dest_path)
    try:
        conn.backup(dest)
    finally:
        dest.close()
    return dest_path


def ensure_schema(
    conn: sqlite3.Connection,
    path: Path,
    *,
    target: int = SCHEMA_VERSION,
    migrations: Mapping[int, Migration] | None = None,
) -> int:
    """Writer-side: create a fresh schema, accept ``target``, or migrate an older one.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Returns the version found
    before any change (``0`` for a fresh database). A migration runs in one transaction after
    the file is backed up; a failure rolls back and leaves the original untouched.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    found = _version_of(conn, path)
    if found == target:
        return found
    if found is not None and found > target:
        raise _newer(path, found, target)
    if found is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in DDL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO cf_meta (key, value) VALUES ('schema_version', ?)", (str(target),)
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return 0
    missing = [v for v in range(found, target) if v not in migrations]
    if missing:
        raise SchemaVersionError(
            f"state DB {path} has schema version {found}, older than this casparian_nb "
            f"supports ({target}), and no migration exists from version {missing[0]}: move it "
            f"aside (mv {path} {path}.old) to start fresh, or use the casparian_nb that made it"
        )
    backup = _backup(conn, path, found)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(found, target):
            migrations[version](conn)
        if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise StoreError("migration left rows that break foreign keys")
        conn.execute("UPDATE cf_meta SET value = ? WHERE key = 'schema_version'", (str(target),))
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise SchemaVersionError(
            f"migrating state DB {path} from schema version {found} to {target} failed "
            f"({type(exc).__name__}: {exc}); nothing was changed, a copy is at {backup}"
        ) from exc
    return found

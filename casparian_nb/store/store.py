"""The state DB writer: ``StateStore``, owned by the sentinel (single writer, F5/F6/F8).

One process holds ``<db>.lock`` (``flock``) for as long as its ``StateStore`` is open; a second
writer is refused with the holder's pid instead of waiting on SQLite's lock. The sentinel
batches many operations per loop tick inside ``with store.transaction():``; each operation
also opens its own (nested, savepoint) transaction, so called alone it is atomic too.

Job transitions are guarded in SQL (``WHERE status = ...``) and return whether the row moved,
so a late or duplicate receipt can never complete, fail or re-queue a job twice (F8).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import StoreError
from ..protocol import CompletionStatus, JobStatus
from . import schema
from ._records import JOB_COLUMNS, Materialization, NewJob
from ._transitions import JobTransitions, dumps
from .reader import JobQueries
from .schema import (
    MATERIALIZATION_STATUSES,
    check_iso,
    ensure_schema,
    not_a_file,
    stamp,
)

__all__ = ["SKIPPED_REASON", "STALE_REASON", "BatchingStateStore", "Materialization", "NewJob",
           "StateStore"]


#: ``result_summary`` of a SKIPPED job whose outputs are all materialized.
SKIPPED_REASON = "already materialized"
#: ``result_summary`` of a SKIPPED job whose outputs were all materialized by the same plugin
#: version but another source of it (F15: reported as stale; ``force`` re-runs).
STALE_REASON = "stale: materialized by this version with a different source"


# attrgetter builds the parameter tuples ~5x faster than dataclasses.astuple (100k jobs).
_JOB_VALUES = attrgetter(*JOB_COLUMNS)
#: Statuses from which a job may be dead-lettered.
_DEAD_LETTERABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED})
_MAT_VALUES = attrgetter(*(f.name for f in fields(Materialization)))


def _lock_writer(db: Path) -> int:
    """Take the exclusive writer lock; return its fd (kept open while the store lives)."""
    lock_path = db.with_name(db.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            holder = lock_path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise StoreError(
            f"state DB {db} is already open for writing by pid {holder} "
            "(a sentinel serves this home)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class StateStore(JobTransitions, JobQueries):
    """The single writer of the state DB. Open with :meth:`StateStore.open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._read_lock = threading.Lock()
        self._depth = 0
        self.schema_version_before = 0  # set by open(): version found on disk (0 = fresh)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
    ) -> StateStore:
        """Lock, open (creating it 0600 if missing) and create or migrate the state DB.

        Raises :class:`StoreError` when another process holds the writer lock and
        :class:`SchemaVersionError` when the schema cannot be used. The schema version and
        migrations are this build's (``schema.SCHEMA_VERSION``, ``schema.MIGRATIONS``).
        """
        db = Path(path).absolute()
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (problem := not_a_file(db)) is not None:
            raise problem
        lock_fd = _lock_writer(db)
        conn: sqlite3.Connection | None = None
        try:
            if not db.exists():
                # SQLite creates -wal/-shm with the main file's mode, so 0600 here covers all.
                os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(db, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            # The version check runs before WAL is switched on, so a foreign or refused file
            # is left exactly as it was.
            before = ensure_schema(conn, db, target=schema.SCHEMA_VERSION,
                                   migrations=schema.MIGRATIONS)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException as exc:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open state DB {db}: {exc}") from exc
            raise
        store = cls(db, conn, lock_fd)
        store.schema_version_before = before
        return store

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the DB, then release the writer lock (idempotent)."""
        if self._lock_fd < 0:
            return
        with self._read_lock:
            self._conn.close()
        # The lock file stays: unlinking it would let two writers lock different inodes.
        os.close(self._lock_fd)
        self._lock_fd = -1

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested uses become savepoints.

        The outermost level commits on success (one fsync-free WAL commit for a whole loop
        tick) and rolls back on any exception; an inner level that raises undoes only its
        own work. ``sqlite3`` errors surface as :class:`StoreError`.
        """
        conn = self._conn
        depth = self._depth
        savepoint = f"sp{depth}"
        try:
            conn.execute(f"SAVEPOINT {savepoint}" if depth else "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"state DB {self.path}: {exc}") from exc
        self._depth = depth + 1
        try:
            yield
        except BaseException as exc:
            self._depth = depth
            self._undo(depth, savepoint)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"state DB {self.path}: {exc}") from exc
            raise
        self._depth = depth
        try:
            conn.execute(f"RELEASE {savepoint}" if depth else "COMMIT")
        except sqlite3.Error as exc:
            self._undo(depth, savepoint)
            raise StoreError(f"state DB {self.path}: commit failed: {exc}") from exc

    def _undo(self, depth: int, savepoint: str) -> None:
        if not self._conn.in_transaction:
            return  # SQLite already rolled back (e.g. on SQLITE_FULL)
        if depth:
            self._conn.execute(f"ROLLBACK TO {savepoint}")
            self._conn.execute(f"RELEASE {savepoint}")
        else:
            self._conn.execute("ROLLBACK")

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in a (nested) transaction; return the rows it changed."""
        with self.transaction():
            return self._conn.execute(sql, params).rowcount

    # -- plugins and jobs --------------------------------------------------------------------
    def register_plugin(
        self,
        name: str,
        version: str,
        source_hash: str,
        *,
        source: str | None = None,
        path: str | None = None,
        trust_status: str | None = None,
        manifest: Mapping[str, Any] | None = None,
        default_output: str | None = None,
        now: str | None = None,
    ) -> int:
        """Register (or refresh path/trust/manifest of) a plugin; return its id.

        The same ``(name, version, source_hash)`` always maps to the same id.
        """
        with self.transaction():
            row = self._conn.execute(
                "INSERT INTO cf_plugins (name, version, source_hash, source, path, trust_status,"
                " manifest_json, default_output, registered_at) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (name, version, source_hash) DO UPDATE SET path = excluded.path,"
                " trust_status = excluded.trust_status, manifest_json = excluded.manifest_json,"
                " default_output = excluded.default_output RETURNING id",
                (
                    name,
                    version,
                    source_hash,
                    source,
                    path,
                    trust_status,
                    dumps(manifest),
                    default_output,
                    stamp(now),
                ),
            ).fetchone()
        return int(row[0])

    def _insert(self, jobs: Sequence[NewJob], extra: Mapping[str, Any]) -> list[int]:
        if not jobs:
            return []
        columns = (*JOB_COLUMNS, *extra)
        sql = (
            f"INSERT INTO cf_processing_queue ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        tail = tuple(extra.values())
        for job in jobs:
            check_iso(job.scheduled_at, "NewJob.scheduled_at")
        with self.transaction():
            # AUTOINCREMENT hands out max(sequence, max(id)) + 1 per row, and we are the only
            # writer inside one transaction, so the new ids are one contiguous range.
            first = self._conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence"
                " WHERE name = 'cf_processing_queue'), 0),"
                " coalesce((SELECT max(id) FROM cf_processing_queue), 0)) + 1"
            ).fetchone()[0]
            self._conn.executemany(sql, [(*_JOB_VALUES(job), *tail) for job in jobs])
            last = self._conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            if last != first + len(jobs) - 1:
                raise StoreError(f"job ids are not contiguous ({first}..{last} for {len(jobs)})")
        return list(range(first, last + 1))

    def insert_jobs(self, jobs: Sequence[NewJob], now: str | None = None) -> list[int]:
        """Enqueue jobs (status QUEUED) in one batch; return their ids in input order."""
        now = stamp(now)
        return self._insert(jobs, {"status": JobStatus.QUEUED, "created_at": now,
                                   "updated_at": now})

    def insert_skipped(
        self,
        jobs: Sequence[NewJob],
        *,
        reason: str = SKIPPED_REASON,
        now: str | None = None,
    ) -> list[int]:
        """Record jobs that need no run (every output already materialized) as SKIPPED rows,
        so a re-submit is visible in the queue and reported truthfully."""
        now = stamp(now)
        return self._insert(jobs, {
            "status": JobStatus.SKIPPED, "completion_status": CompletionStatus.SKIPPED,
            "result_summary": reason,
            "created_at": now, "updated_at": now, "ended_at": now,
        })  # fmt: skip

    def dead_letter(
        self, job_id: int, reason: str, error: str | None = None, now: str | None = None
    ) -> int | None:
        """Move a job to ``cf_dead_letter``: a QUEUED/RUNNING job becomes FAILED first; an
        already FAILED one just gets its dead-letter row. Returns the dead-letter id, or None
        if the job ended otherwise (COMPLETED, ABORTED, SKIPPED). Idempotent per job."""
        now = stamp(now)
        with self.transaction():
            job = self._conn.execute(
                "SELECT status, plugin_name, input_file, error_message, retry_count"
                " FROM cf_processing_queue WHERE id = ?",
                (job_id,),
            ).fetchone()
            if job is None:
                raise StoreError(f"dead_letter: no job {job_id}")
            if job["status"] not in _DEAD_LETTERABLE:
                return None
            message = error if error is not None else job["error_message"]
            if job["status"] != JobStatus.FAILED:
                self._conn.execute(
                    "UPDATE cf_processing_queue SET status = ?, completion_status = ?,"
                    " error_message = ?, ended_at = ?, updated_at = ? WHERE id = ?",
                    (JobStatus.FAILED, CompletionStatus.FAILED, message or reason, now, now,
                     job_id),
                )
            self._conn.execute(
                "UPDATE cf_processing_queue SET dead_letter = ? WHERE id = ?", (reason, job_id))
            self._conn.execute(
                "INSERT INTO cf_dead_letter (original_job_id, plugin_name, input_file,"
                " error_message, retry_count, moved_at, reason) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (original_job_id) DO NOTHING",
                (
                    job_id,
                    job["plugin_name"],
                    job["input_file"],
                    message,
                    job["retry_count"],
                    now,
                    reason,
                ),
            )
            row = self._conn.execute(
                "SELECT id FROM cf_dead_letter WHERE original_job_id = ?", (job_id,)
            ).fetchone()
        return int(row[0])

    def record_materializations(
        self, rows: Iterable[Materialization], now: str | None = None
    ) -> int:
        """Insert materializations. Returns how many were new, so the caller can emit
        MaterializationRecorded only once per key. A key already present (a forced re-run)
        keeps its row but now names the latest job that made it, that job's rows and plugin
        source: what staleness compares against (F15)."""
        now = stamp(now)
        items = list(rows)
        for m in items:
            if m.status not in MATERIALIZATION_STATUSES:
                raise ValueError(f"materialization status {m.status!r}")
        batch = [(*_MAT_VALUES(m), now) for m in items]
        if not batch:
            return 0
        with self.transaction():
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT INTO cf_output_materializations (materialization_key, output_target_key,"
                " source_hash, plugin_name, parser_version, output_name, table_name, sink_uri,"
                " sink_mode, schema_hash, status, rows, job_id, parser_fingerprint, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                batch,
            )
            added = self._conn.total_changes - before
            self._conn.executemany(
                "UPDATE cf_output_materializations SET job_id = ?, rows = ?, status = ?,"
                " parser_fingerprint = ? WHERE materialization_key = ? AND job_id IS NOT ?",
                [(m.job_id, m.rows, m.status, m.parser_fingerprint, m.materialization_key,
                  m.job_id) for m in items if m.job_id is not None],
            )
            return added

    def repoint_artifacts(self, moves: Mapping[str, str], now: str | None = None) -> int:
        """Point job artifacts at the files now holding their rows: every artifact whose
        ``uri`` is a key of ``moves`` (``file://`` URIs, as promotion records them) gets
        the value (a compaction merged the file into it). Returns the jobs changed."""
        if not moves:
            return 0
        now = stamp(now)
        with self.transaction():
            rows = self._conn.execute(
                "SELECT DISTINCT q.id, q.artifacts_json FROM cf_processing_queue q,"
                " json_each(q.artifacts_json) a WHERE q.artifacts_json IS NOT NULL"
                " AND json_valid(q.artifacts_json) AND json_type(q.artifacts_json) = 'array'"
                " AND json_extract(a.value, '$.uri') IN (SELECT value FROM json_each(?))",
                (json.dumps(list(moves)),)).fetchall()
            for job_id, text in rows:
                artifacts = json.loads(text)
                for art in artifacts:
                    if isinstance(art, dict) and art.get("uri") in moves:
                        art["uri"] = moves[art["uri"]]
                self._conn.execute(
                    "UPDATE cf_processing_queue SET artifacts_json = ?, updated_at = ?"
                    " WHERE id = ?", (dumps(artifacts), now, job_id))
        return len(rows)


class BatchingStateStore(StateStore):
    """The writer as the sentinel's loop uses it: every operation runs inside the loop
    iteration's one transaction, which alone makes the batch atomic. Nested levels therefore
    take no savepoint (one SQL statement is atomic by itself, and when anything in the batch
    fails the loop rolls the whole batch back and replays it one operation per transaction):
    this halves the statements per job."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The outermost level as :meth:`StateStore.transaction`; nested levels join it."""
        if self._depth:
            yield
            return
        with super().transaction():
            yield

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._depth:
            return int(self._conn.execute(sql, params).rowcount)
        return super()._exec(sql, params)

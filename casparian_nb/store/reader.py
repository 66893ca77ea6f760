"""Read side of the state DB: the query API shared by writer and readers, and ``StateReader``.

Any process (CLI, notebook, widgets) may open a ``StateReader`` while the sentinel writes. It
uses a ``mode=ro`` URI and autocommit, so each query is its own short WAL snapshot: it never
waits for the writer and never holds a snapshot open that would stop checkpoints (F5).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from ..errors import SchemaVersionError, StoreError
from ..protocol import JobStatus
from . import schema
from .schema import JOB_STATUSES, check_schema, ddl_columns, not_a_file

__all__ = [
    "QUEUE_ROW_COLUMNS", "TABLES", "JobQueries", "StateReader", "job_to_info", "table_columns",
]

#: Columns holding JSON text; row dicts carry them decoded (key unchanged).
_JSON_COLUMNS = frozenset(
    {"plan_json", "outputs_json", "artifacts_json", "staged_json", "manifest_json"}
)

#: The wire / CLI projection of a job (``JobInfo``): small, no traceback, no plan.
_INFO_FIELDS = (
    "id", "status", "completion_status", "plugin_name", "parser_version", "input_file",
    "source_hash", "submission_id", "sink_uri", "sink_mode", "priority", "retry_count",
    "host_kills", "attempt", "worker_id", "created_at", "claimed_at", "started_at", "ended_at",
    "scheduled_at", "cancel_requested_at", "updated_at", "error_message", "error_kind",
    "rows", "quarantine_rows", "result_summary", "manual_retries", "dead_letter",
)  # fmt: skip


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(zip(row.keys(), tuple(row), strict=True))
    for key in _JSON_COLUMNS.intersection(out):
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def job_to_info(row: Mapping[str, Any]) -> dict[str, Any]:
    """Project a job dict (from ``get_job``/``list_jobs``) onto the wire/CLI ``JobInfo``.

    Keeps ``id``, ``status``, ``plugin_name``, ``input_file``, timestamps, counters and the
    error, adds ``cancel_requested`` (the UI shows "aborting…" while it is true on a RUNNING
    job) and ``outputs`` (rows per output), and leaves out the plan and traceback.
    """
    info = {name: row.get(name) for name in _INFO_FIELDS}
    info["cancel_requested"] = row.get("cancel_requested_at") is not None
    outputs = row.get("outputs_json")
    info["outputs"] = json.loads(outputs) if isinstance(outputs, str) else outputs
    return info


def _statuses(status: str | Iterable[str] | None) -> list[JobStatus]:
    if status is None:
        return []
    wanted = [status] if isinstance(status, str) else list(status)
    out = []
    for s in wanted:
        upper = s.strip().upper()
        if upper not in JOB_STATUSES:
            raise ValueError(f"unknown job status {s!r}; expected one of {', '.join(JOB_STATUSES)}")
        out.append(JobStatus(upper))
    return out


def _where(clauses: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b = ?`` for the clauses whose value is not None, and its params."""
    used = {column: value for column, value in clauses.items() if value is not None}
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c in used), list(used.values())


#: What the sentinel reads of a job to queue and dispatch it (``iter_dispatchable``).
DISPATCH_COLUMNS = ("id", "priority", "timeout_s", "retry_count", "host_kills", "attempt",
                    "scheduled_at",
                    "plan_json", "input_file", "plugin_id", "parser_fingerprint",
                                    "plugin_name", "parser_version", "sink_uri", "sink_mode", "submission_id",
                    "quarantine_json", "resources_json")

#: What the notebook's queue table shows of a job (``queue_rows``): no JSON, no traceback.
QUEUE_ROW_COLUMNS = ("id", "status", "plugin_name", "input_file", "worker_id", "rows",
                     "claimed_at", "started_at", "ended_at", "cancel_requested_at",
                     "error_message", "error_kind", "retry_count", "host_kills", "attempt",
                     "dead_letter", "result_summary")
_QUEUE_ROW_SELECT = f"SELECT {', '.join(QUEUE_ROW_COLUMNS)} FROM cf_processing_queue"

#: Tables a reader may export whole (the notebook's SQL catalog), by their public name.
TABLES = {"jobs": "cf_processing_queue", "materializations": "cf_output_materializations"}


class JobQueries:
    """Queries shared by :class:`StateReader` and the writer ``StateStore``.

    Subclasses set ``path`` and ``_conn`` (row factory :class:`sqlite3.Row`).
    """

    path: Path
    _conn: sqlite3.Connection
    # A notebook may poll from a widget thread; one connection must not run two statements
    # at once, so reads serialise on this lock (uncontended in the sentinel).
    _read_lock: threading.Lock

    def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"state DB {self.path}: {exc}") from exc

    # -- jobs ------------------------------------------------------------------------------
    def iter_dispatchable(self, status: JobStatus = JobStatus.QUEUED, batch: int = 5000,
                          ) -> Iterator[dict[str, Any]]:
        """Jobs in ``status``, oldest first, with only the columns a sentinel needs to
        dispatch them (``plan_json`` left as text), fetched ``batch`` rows at a time: a
        restart with 100,000 queued jobs never holds them all as full rows."""
        last = 0
        while True:
            rows = self._fetchall(
                f"SELECT {', '.join(DISPATCH_COLUMNS)} FROM cf_processing_queue "
                "WHERE status = ? AND id > ? ORDER BY id LIMIT ?", (status, last, batch))
            for row in rows:
                yield dict(zip(DISPATCH_COLUMNS, tuple(row), strict=True))
            if len(rows) < batch:
                return
            last = int(rows[-1][0])

    def list_jobs(
        self,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        submission_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs newest first (``id`` descending), optionally filtered by status(es) and
        submission. Negative ``limit``/``offset`` clamp to 0, as in the original API."""
        where: list[str] = []
        params: list[Any] = []
        statuses = _statuses(status)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if submission_id is not None:
            where.append("submission_id = ?")
            params.append(submission_id)
        sql = "SELECT * FROM cf_processing_queue"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        params.extend([max(0, int(limit)), max(0, int(offset))])
        return [_row_dict(r) for r in self._fetchall(sql, params)]

    def count_jobs(self, status: str | None = None, submission_id: str | None = None) -> int:
        """How many jobs match a ``list_jobs`` filter (the ``total`` of its pages)."""
        where, params = _where({"status": status and JobStatus(status.upper()),
                                "submission_id": submission_id})
        return int(self._fetchall(f"SELECT count(*) FROM cf_processing_queue{where}",
                                  params)[0][0])

    def queue_rows(self, *, newest: int | None = None,
                   ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The queue-table projection (:data:`QUEUE_ROW_COLUMNS`) of the ``newest`` jobs
        (newest first) or of the jobs ``ids`` (any number, one query): light enough to
        re-read 10,000 jobs every few seconds from a notebook's thread."""
        if ids is not None:
            wanted = [int(i) for i in ids]
            if not wanted:
                return []
            # json_each takes any number of ids in one bound parameter.
            rows = self._fetchall(
                f"{_QUEUE_ROW_SELECT} WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),))
        else:
            rows = self._fetchall(f"{_QUEUE_ROW_SELECT} ORDER BY id DESC LIMIT ?",
                                  (max(0, int(newest or 0)),))
        return [dict(zip(QUEUE_ROW_COLUMNS, tuple(r), strict=True)) for r in rows]

    def sink_uris(self) -> list[str]:
        """Every distinct sink jobs were submitted with (each sink of a routing, whose
        ``sink_uri`` holds the mapping's JSON)."""
        rows = self._fetchall(
            "SELECT DISTINCT sink_uri FROM cf_processing_queue WHERE sink_uri IS NOT NULL")
        found: dict[str, None] = {}
        for (text,) in rows:
            text = str(text)
            for uri in _routed_uris(text) if text.lstrip().startswith("{") else [text]:
                found.setdefault(uri)
        return list(found)

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        """One job with every column (JSON columns decoded), or None."""
        rows = self._fetchall("SELECT * FROM cf_processing_queue WHERE id = ?", (int(job_id),))
        return _row_dict(rows[0]) if rows else None

    def job_ids_for_submission(self, submission_id: str) -> list[int]:
        """Ids of every job of one submission (any status), ascending."""
        rows = self._fetchall(
            "SELECT id FROM cf_processing_queue WHERE submission_id = ? ORDER BY id",
            (submission_id,),
        )
        return [int(r[0]) for r in rows]

    def running_jobs(self) -> list[dict[str, Any]]:
        """Every RUNNING job, oldest first."""
        rows = self._fetchall(
            "SELECT * FROM cf_processing_queue WHERE status = ? ORDER BY id", (JobStatus.RUNNING,)
        )
        return [_row_dict(r) for r in rows]

    def queued_jobs(self) -> list[tuple[int, int, str | None]]:
        """``(priority, id, scheduled_at)`` of every QUEUED job, in dispatch order
        (priority descending, then id) — what the sentinel needs to rebuild its queue."""
        rows = self._fetchall(
            "SELECT priority, id, scheduled_at FROM cf_processing_queue "
            "WHERE status = ? ORDER BY priority DESC, id", (JobStatus.QUEUED,)
        )
        return [(int(r[0]), int(r[1]), r[2]) for r in rows]

    def queue_stats(self) -> dict[str, int]:
        """Counts per status plus ``cancel_requested`` (RUNNING jobs being aborted) and
        ``total`` (every row, whatever its status)."""
        # One statement = one snapshot, so the counts always add up.
        rows = self._fetchall(
            "SELECT status, count(*) FROM cf_processing_queue GROUP BY status "
            "UNION ALL SELECT NULL, count(*) FROM cf_processing_queue "
            "WHERE status = ? AND cancel_requested_at IS NOT NULL", (JobStatus.RUNNING,)
        )
        stats = {s.lower(): 0 for s in JOB_STATUSES}
        stats["cancel_requested"] = 0
        total = 0
        for status, count in rows:
            if status is None:  # the second SELECT: RUNNING jobs being aborted
                stats["cancel_requested"] = int(count)
            else:
                stats[status.lower()] = int(count)
                total += int(count)
        stats["total"] = total
        return stats

    # -- materializations, dead letters, plugins -------------------------------------------
    def materialized(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already recorded in ``cf_output_materializations``."""
        wanted = list(keys)
        if not wanted:
            return set()
        # json_each takes any number of keys in one bound parameter (no 999-variable limit).
        rows = self._fetchall(
            "SELECT materialization_key FROM cf_output_materializations "
            "WHERE materialization_key IN (SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        )
        return {r[0] for r in rows}

    def materialized_by(self, keys: Iterable[str]) -> dict[str, str | None]:
        """The recorded ones of ``keys``, each with the source hash of the plugin that made
        it (``parser_fingerprint``; None when unknown), for the staleness check (F15)."""
        wanted = list(keys)
        if not wanted:
            return {}
        rows = self._fetchall(
            "SELECT materialization_key, parser_fingerprint FROM cf_output_materializations "
            "WHERE materialization_key IN (SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        )
        return {r[0]: r[1] for r in rows}

    def list_materializations(
        self,
        *,
        source_hash: str | None = None,
        plugin_name: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Recorded materializations, newest first, optionally filtered."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("source_hash", source_hash),
            ("plugin_name", plugin_name),
            ("job_id", job_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM cf_output_materializations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        params.extend([max(0, int(limit)), max(0, int(offset))])
        return [_row_dict(r) for r in self._fetchall(sql, params)]

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        """Every attempt of a job, oldest first: the ended ones kept in ``cf_job_attempts``
        and then the job row's current one (``attempt``, ``status``, ``error_message``,
        ``error_kind``, ``traceback``, ``worker_id``, ``started_at``, ``ended_at``...)."""
        rows = [_row_dict(r) for r in self._fetchall(
            "SELECT * FROM cf_job_attempts WHERE job_id = ? ORDER BY attempt", (int(job_id),))]
        current = self._fetchall(
            "SELECT id AS job_id, attempt, status, error_message, error_kind, traceback,"
            " worker_id, host_pid, claimed_at, started_at, ended_at, result_summary AS reason"
            " FROM cf_processing_queue WHERE id = ? AND attempt > 0", (int(job_id),))
        seen = {r["attempt"] for r in rows}
        rows += [_row_dict(r) for r in current if r["attempt"] not in seen]
        return rows

    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Dead-lettered jobs, newest first."""
        rows = self._fetchall(
            "SELECT * FROM cf_dead_letter ORDER BY id DESC LIMIT ? OFFSET ?",
            (max(0, int(limit)), max(0, int(offset))),
        )
        return [_row_dict(r) for r in rows]

    def get_plugin(self, plugin_id: int) -> dict[str, Any] | None:
        """One registered plugin (``manifest_json`` decoded), or None."""
        rows = self._fetchall("SELECT * FROM cf_plugins WHERE id = ?", (int(plugin_id),))
        return _row_dict(rows[0]) if rows else None

    def list_plugins(self) -> list[dict[str, Any]]:
        """Registered plugins, oldest first."""
        return [_row_dict(r) for r in self._fetchall("SELECT * FROM cf_plugins ORDER BY id")]

    # -- whole tables, for the notebook's SQL catalog --------------------------------------
    def data_version(self) -> int:
        """SQLite's ``data_version`` of this connection: it changes when another connection
        commits, so a cache of :meth:`table_rows` knows when to read again."""
        return int(self._fetchall("PRAGMA data_version")[0][0])

    def table_columns(self, name: str) -> list[tuple[str, str]]:
        """``(column, declared type)`` of one of :data:`TABLES`, in table order."""
        rows = self._fetchall(f"PRAGMA table_info({TABLES[name]})")
        return [(str(r[1]), str(r[2]).upper()) for r in rows]

    def table_rows(self, name: str, columns: Iterable[str]) -> list[tuple[Any, ...]]:
        """Every row of one of :data:`TABLES` (raw values: JSON columns stay text)."""
        names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        return [tuple(r) for r in self._fetchall(f"SELECT {names} FROM {TABLES[name]}")]


def table_columns(reader: JobQueries | None, name: str) -> list[tuple[str, str]]:
    """:meth:`JobQueries.table_columns`, or the columns this build's schema gives the table
    when there is no DB yet (so queries over an empty home still know them)."""
    if reader is not None:
        try:
            if columns := reader.table_columns(name):
                return columns
        except StoreError:
            pass
    return ddl_columns(TABLES[name])


class StateReader(JobQueries):
    """A read-only view of the state DB, safe to use while the sentinel writes."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._read_lock = threading.Lock()

    @classmethod
    def open(
        cls, path: str | os.PathLike[str]
    ) -> StateReader:
        """Open ``path`` read-only. Raises :class:`StoreError` if it does not exist or is not
        initialised, :class:`SchemaVersionError` if its version is not this build's."""
        db = Path(path).absolute()
        if (problem := not_a_file(db)) is not None:
            raise problem
        if not db.is_file():
            raise StoreError(
                f"state DB {db} does not exist: start a sentinel for this home "
                "(casparian start) first"
            )
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(db))}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state DB {db} for reading: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            # WAL readers only wait in rare recovery windows; bound that wait.
            conn.execute("PRAGMA busy_timeout = 1000")
            conn.execute("PRAGMA query_only = ON")
            check_schema(conn, db, schema.SCHEMA_VERSION)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot read state DB {db}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(db, conn)

    @classmethod
    def open_if_ready(cls, path: str | os.PathLike[str]) -> StateReader | None:
        """Like :meth:`open`, but None while there is nothing to read yet (no file, not
        initialised, another schema version): for views that poll until a sentinel ran."""
        try:
            return cls.open(path)
        except (StoreError, SchemaVersionError):
            return None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._read_lock:
            self._conn.close()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _routed_uris(text: str) -> list[str]:
    """The sinks of a routing stored as JSON (``{"orders": "duckdb:///...", "*": ...}``, its
    URIs already canonical: ``sinks.SinkRouting`` wrote it)."""
    try:
        mapping = json.loads(text)
    except ValueError:
        return []
    return [str(v) for v in mapping.values()] if isinstance(mapping, dict) else []

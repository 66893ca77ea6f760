"""Promotion into a DuckDB database file.

DuckDB lets one process at a time open a file read-write (and while it does, no other
process can even read it). So plugin hosts never touch the database: they stage Parquet,
and the committer loads it here in one transaction per job, under an ``flock`` on
``<file>.lock`` that serialises casparian committers, then closes the connection so
notebooks and the CLI can open the file again.

Opening and closing a DuckDB file costs ~15 ms (its checkpoint on close included), ten times
what loading a small job does. So a thread that promotes many jobs in a row — the sentinel's
committer — may *hold* its connections (:func:`._held.holding_connections`): each job is still its
own transaction (committed, so durable in DuckDB's WAL), but the file stays open across a
burst and is closed when the burst ends or after ``max_age`` seconds, whichever comes first,
so a notebook waiting to read gets in at least that often.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import duckdb

from ..errors import SinkError, SinkModeError
from ..lineage import LINEAGE_COLUMNS, quarantine_name
from ._duckdb_open import connect, exclusive
from ._held import current_holder
from .staging import Artifact, StagedJob
from .uri import SinkMode, SinkURI

__all__ = ["load_uncommitted", "promote_duckdb"]

_JOB_ID = LINEAGE_COLUMNS[1]


def promote_duckdb(
    staged: StagedJob,
    sink: SinkURI,
    mode: SinkMode,
    run_ids: frozenset[str],
    lock_timeout: float,
) -> list[Artifact]:
    """Load every staged output of ``staged`` into ``sink`` in a single transaction."""
    artifacts = [
        Artifact(o.output, o.table, o.rows, str(SinkURI("duckdb", sink.path, o.table)))
        for o in staged.outputs
    ]
    if not staged.outputs:
        return artifacts
    sink.path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout
    holder = current_holder()
    if holder is not None:
        con = holder.connection(sink.path, deadline)
        try:
            _transaction(con, staged, sink, mode, run_ids)
        except BaseException:
            holder.close(sink.path)  # its state is unknown now: the next job reconnects
            raise
        return artifacts
    with exclusive(sink.path, deadline):
        con = connect(sink.path, deadline)
        try:
            _transaction(con, staged, sink, mode, run_ids)
        finally:
            con.close()  # release DuckDB's own file lock for readers right away
    return artifacts


def _transaction(con: duckdb.DuckDBPyConnection, staged: StagedJob, sink: SinkURI,
                 mode: SinkMode, run_ids: frozenset[str]) -> None:
    """One job's outputs in one transaction (nothing if they are already there)."""
    con.execute("BEGIN TRANSACTION")
    try:
        if not _already_loaded(con, staged):
            _apply_mode(con, staged, sink, mode, run_ids)
            _load(con, staged, sink)
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def load_uncommitted(con: duckdb.DuckDBPyConnection, staged: StagedJob, sink: SinkURI,
                     mode: SinkMode, run_ids: frozenset[str]) -> None:
    """Open a transaction and load ``staged`` into it (nothing if it is already there),
    leaving the COMMIT to the caller: a job spanning several sinks commits after its journal
    reached its commit point (:mod:`._multi`). Rolled back here if the load fails."""
    con.execute("BEGIN TRANSACTION")
    try:
        if not _already_loaded(con, staged):
            _apply_mode(con, staged, sink, mode, run_ids)
            _load(con, staged, sink)
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str] | None:
    """Column names of ``main.<table>``, or None when there is no such table."""
    if not con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE schema_name = 'main' AND lower(table_name) = lower(?)",
        [table],
    ).fetchall():
        return None
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND lower(table_name) = lower(?)",
        [table],
    ).fetchall()
    return [r[0] for r in rows]


def _already_loaded(con: duckdb.DuckDBPyConnection, staged: StagedJob) -> bool:
    """True if an earlier promotion of this job (or batch) committed (all its tables load
    together)."""
    ids = staged.row_job_ids
    for o in staged.outputs:
        cols = _columns(con, o.table)
        if o.rows and cols is not None and _JOB_ID in cols:
            sql = (f"SELECT 1 FROM {_q(o.table)} WHERE list_contains(?::VARCHAR[], "
                   f"{_q(_JOB_ID)}) LIMIT 1")
            if con.execute(sql, [ids]).fetchall():
                return True
    return False


def _apply_mode(
    con: duckdb.DuckDBPyConnection,
    staged: StagedJob,
    sink: SinkURI,
    mode: SinkMode,
    run_ids: frozenset[str],
) -> None:
    """error: refuse if other runs' rows exist; replace: delete them (same transaction)."""
    if mode is SinkMode.APPEND:
        return
    governed: dict[str, str] = {}
    for o in staged.outputs:
        governed.setdefault(o.table, o.output)
        governed.setdefault(quarantine_name(o.table), quarantine_name(o.output))
    ids = sorted(run_ids)
    for table, output in governed.items():
        cols = _columns(con, table)
        if cols is None:
            continue
        # A table without lineage cannot show which run wrote it: all its rows are "other".
        other = (
            f"{_q(_JOB_ID)} IS NULL OR NOT list_contains(?::VARCHAR[], {_q(_JOB_ID)})"
            if _JOB_ID in cols
            else "TRUE"
        )
        params = [ids] if _JOB_ID in cols else []
        if mode is SinkMode.ERROR:
            if con.execute(f"SELECT 1 FROM {_q(table)} WHERE {other} LIMIT 1", params).fetchall():
                uri = SinkURI("duckdb", sink.path, table)
                raise SinkModeError(
                    f"output {output!r} already has data in {uri}; mode=error refuses to add "
                    "to it — use mode=append or replace"
                )
            continue
        con.execute(f"DELETE FROM {_q(table)} WHERE {other}", params)
        (left,) = con.execute(f"SELECT count(*) FROM {_q(table)}").fetchone() or (0,)
        if not left:
            # Nothing of this run is in it: recreate from the staged schema, so a plugin
            # whose columns changed can be re-run with mode=replace.
            con.execute(f"DROP TABLE {_q(table)}")


def _load(con: duckdb.DuckDBPyConnection, staged: StagedJob, sink: SinkURI) -> None:
    for o in staged.outputs:
        if not Path(o.path).is_file():
            raise SinkError(f"job {staged.job_id!r}: staged file {o.path} is missing")
        source = f"read_parquet({_lit(o.path)})"
        try:
            if _columns(con, o.table) is None:
                con.execute(f"CREATE TABLE {_q(o.table)} AS SELECT * FROM {source} LIMIT 0")
            con.execute(f"INSERT INTO {_q(o.table)} BY NAME SELECT * FROM {source}")
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            raise SinkError(
                f"cannot load output {o.output!r} into table {o.table!r} of {sink.path}: {first}"
            ) from exc

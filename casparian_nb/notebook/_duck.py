"""Helpers of :mod:`.catalog`: DuckDB sink files attached read-only, and the state DB as Arrow.

Both exist to keep one promise: the notebook never blocks the sentinel or a sink writer.

* A DuckDB file can be opened by one writer process *or* by readers — while a reader has it
  attached, the committer cannot open it. So :class:`DuckFile` attaches only for the duration
  of one query, and first checks the committer's ``<file>.lock`` with a non-blocking shared
  ``flock``: if a committer holds it, the file is skipped with a note instead of waited for.
* The state DB is SQLite in WAL mode; :class:`StateTables` reads it through a
  :class:`~casparian_nb.store.StateReader` (each statement its own short snapshot), and
  re-reads a table only when its ``data_version`` says another connection committed since.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import StoreError
from ..store import TABLES, StateReader
from ..store.reader import table_columns

__all__ = ["DuckFile", "StateTables", "duck_alias", "lit", "quote_ident"]

#: catalog name -> state DB table.
STATE_TABLES = TABLES
_ARROW_TYPES = {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.string()}


def quote_ident(name: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def duck_alias(path: Path, taken: set[str]) -> str:
    """A catalog alias for a DuckDB file: its stem as an identifier, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9_]", "_", path.stem.lower()) or "db"
    if base[0].isdigit():
        base = "db_" + base
    alias, n = base, 1
    while alias in taken or alias in STATE_TABLES or alias in ("memory", "temp", "main"):
        n += 1
        alias = f"{base}_db" if n == 2 else f"{base}_db{n - 1}"
    return alias


class DuckFile:
    """One DuckDB sink file: its alias, its (cached) table names, attach/detach for a query."""

    def __init__(self, path: Path, alias: str) -> None:
        self.path = path
        self.alias = alias
        self.tables: list[str] = []
        self._stamp: tuple[int, int] | None = None
        self._lock_fd: int | None = None

    def update_tables(self, con: duckdb.DuckDBPyConnection) -> str | None:
        """Re-list the file's tables if it changed since the last look; a note if skipped."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.tables, self._stamp = [], None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return None
        note = self.attach(con)
        if note:
            return note
        try:
            rows = con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
                "UNION SELECT view_name FROM duckdb_views() WHERE database_name = ? "
                "AND NOT internal ORDER BY 1", [self.alias, self.alias]).fetchall()
            self.tables = [r[0] for r in rows]
            self._stamp = stamp
        finally:
            self.detach(con)
        return None

    def attach(self, con: duckdb.DuckDBPyConnection) -> str | None:
        """ATTACH read-only under :attr:`alias`; returns a note (and attaches nothing) when a
        writer holds the file."""
        if not self.path.is_file():
            return f"DuckDB sink {self.path} does not exist yet"
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd: int | None = None
        if lock_path.exists():
            try:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if fd is not None:
                    os.close(fd)
                return (f"skipped DuckDB sink {self.path}: a committer is writing it right now "
                        "(its tables are left out of this query; run it again in a moment)")
            except OSError:
                if fd is not None:
                    os.close(fd)
                fd = None  # unreadable lock file: DuckDB's own lock still protects the file
        try:
            con.execute(f"ATTACH {lit(str(self.path))} AS {quote_ident(self.alias)} "
                        "(READ_ONLY)")
        except duckdb.Error as exc:
            if fd is not None:
                os.close(fd)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"skipped DuckDB sink {self.path}: {first}"
        self._lock_fd = fd
        return None

    def detach(self, con: duckdb.DuckDBPyConnection) -> None:
        """DETACH and release the shared lock (so the committer can open the file again)."""
        try:
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DETACH DATABASE IF EXISTS {quote_ident(self.alias)}")
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None


class StateTables:
    """``jobs`` and ``materializations`` from the SQLite state DB, as Arrow tables."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._reader: StateReader | None = None
        self._version: int | None = None
        self._loaded: dict[str, pa.Table] = {}

    def _connect(self) -> StateReader | None:
        if self._reader is None:
            self._reader = StateReader.open_if_ready(self.db)  # None until the sentinel ran
        return self._reader

    def sink_uris(self) -> list[str]:
        """Every distinct ``sink_uri`` jobs were submitted with."""
        reader = self._connect()
        if reader is None:
            return []
        try:
            return reader.sink_uris()
        except StoreError:
            return []

    def register(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """(Re-)register ``_cf_jobs`` / ``_cf_materializations`` if the DB changed; names."""
        reader = self._connect()
        version = None
        if reader is not None:
            with contextlib.suppress(StoreError):
                version = reader.data_version()
        changed = version is None or version != self._version or not self._loaded
        if changed:
            for name in STATE_TABLES:
                self._loaded[name] = _read_table(reader, name)
                con.register(f"_cf_{name}", self._loaded[name])
            self._version = version
        return list(STATE_TABLES)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _read_table(reader: StateReader | None, name: str) -> pa.Table:
    columns = table_columns(reader, name)
    rows: list[tuple[Any, ...]] = []
    if reader is not None:
        with contextlib.suppress(StoreError):
            rows = reader.table_rows(name, [c for c, _ in columns])
    arrays = []
    for i, (_, decl) in enumerate(columns):
        values = [r[i] for r in rows]
        typ = _ARROW_TYPES.get(decl, pa.string())
        try:
            arrays.append(pa.array(values, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # SQLite is dynamically typed: a stray value of another type degrades to text.
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=[c for c, _ in columns])

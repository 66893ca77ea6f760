"""SQL over a home's outputs: an in-kernel DuckDB catalog of views, refreshed on every query.

>>> cat = OutputCatalog(settings)                                   # doctest: +SKIP
>>> cat.sql("select count(*) from orders")                          # doctest: +SKIP

What the catalog shows:

* one VIEW per output over every promoted file of that output in every known sink directory
  (``read_parquet([...globs], union_by_name=true)``; CSV likewise). Files are named
  ``<output>_<16 hex>.<ext>``, so a fixed-width glob (16 ``?``) picks exactly one output:
  ``orders_*`` would also match ``orders_quarantine_*``. DuckDB re-globs on every query, so new
  files appear at once; the views themselves are re-created only when the set of outputs or
  directories changed.
* the tables of DuckDB sink files, ATTACHed read-only only for the queries that name them and
  detached right after: DuckDB lets a reader block its one writer, so the catalog never keeps
  a sink file open between queries, and skips (with a note) a file whose ``<file>.lock`` a
  committer holds.
* ``jobs``, ``materializations`` (the SQLite state DB, read by Python's ``sqlite3`` in
  read-only mode — DuckDB's sqlite extension cannot be downloaded here — and registered as
  Arrow tables, re-read only when the DB changed) and ``tape_events`` (NDJSON tapes read with
  ``read_json``).

Sink directories come from the state DB (``sink_uri`` of every job), the default output
directory and any ``sinks`` given. Nothing here writes to the home, takes a lock a writer
waits on for longer than one query, or opens the state DB for writing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import duckdb

from ..config import Settings, load_settings
from ..errors import CasparianError
from ._duck import DuckFile, StateTables, duck_alias, lit, quote_ident

__all__ = ["CatalogQueryError", "OutputCatalog", "ResultFormat", "SqlParams",
           "UnknownTableError"]

#: Query parameters: named (``$name``) or positional (``?``).
SqlParams = Mapping[str, Any] | Sequence[Any] | None
#: What a query returns: a pandas DataFrame or a pyarrow Table.
ResultFormat = Literal["pandas", "arrow"]

#: ``<output>_<16 hex>.<ext>`` (quarantine files are ``<output>_quarantine_<16 hex>``).
_FILE = re.compile(r"^([a-z][a-z0-9_]*)_[0-9a-f]{16}\.(parquet|csv)$")
_HEX16 = "?" * 16
#: Name prefix of a compaction's journal in a sink directory (sinks/compaction.py).
_COMPACTION_JOURNAL = ".cf-compact-"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist", re.IGNORECASE)
#: Envelope columns of a tape line; ``payload`` stays JSON (its shape varies by event).
_TAPE_COLUMNS = (
    "{schema_version: 'INTEGER', event_id: 'VARCHAR', seq: 'BIGINT', timestamp: 'VARCHAR', "
    "correlation_id: 'VARCHAR', parent_id: 'VARCHAR', "
    "event_name: 'STRUCT(type VARCHAR, name VARCHAR)', payload: 'JSON'}"
)


class CatalogQueryError(CasparianError, ValueError):
    """A query over the output catalog failed (the DuckDB message is kept)."""

    def _render_traceback_(self) -> list[str]:
        # In a notebook the SQL problem is the whole story; our stack frames are noise.
        first, *rest = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {first}", *rest]


class UnknownTableError(CatalogQueryError, LookupError):
    """The query names a table the catalog does not have; lists the ones it has."""

    def __init__(self, name: str, known: Sequence[str], notes: Sequence[str] = ()) -> None:
        listing = ", ".join(known) if known else "(none yet: no outputs, jobs or tapes found)"
        text = f"unknown table {name}; known tables: {listing}"
        if notes:
            text += "\n" + "\n".join(f"note: {n}" for n in notes)
        super().__init__(text)
        self.name = name
        self.known = list(known)


class OutputCatalog:
    """An in-memory DuckDB catalog over the outputs, jobs and tapes of one home.

    Parameters
    ----------
    home:
        A :class:`~casparian_nb.config.Settings`, or a home directory (settings are loaded).
    sinks:
        Extra sink URIs or directories to include (besides the state DB's and the default).
    tapes:
        Tape files behind ``tape_events``; default every ``<home>/tapes/*.tape``.
    """

    def __init__(
        self,
        home: Settings | str | os.PathLike[str] | None = None,
        sinks: Iterable[str | os.PathLike[str]] | None = None,
        *,
        tapes: Iterable[str | os.PathLike[str]] | None = None,
    ) -> None:
        # Reading must not create anything in the home: create=False.
        self.settings = home if isinstance(home, Settings) else load_settings(home, create=False)
        self._extra_sinks = [os.fspath(s) for s in sinks or ()]
        self._tapes = None if tapes is None else [Path(t) for t in tapes]
        # No extension may be fetched (offline, and a query must never hang on a download).
        self._con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                       "autoload_known_extensions": False})
        self._lock = threading.Lock()
        self._state = StateTables(self.settings.state_db)
        self._views: dict[str, str] = {}  # view name -> defining SELECT
        self._duck: dict[Path, DuckFile] = {}
        #: Per sink directory, files a dead compaction left that the views skip.
        self._hidden: dict[Path, set[str]] = {}
        #: Why something was left out of the last refresh (a locked DuckDB file, ...).
        self.notes: list[str] = []

    # -- public API --------------------------------------------------------------------------
    def sql(self, query: str, params: SqlParams = None, *,
            as_: ResultFormat = "pandas") -> Any:
        """Run ``query`` over the current outputs: a pandas DataFrame, or a pyarrow Table
        with ``as_="arrow"``. ``params`` are DuckDB parameters (``$name`` with a mapping,
        ``?`` with a sequence) — values travel beside the SQL, never pasted into it."""
        if as_ not in ("pandas", "arrow"):
            raise ValueError(f"as_ must be 'pandas' or 'arrow', not {as_!r}")
        from ..sinks.compaction import read_lock

        with self._lock, read_lock(self._file_sink_dirs()):
            # Listing and reading the sink directories inside the compaction's reader lock:
            # a compaction's swap (link the merged file, unlink its sources) is never seen
            # half done, so no row is counted twice or missed.
            self._refresh()
            attached = self._attach_for(query)
            try:
                return self._run(query, params, as_)
            finally:
                self._detach(attached)

    def tables(self) -> list[str]:
        """Every table a query can name (views, state tables, DuckDB sink tables)."""
        with self._lock:
            self._refresh()
            return self._known()

    def refresh(self) -> None:
        """Re-scan sink directories, the state DB and tapes now (``sql`` does it anyway)."""
        with self._lock:
            self._refresh()

    def close(self) -> None:
        """Close the DuckDB connection and the state DB reader."""
        with self._lock:
            self._state.close()
            self._con.close()

    def __enter__(self) -> OutputCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OutputCatalog home={str(self.settings.home)!r} views={len(self._views)}>"

    # -- refresh -----------------------------------------------------------------------------
    def _sink_uris(self) -> list[str]:
        uris = [self.settings.effective_default_sink, *self._state.sink_uris()]
        for s in self._extra_sinks:
            uris.append(s if "://" in s else f"parquet://{s}")
        return list(dict.fromkeys(uris))

    def _file_sink_dirs(self) -> list[Path]:
        from ..sinks import parse_sink_uri

        dirs = []
        for uri in self._sink_uris():
            try:
                sink = parse_sink_uri(uri)
            except CasparianError:
                continue
            if sink.kind != "duckdb":
                dirs.append(sink.path)
        return dirs

    def _refresh(self) -> None:
        from ..sinks import parse_sink_uri

        self.notes = []
        self._hidden = {}
        file_dirs: dict[tuple[str, str], list[Path]] = {}  # (output, ext) -> dirs
        seen_dirs: set[Path] = set()
        duck_paths: list[Path] = []
        for uri in self._sink_uris():
            try:
                sink = parse_sink_uri(uri)
            except CasparianError as exc:
                self.notes.append(str(exc))
                continue
            if sink.kind == "duckdb":
                duck_paths.append(sink.path)
            elif sink.path not in seen_dirs:
                seen_dirs.add(sink.path)
                found, compacting = _outputs_in(sink.path)
                for output, ext in found:
                    file_dirs.setdefault((output, ext), []).append(sink.path)
                if compacting:
                    self._hidden[sink.path] = _hidden_files(sink.path)
        wanted = {**self._file_views(file_dirs), **self._state_views()}
        self._apply_views(wanted)
        self._scan_duck(duck_paths)

    def _file_views(self, file_dirs: dict[tuple[str, str], list[Path]]) -> dict[str, str]:
        by_output: dict[str, list[str]] = {}
        for (output, ext), dirs in sorted(file_dirs.items()):
            globs = ", ".join(self._file_globs(output, ext, d) for d in sorted(dirs))
            reader = "read_parquet" if ext == "parquet" else "read_csv"
            by_output.setdefault(output, []).append(
                f"SELECT * FROM {reader}([{globs}], union_by_name = true)")
        # An output written both as Parquet and as CSV is still one table.
        return {o: " UNION ALL BY NAME ".join(parts) for o, parts in by_output.items()}

    def _file_globs(self, output: str, ext: str, d: Path) -> str:
        """The glob of ``output``'s files in ``d``, or (while a dead compaction's leftovers
        are there) the explicit list of its files without those leftovers."""
        hidden = self._hidden.get(d)
        if not hidden:
            return lit(str(d / f"{output}_{_HEX16}.{ext}"))
        pattern = re.compile(rf"^{re.escape(output)}_[0-9a-f]{{16}}\.{ext}$")
        names = sorted(n for n in os.listdir(d) if pattern.match(n) and n not in hidden)
        return ", ".join(lit(str(d / n)) for n in names) or lit(str(d / f"{output}_{_HEX16}.{ext}"))

    def _state_views(self) -> dict[str, str]:
        views: dict[str, str] = {}
        for name in self._state.register(self._con):
            views[name] = f"SELECT * FROM {quote_ident('_cf_' + name)}"
        tapes = self._tape_files()
        if tapes:
            files = ", ".join(lit(str(t)) for t in tapes)
            views["tape_events"] = (
                "SELECT seq, CAST(timestamp AS TIMESTAMPTZ) AS timestamp, "
                "event_name.type AS event_type, event_name.name AS event_name, payload, "
                "correlation_id, parent_id, event_id, schema_version, filename AS tape "
                f"FROM read_json([{files}], format = 'newline_delimited', "
                f"columns = {_TAPE_COLUMNS}, ignore_errors = true, filename = true) "
                "WHERE seq IS NOT NULL"  # a cut-off last line reads as a row of NULLs
            )
        return views

    def _tape_files(self) -> list[Path]:
        if self._tapes is not None:
            return [t for t in self._tapes if t.is_file() and t.stat().st_size > 0]
        tapes_dir = self.settings.tapes_dir
        if not tapes_dir.is_dir():
            return []
        return sorted(p for p in tapes_dir.glob("*.tape") if p.stat().st_size > 0)

    def _apply_views(self, wanted: dict[str, str]) -> None:
        for name in set(self._views) - set(wanted):
            self._con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
            del self._views[name]
        for name, select in wanted.items():
            if self._views.get(name) != select:
                self._con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {select}")
                self._views[name] = select

    def _scan_duck(self, paths: list[Path]) -> None:
        for path in list(self._duck):
            if path not in paths:
                del self._duck[path]
        aliases = set(self._views)
        for path in dict.fromkeys(paths):
            f = self._duck.get(path)
            if f is None:
                f = self._duck[path] = DuckFile(path, duck_alias(path, aliases))
            aliases.add(f.alias)
            note = f.update_tables(self._con)
            if note:
                self.notes.append(note)

    def _known(self) -> list[str]:
        names = set(self._views)
        for f in self._duck.values():
            for t in f.tables:
                names.add(f"{f.alias}.{t}")
                names.add(t)
        return sorted(names)

    # -- DuckDB sink files: attached only for the queries that name them ----------------------
    def _attach_for(self, query: str) -> list[DuckFile]:
        words = {w.lower() for w in _IDENT.findall(query)}
        attached: list[DuckFile] = []
        try:
            for f in self._duck.values():
                bare = [t for t in f.tables if t.lower() in words and t not in self._views]
                if not bare and f.alias.lower() not in words:
                    continue
                note = f.attach(self._con)
                if note:
                    self.notes.append(note)
                    continue
                attached.append(f)
                for t in bare:
                    self._con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(t)} AS "
                                      f"SELECT * FROM {quote_ident(f.alias)}.{quote_ident(t)}")
        except BaseException:
            self._detach(attached)
            raise
        return attached

    def _detach(self, attached: list[DuckFile]) -> None:
        for f in attached:
            for t in f.tables:
                if t not in self._views:
                    self._con.execute(f"DROP VIEW IF EXISTS temp.{quote_ident(t)}")
            f.detach(self._con)

    # -- running -----------------------------------------------------------------------------
    def _run(self, query: str, params: SqlParams, as_: ResultFormat) -> Any:
        for attempt in (1, 2):
            try:
                if as_ == "arrow":  # a relation hands Arrow over without a row copy
                    return self._con.sql(query, params=params).to_arrow_table()
                return self._con.execute(query, params).df()
            except duckdb.CatalogException as exc:
                m = _MISSING_TABLE.search(str(exc))
                if m is None:
                    raise CatalogQueryError(_first_line(exc)) from exc
                raise UnknownTableError(m.group(1), self._known(), self.notes) from None
            except duckdb.IOException as exc:
                # A replace-mode promotion may remove a file between our scan and the read.
                if attempt == 1:
                    time.sleep(0.05)
                    self._refresh()
                    continue
                raise CatalogQueryError(_first_line(exc)) from exc
            except duckdb.Error as exc:
                raise CatalogQueryError(_first_line(exc)) from exc
        raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _outputs_in(directory: Path) -> tuple[set[tuple[str, str]], bool]:
    """``(output, ext)`` of the promoted files in ``directory`` (temp files never match),
    and whether a compaction journal is there (see :func:`_hidden_files`)."""
    found: set[tuple[str, str]] = set()
    compacting = False
    try:
        with os.scandir(directory) as it:
            for entry in it:
                m = _FILE.match(entry.name)
                if m:
                    found.add((m.group(1), m.group(2)))
                elif entry.name.startswith(_COMPACTION_JOURNAL):
                    compacting = True
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    return found, compacting


def _hidden_files(directory: Path) -> set[str]:
    from ..sinks.compaction import hidden_files

    return hidden_files(directory)

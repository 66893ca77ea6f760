"""The ledger of standalone runs (``<home>/run_ledger.sqlite``): what ``casparian run`` /
``cf.run`` materialized, so a second run skips it like a sentinel submission does (F4, F15).

A standalone run has no sentinel, and only the sentinel writes the state DB (F17), so its
materializations are kept apart, keyed exactly like the state DB's
(:func:`casparian_nb.plan.plan_keys`) and judged by the same rule
(:func:`casparian_nb.plan.decide`). Several runs may share a home: each write is one short
transaction and SQLite serialises them.

A run records after each group of promotions (:meth:`RunLedger.record_many`, one transaction
for the group) and must not go on before the records are durable. Records from several
threads at once are group-committed (:class:`casparian_nb._group.GroupCommit`): one
transaction writes every record waiting at that moment. The database is in WAL mode, so a
commit costs one fsync.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._group import GroupCommit
from ..errors import StoreError
from .schema import now_iso

__all__ = ["LedgerRecord", "RunLedger"]

_DDL = """
CREATE TABLE IF NOT EXISTS cf_run_materializations (
    materialization_key TEXT PRIMARY KEY,
    source_hash         TEXT NOT NULL,
    plugin_name         TEXT NOT NULL,
    parser_version      TEXT,
    parser_fingerprint  TEXT,
    input_file          TEXT,
    run_id              TEXT NOT NULL,
    created_at          TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One input's materialization keys, recorded once its outputs were promoted."""

    keys: Sequence[str]
    source_hash: str
    plugin_name: str
    parser_version: str | None
    parser_fingerprint: str
    input_file: str
    run_id: str


class RunLedger:
    """Materializations of standalone runs; open with :meth:`RunLedger.open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()  # the connection: one statement or transaction at a time
        self._group: GroupCommit[tuple[Any, ...]] = GroupCommit(self._commit)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunLedger:
        """Open (creating it 0600 if missing) the ledger at ``path``."""
        db = Path(path).absolute()
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if not db.exists():
                os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            # WAL: a commit is one append and one fsync (the rollback journal takes three or
            # four), and other runs' reads do not wait for our writes.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(_DDL)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the run ledger {db}: {exc}; move it aside "
                             f"(mv {db} {db}.old) to start afresh") from exc
        return cls(db, conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def materialized_by(self, keys: Iterable[str]) -> dict[str, str | None]:
        """The recorded ones of ``keys``, each with the plugin source hash that made it."""
        wanted = list(keys)
        if not wanted:
            return {}
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT materialization_key, parser_fingerprint FROM cf_run_materializations"
                    " WHERE materialization_key IN (SELECT value FROM json_each(?))",
                    (json.dumps(wanted),),
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the run ledger {self.path}: {exc}") from exc
        return {str(r[0]): r[1] for r in rows}

    def record(self, keys: Iterable[str], *, source_hash: str, plugin_name: str,
               parser_version: str | None, parser_fingerprint: str, input_file: str,
               run_id: str) -> None:
        """Record one input's keys after its outputs were promoted (a forced re-run
        replaces the fingerprint that made them)."""
        self.record_many([LedgerRecord(list(keys), source_hash, plugin_name, parser_version,
                                       parser_fingerprint, input_file, run_id)])

    def record_many(self, records: Iterable[LedgerRecord]) -> None:
        """Record several inputs in one transaction; returns once it is durable."""
        now = now_iso()
        rows = [(k, r.source_hash, r.plugin_name, r.parser_version, r.parser_fingerprint,
                 r.input_file, r.run_id, now) for r in records for k in r.keys]
        if rows:
            self._group.submit(rows)

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        """Write ``rows`` in one transaction."""
        try:
            with self._lock, self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR REPLACE INTO cf_run_materializations (materialization_key,"
                    " source_hash, plugin_name, parser_version, parser_fingerprint, input_file,"
                    " run_id, created_at) VALUES (?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record in the run ledger {self.path}: {exc}") from exc

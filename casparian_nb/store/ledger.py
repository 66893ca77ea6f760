"""The ledger of standalone runs (``<home>/run_ledger.sqlite``): what ``casparian run`` /
``cf.run`` materialized, so a second run skips it like a sentinel submission does (F4, F15).

A standalone run has no sentinel, and only the sentinel writes the state DB (F17), so its
materializations are kept apart, keyed exactly like the state DB's
(:func:`casparian_nb.plan.plan_keys`) and judged by the same rule
(:func:`casparian_nb.plan.decide`). Several runs may share a home: each write is one short
transaction and SQLite serialises them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from ..errors import StoreError
from .schema import now_iso

__all__ = ["RunLedger"]

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


class RunLedger:
    """Materializations of standalone runs; open with :meth:`RunLedger.open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

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
        with self._lock:
            rows = self._conn.execute(
                "SELECT materialization_key, parser_fingerprint FROM cf_run_materializations "
                "WHERE materialization_key IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
        return {str(r[0]): r[1] for r in rows}

    def record(self, keys: Iterable[str], *, source_hash: str, plugin_name: str,
               parser_version: str | None, parser_fingerprint: str, input_file: str,
               run_id: str) -> None:
        """Record one input's keys after its outputs were promoted (a forced re-run
        replaces the fingerprint that made them)."""
        now = now_iso()
        rows = [(k, source_hash, plugin_name, parser_version, parser_fingerprint, input_file,
                 run_id, now) for k in keys]
        # The runner's promoting threads share this connection: one transaction at a time.
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO cf_run_materializations (materialization_key,"
                " source_hash, plugin_name, parser_version, parser_fingerprint, input_file,"
                " run_id, created_at) VALUES (?,?,?,?,?,?,?,?)", rows)

"""The run ledger (store/ledger.py): group commits from many promoting threads."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from casparian_nb.errors import StoreError
from casparian_nb.store.ledger import RunLedger


def _record(ledger: RunLedger, i: int) -> None:
    ledger.record([f"key-{i}-a", f"key-{i}-b"], source_hash=f"h{i}", plugin_name="p",
                  parser_version="1", parser_fingerprint="fp", input_file=f"in{i}",
                  run_id="r")


def test_records_from_many_threads_are_all_durable_when_record_returns(tmp_path: Path) -> None:
    ledger = RunLedger.open(tmp_path / "ledger.sqlite")
    commits: list[int] = []
    real_commit = ledger._group._commit

    def counting(rows: list) -> None:  # how many transactions the records took
        commits.append(len(rows))
        real_commit(rows)

    ledger._group._commit = counting
    returned: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        _record(ledger, i)
        # what record() promised is already in the file, seen by another connection
        other = sqlite3.connect(tmp_path / "ledger.sqlite")
        try:
            n = other.execute("SELECT count(*) FROM cf_run_materializations "
                              "WHERE input_file = ?", (f"in{i}",)).fetchone()[0]
        finally:
            other.close()
        assert n == 2
        with lock:
            returned.append(i)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(one, range(400)))
    assert sorted(returned) == list(range(400))
    assert sum(commits) == 800
    assert len(commits) < 400, "concurrent records share commits"
    keys = [f"key-{i}-{s}" for i in range(400) for s in "ab"]
    assert len(ledger.materialized_by(keys)) == 800
    ledger.close()
    # WAL: one fsync per commit, and readers of other runs do not wait for writers
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_failed_commit_is_a_store_error_for_every_record_in_it(tmp_path: Path) -> None:
    ledger = RunLedger.open(tmp_path / "ledger.sqlite")
    ledger._conn.execute("DROP TABLE cf_run_materializations")
    with pytest.raises(StoreError, match="cannot record in the run ledger"):
        _record(ledger, 1)
    ledger.close()

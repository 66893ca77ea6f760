"""State store: schema + versioning (F11), single writer / free readers (F5), job model (F6/F8)."""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from casparian_nb.errors import SchemaVersionError, StoreError
from casparian_nb.plan import output_plan, plan_from_json, plan_keys, plan_to_json
from casparian_nb.protocol import JobStatus, QuarantinePolicy
from casparian_nb.sentinel._submit import job_spec_from_row
from casparian_nb.store import (
    SCHEMA_VERSION,
    Materialization,
    NewJob,
    StateReader,
    StateStore,
    iso_from_epoch,
    job_to_info,
    now_iso,
    schema,
)
from casparian_nb.store.schema import Migration

ROOT = Path(__file__).resolve().parents[2]
T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:00:01.000Z"
T2 = "2026-01-01T00:00:02.000Z"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "state.sqlite"


@pytest.fixture
def store(db: Path) -> Iterator[StateStore]:
    s = StateStore.open(db)
    yield s
    s.close()


def job(i: int = 0, **kw: object) -> NewJob:
    return NewJob(plugin_name="orders", input_file=f"/data/f{i}.csv", **kw)  # type: ignore[arg-type]


def version_of(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(
            conn.execute("SELECT value FROM cf_meta WHERE key='schema_version'").fetchone()[0]
        )
    finally:
        conn.close()


def set_version(path: Path, value: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE cf_meta SET value = ? WHERE key = 'schema_version'", (str(value),))
    conn.commit()
    conn.close()


# -- a writer in another process ----------------------------------------------------------
_CHILD = r"""
import sys
from casparian_nb.store import NewJob, StateStore
store = StateStore.open(sys.argv[1])
print("ready", flush=True)
txn = None
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "begin":   # open a write transaction, insert, and keep it open
        txn = store.transaction()
        txn.__enter__()
        store.insert_jobs([NewJob("orders", f"/c/{i}") for i in range(int(arg[0]))])
        print("in-txn", flush=True)
    elif cmd == "commit":
        txn.__exit__(None, None, None)
        print("committed", flush=True)
    elif cmd == "quit":
        store.close()
        print("bye", flush=True)
        break
"""


class Child:
    """A writer process driven line by line over stdin/stdout."""

    def __init__(self, db: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=0, env=env,
        )  # fmt: skip
        self.expect("ready")

    def expect(self, word: str, timeout: float = 20.0) -> float:
        """Wait for ``word``; return how long it took."""
        assert self.proc.stdout is not None
        t = time.perf_counter()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != word:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
            raise AssertionError(f"child said {line!r}, expected {word!r}. {err}")
        return time.perf_counter() - t

    def send(self, cmd: str, reply: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd}\n".encode())
        self.proc.stdin.flush()
        return self.expect(reply)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def child(db: Path) -> Iterator[Child]:
    c = Child(db)
    yield c
    c.kill()


# -- schema, files, locking ---------------------------------------------------------------
def test_fresh_db_gets_schema_version_and_pragmas(store: StateStore, db: Path) -> None:
    conn = store._conn
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"cf_meta", "cf_plugins", "cf_processing_queue", "cf_output_materializations",
            "cf_dead_letter"} <= tables  # fmt: skip
    assert version_of(db) == str(SCHEMA_VERSION) == "4"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version_before == 0
    with pytest.raises(StoreError, match="CHECK constraint"):
        with store.transaction():
            store._conn.execute(
                "INSERT INTO cf_processing_queue (plugin_name, input_file, status, created_at)"
                " VALUES ('p', 'f', 'complete', 'x')"
            )


def test_files_are_private(store: StateStore, db: Path) -> None:
    store.insert_jobs([job()])
    for suffix in ("", "-wal", "-shm", ".lock"):
        path = db.with_name(db.name + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (db.with_name("state.sqlite.lock")).read_text().strip() == str(os.getpid())


def test_second_writer_in_same_process_refused_then_lock_released(db: Path) -> None:
    first = StateStore.open(db)
    with pytest.raises(StoreError) as info:
        StateStore.open(db)
    assert str(info.value) == (
        f"state DB {db} is already open for writing by pid {os.getpid()} "
        "(a sentinel serves this home)"
    )
    first.close()
    first.close()  # idempotent
    StateStore.open(db).close()


def test_writer_and_reader_across_processes(db: Path, child: Child) -> None:
    """F5: another process holds the writer lock and an open write transaction; this process
    is refused as a writer but reads freely, and its read snapshot never blocks the commit."""
    child.send("begin 3", "in-txn")
    child.send("commit", "committed")
    child.send("begin 5", "in-txn")  # write transaction left open

    with pytest.raises(StoreError, match=f"already open for writing by pid {child.proc.pid} "):
        StateStore.open(db)

    t = time.perf_counter()
    with StateReader.open(db) as reader:
        assert len(reader.list_jobs()) == 3  # only committed rows
        assert reader.queue_stats()["total"] == 3
        assert reader.get_job(1) is not None
        elapsed = time.perf_counter() - t
        assert elapsed < 0.9, f"reader waited {elapsed:.3f}s for the writer"

        # A reader holding a snapshot open does not block the writer's commit either.
        reader._conn.execute("BEGIN")
        assert reader._conn.execute("SELECT count(*) FROM cf_processing_queue").fetchone()[0] == 3
        took = child.send("commit", "committed")
        assert took < 2.0, f"writer waited {took:.3f}s for a reader"
        assert reader._conn.execute("SELECT count(*) FROM cf_processing_queue").fetchone()[0] == 3
        reader._conn.execute("COMMIT")
        assert reader.queue_stats()["queued"] == 8
        print(
            f"\nreader under an open write txn: {elapsed * 1000:.1f} ms; "
            f"writer commit under a reader snapshot: {took * 1000:.1f} ms"
        )

    # kill -9 the writer mid-transaction: the kernel drops the lock, uncommitted rows vanish.
    child.send("begin 4", "in-txn")
    child.kill()
    with StateStore.open(db) as store:
        assert store.queue_stats()["total"] == 8


def test_reader_works_with_no_writer_and_cannot_write(db: Path) -> None:
    with StateStore.open(db) as store:
        store.insert_jobs([job(1), job(2)])
    assert not db.with_name("state.sqlite-wal").exists()  # clean close checkpointed
    with StateReader.open(db) as reader:
        assert [j["id"] for j in reader.list_jobs()] == [2, 1]
        assert not hasattr(reader, "insert_jobs")
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM cf_processing_queue")


def test_paths_with_uri_special_characters(tmp_path: Path) -> None:
    db = tmp_path / "my home #1?x=%20" / "state.sqlite"
    with StateStore.open(db) as store:
        store.insert_jobs([job()])
    with StateReader.open(db) as reader:
        assert reader.queue_stats()["total"] == 1


def test_reader_on_missing_or_uninitialised_db(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist: start a sentinel"):
        StateReader.open(tmp_path / "state.sqlite")
    (tmp_path / "state.sqlite").touch()
    with pytest.raises(StoreError, match="not initialised yet"):
        StateReader.open(tmp_path / "state.sqlite")


# -- versioning (F11) ---------------------------------------------------------------------
def test_newer_schema_refused_by_writer_and_reader(db: Path, build: Callable[..., None]) -> None:
    StateStore.open(db).close()
    set_version(db, 7)
    expected = (
        f"state DB {db} has schema version 7, newer than this casparian_nb supports "
        f"({SCHEMA_VERSION}): "
        "upgrade casparian_nb, or start with another --home"
    )
    with pytest.raises(SchemaVersionError) as info:
        StateStore.open(db)
    assert str(info.value) == expected
    with pytest.raises(SchemaVersionError) as info:
        StateReader.open(db)
    assert str(info.value) == expected
    assert version_of(db) == "7"
    build(7)  # a build of version 7 can open it: the lock was released after the refusal
    StateStore.open(db).close()


@pytest.mark.parametrize("foreign", [False, True])
def test_unversioned_db_refused_and_untouched(db: Path, foreign: bool) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    table = "notes" if foreign else "cf_processing_queue"
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute(f"INSERT INTO {table} (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(SchemaVersionError, match=r"no schema version.*move it aside \(mv "):
        StateStore.open(db)
    with pytest.raises(SchemaVersionError, match="no schema version"):
        StateReader.open(db)
    assert db.read_bytes() == before  # not even switched to WAL


def test_not_a_database_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="move it aside"):
        StateStore.open(db)


def _add_note_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE cf_processing_queue ADD COLUMN note TEXT DEFAULT 'migrated'")


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make this process a build of casparian_nb with another schema version and migrations
    (what a newer release ships), for the rest of the test."""
    from casparian_nb.store import schema

    def become(version: int, migrations: dict[int, Migration] | None = None) -> None:
        monkeypatch.setattr(schema, "SCHEMA_VERSION", version)
        monkeypatch.setattr(schema, "MIGRATIONS", migrations or {})

    return become


V = SCHEMA_VERSION  # this build's version; the tests below play the next release


def test_migration_backs_up_then_upgrades_in_place(db: Path, build: Callable[..., None]) -> None:
    with StateStore.open(db) as store:
        store.insert_jobs([job(1), job(2)])
    build(V + 1, {V: _add_note_column})
    with StateStore.open(db) as store:
        assert store.schema_version_before == V
        assert [j["note"] for j in store.list_jobs()] == ["migrated", "migrated"]
    assert version_of(db) == str(V + 1)
    backup = db.with_name(f"state.sqlite.bak-v{V}")
    assert version_of(backup) == str(V)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    conn = sqlite3.connect(backup)
    assert conn.execute("SELECT count(*) FROM cf_processing_queue").fetchone()[0] == 2
    conn.close()
    build(V)  # the older build again
    with pytest.raises(SchemaVersionError, match="newer than this casparian_nb supports"):
        StateReader.open(db)


def test_failed_migration_changes_nothing(db: Path, build: Callable[..., None]) -> None:
    with StateStore.open(db) as store:
        store.insert_jobs([job(1)])

    def broken(conn: sqlite3.Connection) -> None:
        _add_note_column(conn)
        raise RuntimeError("boom")

    build(V + 1, {V: broken})
    with pytest.raises(SchemaVersionError, match=r"failed \(RuntimeError: boom\); nothing was"):
        StateStore.open(db)
    assert version_of(db) == str(V)
    build(V)
    with StateStore.open(db) as store:
        assert "note" not in store.get_job(1)  # type: ignore[operator]
    # A second attempt keeps the first backup and writes a new one beside it.
    build(V + 1, {V: broken})
    with pytest.raises(SchemaVersionError):
        StateStore.open(db)
    assert db.with_name(f"state.sqlite.bak-v{V}").exists()
    assert db.with_name(f"state.sqlite.bak-v{V}.1").exists()


def _make_version_3(db: Path) -> None:
    """Turn this build's DB into the file a version-3 build left."""
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE cf_processing_queue DROP COLUMN quarantine_json")
    conn.execute("ALTER TABLE cf_processing_queue DROP COLUMN resources_json")
    conn.commit()
    conn.close()
    set_version(db, 3)


def _make_version_2(db: Path) -> None:
    """Turn this build's DB into the file a version-2 build left."""
    _make_version_3(db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE cf_job_attempts")
    conn.execute("ALTER TABLE cf_processing_queue DROP COLUMN dead_letter")
    conn.execute("ALTER TABLE cf_processing_queue DROP COLUMN manual_retries")
    conn.execute("ALTER TABLE cf_output_materializations DROP COLUMN parser_fingerprint")
    conn.commit()
    conn.close()
    set_version(db, 2)


def test_version_1_gains_host_kills_and_keeps_its_jobs(db: Path) -> None:
    with StateStore.open(db) as store:
        store.insert_jobs([job(1), job(2)])
    _make_version_2(db)
    conn = sqlite3.connect(db)  # make it the file a version-1 build left
    conn.execute("ALTER TABLE cf_processing_queue DROP COLUMN host_kills")
    conn.commit()
    conn.close()
    set_version(db, 1)
    with pytest.raises(SchemaVersionError, match="start the sentinel of this version once"):
        StateReader.open(db)
    with StateStore.open(db) as store:
        assert store.schema_version_before == 1
        assert [j["host_kills"] for j in store.list_jobs()] == [0, 0]
    assert version_of(db) == str(SCHEMA_VERSION)
    assert version_of(db.with_name("state.sqlite.bak-v1")) == "1"
    with sqlite3.connect(db) as fresh, sqlite3.connect(":memory:") as ddl:
        ddl.executescript(schema.DDL)
        columns = "SELECT name, type, dflt_value FROM pragma_table_info('cf_processing_queue')"
        # The same columns in the same order as a fresh database (the ALTER appends it last).
        assert fresh.execute(columns).fetchall() == ddl.execute(columns).fetchall()


def test_version_2_gains_attempts_and_dead_letter_flags(db: Path) -> None:
    with StateStore.open(db) as store:
        a, b = store.insert_jobs([job(1), job(2, parser_fingerprint="fp-b")])
        store.claim_job(a, "w1", attempt=1)
        store.fail_job(a, "TransientError: flaky", "transient")
        store.dead_letter(a, "max_retries_exceeded")
        store.record_materializations([mat("k1", job_id=b)])
    _make_version_2(db)
    with StateStore.open(db) as store:
        assert store.schema_version_before == 2
        # which source made a materialization: backfilled from its job
        assert store.materialized_by(["k1", "k2"]) == {"k1": "fp-b"}
        flags = {j["id"]: (j["dead_letter"], j["manual_retries"]) for j in store.list_jobs()}
        assert flags == {a: ("max_retries_exceeded", 0), b: (None, 0)}
        assert store.retry_job(a) and not store.retry_job(b)  # b is QUEUED, not finished
        assert [(x["attempt"], x["status"]) for x in store.attempts(a)] == [(1, "FAILED")]
    assert version_of(db) == str(SCHEMA_VERSION)
    assert version_of(db.with_name("state.sqlite.bak-v2")) == "2"
    with sqlite3.connect(db) as fresh, sqlite3.connect(":memory:") as ddl:
        ddl.executescript(schema.DDL)
        for table in ("cf_processing_queue", "cf_job_attempts", "cf_output_materializations"):
            columns = f"SELECT name, type, dflt_value FROM pragma_table_info('{table}')"
            assert fresh.execute(columns).fetchall() == ddl.execute(columns).fetchall()


def test_version_3_gains_submission_options_and_a_restart_dispatches_with_them(
        db: Path) -> None:
    policy = QuarantinePolicy(max_pct=12.5, max_rows=40)
    text = msgspec.json.encode(policy).decode()
    with StateStore.open(db) as store:
        store.insert_jobs([job(1), job(2)])
    _make_version_3(db)
    with StateStore.open(db) as store:
        assert store.schema_version_before == 3
        assert [j["quarantine_json"] for j in store.list_jobs()] == [None, None]
        store.insert_jobs([job(3, quarantine_json=text, resources_json='{"GPU":1.0}')])
        # what a restarted sentinel reads of its queued jobs, made into their JobSpecs
        specs = {row["input_file"]: job_spec_from_row(row, "/plugins/orders.py")
                 for row in store.iter_dispatchable(JobStatus.QUEUED)}
    assert specs["/data/f3.csv"].quarantine == policy
    assert specs["/data/f3.csv"].resources == {"GPU": 1.0}
    assert specs["/data/f1.csv"].quarantine is None and specs["/data/f1.csv"].resources is None
    assert version_of(db.with_name("state.sqlite.bak-v3")) == "3"
    with sqlite3.connect(db) as fresh, sqlite3.connect(":memory:") as ddl:
        ddl.executescript(schema.DDL)
        columns = "SELECT name, type, dflt_value FROM pragma_table_info('cf_processing_queue')"
        assert fresh.execute(columns).fetchall() == ddl.execute(columns).fetchall()


def test_retry_keeps_every_attempt_and_leaves_the_dead_letters(db: Path) -> None:
    with StateStore.open(db) as store:
        [a] = store.insert_jobs([job(1)])
        store.claim_job(a, "w1", attempt=1)
        store.requeue_job(a, retry_count=1, error="TransientError: once",
                          error_kind="transient", reason="retry")
        store.claim_job(a, "w2", attempt=2)
        store.fail_job(a, "TransientError: twice", "transient", "Traceback: ...")
        store.dead_letter(a, "max_retries_exceeded")
        assert store.get_job(a)["dead_letter"] == "max_retries_exceeded"
        assert store.retry_job(a)
        row = store.get_job(a)
        assert (row["status"], row["dead_letter"], row["manual_retries"], row["retry_count"],
                row["error_message"]) == ("QUEUED", None, 1, 0, None)
        assert store.dead_letters() == []
        history = store.attempts(a)
        assert [(h["attempt"], h["status"], h["worker_id"], h["error_message"])
                for h in history] == [(1, "FAILED", "w1", "TransientError: once"),
                                      (2, "FAILED", "w2", "TransientError: twice")]
        assert history[1]["traceback"] == "Traceback: ..."
        store.claim_job(a, "w1", attempt=3)
        assert [h["attempt"] for h in store.attempts(a)] == [1, 2, 3]
        assert not store.retry_job(a)  # RUNNING: nothing to retry


def test_older_schema_without_migration_refused(db: Path) -> None:
    StateStore.open(db).close()
    set_version(db, 0)
    with pytest.raises(SchemaVersionError, match="no migration exists from version 0: move it"):
        StateStore.open(db)
    with pytest.raises(SchemaVersionError, match="older than this casparian_nb expects"):
        StateReader.open(db)
    assert not db.with_name("state.sqlite.bak-v0").exists()
    assert version_of(db) == "0"


# -- timestamps ---------------------------------------------------------------------------
def test_timestamps_are_sortable_rfc3339_and_floats_refused(store: StateStore) -> None:
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    a = now_iso()
    b = now_iso()
    assert pattern.match(a) and a <= b
    assert iso_from_epoch(0) == "1970-01-01T00:00:00.000Z"
    assert iso_from_epoch(1.5) == "1970-01-01T00:00:01.500Z"
    (jid,) = store.insert_jobs([job()])
    with pytest.raises(TypeError, match="RFC 3339"):
        store.claim_job(jid, "w", 12.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scheduled_at"):
        store.insert_jobs([job(scheduled_at=3.0)])


# -- jobs: inserts and transitions --------------------------------------------------------
def test_insert_jobs_returns_contiguous_ids_and_stores_fields(store: StateStore) -> None:
    ids = store.insert_jobs(
        [job(i, submission_id="s1", priority=i, sink_uri="parquet:///o", timeout_s=2.5)
         for i in range(3)],
        now=T0,
    )  # fmt: skip
    assert ids == [1, 2, 3]
    assert store.insert_jobs([job(9)]) == [4]
    assert store.insert_jobs([]) == []
    row = store.get_job(2)
    assert row is not None
    assert (row["status"], row["completion_status"], row["created_at"], row["updated_at"]) == (
        "QUEUED",
        None,
        T0,
        T0,
    )
    assert (row["priority"], row["retry_count"], row["attempt"], row["timeout_s"]) == (1, 0, 0, 2.5)
    assert row["input_file"] == "/data/f1.csv" and row["submission_id"] == "s1"
    assert store.get_job(99) is None


def test_insert_with_unknown_plugin_id_refused(store: StateStore) -> None:
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        store.insert_jobs([job(plugin_id=42)])
    assert store.queue_stats()["total"] == 0
    pid = store.register_plugin("orders", "1.0", "abc")
    assert store.insert_jobs([job(plugin_id=pid)]) == [1]


def test_register_plugin_is_idempotent(store: StateStore) -> None:
    manifest = {"orders": {"columns": [{"name": "id", "type": "int64"}]}}
    a = store.register_plugin("orders", "1.0", "h1", source="def parse(p): ...", path="/p.py",
                              trust_status="unsigned-allowed", manifest=manifest,
                              default_output="orders", now=T0)  # fmt: skip
    assert store.register_plugin("orders", "1.0", "h1", path="/moved.py", now=T1) == a
    b = store.register_plugin("orders", "1.0", "h2")
    assert b != a
    plugin = store.get_plugin(a)
    assert plugin is not None
    assert plugin["path"] == "/moved.py" and plugin["registered_at"] == T0
    assert [p["id"] for p in store.list_plugins()] == [a, b]
    assert store.get_plugin(999) is None


def test_happy_path_queued_running_completed(store: StateStore) -> None:
    (jid,) = store.insert_jobs([job()], now=T0)
    assert store.claim_job(jid, "w1", T1)
    assert not store.claim_job(jid, "w2", T1)  # already claimed
    row = store.get_job(jid)
    assert row and (row["status"], row["worker_id"], row["claimed_at"], row["attempt"]) == (
        "RUNNING",
        "w1",
        T1,
        1,
    )
    assert store.mark_started(jid, 4242, T1)
    assert store.complete_job(jid, "PARTIAL_SUCCESS", rows=10, quarantine_rows=2,
                              outputs={"orders": 10}, artifacts=[{"uri": "x"}], now=T2)  # fmt: skip
    assert not store.complete_job(jid, now=T2)  # a duplicate receipt changes nothing
    row = store.get_job(jid)
    assert row is not None
    assert (row["status"], row["completion_status"], row["rows"], row["quarantine_rows"]) == (
        "COMPLETED",
        "PARTIAL_SUCCESS",
        10,
        2,
    )
    assert row["outputs_json"] == {"orders": 10} and row["artifacts_json"] == [{"uri": "x"}]
    assert (row["host_pid"], row["started_at"], row["ended_at"]) == (4242, T1, T2)
    assert row["created_at"] == T0  # never overwritten
    assert not store.mark_started(jid, 1) and not store.fail_job(jid, "late")
    with pytest.raises(ValueError):
        store.complete_job(jid, "FAILED")


def test_record_staged_survives_until_complete_and_requeue_clears_it(store: StateStore) -> None:
    a, b = store.insert_jobs([job(1), job(2, source_hash="known")])
    assert not store.record_staged(a, {"files": []})  # not running
    store.claim_job(a, "w")
    staged = {"files": [{"output": "orders", "path": "/staging/1/orders.parquet"}]}
    assert store.record_staged(
        a, staged, source_hash="h1", rows={"orders": 3}, quarantine_rows=1, duration_ms=5.0
    )
    row = store.get_job(a)
    assert row and row["status"] == "RUNNING" and row["source_hash"] == "h1"
    assert row["staged_json"] == {
        "staged": staged, "rows": {"orders": 3}, "quarantine_rows": 1, "duration_ms": 5.0
    }  # fmt: skip
    assert store.complete_job(a, rows=3)
    assert store.get_job(a)["staged_json"]["staged"] == staged  # type: ignore[index]

    store.claim_job(b, "w")
    store.record_staged(b, {"files": []}, source_hash="other")
    assert store.get_job(b)["source_hash"] == "known"  # type: ignore[index]
    store.requeue_job(b, reason="worker_lost")
    assert store.get_job(b)["staged_json"] is None  # type: ignore[index]


def test_claim_with_explicit_attempt(store: StateStore) -> None:
    (jid,) = store.insert_jobs([job()])
    assert store.claim_job(jid, "w", attempt=3)
    assert store.get_job(jid)["attempt"] == 3  # type: ignore[index]


def test_cancel_queued_and_running(store: StateStore) -> None:
    q, r = store.insert_jobs([job(1), job(2)], now=T0)
    assert not store.request_cancel(q)  # queued jobs are cancelled, not flagged
    assert store.cancel_queued(q, T1)
    assert not store.cancel_queued(q, T1)
    row = store.get_job(q)
    assert row and (
        row["status"],
        row["completion_status"],
        row["error_message"],
        row["ended_at"],
    ) == ("ABORTED", "ABORTED", "Cancelled by user", T1)

    store.claim_job(r, "w")
    assert not store.cancel_queued(r)
    assert store.request_cancel(r, T1) and store.request_cancel(r, T2)
    assert store.get_job(r)["cancel_requested_at"] == T1  # type: ignore[index]
    assert store.queue_stats()["cancel_requested"] == 1
    assert job_to_info(store.get_job(r))["cancel_requested"] is True  # type: ignore[arg-type]
    assert store.abort_job(r, "Cancelled by user", T2)
    assert store.queue_stats()["cancel_requested"] == 0
    assert not store.abort_job(r)


def test_cancel_racing_completion_has_one_final_state(store: StateStore) -> None:
    (jid,) = store.insert_jobs([job()])
    store.claim_job(jid, "w")
    store.request_cancel(jid)
    assert store.complete_job(jid, rows=1)  # the receipt got there first: it wins, truthfully
    assert not store.abort_job(jid)
    assert store.get_job(jid)["status"] == "COMPLETED"  # type: ignore[index]


def test_fail_job(store: StateStore) -> None:
    a, b = store.insert_jobs([job(1), job(2)])
    store.claim_job(a, "w")
    assert store.fail_job(a, "ValueError: bad row", "permanent", "Traceback ...", T1)
    row = store.get_job(a)
    assert row and (
        row["status"],
        row["completion_status"],
        row["error_kind"],
        row["traceback"],
    ) == ("FAILED", "FAILED", "permanent", "Traceback ...")
    assert not store.fail_job(a, "again")
    assert store.fail_job(b, "plugin cannot be loaded")  # straight from QUEUED


def test_requeue_for_retry_capacity_and_lost_worker(store: StateStore) -> None:
    (jid,) = store.insert_jobs([job()])
    assert not store.requeue_job(jid, reason="retry")  # not running
    store.claim_job(jid, "w1")
    store.mark_started(jid, 99)
    store.request_cancel(jid)
    assert store.requeue_job(jid, scheduled_at=T2, retry_count=1, error="Transient", reason="retry")
    row = store.get_job(jid)
    assert row is not None
    assert (row["status"], row["retry_count"], row["scheduled_at"], row["error_message"]) == (
        "QUEUED",
        1,
        T2,
        "Transient",
    )
    assert (row["worker_id"], row["host_pid"], row["claimed_at"], row["started_at"],
            row["cancel_requested_at"]) == (None,) * 5  # fmt: skip
    assert row["result_summary"] == "requeued: retry"

    store.claim_job(jid, "w2")
    assert store.requeue_job(jid, reason="capacity")  # F9: retry_count unchanged
    row = store.get_job(jid)
    assert row and (row["retry_count"], row["error_message"], row["attempt"]) == (1, "Transient", 2)
    assert store.queued_jobs() == [(0, jid, None)]


def test_a_killed_host_counts_apart_and_the_error_keeps_its_kind(store: StateStore) -> None:
    (jid,) = store.insert_jobs([job()])
    store.claim_job(jid, "w1")
    assert store.requeue_job(jid, error="PluginHostKilled: ...", error_kind="host_killed",
                             host_kills=1, reason="host_killed")
    row = store.get_job(jid)
    assert row and (row["host_kills"], row["retry_count"], row["error_kind"]) == (
        1, 0, "host_killed")
    store.claim_job(jid, "w1")
    assert store.requeue_job(jid, reason="capacity")  # no error: message and kind both kept
    row = store.get_job(jid)
    assert row and (row["error_message"], row["error_kind"], row["host_kills"]) == (
        "PluginHostKilled: ...", "host_killed", 1)
    store.claim_job(jid, "w1")
    assert store.requeue_job(jid, error="worker lost: gone", reason="worker_lost")
    row = store.get_job(jid)  # a new error of no kind: the old kind goes with the old error
    assert row and (row["error_kind"], row["host_kills"]) == (None, 1)
    store.claim_job(jid, "w1")
    assert store.fail_job(jid, "PluginHostKilled: plugin host killed by SIGKILL 4 times "
                          "(limit 3)", "host_killed", "", host_kills=4)
    row = store.get_job(jid)
    assert row and (row["status"], row["host_kills"]) == ("FAILED", 4)
    assert job_to_info(row)["host_kills"] == 4


def test_dead_letter(store: StateStore) -> None:
    a, b, c = store.insert_jobs([job(1), job(2), job(3)])
    store.claim_job(a, "w")
    store.requeue_job(a, retry_count=3, error="x")
    store.claim_job(a, "w")
    dl = store.dead_letter(a, "retries exhausted", "TransientError: flaky", T1)
    assert dl is not None and store.dead_letter(a, "again") == dl  # idempotent
    row = store.get_job(a)
    assert row and (row["status"], row["error_message"]) == ("FAILED", "TransientError: flaky")
    (letter,) = store.dead_letters()
    assert (
        letter["original_job_id"],
        letter["retry_count"],
        letter["reason"],
        letter["moved_at"],
    ) == (a, 3, "retries exhausted", T1)
    assert letter["input_file"] == "/data/f1.csv" and letter["plugin_name"] == "orders"

    store.fail_job(b, "permanent")
    assert store.dead_letter(b, "permanent error") is not None  # already FAILED: row only
    store.claim_job(c, "w")
    store.complete_job(c)
    assert store.dead_letter(c, "nope") is None
    with pytest.raises(StoreError, match="no job 999"):
        store.dead_letter(999, "x")


def test_insert_skipped(store: StateStore) -> None:
    (sid,) = store.insert_skipped([job(submission_id="s")], now=T0)
    row = store.get_job(sid)
    assert row and (
        row["status"],
        row["completion_status"],
        row["result_summary"],
        row["ended_at"],
    ) == ("SKIPPED", "SKIPPED", "already materialized", T0)
    assert not store.claim_job(sid, "w")
    assert store.queue_stats()["skipped"] == 1


def test_reconcile_running_and_startup_queue(store: StateStore) -> None:
    ids = store.insert_jobs([job(i, priority=p) for i, p in enumerate([0, 5, 0, 5, 1])], now=T0)
    store.claim_job(ids[2], "w")
    store.claim_job(ids[0], "w")
    store.requeue_job(ids[0], scheduled_at=T2, reason="retry")
    store.claim_job(ids[4], "w")
    assert store.reconcile_running(T1) == [ids[2], ids[4]]
    assert [j["id"] for j in store.running_jobs()] == [ids[2], ids[4]]
    assert {j["updated_at"] for j in store.running_jobs()} == {T1}
    assert store.queued_jobs() == [(5, ids[1], None), (5, ids[3], None), (0, ids[0], T2)]


def test_queue_stats_counts_every_row(store: StateStore) -> None:
    ids = store.insert_jobs([job(i) for i in range(7)])
    store.insert_skipped([job(9)])
    for jid in ids[:4]:
        store.claim_job(jid, "w")
    store.complete_job(ids[0])
    store.fail_job(ids[1], "x")
    store.abort_job(ids[2])
    store.request_cancel(ids[3])
    assert store.queue_stats() == {
        "queued": 3, "running": 1, "completed": 1, "failed": 1, "aborted": 1, "skipped": 1,
        "cancel_requested": 1, "total": 8,
    }  # fmt: skip


def test_list_jobs_paging_and_filters(store: StateStore) -> None:
    ids = store.insert_jobs([job(i, submission_id="a" if i < 6 else "b") for i in range(10)])
    for jid in ids[:3]:
        store.claim_job(jid, "w")
    assert [j["id"] for j in store.list_jobs()] == ids[::-1]
    assert [j["id"] for j in store.list_jobs(limit=3, offset=2)] == ids[::-1][2:5]
    assert [j["id"] for j in store.list_jobs(status="running")] == ids[2::-1]
    assert len(store.list_jobs(status=["QUEUED", "RUNNING"])) == 10
    assert [j["id"] for j in store.list_jobs(submission_id="b")] == ids[:5:-1]
    assert store.job_ids_for_submission("b") == ids[6:]
    assert store.job_ids_for_submission("zzz") == []
    assert [j["id"] for j in store.list_jobs(status="QUEUED", submission_id="a")] == ids[5:2:-1]
    assert store.list_jobs(limit=-1) == [] and len(store.list_jobs(offset=-5)) == 10
    with pytest.raises(ValueError, match="unknown job status 'DONE'"):
        store.list_jobs(status="DONE")
    info = job_to_info(store.list_jobs(limit=1)[0])
    assert {"id", "status", "plugin_name", "input_file", "cancel_requested"} <= set(info)
    assert "traceback" not in info and "plan_json" not in info


def test_transactions_nest_and_roll_back(store: StateStore) -> None:
    with store.transaction():
        store.insert_jobs([job(1)])
        with pytest.raises(StoreError):
            store.insert_jobs([job(2), job(3, plugin_id=77)])  # inner batch undone alone
        with store.transaction(), store.transaction():
            store.insert_jobs([job(4)])
    assert [j["input_file"] for j in store.list_jobs()] == ["/data/f4.csv", "/data/f1.csv"]
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_jobs([job(5)])
        raise RuntimeError("tick failed")
    assert store.queue_stats()["total"] == 2
    assert not store._conn.in_transaction


# -- materializations (F4) ----------------------------------------------------------------
def mat(key: str, status: str = "success", job_id: int = 1) -> Materialization:
    return Materialization(key, "target", "src", "orders", "1.0", "orders", "orders",
                           "parquet:///o", "append", "", status, 5, job_id)  # fmt: skip


def test_materializations_are_idempotent(store: StateStore) -> None:
    assert store.record_materializations([mat("k1"), mat("k2", "no_data")], now=T0) == 2
    assert store.record_materializations([mat("k1"), mat("k3", job_id=2)]) == 1
    assert store.record_materializations([]) == 0
    assert store.materialized(["k1", "k3", "nope"]) == {"k1", "k3"}
    assert store.materialized([]) == set()
    assert store.materialized(f"x{i}" for i in range(5000)) == set()  # no variable limit
    assert {m["materialization_key"] for m in store.list_materializations(job_id=1)} == {"k1", "k2"}
    assert len(store.list_materializations(source_hash="src", plugin_name="orders")) == 3
    with pytest.raises(ValueError):
        store.record_materializations([mat("k9", "SUCCESS")])


def test_submit_skip_and_record_use_the_stored_plan(store: StateStore) -> None:
    """The F4 flow: plan at submit, stored with the job, keys for skip and record from it."""
    plan = output_plan(
        manifest={"orders": {"columns": [{"name": "id", "type": "int64"}]}},
        default_output="orders",
        sink_uri="parquet:///o",
        sink_mode="append",
    )
    (jid,) = store.insert_jobs([job(source_hash="src", parser_version="1.0",
                                    plan_json=plan_to_json(plan))])  # fmt: skip
    stored = plan_from_json(store.get_job(jid)["plan_json"])  # type: ignore[index]
    keys = plan_keys(stored, "src", "orders", "1.0")
    assert store.materialized(keys) == set()
    store.record_materializations([
        Materialization(k, t.target_key, "src", "orders", "1.0", t.output, t.table,
                        "parquet:///o", "append", t.schema_hash, "success", 3, jid)
        for k, t in zip(keys, stored, strict=True)
    ])  # fmt: skip
    assert store.materialized(plan_keys(plan, "src", "orders", "1.0")) == set(keys)
    assert store.materialized(plan_keys(plan, "src", "orders", "1.1")) == set()


# -- performance (printed, not asserted) --------------------------------------------------
def test_100k_jobs_insert_and_list_timing(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_json = plan_to_json(output_plan(manifest=None, default_output="orders",
                                         sink_uri="parquet:///o", sink_mode="append"))  # fmt: skip
    jobs = [NewJob("orders", f"/data/in/file_{i:06d}.csv", submission_id=f"s{i // 1000}",
                   parser_version="1.0", source_hash=f"{i:064x}", sink_uri="parquet:///o",
                   sink_mode="append", plan_json=plan_json) for i in range(100_000)]  # fmt: skip
    with StateStore.open(db) as store:
        t = time.perf_counter()
        ids = store.insert_jobs(jobs)
        insert_s = time.perf_counter() - t
        assert ids[0] == 1 and ids[-1] == 100_000
        for jid in range(1, 2001):
            store.claim_job(jid, "w")

        def best_ms(fn: object, n: int = 20) -> float:
            best = float("inf")
            for _ in range(n):
                t = time.perf_counter()
                fn()  # type: ignore[operator]
                best = min(best, time.perf_counter() - t)
            return best * 1000

        w_list = best_ms(lambda: store.list_jobs(limit=100))
        with StateReader.open(db) as reader:
            r_list = best_ms(lambda: reader.list_jobs(limit=100))
            r_status = best_ms(lambda: reader.list_jobs(status="QUEUED", limit=100))
            r_page = best_ms(lambda: reader.list_jobs(limit=100, offset=50_000))
            r_sub = best_ms(lambda: reader.list_jobs(submission_id="s42", limit=100))
            r_stats = best_ms(reader.queue_stats)
            info = best_ms(lambda: [job_to_info(j) for j in reader.list_jobs(limit=100)])
            queued = best_ms(reader.queued_jobs, 3)
    with capsys.disabled():
        print(
            f"\n[store timing] insert_jobs 100,000: {insert_s:.3f} s "
            f"({100_000 / insert_s:,.0f} jobs/s)\n"
            f"[store timing] list_jobs(limit=100) @100k: writer {w_list:.2f} ms, reader "
            f"{r_list:.2f} ms, status=QUEUED {r_status:.2f} ms, offset=50k {r_page:.2f} ms, "
            f"submission {r_sub:.2f} ms, +job_to_info {info:.2f} ms\n"
            f"[store timing] queue_stats {r_stats:.2f} ms, queued_jobs (98k rows) {queued:.1f} ms"
        )


def test_iter_dispatchable_streams_one_status_oldest_first(store: StateStore) -> None:
    """The restart path: only QUEUED jobs, ascending ids, across batch boundaries, with the
    dispatch columns only (plan_json as stored text)."""
    from casparian_nb.store.reader import DISPATCH_COLUMNS

    ids = store.insert_jobs([NewJob("p", f"/in/{i}.csv", plan_json='[{"output": "*"}]')
                             for i in range(7)])
    assert store.claim_job(ids[2], "w1", T0)
    rows = list(store.iter_dispatchable("QUEUED", batch=2))
    assert [r["id"] for r in rows] == [i for i in ids if i != ids[2]]
    assert set(rows[0]) == set(DISPATCH_COLUMNS)
    assert rows[0]["plan_json"] == '[{"output": "*"}]' and rows[0]["input_file"] == "/in/0.csv"


# -- the vocabulary, and the reads the sentinel, CLI and notebook use --------------------------
def test_check_constraints_are_generated_from_the_protocol_enums(store: StateStore) -> None:
    """The CHECK lists are the enums' values, in order; a value outside them is refused."""
    from casparian_nb.protocol import (
        STORED_JOB_STATUSES,
        CompletionStatus,
        JobStatus,
        MaterializationStatus,
    )
    from casparian_nb.store.schema import DDL

    def in_list(values: object) -> str:
        return ", ".join(f"'{v}'" for v in values)  # type: ignore[attr-defined]

    assert f"status IN ({in_list(STORED_JOB_STATUSES)})" in DDL
    assert f"completion_status IN ({in_list(CompletionStatus)})" in DDL
    assert f"status IN ({in_list(MaterializationStatus)})" in DDL
    assert f"DEFAULT '{JobStatus.QUEUED}'" in DDL
    (jid,) = store.insert_jobs([job()])
    with pytest.raises(sqlite3.IntegrityError), store._conn:
        store._conn.execute("UPDATE cf_processing_queue SET status = ? WHERE id = ?",
                            (JobStatus.PROMOTING, jid))


def test_count_jobs_matches_list_jobs(store: StateStore) -> None:
    ids = store.insert_jobs([job(i, submission_id="a" if i < 3 else "b") for i in range(5)])
    store.claim_job(ids[0], "w")
    assert store.count_jobs() == 5
    assert store.count_jobs("running") == 1 == len(store.list_jobs(status="RUNNING"))
    assert store.count_jobs("QUEUED", "a") == 2 and store.count_jobs(submission_id="b") == 2
    assert store.count_jobs("COMPLETED") == 0


def test_queue_rows_are_the_light_projection(store: StateStore, db: Path) -> None:
    from casparian_nb.store import QUEUE_ROW_COLUMNS

    ids = store.insert_jobs([job(i) for i in range(4)])
    store.claim_job(ids[1], "w1", T0)
    with StateReader.open(db) as reader:
        newest = reader.queue_rows(newest=2)
        assert [r["id"] for r in newest] == [ids[3], ids[2]]
        assert all(list(r) == list(QUEUE_ROW_COLUMNS) for r in newest)
        picked = {r["id"]: r for r in reader.queue_rows(ids=[ids[1], ids[0], 999])}
        assert set(picked) == {ids[0], ids[1]}
        assert picked[ids[1]]["status"] == "RUNNING" and picked[ids[1]]["worker_id"] == "w1"
        assert reader.queue_rows(ids=[]) == [] and reader.queue_rows(newest=0) == []


def test_catalog_reads_tables_sinks_and_data_version(store: StateStore, db: Path) -> None:
    from casparian_nb.store.reader import table_columns
    from casparian_nb.store.schema import ddl_columns

    with StateReader.open(db) as reader:
        before = reader.data_version()
        store.insert_jobs([job(1, sink_uri="parquet:///o"), job(2, sink_uri="parquet:///o"),
                           job(3)])
        assert reader.data_version() != before  # another connection committed
        assert reader.sink_uris() == ["parquet:///o"]
        columns = reader.table_columns("jobs")
        assert columns == ddl_columns("cf_processing_queue") == table_columns(None, "jobs")
        assert ("status", "TEXT") in columns and ("id", "INTEGER") in columns
        rows = reader.table_rows("jobs", ["id", "input_file"])
        assert sorted(r[1] for r in rows) == ["/data/f1.csv", "/data/f2.csv", "/data/f3.csv"]
        assert reader.table_rows("materializations", ["materialization_key"]) == []


def test_open_if_ready_and_stored_version(tmp_path: Path, db: Path) -> None:
    from casparian_nb.store.schema import stored_version

    assert StateReader.open_if_ready(db) is None and stored_version(db) is None
    StateStore.open(db).close()
    reader = StateReader.open_if_ready(db)
    assert reader is not None
    reader.close()
    assert stored_version(db) == SCHEMA_VERSION
    set_version(db, SCHEMA_VERSION + 1)
    assert StateReader.open_if_ready(db) is None  # another version: nothing to show yet
    assert stored_version(db) == SCHEMA_VERSION + 1
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert stored_version(junk) is None and StateReader.open_if_ready(junk) is None

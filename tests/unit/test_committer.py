"""sentinel/_committer.py: a held DuckDB file parks its promotions (others keep flowing, per-file
order kept, a bounded wait then a one-line failure), and the start-up staging sweep.

Real staged Parquet, real DuckDB files; "another process holds the file" is an ``flock`` on
``<db>.lock`` through a second open file description (it conflicts like another process's).
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from casparian_nb.config import load_settings
from casparian_nb.sentinel import state as st
from casparian_nb.sentinel._committer import Committer, sweep_staging
from casparian_nb.sentinel._persist import Persister
from casparian_nb.sinks import JobStager
from casparian_nb.sinks.staging import JOURNAL
from tests.conftest import wait_until
from tests.unit.test_sinks import job_rows, stage


def _promote(root: Path, job_id: int, uri: str) -> st.Promote:
    staged = stage(root, str(job_id), uri, {"t": pa.table({"id": [job_id, job_id + 1]})})
    return st.Promote(job_id, staged.to_dict(), "append", None)


@contextmanager
def held(db: Path) -> Iterator[None]:
    """Hold ``db``'s committer lock the way another casparian process would."""
    fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Running:
    """A committer on its own thread, fed and read through its queues."""

    def __init__(self, tmp_path: Path, lock_timeout: float) -> None:
        self.persist = Persister(None, load_settings(tmp_path / "home"))  # type: ignore[arg-type]
        self.inbox: queue.Queue[st.Promote | st.Discard | None] = queue.Queue()
        self.out: queue.Queue[st.PromotionFinished] = queue.Queue()
        self.wakes = 0
        self.committer = Committer(self.persist, self.inbox, self.out, self._wake,
                                   lock_timeout=lock_timeout)
        self.thread = threading.Thread(target=self.committer.run, daemon=True)
        self.thread.start()
        self.done: list[st.PromotionFinished] = []

    def _wake(self) -> None:
        self.wakes += 1

    def finished(self) -> dict[int, st.PromotionFinished]:
        while True:
            try:
                self.done.append(self.out.get_nowait())
            except queue.Empty:
                return {f.job_id: f for f in self.done}

    def wait(self, *job_ids: int, timeout: float = 10.0) -> dict[int, st.PromotionFinished]:
        wait_until(lambda: set(job_ids) <= set(self.finished()), timeout,
                   message=f"promotions of {job_ids} to finish")
        return self.finished()

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    made: list[Running] = []

    def make(lock_timeout: float = 10.0) -> Running:
        made.append(Running(tmp_path, lock_timeout))
        return made[-1]

    yield make
    for r in made:
        if r.thread.is_alive():
            r.stop()


def test_a_held_duckdb_file_parks_its_promotion_and_others_flow(tmp_path: Path, running):
    db = tmp_path / "held.duckdb"
    duck, pq_uri = f"duckdb://{db}", f"parquet://{tmp_path / 'out'}"
    r = running(lock_timeout=30.0)
    with held(db):
        first = _promote(tmp_path / "stage", 1, duck)
        r.inbox.put(first)
        r.inbox.put(_promote(tmp_path / "stage", 2, pq_uri))
        t0 = time.monotonic()
        done = r.wait(2, timeout=5)
        assert time.monotonic() - t0 < 2.0, "the parquet job waited for the DuckDB file"
        assert done[2].ok and 1 not in done
        assert set(r.committer.parked) == {os.path.realpath(db)}
        assert Path(first.staged["staging_dir"]).is_dir(), "a parked job keeps its staging"
    done = r.wait(1)  # released: the retry (≤ 1 s backoff) promotes it
    assert done[1].ok, done[1].error
    assert job_rows(duck, "t") == {"1": 2}
    assert not r.committer.parked and r.wakes >= 2
    r.stop()


def test_promotions_to_one_duckdb_file_keep_their_order(tmp_path: Path, running):
    db = tmp_path / "held.duckdb"
    r = running(lock_timeout=30.0)
    with held(db):
        for job_id in (1, 2, 3):
            r.inbox.put(_promote(tmp_path / "stage", job_id, f"duckdb://{db}"))
        line = os.path.realpath(db)
        wait_until(lambda: len(getattr(r.committer.parked.get(line), "items", ())) == 3, 5,
                   message="all three promotions to wait in line")
        assert not r.finished()
    r.wait(1, 2, 3)
    assert [f.job_id for f in r.done] == [1, 2, 3] and all(f.ok for f in r.done)
    assert job_rows(f"duckdb://{db}", "t") == {"1": 2, "2": 2, "3": 2}
    r.stop()


def test_a_promotion_held_out_past_the_lock_timeout_fails_in_one_line(tmp_path: Path, running):
    db = tmp_path / "held.duckdb"
    r = running(lock_timeout=0.4)
    with held(db):
        item = _promote(tmp_path / "stage", 1, f"duckdb://{db}")
        t0 = time.monotonic()
        r.inbox.put(item)
        fin = r.wait(1)[1]
        waited = time.monotonic() - t0
        later = _promote(tmp_path / "stage", 2, f"duckdb://{db}")
        r.inbox.put(later)  # arrives after the first gave up: gets its own full wait
        assert r.wait(2)[2].ok is False
    assert 0.4 <= waited < 3.0, waited
    assert not fin.ok and fin.error is not None and "\n" not in fin.error
    for needle in (str(db), "in use by another process", f"pid {os.getpid()}",
                   "close it and retry"):
        assert needle in fin.error
    assert not Path(item.staged["staging_dir"]).exists(), "a failed job's staging is dropped"
    assert not r.committer.parked
    r.stop()


def test_lock_timeout_zero_fails_at_once(tmp_path: Path, running):
    db = tmp_path / "held.duckdb"
    r = running(lock_timeout=0.0)
    with held(db):
        r.inbox.put(_promote(tmp_path / "stage", 1, f"duckdb://{db}"))
        assert r.wait(1, timeout=3)[1].ok is False
    r.stop()


def test_stop_leaves_parked_promotions_for_the_next_start(tmp_path: Path, running):
    db = tmp_path / "held.duckdb"
    r = running(lock_timeout=30.0)
    with held(db):
        item = _promote(tmp_path / "stage", 1, f"duckdb://{db}")
        r.inbox.put(item)
        wait_until(lambda: bool(r.committer.parked), 5, message="the promotion to park")
        t0 = time.monotonic()
        r.stop()
        assert time.monotonic() - t0 < 2.0, "stop waited for the held file"
    assert not r.finished() and Path(item.staged["staging_dir"]).is_dir()
    con = duckdb.connect(str(db))  # nothing was written
    try:
        assert not con.execute("select * from duckdb_tables()").fetchall()
    finally:
        con.close()


# -- start-up sweep ---------------------------------------------------------------------------


def _staged_dir(root: Path, job_id: str) -> Path:
    stager = JobStager(root, job_id, "parquet:///nowhere")
    stager.write("t", "t", pa.table({"id": [1]}))
    return Path(stager.close().staging_dir)


def test_sweep_removes_only_stale_attempt_dirs(tmp_path: Path):
    staging = tmp_path / "staging"
    stale = _staged_dir(staging / "attempt-1", "7")
    adopted = _staged_dir(staging / "attempt-1", "8")
    journaled = _staged_dir(staging / "attempt-2", "9")
    (journaled / JOURNAL).write_text("{}")
    run = _staged_dir(staging / "run-abc", "run-x-1")  # a standalone run's: not ours
    outside = _staged_dir(tmp_path / "elsewhere", "10")
    (staging / "attempt-3").mkdir()
    (staging / "attempt-3" / "11-linked").symlink_to(outside, target_is_directory=True)
    (staging / "attempt-4").symlink_to(outside.parent, target_is_directory=True)
    (staging / "attempt-1" / "stray.txt").write_text("x")

    removed = sweep_staging(staging, [str(adopted)])

    assert removed == [str(stale)]
    assert not stale.exists()
    for kept in (adopted, journaled, run, outside, staging / "attempt-1" / "stray.txt"):
        assert kept.exists(), kept
    assert list(outside.iterdir()), "nothing outside the staging dir is touched"
    assert (staging / "attempt-3" / "11-linked").is_symlink()


def test_sweep_of_a_missing_staging_dir_is_a_no_op(tmp_path: Path):
    assert sweep_staging(tmp_path / "nope", []) == []


def _opens(db: Path) -> bool:
    """Whether another connection could open ``db`` right now."""
    try:
        duckdb.connect(str(db), read_only=True).close()
        return True
    except duckdb.Error:
        return False


def test_a_burst_into_one_duckdb_file_opens_it_once_and_frees_it_before_the_last_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small job loads in ~2 ms but an open + close costs ~15 ms: through a burst the file
    stays open (one connect for 20 jobs, each still its own committed transaction), and it is
    closed before the burst's last job is reported, so a notebook querying right after its
    wait() finds it free."""
    from casparian_nb.sinks import _duckdb_open, duckdb_sink

    db = tmp_path / "burst.duckdb"
    connects: list[Path] = []
    real_connect = _duckdb_open.connect

    def counting(path: Path, deadline: float) -> Any:
        connects.append(path)
        return real_connect(path, deadline)

    # every way into the file: held by the committer, or opened per job
    monkeypatch.setattr(_duckdb_open, "connect", counting)
    monkeypatch.setattr(duckdb_sink, "connect", counting)
    seen_free: list[bool] = []

    class Reports(queue.Queue[st.PromotionFinished]):
        def put(self, item: st.PromotionFinished, block: bool = True,
                timeout: float | None = None) -> None:
            seen_free.append(_opens(db))
            super().put(item, block, timeout)

    inbox: queue.Queue[st.Promote | st.Discard | None] = queue.Queue()
    for job_id in range(1, 21):  # all queued before the committer starts: one burst
        inbox.put(_promote(tmp_path / "stage", job_id, f"duckdb://{db}"))
    out = Reports()
    persist = Persister(None, load_settings(tmp_path / "home"))  # type: ignore[arg-type]
    thread = threading.Thread(target=Committer(persist, inbox, out, lambda: None).run)
    thread.start()
    try:
        done = [out.get(timeout=20) for _ in range(20)]
    finally:
        inbox.put(None)
        thread.join(10)
    assert all(f.ok for f in done), [f.error for f in done if not f.ok]
    assert len(connects) == 1
    assert seen_free[0] is False and seen_free[-1] is True
    assert job_rows(f"duckdb://{db}", "t") == {str(i): 2 for i in range(1, 21)}


def test_a_failed_load_into_a_held_file_reconnects_for_the_next_job(
        tmp_path: Path, running: Any) -> None:
    """A job whose load fails (its staged file vanished) fails alone; the held connection is
    dropped and the next job into the same file opens a fresh one."""
    db = tmp_path / "burst.duckdb"
    r = running()
    bad = _promote(tmp_path / "stage", 1, f"duckdb://{db}")
    for out in bad.staged["outputs"]:
        Path(out["path"]).unlink()
    r.inbox.put(bad)
    r.inbox.put(_promote(tmp_path / "stage", 2, f"duckdb://{db}"))
    done = r.wait(1, 2)
    assert not done[1].ok and "missing" in (done[1].error or "")
    assert done[2].ok, done[2].error
    assert job_rows(f"duckdb://{db}", "t") == {"2": 2}
    wait_until(lambda: _opens(db), 5, message="the file released after the burst")
    r.stop()


def test_a_held_file_is_one_connection_however_its_path_is_spelled(tmp_path: Path) -> None:
    from casparian_nb.sinks._held import holding_connections

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    with holding_connections(max_age=60) as held:
        a = held.connection(real / "x.duckdb", time.monotonic() + 5)
        b = held.connection(tmp_path / "alias" / "x.duckdb", time.monotonic() + 5)
        assert a is b and len(held) == 1
        assert not _opens(real / "x.duckdb")  # held: a reader is kept out
        held.close(tmp_path / "alias" / "x.duckdb")
        assert len(held) == 0
    assert _opens(real / "x.duckdb")


def test_file_promotions_queued_together_go_as_groups_in_queue_order(tmp_path: Path) -> None:
    """Appends to a file sink waiting together share one journal (a group per burst); a
    task queued between them runs between them; a job that cannot promote fails alone."""
    uri = f"parquet://{tmp_path / 'sink'}"
    persist = Persister(None, load_settings(tmp_path / "home"))  # type: ignore[arg-type]
    inbox: queue.Queue[Any] = queue.Queue()
    out: queue.Queue[st.PromotionFinished] = queue.Queue()
    groups: list[list[int]] = []
    real = persist.promote_group

    def spy(items: list[st.Promote]) -> list[st.PromotionFinished]:
        groups.append([i.job_id for i in items])
        return real(items)

    persist.promote_group = spy  # type: ignore[method-assign]
    order: list[str] = []
    for job_id in range(1, 5):
        inbox.put(_promote(tmp_path / "stg", job_id, uri))
    inbox.put(lambda: order.append(f"task after {len(groups)} group(s)"))
    broken = _promote(tmp_path / "stg", 5, uri)
    os.unlink(broken.staged["outputs"][0]["path"])  # its staged file is gone
    for item in (_promote(tmp_path / "stg", 6, uri), broken, _promote(tmp_path / "stg", 7, uri)):
        inbox.put(item)
    inbox.put(None)
    Committer(persist, inbox, out, lambda: None).run()
    finished: dict[int, st.PromotionFinished] = {}
    while not out.empty():
        fin = out.get_nowait()
        finished[fin.job_id] = fin
    assert groups == [[1, 2, 3, 4], [6, 5, 7]]
    assert order == ["task after 1 group(s)"]
    assert {j for j, f in finished.items() if f.ok} == {1, 2, 3, 4, 6, 7}
    assert "missing" in (finished[5].error or "")
    assert job_rows(uri, "t") == {str(j): 2 for j in (1, 2, 3, 4, 6, 7)}

"""Crash recovery (F8): kill -9 of a worker or of the sentinel mid-run, a crash between the
receipt and the end of promotion, and a clean stop with jobs running. No job is lost, none
completes twice, no materialization is recorded twice."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable
from pathlib import Path

import duckdb
import psutil
import pyarrow.parquet as pq

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from tests.conftest import make_inputs, wait_until
from tests.integration.test_sentinel import (
    FAST,
    control,
    host_gone,
    jobs_by_id,
    materializations,
    output_files,
    wait_final,
    wait_job,
)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def assert_each_job_promoted_once(sink: Path, ids: list[int]) -> None:
    outs = output_files(sink)
    owners = [pq.read_table(p).column("_cf_job_id").to_pylist()[0] for p in outs]
    assert sorted(owners) == sorted(str(i) for i in ids), "one output file per job, exactly"


def test_kill_9_of_a_worker_mid_job_reruns_the_job_elsewhere_once(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, **FAST)
    slow = make_inputs(tmp_path / "in", 1, mode="slow sleep=1.5")
    sink = tmp_path / "out"
    with control(cluster) as ctl:
        job_id = ctl.submit(fixture_plugin, [str(slow[0])], sink=f"parquet://{sink}")["job_ids"][0]
        row = wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the job to start")
        victim_pid = next(w["pid"] for w in ctl.list_workers() if w["worker_id"] == row["worker_id"])
        victim_hosts = children_of(victim_pid)
        assert row["host_pid"] in victim_hosts
        kill9(victim_pid)
        done = wait_final(settings, [job_id], timeout=30, status="COMPLETED")[job_id]
        workers = ctl.list_workers()
    assert done["worker_id"] != row["worker_id"]
    assert done["attempt"] == 2 and done["retry_count"] == 1
    assert [w["pid"] for w in workers] != [victim_pid] and len(workers) == 1
    # the orphaned plugin host noticed its worker is gone and exited
    wait_until(lambda: all(host_gone(pid) for pid in victim_hosts), 5,
               message=f"orphaned hosts {victim_hosts} to exit")
    assert_each_job_promoted_once(sink, [job_id])
    assert len(materializations(settings, job_id)) == 1


def test_kill_9_of_the_sentinel_mid_run_then_restart_loses_and_doubles_nothing(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    first = cluster_factory(workers=2, **FAST)
    files = make_inputs(tmp_path / "in", 12, mode="slow sleep=0.3")
    sink = tmp_path / "out"
    assert first.sentinel is not None
    sentinel_pid = first.sentinel.pid
    worker_pids = [w.pid for w in first.workers]
    with control(first) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files], sink=f"parquet://{sink}")["job_ids"]

    def some_done_some_running() -> bool:
        statuses = [j["status"] for j in jobs_by_id(settings, ids).values()]
        return "COMPLETED" in statuses and "RUNNING" in statuses

    wait_until(some_done_some_running, 20, message="a run in full swing")
    hosts = [h for w in worker_pids for h in children_of(w)]
    kill9(sentinel_pid)
    # workers (and their hosts) notice the sentinel is gone and exit by themselves
    wait_until(lambda: all(host_gone(p) for p in worker_pids + hosts), 10,
               message="workers and hosts to exit after the sentinel died")
    at_crash = jobs_by_id(settings, ids)
    running_at_crash = [i for i, j in at_crash.items() if j["status"] == "RUNNING"]
    assert running_at_crash

    second = cluster_factory(workers=2, **FAST)  # same home: reconciles and carries on
    rows = wait_final(settings, ids, timeout=40, status="COMPLETED")
    assert second.alive()
    for job_id in running_at_crash:
        assert rows[job_id]["retry_count"] == 0  # a sentinel crash spends no retry
    assert_each_job_promoted_once(sink, ids)
    mats = materializations(settings)
    assert sorted(m["job_id"] for m in mats) == sorted(ids)


def test_crash_after_the_receipt_but_before_promotion_finished(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """The committer is stuck waiting for a DuckDB file we hold; the receipt (staged outputs)
    is recorded; the sentinel dies. The restarted one must promote it — once — not re-run it
    and not leave it RUNNING forever."""
    db = tmp_path / "out.duckdb"
    lock = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # what another casparian committer would hold
    try:
        first = cluster_factory(workers=1, **FAST)
        files = make_inputs(tmp_path / "in", 1)
        with control(first) as ctl:
            job_id = ctl.submit(fixture_plugin, [str(files[0])], sink=f"duckdb://{db}")["job_ids"][0]
        staged = wait_job(settings, job_id, lambda j: j["staged_json"], 20,
                          "the receipt to be recorded")
        assert staged["status"] == "RUNNING"
        assert first.sentinel is not None
        kill9(first.sentinel.pid)
        wait_until(lambda: all(host_gone(w.pid) for w in first.workers), 10,
                   message="the worker to exit")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    cluster_factory(workers=1, **FAST)
    row = wait_final(settings, [job_id], timeout=30, status="COMPLETED")[job_id]
    assert row["attempt"] == 1  # promoted from what was staged, not run again
    con = duckdb.connect(str(db), read_only=True)
    try:
        found = con.execute(
            "select count(*), count(distinct _cf_job_id) from fixture_output").fetchone()
    finally:
        con.close()
    assert found == (10, 1)
    assert len(materializations(settings, job_id)) == 1


def test_clean_stop_with_jobs_running_requeues_them_for_the_next_start(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    first = cluster_factory(workers=1, **FAST)
    files = make_inputs(tmp_path / "in", 3, mode="slow sleep=5")
    with control(first) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
    wait_job(settings, ids[0], lambda j: j["host_pid"], 20, "the first job to start")
    first.stop()
    rows = jobs_by_id(settings, ids)
    assert all(r["status"] in ("QUEUED", "RUNNING") for r in rows.values()), rows
    assert all(r["retry_count"] == 0 for r in rows.values())
    # nothing was aborted or failed by the stop; the next start finishes the work
    for f in files:
        f.write_text("mode=normal\n")  # (the source hash changes, the job ids do not)
    cluster_factory(workers=1, **FAST)
    done = wait_final(settings, ids, timeout=30)
    assert {r["status"] for r in done.values()} == {"COMPLETED"}, done

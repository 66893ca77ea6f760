"""Issue 17: the dask executor runs several attempts per Dask task (a *chunk*), on a real
``distributed.LocalCluster(processes=True)`` with one worker of one thread, so that the
attempts dispatched together share one task: a cancel reaches the one attempt it names
(running: its host is killed and the rest of the chunk runs on; waiting for its turn:
skipped, ABORTED at once), the outputs are the local executor's, long jobs go one per
task, receipts that were not pushed come from the chunk's result; and, on a real ``dask
scheduler`` with two ``dask worker``, a worker killed mid-chunk loses no job and
duplicates none.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from tests.conftest import make_inputs, running, wait_until
from tests.integration import test_dask_executor as base
from tests.integration.test_dask_executor import DaskCluster, Reference, rows_of
from tests.integration.test_sentinel import (
    FAST,
    control,
    jobs_by_id,
    output_files,
    wait_final,
    wait_job,
)

distributed = pytest.importorskip("distributed")

#: The dask executor module's fixtures, here on this module's one-thread cluster.
on_dask = base.on_dask
reference = base.reference


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[DaskCluster]:
    """One Dask worker with one thread: what is dispatched together is chunked together."""
    with distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as lc:
        yield DaskCluster("LocalCluster", lc.scheduler_address, [])


def _casparian_keys(since: float, dask_scheduler: Any) -> list[str]:
    return sorted({str(entry[0]) for entry in dask_scheduler.transition_log
                   if str(entry[0]).startswith("casparian-") and entry[-1] >= since})


def task_keys(cluster: DaskCluster | str, since: float) -> list[str]:
    """The keys of the casparian tasks the scheduler has seen since ``since`` (time.time(),
    its transition log: each test's home numbers its jobs from 1)."""
    address = cluster if isinstance(cluster, str) else cluster.address
    with distributed.Client(address, timeout="10s") as client:
        keys: list[str] = client.run_on_scheduler(_casparian_keys, since)
    return keys


def _hang_then_three(on_dask: Callable[..., LocalCluster], settings: Settings,
                     fixture_plugin: Path, tmp_path: Path, dask_cluster: DaskCluster,
                     ) -> tuple[LocalCluster, list[int], int]:
    """A plugin that hangs (ignoring SIGTERM) and three quick ones, submitted together once
    the bridge has seen that the plugin's jobs are quick: a task of them on the only thread,
    the hanging one running, the next one waiting in it."""
    (hang,) = make_inputs(tmp_path / "hang", 1, mode="hang")
    quick = make_inputs(tmp_path / "ok", 3)
    since = time.time()
    cluster = on_dask()
    with control(cluster) as ctl:
        seen = ctl.submit(fixture_plugin, [str(f) for f in make_inputs(tmp_path / "seen", 2)],
                          sink=f"parquet://{tmp_path / 'seen-out'}")["job_ids"]
        wait_final(settings, seen, 30, status="COMPLETED")
        ids = ctl.submit(fixture_plugin, [str(hang), *map(str, quick)],
                         sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
    job = wait_job(settings, ids[0], lambda j: j["status"] == "RUNNING" and j["host_pid"],
                   message="the hanging job to run")
    # One task for the four, or (the plugin's jobs took longer here) for the first few:
    # either way, the one after the hanging job waits in the hanging job's task.
    assert any(re.fullmatch(rf"casparian-{ids[0]}-1-x[234]", k)
               for k in task_keys(dask_cluster, since)), task_keys(dask_cluster, since)
    return cluster, ids, int(job["host_pid"])


def test_an_attempt_cancelled_before_its_turn_in_a_chunk_is_skipped_and_aborted_at_once(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    cluster, ids, host = _hang_then_three(on_dask, settings, fixture_plugin, tmp_path,
                                          dask_cluster)
    hang_id, skipped, second, last = ids
    with control(cluster) as ctl:
        t0 = time.monotonic()
        ctl.cancel_job(skipped)
        row = wait_job(settings, skipped, lambda j: j["status"] == "ABORTED", timeout=5,
                       message="ABORTED")
        took = time.monotonic() - t0
        assert took <= 1.0, f"cancel took {took:.2f}s"
        assert not row["host_pid"]  # it never ran
        assert running(host)  # the job ahead of it in the chunk runs on
        ctl.cancel_job(hang_id)  # then the rest of the chunk runs, without the skipped one
        rows = wait_final(settings, ids, 30)
    assert {i: r["status"] for i, r in rows.items()} == {
        hang_id: "ABORTED", skipped: "ABORTED", second: "COMPLETED", last: "COMPLETED"}
    owners = sorted(pq.read_table(p).column("_cf_job_id")[0].as_py()
                    for p in output_files(tmp_path / "out"))
    assert owners == sorted([str(second), str(last)])


def test_cancel_of_the_running_attempt_of_a_chunk_kills_its_host_and_the_chunk_runs_on(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    cluster, ids, host = _hang_then_three(on_dask, settings, fixture_plugin, tmp_path,
                                          dask_cluster)
    with control(cluster) as ctl:
        t0 = time.monotonic()
        ctl.cancel_job(ids[0])
        wait_job(settings, ids[0], lambda j: j["status"] == "ABORTED", timeout=5,
                 message="ABORTED")
        took = time.monotonic() - t0
        assert took <= 1.0, f"cancel took {took:.2f}s"
        assert not running(host)
        rows = wait_final(settings, ids[1:], 30, status="COMPLETED")
    assert all(r["host_pid"] and r["attempt"] == 1 for r in rows.values())
    owners = sorted(pq.read_table(p).column("_cf_job_id")[0].as_py()
                    for p in output_files(tmp_path / "out"))
    assert owners == sorted(str(i) for i in ids[1:])  # nothing of the aborted job


def test_150_files_in_chunks_give_the_local_executors_rows(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, reference: Reference, dask_cluster: DaskCluster) -> None:
    sink = tmp_path / "out"
    since = time.time()
    cluster = on_dask()
    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, reference.files, sink=f"parquet://{sink}")["job_ids"]
        wait_final(settings, ids, 90, status="COMPLETED")
    sizes = [int(m.group(1)) for k in task_keys(dask_cluster, since)
             if (m := re.search(r"-x(\d+)$", k))]
    assert sizes and max(sizes) > 1  # they did run in chunks
    assert rows_of(sink) == reference.rows  # the local executor's rows, lineage included
    wait_until(lambda: len(output_files(sink)) == 150, 5, message="one output file per job")


def test_jobs_that_take_long_go_one_per_task(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    """0.3 s a job is more than a chunk's share of work (CHUNK_WORK): a chunk of them would
    hold jobs on one thread that another could run."""
    files = make_inputs(tmp_path / "in", 6, mode="slow")
    for f in files:
        f.write_text(f"mode=slow sleep=0.3\n{f.name}\n")
    since = time.time()
    cluster = on_dask()
    with control(cluster) as ctl:
        (first,) = ctl.submit(fixture_plugin, str(files[0]),
                              sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, [first], 30, status="COMPLETED")
        ids = ctl.submit(fixture_plugin, [str(f) for f in files[1:]],
                         sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, ids, 30, status="COMPLETED")
    keys = task_keys(dask_cluster, since)
    for job_id in ids:
        assert f"casparian-{job_id}-1" in keys, keys  # one task each, none a chunk
        assert not any(k.startswith(f"casparian-{job_id}-1-x") for k in keys), keys


def test_a_dask_worker_killed_mid_chunk_every_job_promoted_exactly_once(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """``dask scheduler`` + two ``dask worker --nthreads 2``; jobs of 0.05 s go a few to a
    task (CHUNK_WORK 0.2 s); one worker is SIGKILLed while it runs chunks: every attempt of
    its chunks, run or not, is re-queued and every job promoted once."""
    dask = base._cli_cluster(tmp_path / "dask-kill")
    cluster: LocalCluster | None = None
    try:
        files = make_inputs(tmp_path / "in", 88, mode="slow")
        for f in files:
            f.write_text(f"mode=slow sleep=0.05\n{f.name}\n")
        sink = tmp_path / "out"
        cluster = cluster_factory(workers=0, slots=None, executor="dask",
                                  scheduler=dask.address, **FAST)
        pids = dask.worker_pids()
        with control(cluster) as ctl:
            # First the bridge learns what the plugin's jobs take (on warm hosts).
            seen = ctl.submit(fixture_plugin, [str(f) for f in files[:8]],
                              sink=f"parquet://{sink}")["job_ids"]
            wait_final(settings, seen, 30, status="COMPLETED")
            ids = ctl.submit(fixture_plugin, [str(f) for f in files[8:]],
                             sink=f"parquet://{sink}")["job_ids"]
            victim_addr, victim = sorted(pids.items())[0]
            victim_id = "dask-" + victim_addr.split("://")[1].replace(":", "-")

            def victim_busy() -> bool:
                return sum(1 for j in jobs_by_id(settings, ids).values()
                           if j["status"] == "RUNNING" and j["worker_id"] == victim_id
                           and j["host_pid"]) >= 2

            wait_until(victim_busy, 30, message="jobs running on the victim worker")
            assert any(re.search(r"-x\d+$", k) for k in task_keys(dask.address, 0.0))  # chunks
            os.kill(victim, signal.SIGKILL)
            rows = wait_final(settings, ids, 60, status="COMPLETED")
        assert [r for r in rows.values() if r["attempt"] > 1], "no job was re-run"
        owners = [pq.read_table(p).column("_cf_job_id").to_pylist()[0]
                  for p in output_files(sink)]
        assert sorted(owners) == sorted(str(i) for i in [*seen, *ids])  # each job once
    finally:
        if cluster is not None:  # the bridge leaves before its cluster does
            cluster.stop()
        base._stop(dask.procs)


def _unsubscribe_all(topic: str, dask_scheduler: Any) -> int:
    """On the scheduler: drop every client's subscription to ``topic`` (the bridge's), so
    the tasks' receipt events reach nobody."""
    topics = dask_scheduler._broker._topics
    subscribers = list(topics[topic].subscribers) if topic in topics else []
    for client in subscribers:
        dask_scheduler.unsubscribe_topic(topic, client)
    return len(subscribers)


def test_receipts_that_are_not_pushed_come_from_the_chunks_results(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    """The fallback: with the bridge's subscription gone, no receipt arrives as an event;
    the bridge fetches each chunk's list of receipts (``gather``) once the task is done."""
    import hashlib

    files = make_inputs(tmp_path / "in", 12)
    since = time.time()
    cluster = on_dask()
    topic = "casparian-" + hashlib.sha256(str(cluster.settings.home).encode()).hexdigest()[:10]
    with control(cluster) as ctl:
        seen = ctl.submit(fixture_plugin, [str(f) for f in files[:2]],
                          sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, seen, 30, status="COMPLETED")
        with distributed.Client(dask_cluster.address, timeout="10s") as client:
            assert client.run_on_scheduler(_unsubscribe_all, topic) == 1
        ids = ctl.submit(fixture_plugin, [str(f) for f in files[2:]],
                         sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        rows = wait_final(settings, ids, 30, status="COMPLETED")
    assert all(r["host_pid"] for r in rows.values())
    assert any(re.search(r"-x\d+$", k) for k in task_keys(dask_cluster, since))
    owners = sorted(pq.read_table(p).column("_cf_job_id")[0].as_py()
                    for p in output_files(tmp_path / "out"))
    assert owners == sorted(str(i) for i in [*seen, *ids])

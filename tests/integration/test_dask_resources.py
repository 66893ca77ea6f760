"""Issue 17, item 2: resource hints on the dask executor, on a real ``dask scheduler`` with
one ``dask worker --resources "GPU=1"`` and one plain ``dask worker`` on 127.0.0.1.

A plugin's ``resources = {"GPU": 1}`` (or ``ctl.submit(..., resources=...)``) reaches
``Client.submit(resources=)``: such jobs run only where the resource is, whichever Dask
worker the sentinel dispatched them through. A job needing a resource no worker offers
waits (dispatched, never started; the bridge's log says why), can be cancelled at once, and runs as soon
as a worker with the resource joins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import JobStatus
from tests.conftest import make_inputs, wait_until
from tests.integration.test_dask_executor import DASK, DaskCluster, _stop, hosts_under
from tests.integration.test_sentinel import FAST, control, jobs_by_id, wait_final, wait_job

distributed = pytest.importorskip("distributed")

GPU_PLUGIN = '''import pyarrow as pa
name = "gpu_lines"
version = "1.0.0"
resources = {"GPU": 1}
def parse(path, ctx=None):
    text = open(path).read()
    return pa.table({"n": [len(text)]})
'''
PLAIN_PLUGIN = GPU_PLUGIN.replace('resources = {"GPU": 1}\n', "").replace("gpu_lines", "lines")


def _worker(sched_file: Path, log: Path, *resources: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    extra = ["--resources", " ".join(resources)] if resources else []
    with open(log, "ab") as out:
        return subprocess.Popen(
            [DASK, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
             "--host", "127.0.0.1", "--no-nanny", "--no-dashboard", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.fixture
def gpu_cluster(tmp_path: Path) -> Iterator[tuple[DaskCluster, Path]]:
    """``dask scheduler``, one worker with ``GPU=1`` (the first process after the
    scheduler) and one without; yields the cluster and its scheduler file."""
    sched_file, log = tmp_path / "scheduler.json", tmp_path / "dask.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(log, "ab") as out:
        procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(sched_file)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)]
    cluster = DaskCluster("cli", "", procs)
    try:
        wait_until(sched_file.exists, 30, message="the dask scheduler file")
        procs += [_worker(sched_file, log, "GPU=1"), _worker(sched_file, log)]
        with distributed.Client(scheduler_file=str(sched_file), timeout="20s") as client:
            client.wait_for_workers(2, timeout=30)
            cluster.address = client.scheduler.address
        yield cluster, sched_file
    finally:
        _stop(procs)


def _start(cluster_factory: Callable[..., LocalCluster], address: str) -> LocalCluster:
    return cluster_factory(workers=0, slots=None, executor="dask", scheduler=address, **FAST)


def test_jobs_needing_a_gpu_run_only_on_the_worker_that_has_one(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, tmp_path: Path,
        gpu_cluster: tuple[DaskCluster, Path]) -> None:
    dask, _ = gpu_cluster
    gpu_pid, plain_pid = (p.pid for p in dask.procs[1:3])
    gpu_plugin, plain_plugin = tmp_path / "gpu_lines.py", tmp_path / "lines.py"
    gpu_plugin.write_text(GPU_PLUGIN)
    plain_plugin.write_text(PLAIN_PLUGIN)
    gpu_files = [str(f) for f in make_inputs(tmp_path / "gpu", 12)]
    plain_files = [str(f) for f in make_inputs(tmp_path / "plain", 12)]
    cluster = _start(cluster_factory, dask.address)
    with control(cluster) as ctl:
        wait_until(lambda: len(ctl.list_workers()) == 2, 20, message="both Dask workers")
        gpu_ids = ctl.submit(gpu_plugin, gpu_files,
                             sink=f"parquet://{tmp_path / 'out-gpu'}")["job_ids"]
        plain_ids = ctl.submit(plain_plugin, plain_files,
                               sink=f"parquet://{tmp_path / 'out-plain'}")["job_ids"]
        rows = wait_final(settings, [*gpu_ids, *plain_ids], 60, status=JobStatus.COMPLETED)
    # The warm hosts stay up with the worker plugin: each job's host is on one worker.
    on_gpu, on_plain = set(hosts_under([gpu_pid])), set(hosts_under([plain_pid]))
    assert {rows[i]["host_pid"] for i in gpu_ids} <= on_gpu
    plain_hosts = {rows[i]["host_pid"] for i in plain_ids}
    assert plain_hosts <= on_gpu | on_plain and plain_hosts & on_plain  # both serve these
    # The sentinel dispatched through both seats, GPU jobs included (the bridge places them).
    assert len({rows[i]["worker_id"] for i in gpu_ids}) == 2


def test_a_job_needing_a_resource_no_worker_has_waits_visibly_until_one_joins(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, tmp_path: Path,
        gpu_cluster: tuple[DaskCluster, Path]) -> None:
    dask, sched_file = gpu_cluster
    plugin = tmp_path / "lines.py"
    plugin.write_text(PLAIN_PLUGIN)
    first, second = (str(f) for f in make_inputs(tmp_path / "in", 2))
    cluster = _start(cluster_factory, dask.address)
    bridge_log = settings.logs_dir / "dask-bridge.out"
    with control(cluster) as ctl:
        wait_until(lambda: len(ctl.list_workers()) == 2, 20, message="both Dask workers")
        (waiting,) = ctl.submit(plugin, [first], sink=f"parquet://{tmp_path / 'out'}",
                                resources={"TPU": 1})["job_ids"]
        (cancelled,) = ctl.submit(plugin, [second], sink=f"parquet://{tmp_path / 'out'}",
                                  resources={"TPU": 1})["job_ids"]
        # Held by the bridge, said in its log, not lost: dispatched (RUNNING in the state
        # DB, without a host), never run.
        wait_until(lambda: "which no Dask worker of the cluster offers" in
                   bridge_log.read_text(), 20, message="the bridge to say why the job waits")
        assert "TPU=1" in bridge_log.read_text()
        rows = jobs_by_id(settings, [waiting, cancelled])
        assert all(r["status"] == JobStatus.RUNNING and not r["host_pid"]
                   for r in rows.values())
        ctl.cancel_job(cancelled)
        wait_job(settings, cancelled, lambda j: j["status"] == JobStatus.ABORTED, timeout=5,
                 message="the waiting job to be aborted")
        # A worker with the resource joins: the waiting job runs there.
        dask.procs.append(_worker(sched_file, sched_file.with_name("dask.log"), "TPU=1"))
        tpu_pid = dask.procs[-1].pid
        rows = wait_final(settings, [waiting], 60, status=JobStatus.COMPLETED)
        assert rows[waiting]["host_pid"] in hosts_under([tpu_pid])

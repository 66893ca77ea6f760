"""Issue 17: the dask executor, on real Dask clusters.

Every test runs twice: on a ``distributed.LocalCluster(processes=True, n_workers=2,
threads_per_worker=2)`` and on a real ``dask scheduler`` with two ``dask worker`` processes
on 127.0.0.1, both started here (one per module, shared by its tests; each test has its own
casparian home and therefore its own worker plugin). The casparian side is real too: a
sentinel and its bridge process, started through the launcher as ``cf.start`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from casparian_nb import lineage
from casparian_nb.client import ControlClient
from casparian_nb.config import Settings, load_settings
from casparian_nb.errors import ConfigError
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import EventName
from tests.conftest import make_inputs, running, wait_until
from tests.integration.test_sentinel import (
    FAST,
    control,
    jobs_by_id,
    output_files,
    wait_final,
    wait_job,
)

distributed = pytest.importorskip("distributed")

DASK = str(Path(sys.executable).with_name("dask"))
HOST_MODULE = "casparian_nb.worker.host"


@dataclass
class DaskCluster:
    """A running Dask cluster: its scheduler address and the pids of its workers."""

    kind: str
    address: str
    procs: list[subprocess.Popen[bytes]]

    def worker_pids(self) -> dict[str, int]:
        with distributed.Client(self.address, timeout="10s") as client:
            pids: dict[str, int] = client.run(os.getpid)
        return pids


def _cli_cluster(tmp: Path, workers: int = 2) -> DaskCluster:
    """``dask scheduler`` + ``workers`` x ``dask worker --nthreads 2`` on 127.0.0.1."""
    tmp.mkdir(parents=True, exist_ok=True)
    sched_file = tmp / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    log = open(tmp / "dask.log", "ab")
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)]
    wait_until(sched_file.exists, 30, message="the dask scheduler file")
    for _ in range(workers):
        procs.append(subprocess.Popen(
            [DASK, "worker", "--scheduler-file", str(sched_file), "--nthreads", "2",
             "--host", "127.0.0.1", "--no-nanny", "--no-dashboard"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    log.close()
    with distributed.Client(scheduler_file=str(sched_file), timeout="20s") as client:
        client.wait_for_workers(workers, timeout=30)
        address = client.scheduler.address
    return DaskCluster("cli", address, procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Workers first (they close faster with their scheduler still there), then the
    scheduler; SIGKILL after a bounded wait."""
    for group in (procs[1:], procs[:1]):
        for p in group:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in group:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture(scope="module", params=["LocalCluster", "dask-cli"])
def dask_cluster(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    if request.param == "LocalCluster":
        with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=2,
                                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as lc:
            yield DaskCluster("LocalCluster", lc.scheduler_address, [])
        return
    cluster = _cli_cluster(tmp_path_factory.mktemp("dask"))
    try:
        yield cluster
    finally:
        _stop(cluster.procs)


def hosts_under(pids: list[int]) -> list[int]:
    """Plugin hosts (``casparian_nb.worker.host``) running under the given processes."""
    found = []
    for pid in pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                if HOST_MODULE in " ".join(child.cmdline()) and running(child.pid):
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
    return found


@pytest.fixture
def on_dask(cluster_factory: Callable[..., LocalCluster],
            dask_cluster: DaskCluster) -> Iterator[Callable[..., LocalCluster]]:
    """Start a sentinel whose jobs run on ``dask_cluster``; at the end, no plugin host of
    ours is left on the Dask workers (the bridge's stop tears the worker plugin down)."""
    pids = list(dask_cluster.worker_pids().values())

    made: list[LocalCluster] = []

    def make(**overrides: Any) -> LocalCluster:
        made.append(cluster_factory(workers=0, slots=None, executor="dask",
                                    scheduler=dask_cluster.address, **{**FAST, **overrides}))
        return made[-1]

    yield make
    for c in made:
        c.stop()
    wait_until(lambda: not hosts_under(pids), 10, message="plugin hosts on Dask workers to go")


def ignores_sigterm(pid: int) -> bool:
    """Whether ``pid`` has SIGTERM ignored (``SigIgn`` in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def rows_of(sink: Path) -> list[dict[str, Any]]:
    """Every promoted row of ``sink``, without the per-run lineage, in a stable order."""
    tables = [pq.read_table(p) for p in output_files(sink)]
    table = pa.concat_tables(tables).drop_columns(["_cf_job_id", "_cf_processed_at"])
    return sorted(table.to_pylist(), key=lambda r: (r["_cf_source_hash"], r["id"]))


@dataclass
class Reference:
    """150 input files and the rows the local executor makes of them."""

    files: list[str]
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Run once per module: the local executor (2 workers) over the 150 inputs."""
    from tests.conftest import FIXTURE_PLUGIN

    tmp = tmp_path_factory.mktemp("reference")
    files = [str(f) for f in make_inputs(tmp / "in", 150)]
    home = tmp / "home"
    home.mkdir(mode=0o700)
    settings = load_settings(home).with_overrides(**FAST)
    local = LocalCluster(settings, workers=2, slots=1)
    local.start()
    try:
        with control(local) as ctl:
            ids = ctl.submit(FIXTURE_PLUGIN, files, sink=f"parquet://{tmp / 'out'}")["job_ids"]
            wait_final(settings, ids, 90, status="COMPLETED")
    finally:
        local.stop()
    return Reference(files, rows_of(tmp / "out"))


def test_150_files_give_the_local_executors_rows_with_lineage(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, reference: Reference) -> None:
    sink = tmp_path / "out-dask"
    cluster = on_dask()
    with control(cluster) as ctl:
        workers = {w["worker_id"] for w in ctl.list_workers()}
        assert len(workers) == 2 and all(w.startswith("dask-127.0.0.1-") for w in workers)
        ids = ctl.submit(fixture_plugin, reference.files, sink=f"parquet://{sink}")["job_ids"]
        assert len(ids) == 150
        rows = wait_final(settings, ids, 90, status="COMPLETED")
    assert {r["worker_id"] for r in rows.values()} == workers  # both Dask workers ran jobs
    assert all(r["host_pid"] and r["attempt"] == 1 for r in rows.values())

    dask_rows = rows_of(sink)
    assert len(dask_rows) == 150 * 10
    assert dask_rows == reference.rows  # the local executor's rows, lineage included
    full = pa.concat_tables([pq.read_table(p) for p in output_files(sink)])
    for col in lineage.LINEAGE_COLUMNS:  # lineage on every row
        assert full.column(col).null_count == 0
    assert sorted(set(full.column("_cf_job_id").to_pylist())) == sorted(str(i) for i in ids)


def test_cancel_kills_a_plugin_that_ignores_sigterm_within_a_second(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    (hang,) = make_inputs(tmp_path / "in", 1, mode="hang")
    cluster = on_dask()
    with control(cluster) as ctl:
        (job_id,) = ctl.submit(fixture_plugin, [str(hang)],
                               sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        job = wait_job(settings, job_id, lambda j: j["status"] == "RUNNING" and j["host_pid"],
                       message="the job to run on a Dask worker")
        host = int(job["host_pid"])
        assert running(host) and host in hosts_under(list(dask_cluster.worker_pids().values()))
        wait_until(lambda: ignores_sigterm(host), 10, message="the plugin to ignore SIGTERM")
        t0 = time.monotonic()
        ctl.cancel_job(job_id)
        wait_job(settings, job_id, lambda j: j["status"] == "ABORTED", timeout=5,
                 message="ABORTED")
        took = time.monotonic() - t0
        assert not running(host)
        assert took <= 1.0, f"cancel took {took:.2f}s"
        # The Dask worker serves on: the next job completes.
        (ok,) = make_inputs(tmp_path / "in2", 1)
        (next_id,) = ctl.submit(fixture_plugin, [str(ok)],
                                sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, [next_id], 30, status="COMPLETED")
    assert output_files(tmp_path / "out") and all(
        pq.read_table(p).column("_cf_job_id")[0].as_py() == str(next_id)
        for p in output_files(tmp_path / "out"))  # nothing of the aborted job promoted


def test_a_plugin_that_crashes_its_host_fails_the_job_and_the_dask_worker_lives(
        on_dask: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path, dask_cluster: DaskCluster) -> None:
    before = dask_cluster.worker_pids()
    (crash,) = make_inputs(tmp_path / "in", 1, mode="crash")
    normal = make_inputs(tmp_path / "ok", 4)
    cluster = on_dask()
    with control(cluster) as ctl:
        (job_id,) = ctl.submit(fixture_plugin, [str(crash)],
                               sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        rows = wait_final(settings, [job_id], 30)
        assert rows[job_id]["status"] == "FAILED", rows[job_id]
        assert "PluginHost" in (rows[job_id]["error_message"] or "")
        ids = ctl.submit(fixture_plugin, [str(f) for f in normal],
                         sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, ids, 30, status="COMPLETED")
    assert dask_cluster.worker_pids() == before  # same workers, same processes
    assert all(running(pid) for pid in before.values())


def test_a_dask_worker_killed_mid_job_every_job_promoted_exactly_once(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    dask = _cli_cluster(tmp_path / "dask-kill")
    cluster: LocalCluster | None = None
    try:
        files = make_inputs(tmp_path / "in", 24, mode="slow")
        for f in files:  # 0.3 s each: a window to kill a worker in
            f.write_text(f"mode=slow sleep=0.3\n{f.name}\n")
        sink = tmp_path / "out"
        cluster = cluster_factory(workers=0, slots=None, executor="dask",
                                  scheduler=dask.address, **FAST)
        pids = dask.worker_pids()
        with control(cluster) as ctl:
            ids = ctl.submit(fixture_plugin, [str(f) for f in files],
                             sink=f"parquet://{sink}")["job_ids"]
            victim_addr, victim = sorted(pids.items())[0]
            victim_id = "dask-" + victim_addr.split("://")[1].replace(":", "-")

            def victim_busy() -> bool:
                return sum(1 for j in jobs_by_id(settings, ids).values()
                           if j["status"] == "RUNNING" and j["worker_id"] == victim_id
                           and j["host_pid"]) >= 2

            wait_until(victim_busy, 30, message="jobs running on the victim worker")
            os.kill(victim, signal.SIGKILL)
            rows = wait_final(settings, ids, 60, status="COMPLETED")
            assert {w["worker_id"] for w in ctl.list_workers()} == {
                "dask-" + a.split("://")[1].replace(":", "-") for a in pids if a != victim_addr}
        rerun = [r for r in rows.values() if r["attempt"] > 1]
        assert rerun, "some job was re-run after its worker was lost"
        assert all(r["worker_id"] != victim_id for r in rerun)
        # exactly one output file per job, each job's rows once
        owners = [pq.read_table(p).column("_cf_job_id").to_pylist()[0]
                  for p in output_files(sink)]
        assert sorted(owners) == sorted(str(i) for i in ids)
        # the tape shows the lost worker and the re-queue
        tape = "".join(p.read_text() for p in settings.tapes_dir.glob("sentinel-*.tape"))
        assert f'"{EventName.WORKER_LOST}"' in tape and victim_id in tape
    finally:
        if cluster is not None:  # the bridge leaves before its cluster does
            cluster.stop()
        _stop(dask.procs)


def test_start_refuses_a_dask_executor_without_a_scheduler(home: Path) -> None:
    with pytest.raises(ConfigError, match="needs a scheduler"):
        LocalCluster(load_settings(home, executor="dask")).start()
    with pytest.raises(ConfigError, match="not one of"):
        load_settings(home, executor="ray")


@pytest.mark.parametrize("dask_cluster", ["LocalCluster"], indirect=True)  # has a dashboard
def test_cf_start_with_a_client_shows_the_dask_dashboard(
        home: Path, dask_cluster: DaskCluster, fixture_plugin: Path, tmp_path: Path) -> None:
    import casparian_nb as cf

    with distributed.Client(dask_cluster.address, timeout="10s") as client:
        ctl = cf.start(executor=client, home=home, **FAST)
        try:
            assert ctl.dashboard_link == client.dashboard_link
            assert f"dask dashboard {client.dashboard_link}" in repr(ctl)
            assert client.dashboard_link in ctl._repr_html_()
            (f,) = make_inputs(tmp_path / "in", 1)
            ids = ctl.submit(fixture_plugin, str(f), sink=f"parquet://{tmp_path / 'out'}")
            ctl.wait(ids, timeout=30)
            assert str(ctl.jobs()["worker_id"].iloc[0]).startswith("dask-127.0.0.1-")
        finally:
            ctl.stop()
    assert ctl.dashboard_link is None  # the bridge is gone with its file


@pytest.mark.parametrize("dask_cluster", ["dask-cli"], indirect=True)
def test_casparian_start_executor_dask_serves_until_sigterm(
        home: Path, dask_cluster: DaskCluster) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "casparian_nb", "--home", str(home), "start",
                             "--executor", "dask", "--scheduler", dask_cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert "serving" in first and f"the Dask cluster at {dask_cluster.address}" in first
        with ControlClient.from_home(home, timeout=5.0) as ctl:
            assert len(ctl.list_workers()) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_start_without_distributed_says_how_to_install_it_in_one_line(home: Path) -> None:
    code = ("import sys; sys.modules['distributed'] = None\n"  # as if the extra were missing
            "from casparian_nb.cli.main import main\n"
            f"sys.argv = ['casparian', '--home', {str(home)!r}, 'start', '--executor', 'dask',"
            " '--scheduler', 'tcp://127.0.0.1:9']\n"
            "sys.exit(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert lines == ["casparian: error: the dask executor needs dask[distributed]: "
                     "pip install 'casparian_nb[dask]'"], lines


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (a mount namespace)")
def test_start_refuses_dask_workers_that_do_not_share_the_staging_directory(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    """A worker in a mount namespace of its own, with a tmpfs over the home's staging
    directory: what it stages there, the sentinel would never see."""
    from casparian_nb.errors import CasparianError

    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(tmp_path / "dask.log", "ab") as log:
        procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(sched_file)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)]
        try:
            wait_until(sched_file.exists, 30, message="the dask scheduler file")
            staging = settings.staging_dir
            procs.append(subprocess.Popen(
                ["unshare", "-m", "sh", "-c",
                 f"mount -t tmpfs none '{staging}' && exec '{DASK}' worker --scheduler-file "
                 f"'{sched_file}' --nthreads 1 --host 127.0.0.1 --no-nanny --no-dashboard"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
            with distributed.Client(scheduler_file=str(sched_file), timeout="20s") as client:
                client.wait_for_workers(1, timeout=30)
                address = client.scheduler.address
            with pytest.raises(CasparianError) as err:
                cluster_factory(workers=0, slots=None, executor="dask", scheduler=address,
                                **FAST)
            message = str(err.value)
            assert "\n" not in message
            assert f"the staging directory {staging} is not shared with Dask worker" in message
            assert "the probe file it wrote is not visible here" in message
        finally:
            _stop(procs)

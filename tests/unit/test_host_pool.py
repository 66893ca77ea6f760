"""Plugin hosts and the host pool with real child processes (worker/host.py, worker/pool.py).

Every test runs the fixture plugin in real host processes; modes are chosen per input file
(first line ``mode=...``). The ``pool`` fixture closes every pool it made and fails the test
if any host process is still alive afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from casparian_nb import lineage, plugins, sinks
from casparian_nb.protocol import AbortCause, ErrorKind, HostJob, JobSpec, Receipt
from casparian_nb.worker.pool import HostPool
from tests.conftest import assert_no_leaks, wait_until

HOST_MODULE = "casparian_nb.worker.host"


_SHARED: set[int] = set()  # hosts of the module-scoped pool, alive across tests


def host_children() -> list[psutil.Process]:
    """Live plugin hosts started by this test process (other than the shared pool's)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in _SHARED:
            continue
        try:
            if HOST_MODULE in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Jobs:
    """Builds job specs the way the runner and the worker do."""

    def __init__(self, root: Path, plugin: Path) -> None:
        self.root, self.plugin = root, plugin
        self.staging = root / "staging"
        self.sink = f"parquet://{root / 'out'}"
        self.n = 0

    def spec(self, first_line: str | None = None, **extra: Any) -> HostJob:
        self.n += 1
        job_id = f"job-{self.n}"
        src = self.root / "inputs" / f"{job_id}.txt"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text((first_line + "\n" if first_line else "") + f"input {self.n}\n")
        job = JobSpec(job_id=job_id, plugin_path=str(self.plugin), input_file=str(src),
                      plugin_name="fixture", sink=self.sink, **extra)
        return HostJob(job=job, attempt=1, staging_root=str(self.staging))

    def staging_dir(self, job: HostJob) -> Path:
        return self.staging / sinks.job_dirname(job.job.job_id)


@pytest.fixture
def jobs(tmp_path: Path, fixture_plugin: Path) -> Jobs:
    return Jobs(tmp_path, fixture_plugin)


@pytest.fixture
def pool(tmp_path: Path, executor: ThreadPoolExecutor) -> Iterator[Callable[..., HostPool]]:
    # Depends on ``executor`` so it is torn down first: closing the pools ends any job still
    # running in an executor thread, which the executor's shutdown then waits for.
    made: list[HostPool] = []

    def make(size: int = 1, **kw: Any) -> HostPool:
        p = HostPool(size, log_dir=tmp_path / "logs", **kw)
        made.append(p)
        p.wait_ready()
        return p

    yield make
    for p in made:
        p.close()
    wait_until(lambda: not host_children(), 10, message="every plugin host to exit")


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostPool]:
    """One warm host for the tests that never kill it (saves a host start-up per test)."""
    p = HostPool(1, log_dir=tmp_path_factory.mktemp("shared") / "logs")
    p.wait_ready()
    _SHARED.update(p.pids)
    yield p
    pids = p.pids
    assert set(pids) <= _SHARED, "the shared pool's host must never be replaced"
    p.close()
    assert_no_leaks(pids)
    _SHARED.clear()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as ex:
        yield ex


def start(executor: ThreadPoolExecutor, p: HostPool, job: HostJob,
          **kw: Any) -> tuple[Future[Receipt], list[int]]:
    """Run ``job`` in the background; the list receives the host pid once it has the job."""
    started: list[int] = []
    return executor.submit(p.run, job, on_start=started.append, **kw), started


# -- the happy path ------------------------------------------------------------------------

def test_job_runs_on_a_warm_host_and_returns_staged_outputs(pool: Any, jobs: Jobs) -> None:
    p = pool(1)
    [pid] = p.pids
    job = jobs.spec(processed_at="2026-01-02T03:04:05+00:00", parser_version="9.9")
    res = p.run(job)
    assert res.status == "SUCCESS", res
    assert res.host_pid == pid
    staged = sinks.StagedJob.from_dict(res.staged or {})
    assert staged.job_id == job.job.job_id
    [out] = staged.outputs
    assert (out.output, out.rows) == ("fixture_output", 10)
    assert res.rows == {"fixture_output": 10}
    table = pq.read_table(out.path)
    assert table.column_names == ["id", "value", *lineage.LINEAGE_COLUMNS]
    assert table.column("id").to_pylist() == list(range(10))
    assert set(table.column("_cf_job_id").to_pylist()) == {job.job.job_id}
    assert set(table.column("_cf_parser_version").to_pylist()) == {"9.9"}
    assert set(table.column("_cf_source_hash").to_pylist()) == {lineage.hash_file(job.job.input_file)}
    [ts] = set(table.column("_cf_processed_at").to_pylist())
    assert ts.isoformat() == "2026-01-02T03:04:05+00:00"
    # Staged only: nothing reached the sink directory.
    assert not (jobs.root / "out").exists()
    # The host stays warm: the next job runs in the same process.
    assert p.run(jobs.spec()).host_pid == pid
    assert p.pids == [pid]


# -- crashes, cancels, timeouts -----------------------------------------------------------

def test_crashing_plugin_fails_the_job_and_the_host_is_replaced(pool: Any, jobs: Jobs) -> None:
    p = pool(1)
    [old] = p.pids
    job = jobs.spec("mode=crash")
    res = p.run(job)
    assert res.status == "FAILED"
    err = res.error
    assert err is not None and err.ename == "PluginHostCrashed"
    assert err.kind is ErrorKind.PERMANENT and err.signal is None  # an exit status: permanent
    assert "\n" not in err.evalue and "exited with code 3" in err.evalue, err
    assert gone(old)
    assert not jobs.staging_dir(job).exists()
    [new] = p.pids
    assert new != old
    after = p.run(jobs.spec())
    assert after.status == "SUCCESS" and after.host_pid == new


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_host_killed_from_outside_is_a_host_killed_failure_with_its_signal(
        pool: Any, jobs: Jobs, executor: ThreadPoolExecutor, sig: signal.Signals) -> None:
    # The OOM killer or an operator's kill -9: not the plugin's fault, so not PluginHostCrashed.
    p = pool(1)
    job = jobs.spec("mode=slow sleep=30")
    fut, started = start(executor, p, job)
    wait_until(lambda: started, 10, message="the job to reach its host")
    [pid] = started
    os.kill(pid, sig)
    res = fut.result(timeout=10)
    assert res.status == "FAILED" and res.host_pid == pid
    err = res.error
    assert err is not None and err.kind is ErrorKind.HOST_KILLED and err.signal == sig
    assert err.ename == "PluginHostKilled"
    assert err.evalue == f"plugin host pid {pid} was killed by {sig.name} while running the job"
    assert not jobs.staging_dir(job).exists()
    [new] = p.pids
    assert new != pid and p.run(jobs.spec()).status == "SUCCESS"


def test_cancel_kills_a_host_that_ignores_sigterm(pool: Any, jobs: Jobs,
                                                 executor: ThreadPoolExecutor) -> None:
    p = pool(1, cancel_grace=0.2)
    job = jobs.spec("mode=hang")
    fut, started = start(executor, p, job)
    wait_until(lambda: started, 10, message="the job to reach its host")
    [pid] = started
    # The plugin logs its mode (to the host's log file), then ignores SIGTERM and spins.
    wait_until(lambda: any("fixture_plugin mode=hang" in f.read_text()
                           for f in (jobs.root / "logs").glob("*.log")), 10,
               message="the plugin's log line")
    spun = psutil.Process(pid).cpu_times().user
    wait_until(lambda: psutil.Process(pid).cpu_times().user > spun + 0.1, 10,
               message="the plugin to spin")
    t0 = time.monotonic()
    assert p.cancel(job.job.job_id, "cancelled by test")
    # cancel() returns only once the host is dead (SIGTERM ignored -> SIGKILL after the grace).
    assert gone(pid)
    res = fut.result(timeout=10)
    assert time.monotonic() - t0 < 5
    assert res.status == "ABORTED"
    assert res.reason == "cancelled by test" and res.cause == AbortCause.CANCELLED
    assert not jobs.staging_dir(job).exists(), "a cancelled job must leave nothing staged"
    assert not p.cancel(job.job.job_id)  # no longer running
    # The pool keeps serving on a fresh host.
    after = p.run(jobs.spec())
    assert after.status == "SUCCESS" and after.host_pid != pid


def test_cancel_in_the_middle_of_a_streamed_write_drops_the_staged_file(
        pool: Any, jobs: Jobs, executor: ThreadPoolExecutor) -> None:
    p = pool(1)
    job = jobs.spec("mode=big rows=5000000 batch=50000")
    staged_file = jobs.staging_dir(job) / "fixture_output.parquet"
    fut, started = start(executor, p, job)
    wait_until(lambda: staged_file.exists() and staged_file.stat().st_size > 0, 30,
               message="the host to be writing")
    assert p.cancel(job.job.job_id)
    res = fut.result(timeout=10)
    assert res.status == "ABORTED"
    assert gone(started[0])
    assert not jobs.staging_dir(job).exists()
    assert not (jobs.root / "out").exists()


def test_per_job_timeout_aborts_and_replaces_the_host(pool: Any, jobs: Jobs) -> None:
    p = pool(1)
    [old] = p.pids
    t0 = time.monotonic()
    res = p.run(jobs.spec("mode=slow sleep=30"), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert res.status == "ABORTED"
    assert res.cause == AbortCause.TIMEOUT
    assert (res.reason or "").startswith("timeout: job ran longer than 0.5s")
    assert gone(old)
    assert p.run(jobs.spec()).status == "SUCCESS"


def test_cancel_of_a_job_that_is_not_running_is_refused(shared_pool: HostPool) -> None:
    assert shared_pool.cancel("no-such-job") is False
    assert shared_pool.running() == {}


def test_closing_the_pool_aborts_running_jobs(pool: Any, jobs: Jobs,
                                               executor: ThreadPoolExecutor) -> None:
    p = pool(2)
    a, b = jobs.spec("mode=hang"), jobs.spec("mode=slow sleep=30")
    fa, sa = start(executor, p, a)
    fb, sb = start(executor, p, b)
    wait_until(lambda: sa and sb, 10, message="both jobs to start")
    p.close()
    for fut, job in ((fa, a), (fb, b)):
        res = fut.result(timeout=10)
        assert res.status == "ABORTED" and res.reason == "shutdown"
        assert not jobs.staging_dir(job).exists()
    assert_no_leaks([*sa, *sb])


# -- error kinds ---------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "ename", "kind", "text"), [
    ("transient", "TransientError", "transient", "fixture transient failure: boom"),
    ("permanent", "PermanentError", "permanent", "fixture permanent failure: boom"),
    ("error", "RuntimeError", "permanent", "boom"),
    ("bad-return", "PluginReturnError", "permanent", "parse() returned dict"),
    ("collision", "LineageError", "permanent", "'_cf_job_id'"),
])
def test_plugin_errors_come_back_classified(shared_pool: HostPool, jobs: Jobs, mode: str,
                                            ename: str, kind: str, text: str) -> None:
    p = shared_pool
    [pid] = p.pids
    job = jobs.spec(f"mode={mode} msg=boom")
    res = p.run(job)
    assert res.status == "FAILED"
    err = res.error
    assert err is not None
    assert (err.ename, err.kind) == (ename, ErrorKind(kind))
    assert text in err.evalue and "\n" not in err.evalue
    assert err.input_file == job.job.input_file
    assert "Traceback" in err.traceback
    assert not jobs.staging_dir(job).exists()
    assert p.pids == [pid]  # a plugin exception does not cost the host


# -- orphan protection ---------------------------------------------------------------------

PARENT = textwrap.dedent("""
    import json, sys, threading
    from pathlib import Path
    from casparian_nb.protocol import HostJob, JobSpec
    from casparian_nb.worker.pool import HostPool

    pool = HostPool(2, log_dir=Path(sys.argv[1]))
    pool.wait_ready()
    job = HostJob(job=JobSpec(job_id="hang", plugin_path=sys.argv[2], input_file=sys.argv[3],
                              plugin_name="fixture", sink="parquet://" + sys.argv[1] + "/out"),
                  staging_root=sys.argv[1] + "/st")
    started = threading.Event()
    threading.Thread(target=pool.run, args=(job,),
                     kwargs={"on_start": lambda pid: started.set()}, daemon=True).start()
    started.wait(30)
    print(json.dumps({"hosts": pool.pids, "busy": pool.running()}), flush=True)
    sys.stdin.read()
""")


def test_hosts_exit_when_their_parent_is_killed(tmp_path: Path, fixture_plugin: Path) -> None:
    src = tmp_path / "hang.txt"
    src.write_text("mode=hang\n")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), str(fixture_plugin), str(src)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        info = json.loads(parent.stdout.readline())
        hosts = info["hosts"]
        assert len(hosts) == 2 and list(info["busy"]) == ["hang"]
        assert all(psutil.pid_exists(h) for h in hosts)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        # Idle and busy hosts alike notice the parent is gone (the busy one is spinning).
        wait_until(lambda: all(gone(h) for h in hosts), 5, message="orphaned hosts to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


# -- warm-up on the plugin ---------------------------------------------------------------

_WARM_PLUGIN = '''
import os
import pyarrow as pa

with open(os.path.join(os.path.dirname(__file__), f"imported-{os.getpid()}"), "a") as f:
    f.write("x")


def parse(path, ctx=None):
    return pa.table({"pid": [os.getpid()]})
'''


def test_a_pool_warmed_on_its_plugin_loads_it_before_the_first_job(
        pool: Any, jobs: Jobs, tmp_path: Path) -> None:
    plugin = tmp_path / "warm_plugin" / "warmed.py"
    plugin.parent.mkdir()
    plugin.write_text(_WARM_PLUGIN)
    p = pool(1, warm=str(plugin))
    [pid] = p.pids
    marker = plugin.parent / f"imported-{pid}"
    assert marker.read_text() == "x", "the host imports the plugin before it is ready"
    jobs.plugin = plugin
    source_hash = plugins.inspect_plugin(plugin).source_hash
    for _ in range(2):
        res = p.run(jobs.spec(plugin_source_hash=source_hash))
        assert res.status == "SUCCESS", res
        [out] = sinks.StagedJob.from_dict(res.staged or {}).outputs
        assert pq.read_table(out.path).column("pid").to_pylist() == [pid]
    assert marker.read_text() == "x", "jobs reuse the plugin loaded at warm-up"


def test_a_plugin_that_fails_at_warm_up_fails_its_first_job_not_the_host(
        pool: Any, jobs: Jobs, tmp_path: Path) -> None:
    plugin = tmp_path / "warm_plugin" / "broken.py"
    plugin.parent.mkdir()
    plugin.write_text("raise ImportError('no such thing')\n\n\ndef parse(path, ctx=None):\n"
                      "    return None\n")
    p = pool(1, warm=str(plugin))
    [pid] = p.pids
    jobs.plugin = plugin
    res = p.run(jobs.spec())
    assert res.status == "FAILED"
    assert res.error is not None and "no such thing" in res.error.evalue
    assert res.host_pid == pid, "the host survives a plugin that cannot load"

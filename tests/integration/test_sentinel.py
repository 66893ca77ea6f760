"""Sentinel + workers end to end: real processes on loopback, a tmp home, no mocks.

Submit → complete (outputs, lineage, DB rows, materializations), cancel of queued and running
jobs (the plugin host is gone, nothing promoted, the worker keeps serving), capacity
rejection (F9), retries with backoff and the dead letter, per-job timeouts, incremental skip
and re-run on each key change (F4). Crash recovery is in test_sentinel_recovery.py, the CLI
and the control API in test_sentinel_cli.py; the helpers here are shared with both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from casparian_nb import lineage
from casparian_nb.client import ControlClient, EventSubscriber
from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster, settings_env
from casparian_nb.store import StateReader
from tests.conftest import ROOT, make_inputs, wait_until

FINAL = {"COMPLETED", "FAILED", "ABORTED", "SKIPPED"}
OUT_FILE = re.compile(r"^fixture_output_[0-9a-f]{16}\.parquet$")

#: Quick failure detection for tests (heartbeats 5/s, a silent worker is lost after 2 s).
FAST = {"heartbeat_interval": 0.2, "worker_timeout": 2.0, "retry_backoff": 0.05}


# -- helpers shared by the sentinel integration tests --------------------------------------

def control(cluster: LocalCluster, timeout: float = 10.0) -> ControlClient:
    assert cluster.info is not None
    return ControlClient(cluster.info, timeout=timeout)


def reader(settings: Settings) -> StateReader:
    return StateReader.open(settings.state_db)


def jobs_by_id(settings: Settings, ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    with reader(settings) as r:
        rows = r.list_jobs(limit=100_000)
    wanted = None if ids is None else set(ids)
    return {int(j["id"]): j for j in rows if wanted is None or int(j["id"]) in wanted}


def wait_final(settings: Settings, ids: Iterable[int], timeout: float = 30.0,
               status: str | None = None) -> dict[int, dict[str, Any]]:
    """Poll the state DB (read-only) until every job in ``ids`` is final; return the rows."""
    ids = list(ids)

    def done() -> dict[int, dict[str, Any]] | None:
        rows = jobs_by_id(settings, ids)
        if len(rows) == len(ids) and all(r["status"] in FINAL for r in rows.values()):
            return rows
        return None

    rows: dict[int, dict[str, Any]] = wait_until(done, timeout, interval=0.05,
                                                 message=f"jobs {ids[:5]}... to finish")
    if status is not None:
        bad = {i: (r["status"], r["error_message"]) for i, r in rows.items()
               if r["status"] != status}
        assert not bad, f"expected {status}: {bad}"
    return rows


def wait_job(settings: Settings, job_id: int, pred: Callable[[dict[str, Any]], Any],
             timeout: float = 30.0, message: str = "job state") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with reader(settings) as r:
            job = r.get_job(job_id)
        return job if job is not None and pred(job) else None

    found: dict[str, Any] = wait_until(check, timeout, interval=0.02, message=message)
    return found


def subscribed(events: EventSubscriber, timeout: float = 5.0) -> None:
    """Wait until the sentinel has the subscription (a SUB socket sees only what is
    published after that)."""
    assert events.wait_ready(timeout), "the sentinel never confirmed the event subscription"
    assert events.wait_ready(0.0)  # idempotent


def output_files(sink: Path) -> list[Path]:
    return sorted(p for p in sink.glob("*") if p.is_file() and OUT_FILE.match(p.name))


def host_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def staging_leftovers(settings: Settings, job_id: int) -> list[Path]:
    """Staged files of ``job_id`` still on disk (any attempt)."""
    return [p for p in settings.staging_dir.rglob("*")
            if p.is_file() and f"{job_id}-" in str(p.parent.name)]


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def materializations(settings: Settings, job_id: int | None = None) -> list[dict[str, Any]]:
    with reader(settings) as r:
        return r.list_materializations(job_id=job_id, limit=100_000)


# -- submit → complete --------------------------------------------------------------------

def test_workers_and_their_plugin_hosts_run_niced_the_sentinel_does_not(
        cluster_factory: Callable[..., LocalCluster], settings: Settings) -> None:
    """worker_nice (default 15): batch work yields the CPU to the notebook kernel and to the
    sentinel on a busy machine; plugin hosts inherit it from their worker. Each of them leads
    its own session, so under Linux autogroup scheduling the session's group is niced too
    (else a process's nice would count only against its own session)."""
    cluster = cluster_factory(workers=1, slots=2, **FAST)
    sentinel, worker = (psutil.Process(p) for p in cluster.pids[:2])
    base = psutil.Process().nice()
    niced = min(19, base + settings.worker_nice)  # the kernel caps niceness at 19
    assert sentinel.nice() == base
    assert worker.nice() == niced
    wait_until(lambda: len(worker.children()) >= 2, 20, message="warm plugin hosts")
    assert {h.nice() for h in worker.children()} == {niced}
    for proc in (sentinel, worker, *worker.children()):
        group = Path(f"/proc/{proc.pid}/autogroup")
        if group.exists() and os.getsid(proc.pid) == proc.pid:
            group_nice = int(group.read_text().split("nice")[1])
            assert group_nice == (0 if proc is sentinel else niced), (proc, group_nice)


def test_submit_runs_to_completion_with_outputs_lineage_and_rows(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, **FAST)
    files = make_inputs(tmp_path / "in", 6)
    sink = tmp_path / "out"
    assert cluster.info is not None
    with control(cluster) as ctl, EventSubscriber(cluster.info) as events:
        subscribed(events)
        reply = ctl.submit(fixture_plugin, [str(f) for f in files], sink=f"parquet://{sink}")
        ids = reply["job_ids"]
        assert len(ids) == 6 and reply["skipped"] == []
        rows = wait_final(settings, ids, status="COMPLETED")
        seen: list[Any] = []

        def six_completed() -> bool:
            seen.extend(events.poll(0.05))
            return sum(1 for e in seen if e.payload.name == "JobCompleted") >= 6

        wait_until(six_completed, 10, message="JobCompleted events")
        # subscribed before the submit: not one event of these jobs was missed
        queued = [e.payload.data["job_id"] for e in seen if e.payload.name == "JobQueued"]
        assert sorted(queued) == sorted(ids)
        stats = ctl.queue_stats()
        job = ctl.get_job(ids[0])
        listed = ctl.list_jobs(limit=3)

    # DB rows: the one job model, with real timestamps
    for j in rows.values():
        assert j["completion_status"] == "SUCCESS" and j["rows"] == 10
        assert j["created_at"] <= j["claimed_at"] <= j["ended_at"]
        assert j["started_at"] and j["host_pid"] and j["worker_id"]
        assert j["retry_count"] == 0 and j["attempt"] == 1
        assert j["source_hash"] == lineage.hash_file(j["input_file"])
    assert stats["completed"] == 6 and stats["total"] == 6
    assert job is not None and job["status"] == "COMPLETED"
    assert listed["total"] == 6 and len(listed["jobs"]) == 3
    assert {j["id"] for j in listed["jobs"]} == set(sorted(ids)[-3:])  # newest first

    # outputs: one file per job, never overwritten, lineage on every row
    outs = output_files(sink)
    assert len(outs) == 6
    by_job: dict[str, Any] = {}
    for path in outs:
        table = pq.read_table(path)
        assert table.num_rows == 10
        for col in lineage.LINEAGE_COLUMNS:
            assert col in table.column_names
        job_ids = set(table.column("_cf_job_id").to_pylist())
        assert len(job_ids) == 1
        by_job[job_ids.pop()] = table
    assert set(by_job) == {str(i) for i in ids}
    for job_id, table in by_job.items():
        src = rows[int(job_id)]["source_hash"]
        assert set(table.column("_cf_source_hash").to_pylist()) == {src}
        assert set(table.column("_cf_parser_version").to_pylist()) == {"1.0.0"}
        assert len(set(table.column("_cf_processed_at").to_pylist())) == 1

    # one materialization per job, each pointing at its job
    mats = materializations(settings)
    assert sorted(m["job_id"] for m in mats) == sorted(ids)
    assert all(m["status"] == "success" and m["rows"] == 10 for m in mats)

    # the event stream and the sentinel's tape tell the same story
    names = [e.payload.name for e in seen]
    assert names.count("MaterializationRecorded") == 6
    assert {e.payload.data["job_id"] for e in seen if e.payload.name == "JobCompleted"} \
        == set(ids)
    [tape] = settings.tapes_dir.glob("sentinel-*.tape")
    taped = [json.loads(line)["event_name"].get("name") for line in tape.read_text().splitlines()]
    for name in ("JobQueued", "JobDispatched", "JobCompleted", "MaterializationRecorded"):
        assert taped.count(name) == 6, (name, taped)
    # staging is clean once everything is promoted
    assert not [p for p in settings.staging_dir.rglob("*") if p.is_file()]


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_of_a_queued_job_is_immediate(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=0)  # nothing runs: the jobs stay queued
    files = make_inputs(tmp_path / "in", 3)
    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
        reply = ctl.cancel_job(ids[1])
        assert reply["success"] is True and reply["state"] == "ABORTED"
        # already final: a second cancel says so
        again = ctl.cancel_job(ids[1])
        assert again["success"] is False and again["state"] == "ABORTED"
        missing = ctl.cancel_job(999_999)
        assert missing["success"] is False
        stats = ctl.queue_stats()
        assert stats["queued"] == 2 and stats["aborted"] == 1
        # cancel the rest in one request; the reply comes after the change is committed
        bulk = ctl.cancel_jobs(status="QUEUED")
        after = ctl.queue_stats()
    assert bulk["message"] == "2 job(s) cancelled"
    assert set(bulk["results"].values()) == {"ABORTED"}
    assert after["queued"] == 0 and after["aborted"] == 3
    row = jobs_by_id(settings, [ids[1]])[ids[1]]
    assert row["status"] == "ABORTED" and row["error_message"] == "Cancelled by user"
    assert row["claimed_at"] is None and row["ended_at"]


def test_cancel_of_a_running_job_kills_its_host_and_the_worker_keeps_serving(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    hang = make_inputs(tmp_path / "hang", 1, mode="hang")  # ignores SIGTERM: needs SIGKILL
    normal = make_inputs(tmp_path / "ok", 1)
    sink = tmp_path / "out"
    with control(cluster) as ctl:
        job_id = ctl.submit(fixture_plugin, [str(hang[0])], sink=f"parquet://{sink}")["job_ids"][0]
        started = wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the job to start")
        host = started["host_pid"]
        assert psutil.pid_exists(host) and not host_gone(host)
        reply = ctl.cancel_job(job_id)
        assert reply["success"] is True and reply["state"] in ("ABORTING", "ABORTED")
        row = wait_final(settings, [job_id], timeout=10, status="ABORTED")[job_id]
        wait_until(lambda: host_gone(host), 5, message=f"plugin host {host} to die")
        # the worker replaced its host and runs the next job
        next_id = ctl.submit(fixture_plugin, [str(normal[0])], sink=f"parquet://{sink}")["job_ids"][0]
        nxt = wait_final(settings, [next_id], status="COMPLETED")[next_id]
    assert row["cancel_requested_at"] is not None
    assert row["error_message"] == "cancelled by user"
    assert nxt["worker_id"] == row["worker_id"] and nxt["host_pid"] != host
    # nothing of the cancelled job was promoted or left staged
    outs = output_files(sink)
    assert len(outs) == 1
    assert set(pq.read_table(outs[0]).column("_cf_job_id").to_pylist()) == {str(next_id)}
    assert not materializations(settings, job_id)
    assert not staging_leftovers(settings, job_id)


def test_cancel_right_after_submit_and_in_the_worker_backlog(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """Cancels that land while the job is on its way to a worker (dispatched, not yet on a
    host) or waiting in the worker's backlog must still stop it — not let it run until its
    timeout (default one hour)."""
    cluster = cluster_factory(workers=1, slots=1, **FAST)
    hang = [str(f) for f in make_inputs(tmp_path / "hang", 5, mode="hang")]
    with control(cluster) as ctl:
        for path in hang[:3]:  # cancel as fast as the reply comes back
            job_id = ctl.submit(fixture_plugin, [path])["job_ids"][0]
            assert ctl.cancel_job(job_id)["success"]
            wait_final(settings, [job_id], timeout=10, status="ABORTED")
        # one running + one in the worker's backlog (1 slot + 1 prefetched)
        first, second = ctl.submit(fixture_plugin, hang[3:])["job_ids"]
        running = wait_job(settings, first, lambda j: j["host_pid"], 20, "the first to start")
        assert jobs_by_id(settings, [second])[second]["status"] == "RUNNING"  # prefetched
        assert ctl.cancel_job(second)["success"]
        wait_final(settings, [second], timeout=5, status="ABORTED")
        # the running job's host was not touched by that
        assert not host_gone(running["host_pid"])
        assert jobs_by_id(settings, [first])[first]["status"] == "RUNNING"
        ctl.cancel_job(first)
        wait_final(settings, [first], timeout=10, status="ABORTED")
        listed = ctl.list_jobs(submission_id=jobs_by_id(settings, [first])[first]["submission_id"])
    assert listed["total"] == 2 and {j["id"] for j in listed["jobs"]} == {first, second}


# -- capacity rejection (F9) ----------------------------------------------------------------

OVERPROMISING_WORKER = ROOT / "tests" / "fixtures" / "workers" / "overpromising_worker.py"


def start_overpromising_worker(cluster: LocalCluster, *, slots: int, claim: int) -> None:
    """Start a worker that claims ``claim`` slots but has ``slots``; wait until it joined.
    It joins ``cluster.workers``, so stopping the cluster stops it too."""
    env = {**os.environ, **settings_env(cluster.settings), "PYTHONPATH": str(ROOT)}
    with open(cluster.settings.logs_dir / "worker-overpromising.out", "ab") as log:
        cluster.workers.append(subprocess.Popen(
            [sys.executable, str(OVERPROMISING_WORKER), "--home", str(cluster.settings.home),
             "--slots", str(slots), "--claim", str(claim)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True))
    with control(cluster) as ctl:
        wait_until(lambda: ctl.list_workers(), 30, message="the overpromising worker to join")

def test_capacity_rejection_requeues_without_spending_retries(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=0, **FAST)
    start_overpromising_worker(cluster, slots=1, claim=3)  # promises 3 slots, has 1
    files = make_inputs(tmp_path / "in", 8)
    with control(cluster) as ctl:
        workers = ctl.list_workers()
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
        rows = wait_final(settings, ids, status="COMPLETED")
    assert workers[0]["slots"] > 3  # advertised (plus its backlog)
    assert all(r["retry_count"] == 0 for r in rows.values())
    # the first dispatch over-filled the worker: some jobs were rejected and dispatched again
    assert sum(r["attempt"] for r in rows.values()) > len(ids)
    with reader(settings) as r:
        assert r.dead_letters() == []
    assert len(materializations(settings)) == len(ids)


# -- failures ----------------------------------------------------------------------------------

def kill_hosts(cluster: LocalCluster, settings: Settings, job_id: int, times: int) -> list[int]:
    """SIGKILL the plugin host of each of the job's first ``times`` attempts, as the OOM
    killer would: only a pid the state DB reports for that very attempt and that is a child
    of one of this cluster's workers. Returns the pids killed."""
    killed: list[int] = []
    for attempt in range(1, times + 1):
        row = wait_job(settings, job_id, lambda j, n=attempt: j["status"] == "RUNNING"
                       and j["attempt"] == n and j["host_pid"], 30,
                       f"attempt {attempt} of job {job_id} to start on a plugin host")
        pid = int(row["host_pid"])
        hosts = {c.pid for w in cluster.workers for c in psutil.Process(w.pid).children()}
        assert pid in hosts and pid not in killed, (pid, hosts, killed)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


def test_a_host_killed_twice_by_sigkill_then_the_job_completes_on_attempt_3(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, max_retries=0, **FAST)  # no ordinary retry at all
    [src] = make_inputs(tmp_path / "in", 1, mode="slow sleep=1.5")
    with control(cluster) as ctl:
        [job_id] = ctl.submit(fixture_plugin, [str(src)])["job_ids"]
    killed = kill_hosts(cluster, settings, job_id, 2)
    row = wait_final(settings, [job_id], status="COMPLETED")[job_id]
    assert (row["attempt"], row["host_kills"], row["retry_count"]) == (3, 2, 0)
    assert row["host_pid"] not in killed and row["rows"] == 10
    assert len(materializations(settings, job_id)) == 1
    assert not staging_leftovers(settings, job_id)


def test_a_host_killed_four_times_fails_the_job_naming_the_signal(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)  # host_kill_retries: the default, 3
    [src] = make_inputs(tmp_path / "in", 1, mode="slow sleep=30")
    with control(cluster) as ctl:
        [job_id] = ctl.submit(fixture_plugin, [str(src)])["job_ids"]
    kill_hosts(cluster, settings, job_id, 4)
    row = wait_final(settings, [job_id], status="FAILED")[job_id]
    assert row["error_message"] == "PluginHostKilled: plugin host killed by SIGKILL 4 times (limit 3)"
    assert (row["error_kind"], row["host_kills"], row["attempt"], row["retry_count"]) == (
        "host_killed", 4, 4, 0)
    with reader(settings) as r:
        [dead] = r.dead_letters()
    assert dead["reason"] == "host_kill_retries_exceeded"
    assert not staging_leftovers(settings, job_id) and not materializations(settings)
    shown = subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(settings.home),
                            "job", "show", str(job_id)], capture_output=True, text=True,
                           env={**os.environ, **settings_env(settings)}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "             failure: plugin host killed by a signal (not a plugin error)" in (
        shown.stdout.splitlines())

def test_transient_failures_retry_with_backoff_then_dead_letter_permanent_fails_at_once(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, max_retries=2, **FAST)
    transient = make_inputs(tmp_path / "t", 1, mode="transient")
    permanent = make_inputs(tmp_path / "p", 1, mode="permanent")
    with control(cluster) as ctl:
        t_id = ctl.submit(fixture_plugin, [str(transient[0])])["job_ids"][0]
        p_id = ctl.submit(fixture_plugin, [str(permanent[0])])["job_ids"][0]
        rows = wait_final(settings, [t_id, p_id], status="FAILED")
    t, p = rows[t_id], rows[p_id]
    assert t["retry_count"] == 2 and t["attempt"] == 3 and t["error_kind"] == "transient"
    # backoff 0.05 s then 0.1 s (doubling) before the 2nd and 3rd attempts
    assert _seconds(t["ended_at"]) - _seconds(t["created_at"]) >= 0.15
    assert t["scheduled_at"] is not None
    assert "TransientError" in t["error_message"]
    assert p["retry_count"] == 0 and p["attempt"] == 1 and p["error_kind"] == "permanent"
    assert "PermanentError" in p["error_message"]
    with reader(settings) as r:
        dead = {d["original_job_id"]: d for d in r.dead_letters()}
        full = r.get_job(t_id)
    assert dead[t_id]["reason"] == "max_retries_exceeded" and dead[t_id]["retry_count"] == 2
    assert dead[p_id]["reason"] == "permanent_error"
    assert full is not None and "TransientError" in (full["traceback"] or "")
    assert not materializations(settings)


def test_per_job_timeout_aborts_a_hung_plugin(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    hang = make_inputs(tmp_path / "hang", 1, mode="hang")
    with control(cluster) as ctl:
        job_id = ctl.submit(fixture_plugin, [str(hang[0])], timeout=1.0)["job_ids"][0]
        host = wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the job to start")["host_pid"]
        row = wait_final(settings, [job_id], timeout=15, status="ABORTED")[job_id]
    assert row["error_message"].startswith("timed out after 1s"), row["error_message"]
    assert row["cancel_requested_at"] is None and row["timeout_s"] == 1.0
    wait_until(lambda: host_gone(host), 5, message="the hung host to be killed")
    assert not materializations(settings, job_id)


# -- incremental runs (F4) -------------------------------------------------------------------

def test_incremental_skip_and_rerun_on_each_key_change(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, **FAST)
    files = [str(f) for f in make_inputs(tmp_path / "in", 3)]
    sink_a, sink_b = f"parquet://{tmp_path / 'a'}", f"parquet://{tmp_path / 'b'}"

    def submit(ctl: ControlClient, **kw: Any) -> dict[str, Any]:
        reply = ctl.submit(fixture_plugin, files, **kw)
        if reply["job_ids"]:
            wait_final(settings, reply["job_ids"], status="COMPLETED")
        return reply

    with control(cluster) as ctl:
        first = submit(ctl, sink=sink_a)
        assert len(first["job_ids"]) == 3
        again = submit(ctl, sink=sink_a)  # same files, plugin, sink, mode: all skipped
        assert again["job_ids"] == [] and len(again["skipped"]) == 3
        assert {s["reason"] for s in again["skipped"]} == {"already materialized"}
        other_sink = submit(ctl, sink=sink_b)
        assert len(other_sink["job_ids"]) == 3
        other_mode = submit(ctl, sink=sink_a, mode="replace")
        assert len(other_mode["job_ids"]) == 3
        assert submit(ctl, sink=sink_a, mode="replace")["job_ids"] == []
        # a new plugin version re-runs everything, once
        fixture_plugin.write_text(fixture_plugin.read_text().replace(
            'version = "1.0.0"', 'version = "1.1.0"'))
        new_version = submit(ctl, sink=sink_a)
        assert len(new_version["job_ids"]) == 3
        assert submit(ctl, sink=sink_a)["job_ids"] == []
        forced = submit(ctl, sink=sink_a, force=True)
        assert len(forced["job_ids"]) == 3
        stats = ctl.queue_stats()
    skipped_rows = [j for j in jobs_by_id(settings).values() if j["status"] == "SKIPPED"]
    assert len(skipped_rows) == 9 and stats["skipped"] == 9
    versions = {j["parser_version"] for j in jobs_by_id(settings, new_version["job_ids"]).values()}
    assert versions == {"1.1.0"}


@pytest.mark.parametrize("n", [40])
def test_many_jobs_across_two_workers_complete_exactly_once(
        n: int, cluster_factory: Callable[..., LocalCluster], settings: Settings,
        fixture_plugin: Path, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, slots=2, **FAST)
    files = make_inputs(tmp_path / "in", n)
    sink = tmp_path / "out"
    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files], sink=f"parquet://{sink}",
                         priority=3)["job_ids"]
        rows = wait_final(settings, ids, status="COMPLETED")
    assert len({r["worker_id"] for r in rows.values()}) == 2  # both workers took jobs
    assert len(output_files(sink)) == n
    assert len(materializations(settings)) == n


def test_random_cancels_during_a_mixed_run_keep_every_invariant(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """Cancels fired at random moments into a run of fast, slow, failing and flaky jobs:
    every job ends in exactly one final state, a cancelled job promotes nothing, each
    COMPLETED job has exactly one output file and one materialization, nothing else does."""
    import random

    rng = random.Random(1234)
    cluster = cluster_factory(workers=2, slots=1, max_retries=1, **FAST)
    modes = ["normal", "slow sleep=0.1", "slow sleep=0.3", "error", "transient", "normal"]
    files = []
    (tmp_path / "in").mkdir()
    for i in range(36):  # distinct bytes: each input is its own materialization
        files.append(tmp_path / "in" / f"f{i:02d}.txt")
        files[-1].write_text(f"mode={rng.choice(modes)}\nfile {i}\n")
    sink = tmp_path / "out"
    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files], sink=f"parquet://{sink}")["job_ids"]
        victims = rng.sample(ids, 14)
        deadline = time.monotonic() + 3
        while victims and time.monotonic() < deadline:
            reply = ctl.cancel_job(victims.pop())
            assert reply["state"] in ("ABORTED", "ABORTING", "COMPLETING", "COMPLETED", "FAILED")
            time.sleep(rng.random() * 0.1)  # spread the cancels over the run (not a sync)
        rows = wait_final(settings, ids, timeout=60)
    completed = {i for i, r in rows.items() if r["status"] == "COMPLETED"}
    aborted = {i for i, r in rows.items() if r["status"] == "ABORTED"}
    assert aborted, "some cancel should have landed"
    for i in aborted:
        assert rows[i]["error_message"] and "cancel" in rows[i]["error_message"].lower()
    owners = sorted(pq.read_table(p).column("_cf_job_id").to_pylist()[0] for p in output_files(sink))
    assert owners == sorted(str(i) for i in completed)
    mats = materializations(settings)
    assert sorted(m["job_id"] for m in mats) == sorted(completed)
    assert not [p for p in settings.staging_dir.rglob("*") if p.is_file()]

"""The controller against real sentinel and worker processes (loopback, tmp home)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import casparian_nb as cf
from casparian_nb.errors import RemoteJobError, SentinelError, SentinelGoneError
from casparian_nb.notebook._models import WaitInterrupted, WaitTimeoutError
from casparian_nb.notebook._scheduling import ManualScheduler
from casparian_nb.notebook.controller import current_controller
from casparian_nb.tape import read_tape, validate_tape
from tests.conftest import FIXTURE_PLUGIN, make_inputs, running, wait_until
from tests.notebook.nb_harness import RecordingComm, frontend_send

Factory = Callable[..., Any]


def _status(ctl: Any, job_id: int) -> str:
    return str(ctl.job(job_id).status)


def test_submit_wait_jobs_stats_sql_and_session_tape(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    """The whole happy path, and one session tape that tells the story."""
    ctl = controllers(workers=2)
    make_inputs(tmp_path / "data", 4)
    ids = ctl.submit(fixture_plugin_path, tmp_path / "data")
    assert len(ids) == 4
    result = ctl.wait(ids, timeout=60)
    assert result.ok and result.counts == {"COMPLETED": 4}

    jobs = ctl.jobs()
    assert set(jobs.loc[ids, "status"]) == {"COMPLETED"}
    assert (jobs.loc[ids, "rows"] == 10).all()
    assert ctl.stats()["completed"] == 4 and "COMPLETED" in ctl.stats()._repr_html_()
    assert ctl.sql("select count(*) as n from fixture_output")["n"][0] == 40
    lineage = ctl.sql("select distinct _cf_job_id from fixture_output order by 1")
    assert sorted(int(j) for j in lineage["_cf_job_id"]) == sorted(ids)
    assert ctl.sql("select count(*) as n from jobs where status = 'COMPLETED'")["n"][0] == 4

    # %%cql in a shell uses this controller's catalog
    shell = InteractiveShell()
    try:
        shell.run_cell("%load_ext casparian_nb")
        cell = shell.run_cell("%%cql\nselect count(*) as n from tape_events "
                              "where event_name = 'JobCompleted'\n")
        assert cell.success, cell.error_in_exec
        assert cell.result.df["n"][0] == 4
    finally:
        shell.cleanup()
        InteractiveShell.clear_instance()

    tape = ctl.tape_path
    ctl.stop()
    report = validate_tape(tape)
    assert report.valid, report
    events = list(read_tape(tape))
    submit = next(e for e in events if e.kind == "ui_command" and e.name == "Submit")
    completed = [e for e in events if e.name == "JobCompleted"]
    assert len(completed) == 4
    # start() returns only once the sentinel has the event subscription: nothing is missed
    assert len([e for e in events if e.name == "JobQueued"]) == 4
    # the sentinel's events are linked to the command that caused them
    assert {e.correlation_id for e in completed} == {submit.correlation_id}
    names = [e.name for e in events if e.kind == "ui_command"]
    assert names[:2] == ["Start", "Submit"] and names[-1] == "Stop"
    assert events[-1].kind == "tape_stopped"


def test_stop_drains_the_events_into_the_session_tape(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    """stop() right after the jobs end (seen in the DB, not waited on through events): the
    session tape still has every job event the sentinel published (the sentinel's own tape
    is the reference), because stop() lets the event thread catch up to Pong.event_seq."""
    ctl = controllers(workers=2)
    # A slow widget on the event thread: the relay lags behind the sentinel (as it does
    # under load), so a stop() that does not wait would cut the tape short.
    ctl.events.subscribe(lambda batch: time.sleep(0.1))
    ids = ctl.submit(fixture_plugin_path, make_inputs(tmp_path / "data", 8))
    home = ctl.settings.home
    wait_until(lambda: all(_status(ctl, j) == "COMPLETED" for j in ids), 60,
               message="jobs completed (state DB)")
    tape = ctl.tape_path
    ctl.stop()

    def job_events(path: Path) -> list[tuple[str, str]]:
        return sorted((e.name or "", str(e.payload.get("job_id")))
                      for e in read_tape(path, strict=False)
                      if e.kind == "domain_event" and (e.name or "").startswith("Job"))

    [sentinel_tape] = list((home / "tapes").glob("sentinel-*.tape"))
    expected = job_events(sentinel_tape)
    assert len([e for e in expected if e[0] == "JobCompleted"]) == 8
    assert job_events(tape) == expected


def test_session_tape_hashes_a_plugin_name_taken_from_the_file_name(
        controllers: Factory, tmp_path: Path) -> None:
    """A plugin without ``name = "..."`` is named after its file: user data, so the session
    tape (which relays the sentinel's events) hashes it like every other file name."""
    marker = f"MRK{os.urandom(6).hex()}"
    plugin = tmp_path / f"plugin_{marker}.py"
    plugin.write_text(FIXTURE_PLUGIN.read_text().replace('name = "fixture_plugin"\n', ""))
    ctl = controllers()
    ids = ctl.submit(plugin, make_inputs(tmp_path / "data", 1))
    assert ctl.wait(ids, timeout=60).ok
    tape = ctl.tape_path
    ctl.stop()
    assert marker.encode() not in tape.read_bytes()
    relayed = [e for e in read_tape(tape)
               if e.name in ("JobQueued", "JobDispatched", "JobCompleted")]
    assert [e.name for e in relayed] == ["JobQueued", "JobDispatched", "JobCompleted"]
    assert {e.payload["plugin_name_source"] for e in relayed} == {"file"}
    [hashed] = {e.payload["plugin_name"] for e in relayed}
    assert len(hashed) == 16


def test_failed_job_renders_the_remote_traceback(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    ctl = controllers()
    [bad] = make_inputs(tmp_path / "bad", 1, mode="permanent msg=no column amount")
    [job_id] = ctl.submit(fixture_plugin_path, bad)
    result = ctl.wait([job_id], timeout=60)
    assert result.failed == [job_id] and not result.ok
    job = ctl.job(job_id)
    assert job.status == "FAILED" and job.done
    err = job.error
    assert isinstance(err, RemoteJobError)
    assert "no column amount" in str(err)
    lines = err._render_traceback_()
    assert lines[0].startswith(f"RemoteJobError: job {job_id}")
    assert any("fixture_plugin" in ln for ln in lines[1:])
    with pytest.raises(RemoteJobError):
        job.raise_for_status()
    assert "remote traceback" in repr(job) and "<pre" in job._repr_html_()


def test_queue_widget_cancel_shows_aborting_until_the_sentinel_confirms(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path,
        comms: list[RecordingComm]) -> None:
    """F10 end to end: click → CancelJob → "aborting…" → ABORTED only once the DB says so."""
    ctl = controllers()
    [slow] = make_inputs(tmp_path / "slow", 1, mode="slow sleep=30")
    [job_id] = ctl.submit(fixture_plugin_path, slow)
    wait_until(lambda: _status(ctl, job_id) == "RUNNING", 30, message="job running")
    sched = ManualScheduler()
    w = ctl.queue(scheduler=sched)
    assert next(r for r in w.rows if r["id"] == job_id)["cancellable"]

    frontend_send(w, {"type": "cancel", "job_id": job_id})
    labels_seen: list[tuple[str, str]] = []

    def aborted() -> bool:
        sched.run_due()
        w.pump()
        row = next(r for r in w.comm.merged()["rows"] if r["id"] == job_id)
        labels_seen.append((row["label"], _status(ctl, job_id)))
        return row["status"] == "ABORTED"

    wait_until(aborted, 30, interval=0.05, message="ABORTED in the widget")
    for label, db_status in labels_seen:
        if label == "ABORTED":
            assert db_status == "ABORTED"  # never shown before the sentinel recorded it
    assert labels_seen[0][0] == "aborting…"
    tape = [e for e in read_tape(ctl.tape_path, strict=False)]
    assert any(e.kind == "ui_command" and e.name == "Cancel" for e in tape)


def test_cancel_all_queued_leaves_running_jobs(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    """Only what was still QUEUED when the sentinel got the request is aborted."""
    ctl = controllers(workers=1, slots=1)
    files = make_inputs(tmp_path / "q", 6, mode="slow sleep=30")
    ids = ctl.submit(fixture_plugin_path, files)
    wait_until(lambda: any(_status(ctl, j) == "RUNNING" for j in ids), 30,
               message="a job running")
    reply = ctl.cancel_all_queued()
    results = {int(k): v for k, v in reply["results"].items()}
    cancelled = sorted(j for j, state in results.items() if state == "ABORTED")
    assert cancelled and set(cancelled) < set(ids)
    running = [j for j in ids if j not in results]
    assert running  # the worker's jobs (running or in its backlog) were left alone
    # (the reply can precede the sentinel's DB write by a moment)
    wait_until(lambda: all(_status(ctl, j) == "ABORTED" for j in cancelled), 10,
               message="the cancelled jobs ABORTED in the state DB")
    assert all(_status(ctl, j) == "RUNNING" for j in running)
    for j in running:
        assert ctl.cancel(j)["success"]
    assert ctl.wait(running, timeout=30).counts == {"ABORTED": len(running)}


def _interrupt_soon(delay: float) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_wait_is_interruptible_and_says_how_to_cancel(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    ctl = controllers()
    [slow] = make_inputs(tmp_path / "s", 1, mode="slow sleep=30")
    [job_id] = ctl.submit(fixture_plugin_path, slow)
    with pytest.raises(WaitTimeoutError) as timed_out:
        ctl.wait([job_id], timeout=0.3)
    assert timed_out.value.pending == [job_id]

    timer = _interrupt_soon(0.5)
    with pytest.raises(WaitInterrupted) as info:
        ctl.wait([job_id])
    timer.join()
    assert info.value.pending == [job_id]
    assert "ctl.cancel" in str(info.value) and "keep running" in str(info.value)
    assert _status(ctl, job_id) in ("QUEUED", "RUNNING")  # nothing was cancelled

    timer = _interrupt_soon(0.5)
    with pytest.raises(WaitInterrupted, match="cancellation"):
        ctl.wait([job_id], cancel_on_interrupt=True)
    timer.join()
    assert ctl.wait([job_id], timeout=30).counts == {"ABORTED": 1}


def test_attach_reuses_a_running_sentinel_and_leaves_it_running(
        controllers: Factory, home: Path) -> None:
    owner = controllers()
    assert owner.cluster is not None
    other = cf.attach(home)
    assert other.stats().total == 0
    assert current_controller() is other
    other.stop()
    assert owner.cluster.alive()  # an attached controller never stops what it did not start
    with pytest.raises(SentinelError, match="stopped"):
        other.submit("x.py", [])
    again = cf.start(home=home)  # a live sentinel serves this home: start attaches
    try:
        assert again.cluster is None and again.info.pid == owner.info.pid
    finally:
        again.stop()
    assert owner.cluster.alive()


def test_a_killed_sentinel_is_a_clear_error_on_the_next_call_not_a_hang(
        controllers: Factory, fixture_plugin_path: Path, home: Path, tmp_path: Path) -> None:
    ctl = controllers()
    assert ctl.cluster is not None
    pid = ctl.info.pid
    assert ctl.cluster.sentinel.pid == pid  # the sentinel this controller started
    other = cf.attach(home)
    try:
        [slow] = make_inputs(tmp_path / "s", 1, mode="slow sleep=30")
        [job_id] = ctl.submit(fixture_plugin_path, slow)
        killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        with pytest.raises(SentinelGoneError,
                           match=f"gone: sentinel pid {pid} was killed by SIGKILL"):
            ctl.wait([job_id])  # no timeout: without the check this would never return
        killer.join()
        assert time.monotonic() - started < 5
        with pytest.raises(SentinelGoneError, match="was killed by SIGKILL"):
            ctl.submit(fixture_plugin_path, slow)
        with pytest.raises(SentinelGoneError, match=f"sentinel pid {pid} is no longer running"):
            other.cancel(job_id)  # attached: the pid is known, its exit status is not
        assert _status(ctl, job_id) in ("QUEUED", "RUNNING")  # reads keep working
    finally:
        other.stop()


def test_attach_without_a_sentinel_is_a_clear_error(home: Path) -> None:
    with pytest.raises(SentinelError):
        cf.attach(home)


def test_interpreter_exit_stops_the_processes_it_started(home: Path) -> None:
    """Leaving Python (or a kernel shutting down) without ctl.stop() stops the cluster."""
    code = ("import json, casparian_nb as cf\n"
            f"ctl = cf.start(workers=1, home={str(home)!r}, slots=1)\n"
            "print(json.dumps(ctl.cluster.pids), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    wait_until(lambda: not [p for p in pids if running(p)],
               15, message=f"{pids} to exit")
    tapes = sorted((home / "tapes").glob("session-*.tape"))
    assert tapes and validate_tape(tapes[-1]).valid


def test_the_sentinel_tape_links_job_events_to_the_submit_command(
        controllers: Factory, fixture_plugin_path: Path, tmp_path: Path) -> None:
    """Every sentinel event of a submitted job carries the correlation id of the session's
    Submit command (queued → dispatched → started → completed), so the two tapes join."""
    ctl = controllers(workers=1)
    make_inputs(tmp_path / "data", 3)
    ids = ctl.submit(fixture_plugin_path, tmp_path / "data")
    assert ctl.wait(ids, timeout=60, progress=False).ok
    [submit] = [e for e in read_tape(ctl.tape_path)
                if e.kind == "ui_command" and e.name == "Submit"]
    corr = submit.correlation_id
    deadline = time.monotonic() + 10
    while True:
        events = [e for t in sorted((ctl.home / "tapes").glob("sentinel-*.tape"))
                  for e in read_tape(t) if e.kind == "domain_event"
                  and (e.payload or {}).get("job_id") in ids]
        finals = [e for e in events if e.name == "JobCompleted"]
        if len(finals) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    names = {e.name for e in events}
    assert {"JobQueued", "JobDispatched", "JobCompleted"} <= names, names
    assert len(finals) == len(ids)
    assert {e.correlation_id for e in events} == {corr}
    # the session tape relays them under the same id, and explain says who queued what
    ctl.stop()
    relayed = [e for e in read_tape(ctl.tape_path) if e.kind == "domain_event"
               and (e.payload or {}).get("job_id") in ids]
    assert relayed and {e.correlation_id for e in relayed} == {corr}
    submits = [c for c in cf.explain(ctl.tape_path).to_json()["command_list"]
               if c["name"] == "Submit"]
    assert submits == [{"name": "Submit", "status": "success", "correlation_id": corr,
                        "error": None, "jobs_queued": len(ids)}]
    text = cf.explain(ctl.tape_path).to_text()
    assert f"Submit [success] -> queued {len(ids)} job(s)" in text

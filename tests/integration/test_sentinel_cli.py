"""The sentinel's CLI and control API with real processes: reads never blocked while jobs run
(F5), ``casparian start`` stopped by SIGINT even when started with SIGINT ignored (DESIGN §5),
``job cancel`` without a sentinel, and hostile control/worker messages (F14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq

from casparian_nb.client import (
    ConnectionInfo,
    ControlClient,
    connection_is_live,
    read_connection_file,
)
from casparian_nb.config import Settings
from casparian_nb.errors import SentinelError
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import Codec
from tests.conftest import make_inputs, running, wait_until
from tests.integration.test_sentinel import FAST, control, jobs_by_id, wait_final, wait_job


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASPARIAN_", "CF_FIXTURE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def serving(home: Path, workers: int | None = None) -> ConnectionInfo | None:
    """The live sentinel of ``home`` once ``workers`` workers (None: any) joined it; None
    before."""
    try:
        info = read_connection_file(home)
    except SentinelError:  # not written yet
        return None
    if not connection_is_live(info):
        return None
    if workers is not None:
        with ControlClient(info, timeout=2) as ctl:
            if len(ctl.list_workers()) != workers:
                return None
    return info


def cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home), *args],
                          capture_output=True, text=True, env=cli_env(), timeout=timeout)


# -- F5: reads while the sentinel writes ---------------------------------------------------

def test_cli_and_control_api_stay_readable_while_200_jobs_run(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=2, **FAST)
    files = make_inputs(tmp_path / "in", 200, mode="slow sleep=0.02")
    problems: list[str] = []
    api_calls = 0
    stop = threading.Event()

    def hammer_api() -> None:  # the notebook side: control requests in a loop
        nonlocal api_calls
        with control(cluster, timeout=5) as ctl:
            while not stop.is_set():
                try:
                    ctl.queue_stats()
                    page = ctl.list_jobs(limit=100)
                    if page["jobs"]:
                        ctl.get_job(page["jobs"][0]["id"])
                    api_calls += 1
                except Exception as exc:  # collected, asserted below
                    problems.append(f"api: {exc!r}")

    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
    api = threading.Thread(target=hammer_api)
    api.start()
    cli_runs = 0
    seen_running = False
    try:
        while True:
            listing = cli(settings.home, "jobs", "--json", "--limit", "500")
            shown = cli(settings.home, "job", "show", str(ids[len(ids) // 2]), "--json")
            for done in (listing, shown):
                if done.returncode != 0 or "lock" in done.stderr.lower():
                    problems.append(f"cli rc={done.returncode}: {done.stderr.strip()}")
            jobs = json.loads(listing.stdout)
            assert isinstance(jobs, list) and len(jobs) == 200
            for j in jobs:
                assert {"id", "status", "plugin_name", "input_file"} <= set(j)
            assert json.loads(shown.stdout)["id"] == ids[len(ids) // 2]
            cli_runs += 1
            statuses = {j["status"] for j in jobs}
            seen_running = seen_running or "RUNNING" in statuses
            if statuses <= {"COMPLETED"}:
                break
            assert cli_runs < 200, "the run never finished"
    finally:
        stop.set()
        api.join(10)
    assert not problems, problems[:5]
    assert seen_running and cli_runs >= 2 and api_calls >= 10
    wait_final(settings, ids, status="COMPLETED")


# -- casparian start / SIGINT ------------------------------------------------------------------

def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's `cmd &` would leave it


def test_start_in_the_foreground_stops_everything_on_sigint_even_with_sigint_ignored(
        settings: Settings, fixture_plugin: Path, tmp_path: Path) -> None:
    home = settings.home
    proc = subprocess.Popen(
        [sys.executable, "-m", "casparian_nb", "--home", str(home), "start", "--workers", "2",
         "--slots", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=cli_env(), start_new_session=True, preexec_fn=_ignore_sigint)
    tree: set[int] = set()
    try:
        info = wait_until(lambda: serving(home, 2), 30, interval=0.05,
                          message="casparian start to serve")
        hang = make_inputs(tmp_path / "in", 1, mode="hang")  # a host busy, ignoring SIGTERM
        with ControlClient(info) as ctl:
            job_id = ctl.submit(fixture_plugin, [str(hang[0])])["job_ids"][0]
        wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the hang job to start")
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert len(tree) >= 5  # sentinel + 2 workers + their hosts
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert elapsed < 8, f"stopping took {elapsed:.1f}s"

    def all_gone() -> bool:
        return not [p for p in tree if running(p)]

    wait_until(all_gone, 5, message="sentinel, workers and hosts to exit")
    # a clean stop: the running job is not lost (the next start re-queues it)
    row = jobs_by_id(settings, [job_id])[job_id]
    assert row["status"] in ("QUEUED", "RUNNING") and row["retry_count"] == 0


def test_start_exits_1_naming_the_signal_when_its_sentinel_is_killed(
        settings: Settings) -> None:
    home = settings.home
    proc = subprocess.Popen(
        [sys.executable, "-m", "casparian_nb", "--home", str(home), "start", "--workers", "1",
         "--slots", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(), start_new_session=True)
    try:
        # `start` prints its one line once the sentinel serves and the workers joined: only
        # then is a dying sentinel the case under test (not a start that failed half-way).
        banner: list[str] = []
        assert proc.stdout is not None
        out_pipe = proc.stdout
        threading.Thread(target=lambda: banner.append(out_pipe.readline()),
                         daemon=True).start()
        wait_until(lambda: banner, 30, message="casparian start to say it serves")
        info = serving(home, 1)
        assert info is not None and f"sentinel pid {info.pid} serving" in banner[0], banner
        pid = info.pid
        assert pid in {c.pid for c in psutil.Process(proc.pid).children()}
        workers = [c.pid for c in psutil.Process(proc.pid).children() if c.pid != pid]
        assert len(workers) == 1
        os.kill(pid, signal.SIGKILL)  # the start's own child, found through sentinel.json
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            # start_new_session: the group is `casparian start` and what it started, nothing else
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert err.strip().splitlines() == [f"casparian: sentinel pid {pid} was killed by SIGKILL"]
    assert "stopped" not in out
    wait_until(lambda: not [w for w in workers if running(w)], 5, message="the workers to exit")


# -- job cancel without a sentinel ----------------------------------------------------------

def test_job_cancel_without_a_sentinel_changes_nothing(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """Only the sentinel writes the state DB (F17): with none running, ``job cancel`` says so
    in one line (exit 1) and the queued job stays queued for the next sentinel."""
    cluster = cluster_factory(workers=0)
    files = make_inputs(tmp_path / "in", 2)
    with control(cluster) as ctl:
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
    via_api = cli(settings.home, "job", "cancel", str(ids[0]))
    assert via_api.returncode == 0 and "ABORTED" in via_api.stdout
    cluster.stop()
    before = settings.state_db.stat().st_mtime_ns
    done = cli(settings.home, "job", "cancel", str(ids[1]))
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"casparian: error: no sentinel is running for {settings.home}; "
                           "start one with `casparian start`\n")
    assert settings.state_db.stat().st_mtime_ns == before
    rows = jobs_by_id(settings, ids)
    assert [rows[i]["status"] for i in ids] == ["ABORTED", "QUEUED"]


def test_stop_stops_the_sentinel_cleanly(cluster_factory: Callable[..., LocalCluster],
                                         settings: Settings) -> None:
    """``casparian stop``: the sentinel exits 0 (its tape ends with TapeStopped) and a second
    stop finds none running."""
    cluster = cluster_factory(workers=1)
    assert cluster.sentinel is not None
    done = cli(settings.home, "stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"casparian: sentinel pid {cluster.sentinel.pid} of {settings.home} stopped\n"
    assert cluster.sentinel.wait(timeout=10) == 0
    again = cli(settings.home, "stop")
    assert again.returncode == 1 and "no sentinel is running" in again.stderr


# -- F14: hostile messages -------------------------------------------------------------------

def _signed(codec: Codec, body: dict[str, Any] | bytes) -> list[bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [b"CF1", codec.sign(raw), raw]


def test_bad_control_and_worker_messages_get_errors_and_the_loops_keep_running(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    assert cluster.info is not None
    info = cluster.info
    codec = info.codec()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(info.control)

    def ask(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply to a bad message"
        _, msg = codec.decode(sock.recv_multipart())
        return msg.type, msgspec.to_builtins(msg.payload)

    now = time.time()

    def body(type_: str, payload: Any, **extra: Any) -> dict[str, Any]:
        return {"v": 1, "type": type_, "id": uuid.uuid4().hex, "ts": now, "reply_to": None,
                "payload": payload, **extra}

    wrong_key = Codec(b"w" * 32)
    cases = {
        "garbage": ([b"garbage"], "PARSE_ERROR"),
        "no signature": ([b"CF1", b"", json.dumps(body("Ping", {})).encode()], "AUTH_ERROR"),
        "wrong signature": (wrong_key.encode("Ping", {}), "AUTH_ERROR"),
        "not json": (_signed(codec, b"{not json"), "PARSE_ERROR"),
        "unknown type": (_signed(codec, body("Frobnicate", {})), "UNKNOWN_TYPE"),
        "worker message on control": (_signed(codec, body("Goodbye", {"worker_id": "x"})),
                                      "UNKNOWN_TYPE"),
        "bad payload": (_signed(codec, body("GetJob", {"job_id": "seven"})), "INVALID_REQUEST"),
        "bad status filter": (codec.encode("ListJobs", {"status": "EXPLODED"}), "INVALID_REQUEST"),
        "old protocol": (_signed(codec, body("Ping", {}, v=0)), "PARSE_ERROR"),
        "too many frames": ([b"x"] * 200, None),
    }
    for name, (frames, code) in cases.items():
        type_, payload = ask(frames)
        assert type_ == "Error", name
        if code is not None:
            assert payload["code"] == code, (name, payload)

    # the worker socket drops or refuses bad input; the worker that is connected is unharmed
    wsock = ctx.socket(zmq.DEALER)
    wsock.setsockopt(zmq.LINGER, 0)
    wsock.connect(info.workers)
    for frames in ([b"junk"], wrong_key.encode("Heartbeat", {"worker_id": "w", "active_job_ids": [],
                                                             "free_slots": 1}),
                   codec.encode("Receipt", {"job_id": "1", "status": "SUCCESS"})):
        wsock.send_multipart(frames)
    wsock.close(0)

    with ControlClient(info) as ctl:
        assert ctl.ping()["pid"] == info.pid
        files = make_inputs(tmp_path / "in", 2)
        ids = ctl.submit(fixture_plugin, [str(f) for f in files])["job_ids"]
        wait_final(settings, ids, status="COMPLETED")
        assert len(ctl.list_workers()) == 1
    sock.close(0)
    assert cluster.alive()


# -- the roles' own entry points -------------------------------------------------------------

def test_python_m_sentinel_and_worker_run_a_job(home: Path, fixture_plugin: Path,
                                                tmp_path: Path) -> None:
    """``python -m casparian_nb.sentinel`` and ``python -m casparian_nb.worker``, started as a
    supervisor would start them, serve a job; SIGTERM stops each with exit status 0."""
    env = cli_env()
    sentinel = subprocess.Popen([sys.executable, "-m", "casparian_nb.sentinel", "--home",
                                 str(home)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    worker: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: serving(home), 30, message="the sentinel's connection file")
        worker = subprocess.Popen([sys.executable, "-m", "casparian_nb.worker", "--home",
                                   str(home), "--slots", "1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        files = make_inputs(tmp_path / "in", 2)
        with ControlClient(read_connection_file(home / "sentinel.json"), timeout=10) as ctl:
            ids = ctl.submit(str(fixture_plugin), [str(f) for f in files])["job_ids"]
            wait_until(lambda: all((ctl.get_job(i) or {}).get("status") == "COMPLETED"
                                   for i in ids),
                       60, message="both jobs to complete")
    finally:
        for proc in (worker, sentinel):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in (worker, sentinel) if p is not None]
    assert codes == [0, 0], (worker.stderr.read() if worker else "", sentinel.stderr.read())


def test_python_m_sentinel_help_and_bad_option() -> None:
    ok = subprocess.run([sys.executable, "-m", "casparian_nb.sentinel", "--help"],
                        capture_output=True, text=True, env=cli_env(), timeout=60)
    assert ok.returncode == 0 and "--home" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "casparian_nb.worker", "--slots", "many"],
                         capture_output=True, text=True, env=cli_env(), timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'many' is not a valid integer" in bad.stderr

"""F14 authentication against real processes (issue 7 §1).

Every socket accepts only messages signed with the key of ``sentinel.json``: the control
socket answers a missing, wrong or stale signature with ``Error{AUTH_ERROR}`` (and a log line in
``<home>/logs/sentinel.log``), the worker socket drops such messages (log line, no worker
registered, no job touched), the events socket ignores whatever is sent to it, and both ends
that *receive* — a worker from its sentinel, a subscriber from the events socket — drop what
they cannot verify. A worker with the wrong key is refused. ``sentinel.json`` and the state DB
are 0600 in a 0700 home even under umask 000. Binding beyond loopback needs ``allow_remote``
and then warns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import zmq

from casparian_nb.client import (
    ConnectionInfo,
    ControlClient,
    EventSubscriber,
    read_connection_file,
    write_connection_file,
)
from casparian_nb.config import Settings, load_settings
from casparian_nb.errors import ConfigError, SentinelError
from casparian_nb.launcher import LocalCluster, settings_env
from casparian_nb.protocol import (
    MAGIC,
    Codec,
    Error,
    Event,
    EventName,
    Identify,
    Ping,
    Shutdown,
)
from tests.conftest import wait_until
from tests.hardening.harness import (
    FAST,
    HOSTILE_PLUGIN,
    ProcessTracker,
    jobs_by_id,
    record,
    wait_final,
    wait_job,
)
from tests.hardening.wire import WRONG_KEY, Wire, envelope, raw, signed


def log_lines(settings: Settings, needle: str) -> list[str]:
    path = settings.logs_dir / "sentinel.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [ln for ln in text.splitlines() if needle in ln]


def cli_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASPARIAN_")}
    if settings is not None:
        env.update(settings_env(settings))
    env.update(extra)
    return env


def cli(home: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else cli_env())


# -- the control socket --------------------------------------------------------------------

def test_control_socket_refuses_unsigned_wrong_and_stale_requests_with_a_log_line(
        hcluster: Callable[..., LocalCluster], settings: Settings, tmp_path: Path) -> None:
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    marker = tmp_path / "marker"
    plugin = tmp_path / "marker_plugin.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef parse(path):\n    return None\n")
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    submit = {"plugin": str(plugin), "inputs": [str(src)]}
    now = time.time()
    cases: list[tuple[str, list[bytes], str]] = [
        ("unsigned Ping", signed(WRONG_KEY, envelope("Ping"), "unsigned"), "not signed"),
        ("wrong-key Ping", signed(WRONG_KEY, envelope("Ping")), "bad signature"),
        ("body changed after signing", [], "bad signature"),
        ("signature cut short", [], "bad signature"),
        ("signature upper-cased", [], "bad signature"),
        ("stale Ping (an old message replayed)", [], "stale message"),
        ("Ping from the future", [], "in the future"),
        ("wrong-key Shutdown", signed(WRONG_KEY, envelope("Shutdown")), "bad signature"),
        ("unsigned Shutdown", signed(WRONG_KEY, envelope("Shutdown"), "unsigned"), "not signed"),
        ("stale Shutdown", [], "stale message"),
        ("wrong-key SubmitJobs", signed(WRONG_KEY, envelope("SubmitJobs", submit)),
         "bad signature"),
        ("wrong-key CancelJobs", signed(WRONG_KEY, envelope("CancelJobs", {"status": "ALL"})),
         "bad signature"),
    ]
    wire = Wire(cluster.info)
    key = wire.codec
    fill = {
        "body changed after signing": signed(key, envelope("Ping"), "tampered"),
        "signature cut short": signed(key, envelope("Ping"), "truncated"),
        "signature upper-cased": signed(key, envelope("Ping"), "upper"),
        "stale Ping (an old message replayed)": signed(key, envelope("Ping", ts=now - 3600)),
        "Ping from the future": signed(key, envelope("Ping", ts=now + 3600)),
        "stale Shutdown": signed(key, envelope("Shutdown", ts=now - 3600)),
    }
    before = len(log_lines(settings, "control: refused message"))
    try:
        for name, frames, reason in cases:
            msg = wire.ask(fill.get(name, frames))
            assert isinstance(msg.payload, Error), name
            assert msg.payload.code == "AUTH_ERROR", (name, msg.payload)
            assert reason in msg.payload.message, (name, msg.payload)
            if "stale" not in name and "future" not in name:
                assert msg.reply_to is None, f"{name}: an unverified request id was echoed"
        with ControlClient(cluster.info) as ctl:
            assert ctl.ping()["pid"] == cluster.info.pid  # no Shutdown took effect
            assert ctl.queue_stats()["total"] == 0  # no SubmitJobs either
    finally:
        wire.close()
    lines = log_lines(settings, "control: refused message")
    assert len(lines) - before == len(cases), lines[-len(cases):]
    for (_, _, reason), line in zip(cases, lines[before:], strict=True):
        assert reason in line, line
    assert not marker.exists()
    record("auth: control socket refuses bad signatures", None, checks=len(cases))


# -- the worker socket ---------------------------------------------------------------------

def test_worker_socket_drops_unauthenticated_workers_and_forged_receipts(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    wire = Wire(cluster.info)
    key = wire.codec
    ident = {"worker_id": "intruder", "slots": 8, "pid": os.getpid(),
             "host": socket.gethostname()}
    with ControlClient(cluster.info) as ctl:
        real = [w["worker_id"] for w in ctl.list_workers()]
        src = tmp_path / "slow.txt"
        src.write_text("mode=slow sleep=1.5\n")
        sink = tmp_path / "out"
        [job_id] = ctl.submit(fixture_plugin, [str(src)], sink=f"parquet://{sink}")["job_ids"]
        wait_job(settings, job_id, lambda j: j["status"] == "RUNNING", 20, "the job to start")
        before = len(log_lines(settings, "worker socket: refused message"))
        receipt = {"job_id": str(job_id), "attempt": 1, "status": "SUCCESS", "rows": {"x": 1},
                   "staged": {"job_id": str(job_id), "sink": f"parquet://{sink}",
                              "staging_dir": str(tmp_path / "forged"), "outputs": []}}
        unauthenticated = [
            signed(key, envelope("Identify", ident), "unsigned"),
            signed(WRONG_KEY, envelope("Identify", ident)),
            signed(key, envelope("Identify", ident, ts=time.time() - 3600)),
            signed(key, envelope("Identify", {**ident, "pid": 2**40}), "unsigned"),
            signed(WRONG_KEY, envelope("Receipt", receipt)),
            signed(key, envelope("Receipt", receipt), "tampered"),
            [b"junk"],
        ]
        try:
            for frames in unauthenticated:
                wire.to_workers(frames)
            # Correctly signed, but from a peer that never identified: refused too.
            wire.to_workers(signed(key, envelope("Receipt", receipt)))
            refused = wire.worker_replies(wait=2.0)
            wait_until(lambda: len(log_lines(settings, "worker socket: refused message"))
                       - before >= len(unauthenticated), 5, message="a log line per message")
            assert {m.type for m in refused} <= {"Refused"}, refused
            assert [w["worker_id"] for w in ctl.list_workers()] == real
            assert jobs_by_id(settings, [job_id])[job_id]["status"] == "RUNNING"
            # An identified worker that does not own the job cannot complete it either.
            wire.identify("bystander")
            wire.known.send_multipart(key.encode("Receipt", receipt))
            row = wait_final(settings, [job_id])[job_id]
        finally:
            wire.close()
        assert row["status"] == "COMPLETED" and row["worker_id"] in real, row
        assert row["rows"] == 10 and row["attempt"] == 1
    assert cluster.alive()
    record("auth: worker socket drops unauthenticated messages", None,
           checks=len(unauthenticated) + 2)


def test_a_signed_identify_with_an_out_of_range_pid_does_not_stop_the_sentinel(
        hcluster: Callable[..., LocalCluster]) -> None:
    cluster = hcluster(workers=0)
    assert cluster.info is not None
    wire = Wire(cluster.info)
    try:
        wire.to_workers(wire.codec.encode(Identify(
            worker_id="odd", slots=1, pid=2**40, host=socket.gethostname())))
        assert wire.worker_replies(wait=5.0)[0].type == "Welcome"
        time.sleep(1.0)  # the loop checks local worker pids every 0.5 s
        with ControlClient(cluster.info, timeout=3) as ctl:
            ctl.ping()
    finally:
        wire.close()


# -- a worker with the wrong key -----------------------------------------------------------

@contextmanager
def wrong_key_worker(settings: Settings, info: ConnectionInfo,
                     tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real worker process whose sentinel.json has the right endpoints but a wrong key."""
    other = load_settings(tmp_path / "wrong-key-home")
    data = info.to_dict()
    data["key"] = "ab" * 32
    write_connection_file(other.connection_file, data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "casparian_nb", "--home", str(other.home), "worker", "--slots", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(other))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_a_worker_with_the_wrong_key_is_refused_and_exits_non_zero(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tracker: ProcessTracker, tmp_path: Path) -> None:
    cluster = hcluster(workers=0, **FAST)
    assert cluster.info is not None
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    with ControlClient(cluster.info) as ctl:
        [job_id] = ctl.submit(fixture_plugin, [str(src)])["job_ids"]
        with wrong_key_worker(settings, cluster.info, tmp_path) as proc:
            out, _ = proc.communicate(timeout=40)
            assert proc.returncode not in (0, None), out
            assert "bad signature" in out, out
            assert ctl.list_workers() == []
        # it never got the job
        assert jobs_by_id(settings, [job_id])[job_id]["status"] == "QUEUED"
    assert log_lines(settings, "worker socket: refused message [AUTH_ERROR]: bad signature")
    assert not tracker.orphans()
    record("auth: wrong-key worker refused", None, checks=1)


def test_a_worker_with_the_wrong_key_says_so_promptly(
        hcluster: Callable[..., LocalCluster], settings: Settings, tmp_path: Path) -> None:
    cluster = hcluster(workers=0, **FAST)
    assert cluster.info is not None
    with wrong_key_worker(settings, cluster.info, tmp_path) as proc:
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
            raise AssertionError(f"still waiting after 5 s: {out}") from None
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    assert "key" in last and "no answer" not in last, last


# -- the worker's own socket (its DEALER to the sentinel) ----------------------------------

class FakeSentinel:
    """A ROUTER posing as the sentinel, with the key of a connection file it writes."""

    def __init__(self, home: Path) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.key = os.urandom(32)
        self.codec = Codec(self.key)
        endpoint = f"tcp://127.0.0.1:{port}"
        write_connection_file(home / "sentinel.json", {
            "control": endpoint, "workers": endpoint, "events": endpoint, "key": self.key,
            "pid": os.getpid(), "home": str(home)})  # our pid: the worker's liveness check
        self.ident = b""

    def recv(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        self.ident = frames[0]
        _, msg = self.codec.decode(frames)
        return msg.type, msgspec.to_builtins(msg.payload)

    def expect_nothing_but_heartbeats(self, seconds: float) -> list[str]:
        seen = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is not None:
                seen.append(got[0])
        return [t for t in seen if t != "Heartbeat"]

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart([self.ident, *frames])

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def test_a_worker_obeys_only_its_sentinels_signature(tmp_path: Path,
                                                     tracker: ProcessTracker) -> None:
    """Forged Welcome, Dispatch and Shutdown (unsigned, wrong key, stale, tampered) are
    dropped with a log line: nothing runs, the worker keeps serving its real sentinel."""
    home = tmp_path / "home"
    settings = load_settings(home, **FAST)
    fake = FakeSentinel(home)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil_plugin.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef parse(path):\n    return None\n")
    src = tmp_path / "in.txt"
    src.write_text("x\n")

    def job(plugin: Path, job_id: str) -> dict[str, Any]:
        return {"job": {"job_id": job_id, "plugin_path": str(plugin), "plugin_name": plugin.stem,
                        "input_file": str(src), "sink": f"parquet://{tmp_path / 'out'}"},
                "attempt": 1}

    def forged(type_: str, payload: dict[str, Any]) -> list[list[bytes]]:
        return [signed(fake.codec, envelope(type_, payload), "unsigned"),
                signed(WRONG_KEY, envelope(type_, payload)),
                signed(fake.codec, envelope(type_, payload, ts=time.time() - 3600)),
                signed(fake.codec, envelope(type_, payload), "tampered"),
                [b"junk", b"more junk"], [MAGIC, b"00", raw(envelope(type_, payload))]]

    proc = subprocess.Popen(
        [sys.executable, "-m", "casparian_nb", "--home", str(home), "worker", "--slots", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(settings))
    try:
        got = fake.recv(30)
        assert got is not None and got[0] == "Identify", got
        welcome = {"worker_id": got[1]["worker_id"], "heartbeat_interval": 0.2}
        dropped = 0
        for frames in forged("Welcome", welcome):
            fake.send(frames)
            dropped += 1
        assert fake.expect_nothing_but_heartbeats(1.0) == []
        assert fake.recv(0.3) is None, "a forged Welcome was accepted"
        fake.send(fake.codec.encode("Welcome", welcome))
        got = fake.recv(5)
        assert got is not None and got[0] == "Heartbeat", got  # the real Welcome was taken
        for frames in forged("Dispatch", job(evil, "666")) + forged("Shutdown", {}):
            fake.send(frames)
            dropped += 1
        assert fake.expect_nothing_but_heartbeats(1.5) == [], "a forged message was obeyed"
        assert not marker.exists() and proc.poll() is None
        fake.send(fake.codec.encode("Dispatch", job(HOSTILE_PLUGIN, "7")))
        types: list[str] = []
        while "Receipt" not in types:
            got = fake.recv(30)
            assert got is not None, f"no receipt; got {types}"
            types.append(got[0])
            if got[0] == "Receipt":
                assert got[1]["status"] == "SUCCESS" and got[1]["job_id"] == "7", got
        fake.send(fake.codec.encode(Shutdown()))
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        fake.close()
    assert not marker.exists()
    logged = out.count("dropped a message from the sentinel") + out.count("refused message")
    assert logged >= dropped - 2, out  # junk: 1 line
    assert not tracker.leftovers(), "the worker left processes behind"
    record("auth: worker drops forged sentinel messages", None, checks=dropped)


# -- the events socket ---------------------------------------------------------------------

def test_the_events_socket_ignores_input_and_subscribers_drop_forged_events(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    info = cluster.info
    wire = Wire(info)
    forged = [signed(WRONG_KEY, envelope("Event", {"name": "JobCompleted", "seq": 1, "data": {}})),
              signed(wire.codec, envelope("Event", {"name": "x", "seq": 1, "data": {}}),
                     "unsigned"),
              [b"\x01job"], [b"\x00job"], [b"\x01" + os.urandom(60)], [os.urandom(100)],
              [b"job", MAGIC, b"", b"{}"]]
    try:
        for frames in forged * 20:
            wire.to_events(frames)
        with ControlClient(info) as ctl, EventSubscriber(info) as events:
            time.sleep(0.3)  # the subscription has to reach the sentinel (slow joiner)
            src = tmp_path / "in.txt"
            src.write_text("events\n")
            ctl.submit(fixture_plugin, [str(src)])
            names: list[str] = []
            deadline = time.monotonic() + 20
            while "JobCompleted" not in names and time.monotonic() < deadline:
                names += [m.payload.name for m in events.poll(0.5) if isinstance(m.payload, Event)]
            assert "JobCompleted" in names, names
            assert events.dropped == 0
            assert ctl.ping()["pid"] == info.pid
    finally:
        wire.close()

    # A subscriber drops whatever it cannot verify, even from its own endpoint.
    ctx: zmq.Context[Any] = zmq.Context()
    rogue = ctx.socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    fake = ConnectionInfo(control="tcp://127.0.0.1:1", workers="tcp://127.0.0.1:1",
                          events=f"tcp://127.0.0.1:{port}", key=info.key, pid=info.pid,
                          home=info.home)
    codec = fake.codec()
    good = codec.encode(Event(name=EventName.JOB_COMPLETED, seq=9, data={}))
    bad = [signed(WRONG_KEY, envelope("Event", {"name": "JobFailed", "seq": 1, "data": {}})),
           signed(codec, envelope("Event", {"name": "JobFailed", "seq": 1, "data": {}}),
                  "unsigned"),
           signed(codec, envelope("Event", {"name": "JobAborted", "seq": 1, "data": {}},
                                  ts=time.time() - 3600)),
           signed(codec, envelope("Event", {"name": "Forged", "seq": 1, "data": {}})),  # no name
           codec.encode(Ping()),  # signed, but not an event
           [b"garbage"]]
    try:
        with EventSubscriber(fake) as sub:
            seen: list[str] = []

            def genuine_arrived() -> bool:
                for frames in bad:
                    rogue.send_multipart([b"job", *frames])
                rogue.send_multipart([b"job", *good])
                seen.extend(m.payload.name for m in sub.poll(0.1)
                            if isinstance(m.payload, Event))
                return "JobCompleted" in seen

            wait_until(genuine_arrived, 10, message="the genuine event")
            assert set(seen) == {"JobCompleted"}, seen
            assert sub.dropped >= len(bad)
    finally:
        ctx.destroy(linger=0)
    record("auth: events socket", None, checks=len(forged) * 20 + len(bad))


# -- files and binding ---------------------------------------------------------------------

def test_key_and_state_files_are_private_even_under_umask_000(tmp_path: Path,
                                                              tracker: ProcessTracker) -> None:
    home = tmp_path / "fresh" / "home"  # does not exist yet: created by the start
    old = os.umask(0)
    try:
        settings = load_settings(home, **FAST)
        cluster = LocalCluster(settings, workers=1, slots=1)
        cluster.start()
    finally:
        os.umask(old)
    assert cluster.info is not None
    try:
        with ControlClient(cluster.info) as ctl:
            src = tmp_path / "in.txt"
            src.write_text("x\n")
            ctl.submit(HOSTILE_PLUGIN, [str(src)])
            wait_until(lambda: ctl.queue_stats()["completed"] == 1, 20, message="the job")
        modes = {p.name: p.stat().st_mode & 0o777 for p in
                 [home, home / "sentinel.json", home / "state.sqlite",
                  *home.glob("state.sqlite-*"), *[home / d for d in
                                                   ("logs", "tapes", "staging", "plugins")]]}
    finally:
        cluster.stop()
    assert modes.pop("home") == 0o700
    for d in ("logs", "tapes", "staging", "plugins"):
        assert modes.pop(d) == 0o700, d
    assert modes and all(m == 0o600 for m in modes.values()), modes
    assert not tracker.leftovers()
    record("auth: 0600 files in a 0700 home", None, checks=len(modes) + 5)


def test_a_readable_connection_file_is_refused(hcluster: Callable[..., LocalCluster],
                                               settings: Settings, fixture_plugin: Path) -> None:
    hcluster(workers=0)
    settings.connection_file.chmod(0o644)
    try:
        with pytest.raises(SentinelError) as info:
            read_connection_file(settings.home)
        assert "lets other users read the sentinel key" in str(info.value)
        assert "\n" not in str(info.value)
        done = cli(settings.home, "submit", str(fixture_plugin), str(fixture_plugin))
        assert done.returncode == 1 and "chmod 600" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
    finally:
        settings.connection_file.chmod(0o600)


def test_job_cancel_names_the_refused_connection_file(hcluster: Callable[..., LocalCluster],
                                                      settings: Settings) -> None:
    hcluster(workers=0)
    settings.connection_file.chmod(0o644)
    try:
        done = cli(settings.home, "job", "cancel", "1")
    finally:
        settings.connection_file.chmod(0o600)
    assert done.returncode == 1 and "chmod 600" in done.stderr, done.stderr


def _listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def test_binding_beyond_loopback_needs_allow_remote_and_warns(
        hcluster: Callable[..., LocalCluster], settings: Settings, home: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(home, bind_host="0.0.0.0")
    assert "allow_remote" in str(refused.value) and "\n" not in str(refused.value)
    done = cli(home, "sentinel", env=cli_env(CASPARIAN_BIND_HOST="0.0.0.0"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("casparian: error: bind_host = '0.0.0.0' is not loopback")
    assert done.stderr.count("\n") == 1 and "allow_remote" in done.stderr

    local = hcluster(workers=0)
    assert local.sentinel is not None
    assert _listening(local.sentinel.pid) == {"127.0.0.1"}
    local.stop()
    remote = hcluster(workers=1, bind_host="0.0.0.0", allow_remote=True)
    assert remote.sentinel is not None
    assert _listening(remote.sentinel.pid) == {"0.0.0.0"}
    assert log_lines(settings, "binding 0.0.0.0: the sentinel is reachable from other machines")
    record("auth: non-loopback bind needs allow_remote", None, checks=4)


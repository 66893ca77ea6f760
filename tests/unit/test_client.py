"""casparian_nb.client against a real ROUTER on 127.0.0.1, plus the connection file."""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from casparian_nb.client import (
    CONNECTION_FILE,
    ConnectionInfo,
    ControlClient,
    EventSubscriber,
    RemoteNotFoundError,
    RemoteRequestError,
    connection_is_live,
    new_key,
    read_connection_file,
    remove_connection_file,
    write_connection_file,
)
from casparian_nb.errors import ControlTimeoutError, SentinelError
from casparian_nb.protocol import (
    MAGIC,
    CancelJob,
    CancelJobs,
    CancelResult,
    Codec,
    ControlRequest,
    ErrorCode,
    Event,
    EventName,
    GetJob,
    GetQueueStats,
    HandlerTable,
    InvalidPayloadError,
    Job,
    Jobs,
    ListJobs,
    ListWorkers,
    Message,
    Ping,
    PluginRegistered,
    Pong,
    QueueStats,
    RegisterPlugin,
    RequestFailed,
    Shutdown,
    ShutdownAck,
    SubmitJobs,
    Submitted,
    WireMessage,
    WorkerInfo,
    Workers,
)

SLOW_JOB, DOUBLE_JOB = 999, 777


def poll_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
    return value


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_info(key: bytes, control: str = "tcp://127.0.0.1:1", events: str = "tcp://127.0.0.1:2",
              pid: int | None = None, started_at: str | None = None) -> ConnectionInfo:  # fmt: skip
    return ConnectionInfo(control=control, workers="tcp://127.0.0.1:3", events=events,
                          key=key.hex(), pid=pid or os.getpid(), home=Path("/tmp/h"),
                          started_at=started_at or _now_iso())  # fmt: skip


@dataclass
class FakeSentinel:
    """A ROUTER in a thread answering like the sentinel; some job ids misbehave on purpose."""

    codec: Codec
    ctx: zmq.Context[Any]
    received: list[Message] = field(default_factory=list)
    endpoint: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def handlers(self) -> dict[type[WireMessage], Any]:
        def get_job(m: Message, routing: list[bytes]) -> Job:
            assert isinstance(m.payload, GetJob)
            if m.payload.job_id == 404:
                raise RequestFailed(ErrorCode.NOT_FOUND, "no job 404")
            if m.payload.job_id == 500:
                raise RequestFailed(ErrorCode.DB_ERROR, "database is locked")
            return Job(job={"id": m.payload.job_id})

        def register(m: Message, routing: list[bytes]) -> WireMessage:
            assert isinstance(m.payload, RegisterPlugin)
            if m.payload.path == "wrong-reply":
                return Pong(pid=1, version="x", uptime_s=0)
            return PluginRegistered(plugin_id=3, name="p", version="1", source_hash="h",
                                    trust="unsigned")

        return {
            Ping: lambda m, r: Pong(pid=os.getpid(), version="test", uptime_s=1.0),
            GetJob: get_job,
            ListJobs: lambda m, r: Jobs(jobs=[{"id": 1}], total=1),
            CancelJob: lambda m, r: CancelResult(success=True, message="Job cancelled",
                                                 state="ABORTED"),
            CancelJobs: lambda m, r: CancelResult(success=True, message="2 job(s)",
                                                  state="MIXED"),
            GetQueueStats: lambda m, r: QueueStats(),
            SubmitJobs: lambda m, r: Submitted(job_ids=[1, 2], skipped=[], submission_id="s1"),
            RegisterPlugin: register,
            ListWorkers: lambda m, r: Workers(workers=[WorkerInfo(
                worker_id="w1", slots=1, pid=1, running=[], last_seen=0.0, free=1)]),
            Shutdown: lambda m, r: ShutdownAck(),
        }  # fmt: skip

    def run(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        table = HandlerTable(self.codec, self.handlers())
        late: list[tuple[float, list[bytes]]] = []
        self._ready.set()
        while not self._stop.is_set():
            for due, frames in [x for x in late if x[0] <= time.monotonic()]:
                late.remove((due, frames))
                sock.send_multipart(frames)
            if not sock.poll(5):
                continue
            frames = sock.recv_multipart()
            try:
                routing, msg = self.codec.decode(frames)
            except Exception:
                msg = None
            if msg is not None:
                self.received.append(msg)
                job_id = msg.payload.job_id if isinstance(msg.payload, GetJob) else None
                if job_id == SLOW_JOB:  # answered after the client gave up
                    late.append((time.monotonic() + 0.3,
                                 table.reply(routing, msg, Job(job={"id": SLOW_JOB}))))
                    continue
                if job_id == DOUBLE_JOB:  # a stray answer to some earlier request first
                    stray = self.codec.encode(Job(job={"id": -1}), reply_to="earlier")
                    sock.send_multipart([*routing, *stray])
                    sock.send_multipart([*routing, MAGIC, b"bad", b"{}"])
            out = table.handle(frames)
            if out:
                sock.send_multipart(out)
        sock.close(linger=0)

    def start(self) -> FakeSentinel:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()


@pytest.fixture
def key() -> bytes:
    return new_key()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def sentinel(key: bytes, ctx: zmq.Context[Any]) -> Iterator[FakeSentinel]:
    s = FakeSentinel(Codec(key, accepts=ControlRequest), ctx).start()
    yield s
    s.stop()


@pytest.fixture
def client(sentinel: FakeSentinel, key: bytes, ctx: zmq.Context[Any]) -> Iterator[ControlClient]:
    with ControlClient(make_info(key, sentinel.endpoint), timeout=2.0, context=ctx) as c:
        yield c


# -- requests --------------------------------------------------------------------------------

def test_convenience_methods(client: ControlClient, sentinel: FakeSentinel, tmp_path: Path) -> None:
    assert client.ping()["version"] == "test"
    assert client.list_jobs("QUEUED", limit=5) == {"jobs": [{"id": 1}], "total": 1}
    assert client.get_job(7) == {"id": 7}
    assert client.cancel_job(7)["state"] == "ABORTED"
    assert client.cancel_jobs([1, 2])["success"] is True
    assert client.cancel_jobs(status="QUEUED")["state"] == "MIXED"
    assert client.queue_stats()["total"] == 0
    out = client.submit(tmp_path / "p.py", [tmp_path / "a.csv", "b.csv"], sink="parquet://o",
                        priority=3, force=True)  # fmt: skip
    assert out["job_ids"] == [1, 2]
    assert client.register_plugin(tmp_path / "p.py")["plugin_id"] == 3
    assert client.list_workers() == [{"worker_id": "w1", "slots": 1, "pid": 1, "running": [],
                                      "last_seen": 0.0, "free": 1}]
    assert client.shutdown() == {}
    sent = {m.type: m.payload for m in sentinel.received}
    assert sent["ListJobs"] == ListJobs(status="QUEUED", limit=5)
    submitted = sent["SubmitJobs"]
    assert isinstance(submitted, SubmitJobs)
    assert submitted.inputs == [str(tmp_path / "a.csv"), "b.csv"]
    assert submitted.priority == 3 and submitted.force is True
    assert submitted.sink == "parquet://o" and submitted.mode is None
    assert sent["CancelJobs"] == CancelJobs(status="QUEUED")
    assert client.list_jobs(submission_id="s1")
    assert sentinel.received[-1].payload == ListJobs(submission_id="s1")


def test_error_replies_raise_with_code(client: ControlClient) -> None:
    with pytest.raises(RemoteNotFoundError) as info:
        client.get_job(404)
    assert isinstance(info.value, LookupError) and isinstance(info.value, SentinelError)
    assert info.value.code == "NOT_FOUND" and str(info.value) == "GetJob failed [NOT_FOUND]: no job 404"
    with pytest.raises(RemoteRequestError) as other:
        client.get_job(500)
    assert not isinstance(other.value, LookupError)
    assert (other.value.code, other.value.remote_message) == ("DB_ERROR", "database is locked")
    again = pickle.loads(pickle.dumps(other.value))
    assert type(again) is RemoteRequestError and str(again) == str(other.value)
    with pytest.raises(SentinelError, match="RegisterPlugin: sentinel answered Pong, expected"):
        client.register_plugin("wrong-reply")
    assert client.ping()  # nothing above broke the socket


def test_timeout_then_fresh_socket(client: ControlClient, sentinel: FakeSentinel) -> None:
    with pytest.raises(ControlTimeoutError) as info:
        client.request(GetJob(job_id=SLOW_JOB), timeout=0.1)
    assert str(info.value) == f"sentinel at {client.address} did not answer GetJob within 0.1 s"
    assert isinstance(info.value, TimeoutError) and client.resets == 1
    t0 = time.monotonic()
    assert client.get_job(1) == {"id": 1}  # fresh socket; the old one never delivers
    time.sleep(max(0.0, 0.45 - (time.monotonic() - t0)))  # the late reply has been sent now
    assert client.get_job(2) == {"id": 2}
    assert client.ping()["pid"] == os.getpid()


def test_stray_replies_are_discarded(client: ControlClient) -> None:
    assert client.get_job(DOUBLE_JOB) == {"id": DOUBLE_JOB}
    assert client.discarded == 2 and client.resets == 0


def test_no_sentinel_and_dead_pid(key: bytes, ctx: zmq.Context[Any]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = make_info(key, "tcp://127.0.0.1:9", pid=dead.pid)
    with ControlClient(info, timeout=0.05, context=ctx) as c:
        with pytest.raises(ControlTimeoutError, match=rf"within 0.1 s \(its process {dead.pid} is not running\)$"):
            c.ping()
        with pytest.raises(ControlTimeoutError):
            c.ping()
        assert c.resets == 2


def test_wrong_key_is_reported(sentinel: FakeSentinel, ctx: zmq.Context[Any]) -> None:
    with ControlClient(make_info(new_key(), sentinel.endpoint), timeout=0.3, context=ctx) as c:
        with pytest.raises(ControlTimeoutError, match="1 reply\\(ies\\) failed the signature check"):
            c.ping()


def test_invalid_request_is_refused_before_sending(client: ControlClient,
                                                   sentinel: FakeSentinel) -> None:  # fmt: skip
    client.ping()
    before = len(sentinel.received)
    with pytest.raises(InvalidPayloadError, match="GetJob: payload is not JSON"):
        client.request(GetJob(job_id=object()))  # type: ignore[arg-type]
    client.ping()
    assert len(sentinel.received) == before + 1


def test_threads_share_one_client(client: ControlClient) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                assert client.get_job(n * 1000 + i) == {"id": n * 1000 + i}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and client.discarded == 0


def test_close(client: ControlClient) -> None:
    client.close()
    client.close()
    assert client.closed and "closed" in repr(client)
    with pytest.raises(SentinelError, match="is closed"):
        client.ping()


def test_ping_round_trip_latency(client: ControlClient, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(200):
        client.ping()
    samples = []
    for _ in range(2000):
        t0 = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    with capsys.disabled():
        print(f"\n[control] Ping round trip over tcp loopback (in-process ROUTER thread): "
              f"p50 {p50:.0f} us, p99 {p99:.0f} us, n={len(samples)}")  # fmt: skip
    assert p50 < 5000  # generous: shared CI machines; the goal (<= 1 ms) is printed above


# -- events ----------------------------------------------------------------------------------

def test_event_subscriber(key: bytes, ctx: zmq.Context[Any]) -> None:
    codec = Codec(key)

    def event(topic: bytes, name: str, seq: int, data: dict[str, Any]) -> list[bytes]:
        return [topic, *codec.encode(Event(name=EventName(name), seq=seq, data=data))]

    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    info = make_info(key, events=pub.getsockopt_string(zmq.LAST_ENDPOINT))
    with EventSubscriber(info, context=ctx) as sub, \
            EventSubscriber(info, topics=(b"worker",), context=ctx) as workers:  # fmt: skip
        def hello() -> list[Message]:  # PUB drops messages until the subscription arrives
            pub.send_multipart(event(b"job", "JobStarted", 0, {}))
            return sub.poll(0.01)

        assert poll_until(hello)[0].payload == Event(name=EventName.JOB_STARTED, seq=0, data={})
        poll_until(lambda: not sub.poll(0.01))
        pub.send_multipart([b"job", MAGIC, b"bad-signature", b"{}"])
        pub.send_multipart([b"job", b"garbage"])
        pub.send_multipart([b"job", *codec.encode(Ping())])
        pub.send_multipart([b"job", *Codec(new_key()).encode(
            Event(name=EventName.JOB_QUEUED, seq=1, data={}))])
        pub.send_multipart(event(b"job", "JobQueued", 1, {"job_id": 5}))
        pub.send_multipart(event(b"worker", "WorkerJoined", 2, {}))
        got: list[Message] = []

        def collect() -> bool:
            got.extend(sub.poll(0.05))
            return len(got) >= 2

        poll_until(collect)
        assert [m.payload.name for m in got] == ["JobQueued", "WorkerJoined"]
        assert got[0].payload.data == {"job_id": 5}
        assert sub.dropped == 4
        worker_events = poll_until(lambda: workers.poll(0.05))
        assert [m.payload.name for m in worker_events] == ["WorkerJoined"]
        assert workers.dropped == 0  # the filter ran in ZMQ: job messages never arrived
    pub.close(linger=0)


# -- connection file -------------------------------------------------------------------------

def _info_dict(key: bytes, home: Path) -> dict[str, Any]:
    return {"control": "tcp://127.0.0.1:5556", "workers": "tcp://127.0.0.1:5555",
            "events": "tcp://127.0.0.1:5557", "key": key, "pid": os.getpid(), "home": home,
            "casparian_version": "0.1.0"}  # fmt: skip


def test_connection_file_round_trip(tmp_path: Path, key: bytes) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        path = write_connection_file(tmp_path / CONNECTION_FILE, _info_dict(key, tmp_path))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [CONNECTION_FILE]  # no temp file left
    data = json.loads(path.read_text())
    assert data["key"] == key.hex() and data["version"] == 1 and data["started_at"].endswith("Z")
    info = read_connection_file(tmp_path)
    assert info.key_bytes == key and info.pid == os.getpid() and info.path == path
    assert info.control == "tcp://127.0.0.1:5556" and info.home == tmp_path
    assert key.hex() not in repr(info)
    assert read_connection_file(path) == info  # a file path works too
    assert connection_is_live(info)
    write_connection_file(path, replace(info, pid=1234))  # atomic overwrite, still 0600
    assert read_connection_file(tmp_path).pid == 1234 and path.stat().st_mode & 0o777 == 0o600


def test_readable_connection_file_is_refused(tmp_path: Path, key: bytes) -> None:
    path = write_connection_file(tmp_path / CONNECTION_FILE, _info_dict(key, tmp_path))
    path.chmod(0o644)
    with pytest.raises(SentinelError) as info:
        read_connection_file(tmp_path)
    assert str(info.value) == (
        f"refusing {path}: mode 0644 lets other users read the sentinel key; it must be 0600 "
        f"(chmod 600 {path}, or restart the sentinel)"
    )


def test_missing_and_corrupt_connection_file(tmp_path: Path) -> None:
    with pytest.raises(SentinelError) as info:
        read_connection_file(tmp_path)
    assert str(info.value) == (
        f"no sentinel is running for home {tmp_path} (no sentinel.json); start one with "
        "`casparian start` or cf.start()"
    )
    path = tmp_path / CONNECTION_FILE
    for content, reason in [("{nope", "Expecting property name"), ("[]", "not a JSON object"),
                            ('{"control": "x"}', "missing workers, events, key, pid, home"),
                            (json.dumps({**_info_dict(b"", tmp_path), "key": "zz",
                                         "home": "h"}), "non-hexadecimal"),
                            (json.dumps({**_info_dict(b"", tmp_path), "key": "ab",
                                         "home": "h"}), "key shorter than 16 bytes")]:  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, content.encode())
        os.close(fd)
        with pytest.raises(SentinelError, match=f"{path} is corrupt .*{reason}") as info:
            read_connection_file(tmp_path)
        assert "\n" not in str(info.value)


def test_connection_is_live(key: bytes) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert connection_is_live(make_info(key))
    assert not connection_is_live(make_info(key, pid=dead.pid))
    # Our pid, but the file claims a start before this process existed: the pid was reused.
    assert not connection_is_live(make_info(key, started_at="2001-01-01T00:00:00Z"))
    assert not connection_is_live(replace(make_info(key), pid=0))


def test_remove_connection_file(tmp_path: Path, key: bytes) -> None:
    path = write_connection_file(tmp_path / CONNECTION_FILE, _info_dict(key, tmp_path))
    assert not remove_connection_file(path, pid=os.getpid() + 1) and path.exists()
    assert remove_connection_file(path, pid=os.getpid()) and not path.exists()
    assert not remove_connection_file(path)


def test_new_key() -> None:
    a, b = new_key(), new_key()
    assert len(a) == 32 and a != b

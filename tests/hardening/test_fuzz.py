"""Hostile input to a REAL sentinel (issue 7 §2), property-based with hypothesis.

Random frames, random JSON, envelopes with every field of every type mistyped, unknown and
misplaced request types, bad signatures, stale and future timestamps, messages over
``max_message_bytes``: to the control socket (each must be answered with an ``Error`` —
``AUTH_ERROR`` whenever the signature or the timestamp is wrong — never echoing an
unauthenticated request id), to the worker socket (dropped or ``Refused``; never a
``Welcome``) and to the events socket. After every batch the sentinel answers ``Ping``, the
queue (``GetQueueStats`` + ``ListJobs``) and the worker table are unchanged, and at the end
the one real worker still runs a new job. At least ``CASPARIAN_FUZZ_MESSAGES`` messages
(2000 by default) are sent; the count goes into the results table.

Signed messages that would legitimately change the state (a valid ``SubmitJobs``,
``CancelJob(s)``, ``RegisterPlugin``, ``Shutdown``, a valid worker ``Identify``) are made
schema-invalid before sending: the fuzzer holds the key, and an authenticated peer may of
course submit or cancel. A signed ``Identify`` with an out-of-range pid is a routed bug (see
test_auth.py).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casparian_nb.client import ControlClient
from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import (
    MAGIC,
    MESSAGE_TYPES,
    REPLY_FOR,
    Goodbye,
    Heartbeat,
    ProtocolError,
    SignatureError,
)
from tests.conftest import wait_until
from tests.hardening.harness import FAST, FUZZ_MESSAGES, record, wait_final
from tests.hardening.wire import Wire, envelope, fields_of, is_valid, reply_code, signed

#: Small, so that "over the limit" costs little to send.
MAX_BYTES = 64 * 1024
MUTATING = {"SubmitJobs", "CancelJob", "CancelJobs", "RegisterPlugin", "Shutdown"}
AUTH_FAILURES = ("unsigned", "wrong-key", "tampered", "truncated", "upper")

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16))
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)
known_types = sorted(MESSAGE_TYPES)
#: Request name -> the name of its reply.
REPLY_NAMES = {request.__name__: reply.__name__ for request, reply in REPLY_FOR.items()}
any_type = st.integers(0, 3).flatmap(
    lambda i: st.text(max_size=12) if i == 0 else st.sampled_from(known_types))
#: What a worker the sentinel knows may send (Identify and Goodbye would change the table).
WORKER_TYPES = ["Heartbeat", "JobStarted", "Receipt"]


def _well_typed(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of type ``t`` (enums: a member, or any short text)."""
    if isinstance(t, mi.UnionType):
        return st.one_of(*[_well_typed(u) for u in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.StrType):
        return st.text(max_size=20)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.EnumType):
        return st.sampled_from([m.value for m in t.cls]) | st.text(max_size=10)
    if isinstance(t, mi.DictType):
        return st.dictionaries(st.text(max_size=8), _well_typed(t.value_type), max_size=3)
    if isinstance(t, mi.ListType):
        return st.lists(_well_typed(t.item_type), max_size=3)
    if isinstance(t, mi.StructType):
        return st.fixed_dictionaries({f.encode_name: _well_typed(f.type) | json_values
                                      for f in t.fields})
    return json_scalars  # Any


@st.composite
def payloads(draw: st.DrawFn, type_: str) -> Any:
    cls = MESSAGE_TYPES.get(type_)
    if cls is None or draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # anything at all, not even an object
    out: dict[str, Any] = {}
    for f in fields_of(cls):
        choice = draw(st.integers(0, 7))
        if choice == 0:
            continue  # missing
        out[f.encode_name] = draw(json_values) if choice == 1 else draw(_well_typed(f.type))
    if draw(st.booleans()):
        out.update(draw(st.dictionaries(st.text(max_size=8), json_scalars, max_size=2)))
    return out


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """(body, how it is signed, what the timestamp is)."""
    type_ = draw(any_type)
    body = envelope(type_, draw(payloads(type_)))
    for key in ("v", "id", "reply_to", "type", "payload"):
        if draw(st.integers(0, 30)) == 0:
            body[key] = draw(json_values)  # a mistyped envelope field
    if draw(st.integers(0, 20)) == 0:
        body.pop(draw(st.sampled_from(sorted(body))))
    ts = draw(st.sampled_from(["now"] * 12 + ["stale", "future", "garbage"]))
    how = draw(st.sampled_from(["ok"] * 10 + list(AUTH_FAILURES)))
    return body, how, ts


@st.composite
def worker_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """Worker messages with random payloads, from a worker the sentinel knows."""
    type_ = draw(st.sampled_from(WORKER_TYPES))
    body = envelope(type_, draw(payloads(type_)))
    if isinstance(body["payload"], dict) and draw(st.booleans()):
        body["payload"]["worker_id"] = "fuzz-worker"
    return body, "ok", "now"


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["body"] * 6 + ["json", "frames", "frames", "big"]))
    if kind == "body":
        return kind, draw(bodies())
    if kind == "json":  # signed, well-formed JSON that is not an envelope (or not even JSON)
        return kind, (draw(json_values), draw(st.sampled_from(["ok", "ok", "unsigned"])))
    if kind == "frames":
        frames = draw(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
        if draw(st.booleans()):
            frames.insert(draw(st.integers(0, len(frames))), MAGIC)
        return kind, frames
    # several frames, each under the socket cap, together over the codec's cap
    return kind, draw(st.integers(2, 4))


class Fuzzer:
    """Sends generated messages and checks every answer and the state after each batch."""

    def __init__(self, wire: Wire, client: ControlClient) -> None:
        self.wire = wire
        self.client = client
        self.codec = wire.codec
        self.baseline = self.snapshot()
        self.refused = 0

    def snapshot(self) -> tuple[Any, ...]:
        jobs = self.client.list_jobs(limit=10_000)
        rows = sorted((j["id"], j["status"], j["attempt"], j["retry_count"], j.get("rows"))
                      for j in jobs["jobs"])
        workers = sorted(w["worker_id"] for w in self.client.list_workers())
        return self.client.queue_stats(), rows, jobs["total"], workers

    def frames(self, socket: str, kind: str, item: Any) -> tuple[list[bytes], str | None]:
        """The frames to send and the error code the control socket must answer with (None:
        any Error, or the proper reply of a valid read-only request)."""
        if kind == "frames":
            return list(item), None
        if kind == "big":
            chunk = b"x" * (MAX_BYTES // 2 + 1)
            return [MAGIC, b"0" * 64, *[chunk] * item], "TOO_LARGE"
        if kind == "json":
            value, how = item
            try:
                body = _json_bytes(value)
            except ValueError:
                body = b"\xff not json"
            return signed(self.codec, body, how), ("AUTH_ERROR" if how != "ok" else None)
        body, how, ts = item
        if ts == "stale":
            body["ts"] = time.time() - 10_000
        elif ts == "future":
            body["ts"] = time.time() + 10_000
        elif ts == "garbage":
            body["ts"] = "yesterday"
        if how == "ok":
            self.defang(socket, body)
            _no_paths(body)
        frames = signed(self.codec, _json_bytes(body), how)
        if how != "ok":  # the signature is checked before anything in the body
            return frames, "AUTH_ERROR"
        if ts in ("stale", "future"):
            # Refused as stale only once everything checked before the clock is fine.
            try:
                self.codec.decode([b"peer", *frames])
            except SignatureError:
                return frames, "AUTH_ERROR"
            except ProtocolError:
                pass
        return frames, None

    def defang(self, socket: str, body: dict[str, Any]) -> None:
        """A signed message that would really change the state is made schema-invalid."""
        type_ = body.get("type")
        dangerous = MUTATING if socket == "control" else {"Identify"}
        if not isinstance(type_, str) or type_ not in dangerous:
            return
        payload = body.get("payload", {})
        if payload is None:  # the codec reads a null payload as {}
            payload = body["payload"] = {}
        cls = MESSAGE_TYPES[type_]
        if isinstance(payload, dict) and is_valid(cls, payload):
            if fields_of(cls):
                payload[fields_of(cls)[0].encode_name] = {"not": "valid"}
            else:
                body["type"] = f"{type_}!"  # Shutdown has no fields: make it unknown

    def control(self, kind: str, item: Any) -> None:
        frames, code = self.frames("control", kind, item)
        msg = self.wire.ask(frames)
        if code is None:
            if reply_code(msg) is None:
                request = _type_of(frames)
                assert request in REPLY_NAMES and request not in MUTATING, (request, msg.type)
                assert msg.type == REPLY_NAMES[request], (request, msg.type)
            return
        assert reply_code(msg) == code, (kind, code, msg.payload)
        if code == "AUTH_ERROR" and frames[-2:-1] != [self.codec.sign(frames[-1])]:
            assert msg.reply_to is None, "an unauthenticated request id was echoed"

    def known(self, kind: str, item: Any) -> None:
        """As the identified worker: a random Heartbeat, JobStarted or Receipt."""
        frames, _ = self.frames("known", "body", item)
        self.wire.as_known(frames)

    def workers(self, kind: str, item: Any) -> None:
        frames, _ = self.frames("workers", kind, item)
        self.wire.to_workers(frames)

    def events(self, kind: str, item: Any) -> None:
        frames, _ = self.frames("events", kind, item)
        self.wire.to_events(frames)

    def check(self) -> None:
        self.wire.known.send_multipart(self.codec.encode(Heartbeat(  # (not counted)
            worker_id="fuzz-worker", active_job_ids=[], free_slots=1)))
        for reply in self.wire.known_replies():  # no Dispatch: nothing is queued
            assert reply.type in ("Refused",), f"the identified worker got {reply.type}"
        for reply in self.wire.worker_replies(wait=0.005):
            assert reply.type == "Refused", f"the worker socket answered {reply.type}"
            self.refused += 1
        assert self.client.ping(timeout=5.0)["pid"] == self.wire.info.pid
        assert self.snapshot() == self.baseline, "hostile input changed the queue"


def _no_paths(body: dict[str, Any]) -> None:
    """A receipt's ``staged`` names directories the committer removes: never let a random
    one name a real directory of this machine."""
    payload = body.get("payload")
    if isinstance(payload, dict) and "staged" in payload:
        payload["staged"] = {"job_id": "0", "sink": "parquet:///nonexistent-fuzz",
                             "staging_dir": "/nonexistent-fuzz/staging", "outputs": []}


def _json_bytes(value: Any) -> bytes:
    import json

    try:
        return json.dumps(value).encode()  # NaN / Infinity stay in (allow_nan): refused
    except (ValueError, TypeError, RecursionError):
        return b'{"unencodable": true}'


def _type_of(frames: list[bytes]) -> str:
    import json

    try:
        return str(json.loads(frames[-1]).get("type"))
    except Exception:
        return "?"


def test_fuzz_the_control_worker_and_event_sockets_of_a_real_sentinel(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=1, max_message_bytes=MAX_BYTES, **FAST)
    assert cluster.info is not None
    files = [tmp_path / f"in_{i}.txt" for i in range(4)]
    for i, f in enumerate(files):
        f.write_text(("mode=error\n" if i == 3 else "") + f"file {i}\n")
    with ControlClient(cluster.info, timeout=10) as client:
        ids = client.submit(fixture_plugin, [str(f) for f in files],
                            sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        wait_final(settings, ids)
        wire = Wire(cluster.info)
        wire.identify()
        fuzz = Fuzzer(wire, client)
        started = time.monotonic()
        try:
            _run(fuzz, FUZZ_MESSAGES)
            for endpoint in (cluster.info.control, cluster.info.workers, cluster.info.events):
                wire.huge(endpoint, MAX_BYTES + 1)  # ZMQ drops these connections
                fuzz.check()
            elapsed = time.monotonic() - started
            tried = sum(wire.sent.values())
            wire.known.send_multipart(wire.codec.encode(Goodbye(worker_id="fuzz-worker")))
            wait_until(lambda: len(client.list_workers()) == 1, 10, message="the fake to leave")
        finally:
            wire.close()
        assert tried >= FUZZ_MESSAGES
        # the one real worker is unharmed: a new job runs to completion on it
        new = tmp_path / "after.txt"
        new.write_text(f"after the fuzz {uuid.uuid4().hex}\n")
        job = client.submit(fixture_plugin, [str(new)], sink=f"parquet://{tmp_path / 'out'}")
        assert wait_final(settings, job["job_ids"])[job["job_ids"][0]]["status"] == "COMPLETED"
    assert cluster.alive()
    log = (settings.logs_dir / "sentinel.log").read_text(errors="replace")
    assert "control: refused message" in log and "worker socket: refused message" in log
    record("fuzz: control+worker+events sockets", None, messages=tried,
           by_socket=dict(wire.sent), replies=dict(wire.replies), refused=fuzz.refused,
           seconds=round(elapsed, 1), serving=True)
    print(f"\nfuzzer: {tried} messages in {elapsed:.1f}s: sent {dict(wire.sent)}, "
          f"control replies {dict(wire.replies)}, worker-socket Refused {fuzz.refused}")


def _run(fuzz: Fuzzer, target: int) -> None:
    """Run the property in rounds until ``target`` messages went to control + workers."""
    socket_names = ["control"] * 5 + ["workers"] * 2 + ["known", "events"]
    one = st.sampled_from(socket_names).flatmap(lambda s: st.tuples(st.just(s), (
        st.tuples(st.just("body"), worker_bodies()) if s == "known" else messages())))

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(one, min_size=1, max_size=25))
    def batch(items: list[tuple[str, tuple[str, Any]]]) -> None:
        for socket, (kind, item) in items:
            getattr(fuzz, socket)(kind, item)
        fuzz.check()

    rounds = 0
    while sum(fuzz.wire.sent.values()) < target:
        batch()
        rounds += 1
        assert rounds < 1000, "the fuzzer makes no progress"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_numbers_never_reach_a_handler(hcluster: Callable[..., LocalCluster],
                                                  value: float) -> None:
    """NaN/Infinity are valid Python JSON but defeat every range check: refused at decode."""
    cluster = hcluster(workers=0)
    assert cluster.info is not None
    wire = Wire(cluster.info)
    try:
        for type_, payload in (("ListJobs", {"limit": value}), ("GetJob", {"job_id": value}),
                               ("Ping", {}),):
            body = envelope(type_, payload, ts=value if type_ == "Ping" else time.time())
            msg = wire.ask(signed(wire.codec, _json_bytes(body)))
            assert reply_code(msg) == "PARSE_ERROR", msg
    finally:
        wire.close()


def test_a_flood_of_unauthenticated_junk_does_not_flood_the_sentinel_log(
        hcluster: Callable[..., LocalCluster], settings: Settings) -> None:
    cluster = hcluster(workers=0)
    assert cluster.info is not None
    log = settings.logs_dir / "sentinel.log"
    before = log.read_text().count("\n")
    wire = Wire(cluster.info)
    try:
        for _ in range(1000):
            wire.ask([MAGIC, b"", b"{}"])  # unsigned: AUTH_ERROR (rate-limited log line)
            wire.to_workers([b"junk", b"junk"])
        wire.worker_replies(wait=0.5)
    finally:
        wire.close()
    grown = log.read_text().count("\n") - before
    assert grown <= 100, f"2000 junk messages added {grown} lines to {log}"
    assert "control: refused message" in log.read_text()  # logged, just not each one
    # Each line goes to one file: sentinel.out (the process's stderr, under LocalCluster)
    # does not repeat sentinel.log.
    out = (settings.logs_dir / "sentinel.out").read_text(errors="replace")
    assert "refused message" not in out, out[-2000:]

"""casparian_nb.protocol: round trips, every refusal with its one-line reason, a fuzzer."""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casparian_nb.errors import (
    AuthenticationError,
    ConfigError,
    PluginError,
    ProtocolError,
    TransientError,
)
from casparian_nb.protocol import (
    MAGIC,
    MAX_DEPTH,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REPLY_FOR,
    Codec,
    ControlReply,
    ControlRequest,
    Dispatch,
    Error,
    ErrorCode,
    ErrorInfo,
    ErrorKind,
    Event,
    EventMessage,
    EventName,
    GetJob,
    Goodbye,
    HandlerTable,
    InvalidPayloadError,
    Job,
    JobSpec,
    Message,
    MessageTooLargeError,
    Ping,
    Pong,
    Receipt,
    RequestFailed,
    SentinelMessage,
    Shutdown,
    SignatureError,
    StaleMessageError,
    UnknownMessageTypeError,
    WireError,
    WireMessage,
    WorkerMessage,
    error_code,
    error_info,
    error_reply,
)
from tests.hardening.wire import fields_of, sample_payload

KEY = b"k" * 32


def signed(codec: Codec, body: bytes, *routing: bytes) -> list[bytes]:
    return [*routing, MAGIC, codec.sign(body), body]


def envelope(type_: str = "Ping", payload: Any = None, **over: Any) -> bytes:
    obj = {"v": PROTOCOL_VERSION, "type": type_, "id": uuid.uuid4().hex, "ts": time.time(),
           "reply_to": None, "payload": {} if payload is None else payload}  # fmt: skip
    obj.update(over)
    return json.dumps(obj).encode()


def refusal(codec: Codec, frames: Any) -> WireError:
    with pytest.raises(WireError) as info:
        codec.decode(frames)
    text = str(info.value)
    assert "\n" not in text and 0 < len(text) <= 200, text
    return info.value


@pytest.fixture
def codec() -> Codec:
    return Codec(KEY)


# -- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("full", [False, True], ids=["required", "all-fields"])
@pytest.mark.parametrize("type_", sorted(MESSAGE_TYPES))
def test_round_trip_every_type(codec: Codec, type_: str, full: bool) -> None:
    cls = MESSAGE_TYPES[type_]
    payload = sample_payload(cls, full)
    frames = codec.encode(type_, payload, reply_to="abc")
    assert len(frames) == 3 and frames[0] == MAGIC
    routing, msg = codec.decode([b"peer", b"", *frames])
    assert routing == [b"peer", b""]
    assert type(msg.payload) is cls and msg.type == type_
    assert msg.payload == msgspec.convert(payload, cls)
    assert msgspec.convert(msgspec.to_builtins(msg.payload), cls) == msg.payload
    assert msg.reply_to == "abc"
    assert len(msg.id) == 32 and abs(msg.ts - time.time()) < 5
    reply = cls in get_args(ControlReply)
    assert msg.status == (("error" if type_ == "Error" else "ok") if reply else None)
    # the Struct itself encodes to the same message
    assert codec.decode(codec.encode(msg.payload))[1].payload == msg.payload


def test_every_socket_union_is_in_the_catalogue() -> None:
    unions = (ControlRequest, ControlReply, WorkerMessage, SentinelMessage, EventMessage)
    members = {cls for union in unions for cls in get_args(union)}
    assert members == set(MESSAGE_TYPES.values())
    assert all(MESSAGE_TYPES[cls.__name__] is cls for cls in members)
    assert set(REPLY_FOR) == set(get_args(ControlRequest))
    assert set(REPLY_FOR.values()) | {Error} == set(get_args(ControlReply))


def test_every_message_of_a_socket_has_its_handler(settings: Any) -> None:
    """The sentinel's control and worker tables and the worker's own table serve exactly the
    unions their codecs accept: no message decodes only to find no handler."""
    from pathlib import Path

    from casparian_nb.client import ConnectionInfo
    from casparian_nb.sentinel._control import ControlHandlers
    from casparian_nb.sentinel._workers import WorkerHandlers
    from casparian_nb.worker.supervisor import Worker

    assert set(ControlHandlers()._control_handlers()) == set(get_args(ControlRequest))
    assert set(WorkerHandlers()._worker_handlers()) == set(get_args(WorkerMessage))
    info = ConnectionInfo(control="tcp://127.0.0.1:1", workers="tcp://127.0.0.1:2",
                          events="tcp://127.0.0.1:3", key=KEY.hex(), pid=1, home=Path("/h"))
    worker = Worker(settings, info=info, slots=1)
    assert set(worker.table.handlers) == set(get_args(SentinelMessage))
    assert worker.codec.catalogue.accepts == {c.__name__ for c in get_args(SentinelMessage)}


def test_a_socket_codec_decodes_only_its_messages() -> None:
    sentinel_side = Codec(KEY, accepts=ControlRequest)
    sentinel_side.decode(Codec(KEY).encode(GetJob(job_id=1)))
    for other in (Goodbye(worker_id="w"), Pong(pid=1, version="v", uptime_s=0.0)):
        exc = refusal(sentinel_side, Codec(KEY).encode(other, msg_id="m"))
        assert isinstance(exc, UnknownMessageTypeError) and exc.request_id == "m"
        assert str(exc) == f"message type '{type(other).__name__}' does not belong on this socket"
    # Shutdown travels on two sockets
    Codec(KEY, accepts=SentinelMessage).decode(Codec(KEY).encode(Shutdown()))


def test_body_layout_and_signature(codec: Codec) -> None:
    _, sig, body = codec.encode(GetJob(job_id=7), msg_id="m1")
    obj = json.loads(body)
    assert set(obj) == {"v", "type", "id", "ts", "reply_to", "payload"}
    assert (obj["v"], obj["type"], obj["id"], obj["payload"]) == (1, "GetJob", "m1", {"job_id": 7})
    import hashlib
    import hmac

    assert sig == hmac.new(KEY, MAGIC + body, hashlib.sha256).hexdigest().encode()
    assert json.loads(codec.encode(Pong(pid=1, version="1", uptime_s=0))[2])["status"] == "ok"
    assert json.loads(codec.encode(Error(code=ErrorCode.INTERNAL, message="m"))[2])[
        "status"] == "error"  # fmt: skip


def test_unknown_fields_are_ignored_and_payload_may_be_omitted(codec: Codec) -> None:
    _, msg = codec.decode(codec.encode("GetJob", {"job_id": 1, "extra": [1]}))
    assert msg.payload == GetJob(job_id=1)  # a newer peer's extra field costs nothing
    for body in (envelope("Ping").replace(b'"payload": {}', b'"payload": null'),
                 envelope("Ping").replace(b', "payload": {}', b"")):
        assert b"{}" not in body
        _, msg = codec.decode(signed(codec, body))
        assert msg.payload == Ping()  # the original sends unit variants without a payload


def test_events_carry_topic_as_routing(codec: Codec) -> None:
    event = Event(name=EventName.JOB_QUEUED, seq=3, data={"job_id": 1})
    topic, msg = codec.decode([b"job", *codec.encode(event)])
    assert topic == [b"job"] and msg.payload == event
    assert isinstance(msg.payload, Event) and msg.payload.name is EventName.JOB_QUEUED


def test_a_job_spec_travels_unchanged(codec: Codec) -> None:
    spec = JobSpec(job_id="7", input_file="/in/ä \udcff.csv", plugin_path="/p.py",
                   plugin_name="orders", plugin_name_declared=True, sink="parquet:///o",
                   timeout_s=2.5)
    _, msg = codec.decode(codec.encode(Dispatch(job=spec, attempt=2)))
    assert isinstance(msg.payload, Dispatch)
    assert msg.payload.job == spec and msg.payload.attempt == 2


def test_error_replies_are_made_in_one_place() -> None:
    err = error_reply(RequestFailed(ErrorCode.NOT_FOUND, "no job\n42"))
    assert err == Error(code=ErrorCode.NOT_FOUND, message="no job 42")
    assert len(error_reply(SignatureError("x" * 5000)).message) == 1000
    internal = error_reply(RuntimeError("kaboom"), "GetJob")
    assert internal == Error(code=ErrorCode.INTERNAL,
                             message="internal error in GetJob: RuntimeError: kaboom")
    assert error_reply(ValueError()).message == "internal error in request: ValueError: ValueError"
    with pytest.raises(ValueError, match="'NOPE' is not a valid ErrorCode"):
        RequestFailed("NOPE", "x")


def test_non_finite_floats_travel_as_null(codec: Codec) -> None:
    """JSON has no NaN: msgspec writes null, so a float field is refused by the receiver and
    free-form data reads back None (as the tape writer does)."""
    _, msg = codec.decode(codec.encode(Job(job={"x": float("nan")})))
    assert msg.payload == Job(job={"x": None})
    bad = refusal(codec, codec.encode(Pong(pid=1, version="v", uptime_s=float("inf"))))
    assert isinstance(bad, InvalidPayloadError) and "`$.payload.uptime_s`" in str(bad)


# -- encode refusals -------------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "payload", "message"), [
    ("SubmitJobs", {"plugin": "p", "inputs": "a.csv"},
     "SubmitJobs: Expected `array`, got `str` - at `$.payload.inputs`"),
    ("SubmitJobs", {"plugin": "p", "inputs": ["a", 3]},
     "SubmitJobs: Expected `str`, got `int` - at `$.payload.inputs[1]`"),
    ("SubmitJobs", {"inputs": []},
     "SubmitJobs: Object missing required field `plugin` - at `$.payload`"),
    ("SubmitJobs", {"plugin": "p", "inputs": [], "force": 1},
     "SubmitJobs: Expected `bool`, got `int` - at `$.payload.force`"),
    ("GetJob", {"job_id": True}, "GetJob: Expected `int`, got `bool` - at `$.payload.job_id`"),
    ("GetJob", {"job_id": 1.0}, "GetJob: Expected `int`, got `float` - at `$.payload.job_id`"),
    ("GetJob", {"job_id": 2**63},
     "GetJob: Expected `int` <= 9223372036854775807 - at `$.payload.job_id`"),
    ("GetJob", {"job_id": -(2**63) - 1},
     "GetJob: Expected `int` >= -9223372036854775808 - at `$.payload.job_id`"),
    ("GetJob", {"job_id": None}, "GetJob: Expected `int`, got `null` - at `$.payload.job_id`"),
    ("SubmitJobs", {"plugin": "p", "inputs": [], "timeout": True},
     "SubmitJobs: Expected `float | null`, got `bool` - at `$.payload.timeout`"),
    ("Receipt", {"job_id": "1", "status": "DONE"},
     "Receipt: Invalid enum value 'DONE' - at `$.payload.status`"),
    ("Receipt", {"job_id": "1", "status": "FAILED", "error": {"ename": "E"}},
     "Receipt: Object missing required field `evalue` - at `$.payload.error`"),
    ("Receipt", {"job_id": "1", "status": "FAILED", "error": {"ename": "E", "evalue": "v",
                                                              "kind": "fatal"}},
     "Receipt: Invalid enum value 'fatal' - at `$.payload.error.kind`"),
    ("Dispatch", {"job": {"job_id": 1}, "attempt": 1},
     "Dispatch: Expected `str`, got `int` - at `$.payload.job.job_id`"),
    ("Jobs", {"jobs": [{}, 1], "total": 1},
     "Jobs: Expected `object`, got `int` - at `$.payload.jobs[1]`"),
    ("Event", {"name": "Nope", "seq": 1, "data": {}},
     "Event: Invalid enum value 'Nope' - at `$.payload.name`"),
])  # fmt: skip
def test_invalid_payloads_name_type_and_field(codec: Codec, type_: str, payload: dict[str, Any],
                                              message: str) -> None:  # fmt: skip
    with pytest.raises(InvalidPayloadError) as info:
        codec.encode(type_, payload)
    assert str(info.value) == message
    # The receiver says the same, with the id so the error reply can be matched.
    body = envelope(type_, payload, id="req-1")
    if type_ in ("Jobs",):
        body = envelope(type_, payload, id="req-1", status="ok")
    exc = refusal(codec, signed(codec, body))
    assert isinstance(exc, InvalidPayloadError) and str(exc) == message
    assert exc.code == "INVALID_REQUEST" and exc.request_id == "req-1"


def test_encode_refuses_unknown_types_non_json_and_oversize() -> None:
    codec = Codec(KEY, max_bytes=4096)
    with pytest.raises(UnknownMessageTypeError, match="unknown message type 'Nope'"):
        codec.encode("Nope")

    class Nope(WireMessage):
        pass

    with pytest.raises(UnknownMessageTypeError, match="unknown message type 'Nope'"):
        codec.encode(Nope())
    with pytest.raises(InvalidPayloadError, match="Job: payload is not JSON"):
        codec.encode(Job(job={"when": object()}))
    with pytest.raises(InvalidPayloadError, match="Job: payload is not JSON"):
        codec.encode(Job(job={"when": object(), "path": "\udcff"}))
    with pytest.raises(MessageTooLargeError, match="exceeds the 4096 byte limit"):
        codec.encode("RegisterPlugin", {"path": "x" * 5000})


def test_short_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Codec(b"")


# -- decode refusals -------------------------------------------------------------------------

def test_missing_magic_and_frame_count(codec: Codec) -> None:
    good = codec.encode("Ping")
    assert "no CF1 frame" in str(refusal(codec, [b"id", b"CF2", *good[1:]]))
    assert "no CF1 frame" in str(refusal(codec, []))
    assert "got 1" in str(refusal(codec, [b"id", MAGIC, good[2]]))
    assert "got 3" in str(refusal(codec, [*good, b"extra"]))
    assert "too many frames" in str(refusal(codec, [b""] * 17 + good))
    assert "frame 0 is str" in str(refusal(codec, ["CF1", *good[1:]]))
    assert "expected a list of frames" in str(refusal(codec, b"".join(good)))
    exc = refusal(codec, [b"id", b"garbage"])
    assert exc.code == "PARSE_ERROR" and exc.routing == [] and exc.request_id is None


def test_signatures(codec: Codec) -> None:
    magic, sig, body = codec.encode("Ping")
    for frames, text in [
        ([magic, b"", body], "message is not signed"),
        ([magic, sig[:-1] + b"0" if sig[-1:] != b"0" else sig[:-1] + b"1", body], "bad signature"),
        ([magic, sig, body + b" "], "bad signature"),
        ([magic, sig.upper(), body], "bad signature"),
        (Codec(b"z" * 32).encode("Ping"), "bad signature"),
    ]:
        exc = refusal(codec, [b"peer", *frames])
        assert isinstance(exc, SignatureError) and isinstance(exc, AuthenticationError)
        assert text in str(exc) and exc.code == "AUTH_ERROR"
        assert exc.routing == [b"peer"] and exc.request_id is None  # nothing echoed unverified


def test_stale_and_future_timestamps(codec: Codec) -> None:
    stale = refusal(codec, codec.encode("Ping", ts=time.time() - 301, msg_id="old"))
    assert isinstance(stale, StaleMessageError) and isinstance(stale, AuthenticationError)
    assert "stale message: sent 301 s ago" in str(stale)
    assert stale.request_id == "old"
    future = refusal(codec, codec.encode("Ping", ts=time.time() + 400))
    assert isinstance(future, StaleMessageError) and "400 s in the future" in str(future)
    codec.decode(codec.encode("Ping", ts=time.time() - 299))
    Codec(KEY, max_age=None).decode(codec.encode("Ping", ts=0.0))  # replaying recorded traffic


def test_unknown_type_keeps_request_id(codec: Codec) -> None:
    exc = refusal(codec, signed(codec, envelope("Frobnicate", id="r9"), b"peer"))
    assert isinstance(exc, UnknownMessageTypeError) and exc.code == "UNKNOWN_TYPE"
    assert str(exc) == "unknown message type 'Frobnicate'"
    assert exc.request_id == "r9" and exc.routing == [b"peer"]
    long = refusal(codec, signed(codec, envelope("X" * 10_000)))
    assert len(str(long)) < 120


@pytest.mark.parametrize(("body", "text"), [
    (b"\xff\xfe{}", "body is not JSON"),
    (b"{not json", "body is not JSON"),
    (b"", "body is not JSON"),
    (b"[1, 2]", "body must be a JSON object, got list"),
    (b'"text"', "body must be a JSON object, got string"),
    (b"null", "body must be a JSON object, got null"),
    (b'{"v": NaN}', "NaN is not allowed"),
    (b'{"v": 1, "ts": Infinity}', "Infinity is not allowed"),
    (b'{"v": 1, "ts": 1e400}', "out of range"),
    (b'{"v": 1, "ts": 1' + b"0" * 400 + b"}", "'ts' is out of range"),
    (b'{"v": 1, "ts": "now"}', "'ts' must be a number, got string"),
    (b'{"v": 1, "ts": true}', "'ts' must be a number, got boolean"),
    (b'{"v": 2}', "unsupported protocol version 2 (this build speaks 1)"),
    (b'{"v": true}', "unsupported protocol version True"),
    (b'{"type": "Ping"}', "unsupported protocol version None"),
    (b'{"v": ' + b"9" * 5000 + b"}", "body is not JSON"),
])  # fmt: skip
def test_bad_bodies(codec: Codec, body: bytes, text: str) -> None:
    exc = refusal(codec, signed(codec, body))
    assert text in str(exc) and not isinstance(exc, AuthenticationError)


@pytest.mark.parametrize(("over", "text"), [
    ({"id": ""}, "'id' must be a non-empty string, got string"),
    ({"id": 5}, "'id' must be a non-empty string, got integer"),
    ({"reply_to": []}, "'reply_to' must be a string or null, got list"),
    ({"type": None}, "'type' must be a string, got null"),
    ({"payload": [1]}, "Ping: payload must be an object, got list"),
])  # fmt: skip
def test_bad_envelope_fields(codec: Codec, over: dict[str, Any], text: str) -> None:
    assert str(refusal(codec, signed(codec, envelope("Ping", **over)))) == text


def test_reply_status_is_checked(codec: Codec) -> None:
    pong = {"pid": 1, "version": "v", "uptime_s": 0}
    assert "'status' must be 'ok', got None" in str(refusal(codec, signed(codec, envelope("Pong", pong))))
    err = {"code": "INTERNAL", "message": "m"}
    assert "must be 'error'" in str(refusal(codec, signed(codec, envelope("Error", err, status="ok"))))
    _, msg = codec.decode(signed(codec, envelope("Ping", status="weird")))
    assert msg.status is None  # requests carry no status; an extra key is ignored


def test_nesting_is_capped(codec: Codec) -> None:
    def nested(n: int) -> bytes:
        return envelope("Ping", {"x": "__X__"}).replace(b'"__X__"', b"[" * n + b"]" * n)

    codec.decode(signed(codec, nested(MAX_DEPTH - 3)))  # body, payload, x: 3 levels above
    assert f"nests deeper than {MAX_DEPTH}" in str(refusal(codec, signed(codec, nested(MAX_DEPTH))))
    assert "nests too deeply" in str(refusal(codec, signed(codec, nested(100_000))))


def test_size_is_checked_before_hashing_or_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec(KEY, max_bytes=1 << 20)
    body = b"[" * (2 << 20)  # would be a RecursionError, and a 2 MiB HMAC, if it got that far

    def boom(*a: Any) -> bytes:
        raise AssertionError("hashed an oversized message")

    monkeypatch.setattr(codec, "sign", boom)
    exc = refusal(codec, [b"id", MAGIC, b"0" * 64, body])
    assert isinstance(exc, MessageTooLargeError) and exc.code == "TOO_LARGE"
    assert str(exc) == f"message of {len(body) + 69} bytes exceeds the 1048576 byte limit"
    exc = refusal(codec, [b"id", MAGIC, b"0" * 64, memoryview(body)])
    assert isinstance(exc, MessageTooLargeError)


def test_error_code_mapping() -> None:
    from casparian_nb.errors import SchemaVersionError

    assert error_code(MessageTooLargeError("x")) is ErrorCode.TOO_LARGE
    assert error_code(SignatureError("x")) is ErrorCode.AUTH_ERROR
    assert error_code(AuthenticationError("x")) is ErrorCode.AUTH_ERROR
    assert error_code(ProtocolError("x")) is ErrorCode.INVALID_REQUEST
    assert error_code(PluginError("x")) is ErrorCode.INVALID_REQUEST  # what the request named
    assert error_code(SchemaVersionError("x")) is ErrorCode.DB_ERROR
    assert error_code(RequestFailed("NOT_FOUND", "x")) is ErrorCode.NOT_FOUND
    assert error_code(KeyError("x")) is ErrorCode.INTERNAL
    assert error_code(ValueError("x")) is ErrorCode.INTERNAL
    failed = pickle.loads(pickle.dumps(RequestFailed(ErrorCode.DB_ERROR, "locked")))
    assert (failed.code, str(failed)) == (ErrorCode.DB_ERROR, "locked")


def test_error_info() -> None:
    try:
        raise TransientError("disk busy")
    except TransientError as exc:
        info = error_info(exc)
    assert info.ename == "TransientError" and info.kind is ErrorKind.TRANSIENT
    assert "disk busy" in info.traceback
    big = error_info(ValueError("v" * 50_000), limit=1000)
    assert big.kind is ErrorKind.PERMANENT and len(big.evalue) == 1000
    assert big.traceback.startswith("[... ") and len(big.traceback) < 1100
    codec = Codec(KEY)
    receipt = Receipt(job_id="1", status="FAILED", error=big)  # type: ignore[arg-type]
    assert codec.decode(codec.encode(receipt))[1].payload == receipt
    assert isinstance(receipt.error, ErrorInfo)


# -- serving ---------------------------------------------------------------------------------

def _table(codec: Codec, **kw: Any) -> HandlerTable:
    def get_job(msg: Message, routing: list[bytes]) -> WireMessage:
        assert isinstance(msg.payload, GetJob)
        job_id = msg.payload.job_id
        if job_id == 404:
            raise RequestFailed(ErrorCode.NOT_FOUND, "no job 404")
        if job_id == 500:
            raise RuntimeError("kaboom")
        if job_id == 501:
            return Job(job={"when": object()})  # a reply the protocol refuses: our bug
        if job_id == 502:
            raise PluginError("no such plugin")
        return Job(job={"id": job_id})

    return HandlerTable(codec, {Ping: lambda m, r: None, GetJob: get_job}, **kw)


def _answer(codec: Codec, out: list[bytes] | None) -> tuple[list[bytes], Message]:
    assert out is not None
    return codec.decode(out)


def test_handler_table_outcomes(codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    table = _table(codec)
    req = codec.encode(GetJob(job_id=1), msg_id="a")
    routing, msg = _answer(codec, table.handle([b"peer", *req]))
    assert routing == [b"peer"] and (msg.payload, msg.reply_to) == (Job(job={"id": 1}), "a")
    assert table.handle([b"peer", *codec.encode(Ping())]) is None
    cases = [
        (404, ErrorCode.NOT_FOUND, "no job 404"),
        (500, ErrorCode.INTERNAL, "internal error in GetJob: RuntimeError: kaboom"),
        (501, ErrorCode.INTERNAL, "internal error in GetJob: Job: payload is not JSON"),
        (502, ErrorCode.INVALID_REQUEST, "no such plugin"),
    ]
    with caplog.at_level(logging.ERROR):
        for job_id, code, text in cases:
            _, msg = _answer(codec, table.handle([b"p", *codec.encode(GetJob(job_id=job_id),
                                                                       msg_id="b")]))
            assert isinstance(msg.payload, Error) and msg.reply_to == "b"
            assert msg.payload.code is code and msg.payload.message.startswith(text)
    assert "kaboom" in caplog.text  # INTERNAL errors are logged with their traceback
    _, msg = _answer(codec, table.handle([b"p", *codec.encode(Shutdown(), msg_id="c")]))
    assert msg.payload == Error(code=ErrorCode.UNKNOWN_TYPE,
                                message="no handler for 'Shutdown' on the control socket")
    assert table.counts == {"ok": 2, "NOT_FOUND": 1, "INTERNAL": 2, "INVALID_REQUEST": 1,
                            "UNKNOWN_TYPE": 1}


def test_handler_table_answers_bad_input_without_raising(codec: Codec) -> None:
    table = _table(codec)

    def code(out: list[bytes] | None) -> tuple[ErrorCode, str | None]:
        _, msg = _answer(codec, out)
        assert isinstance(msg.payload, Error)
        return msg.payload.code, msg.reply_to

    assert code(table.handle([b"peer", b"hello"])) == (ErrorCode.PARSE_ERROR, None)
    intruder = Codec(b"i" * 32).encode(GetJob(job_id=1), msg_id="x")
    routing, msg = _answer(codec, table.handle([b"peer", *intruder]))
    assert routing == [b"peer"] and msg.payload == error_reply(SignatureError(
        "bad signature (is the key from the current sentinel.json?)")) and msg.reply_to is None
    assert code(table.handle([b"peer", *codec.encode(GetJob(job_id=1))[:2]]))[0] \
        is ErrorCode.PARSE_ERROR
    bad = signed(codec, envelope("GetJob", {"job_id": "1"}, id="q"), b"peer")
    assert code(table.handle(bad)) == (ErrorCode.INVALID_REQUEST, "q")
    assert table.handle([]) is None and table.handle("junk") is None  # type: ignore[arg-type]
    quiet = _table(codec, refusal=None)
    assert quiet.handle([b"peer", b"hello"]) is None
    assert quiet.handle([b"p", *codec.encode(GetJob(job_id=404))]) is None


def test_handler_table_refusal_turns_errors_into_another_message(codec: Codec) -> None:
    """The worker socket answers what it refuses with Refused{reason}."""
    from casparian_nb.protocol import Refused

    table = _table(codec, refusal=lambda e: Refused(reason=e.message))
    _, msg = _answer(codec, table.handle([b"peer", b"hello"]))
    assert isinstance(msg.payload, Refused) and "no CF1 frame" in msg.payload.reason


def test_bad_message_logging_is_rate_limited(codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    table = _table(codec, log_burst=3, log_interval=3600)
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            table.handle([b"peer", b"junk"])
    assert len(caplog.records) == 3 and table.counts["PARSE_ERROR"] == 50
    table.limiter._window -= 7200  # next window: the suppressed count is reported once
    with caplog.at_level(logging.WARNING):
        table.handle([b"peer", b"junk"])
    assert "47 more bad messages not logged" in caplog.text


# -- fuzzing ---------------------------------------------------------------------------------

_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-(2**300), 2**300)
         | st.floats() | st.text(max_size=12))  # fmt: skip
_json = st.recursive(
    _leaf, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=16,
)
FUZZ_CODEC = Codec(KEY, max_bytes=16_384)


@st.composite
def _envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A signed-looking envelope: mostly right, with random fields swapped for random JSON."""
    type_ = draw(st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=8))
    cls = MESSAGE_TYPES.get(type_)
    payload: Any = sample_payload(cls, draw(st.booleans())) if cls else {}
    if cls and fields_of(cls) and draw(st.booleans()):
        victim = draw(st.sampled_from(fields_of(cls))).encode_name
        payload[victim] = draw(_json)  # one field of the wrong type (or, rarely, right)
    if draw(st.integers(0, 9)) == 0:
        payload = draw(_json)
    obj = {"v": 1, "type": type_, "id": uuid.uuid4().hex,
           "ts": time.time() + draw(st.just(0.0) | st.floats(-400, 400)), "reply_to": None,
           "payload": payload,
           "status": draw(st.sampled_from(["ok", "error"]))}  # fmt: skip
    mutate = draw(st.integers(0, 3)) == 0  # mostly leave the envelope alone: reach validation
    for key in draw(st.lists(st.sampled_from(sorted(obj)), max_size=2)) if mutate else ():
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(_json)
    return obj


@st.composite
def _fuzz_frames(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    routing = draw(st.lists(st.binary(max_size=8), max_size=2))
    if kind == 0:  # raw frames, sometimes with the magic frame somewhere
        return draw(st.lists(st.binary(max_size=64) | st.just(MAGIC), max_size=6))
    if kind == 1:  # wrong Python types where frames belong
        return draw(st.lists(st.binary() | st.text() | st.integers() | st.none(), max_size=4)
                    | st.text() | st.none() | st.integers())  # fmt: skip
    if kind == 2:  # random bytes or JSON, validly signed
        body = draw(st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
    elif kind <= 7:  # envelopes with wrong types inside, validly signed
        body = json.dumps(draw(_envelopes())).encode()
    elif kind == 8:  # deep nesting, validly signed
        n = draw(st.integers(1, 6000))
        body = b'{"v":1,"type":"Ping","payload":{"x":' + b"[" * n + b"]" * n + b"}}"
    else:  # oversized
        body = b"{" * draw(st.integers(16_385, 20_000))
    sig = FUZZ_CODEC.sign(body) if draw(st.integers(0, 9)) else draw(st.binary(max_size=70))
    return [*routing, MAGIC, sig, body]


def test_decode_fuzz_raises_only_protocol_errors(capsys: pytest.CaptureFixture[str]) -> None:
    table = HandlerTable(FUZZ_CODEC, {Ping: lambda m, r: Pong(pid=1, version="0", uptime_s=0.0)})
    table.logger = logging.getLogger("fuzz-quiet")
    table.logger.disabled = True
    seen: dict[str, int] = {}

    @settings(max_examples=2500, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_fuzz_frames())
    def check(frames: Any) -> None:
        try:
            _, msg = FUZZ_CODEC.decode(frames)
            outcome = "accepted"
            assert MESSAGE_TYPES[msg.type] is type(msg.payload)
        except ProtocolError as exc:
            assert isinstance(exc, WireError), type(exc)
            text = str(exc)
            assert "\n" not in text and len(text) <= 200, text
            assert not text.startswith("malformed message"), text  # the fallback never fires
            outcome = exc.code
        seen[outcome] = seen.get(outcome, 0) + 1
        out = table.handle(frames)  # the serving loop survives the same input
        if out is not None:
            FUZZ_CODEC.decode(out)  # and every answer is itself a valid, signed message

    check()
    total = sum(seen.values())
    with capsys.disabled():
        print(f"\n[protocol fuzz] {total} random messages decoded: "
              + ", ".join(f"{k}={v}" for k, v in sorted(seen.items())))  # fmt: skip
    assert total >= 2000
    assert {"accepted", "PARSE_ERROR", "AUTH_ERROR", "INVALID_REQUEST", "UNKNOWN_TYPE",
            "TOO_LARGE"} <= set(seen)  # fmt: skip

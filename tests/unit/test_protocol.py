"""casparian_nb.protocol: round trips, every refusal with its one-line reason, a fuzzer."""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casparian_nb._schemas import FieldSpec
from casparian_nb.errors import AuthenticationError, ConfigError, ProtocolError, TransientError
from casparian_nb.protocol import (
    ERROR_CODES,
    MAGIC,
    MAX_DEPTH,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REPLY_FOR,
    Codec,
    HandlerTable,
    InvalidPayloadError,
    Message,
    MessageTooLargeError,
    RequestFailed,
    SignatureError,
    UnknownMessageTypeError,
    WireError,
    error_code,
    error_info,
    error_reply,
    event_frames,
    reply,
)

KEY = b"k" * 32
_SAMPLES: dict[str, Any] = {
    "str": "x/ä/\udcff", "int": 2**63 - 1, "float": 1.5, "bool": False, "dict": {"a": [1, {}]},
    "list[str]": ["a", "b"], "list[int]": [1, -2], "list[dict]": [{"k": None}],
}  # fmt: skip


def sample(fields: tuple[FieldSpec, ...], full: bool) -> dict[str, Any]:
    """A valid payload: required fields only, or every field."""
    out: dict[str, Any] = {}
    for f in fields:
        if not (f.required or full):
            continue
        if f.base == "enum":
            out[f.name] = f.choices[-1]
        elif f.base == "obj":
            out[f.name] = sample(f.nested, full)
        else:
            out[f.name] = _SAMPLES[f.base]
    return out


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
    payload = sample(MESSAGE_TYPES[type_].fields, full)
    frames = codec.encode(type_, payload, reply_to="abc")
    assert len(frames) == 3 and frames[0] == MAGIC
    routing, msg = codec.decode([b"peer", b"", *frames])
    assert routing == [b"peer", b""]
    assert (msg.type, msg.payload, msg.reply_to) == (type_, payload, "abc")
    assert len(msg.id) == 32 and abs(msg.ts - time.time()) < 5
    kind = MESSAGE_TYPES[type_].kind
    assert msg.status == (("error" if type_ == "Error" else "ok") if kind == "reply" else None)


def test_body_layout_and_signature(codec: Codec) -> None:
    _, sig, body = codec.encode("GetJob", {"job_id": 7}, msg_id="m1")
    obj = json.loads(body)
    assert set(obj) == {"v", "type", "id", "ts", "reply_to", "payload"}
    assert (obj["v"], obj["id"], obj["payload"]) == (1, "m1", {"job_id": 7})
    import hashlib
    import hmac

    assert sig == hmac.new(KEY, MAGIC + body, hashlib.sha256).hexdigest().encode()
    assert json.loads(codec.encode("Pong", {"pid": 1, "version": "1", "uptime_s": 0})[2])[
        "status"] == "ok"  # fmt: skip


def test_unknown_fields_are_kept_and_payload_may_be_omitted(codec: Codec) -> None:
    _, msg = codec.decode(codec.encode("GetJob", {"job_id": 1, "extra": [1]}))
    assert msg.payload == {"job_id": 1, "extra": [1]}
    for body in (envelope("Ping").replace(b'"payload": {}', b'"payload": null'),
                 envelope("Ping").replace(b', "payload": {}', b"")):
        assert b"{}" not in body
        _, msg = codec.decode(signed(codec, body))
        assert msg.payload == {}  # the original sends unit variants without a payload


def test_event_frames_carry_topic_as_routing(codec: Codec) -> None:
    frames = event_frames(codec, b"job", "JobQueued", 3, {"job_id": 1})
    topic, msg = codec.decode(frames)
    assert topic == [b"job"]
    assert msg.payload == {"name": "JobQueued", "seq": 3, "data": {"job_id": 1}}


def test_reply_helpers_set_reply_to_and_status(codec: Codec) -> None:
    _, req = codec.decode(codec.encode("Ping"))
    out = reply(codec, req, "Pong", {"pid": 1, "version": "0", "uptime_s": 1.0}, routing=[b"r"])
    routing, msg = codec.decode(out)
    assert routing == [b"r"] and msg.reply_to == req.id and msg.status == "ok"
    routing, err = codec.decode(error_reply(codec, req, "NOT_FOUND", "no job\n42", routing=[b"r"]))
    assert (err.type, err.status, err.reply_to) == ("Error", "error", req.id)
    assert err.payload == {"code": "NOT_FOUND", "message": "no job 42"}
    _, err = codec.decode(error_reply(codec, None, "AUTH_ERROR", "x" * 5000))
    assert err.reply_to is None and len(err.payload["message"]) == 1000
    with pytest.raises(InvalidPayloadError, match="unknown error code"):
        error_reply(codec, req, "NOPE", "x")


def test_status_argument_is_checked(codec: Codec) -> None:
    codec.encode("Error", {"code": "INTERNAL", "message": "m"}, status="error")
    with pytest.raises(InvalidPayloadError, match="status 'ok' does not fit"):
        codec.encode("Error", {"code": "INTERNAL", "message": "m"}, status="ok")
    with pytest.raises(InvalidPayloadError):
        codec.encode("Ping", status="ok")


# -- encode refusals -------------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "payload", "message"), [
    ("SubmitJobs", {"plugin": "p", "inputs": "a.csv"},
     "SubmitJobs: field 'inputs' must be a list of strings, got string"),
    ("SubmitJobs", {"plugin": "p", "inputs": ["a", 3]},
     "SubmitJobs: field 'inputs' must be a list of strings (item 1 is integer)"),
    ("SubmitJobs", {"inputs": []}, "SubmitJobs: missing required field 'plugin'"),
    ("SubmitJobs", {"plugin": "p", "inputs": [], "force": 1},
     "SubmitJobs: field 'force' must be a boolean, got integer"),
    ("GetJob", {"job_id": True}, "GetJob: field 'job_id' must be an integer, got boolean"),
    ("GetJob", {"job_id": 1.0}, "GetJob: field 'job_id' must be an integer, got number"),
    ("GetJob", {"job_id": 2**63}, "GetJob: field 'job_id' must be an integer, got integer"),
    ("GetJob", {"job_id": None}, "GetJob: field 'job_id' must be an integer, got null"),
    ("SubmitJobs", {"plugin": "p", "inputs": [], "timeout": True},
     "SubmitJobs: field 'timeout' must be a number, got boolean"),
    ("Receipt", {"job_id": "1", "status": "DONE"},
     "Receipt: field 'status' must be one of 'SUCCESS', 'FAILED', 'ABORTED', 'REJECTED', "
     "got 'DONE'"),
    ("Receipt", {"job_id": "1", "status": "FAILED", "error": {"ename": "E", "evalue": "v"}},
     "Receipt: missing required field 'error.kind'"),
    ("Dispatch", {"job": {"job_id": 1}}, "Dispatch: field 'job.job_id' must be a string, got integer"),
    ("Jobs", {"jobs": [{}, 1], "total": 1},
     "Jobs: field 'jobs' must be a list of objects (item 1 is integer)"),
])  # fmt: skip
def test_invalid_payloads_name_type_and_field(codec: Codec, type_: str, payload: dict[str, Any],
                                              message: str) -> None:  # fmt: skip
    with pytest.raises(InvalidPayloadError) as info:
        codec.encode(type_, payload)
    assert str(info.value) == message
    # The receiver says the same, with the id so the error reply can be matched.
    body = envelope(type_, payload, id="req-1")
    if MESSAGE_TYPES[type_].kind == "reply":
        body = envelope(type_, payload, id="req-1", status="error" if type_ == "Error" else "ok")
    exc = refusal(codec, signed(codec, body))
    assert isinstance(exc, InvalidPayloadError) and str(exc) == message
    assert exc.code == "INVALID_REQUEST" and exc.request_id == "req-1"


def test_encode_refuses_unknown_types_non_json_and_oversize() -> None:
    codec = Codec(KEY, max_bytes=4096)
    with pytest.raises(UnknownMessageTypeError, match="unknown message type 'Nope'"):
        codec.encode("Nope")
    with pytest.raises(InvalidPayloadError, match="Job: payload is not JSON"):
        codec.encode("Job", {"job": {"when": object()}})
    with pytest.raises(InvalidPayloadError, match="not JSON"):
        codec.encode("Job", {"job": {"x": float("nan")}})
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
    assert isinstance(stale, AuthenticationError) and "stale message: sent 301 s ago" in str(stale)
    assert stale.request_id == "old"
    future = refusal(codec, codec.encode("Ping", ts=time.time() + 400))
    assert isinstance(future, AuthenticationError) and "400 s in the future" in str(future)
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

    assert error_code(MessageTooLargeError("x")) == "TOO_LARGE"
    assert error_code(SignatureError("x")) == "AUTH_ERROR"
    assert error_code(AuthenticationError("x")) == "AUTH_ERROR"
    assert error_code(ProtocolError("x")) == "INVALID_REQUEST"
    assert error_code(SchemaVersionError("x")) == "DB_ERROR"
    assert error_code(RequestFailed("NOT_FOUND", "x")) == "NOT_FOUND"
    assert error_code(KeyError("x")) == "INTERNAL"
    assert set(ERROR_CODES) >= {"PARSE_ERROR", "TOO_LARGE", "NOT_FOUND"}
    assert set(REPLY_FOR) == {n for n, s in MESSAGE_TYPES.items() if s.kind == "request"}
    failed = pickle.loads(pickle.dumps(RequestFailed("DB_ERROR", "locked")))
    assert (failed.code, str(failed)) == ("DB_ERROR", "locked")


def test_error_info() -> None:
    try:
        raise TransientError("disk busy")
    except TransientError as exc:
        info = error_info(exc)
    assert info["ename"] == "TransientError" and info["kind"] == "transient"
    assert "disk busy" in info["traceback"]
    big = error_info(ValueError("v" * 50_000), limit=1000)
    assert big["kind"] == "permanent" and len(big["evalue"]) == 1000
    assert big["traceback"].startswith("[... ") and len(big["traceback"]) < 1100
    Codec(KEY).encode("Receipt", {"job_id": "1", "status": "FAILED", "error": big})


# -- serving ---------------------------------------------------------------------------------

def _table(codec: Codec, **kw: Any) -> HandlerTable:
    def get_job(msg: Message) -> tuple[str, dict[str, Any]]:
        job_id = msg.payload["job_id"]
        if job_id == 404:
            raise RequestFailed("NOT_FOUND", "no job 404")
        if job_id == 500:
            raise RuntimeError("kaboom")
        if job_id == 501:
            return ("Job", {"job": "not a dict"})
        return ("Job", {"job": {"id": job_id}})

    return HandlerTable(codec, {"Ping": lambda m: None, "GetJob": get_job}, **kw)


def _answer(codec: Codec, out: list[bytes] | None) -> tuple[list[bytes], Message]:
    assert out is not None
    return codec.decode(out)


def test_handler_table_outcomes(codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    table = _table(codec)
    req = codec.encode("GetJob", {"job_id": 1}, msg_id="a")
    routing, msg = _answer(codec, table.handle([b"peer", *req]))
    assert routing == [b"peer"] and (msg.type, msg.reply_to, msg.payload) == ("Job", "a", {"job": {"id": 1}})
    assert table.handle([b"peer", *codec.encode("Ping")]) is None
    cases = [
        ({"job_id": 404}, "NOT_FOUND", "no job 404"),
        ({"job_id": 500}, "INTERNAL", "internal error in GetJob: RuntimeError: kaboom"),
        ({"job_id": 501}, "INTERNAL", "internal error in GetJob: Job: field 'job'"),
    ]
    with caplog.at_level(logging.ERROR):
        for payload, code, text in cases:
            _, msg = _answer(codec, table.handle([b"p", *codec.encode("GetJob", payload, msg_id="b")]))
            assert (msg.type, msg.reply_to, msg.payload["code"]) == ("Error", "b", code)
            assert msg.payload["message"].startswith(text)
    assert "kaboom" in caplog.text  # INTERNAL errors are logged with their traceback
    _, msg = _answer(codec, table.handle([b"p", *codec.encode("Shutdown", msg_id="c")]))
    assert msg.payload == {"code": "UNKNOWN_TYPE",
                           "message": "no handler for 'Shutdown' on the control socket"}
    assert table.counts == {"ok": 2, "NOT_FOUND": 1, "INTERNAL": 2, "UNKNOWN_TYPE": 1}


def test_handler_table_answers_bad_input_without_raising(codec: Codec) -> None:
    table = _table(codec)
    _, msg = _answer(codec, table.handle([b"peer", b"hello"]))
    assert msg.payload["code"] == "PARSE_ERROR" and msg.reply_to is None
    intruder = Codec(b"i" * 32).encode("GetJob", {"job_id": 1}, msg_id="x")
    routing, msg = _answer(codec, table.handle([b"peer", *intruder]))
    assert routing == [b"peer"] and msg.payload["code"] == "AUTH_ERROR" and msg.reply_to is None
    _, msg = _answer(codec, table.handle([b"peer", *codec.encode("GetJob", {"job_id": 1})[:2]]))
    assert msg.payload["code"] == "PARSE_ERROR"
    bad = signed(codec, envelope("GetJob", {"job_id": "1"}, id="q"), b"peer")
    _, msg = _answer(codec, table.handle(bad))
    assert (msg.payload["code"], msg.reply_to) == ("INVALID_REQUEST", "q")
    assert table.handle([]) is None and table.handle("junk") is None  # type: ignore[arg-type]
    quiet = _table(codec, reply_errors=False)
    assert quiet.handle([b"peer", b"hello"]) is None
    assert quiet.handle([b"p", *codec.encode("GetJob", {"job_id": 404})]) is None


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
    spec = MESSAGE_TYPES.get(type_)
    payload: Any = sample(spec.fields, draw(st.booleans())) if spec else {}
    if spec and spec.fields and draw(st.booleans()):
        victim = draw(st.sampled_from(spec.fields)).name
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
    table = HandlerTable(FUZZ_CODEC, {"Ping": lambda m: ("Pong", {"pid": 1, "version": "0",
                                                                   "uptime_s": 0.0})})  # fmt: skip
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
            assert msg.type in MESSAGE_TYPES
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

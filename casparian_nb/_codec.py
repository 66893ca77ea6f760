"""Framing, signing and decoding of wire messages (re-exported by :mod:`casparian_nb.protocol`).

Knows the envelope, not the messages: :class:`casparian_nb.protocol.Codec` gives it the
catalogue of payload Structs. Import from ``casparian_nb.protocol``, not from here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, TypeAlias, TypeVar, cast

import msgspec

from .errors import AuthenticationError, ConfigError, ProtocolError

PROTOCOL_VERSION: Final = 1
MAGIC: Final = b"CF1"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_AGE: Final = 300.0
#: Deepest JSON nesting accepted (the body object is level 1). Real payloads need ~6; the cap
#: keeps a hostile body from reaching code that recurses (json.dumps, the store, widgets).
MAX_DEPTH: Final = 32
#: More frames than this is never a real message (routing adds one or two).
MAX_FRAMES: Final = 16
_MAX_ID_LEN: Final = 128
P = TypeVar("P")


#: Ids and counts go straight into SQLite, which stores signed 64-bit integers at most.
Int64: TypeAlias = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class WireMessage(msgspec.Struct, kw_only=True):
    """Base of every payload: the envelope's ``type`` is the class name. Unknown payload keys
    are ignored, so a newer peer may add optional fields without breaking an older one."""



def one_line(text: object, limit: int = 80) -> str:
    """``text`` on one line, cut to ``limit`` characters, for error messages about input."""
    s = " ".join(str(text)[: limit * 4].split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class ErrorCode(StrEnum):
    """The ``code`` of an ``Error`` reply; :func:`error_code` picks it from the exception."""

    PARSE_ERROR = "PARSE_ERROR"
    AUTH_ERROR = "AUTH_ERROR"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_FOUND = "NOT_FOUND"
    DB_ERROR = "DB_ERROR"
    INTERNAL = "INTERNAL"
    TOO_LARGE = "TOO_LARGE"


class WireError(ProtocolError):
    """A message that cannot be accepted. ``code`` is the ``Error`` reply code to answer with;
    ``routing`` the frames before the magic frame (to address that reply); ``request_id`` the
    message id once the signature has been verified (so the reply can carry ``reply_to``)."""

    code: ErrorCode = ErrorCode.PARSE_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.routing: list[bytes] = []
        self.request_id: str | None = None


class MessageTooLargeError(WireError):
    """The frames exceed the codec's ``max_bytes``."""

    code = ErrorCode.TOO_LARGE


class UnknownMessageTypeError(WireError):
    """A well-formed, signed message of a type this build does not know."""

    code = ErrorCode.UNKNOWN_TYPE


class InvalidPayloadError(WireError):
    """A payload that does not match its type's schema."""

    code = ErrorCode.INVALID_REQUEST


class SignatureError(WireError, AuthenticationError):
    """Missing or wrong signature, or a timestamp outside the accepted window (F14)."""

    code = ErrorCode.AUTH_ERROR


class StaleMessageError(SignatureError):
    """Correctly signed, but its timestamp is outside the accepted window: the clocks of
    sender and receiver disagree (or it is a replay)."""


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    for py, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                     (list, "list"), (tuple, "list"), (dict, "object")):  # fmt: skip
        if isinstance(value, py):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    """A short repr of untrusted JSON: scalars cut to a few dozen characters, containers by
    type only (repr of a 60 MiB list is not an error message)."""
    if isinstance(value, str):
        return one_line(repr(value[:100]))
    if value is None or isinstance(value, int | float):
        return one_line(repr(value), 40)
    return json_type(value)


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")  # NaN/Infinity defeat every range check


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {one_line(text, 20)} is out of range")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    # Level by level, iterative: never recurse on hostile input (JSON gives exact dicts/lists).
    level = [value]
    for _ in range(limit):
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        if not below:
            return False
        level = below
    return True


@dataclass(frozen=True)
class Catalogue:
    """The message types a codec knows (``types``: envelope ``type`` -> payload Struct), which
    of them it decodes (``accepts``; None: all), and the envelope ``status`` each one needs
    (``status``: "ok"/"error" for control replies, None for every other message)."""

    types: Mapping[str, type[WireMessage]]
    status: Callable[[str], str | None]
    accepts: frozenset[str] | None = None


class _Envelope(msgspec.Struct, Generic[P]):
    """Wraps a payload for validation, so msgspec's error paths read ``$.payload.job_id``."""

    payload: P


@dataclass(frozen=True)
class Message:
    """A decoded, authenticated, validated message: ``payload`` is its Struct; ``status`` is
    set on control replies only."""

    payload: WireMessage
    id: str
    ts: float
    reply_to: str | None
    status: str | None = None

    @property
    def type(self) -> str:
        """The envelope's ``type``: the payload's class name."""
        return type(self.payload).__name__


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class FrameCodec:
    """Encodes, signs, verifies and decodes the messages of a :class:`Catalogue` with one key
    (:class:`casparian_nb.protocol.Codec` binds the protocol's catalogue).

    ``max_bytes`` caps a whole message (checked before parsing or hashing anything);
    ``max_age`` is how far ``ts`` may lie in the past or future (None: no check, for replaying
    recorded traffic). Thread-safe: it holds no mutable state.
    """

    def __init__(self, key: bytes, catalogue: Catalogue, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float | None = DEFAULT_MAX_AGE) -> None:  # fmt: skip
        if not isinstance(key, bytes) or len(key) < 16:
            # An empty key would mean "no authentication" in Jupyter; here it is a setup bug.
            raise ConfigError("protocol key must be at least 16 bytes (see sentinel.json 'key')")
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.catalogue = catalogue
        self._mac = hmac.new(key, MAGIC, hashlib.sha256)  # copied per message: MAGIC pre-hashed
        # One validating type per message, built once (msgspec caches its plan on it).
        self._wrapped = {name: _Envelope[cls]  # type: ignore[valid-type]
                         for name, cls in catalogue.types.items()}

    def sign(self, body: bytes) -> bytes:
        """The signature frame for ``body``: hex HMAC-SHA256 of ``MAGIC + body``."""
        mac = self._mac.copy()
        mac.update(body)
        return mac.hexdigest().encode("ascii")

    def encode(self, message: WireMessage | str, payload: Mapping[str, Any] | None = None,
               *, reply_to: str | None = None, msg_id: str | None = None,
               ts: float | None = None) -> list[bytes]:  # fmt: skip
        """The three frames ``[MAGIC, signature, body]`` of a message (no routing frames).

        ``message`` is the payload Struct. A type name and a ``payload`` mapping are accepted
        too and validated into that Struct here (raw tools and tests build messages so), so a
        bad field shows up at the sender with its name. Control replies get their ``status``
        from their type (``Error`` is "error", every other reply "ok").
        """
        if isinstance(message, str):
            message = self._convert(message, dict(payload or {}))
        name = type(message).__name__
        if self.catalogue.types.get(name) is not type(message):
            raise UnknownMessageTypeError(f"unknown message type {_short(name)}")
        body_obj: dict[str, Any] = {
            "v": PROTOCOL_VERSION, "type": name, "id": msg_id or uuid.uuid4().hex,
            "ts": time.time() if ts is None else ts, "reply_to": reply_to, "payload": message,
        }  # fmt: skip
        status = self.catalogue.status(name)
        if status is not None:
            body_obj["status"] = status
        try:
            body = _encoder.encode(body_obj)
        except UnicodeEncodeError:
            # A lone surrogate (a path with undecodable bytes) is not UTF-8; JSON's \u escape
            # carries it, and decode reads it back the same way.
            body = self._encode_escaped(name, body_obj)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidPayloadError(f"{name}: payload is not JSON: {one_line(exc)}") from None
        # Leave room for the signature and routing frames the receiver counts too.
        if len(body) + 256 > self.max_bytes:
            raise MessageTooLargeError(
                f"{name}: message of {len(body)} bytes exceeds the {self.max_bytes} byte limit"
            )
        return [MAGIC, self.sign(body), body]

    @staticmethod
    def _encode_escaped(name: str, body_obj: dict[str, Any]) -> bytes:
        try:
            return json.dumps(msgspec.to_builtins(body_obj), separators=(",", ":"),
                              allow_nan=False).encode("ascii")  # fmt: skip
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidPayloadError(f"{name}: payload is not JSON: {one_line(exc)}") from None

    def _convert(self, name: str, payload: Any) -> WireMessage:
        """Validate a payload (a dict, as JSON decoded it) into the Struct of type ``name``."""
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            raise UnknownMessageTypeError(f"unknown message type {_short(name)}")
        try:
            envelope: _Envelope[Any] = msgspec.convert({"payload": payload}, wrapped, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidPayloadError(f"{name}: {one_line(exc, 160)}") from None
        return cast(WireMessage, envelope.payload)

    def decode(self, frames: Sequence[bytes]) -> tuple[list[bytes], Message]:
        """Split off routing frames and return them with the verified message.

        Raises a :class:`WireError` (a ProtocolError; :class:`SignatureError` is also an
        AuthenticationError) for anything else, with ``routing`` and, once the signature is
        verified, ``request_id`` filled in so the caller can address an error reply.
        """
        routing: list[bytes] = []
        try:
            return self._decode(frames, routing)
        except WireError as exc:
            exc.routing = routing
            raise
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            # Defence in depth: the checks below should leave nothing else to raise.
            wrapped = WireError(f"malformed message: {one_line(exc)}")
            wrapped.routing = routing
            raise wrapped from None

    def _decode(self, frames: Sequence[bytes], routing: list[bytes]) -> tuple[list[bytes], Message]:
        if not isinstance(frames, list | tuple):
            raise WireError(f"expected a list of frames, got {type(frames).__name__}")
        if len(frames) > MAX_FRAMES:
            raise WireError(f"too many frames ({len(frames)}; at most {MAX_FRAMES})")
        size = 0
        for i, f in enumerate(frames):
            if not isinstance(f, bytes | bytearray | memoryview):
                raise WireError(f"frame {i} is {type(f).__name__}, not bytes")
            size += f.nbytes if isinstance(f, memoryview) else len(f)
        if size > self.max_bytes:
            raise MessageTooLargeError(
                f"message of {size} bytes exceeds the {self.max_bytes} byte limit"
            )
        data = [bytes(f) for f in frames]
        try:
            at = data.index(MAGIC)
        except ValueError:
            raise WireError("not a casparian message (no CF1 frame)") from None
        routing.extend(data[:at])
        rest = data[at + 1 :]
        if len(rest) != 2:
            raise WireError(f"expected 2 frames after CF1 (signature, body), got {len(rest)}")
        signature, body = rest
        if not signature:
            raise SignatureError("message is not signed")
        if not hmac.compare_digest(self.sign(body), signature):
            raise SignatureError("bad signature (is the key from the current sentinel.json?)")
        obj = _parse(body)
        if not isinstance(obj, dict):
            raise WireError(f"body must be a JSON object, got {json_type(obj)}")
        if _too_deep(obj, MAX_DEPTH):
            raise WireError(f"body nests deeper than {MAX_DEPTH} levels")
        try:
            return routing, self._message(obj)
        except WireError as exc:
            msg_id = obj.get("id")  # signed, so safe to echo as reply_to of the error reply
            if isinstance(msg_id, str) and 0 < len(msg_id) <= _MAX_ID_LEN:
                exc.request_id = msg_id
            raise

    def _message(self, obj: dict[str, Any]) -> Message:
        v = obj.get("v")
        if v != PROTOCOL_VERSION or isinstance(v, bool):
            raise WireError(f"unsupported protocol version {_short(v)} "
                            f"(this build speaks {PROTOCOL_VERSION})")  # fmt: skip
        ts = obj.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise WireError(f"'ts' must be a number, got {json_type(ts)}")
        try:
            ts = float(ts)
        except OverflowError:  # a 400-digit integer is valid JSON
            raise WireError("'ts' is out of range") from None
        if self.max_age is not None:
            # Clamped for the message only: a fuzzed 1e300 would make it hundreds of digits.
            skew = max(-1e12, min(1e12, time.time() - ts))
            if skew > self.max_age:
                raise StaleMessageError(f"stale message: sent {skew:.0f} s ago "
                                     f"(limit {self.max_age:.0f} s)")  # fmt: skip
            if skew < -self.max_age:
                raise StaleMessageError(f"message timestamp {-skew:.0f} s in the future "
                                     f"(limit {self.max_age:.0f} s)")  # fmt: skip
        msg_id = obj.get("id")
        if not isinstance(msg_id, str) or not 0 < len(msg_id) <= _MAX_ID_LEN:
            raise WireError(f"'id' must be a non-empty string, got {json_type(msg_id)}")
        reply_to = obj.get("reply_to")
        if reply_to is not None and not (isinstance(reply_to, str) and len(reply_to) <= _MAX_ID_LEN):
            raise WireError(f"'reply_to' must be a string or null, got {json_type(reply_to)}")
        type_ = obj.get("type")
        if not isinstance(type_, str):
            raise WireError(f"'type' must be a string, got {json_type(type_)}")
        accepts = self.catalogue.accepts
        if type_ not in self.catalogue.types:
            raise UnknownMessageTypeError(f"unknown message type {_short(type_)}")
        if accepts is not None and type_ not in accepts:
            raise UnknownMessageTypeError(f"message type {_short(type_)} does not belong on "
                                          "this socket")  # fmt: skip
        status = obj.get("status")
        expected = self.catalogue.status(type_)
        if expected is not None and status != expected:
            raise WireError(f"{type_}: 'status' must be {expected!r}, got {_short(status)}")
        payload = obj.get("payload", {})
        if payload is None:
            payload = {}  # the original sends unit variants without a payload
        if not isinstance(payload, dict):
            raise InvalidPayloadError(f"{type_}: payload must be an object, "
                                      f"got {json_type(payload)}")  # fmt: skip
        return Message(self._convert(type_, payload), msg_id, ts, reply_to, expected)


def _parse(body: bytes) -> Any:
    """The body as JSON values. msgspec reads real traffic; what it refuses gets a second
    reading by :mod:`json` — for the reason, worded as before, or to accept the ``\\u``
    escape of a lone surrogate (a path with undecodable bytes), which msgspec refuses."""
    try:
        return _decoder.decode(body)
    except RecursionError:
        raise WireError("body nests too deeply") from None
    except msgspec.MsgspecError:
        pass
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_json_constant,
                          parse_float=_finite_float)  # fmt: skip
    except RecursionError:
        raise WireError("body nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WireError(f"body is not JSON: {one_line(exc)}") from None

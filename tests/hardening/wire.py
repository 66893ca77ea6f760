"""Raw sockets to a real sentinel, for hostile traffic (the auth tests and the fuzzer).

:class:`Wire` sends frames exactly as given — no codec in the way — on the control socket
(a DEALER: every message is answered), the worker socket (a DEALER posing as a worker) and the
events socket (an XSUB: the only socket type a PUB endpoint accepts a connection from).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import msgspec
import msgspec.inspect as mi
import zmq

from casparian_nb.client import ConnectionInfo
from casparian_nb.protocol import (
    MAGIC,
    Codec,
    Error,
    Identify,
    Message,
    ProtocolError,
)

WRONG_KEY = Codec(b"w" * 32)


def fields_of(cls: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    """A message Struct's fields, as msgspec sees them (name, type, required)."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info.fields


def sample_value(t: mi.Type, full: bool = True) -> Any:
    """A valid JSON value of type ``t``, at the edges (the largest int64, a path with a
    non-ASCII character and an undecodable byte, the last member of an enum)."""
    if isinstance(t, mi.UnionType):
        real = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return sample_value(real[0], full) if real else None
    if isinstance(t, mi.StrType):
        return "x/ä/\udcff"
    if isinstance(t, mi.BoolType):
        return False
    if isinstance(t, mi.IntType):
        return t.le if t.le is not None else 7
    if isinstance(t, mi.FloatType):
        return 1.5
    if isinstance(t, mi.EnumType):
        return list(t.cls)[-1].value  # type: ignore[var-annotated]
    if isinstance(t, mi.DictType):
        return {"a": sample_value(t.value_type, full)}
    if isinstance(t, mi.ListType):
        return [sample_value(t.item_type, full)]
    if isinstance(t, mi.StructType):
        return sample_payload(t.cls, full)
    if isinstance(t, mi.AnyType):
        return {"a": [1, {}]}
    raise AssertionError(f"no sample for {t}")


def sample_payload(cls: type[msgspec.Struct], full: bool = True) -> dict[str, Any]:
    """A valid payload of ``cls``: its required fields only, or every field."""
    return {f.encode_name: sample_value(f.type, full) for f in fields_of(cls)
            if f.required or full}


def is_valid(cls: type[msgspec.Struct], payload: Any) -> bool:
    """Whether ``payload`` decodes into ``cls`` (as the receiving codec would)."""
    try:
        msgspec.convert(payload, cls, strict=True)
    except msgspec.ValidationError:
        return False
    return True


def reply_code(msg: Message) -> str | None:
    """The code of an ``Error`` reply, None for any other message."""
    return msg.payload.code.value if isinstance(msg.payload, Error) else None


def envelope(type_: str, payload: Any = None, **over: Any) -> dict[str, Any]:
    """A message body as the codec would build it (before signing)."""
    body = {"v": 1, "type": type_, "id": uuid.uuid4().hex, "ts": time.time(), "reply_to": None,
            "payload": {} if payload is None else payload}
    body.update(over)
    return body


def raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def signed(codec: Codec, body: Any, how: str = "ok") -> list[bytes]:
    """``[MAGIC, signature, body]`` signed as ``how`` says: ok, unsigned, wrong-key, tampered
    (the body changed after signing), truncated (signature cut short), upper (hex upper-cased)."""
    data = raw(body)
    if how == "ok":
        return [MAGIC, codec.sign(data), data]
    if how == "unsigned":
        return [MAGIC, b"", data]
    if how == "wrong-key":
        return [MAGIC, WRONG_KEY.sign(data), data]
    if how == "tampered":
        return [MAGIC, codec.sign(data), data + b" "]
    if how == "truncated":
        return [MAGIC, codec.sign(data)[:-2], data]
    if how == "upper":
        return [MAGIC, codec.sign(data).upper(), data]
    raise ValueError(how)


class Wire:
    """Hostile peer of one sentinel. Not thread-safe."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.codec = info.codec()
        self.reader = info.codec(max_bytes=1 << 30, max_age=None)  # decodes whatever comes back
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctl = self._socket(zmq.DEALER, info.control)
        self.wrk = self._socket(zmq.DEALER, info.workers)
        self.events = self._socket(zmq.XSUB, info.events)
        #: A worker the sentinel knows (after :meth:`identify`): its messages reach handlers.
        self.known = self._socket(zmq.DEALER, info.workers, identity=b"fuzz-worker")
        self.sent: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()

    def _socket(self, kind: int, endpoint: str, identity: bytes = b"") -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        return sock

    def ask(self, frames: list[bytes], timeout: float = 5.0) -> Message:
        """Send on the control socket and return the (verified) reply."""
        self.ctl.send_multipart(frames)
        self.sent["control"] += 1
        if not self.ctl.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout}s to {_show(frames)}")
        _, msg = self.reader.decode(self.ctl.recv_multipart())
        self.replies[reply_code(msg) or "ok"] += 1
        return msg

    def to_workers(self, frames: list[bytes]) -> None:
        self.wrk.send_multipart(frames)
        self.sent["workers"] += 1

    def worker_replies(self, wait: float = 0.0) -> list[Message]:
        """What the sentinel sent back on the worker socket (``Refused``, hopefully only)."""
        out: list[Message] = []
        if not self.wrk.poll(int(wait * 1000)):
            return out
        while True:
            try:
                frames = self.wrk.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                out.append(self.reader.decode(frames)[1])
            except ProtocolError:
                self.replies["undecodable worker reply"] += 1

    def identify(self, worker_id: str = "fuzz-worker") -> None:
        """Register :attr:`known` as a worker on another host (no local pid check)."""
        self.known.send_multipart(self.codec.encode(Identify(
            worker_id=worker_id, slots=1, pid=1, host="fuzz.invalid")))
        assert self.known.poll(5000), "no Welcome"
        _, msg = self.reader.decode(self.known.recv_multipart())
        assert msg.type == "Welcome", msg

    def as_known(self, frames: list[bytes]) -> None:
        self.known.send_multipart(frames)
        self.sent["known worker"] += 1

    def known_replies(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(self.reader.decode(self.known.recv_multipart(zmq.NOBLOCK))[1])
            except zmq.Again:
                return out

    def to_events(self, frames: list[bytes]) -> None:
        self.events.send_multipart(frames)
        self.sent["events"] += 1

    def huge(self, endpoint: str, size: int) -> None:
        """One frame of ``size`` bytes on a throwaway socket: over the socket's MAXMSGSIZE,
        ZMQ drops the connection without a reply."""
        sock = self._socket(zmq.DEALER, endpoint)
        try:
            sock.send_multipart([MAGIC, b"0" * 64, b"x" * size])
            self.sent["huge"] += 1
            time.sleep(0.01)  # let the I/O thread push it out before the close drops it
        finally:
            sock.close(0)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def _show(frames: list[bytes]) -> str:
    return repr([f[:40] for f in frames])[:300]

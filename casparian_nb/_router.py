"""Serving a socket: error replies and the :class:`HandlerTable` (re-exported by
:mod:`casparian_nb.protocol`; import from there).

A ROUTER socket's messages go to one handler per payload Struct; whatever goes wrong — a
message that does not decode, a type without a handler, a handler that raises — becomes one
``Error`` reply made by :func:`error_reply`, its code taken from the exception's class
(:func:`error_code`), never from its text.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import (
    MAGIC,
    ErrorCode,
    FrameCodec,
    Message,
    UnknownMessageTypeError,
    WireError,
    WireMessage,
    one_line,
)
from ._ratelimit import LogLimiter
from .errors import AuthenticationError, CasparianError, ProtocolError, StoreError

__all__ = [
    "Error",
    "ErrorCode",
    "Handler",
    "HandlerTable",
    "RequestFailed",
    "error_code",
    "error_reply",
]


class Error(WireMessage):
    """The answer to a request that failed; ``message`` is one line."""

    code: ErrorCode
    message: str


class RequestFailed(CasparianError):
    """Raised by a handler to answer with ``Error{code, message}``, e.g.
    ``raise RequestFailed(ErrorCode.NOT_FOUND, f"no job {job_id}")``."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code.value, str(self)))


def error_code(exc: BaseException) -> ErrorCode:
    """The ``Error`` code for an exception raised while serving a request, by its class:
    a refused message or a :class:`RequestFailed` says its own; a bad key is AUTH_ERROR;
    other protocol errors and every other :class:`CasparianError` (a bad plugin, sink or
    argument the request named) are INVALID_REQUEST; the state DB's are DB_ERROR; anything
    else is a bug of ours, INTERNAL."""
    if isinstance(exc, WireError | RequestFailed):
        return exc.code
    if isinstance(exc, AuthenticationError):
        return ErrorCode.AUTH_ERROR
    if isinstance(exc, StoreError):
        return ErrorCode.DB_ERROR
    if isinstance(exc, ProtocolError | CasparianError):
        return ErrorCode.INVALID_REQUEST
    return ErrorCode.INTERNAL


def error_reply(exc: BaseException, request_type: str = "request") -> Error:
    """The one way an ``Error`` reply is made: its code from the exception's class, its
    message one line (an INTERNAL one names the exception: it is our bug to report)."""
    code = error_code(exc)
    text = str(exc) or type(exc).__name__
    if code is ErrorCode.INTERNAL:
        text = f"internal error in {request_type}: {type(exc).__name__}: {text}"
    return Error(code=code, message=one_line(text, 1000))


# -- serving a socket ------------------------------------------------------------------------

#: A handler gets the request and the routing frames it came with (the peer's identity on a
#: ROUTER) and returns the reply, or None when it replies later or not at all.
Handler = Callable[[Message, list[bytes]], "WireMessage | None"]


def _refuse_with_error(error: Error) -> WireMessage:
    return error


@dataclass
class HandlerTable:
    """Routes the messages of one ROUTER socket, by Struct class, to handler functions, and
    never raises.

    Decoding failures, unknown types, handler exceptions and invalid replies all become an
    ``Error`` reply built by :func:`error_reply` — turned into another message by ``refusal``
    (the worker socket answers ``Refused``) or into none (``refusal=None``) — plus a
    rate-limited log line, so hostile input cannot stop the loop (F14)::

        table = HandlerTable(codec, {Ping: on_ping, GetJob: on_get_job})
        out = table.handle(sock.recv_multipart())
        if out:
            sock.send_multipart(out)

    ``counts`` tallies outcomes ("ok" or the error code) for tests and the hardening report.
    """

    codec: FrameCodec
    handlers: Mapping[type[WireMessage], Handler]
    name: str = "control"
    refusal: Callable[[Error], WireMessage | None] | None = _refuse_with_error
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(__name__))
    log_burst: int = 10  # bad-message lines per log_interval; the rest are counted
    log_interval: float = 10.0
    counts: Counter[str] = field(default_factory=Counter, init=False)
    limiter: LogLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.limiter = LogLimiter(self.logger, name=self.name, burst=self.log_burst,
                                  interval=self.log_interval)  # fmt: skip

    def handle(self, frames: Sequence[bytes]) -> list[bytes] | None:
        """Process one received message; return the frames to send back, or None."""
        try:
            routing, msg = self.codec.decode(frames)
        except WireError as exc:
            self._bad(exc.code, str(exc))
            # Without a CF1 frame the routing is unknown; on a ROUTER frame 0 is the peer id.
            return self._answer(exc.routing or _first_frame(frames), exc.request_id,
                                error_reply(exc))  # fmt: skip
        handler = self.handlers.get(type(msg.payload))
        if handler is None:
            unknown = UnknownMessageTypeError(
                f"no handler for {msg.type!r} on the {self.name} socket")
            self._bad(unknown.code, str(unknown))
            return self._answer(routing, msg.id, error_reply(unknown))
        try:
            result = handler(msg, routing)
        except Exception as exc:
            error = error_reply(exc, msg.type)
            if error.code is ErrorCode.INTERNAL:
                self.logger.exception("%s: handler for %s failed", self.name, msg.type)
            self.counts[error.code] += 1
            return self._answer(routing, msg.id, error)
        self.counts["ok"] += 1
        if result is None:
            return None
        return self.reply(routing, msg, result)

    def reply(self, routing: Sequence[bytes], request: Message,
              payload: WireMessage) -> list[bytes]:
        """Frames answering ``request`` with ``payload`` (for replies sent later, too)."""
        try:
            return [*routing, *self.codec.encode(payload, reply_to=request.id)]
        except ProtocolError as exc:  # the handler built a reply the protocol refuses: our bug
            self.logger.exception("%s: bad reply to %s", self.name, request.type)
            self.counts["ok"] -= 1
            self.counts[ErrorCode.INTERNAL] += 1
            error = Error(code=ErrorCode.INTERNAL,
                          message=one_line(f"internal error in {request.type}: {exc}", 1000))
            return [*routing, *self.codec.encode(error, reply_to=request.id)]

    def _answer(self, routing: Sequence[bytes], request_id: str | None,
                error: Error) -> list[bytes] | None:  # fmt: skip
        answer = self.refusal(error) if self.refusal is not None else None
        if answer is None or not routing:
            return None
        return [*routing, *self.codec.encode(answer, reply_to=request_id)]

    def _bad(self, code: str, text: str) -> None:
        self.counts[code] += 1
        self.limiter.log("%s: refused message [%s]: %s", self.name, code, text)


def _first_frame(frames: object) -> list[bytes]:
    if isinstance(frames, list | tuple) and frames:
        first = frames[0]
        # ZMQ routing ids are 1-255 bytes; a leading CF1 means there was no routing at all.
        if isinstance(first, bytes | bytearray) and 0 < len(first) <= 255 and first != MAGIC:
            return [bytes(first)]
    return []

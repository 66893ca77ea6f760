"""Every wire message of casparian_nb: framing, signing, (de)serialisation and validation.

A message on any socket (control, worker, events) is the multipart frame list::

    [*routing_frames, b"CF1", signature, body]

``routing_frames`` are whatever sits before the magic frame: ROUTER identities, or the topic of a
PUB message. ``body`` is UTF-8 JSON ``{"v": 1, "type", "id", "ts", "reply_to", "payload"}``
(control replies add ``"status": "ok" | "error"``) and ``signature`` is the ASCII hex
HMAC-SHA256 of ``b"CF1" + body`` with the key from ``sentinel.json``, as in Jupyter's kernel
protocol. :meth:`Codec.decode` raises only :class:`~casparian_nb.errors.ProtocolError`
subclasses — whatever the bytes — so a loop that catches that one class survives hostile
input (F14). The :class:`Codec` lives in :mod:`casparian_nb._codec` and the payload schema of
every message type (the catalogue of the protocol) in :mod:`casparian_nb._schemas`; import
both from here.

>>> codec = Codec(b"k" * 32)
>>> routing, msg = codec.decode([b"id", *codec.encode("GetJob", {"job_id": 7})])
>>> routing, msg.type, msg.payload
([b'id'], 'GetJob', {'job_id': 7})
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ._codec import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    MAGIC,
    MAX_DEPTH,
    MAX_FRAMES,
    PROTOCOL_VERSION,
    Codec,
    InvalidPayloadError,
    Message,
    MessageTooLargeError,
    SignatureError,
    UnknownMessageTypeError,
    WireError,
    one_line,
)
from ._schemas import ERROR_CODES, MESSAGE_TYPES, RECEIPT_STATUSES, REPLY_FOR
from .errors import AuthenticationError, CasparianError, ProtocolError, StoreError, TransientError

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "ERROR_CODES",
    "FINISHED_JOB_STATUSES",
    "JOB_EVENTS",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_FRAMES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "RECEIPT_STATUSES",
    "REPLY_FOR",
    "STORED_JOB_STATUSES",
    "TAPE_JOB_STATUSES",
    "Codec",
    "CompletionStatus",
    "ErrorKind",
    "EventName",
    "Handler",
    "HandlerTable",
    "InvalidPayloadError",
    "JobStatus",
    "LogLimiter",
    "MaterializationStatus",
    "Message",
    "MessageTooLargeError",
    "ReceiptStatus",
    "RequestFailed",
    "SignatureError",
    "UnknownMessageTypeError",
    "WireError",
    "error_code",
    "error_info",
    "error_reply",
    "event_frames",
    "one_line",
    "reply",
    "vocabulary",
]


# -- the vocabulary: every status and event name, defined once --------------------------------

class JobStatus(StrEnum):
    """Where a job is. The state DB stores :data:`STORED_JOB_STATUSES`; the sentinel also
    knows a job as ``PROMOTING`` (outputs being committed) and tapes and replays report
    ``DISPATCHED`` (sent to a worker, not started yet). Tapes spell them in lower case
    (:meth:`tape_name`)."""

    QUEUED = "QUEUED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    PROMOTING = "PROMOTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    SKIPPED = "SKIPPED"

    @property
    def tape_name(self) -> str:
        """The lower-case spelling ``tape explain`` and replays use (``"queued"``)."""
        return self.value.lower()


#: Statuses a row of ``cf_processing_queue`` may hold (its CHECK constraint).
STORED_JOB_STATUSES: Final = (
    JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED,
    JobStatus.ABORTED, JobStatus.SKIPPED,
)  # fmt: skip
#: Statuses after which nothing more happens to a job.
FINISHED_JOB_STATUSES: Final = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED}
)
#: Statuses a tape replay reports, in the order ``tape explain`` counts them.
TAPE_JOB_STATUSES: Final = (
    JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.COMPLETED,
    JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED,
)  # fmt: skip


class CompletionStatus(StrEnum):
    """How a finished job ended (``cf_processing_queue.completion_status``)."""

    SUCCESS = "SUCCESS"
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    ABORTED = "ABORTED"
    SKIPPED = "SKIPPED"


class ReceiptStatus(StrEnum):
    """What a worker reports of one job attempt (``Receipt.status``)."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    REJECTED = "REJECTED"


class MaterializationStatus(StrEnum):
    """What a materialization record says of a job's outputs."""

    SUCCESS = "success"
    PARTIAL_SUCCESS = "partial_success"
    NO_DATA = "no_data"


class ErrorKind(StrEnum):
    """Whether a failed job may be retried."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


class EventName(StrEnum):
    """Names of the events the sentinel publishes and records on its tape (``domain_event``),
    and of the responses to recorded commands (``system_response``)."""

    JOB_QUEUED = "JobQueued"
    JOB_DISPATCHED = "JobDispatched"
    JOB_STARTED = "JobStarted"
    CANCEL_REQUESTED = "CancelRequested"
    JOB_COMPLETED = "JobCompleted"
    JOB_FAILED = "JobFailed"
    JOB_ABORTED = "JobAborted"
    JOB_RETRIED = "JobRetried"
    JOB_SKIPPED = "JobSkipped"
    MATERIALIZATION_RECORDED = "MaterializationRecorded"
    WORKER_JOINED = "WorkerJoined"
    WORKER_LOST = "WorkerLost"
    WORKER_LEFT = "WorkerLeft"
    COMMAND_SUCCEEDED = "CommandSucceeded"
    COMMAND_FAILED = "CommandFailed"


#: Events that concern one job (their payload has ``job_id``).
JOB_EVENTS: Final = frozenset({
    EventName.JOB_QUEUED, EventName.JOB_DISPATCHED, EventName.JOB_STARTED,
    EventName.CANCEL_REQUESTED, EventName.JOB_COMPLETED, EventName.JOB_FAILED,
    EventName.JOB_ABORTED, EventName.JOB_RETRIED, EventName.JOB_SKIPPED,
    EventName.MATERIALIZATION_RECORDED,
})  # fmt: skip


def vocabulary() -> dict[str, list[str]]:
    """Every status list, for front-ends that must not spell them themselves (the queue
    widget's JavaScript gets this from the kernel)."""
    return {
        "job_statuses": [s.value for s in JobStatus],
        "finished_job_statuses": sorted(s.value for s in FINISHED_JOB_STATUSES),
        "completion_statuses": [s.value for s in CompletionStatus],
        "event_names": [e.value for e in EventName],
    }


# -- building replies ------------------------------------------------------------------------

def reply(codec: Codec, request: Message | None, type: str,
          payload: Mapping[str, Any] | None = None, *,
          routing: Sequence[bytes] = ()) -> list[bytes]:  # fmt: skip
    """Frames answering ``request`` (``reply_to`` set; ``status`` follows from ``type``),
    prefixed with ``routing`` (the frames :meth:`Codec.decode` split off)."""
    return [*routing, *codec.encode(type, payload, reply_to=request.id if request else None)]


def error_reply(codec: Codec, request: Message | str | None, code: str, message: str, *,
                routing: Sequence[bytes] = ()) -> list[bytes]:  # fmt: skip
    """Frames of an ``Error{code, message}`` reply. ``request`` may be the Message, its id
    (e.g. :attr:`WireError.request_id`) or None when the request could not be authenticated."""
    if code not in ERROR_CODES:
        raise InvalidPayloadError(f"Error: unknown error code {code!r}")
    reply_to = request.id if isinstance(request, Message) else request
    payload = {"code": code, "message": one_line(message, 1000)}
    return [*routing, *codec.encode("Error", payload, reply_to=reply_to)]


def event_frames(codec: Codec, topic: bytes, name: str, seq: int,
                 data: Mapping[str, Any] | None = None) -> list[bytes]:  # fmt: skip
    """Frames to publish on the PUB socket: ``[topic, MAGIC, signature, body]``.
    Subscribers filter on the topic prefix (``b"job"``, ``b"worker"``, ...)."""
    return [topic, *codec.encode("Event", {"name": name, "seq": seq, "data": dict(data or {})})]


def error_info(exc: BaseException, *, kind: str | None = None, limit: int = 20_000) -> dict[str, str]:
    """A plugin failure as ``Receipt.error`` data: ``{ename, evalue, traceback, kind}``.

    ``kind`` defaults to "transient" for :class:`TransientError`, else "permanent". The
    traceback keeps its last ``limit`` characters (the frames nearest the error), so a
    recursion error cannot produce a message near the size cap.
    """
    tb = "".join(traceback.format_exception(exc))
    if len(tb) > limit:
        tb = f"[... {len(tb) - limit} characters cut ...]\n" + tb[-limit:]
    return {
        "ename": type(exc).__name__,
        "evalue": str(exc)[:limit],
        "traceback": tb,
        "kind": kind or ("transient" if isinstance(exc, TransientError) else "permanent"),
    }


# -- serving a socket ------------------------------------------------------------------------

def error_code(exc: BaseException) -> str:
    """The ``Error`` reply code for an exception raised while serving a request."""
    if isinstance(exc, WireError | RequestFailed):
        return exc.code
    if isinstance(exc, AuthenticationError):
        return "AUTH_ERROR"
    if isinstance(exc, ProtocolError):
        return "INVALID_REQUEST"
    if isinstance(exc, StoreError):
        return "DB_ERROR"
    return "INTERNAL"



class RequestFailed(CasparianError):
    """Raised by a handler to answer with ``Error{code, message}``, e.g.
    ``raise RequestFailed("NOT_FOUND", f"no job {job_id}")``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, str(self)))


#: A handler gets the request and returns ``(reply_type, payload)``, or None for no reply.
Handler = Callable[[Message], "tuple[str, Mapping[str, Any]] | None"]


@dataclass
class LogLimiter:
    """Rate-limits the log lines that hostile input causes (F14: anyone who can reach a port,
    key or no key, must not be able to grow the logs at will).

    At most ``burst`` lines per ``interval`` seconds go to ``logger``; the rest are counted,
    and the count is logged once the next window opens — at the next line, or at
    :meth:`flush`, which a serving loop may call as often as it likes::

        limiter = LogLimiter(log, name="control", what="rejected messages")
        limiter.log("control: rejected message: %s", exc)   # False when suppressed
    """

    logger: logging.Logger
    name: str = "socket"
    what: str = "bad messages"
    burst: int = 10
    interval: float = 10.0
    level: int = logging.WARNING
    _window: float = field(default=-math.inf, init=False, repr=False)
    _logged: int = field(default=0, init=False, repr=False)
    _suppressed: int = field(default=0, init=False, repr=False)

    def log(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless this window's burst is used up; whether it was logged."""
        self._roll(time.monotonic())
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(self.level, msg, *args)
            return True
        self._suppressed += 1
        return False

    def flush(self) -> None:
        """Log the count of suppressed lines if their window is over (cheap; call often)."""
        if self._suppressed:
            self._roll(time.monotonic())

    def _roll(self, now: float) -> None:
        if now - self._window >= self.interval:
            if self._suppressed:
                self.logger.log(self.level, "%s: %d more %s not logged", self.name,
                                self._suppressed, self.what)  # fmt: skip
            self._window, self._logged, self._suppressed = now, 0, 0


@dataclass
class HandlerTable:
    """Routes the messages of one ROUTER socket to handler functions and never raises.

    Decoding failures, unknown types, handler exceptions and invalid replies all become an
    ``Error`` reply (or a drop, with ``reply_errors=False`` as on the worker socket) plus a
    rate-limited log line, so hostile input cannot stop the loop (F14)::

        table = HandlerTable(codec, {"Ping": on_ping, "GetJob": on_get_job})
        out = table.handle(sock.recv_multipart())
        if out:
            sock.send_multipart(out)

    ``counts`` tallies outcomes ("ok" or the error code) for tests and the hardening report.
    """

    codec: Codec
    handlers: Mapping[str, Handler]
    name: str = "control"
    reply_errors: bool = True
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
            return self._error(exc.routing or _first_frame(frames), exc.request_id,
                               exc.code, str(exc))  # fmt: skip
        handler = self.handlers.get(msg.type)
        if handler is None:
            text = f"no handler for {msg.type!r} on the {self.name} socket"
            self._bad("UNKNOWN_TYPE", text)
            return self._error(routing, msg.id, "UNKNOWN_TYPE", text)
        try:
            result = handler(msg)
        except Exception as exc:
            code = error_code(exc)
            if code == "INTERNAL":
                self.logger.exception("%s: handler for %s failed", self.name, msg.type)
                text = f"internal error in {msg.type}: {type(exc).__name__}: {exc}"
            else:
                text = str(exc)
            self.counts[code] += 1
            return self._error(routing, msg.id, code, text)
        if result is None:
            self.counts["ok"] += 1
            return None
        try:
            out = reply(self.codec, msg, result[0], result[1], routing=routing)
        except Exception as exc:  # the handler built a reply the schema refuses: our bug
            self.logger.exception("%s: bad reply to %s", self.name, msg.type)
            self.counts["INTERNAL"] += 1
            return self._error(routing, msg.id, "INTERNAL", f"internal error in {msg.type}: {exc}")
        self.counts["ok"] += 1
        return out

    def _error(self, routing: Sequence[bytes], request_id: str | None, code: str,
               text: str) -> list[bytes] | None:  # fmt: skip
        if not self.reply_errors or not routing:
            return None
        return error_reply(self.codec, request_id, code, text, routing=routing)

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

"""Talking to a running sentinel: its connection file, control requests and the event stream.

The sentinel writes ``<home>/sentinel.json`` (mode 0600: it holds the signing key); the
helpers reading and writing it live in :mod:`casparian_nb._connection` and are exported here.

>>> info = read_connection_file(home)                       # doctest: +SKIP
>>> with ControlClient(info) as ctl:                       # doctest: +SKIP
...     ctl.ping(); ctl.queue_stats()

Each :class:`ControlClient` owns one DEALER socket; after a timeout (or an interrupt) it is
closed and replaced, never reused, so a late reply cannot be read as the answer to the next
request (the original's REQ sockets jammed there, reference §13.18).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq

from ._connection import (
    CONNECTION_FILE,
    ConnectionInfo,
    PathLike,
    connection_is_live,
    new_key,
    read_connection_file,
    remove_connection_file,
    write_connection_file,
)
from .errors import ControlTimeoutError, ProtocolError, SentinelError
from .protocol import (
    REPLY_FOR,
    CancelJob,
    CancelJobs,
    Codec,
    CompactOutputs,
    ControlReply,
    Error,
    ErrorCode,
    Event,
    EventMessage,
    GetJob,
    GetQueueStats,
    JobStatus,
    ListJobs,
    ListWorkers,
    Message,
    Ping,
    QuarantinePolicy,
    RegisterPlugin,
    RetryJobs,
    Shutdown,
    SignatureError,
    SubmitJobs,
    Subscribed,
    WireMessage,
)

__all__ = [
    "CONNECTION_FILE",
    "ConnectionInfo",
    "ControlClient",
    "EventSubscriber",
    "RemoteNotFoundError",
    "RemoteRequestError",
    "connection_is_live",
    "new_key",
    "read_connection_file",
    "remove_connection_file",
    "write_connection_file",
]

class RemoteRequestError(SentinelError):
    """The sentinel answered a control request with ``Error{code, message}``."""

    def __init__(self, code: str, message: str, *, request_type: str = "") -> None:
        prefix = f"{request_type} failed" if request_type else "request failed"
        super().__init__(f"{prefix} [{code}]: {message}")
        self.code = code
        self.remote_message = message
        self.request_type = request_type

    @classmethod
    def from_error(cls, error: Error, request_type: str = "") -> RemoteRequestError:
        """The exception for an ``Error`` reply: :class:`RemoteNotFoundError` for NOT_FOUND."""
        klass = RemoteNotFoundError if error.code is ErrorCode.NOT_FOUND else RemoteRequestError
        return klass(error.code.value, error.message, request_type=request_type)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.code, self.remote_message, self.request_type))


class RemoteNotFoundError(RemoteRequestError, LookupError):
    """``Error{NOT_FOUND}``: the job, plugin or worker does not exist."""


def _rebuild(klass: type[RemoteRequestError], code: str, message: str,
             request_type: str) -> RemoteRequestError:  # fmt: skip
    return klass(code, message, request_type=request_type)


class ControlClient:
    """Synchronous client of the sentinel's control API (thread-safe; one DEALER socket).

    Every request has a timeout; on timeout the socket is dropped and a fresh one opened, and
    :class:`ControlTimeoutError` is raised. An ``Error`` reply raises
    :class:`RemoteRequestError` (``.code`` says which, e.g. ``NOT_FOUND``).
    """

    def __init__(self, info: ConnectionInfo, *, timeout: float = 5.0,
                 context: zmq.Context[Any] | None = None) -> None:  # fmt: skip
        self.info = info
        self.address = info.control
        self.timeout = timeout
        #: Replies dropped: stale (answering an earlier request), unverifiable or malformed.
        self.discarded = 0
        #: Sockets replaced after a timeout or an interrupted request.
        self.resets = 0
        self._codec = Codec(info.key_bytes, accepts=ControlReply)
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._sock: zmq.Socket[Any] | None = self._open()

    @classmethod
    def from_home(cls, home: PathLike, **kwargs: Any) -> ControlClient:
        """A client for the sentinel serving ``home`` (reads its connection file)."""
        return cls(read_connection_file(home), **kwargs)

    def _open(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)  # close() must never wait for an absent sentinel
        sock.setsockopt(zmq.MAXMSGSIZE, self._codec.max_bytes)  # cap memory per reply frame
        sock.connect(self.address)
        return sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = self._open()
            self.resets += 1

    # -- the one primitive -----------------------------------------------------------------

    def request(self, message: WireMessage, *, timeout: float | None = None) -> WireMessage:
        """Send one control request and return its reply (the Struct ``REPLY_FOR`` names)."""
        timeout = self.timeout if timeout is None else timeout
        req_id = uuid.uuid4().hex
        type = message.__class__.__name__
        frames = self._codec.encode(message, msg_id=req_id)  # bad payload: nothing sent
        with self._lock:
            if self._sock is None:
                raise SentinelError(f"control client for {self.address} is closed")
            try:
                msg = self._exchange(type, req_id, frames, timeout)
            except BaseException:
                # Timeout or Ctrl-C: the request may still be answered later; a fresh socket
                # guarantees that answer is never read as the reply to the next request.
                self._reset()
                raise
        if isinstance(msg.payload, Error):
            raise RemoteRequestError.from_error(msg.payload, type)
        expected = REPLY_FOR.get(message.__class__)
        if expected is not None and not isinstance(msg.payload, expected):
            raise SentinelError(f"{type}: sentinel answered {msg.type}, "
                                f"expected {expected.__name__}")
        reply = msg.payload
        assert isinstance(reply, WireMessage)  # every Struct of the catalogue is one
        return reply

    def _call(self, message: WireMessage, *, timeout: float | None = None) -> dict[str, Any]:
        """:meth:`request`, with the reply as plain data (what the CLI and notebook read)."""
        reply: dict[str, Any] = msgspec.to_builtins(self.request(message, timeout=timeout))
        return reply

    def _exchange(self, type: str, req_id: str, frames: list[bytes], timeout: float) -> Message:
        sock = self._sock
        assert sock is not None
        deadline = time.monotonic() + timeout
        unverified = 0
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # queue full (sentinel gone for long): reported as the timeout below
        else:
            while (remaining := deadline - time.monotonic()) > 0:
                if not sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                    break
                raw = sock.recv_multipart(zmq.NOBLOCK)
                try:
                    _, msg = self._codec.decode(raw)
                except SignatureError:
                    unverified += 1
                    self.discarded += 1
                    continue
                except ProtocolError:
                    self.discarded += 1
                    continue
                if msg.reply_to != req_id:  # a late answer to an earlier request
                    self.discarded += 1
                    continue
                return msg
        raise ControlTimeoutError(self._timeout_message(type, timeout, unverified))

    def _timeout_message(self, type: str, timeout: float, unverified: int) -> str:
        text = f"sentinel at {self.address} did not answer {type} within {timeout:.1f} s"
        if unverified:
            text += (f" ({unverified} reply(ies) failed the signature check: is "
                     f"{self.info.path or CONNECTION_FILE} from the running sentinel?)")  # fmt: skip
        elif not connection_is_live(self.info):
            text += f" (its process {self.info.pid} is not running)"
        return text

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; later requests raise :class:`SentinelError`."""
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ControlClient {self.address} pid={self.info.pid} {state}>"

    # -- convenience -------------------------------------------------------------------------

    def ping(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``Pong{pid, version, uptime_s, event_seq}``; a short ``timeout`` makes a liveness
        probe. ``event_seq`` is the ``seq`` of the last event the sentinel published."""
        return self._call(Ping(), timeout=timeout)

    def list_jobs(self, status: str | None = None, *, limit: int | None = None,
                  offset: int | None = None,
                  submission_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """``{"jobs": [job, ...], "total": n}`` (``total`` counts all matches, not the page)."""
        return self._call(ListJobs(status=status, limit=limit, offset=offset,
                                   submission_id=submission_id))  # fmt: skip

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        """One job as a dict, or None when there is no such job."""
        job: dict[str, Any] | None = self._call(GetJob(job_id=job_id)).get("job")
        return job

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """``{"success", "message", "state"}``; a running job is "cancel_requested" until its
        worker confirms ABORTED."""
        return self._call(CancelJob(job_id=job_id))

    def cancel_jobs(self, job_ids: Sequence[int] | None = None, *,
                    status: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Cancel several jobs, or every job in ``status`` (e.g. "QUEUED")."""
        ids = list(job_ids) if job_ids is not None else None
        return self._call(CancelJobs(job_ids=ids, status=status))

    def retry_jobs(self, job_ids: Sequence[int] | None = None, *,
                   statuses: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        """Re-queue FAILED/ABORTED jobs as new attempts (``job_ids``, else every job in
        ``statuses``): ``{"job_ids", "attempts", "refused"}``."""
        return self._call(RetryJobs(job_ids=[int(i) for i in job_ids or ()],
                                    statuses=[JobStatus(str(s).upper()) for s in statuses]))

    def compact(self, sink: str, output: str | None = None, *,
                target_size: int = 128 * 1024 * 1024,
                timeout: float | None = 3600.0) -> dict[str, Any]:
        """Merge the small promoted files of a ``parquet://`` sink (the sentinel does it,
        taking turns with its promotions): ``Compacted`` as a dict. Waits up to ``timeout``
        seconds: merging gigabytes takes a while."""
        return self._call(CompactOutputs(sink=sink, output=output, target_size=target_size),
                          timeout=timeout)

    def queue_stats(self) -> dict[str, int]:
        """Counts per state plus ``total``."""
        return self._call(GetQueueStats())

    def submit(self, plugin: PathLike, inputs: PathLike | Sequence[PathLike], *,
               sink: str | None = None, mode: str | None = None, priority: int | None = None,
               timeout: float | None = None, submission_id: str | None = None,
               force: bool = False, quarantine: QuarantinePolicy | None = None,
               resources: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
        """Queue one job per input file: ``{"job_ids", "skipped", "submission_id"}``.
        ``resources``: what each job needs on a Dask worker (e.g. ``{"GPU": 1}``)."""
        files = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        return self._call(SubmitJobs(
            plugin=os.fspath(plugin), inputs=[os.fspath(f) for f in files], sink=sink, mode=mode,
            priority=priority or 0, timeout=timeout, submission_id=submission_id, force=force,
            quarantine=quarantine, resources=resources or None))

    def register_plugin(self, path: PathLike) -> dict[str, Any]:
        """Register (or refresh) a plugin file: ``{plugin_id, name, version, source_hash, trust}``."""
        return self._call(RegisterPlugin(path=os.fspath(path)))

    def list_workers(self) -> list[dict[str, Any]]:
        """The connected workers, one dict each."""
        workers: list[dict[str, Any]] = self._call(ListWorkers())["workers"]
        return workers

    def shutdown(self) -> dict[str, Any]:
        """Ask the sentinel to stop (it answers first, then stops)."""
        return self._call(Shutdown())


class EventSubscriber:
    """Receives the sentinel's events (SUB socket). Not thread-safe: poll from one thread.

    Like any SUB socket it only sees events published after its subscription reached the
    sentinel, so a consumer should fetch current state (``list_jobs``) once after connecting.
    """

    def __init__(self, info: ConnectionInfo, topics: Sequence[bytes] = (b"",), *,
                 context: zmq.Context[Any] | None = None) -> None:  # fmt: skip
        self.info = info
        #: Messages dropped: unsigned, badly signed, malformed or not an Event.
        self.dropped = 0
        self._codec = Codec(info.key_bytes, accepts=EventMessage)
        ctx = context or zmq.Context.instance()
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self._codec.max_bytes)
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(info.events)
        self._early: list[Message] = []  # events read while waiting for readiness
        self._ready_token: str | None = None
        self._is_ready = False

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the sentinel has our subscriptions (then no event published from now
        on is missed); False after ``timeout``. A SUB socket connects in the background, so
        without this the first events after connecting can be lost ("slow joiner")."""
        if self._is_ready:
            return True
        self._ready_token = uuid.uuid4().hex
        topic = b"ready." + self._ready_token.encode()
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + timeout
        try:
            while not self._is_ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._early += self._receive(left, 1000)
            return True
        finally:
            self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    def poll(self, timeout: float | None = 0.0, *, max_messages: int = 1000) -> list[Message]:
        """Wait up to ``timeout`` seconds (None: forever) for events, then return every event
        already received (at most ``max_messages``), oldest first."""
        if self._early:
            out, self._early = self._early[:max_messages], self._early[max_messages:]
            return out + self._receive(0.0, max_messages - len(out))
        return self._receive(timeout, max_messages)

    def _receive(self, timeout: float | None, max_messages: int) -> list[Message]:
        ms = None if timeout is None else max(0, int(timeout * 1000))
        out: list[Message] = []
        if max_messages <= 0 or not self.socket.poll(ms, zmq.POLLIN):
            return out
        while len(out) < max_messages:
            try:
                raw = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                _, msg = self._codec.decode(raw)
            except ProtocolError:
                self.dropped += 1
                continue
            if isinstance(msg.payload, Subscribed):  # ours ends wait_ready; others' are not
                if msg.payload.token == self._ready_token:
                    self._is_ready = True
                continue
            if not isinstance(msg.payload, Event):
                self.dropped += 1
                continue
            out.append(msg)
        return out

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

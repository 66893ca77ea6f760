"""Append events to a tape: one complete JSON line per event, one writer per file.

>>> with TapeWriter("session.tape") as tape:                       # doctest: +SKIP
...     cmd, corr = tape.command("Submit", {"plugin": "plugins/orders.py"})
...     tape.emit("domain_event", "JobQueued", {"job_id": "1", "input_file": "a.csv"})
...     tape.succeeded(cmd, corr, {"job_ids": ["1"]})

Guarantees:

* ``seq`` runs 0, 1, 2, ... without gaps, in file order, across threads (a lock orders the
  sequence number, the timestamp and the write).
* Each event is a single ``os.write`` of one complete line on an ``O_APPEND`` descriptor, so a
  crash leaves at most one partial line, and only at the very end (readers report it as
  truncation). Lines reach the OS per event; they are not fsync'ed — a process crash loses
  nothing, a power cut may lose the tail.
* One writer per file across processes and within one: ``flock`` on the open file; a second
  opener gets :class:`TapeLockedError` *before* anything is truncated.
* ``TapeStarted`` is written first; ``close()`` writes ``TapeStopped`` once. Writers still
  open at interpreter exit are closed with reason ``process_exit``. After ``fork()`` the child's
  copy refuses to write (the parent owns the tape).
"""

from __future__ import annotations

import atexit
import fcntl
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from json import JSONEncoder
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import TapeError
from ..protocol import JobStatus
from .envelope import (
    COMMAND_FAILED,
    COMMAND_SUCCEEDED,
    COMMAND_SUCCESS,
    DOMAIN_EVENT,
    ERROR_EVENT,
    NAMED_TYPES,
    SCHEMA_VERSION,
    SYSTEM_RESPONSE,
    TAPE_STARTED,
    TAPE_STOPPED,
    UI_COMMAND,
    casparian_version,
    finite,
)
from .redact import Redactor

__all__ = ["TapeLockedError", "TapeWriter", "new_correlation_id"]


class TapeLockedError(TapeError):
    """Another writer (in this or another process) holds the tape file."""


_ENCODER = JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
# JSONEncoder.encode builds a C encoder per call; building it once saves ~1.5 us per event.
# (No cycle markers: payloads are trees; a cycle ends in RecursionError, not a hang.)
_C_ENCODE = (
    c_make_encoder(None, str, encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None
    else None
)


def _encode(value: Any) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value, 0))
    return _ENCODER.encode(value)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_LIVE: weakref.WeakSet[TapeWriter] = weakref.WeakSet()


class _UUIDs:
    """uuid4 strings from batched ``os.urandom``: ~4x cheaper than ``str(uuid.uuid4())``."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0

    def __call__(self) -> str:
        if self._pos >= len(self._buf):
            self._buf = os.urandom(16 * 1024).hex()
            self._pos = 0
        h = self._buf[self._pos : self._pos + 32]
        self._pos += 32
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class TapeWriter:
    """Thread-safe writer of one tape file (envelope v1).

    Parameters
    ----------
    path:
        The tape file; created (0600) or truncated once the lock is held.
    redact:
        Hash paths and free text in payloads by field (see :mod:`.redact`). Default on.
    producer:
        Recorded in ``TapeStarted`` (``cli``, ``sentinel``, ``notebook``, ...).
    salt:
        Redaction salt; random per tape unless given (tests and golden tapes fix it).
    clock, ids:
        Sources of event times (epoch seconds) and of event/correlation ids; default the
        wall clock and uuid4. Fixed ones make a tape byte-for-byte reproducible.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        redact: bool = True,
        producer: str = "cli",
        salt: bytes | None = None,
        clock: Callable[[], float] | None = None,
        ids: Callable[[], str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.producer = producer
        self.redactor = Redactor(salt, enabled=redact)
        self._clock = clock or time.time
        self._ids: Callable[[], str] = ids or _UUIDs()
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._broken = False
        self._forked = False
        self._ts_sec = -1
        self._ts_prefix = ""
        self._names: dict[tuple[str, str | None], str] = {}
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise TapeError(f"cannot open tape {self.path}: {exc.strerror or exc}") from exc
        try:
            # Lock before truncating: a second writer must not wipe the first one's tape.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TapeLockedError(
                f"tape {self.path} is already being written by another writer "
                "(one writer per tape file); choose another file or stop the other process"
            ) from None
        os.ftruncate(fd, 0)
        self._fd = fd
        _LIVE.add(self)
        self._append(
            TAPE_STARTED,
            None,
            {
                "producer": producer,
                "casparian_version": casparian_version(),
                "salt_hash": self.redactor.salt_hash if redact else None,
                "redaction": "hash" if redact else "none",
            },
            None,
            None,
        )

    # -- state -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once ``close()`` ran (or the writer can no longer write)."""
        return self._closed

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event will get (= number of events written)."""
        return self._seq

    @property
    def salt_hash(self) -> str:
        """The redaction hash of the salt, as recorded in ``TapeStarted``."""
        return self.redactor.salt_hash

    def hash(self, value: str) -> str:
        """This tape's redaction hash of ``value`` (to correlate with hashed payload fields)."""
        return self.redactor.hash(value)

    # -- events ----------------------------------------------------------------------------
    def emit(
        self,
        kind: str,
        name: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        parent_id: str | None = None,
        at: float | None = None,
    ) -> str:
        """Append one event; returns its ``event_id``.

        ``kind`` is ``ui_command``, ``domain_event``, ``system_response`` or ``error_event``
        (``tape_started``/``tape_stopped`` belong to the writer). The payload is redacted
        by ``name``'s schema before it is written. ``at`` (epoch seconds) is when the event
        happened, if not now: a relayed sentinel event keeps the sentinel's time.
        """
        if kind not in NAMED_TYPES:
            raise ValueError(f"cannot emit event type {kind!r}; use one of {sorted(NAMED_TYPES)}")
        if not isinstance(name, str) or not name:
            raise ValueError("event name must be a non-empty string")
        return self._append(kind, name, payload, correlation_id, parent_id, at)

    def domain(self, name: str, payload: Any = None, *, at: float | None = None,
               **links: str | None) -> str:
        """``emit("domain_event", name, payload, ...)``: what the sentinel records."""
        return self.emit(DOMAIN_EVENT, name, payload, at=at, **links)

    def command(self, name: str, payload: Any = None) -> tuple[str, str]:
        """Record a ``ui_command`` under a fresh correlation id: ``(event_id, correlation_id)``."""
        corr = self._ids()
        return self.emit(UI_COMMAND, name, payload, correlation_id=corr), corr

    def succeeded(self, cmd_event_id: str, correlation_id: str, payload: Any = None) -> str:
        """``SystemResponse("CommandSucceeded") {status: "success", **payload}``."""
        body = {"status": COMMAND_SUCCESS, **(payload or {})}
        return self.emit(SYSTEM_RESPONSE, COMMAND_SUCCEEDED, body,
                         correlation_id=correlation_id, parent_id=cmd_event_id)

    def failed(self, cmd_event_id: str, correlation_id: str, error: str | BaseException) -> str:
        """``ErrorEvent("CommandFailed") {status: "failed", error}``; error text is scrubbed."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        return self.emit(ERROR_EVENT, COMMAND_FAILED, {"status": JobStatus.FAILED.tape_name, "error": error},
                         correlation_id=correlation_id, parent_id=cmd_event_id)

    def close(self, reason: str = "session_end") -> None:
        """Write ``TapeStopped {reason}`` (once) and release the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not (self._forked or self._broken):
                    self._write_locked(TAPE_STOPPED, None, {"reason": reason}, None, None)
            finally:
                _LIVE.discard(self)
                os.close(self._fd)  # closing the descriptor releases the flock

    def __enter__(self) -> TapeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("session_end" if exc_type is None else "error")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"next_seq={self._seq}"
        return f"<TapeWriter {str(self.path)!r} {state}>"

    # -- hot path --------------------------------------------------------------------------
    def _append(
        self, kind: str, name: str | None, payload: Any, corr: str | None, parent: str | None,
        at: float | None = None,
    ) -> str:
        if payload is None:
            payload = {}
        # Redact and encode outside the lock; only seq/timestamp/write need ordering.
        # name is None only for the writer's own TapeStarted/TapeStopped: nothing to redact.
        enabled = self.redactor.enabled and name is not None
        body = self.redactor.payload(name, payload) if enabled else payload
        try:
            encoded = _encode(body)
        except ValueError:
            encoded = _encode(finite(body))
        with self._lock:
            return self._write_locked(kind, name, encoded, corr, parent, at)

    def _write_locked(
        self, kind: str, name: str | None, encoded: Any, corr: str | None, parent: str | None,
        at: float | None = None,
    ) -> str:
        if self._closed and kind != TAPE_STOPPED:
            raise TapeError(f"tape {self.path} is closed")
        if self._forked:
            raise TapeError("this TapeWriter was inherited through fork(); open a new tape")
        if self._broken:
            raise TapeError(f"tape {self.path} is unusable after a failed write")
        if not isinstance(encoded, str):
            encoded = _encode(encoded)
        en = self._names.get((kind, name))
        if en is None:
            en = _ENCODER.encode({"type": kind} if name is None else {"type": kind, "name": name})
            self._names[(kind, name)] = en
        t = self._clock() if at is None else at
        sec = math.floor(t)
        if sec != self._ts_sec:  # strftime once per second, not per event
            self._ts_sec = sec
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ts = f"{self._ts_prefix}.{int((t - sec) * 1e6):06d}Z"
        event_id = self._ids()
        line = (
            f'{{"schema_version":{SCHEMA_VERSION},"event_id":{encode_basestring(event_id)},'
            f'"seq":{self._seq},"timestamp":"{ts}",'
            f'"correlation_id":{"null" if corr is None else encode_basestring(corr)},'
            f'"parent_id":{"null" if parent is None else encode_basestring(parent)},'
            f'"event_name":{en},"payload":{encoded}}}\n'
        )
        # Lone surrogates cannot be UTF-8; backslashreplace turns them into valid \\u escapes.
        data = line.encode("utf-8", "backslashreplace")
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            if written:
                self._broken = True  # a half line is on disk: appending more would corrupt it
            raise TapeError(f"cannot write tape {self.path}: {exc.strerror or exc}") from exc
        self._seq += 1
        return event_id


def new_correlation_id() -> str:
    """A fresh correlation id (uuid4) for producers that link events themselves."""
    return str(uuid.uuid4())


def _close_all_at_exit() -> None:
    for writer in list(_LIVE):
        try:
            writer.close("process_exit")
        except Exception:  # exit path: one broken tape must not hide the others
            continue


def _after_fork_in_child() -> None:
    for writer in list(_LIVE):
        writer._forked = True


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)

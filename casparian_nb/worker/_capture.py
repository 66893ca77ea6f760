"""Capturing one job attempt's output inside the plugin host (:mod:`casparian_nb.joblogs`).

:func:`capture_output` points the host's file descriptors 1 and 2 at a pipe for the length
of the job, so what C extensions and subprocesses write is caught as well as ``print`` and
:mod:`logging` (the host's handler writes to ``sys.stderr``). The pipe is drained into a
:class:`BoundedLog`: the first ``head`` bytes go straight to the file, the last ``tail``
bytes are kept in a fixed buffer and rewritten after the head a few times a second, so a job
printing 10 MB costs the host ~128 KiB and its log stays that size, and a host killed
mid-job still leaves nearly all of its last words on disk. The file is created on the first
byte: a silent job leaves none.

While the job runs, one long-lived thread of the host (:class:`_Pump`) drains the pipe, so a
job that prints more than a pipe holds never blocks; it waits in a selector that takes the
job's pipe while it waits, so a silent job never wakes it. When the job ends, the pipe leaves
the selector and the job's own thread takes what is left in it, under the pump's lock: a job
costs no thread start and no wait for another thread to be scheduled (on a busy machine, each
such hand-off cost about a third of a small job's time). Only when a subprocess the job
started still holds the pipe does the job's thread wait, for at most ``_DRAIN_GRACE``, while
the pump reads on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..joblogs import HEAD_BYTES, TAIL_BYTES, job_log_path, meta_path
from ..protocol import HostJob

__all__ = ["BoundedLog", "capture_job_output", "capture_output"]

_CHUNK = 64 * 1024
#: How often (at most) the kept tail is rewritten into the file while output streams in.
_FLUSH_EVERY = 0.25
#: After the job, how long to wait for a subprocess it left behind to close the pipe.
_DRAIN_GRACE = 1.0
#: Selectors that see a pipe registered by another thread while they wait.
_LIVE_SELECTORS: tuple[type[selectors.BaseSelector], ...] = tuple(
    getattr(selectors, name) for name in ("EpollSelector", "KqueueSelector", "DevpollSelector")
    if hasattr(selectors, name))


class BoundedLog:
    """Streams bytes into ``path``: the head as it comes, then only the latest tail."""

    def __init__(self, path: Path, *, head: int = HEAD_BYTES, tail: int = TAIL_BYTES,
                 scrub: Callable[[str], str] | None = None) -> None:
        self.path = path
        self.head, self.tail_max = head, tail
        self.scrub = scrub
        self.total = 0
        self._head_len = 0  # raw bytes of the head already handled
        self._head_end = 0  # file offset where the head ends
        self._pending = b""  # an unfinished line of the head (scrubbed only whole)
        self._head_nl = True  # the head ends with a newline (or is empty)
        self._tail = bytearray()
        self._tail_dirty = False
        self._tail_on_line = True
        self._last_flush = 0.0
        self._fh: io.FileIO | None = None

    @property
    def truncated(self) -> bool:
        return self.total > self._head_len + len(self._tail)

    def _file(self) -> io.FileIO:
        if self._fh is None:  # created on the first byte: a silent job leaves no file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "wb", buffering=0)  # closed by close()
        return self._fh

    def _text(self, raw: bytes) -> bytes:
        if self.scrub is None:
            return raw
        return self.scrub(raw.decode("utf-8", "replace")).encode("utf-8")

    def write(self, data: bytes) -> None:
        """Take the next bytes of output (never raises on a full disk: output is dropped)."""
        if not data:
            return
        self.total += len(data)
        room = self.head - self._head_len
        if room > 0:
            part, data = data[:room], data[room:]
            self._head_len += len(part)
            buf = self._pending + part
            cut = buf.rfind(b"\n") + 1
            if room - len(part) <= 0:  # head full: write it all, whole line or not
                cut = len(buf)
            self._pending = buf[cut:]
            with contextlib.suppress(OSError):
                fh = self._file()
                fh.write(self._text(buf[:cut]))
                self._head_end = fh.tell()
                self._head_nl = buf[:cut].endswith(b"\n") if cut else self._head_nl
        if data:
            self._tail += data
            if len(self._tail) > self.tail_max:
                cut = len(self._tail) - self.tail_max
                self._tail_on_line = self._tail[cut - 1] == 0x0A  # the tail starts a line
                del self._tail[:cut]
            self._tail_dirty = True
            if time.monotonic() - self._last_flush >= _FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        """Write the pending head line and the current tail after the head."""
        self._last_flush = time.monotonic()
        if not (self._pending or self._tail_dirty):
            return
        with contextlib.suppress(OSError):
            fh = self._file()
            if self._pending:
                fh.seek(self._head_end)
                fh.write(self._text(self._pending))
                self._head_end = fh.tell()
                self._head_nl = self._pending.endswith(b"\n")
                self._pending = b""
            if self._tail_dirty:
                tail = bytes(self._tail)
                omitted = self.total - self._head_len - len(tail)
                if omitted > 0 and not self._tail_on_line:  # start on a whole line
                    nl = tail.find(b"\n")
                    if 0 <= nl < len(tail) - 1:
                        omitted += nl + 1
                        tail = tail[nl + 1 :]
                note = (f"{'' if self._head_nl else chr(10)}[casparian: {omitted:,} bytes left out here; "
                        f"{self.total:,} bytes written in all]\n".encode() if omitted > 0 else b"")
                fh.seek(self._head_end)
                fh.write(note + self._text(tail))
                fh.truncate()
                self._tail_dirty = False
            self._write_meta()

    def _write_meta(self) -> None:
        meta = {"total_bytes": self.total, "truncated": self.truncated,
                "head_bytes": self._head_len, "tail_bytes": len(self._tail)}
        tmp = meta_path(self.path).with_suffix(".tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, meta_path(self.path))

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._write_meta()
                self._fh.close()
            self._fh = None


class _Pump:
    """The host's one thread that drains the pipes of running jobs into their logs.

    It waits in a selector (epoll on Linux, kqueue on macOS) that takes a new pipe, or drops
    one, while it waits: a job that prints nothing never wakes it. A job's pipe leaves the
    selector before the job's write ends close, so its end-of-file does not wake it either
    (each such wake-up was a thread switch and a lock hand-off per job, issue 18).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held for every read of a job pipe and its log
        self._logs: dict[int, BoundedLog] = {}  # read fd -> log, while it is drained
        self._done: dict[int, threading.Event] = {}  # read fd -> set at EOF (lingering pipes)
        self._selector = selectors.DefaultSelector()
        #: select/poll only see the pipes they were called with: those need a wake-up.
        self._needs_wake = not isinstance(self._selector, _LIVE_SELECTORS)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"w")

    def _select(self, fd: int) -> None:
        self._selector.register(fd, selectors.EVENT_READ)
        if self._needs_wake:
            self._wake()

    def _unselect(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def watch(self, read_fd: int, log: BoundedLog) -> None:
        """Drain ``read_fd`` into ``log`` from now on."""
        os.set_blocking(read_fd, False)
        with self._lock:
            self._logs[read_fd] = log
            self._select(read_fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cf-joblog", daemon=True)
                self._thread.start()

    def pause(self, read_fd: int) -> None:
        """The job is ending: stop watching ``read_fd`` before its write ends close."""
        with self._lock:
            self._unselect(read_fd)

    def finish(self, read_fd: int, log: BoundedLog) -> None:
        """The job is over and its write ends are closed: take the rest of the pipe here and
        close it; if a subprocess still holds it, let the pump read on for a short grace."""
        with self._lock:
            done = None
            if read_fd not in self._logs or self._take(read_fd, log, everything=True):
                self._close(read_fd)
            else:
                done = self._done[read_fd] = threading.Event()
                self._select(read_fd)
        if done is not None and not done.wait(_DRAIN_GRACE):
            with self._lock:
                if read_fd in self._logs:
                    self._take(read_fd, log, everything=True)
                    self._close(read_fd)
        log.close()

    def _take(self, fd: int, log: BoundedLog, *, everything: bool) -> bool:
        """Read what the pipe holds into the log (with the lock held); True at EOF."""
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            log.write(chunk)
            if not everything:
                return False

    def _close(self, fd: int) -> None:
        self._logs.pop(fd, None)
        self._unselect(fd)
        done = self._done.pop(fd, None)
        if done is not None:
            done.set()
        with contextlib.suppress(OSError):
            os.close(fd)

    def _run(self) -> None:
        while True:
            with self._lock:
                dirty = any(log._tail_dirty or log._pending for log in self._logs.values())
            try:
                ready = [key.fd for key, _ in self._selector.select(0.1 if dirty else None)]
            except (OSError, ValueError):  # a pipe closed under us: look again
                ready = [self._wake_r]
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
            with self._lock:
                for fd in ready:
                    # Gone, paused, or a new pipe that reuses the number (then read it).
                    log = self._logs.get(fd) if fd != self._wake_r else None
                    if log is None or not self._take(fd, log, everything=False):
                        continue
                    if fd in self._done:
                        self._close(fd)  # EOF of a lingering pipe: its job can return
                    else:  # the job closed fds 1 and 2: finish() closes it
                        del self._logs[fd]
                        self._unselect(fd)
                if not ready:
                    for log in self._logs.values():
                        if log._tail_dirty or log._pending:
                            log.flush()


_pump = _Pump()


@contextlib.contextmanager
def capture_output(path: Path, *, scrub: Callable[[str], str] | None = None
                   ) -> Iterator[BoundedLog]:  # fmt: skip
    """For the ``with`` block, fds 1 and 2 (and so ``sys.stdout``/``sys.stderr`` and
    every logging handler on them) write into the bounded log at ``path``."""
    log = BoundedLog(path, scrub=scrub)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # Line by line, so prints and log records keep their order in the log (a plugin host's
    # stdout already is: see worker/host.py).
    buffered = getattr(sys.stdout, "line_buffering", True)
    if not buffered:
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    read_fd, write_fd = os.pipe()
    saved = (os.dup(1), os.dup(2))
    _pump.watch(read_fd, log)
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield log
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if not buffered:
            with contextlib.suppress(Exception):
                sys.stdout.reconfigure(line_buffering=False)  # type: ignore[union-attr]
        _pump.pause(read_fd)  # before the write ends close: their EOF is read here
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        # Our write ends are closed now: the rest of the pipe is ours to take, unless a
        # subprocess the job started still holds it (then at most a short grace).
        _pump.finish(read_fd, log)


_scrubber: Callable[[str], str] | None = None


def _scrub(text: str) -> str:
    """The tape's free-text redaction (paths, URIs, file names, home, user, host), with one
    salt per host process."""
    global _scrubber
    if _scrubber is None:
        from ..tape.redact import Redactor

        _scrubber = Redactor().scrub
    return _scrubber(text)


def capture_job_output(attempt: HostJob) -> contextlib.AbstractContextManager[object]:
    """Capture ``attempt``'s output into ``<log_root>/<job_id>/attempt-<n>.log`` (redacted
    when ``attempt.redact_log``); nothing when the attempt has no ``log_root``."""
    if attempt.log_root is None:
        return contextlib.nullcontext()
    path = job_log_path(attempt.log_root, attempt.job.job_id, attempt.attempt)
    return capture_output(path, scrub=_scrub if attempt.redact_log else None)

"""The child process of a split ``tape explain`` (``_split``) and how we speak to it.

After ``fork`` the child explains the second segment and answers three questions over a pair
of pipes (length-prefixed pickles): which jobs it saw (so we can tell it the boundary jobs),
its story with their events, and its jobs rendered in the output format. The rendered jobs,
tens of MB, go through a memfd both processes share rather than down the pipe. Any failure
in the child comes back as an error (or as the pipe closing); the parent then explains the
segment itself. The child always leaves with ``os._exit``: no atexit handlers, no flushing of
buffers it inherited.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any, Protocol

__all__ = ["CHILD_FAILED", "Child", "SegmentLike"]


class SegmentLike(Protocol):
    """What the child does with its segment (``_split.Segment``)."""

    def scan(self) -> Any: ...
    def candidates(self) -> list[str]: ...
    def story(self, keys: set[str]) -> dict[str, Any]: ...
    def jobs(self, keys: set[str], fmt: str) -> dict[str, Any]: ...


#: what asking the child can raise when it failed or vanished
CHILD_FAILED = (OSError, EOFError, RuntimeError, pickle.UnpicklingError)


_LEN = struct.Struct("<Q")


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> Any:
    head = _read(fd, _LEN.size)
    return pickle.loads(_read(fd, _LEN.unpack(head)[0]))


def _read(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 24))
        if not chunk:
            raise EOFError("the explain child process ended early")
        buf += chunk
    return bytes(buf)


def _child(second: SegmentLike, rfd: int, wfd: int, textfd: int) -> None:
    """In the forked child: explain the second segment and answer the parent's questions."""
    code = 1
    try:
        second.scan()
        _send(wfd, ("ok", second.candidates()))
        keys, fmt = _recv(rfd)
        keys = set(keys)
        _send(wfd, ("ok", second.story(keys)))
        jobs = second.jobs(keys, fmt)
        # Tens of MB of rendered jobs: through a shared file, not pickled down the pipe
        view = memoryview(jobs.pop("text"))
        jobs["text_bytes"] = len(view)
        while view:
            view = view[os.write(textfd, view):]
        _send(wfd, ("ok", jobs))
        code = 0
    except BaseException as exc:  # the parent explains the segment itself
        try:
            _send(wfd, ("error", f"{type(exc).__name__}: {exc}"))
        except BaseException:
            pass
    finally:
        os._exit(code)


class Child:
    """The forked child explaining the second segment, spoken to over two pipes."""

    def __init__(self, second: SegmentLike) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        self.textfd = _scratch_fd()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a reader that left: not ours to fix
                pass
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child, which never returns
            os.close(down_w)
            os.close(up_r)
            _child(second, down_r, up_w, self.textfd)
        os.close(down_r)
        os.close(up_w)
        self.rfd, self.wfd = up_r, down_w
        self.closed = False

    def ask(self, obj: Any | None = None) -> Any:
        if obj is not None:
            _send(self.wfd, obj)
        status, value = _recv(self.rfd)
        if status != "ok":
            raise RuntimeError(value)
        return value

    def jobs(self) -> dict[str, Any]:
        """The child's last answer, with its rendered jobs read from the shared file."""
        jobs = dict(self.ask())
        n = jobs.pop("text_bytes")
        raw = os.pread(self.textfd, n, 0) if n else b""
        if len(raw) != n:
            raise EOFError("the explain child's rendered jobs are incomplete")
        jobs["text"] = raw
        return jobs

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.rfd, self.wfd, self.textfd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _scratch_fd() -> int:
    """An anonymous file both processes can read and write (memfd where Linux has it)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("casparian-explain", os.MFD_CLOEXEC)
    import tempfile

    with tempfile.TemporaryFile() as fh:
        return os.dup(fh.fileno())

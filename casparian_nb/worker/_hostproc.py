"""One plugin host child process, as its pool sees it: started (``python -m
casparian_nb.worker.host`` with one end of a socket pair), waited for until ready, asked to
exit, or terminated (SIGTERM, a grace, SIGKILL). Its output goes to its log file, through
a :class:`~casparian_nb.worker._hostlog.CappedLog` when the log has a size cap."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from ..errors import CasparianError
from ..protocol import AbortCause, HostExit, HostReady
from ._hostlog import CappedLog

__all__ = ["READY_TIMEOUT", "PluginHostProcess"]

#: How long a host may take to import and report ready (seconds).
READY_TIMEOUT = 60.0
_ready = msgspec.json.Decoder(HostReady)
_EXIT = msgspec.json.Encoder().encode(HostExit())


class PluginHostProcess:
    """One host child process and the parent's end of its socket pair."""

    def __init__(self, *, log_path: Path, memory_limit_mb: int = 0,
                 env: Mapping[str, str] | None = None, log_max_bytes: int = 0,
                 warm: str | None = None) -> None:
        parent_sock, child_sock = socket.socketpair()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        #: With a cap, the host writes into a pipe that a thread here copies (CappedLog);
        #: without one, straight into the file.
        self.log: CappedLog | None = None
        read_fd = -1
        if log_max_bytes > 0:
            self.log = CappedLog(log_path, log_max_bytes)
            read_fd, write_fd = os.pipe()
            out: Any = write_fd
        else:
            out = open(log_path, "ab", buffering=0)  # handed to the child, closed below
        cmd = [sys.executable, "-m", "casparian_nb.worker.host", "--fd", str(child_sock.fileno()),
               "--parent", str(os.getpid()), "--memory-limit-mb", str(memory_limit_mb)]
        if warm is not None:
            cmd += ["--warm", warm]
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                start_new_session=True,  # a Ctrl-C in a terminal reaches the parent, not hosts
            )
        except BaseException:
            parent_sock.close()
            if self.log is not None:
                os.close(read_fd)
                self.log.close()
            raise
        finally:
            child_sock.close()
            if isinstance(out, int):
                os.close(out)  # the child has its copy: EOF comes when the host exits
            else:
                out.close()
        if self.log is not None:
            self.log.start(read_fd, f"cf-hostlog-{self.proc.pid}")
        self.conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self.pid = self.proc.pid
        self.ready = False
        self.job_id: str | None = None
        #: Why the pool killed this host (cancel, timeout, shutdown); None while it is healthy.
        self.killed_reason: str | None = None
        #: ... and why, for the sentinel.
        self.killed_cause = AbortCause.CANCELLED

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.terminate(0.0)
            raise CasparianError(f"plugin host pid {self.pid} did not start within {timeout:.0f}s "
                                 f"(see {self.log_path})")
        try:
            raw = self.conn.recv_bytes()
        except (EOFError, OSError):
            code = self.proc.wait(5)
            raise CasparianError(f"plugin host exited during start-up with code {code} "
                                 f"(see {self.log_path})") from None
        try:
            _ready.decode(raw)
        except msgspec.DecodeError as exc:
            raise CasparianError(f"plugin host sent {raw[:60]!r} instead of ready: {exc}") from None
        self.ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reap the process.

        Leaves the connection open: the thread waiting on it sees EOF at once (closing an fd
        another thread is polling would not wake it).
        """
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def kill(self, grace: float) -> None:
        """Terminate the process and close the connection."""
        self.terminate(grace)
        self.conn.close()

    def close(self, timeout: float = 2.0) -> None:
        """Ask the host to exit; kill it if it does not."""
        self.request_exit()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self.kill(0.05)

    def request_exit(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(_EXIT)

"""A pool of warm plugin hosts that can kill any running job at any moment.

:class:`HostPool` keeps ``size`` host processes alive. :meth:`HostPool.run` takes an idle host,
sends it a job and blocks (in the caller's thread) for the result. :meth:`HostPool.cancel` and
per-job timeouts kill the host (SIGTERM, a short grace, SIGKILL) and the pool starts a fresh one
in its place, so a killed job costs one host start-up, not a stalled slot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import CasparianError

__all__ = ["HostPool", "HostResult", "PluginHostProcess"]

_READY_TIMEOUT = 60.0


@dataclass
class HostResult:
    """What a job run on a host came to."""

    job_id: str
    status: str  # SUCCESS | FAILED | ABORTED
    data: dict[str, Any] = field(default_factory=dict)
    host_pid: int | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        return self.data.get("error")


class PluginHostProcess:
    """One host child process and the parent's end of its socket pair."""

    def __init__(self, *, log_path: Path, memory_limit_mb: int = 0,
                 env: Mapping[str, str] | None = None) -> None:
        parent_sock, child_sock = socket.socketpair()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "casparian_nb.worker.host", "--fd", str(child_sock.fileno()),
               "--parent", str(os.getpid()), "--memory-limit-mb", str(memory_limit_mb)]
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                start_new_session=True,  # a Ctrl-C in a terminal reaches the parent, not hosts
            )
        finally:
            child_sock.close()
            log.close()
        self.conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self.pid = self.proc.pid
        self.ready = False
        self.job_id: str | None = None
        self.killed_reason: str | None = None

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.kill(0.0)
            raise CasparianError(f"plugin host pid {self.pid} did not start within {timeout:.0f}s "
                                 f"(see {self.log_path})")
        try:
            msg = json.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            code = self.proc.wait(5)
            raise CasparianError(f"plugin host exited during start-up with code {code} "
                                 f"(see {self.log_path})") from None
        if msg.get("type") != "ready":
            raise CasparianError(f"plugin host sent {msg.get('type')!r} instead of ready")
        self.ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reap the process."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            except ProcessLookupError:
                pass
        self.conn.close()

    def close(self, timeout: float = 2.0) -> None:
        """Ask the host to exit; kill it if it does not."""
        try:
            self.conn.send_bytes(b'{"type": "exit"}')
            self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill(0.05)


class HostPool:
    """``size`` warm plugin hosts; thread-safe ``run``/``cancel``."""

    def __init__(self, size: int, *, log_dir: Path, cancel_grace: float = 0.05,
                 memory_limit_mb: int = 0, env: Mapping[str, str] | None = None,
                 name: str = "host") -> None:
        if size < 1:
            raise ValueError("a host pool needs at least one host")
        self.size = size
        self._log_dir = log_dir
        self._grace = cancel_grace
        self._memory = memory_limit_mb
        self._env = env
        self._name = name
        self._counter = 0
        self._lock = threading.Condition()
        self._idle: list[PluginHostProcess] = []
        self._busy: dict[str, PluginHostProcess] = {}
        self._closed = False
        for _ in range(size):
            self._idle.append(self._spawn())

    def _spawn(self) -> PluginHostProcess:
        self._counter += 1
        log = self._log_dir / f"{self._name}-{os.getpid()}-{self._counter}.log"
        return PluginHostProcess(log_path=log, memory_limit_mb=self._memory, env=self._env)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [h.pid for h in (*self._idle, *self._busy.values())]

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Block until every idle host has finished its imports."""
        with self._lock:
            hosts = list(self._idle)
        for host in hosts:
            host.wait_ready(timeout)

    def _acquire(self, job_id: str) -> PluginHostProcess:
        with self._lock:
            while not self._idle:
                if self._closed:
                    raise CasparianError("host pool is closed")
                self._lock.wait()
            if self._closed:
                raise CasparianError("host pool is closed")
            host = self._idle.pop()
            host.job_id = job_id
            self._busy[job_id] = host
            return host

    def _release(self, host: PluginHostProcess, *, replace: bool) -> None:
        new = None
        if replace and not self._closed:
            new = self._spawn()  # outside the lock: Popen takes a few ms
        with self._lock:
            self._busy.pop(host.job_id or "", None)
            host.job_id = None
            if self._closed:
                (new or host).kill(0.0)
                if new is not None:
                    host.kill(0.0)
            else:
                self._idle.append(new if new is not None else host)
            self._lock.notify()

    def run(self, job: dict[str, Any], *, timeout: float | None = None) -> HostResult:
        """Run one job spec on an idle host and return its result (blocking).

        A host that dies mid-job yields FAILED (crash) or ABORTED (cancel / timeout); the
        host is then replaced.
        """
        job_id = str(job["job_id"])
        host = self._acquire(job_id)
        replace = True
        try:
            host.wait_ready()
            host.conn.send_bytes(json.dumps({"type": "job", "job": job}).encode())
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                try:
                    ready = host.conn.poll(wait)
                except (OSError, ValueError):  # closed under us by cancel()
                    ready = False
                if ready:
                    try:
                        msg = json.loads(host.conn.recv_bytes())
                    except (EOFError, OSError):
                        return self._dead_host_result(host, job_id)
                    replace = False
                    return HostResult(job_id, str(msg.get("status")), msg, host.pid)
                if host.killed_reason is not None or not host.alive():
                    return self._dead_host_result(host, job_id)
                if deadline is not None and time.monotonic() >= deadline:
                    host.killed_reason = f"timeout: job ran longer than {timeout:g}s"
                    host.kill(self._grace)
                    return self._dead_host_result(host, job_id)
        except CasparianError as exc:
            return HostResult(job_id, "FAILED", {"error": {
                "ename": type(exc).__name__, "evalue": str(exc), "traceback": "",
                "kind": "transient"}}, host.pid)
        finally:
            self._release(host, replace=replace)

    def _dead_host_result(self, host: PluginHostProcess, job_id: str) -> HostResult:
        if host.killed_reason is None:
            try:
                code = host.proc.wait(5)
            except subprocess.TimeoutExpired:
                host.kill(0.0)
                code = host.proc.returncode
            return HostResult(job_id, "FAILED", {"error": {
                "ename": "PluginHostCrashed",
                "evalue": f"plugin host exited with code {code} while running the job "
                          f"(see {host.log_path})",
                "traceback": "", "kind": "permanent"}}, host.pid)
        host.kill(self._grace)
        status = "ABORTED"
        return HostResult(job_id, status, {"reason": host.killed_reason,
                                           "timeout": host.killed_reason.startswith("timeout")},
                          host.pid)

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> bool:
        """Kill the host running ``job_id``; its ``run`` call returns ABORTED. Returns
        whether the job was running here."""
        with self._lock:
            host = self._busy.get(str(job_id))
        if host is None:
            return False
        host.killed_reason = reason
        host.kill(self._grace)
        return True

    def running(self) -> dict[str, int]:
        """job id -> host pid for jobs running now."""
        with self._lock:
            return {jid: h.pid for jid, h in self._busy.items()}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy.values())
            self._idle.clear()
            self._lock.notify_all()
        for host in busy:
            host.killed_reason = host.killed_reason or "shutdown"
            host.kill(self._grace)
        for host in idle:
            host.close()

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

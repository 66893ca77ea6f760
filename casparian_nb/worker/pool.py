"""A pool of warm plugin hosts that can kill any running job at any moment.

:class:`HostPool` keeps ``size`` host processes alive. :meth:`HostPool.run` takes an idle host,
sends it a job and blocks (in the caller's thread) for the result. :meth:`HostPool.cancel` and
per-job timeouts kill the host (SIGTERM, a short grace, SIGKILL) and the pool starts a fresh one
in its place, so a killed job costs one host start-up, not a stalled slot.

Whatever ends a job other than the host's own answer — a cancel, a timeout, a crash, the pool
closing — the pool removes the job's staging directory once the host is reaped, so a killed
job leaves nothing behind (F1, F2). A cancel that lands after the host answered but before
:meth:`run` returned still wins: the job is reported ABORTED and its staged outputs dropped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .._proc import signal_name
from ..errors import CasparianError
from ..protocol import (
    AbortCause,
    BatchStaged,
    ErrorInfo,
    ErrorKind,
    HostBatch,
    HostJob,
    Receipt,
    ReceiptStatus,
)
from ._hostproc import READY_TIMEOUT, PluginHostProcess

__all__ = ["BatchOutcome", "HostPool", "PluginHostProcess", "aborted"]

_POLL = 0.5
_to_host = msgspec.json.Encoder()
_receipt = msgspec.json.Decoder(Receipt)
_batch_staged = msgspec.json.Decoder(BatchStaged)


@dataclass(frozen=True)
class BatchOutcome:
    """What came back of a :class:`~casparian_nb.protocol.HostBatch` (:meth:`HostPool.run_batch`).

    ``receipts`` are those of the members that ended, in order — when the host died, the
    last one is that of the member it died in (crashed, killed, timed out or aborted).
    ``staged`` is None unless the host finished the whole batch: then the rows of members
    whose receipt has no ``staged`` of their own are lost, and those members must run again.
    """

    receipts: list[Receipt]
    staged: BatchStaged | None
    #: Why this pool killed the host (cancel, timeout, shutdown); None when it did not.
    killed: AbortCause | None = None


def aborted(job_id: str, reason: str, host_pid: int | None = None,
            duration_ms: float | None = None, *,
            cause: AbortCause = AbortCause.CANCELLED) -> Receipt:  # fmt: skip
    """The receipt of a job that was killed, for ``cause``."""
    return Receipt(job_id=job_id, status=ReceiptStatus.ABORTED, reason=reason, cause=cause,
                   host_pid=host_pid, duration_ms=duration_ms)


def _failed(job_id: str, exc_name: str, text: str, kind: ErrorKind,
            host_pid: int | None) -> Receipt:  # fmt: skip
    return Receipt(job_id=job_id, status=ReceiptStatus.FAILED, host_pid=host_pid,
                   error=ErrorInfo(ename=exc_name, evalue=text, kind=kind))


def _discard_staging(job: HostJob, job_id: str | None = None) -> None:
    """Remove what a killed job (or batch ``job_id``) staged (never a directory with a
    promotion under way)."""
    from .. import sinks  # lazily: only killed jobs need it, and it imports pyarrow

    with contextlib.suppress(OSError):  # SinkError (an OSError) when a journal is present
        sinks.discard(Path(job.staging_root) / sinks.job_dirname(job_id or job.job.job_id))


class HostPool:
    """``size`` warm plugin hosts; thread-safe ``run``/``cancel``.

    Each host logs its stdout and stderr to ``<log_dir>/<name>-<pid>-<n>.log``; with
    ``log_max_bytes`` > 0 that log and its one rotated part (``.log.1``) hold at most that
    many bytes together (see :class:`~casparian_nb.worker._hostlog.CappedLog`).

    ``warm``, the path of the plugin the hosts will run when the pool serves one plugin, has
    each host load it before it reports ready, so its imports are done before the first job.
    """

    def __init__(self, size: int, *, log_dir: Path, cancel_grace: float = 0.05,
                 memory_limit_mb: int = 0, env: Mapping[str, str] | None = None,
                 name: str = "host", log_max_bytes: int = 0, warm: str | None = None) -> None:
        if size < 1:
            raise ValueError("a host pool needs at least one host")
        self.size = size
        self._log_dir = log_dir
        self._grace = cancel_grace
        self._memory = memory_limit_mb
        self._env = env
        self._name = name
        self._log_max = log_max_bytes  # per host log, its .1 part included (0: no cap)
        self._warm = warm
        self._counter = 0
        self._lock = threading.Condition()
        self._idle: list[PluginHostProcess] = []
        self._busy: dict[str, PluginHostProcess] = {}
        self._closed = False
        try:
            for _ in range(size):
                self._idle.append(self._spawn())
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> PluginHostProcess:
        with self._lock:
            self._counter += 1
            n = self._counter
        log = self._log_dir / f"{self._name}-{os.getpid()}-{n}.log"
        return PluginHostProcess(log_path=log, memory_limit_mb=self._memory, env=self._env,
                                 log_max_bytes=self._log_max, warm=self._warm)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [h.pid for h in (*self._idle, *self._busy.values())]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until every idle host has finished its imports."""
        with self._lock:
            hosts = list(self._idle)
        for host in hosts:
            host.wait_ready(timeout)

    def _acquire(self, job_id: str) -> PluginHostProcess:
        with self._lock:
            while not self._idle and not self._closed:
                self._lock.wait()
            if self._closed:
                raise CasparianError("host pool is closed")
            if job_id in self._busy:
                raise CasparianError(f"job {job_id!r} is already running in this pool")
            host = self._idle.pop()
            host.job_id = job_id
            self._busy[job_id] = host
            return host

    def _release(self, host: PluginHostProcess, *, reusable: bool) -> str | None:
        """Return ``host`` (or a fresh one in its place) to the idle list.

        Returns the host's ``killed_reason`` as it stood when the job left the busy table —
        after that no :meth:`cancel` can reach the job any more.
        """
        with self._lock:
            self._busy.pop(host.job_id or "", None)
            host.job_id = None
            reason = host.killed_reason
            closed = self._closed
        if reusable and reason is None and not closed and host.alive():
            with self._lock:
                if not self._closed:
                    self._idle.append(host)
                    self._lock.notify()
                    return None
        host.kill(0.0 if reason is None else self._grace)
        if closed:
            return reason
        new = self._spawn()  # outside the lock: Popen takes a few ms
        with self._lock:
            if self._closed:
                new.kill(0.0)
            else:
                self._idle.append(new)
            self._lock.notify()
        return reason

    def run(self, job: HostJob, *, timeout: float | None = None,
            on_start: Callable[[int], object] | None = None) -> Receipt:
        """Run one job attempt on an idle host and return its receipt (blocking), with
        ``host_pid`` set.

        A host that dies mid-job yields FAILED (``HOST_KILLED`` with the signal when a
        signal nobody here sent killed it, else a permanent ``PluginHostCrashed``) or ABORTED
        (cancel / timeout / pool closed); the host is then replaced and whatever the job
        staged is removed.
        """
        job_id = job.job.job_id
        host = self._acquire(job_id)
        res: Receipt | None = None
        answered = False
        try:
            res, answered = self._drive(host, job, timeout, on_start)
        finally:
            reason = self._release(host, reusable=answered)
            if res is None or res.status != ReceiptStatus.SUCCESS or reason is not None:
                _discard_staging(job)
        if reason is not None and res.status != ReceiptStatus.ABORTED:
            # Cancelled after the host answered but before anyone could act on the answer.
            res = aborted(job_id, reason, host.pid, res.duration_ms or 0.0,
                          cause=host.killed_cause)
        return msgspec.structs.replace(res, host_pid=host.pid)

    def run_batch(self, batch: HostBatch, *, timeout: float | None = None) -> BatchOutcome:
        """Run a batch's members on one idle host (blocking). ``timeout`` holds for each
        member, as for :meth:`run`: the clock restarts as each member's receipt arrives.

        A host that dies mid-batch gives the member it was running the receipt :meth:`run`
        would have given it, and the batch's shared staging is removed. Cancel a batch by
        its ``batch_id``: a cancel that lands after the host answered still wins.
        """
        host = self._acquire(batch.batch_id)
        receipts: list[Receipt] = []
        staged: BatchStaged | None = None
        try:
            staged = self._drive_batch(host, batch, timeout, receipts)
        finally:
            reason = self._release(host, reusable=staged is not None)
            if staged is None or reason is not None:
                staged = None
                if batch.jobs:
                    _discard_staging(batch.jobs[0], batch.batch_id)
                for i, job in enumerate(batch.jobs):  # what a member staged alone, unless
                    if i >= len(receipts) or receipts[i].status != ReceiptStatus.SUCCESS:
                        _discard_staging(job)  # it ended well (its receipt owns that)
        return BatchOutcome([msgspec.structs.replace(r, host_pid=host.pid) for r in receipts],
                            staged, host.killed_cause if reason is not None else None)

    def _drive_batch(self, host: PluginHostProcess, batch: HostBatch, timeout: float | None,
                     receipts: list[Receipt]) -> BatchStaged | None:
        """Send the batch and collect its answers into ``receipts``; the BatchStaged, or
        None when the host did not finish (the dying member's receipt is then appended)."""
        def dead() -> None:  # (the host itself is killed as it is released)
            if len(receipts) < len(batch.jobs):
                receipts.append(self._dead_host_result(host, batch.jobs[len(receipts)].job.job_id))

        try:
            host.wait_ready()
            host.conn.send_bytes(_to_host.encode(batch))
        except CasparianError as exc:
            if batch.jobs:
                receipts.append(_failed(batch.jobs[0].job.job_id, type(exc).__name__,
                                        str(exc), ErrorKind.TRANSIENT, host.pid))
            return None
        except (OSError, ValueError):
            dead()
            return None
        while (data := self._answer(host, timeout)) is not None:
            try:
                if len(receipts) == len(batch.jobs):
                    return _batch_staged.decode(data)
                receipts.append(_receipt.decode(data))  # the next member's clock starts now
            except msgspec.DecodeError:
                break
        dead()
        return None

    def _drive(self, host: PluginHostProcess, job: HostJob, timeout: float | None,
               on_start: Callable[[int], object] | None) -> tuple[Receipt, bool]:
        """Send the job and wait for the answer; (receipt, whether the host may be reused)."""
        job_id = job.job.job_id
        try:
            host.wait_ready()
            host.conn.send_bytes(_to_host.encode(job))
        except CasparianError as exc:
            return _failed(job_id, type(exc).__name__, str(exc), ErrorKind.TRANSIENT,
                           host.pid), False
        except (OSError, ValueError):  # host died (or was cancelled) before the job reached it
            return self._dead_host_result(host, job_id), False
        if on_start is not None:
            on_start(host.pid)
        data = self._answer(host, timeout)
        if data is not None:
            with contextlib.suppress(msgspec.DecodeError):
                return _receipt.decode(data), True
        return self._dead_host_result(host, job_id), False

    @staticmethod
    def _answer(host: PluginHostProcess, timeout: float | None) -> bytes | None:
        """The host's next message, or None when it died, was killed, or stayed silent for
        ``timeout`` seconds (then it is marked as timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
            try:
                ready = host.conn.poll(wait)
            except (OSError, ValueError):
                ready = False
            if ready:
                try:
                    return host.conn.recv_bytes()
                except (EOFError, OSError):
                    return None
            if host.killed_reason is not None or not host.alive():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                host.killed_reason = f"timeout: job ran longer than {timeout:g}s"
                host.killed_cause = AbortCause.TIMEOUT
                return None

    def _dead_host_result(self, host: PluginHostProcess, job_id: str) -> Receipt:
        if host.killed_reason is None:
            try:
                code = host.proc.wait(5)
            except subprocess.TimeoutExpired:  # EOF but still running: treat as a hang-up
                host.terminate(0.0)
                code = host.proc.returncode
            if host.log is not None:  # the message points at the log: let it catch up
                host.log.join(0.5)
            if host.killed_reason is None:
                return _crashed(job_id, code, host)
        host.terminate(self._grace)
        return aborted(job_id, host.killed_reason or "aborted", host.pid,
                       cause=host.killed_cause)

    def cancel(self, job_id: str, reason: str = "cancelled by user", *,
               cause: AbortCause = AbortCause.CANCELLED) -> bool:
        """Kill the host running ``job_id``; its ``run`` call returns ABORTED. Returns
        whether the job was running here. When this returns True the host is gone."""
        with self._lock:
            host = self._busy.get(str(job_id))
            if host is None:
                return False
            if host.killed_reason is None:
                host.killed_reason, host.killed_cause = reason, cause
        host.terminate(self._grace)
        return True

    def running(self) -> dict[str, int]:
        """job id -> host pid for jobs running now."""
        with self._lock:
            return {jid: h.pid for jid, h in self._busy.items()}

    def close(self) -> None:
        """Stop every host: idle ones are asked to exit, busy ones are killed (their ``run``
        calls return ABORTED with reason "shutdown")."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy.values())
            self._idle.clear()
            for host in busy:
                if host.killed_reason is None:
                    host.killed_reason, host.killed_cause = "shutdown", AbortCause.SHUTDOWN
            self._lock.notify_all()
        for host in idle:
            if host.ready:
                host.request_exit()
            else:  # still importing (or never asked): it cannot read the request yet
                host.terminate(0.0)
        for host in busy:
            host.terminate(self._grace)
        deadline = time.monotonic() + 2.0
        for host in idle:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.proc.wait(max(0.0, deadline - time.monotonic()))
            host.kill(0.05)

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _crashed(job_id: str, code: int | None, host: PluginHostProcess) -> Receipt:
    """The receipt of a host that died on its own while running the job.

    Killed by a signal nobody here sent (the OOM killer, an operator's ``kill -9``, a
    segfault): ``HOST_KILLED`` with the signal, which the sentinel retries up to its own
    limit. Any exit status (a Python error the host could not report, ``os._exit(3)``):
    a permanent ``PluginHostCrashed``.
    """
    if code is not None and code < 0:
        return Receipt(job_id=job_id, status=ReceiptStatus.FAILED, host_pid=host.pid,
                       error=ErrorInfo(ename="PluginHostKilled",
                                       evalue=f"plugin host pid {host.pid} was killed by "
                                              f"{signal_name(-code)} while running the job",
                                       kind=ErrorKind.HOST_KILLED, signal=-code))
    status = "an unknown status" if code is None else f"code {code}"
    return _failed(job_id, "PluginHostCrashed", f"plugin host exited with {status} while "
                   f"running the job (see {host.log_path})", ErrorKind.PERMANENT, host.pid)

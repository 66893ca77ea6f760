"""The worker's job side: taking a dispatched job on, running it on a host from a job thread
(then whatever waits in the backlog), aborting it, and reporting it back to the sentinel.

Job threads never touch the socket: they put ``(dispatch, result)`` on a queue and wake the
main thread through an inproc PUSH socket of their own; the main thread sends. A JobStarted is
held back for ``STARTED_DELAY``, so a job that finishes by then costs one message, not two.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from .. import plugins
from ..errors import ProtocolError
from ..joblogs import job_logs_root
from ..protocol import (
    Abort,
    AbortCause,
    Dispatch,
    ErrorInfo,
    ErrorKind,
    HostJob,
    JobStarted,
    Message,
    Receipt,
    ReceiptStatus,
    WireMessage,
)
from ..sinks.staging import attempt_root
from ._durable import StagingSyncer
from .pool import HostPool, aborted

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["STARTED_DELAY", "JobRunning", "Started"]

log = logging.getLogger("casparian_nb.worker")

#: How long a worker holds a JobStarted back (see ``Worker._started``).
STARTED_DELAY = 0.02


@dataclass(frozen=True, slots=True)
class Started:
    """A job's host has it (``host_pid``) since ``at`` (monotonic)."""

    host_pid: int
    at: float


class JobRunning:
    """Mixin of :class:`~casparian_nb.worker.supervisor.Worker`: its jobs, from dispatch to
    receipt."""

    if TYPE_CHECKING:  # provided by Worker
        settings: Settings
        slots: int
        worker_id: str
        pool: HostPool | None
        _stop: threading.Event
        _results: queue.Queue[tuple[Dispatch, Receipt | Started]]
        _running: dict[str, Dispatch]
        _trusted: dict[str, str]
        _lock: threading.Lock
        _backlog: deque[Dispatch]
        _threads: int
        _pending_aborts: dict[str, Abort]
        _started: dict[str, tuple[float, Started]]
        _executor: ThreadPoolExecutor | None
        _ctx: zmq.Context[Any]
        _tls: threading.local
        _wake_ep: str
        _syncer: StagingSyncer[Dispatch]

        def _send(self, message: WireMessage) -> None: ...

    def _accept(self, dispatch: Dispatch) -> None:
        assert self._executor is not None
        self._running[dispatch.job.job_id] = dispatch
        with self._lock:
            start = self._threads < self.slots
            if start:
                self._threads += 1
            else:
                self._backlog.append(dispatch)
        if start:
            self._executor.submit(self._job_thread, dispatch)

    def _on_abort(self, msg: Message, routing: list[bytes]) -> None:
        abort = msg.payload
        assert isinstance(abort, Abort) and self.pool is not None
        job_id = abort.job_id
        with self._lock:
            for queued in self._backlog:  # not started: nothing to kill
                if queued.job.job_id == job_id:
                    self._backlog.remove(queued)
                    self._results.put((queued, aborted(job_id, abort.reason,
                                                       cause=abort.cause)))
                    return
            # Under the lock: either the job thread has its host (cancel kills it) or it has
            # not asked for one yet (it will find the parked abort first).
            if self.pool.cancel(job_id, abort.reason, cause=abort.cause):
                return
            if job_id in self._running:
                self._pending_aborts[job_id] = abort
                return
        log.info("abort for job %s which is not running here", job_id)

    def _take_abort(self, job_id: str) -> Abort | None:
        with self._lock:
            return self._pending_aborts.pop(job_id, None)

    def _check_trust(self, dispatch: Dispatch) -> None:
        """The worker runs code, so it enforces the trust policy itself (F13)."""
        plugins.check_job_trust(dispatch.job.plugin_path, dispatch.job.plugin_source_hash,
                                self.settings.trust, self._trusted)

    def _job_thread(self, dispatch: Dispatch) -> None:
        """Run ``dispatch``, then whatever waits in the backlog, then end."""
        next_job: Dispatch | None = dispatch
        while next_job is not None:
            self._run_job(next_job)
            with self._lock:
                if self._backlog and not self._stop.is_set():
                    next_job = self._backlog.popleft()
                else:
                    next_job = None
                    self._threads -= 1

    def _run_job(self, dispatch: Dispatch) -> None:
        """Job thread: run one job on a host; always hand back exactly one result."""
        assert self.pool is not None
        job_id = dispatch.job.job_id
        # Each attempt stages in its own directory, so a straggler from a lost attempt can
        # never touch the files of the attempt that replaced it.
        staging = attempt_root(self.settings.staging_dir, dispatch.attempt)
        # Staged without a sync: the staging syncer syncs it, with whatever else ended
        # meanwhile, before the receipt goes (_durable.py).
        attempt = HostJob(job=dispatch.job, attempt=dispatch.attempt, staging_root=str(staging),
                          log_root=str(job_logs_root(self.settings.home)),
                          redact_log=self.settings.tape_redact, sync_staging=False)

        def started(pid: int) -> None:
            abort = self._take_abort(job_id)
            if abort is not None:  # aborted while waiting for a host: kill it right away
                assert self.pool is not None
                self.pool.cancel(job_id, abort.reason, cause=abort.cause)
            # No wake-up: the loop looks at least every LOOK_INTERVAL while jobs run, and
            # holds a JobStarted back for STARTED_DELAY anyway.
            self._results.put((dispatch, Started(pid, time.monotonic())))

        try:
            abort = self._take_abort(job_id)
            if abort is not None:
                res = aborted(job_id, abort.reason, cause=abort.cause)
            else:
                res = self.pool.run(attempt, timeout=dispatch.timeout_s or None,
                                    on_start=started)
        except Exception as exc:  # the pool closed under us (shutdown), or a bug
            closing = self._stop.is_set()
            log.log(logging.INFO if closing else logging.ERROR, "job %s: %s", job_id, exc,
                    exc_info=not closing)
            res = aborted(job_id, "shutdown", cause=AbortCause.SHUTDOWN) if closing else Receipt(
                job_id=job_id, status=ReceiptStatus.FAILED,
                error=ErrorInfo(ename=type(exc).__name__, evalue=str(exc),
                                kind=ErrorKind.TRANSIENT))  # fmt: skip
        self._take_abort(job_id)
        # The receipt goes once what it staged is durable; this thread goes on meanwhile.
        self._syncer.submit(dispatch, res)

    def _deliver(self, dispatch: Dispatch, res: Receipt) -> None:
        """Queue a finished job's receipt for the main thread (from the staging syncer)."""
        self._take_abort(dispatch.job.job_id)  # one that came during the sync: too late
        self._results.put((dispatch, res))
        self._wake()

    def _wake(self) -> None:
        sock = getattr(self._tls, "push", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._wake_ep)
            self._tls.push = sock
        sock.send(b"", zmq.NOBLOCK)

    def _send_results(self) -> None:
        items: list[tuple[Dispatch, Receipt | Started]] = []
        while True:
            try:
                items.append(self._results.get_nowait())
            except queue.Empty:
                break
        # A job that started and finished since we last looked needs no JobStarted: its
        # receipt says it all (fast jobs: one message instead of two).
        for dispatch, res in items:
            job_id = dispatch.job.job_id
            if isinstance(res, Started):
                self._started[job_id] = (res.at + STARTED_DELAY, res)
                continue
            self._started.pop(job_id, None)
            self._running.pop(job_id, None)
            self._send_receipt(dispatch, res)

    def _send_receipt(self, dispatch: Dispatch, res: Receipt) -> None:
        """One Receipt per finished job, whatever it holds: a receipt the protocol refuses
        (too large, say) must cost that receipt its details, never the worker its life."""
        receipt = msgspec.structs.replace(res, attempt=dispatch.attempt, worker_id=self.worker_id)
        try:
            self._send(receipt)
        except ProtocolError as exc:
            log.error("job %s: receipt refused by the protocol (%s); sending it without "
                      "its details", receipt.job_id, exc)
            error = ErrorInfo(ename="ReceiptError", evalue=str(exc)[:500],
                              kind=ErrorKind.TRANSIENT)
            status = receipt.status
            if status == ReceiptStatus.SUCCESS:  # its staged outputs cannot be described: redo
                status = ReceiptStatus.FAILED
            self._send(Receipt(job_id=receipt.job_id, attempt=receipt.attempt, status=status,
                               worker_id=self.worker_id, host_pid=receipt.host_pid,
                               reason=receipt.reason, cause=receipt.cause,
                               error=error if status == ReceiptStatus.FAILED else None))

    def _send_started(self, now: float) -> None:
        for job_id, (due, res) in list(self._started.items()):
            if due <= now:
                del self._started[job_id]
                self._send(JobStarted(worker_id=self.worker_id, job_id=job_id,
                                      host_pid=res.host_pid))

"""What runs on each Dask worker: a warm :class:`HostPool`, the task that runs a *chunk* of
attempts on it (one after another on one worker thread), and the two calls the bridge makes
there (abort, storage probe).

The pool lives in a ``WorkerPlugin`` (one per Dask worker, one host per worker thread), so a
plugin runs in a killable child process, never in the Dask worker itself: a crashing plugin
costs a host, not the worker, and a cancel is a kill (SIGTERM, a short grace, SIGKILL).

Cancel travels as ``Client.run(abort_on_worker, ..., workers=[addr])``: a direct RPC from the
bridge to the one worker that runs the attempt, answered by the worker's event loop even while
every worker thread is busy in a plugin — no scheduler round trip, no topic to poll, and the
kill is done (the host reaped) when the call returns. An abort for an attempt still waiting
in a running chunk is answered at once (the chunk skips it); one that arrives before its
chunk started here is parked, keyed by job and attempt, and honoured the moment the chunk
reaches it.
"""

from __future__ import annotations

import heapq
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from distributed import WorkerPlugin, get_worker

from ..protocol import AbortCause, ErrorInfo, ErrorKind, HostJob, Receipt, ReceiptStatus
from ..worker._durable import StagingSyncer
from ..worker.pool import HostPool, aborted

__all__ = ["HostPoolPlugin", "StartedNotices", "abort_on_worker", "probe_write", "run_chunk"]

#: How long a job runs before the bridge is told it started (see ``StartedNotices``).
STARTED_DELAY = 0.05
_hostjob = msgspec.json.Decoder(HostJob)
_receipt = msgspec.json.Encoder()
#: How long an ended attempt's receipt may wait for others to share its sync (seconds).
_SYNC_LINGER = 0.02


class StartedNotices:
    """Tells the bridge (a Dask event) that a job started, for jobs still running
    ``STARTED_DELAY`` after they took a host: a quick job is reported by its receipt alone
    (one message through the scheduler fewer per job). One thread per Dask worker, not a
    timer thread per job."""

    def __init__(self, log_event: Any, topic: str) -> None:
        self._log_event = log_event
        self._topic = topic
        self._cond = threading.Condition()
        self._due: list[tuple[float, str, int, int]] = []
        self._running: set[tuple[str, int]] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cf-started", daemon=True)
        self._thread.start()

    def started(self, job_id: str, attempt: int, pid: int) -> None:
        with self._cond:
            self._running.add((job_id, attempt))
            heapq.heappush(self._due, (time.monotonic() + STARTED_DELAY, job_id, attempt, pid))
            if len(self._due) == 1:  # else the thread is waiting for an earlier one already
                self._cond.notify()

    def finished(self, job_id: str, attempt: int) -> None:
        with self._cond:
            self._running.discard((job_id, attempt))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due
                                            or self._due[0][0] > time.monotonic()):
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                now, say = time.monotonic(), []
                while self._due and self._due[0][0] <= now:  # all that are due, at once
                    _, job_id, attempt, pid = heapq.heappop(self._due)
                    if (job_id, attempt) in self._running:
                        say.append({"job_id": job_id, "attempt": attempt, "host_pid": pid})
            for msg in say:
                self._log_event(self._topic, msg)


class HostPoolPlugin(WorkerPlugin):
    """Keeps ``nthreads`` warm plugin hosts on each Dask worker it is registered on."""

    def __init__(self, name: str, *, log_dir: str, cancel_grace: float,
                 memory_limit_mb: int, log_max_bytes: int) -> None:
        self.name = name
        self.log_dir = log_dir
        self.cancel_grace = cancel_grace
        self.memory_limit_mb = memory_limit_mb
        self.log_max_bytes = log_max_bytes
        self.pool: HostPool | None = None
        self.notices: StartedNotices | None = None
        self.syncer: StagingSyncer[Callable[[Receipt], None]] | None = None
        self._lock = threading.Lock()
        self._parked: dict[tuple[str, int], tuple[str, AbortCause]] = {}
        self._queued: set[tuple[str, int]] = set()
        self._chunks: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # the pool and the lock stay where they live
        return {k: v for k, v in self.__dict__.items()
                if k not in ("pool", "notices", "syncer", "_lock", "_parked", "_queued",
                             "_chunks")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pool = None
        self.notices = None
        self.syncer = None
        self._lock = threading.Lock()
        self._parked = {}
        self._queued = set()
        self._chunks = set()

    def setup(self, worker: Any) -> None:
        port = str(worker.address).rsplit(":", 1)[-1]
        self.pool = HostPool(max(1, int(worker.state.nthreads)), log_dir=Path(self.log_dir),
                             cancel_grace=self.cancel_grace,
                             memory_limit_mb=self.memory_limit_mb,
                             log_max_bytes=self.log_max_bytes,
                             name=f"host-dask-{port}")
        self.notices = StartedNotices(worker.log_event, self.name)
        # One sync for the attempts that end within _SYNC_LINGER of each other, on all of
        # this worker's threads (hosts stage without one: HostJob.sync_staging is False).
        self.syncer = StagingSyncer(lambda deliver, receipt: deliver(receipt),
                                    linger=_SYNC_LINGER, name="cf-dask-stage-sync")

    def teardown(self, worker: Any) -> None:
        if self.notices is not None:
            self.notices.close()
        if self.pool is not None:
            self.pool.close()
        if self.syncer is not None:
            self.syncer.close(timeout=30.0)

    def abort(self, job_id: str, attempt: int, reason: str, cause: AbortCause,
              chunk: str, unstarted: bool) -> bool:
        """Kill the host running the attempt, or see that its chunk will skip it (True: it
        stages nothing more); else park the abort (False: it is about to take a host and is
        killed when it does, or its task has not reached this worker yet). ``unstarted``:
        Dask says the task ``chunk`` waits here for a thread."""
        assert self.pool is not None
        with self._lock:
            if self.pool.cancel(job_id, reason, cause=cause):
                return True
            self._parked[(job_id, attempt)] = (reason, cause)
            if (job_id, attempt) in self._queued:
                self._queued.discard((job_id, attempt))
                return True
            return unstarted and chunk not in self._chunks

    def queue(self, chunk: str, attempts: list[tuple[str, int]]) -> None:
        """The task ``chunk`` started: its attempts wait here for their turn."""
        with self._lock:
            self._chunks.add(chunk)
            self._queued.update(attempts)

    def done(self, chunk: str) -> None:
        """The task ``chunk`` ended (an abort for one of its attempts now comes too late)."""
        with self._lock:
            self._chunks.discard(chunk)

    def begin(self, job_id: str, attempt: int) -> tuple[str, AbortCause] | None:
        """The attempt's turn in its chunk: the abort parked for it, if any."""
        with self._lock:
            self._queued.discard((job_id, attempt))
            return self._parked.pop((job_id, attempt), None)

    def take_abort(self, job_id: str, attempt: int) -> tuple[str, AbortCause] | None:
        with self._lock:
            return self._parked.pop((job_id, attempt), None)


def _plugin(name: str) -> HostPoolPlugin:
    plugin = get_worker().plugins[name]
    assert isinstance(plugin, HostPoolPlugin)
    return plugin


def run_chunk(name: str, key: str, payloads: list[bytes],
              timeouts: list[float | None]) -> list[bytes]:
    """The Dask task of a chunk: its attempts one after another on this worker's warm
    hosts; their Receipts, JSON-encoded, in order. Each receipt is also sent as an event on
    the topic ``name`` the moment its attempt ends, so the bridge forwards it then, not when
    the chunk ends.

    Always returns a receipt per attempt (a failure of ours is a transient FAILED), so the
    task itself never errs and Dask never retries it behind the sentinel's back. ``key`` is
    the task's own key (for aborts: see :meth:`HostPoolPlugin.abort`).
    """
    plugin = _plugin(name)
    worker = get_worker()
    jobs = [_hostjob.decode(p) for p in payloads]
    keys = [(job.job.job_id, int(job.attempt)) for job in jobs]
    plugin.queue(key, keys)
    out: list[bytes] = []
    reported = threading.Semaphore(0)

    def report(i: int, job: HostJob) -> Callable[[Receipt], None]:
        def deliver(receipt: Receipt) -> None:  # once what the attempt staged is durable
            try:
                raw = out[i] = _receipt.encode(receipt)
                # Pushed to the bridge (the worker's batched stream to the scheduler, which
                # forwards it to the subscribed client): no gather round trip per receipt.
                # The task's result holds the same receipt, fetched only if this went astray.
                worker.log_event(name, {"job_id": job.job.job_id, "attempt": int(job.attempt),
                                        "receipt": raw.decode()})
            finally:
                reported.release()
        return deliver

    assert plugin.syncer is not None
    try:
        for job, timeout in zip(jobs, timeouts, strict=True):
            res = _run_one(plugin, job, timeout)
            out.append(b"")
            plugin.syncer.submit(report(len(out) - 1, job), res)
        for _ in out:  # the task's result: every receipt, each once it was reported
            reported.acquire()
    finally:
        for job_id, attempt in keys[len(out):]:  # only if the loop itself broke
            plugin.begin(job_id, attempt)
        plugin.done(key)
    return out


def _run_one(plugin: HostPoolPlugin, job: HostJob, timeout: float | None) -> Receipt:
    """One attempt of a chunk on a warm host (or skipped: aborted before its turn)."""
    job_id, attempt = job.job.job_id, int(job.attempt)
    notices = plugin.notices

    def started(pid: int) -> None:
        parked = plugin.take_abort(job_id, attempt)
        if parked is not None and plugin.pool is not None:  # aborted while it took a host
            plugin.pool.cancel(job_id, parked[0], cause=parked[1])
        if notices is not None:
            notices.started(job_id, attempt, pid)

    parked = plugin.begin(job_id, attempt)
    try:
        if parked is not None:
            res = aborted(job_id, parked[0], cause=parked[1])
        else:
            assert plugin.pool is not None
            res = plugin.pool.run(job, timeout=timeout, on_start=started)
    except Exception as exc:  # the pool closed under us (teardown), or a bug
        res = Receipt(job_id=job_id, status=ReceiptStatus.FAILED,
                      error=ErrorInfo(ename=type(exc).__name__, evalue=str(exc),
                                      kind=ErrorKind.TRANSIENT))
    if notices is not None:
        notices.finished(job_id, attempt)
    plugin.take_abort(job_id, attempt)
    return res


#: The states of a Dask worker's task that has not started to run (run on its event loop,
#: which also starts tasks: the state cannot change under us).
_UNSTARTED = frozenset({"waiting", "ready", "constrained", "fetch", "flight"})


def abort_on_worker(name: str, job_id: str, attempt: int, reason: str, cause: str,
                    chunk: str, dask_worker: Any = None) -> bool:
    """``Client.run`` target: kill the attempt's host here, or see that its task ``chunk``
    will skip it (True); else park the abort."""
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    if not isinstance(plugin, HostPoolPlugin):
        return False
    task = dask_worker.state.tasks.get(chunk)
    return plugin.abort(job_id, attempt, reason, AbortCause(cause), chunk,
                        task is not None and task.state in _UNSTARTED)


def probe_write(directory: str, token: str, dask_worker: Any = None) -> str:
    """``Client.run`` target: write a probe file the bridge then reads; its file name."""
    address = str(getattr(dask_worker, "address", "")) or socket.gethostname()
    name = f".cf-probe-{token}-{abs(hash(address)) % 10**8}-{os.getpid()}"
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{token} {address}")
    return name

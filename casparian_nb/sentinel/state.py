"""The sentinel's decisions: a state machine with no I/O.

``SentinelState.handle(event) -> list[Action]``. The server loop turns sockets, timers and
finished promotions into events, feeds them here, and carries out the actions (store writes,
messages to workers, published events, promotions). Every transition that matters to a user
is also a ``Publish`` action, so the event stream and the sentinel's tape tell the same story.

Only jobs that are not finished live in memory (queued, running, promoting); finished jobs are
in the state DB. Times are unix seconds passed in by the events: the machine never reads a clock.

The machine is one class built in parts, each a pure mixin over the same attributes:
:mod:`._queue` (the queue, the workers' slots, dispatch), :mod:`._transitions` (requeue,
retry, complete, abort, fail; a lost worker's jobs), :mod:`._receipts` (a worker's reports
and finished promotions) and :mod:`._requests` (a user's cancel and retry). This module keeps
the entry point, the workers joining and leaving, the timeouts, and the table of handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol import Abort, AbortCause, EventName, JobStatus
from ._queue import _Worker, plugin_name_fields
from ._receipts import Receipts
from ._requests import UserRequests
from ._vocabulary import (
    AbortJob,
    Action,
    CancelRequested,
    ClaimJob,
    CompleteJob,
    DeadLetter,
    Discard,
    Event,
    FailJob,
    JobRec,
    JobsQueued,
    JobStarted,
    MarkStarted,
    Persist,
    Promote,
    PromotionFinished,
    Publish,
    ReceiptReceived,
    RecordStaged,
    RemoveStaging,
    Reply,
    RequestCancel,
    RequeueJob,
    RetryCandidate,
    RetryJob,
    RetryRequested,
    Send,
    Tick,
    WorkerGone,
    WorkerHeartbeat,
    WorkerJoined,
)

_QUEUED = JobStatus.QUEUED

# The vocabulary's records are re-exported: the loop and the tests read them as ``st.X``.
__all__ = [
    "AbortJob",
    "Action",
    "CancelRequested",
    "ClaimJob",
    "CompleteJob",
    "DeadLetter",
    "Discard",
    "Event",
    "FailJob",
    "JobRec",
    "JobStarted",
    "JobsQueued",
    "MarkStarted",
    "Persist",
    "Promote",
    "PromotionFinished",
    "Publish",
    "ReceiptReceived",
    "RecordStaged",
    "RemoveStaging",
    "Reply",
    "RequestCancel",
    "RequeueJob",
    "RetryCandidate",
    "RetryJob",
    "RetryRequested",
    "Send",
    "SentinelState",
    "Tick",
    "WorkerGone",
    "WorkerHeartbeat",
    "WorkerJoined",
    "plugin_name_fields",
]


class SentinelState(Receipts, UserRequests):
    """Queue, slots and job lifecycles. See the module docstring.

    ``timeout_grace`` is how long past a job's timeout the sentinel waits for the worker's
    own timeout to fire before it sends an Abort itself; a worker that then still does not
    confirm within ``worker_timeout`` has the job aborted without it.

    A job whose plugin host was killed by a signal (``ErrorKind.HOST_KILLED``) runs again at
    once, up to ``host_kill_retries`` times, on a budget of its own (``JobRec.host_kills``,
    stored with the job): the signal says nothing about the plugin, so it spends no retry.

    A FAILED or ABORTED job its user retries (``RetryRequested``) runs again as a new
    attempt with fresh automatic budgets, up to ``manual_retry_limit`` times per job.
    """

    def __init__(self, *, max_retries: int = 3, retry_backoff: float = 1.0,
                 worker_timeout: float = 10.0, default_timeout: float | None = None,
                 timeout_grace: float = 5.0, host_kill_retries: int = 3,
                 manual_retry_limit: int = 5) -> None:
        self.max_retries = max_retries
        self.manual_retry_limit = manual_retry_limit
        self.host_kill_retries = host_kill_retries
        self.retry_backoff = retry_backoff
        self.worker_timeout = worker_timeout
        self.default_timeout = default_timeout or None
        self.timeout_grace = timeout_grace
        self.jobs: dict[int, JobRec] = {}
        self.workers: dict[str, _Worker] = {}
        self._ready: list[tuple[int, int]] = []  # (-priority, id)
        self._delayed: list[tuple[float, int]] = []  # (ready_at, id)
        self._queued = 0
        #: Dispatch nothing (the sentinel is shutting down).
        self.paused = False

    # -- entry point ---------------------------------------------------------------------
    def handle(self, event: Event) -> list[Action]:
        """Everything to do because of ``event``, in order (then any new dispatches)."""
        handler = self._handlers[type(event)]
        actions = handler(self, event)
        actions.extend(self._dispatch(event.now))
        return actions

    # -- handlers ------------------------------------------------------------------------
    def _on_jobs_queued(self, ev: JobsQueued) -> list[Action]:
        for job in ev.jobs:
            self.jobs[job.id] = job
            if job.status == _QUEUED:
                self._enqueue(job, ev.now)
            # PROMOTING (a restart re-adopting a job whose outputs were staged before the
            # crash): only a PromotionFinished moves it on.
        return []

    def _on_worker_joined(self, ev: WorkerJoined) -> list[Action]:
        old = self.workers.get(ev.worker_id)
        actions: list[Action] = []
        if old is not None:  # the same id reconnecting: whatever it ran is gone
            actions += self._lose_worker(old, "worker re-registered", ev.now, graceful=False)
        capacity = max(1, ev.slots) + max(0, ev.prefetch)
        self.workers[ev.worker_id] = _Worker(ev.worker_id, ev.identity, capacity, ev.pid, ev.now)
        actions.append(Publish(EventName.WORKER_JOINED, {
            "worker_id": ev.worker_id, "slots": ev.slots, "prefetch": ev.prefetch, "pid": ev.pid}))
        return actions

    def _on_heartbeat(self, ev: WorkerHeartbeat) -> list[Action]:
        w = self.workers.get(ev.worker_id)
        if w is not None:
            w.last_seen = ev.now
            if ev.capacity is not None and ev.capacity > 0:
                w.cap = ev.capacity if ev.capacity < w.slots else None
        return []

    def _on_worker_gone(self, ev: WorkerGone) -> list[Action]:
        w = self.workers.get(ev.worker_id)
        return self._lose_worker(w, ev.reason, ev.now, graceful=ev.graceful) if w else []

    def _on_tick(self, ev: Tick) -> list[Action]:
        actions: list[Action] = []
        now = ev.now
        for w in list(self.workers.values()):
            if now - w.last_seen > self.worker_timeout:
                actions += self._lose_worker(w, f"no heartbeat for {self.worker_timeout:g}s", now,
                                             graceful=False)
        for w in list(self.workers.values()):
            for job_id in sorted(w.running):
                job = self.jobs.get(job_id)
                if job is not None:
                    actions += self._check_timeout(job, w, now)
        return actions

    def _check_timeout(self, job: JobRec, w: _Worker, now: float) -> list[Action]:
        """The sentinel's backstop for a worker whose own timeout (or kill) did not work."""
        if job.abort_sent_at:
            if now - job.abort_sent_at <= self.worker_timeout:
                return []
            # The worker never confirmed the Abort: give the slot up and end the job. A late
            # receipt from that attempt is discarded as stale, so nothing gets promoted.
            w.running.discard(job.id)
            if job.cancel_requested:
                return self._finish_aborted(job, "cancelled by user (the worker did not "
                                                 "confirm)", (now - job.dispatched_at) * 1000)
            return self._finish_aborted(
                job, f"timed out after {self.timeout_of(job):g}s (the worker did not confirm)",
                (now - job.dispatched_at) * 1000)
        timeout = self.timeout_of(job)
        # Measured from the start the worker reported: a job may wait in its backlog first.
        if timeout is None or not job.started or now - job.started_at <= timeout + self.timeout_grace:
            return []
        job.abort_sent_at = now
        return [Send(w.worker_id, Abort(
            job_id=job.spec.job_id, reason=f"timeout: job ran longer than {timeout:g}s",
            cause=AbortCause.TIMEOUT))]

    _handlers: dict[type, Callable[[SentinelState, Any], list[Action]]] = {
        JobsQueued: _on_jobs_queued,
        WorkerJoined: _on_worker_joined,
        WorkerHeartbeat: _on_heartbeat,
        WorkerGone: _on_worker_gone,
        JobStarted: Receipts._on_job_started,
        ReceiptReceived: Receipts._on_receipt,
        PromotionFinished: Receipts._on_promotion,
        CancelRequested: UserRequests._on_cancel,
        RetryRequested: UserRequests._on_retry,
        Tick: _on_tick,
    }

"""The sentinel's decisions: a state machine with no I/O.

``SentinelState.handle(event) -> list[Action]``. The server loop turns sockets, timers and
finished promotions into events, feeds them here, and carries out the actions (store writes,
messages to workers, published events, promotions). Every transition that matters to a user
is also a ``Publish`` action, so the event stream and the sentinel's tape tell the same story.

Only jobs that are not finished live in memory (queued, running, promoting); finished jobs are
in the state DB. Times are unix seconds passed in by the events: the machine never reads a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._proc import signal_name
from ..protocol import (
    MANUAL_RETRY_REASON,
    Abort,
    AbortCause,
    CancelOutcome,
    CancelResult,
    Dispatch,
    ErrorInfo,
    ErrorKind,
    EventName,
    JobSpec,
    JobStatus,
    ReceiptStatus,
    Retried,
)
from ..store import CANCELLED_BY_USER
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

_QUEUED, _RUNNING, _PROMOTING = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PROMOTING
#: ``cf_dead_letter.reason`` of a failed job, by the kind of its last error.
_DEAD_LETTER_REASONS = {ErrorKind.TRANSIENT: "max_retries_exceeded",
                        ErrorKind.HOST_KILLED: "host_kill_retries_exceeded"}

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


def plugin_name_fields(spec: JobSpec) -> dict[str, Any]:
    """``plugin_name`` for an event payload, plus ``plugin_name_source: "file"`` when the name
    is the plugin file's stem rather than a declared ``name`` (tape redaction then hashes it,
    as it does every file name)."""
    if spec.plugin_name_declared:
        return {"plugin_name": spec.plugin_name}
    return {"plugin_name": spec.plugin_name, "plugin_name_source": "file"}


@dataclass(slots=True)
class _Worker:
    worker_id: str
    identity: bytes
    slots: int  # as advertised, plus the backlog it keeps (prefetch)
    pid: int
    last_seen: float
    running: set[int] = field(default_factory=set)
    #: Slots the worker proved to have (a capacity rejection, a heartbeat); None = trust
    #: the advertised number.
    cap: int | None = None

    @property
    def free(self) -> int:
        limit = self.slots if self.cap is None else min(self.slots, self.cap)
        return limit - len(self.running)



class SentinelState:
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

    # -- introspection -------------------------------------------------------------------
    def queued_count(self) -> int:
        """How many jobs wait in the queue (ready or delayed)."""
        return self._queued

    def worker_table(self) -> list[dict[str, Any]]:
        """The connected workers, as ``ListWorkers`` reports them."""
        return [
            {"worker_id": w.worker_id, "slots": w.slots, "pid": w.pid, "running": sorted(w.running),
             "last_seen": w.last_seen, "free": w.free}
            for w in self.workers.values()
        ]

    def identity_of(self, worker_id: str) -> bytes | None:
        """The worker socket's routing id of ``worker_id`` (None once it is gone)."""
        w = self.workers.get(worker_id)
        return w.identity if w else None

    def timeout_of(self, job: JobRec) -> float | None:
        """The job's own timeout, else the sentinel's default (None: no timeout)."""
        return job.timeout_s if job.timeout_s is not None else self.default_timeout

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

    def _on_job_started(self, ev: JobStarted) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        if job is None or job.worker_id != ev.worker_id or job.status != _RUNNING:
            return []
        job.started, job.started_at = True, ev.now
        return [MarkStarted(job.id, ev.host_pid),
                Publish(EventName.JOB_STARTED, {"job_id": job.id, "worker_id": ev.worker_id,
                                                "host_pid": ev.host_pid})]

    def _on_receipt(self, ev: ReceiptReceived) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        receipt = ev.data
        staged = receipt.staged
        if (job is None or job.worker_id != ev.worker_id or job.attempt != ev.attempt
                or job.status != _RUNNING):
            # A receipt for an attempt we gave up on (lost worker, restart, timeout): never
            # let it complete the job a second time; throw its staged outputs away.
            return [Discard(staged)] if staged else []
        w = self.workers.get(ev.worker_id)
        if w is not None:
            w.running.discard(job.id)
            w.last_seen = ev.now
        duration_ms = float(receipt.duration_ms or (ev.now - job.dispatched_at) * 1000)
        if ev.status != ReceiptStatus.REJECTED and not job.started and receipt.host_pid:
            # A fast job's worker sends no JobStarted; the receipt names the host instead.
            job.started, job.started_at = True, ev.now
            return [MarkStarted(job.id, receipt.host_pid), *self._on_receipt(ev)]
        if ev.status == ReceiptStatus.REJECTED:
            # Capacity: back to the queue, no retry spent (F9). The worker has fewer slots
            # than it advertised; believe what it holds now until a heartbeat says more.
            if w is not None:
                w.cap = max(1, len(w.running))
            if job.cancel_requested:
                return self._finish_aborted(job, "cancelled by user", 0.0)
            return self._requeue(job, ev.now, "capacity", "capacity_rejection")
        if ev.status == ReceiptStatus.SUCCESS:
            if job.cancel_requested:  # cancel arrived first: it wins, nothing is promoted
                return [*([Discard(staged)] if staged else []),
                        *self._finish_aborted(job, "cancelled by user", duration_ms)]
            job.status = _PROMOTING
            outputs = dict(receipt.rows or {})
            quarantine = receipt.quarantine_rows
            job.result = {"rows": sum(outputs.values()), "outputs": outputs,
                          "quarantine_rows": quarantine, "duration_ms": round(duration_ms, 1),
                          "source_hash": receipt.source_hash}
            if isinstance(staged, dict) and not staged.get("outputs"):
                # Nothing was staged, so there is nothing to promote: complete now, in this
                # same transaction (a crash cannot fall between the receipt and the end).
                return [Discard(staged), *self._complete(job, [])]
            return [RecordStaged(job.id, staged, receipt.source_hash, outputs, quarantine,
                                 duration_ms),
                    Promote(job.id, staged or {}, job.spec.mode, job.spec.submission_id)]
        if ev.status == ReceiptStatus.ABORTED:
            reason = receipt.reason or "aborted"
            if job.cancel_requested:
                return self._finish_aborted(job, "cancelled by user", duration_ms)
            if receipt.cause == AbortCause.SHUTDOWN:  # the worker stops, the job is not at fault
                return self._requeue(job, ev.now, "worker_shutdown",
                                     "worker stopped while the job ran")
            if receipt.cause == AbortCause.TIMEOUT:
                reason = f"timed out after {self.timeout_of(job):g}s"
            return self._finish_aborted(job, reason, duration_ms)
        # FAILED
        error = receipt.error or ErrorInfo(ename="Error", evalue="")
        text = f"{error.ename}: {error.evalue}".strip()
        if job.cancel_requested:
            return self._finish_aborted(job, "cancelled by user", duration_ms)
        if error.kind == ErrorKind.HOST_KILLED:
            return self._host_killed(job, error, text, ev.now, duration_ms)
        if error.kind == ErrorKind.TRANSIENT and job.retry_count < self.max_retries:
            return self._retry(job, text, ev.now)
        return self._finish_failed(job, error, text, duration_ms)

    def _on_promotion(self, ev: PromotionFinished) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        if job is None or job.status != _PROMOTING:
            return []
        if not ev.ok:
            # Staged outputs were fine but the sink refused them (mode=error, a locked file,
            # a full disk): a permanent failure of this job, with the reason.
            err = ErrorInfo(ename="SinkError", evalue=ev.error or "promotion failed")
            return self._finish_failed(job, err, f"SinkError: {ev.error}", None)
        return self._complete(job, ev.artifacts)

    def _complete(self, job: JobRec, artifacts: list[dict[str, Any]]) -> list[Action]:
        self.jobs.pop(job.id, None)
        result = job.result
        actions: list[Action] = [
            CompleteJob(job.id, artifacts, result.get("outputs") or {},
                        result.get("quarantine_rows") or 0, result.get("source_hash"),
                        job.spec, job.plan_json),
            Publish(EventName.JOB_COMPLETED, {"job_id": job.id, "worker_id": job.worker_id,
                                              **plugin_name_fields(job.spec),
                                              "rows": result.get("rows", 0),
                                              "outputs": result.get("outputs") or {},
                                              "quarantine_rows": result.get("quarantine_rows", 0),
                                              "duration_ms": result.get("duration_ms", 0.0)}),
        ]
        for art in artifacts:
            actions.append(Publish(EventName.MATERIALIZATION_RECORDED, {
                "job_id": job.id, "output_name": art.get("output"), "table": art.get("table"),
                "rows": art.get("rows"), "sink": job.spec.sink}))
        return actions

    def _on_cancel(self, ev: CancelRequested) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        if job is None:
            return [Reply(ev.request_id, CancelResult(
                success=False, state=CancelOutcome.UNKNOWN,
                message=f"job {ev.job_id} is not queued or running"))]
        if job.status == _QUEUED:
            self.jobs.pop(job.id)
            self._queued -= 1
            # The heap entries go stale; _pop_ready skips ids no longer queued.
            return [AbortJob(job.id, CANCELLED_BY_USER),
                    Publish(EventName.JOB_ABORTED, {"job_id": job.id,
                                                    "reason": "cancelled while queued",
                                                    "worker_id": None, "duration_ms": 0}),
                    Reply(ev.request_id, CancelResult(success=True, state=JobStatus.ABORTED,
                                                      message="Job cancelled"))]
        if job.status == _PROMOTING:
            return [Reply(ev.request_id, CancelResult(
                success=False, state=CancelOutcome.COMPLETING,
                message="job already finished running; its outputs are being committed "
                        "(completing)"))]
        if job.cancel_requested:
            return [Reply(ev.request_id, CancelResult(success=True, state=CancelOutcome.ABORTING,
                                                      message="cancel already requested"))]
        job.cancel_requested = True
        job.abort_sent_at = ev.now
        return [RequestCancel(job.id),
                Send(job.worker_id or "", Abort(job_id=job.spec.job_id,
                                                reason="cancelled by user")),
                Publish(EventName.CANCEL_REQUESTED, {"job_id": job.id, "state": _RUNNING}),
                Reply(ev.request_id, CancelResult(
                    success=True, state=CancelOutcome.ABORTING,
                    message="Abort sent to worker; the job shows ABORTED once it confirms"))]

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

    def _on_retry(self, ev: RetryRequested) -> list[Action]:
        actions: list[Action] = []
        queued: list[int] = []
        attempts: dict[str, int] = {}
        refused = {str(job_id): f"job {job_id} does not exist" for job_id in ev.missing}
        for c in ev.candidates:
            job = c.job
            why = self._retry_refusal(c)
            if why is not None:
                refused[str(job.id)] = why
                continue
            job.retry_count, job.host_kills, job.ready_at = 0, 0, ev.now
            self._reset(job)
            self.jobs[job.id] = job
            self._enqueue(job, ev.now)
            queued.append(job.id)
            attempts[str(job.id)] = job.attempt + 1
            actions += [RetryJob(job.id),
                        Publish(EventName.JOB_RETRIED, {
                            "job_id": job.id, "retry_count": 0, "attempt": job.attempt + 1,
                            "delay_ms": 0, "error": c.error or c.status.value,
                            "reason": MANUAL_RETRY_REASON})]
        actions.append(Reply(ev.request_id, Retried(job_ids=queued, attempts=attempts,
                                                    refused=refused)))
        return actions

    def _retry_refusal(self, c: RetryCandidate) -> str | None:
        """Why a job cannot be retried now, or None."""
        job_id = c.job.id
        if job_id in self.jobs:
            return f"job {job_id} is not finished ({self.jobs[job_id].status})"
        if c.status not in (JobStatus.FAILED, JobStatus.ABORTED):
            return f"job {job_id} is {c.status}; only FAILED or ABORTED jobs are retried"
        if not c.plugin_unchanged:
            return (f"job {job_id}'s plugin changed since it was submitted; submit it again "
                    "(its new source runs)")
        if c.manual_retries >= self.manual_retry_limit:
            return (f"job {job_id} was retried {c.manual_retries} times already "
                    f"(manual_retry_limit {self.manual_retry_limit})")
        return None

    _handlers: dict[type, Callable[[SentinelState, Any], list[Action]]] = {
        JobsQueued: _on_jobs_queued,
        WorkerJoined: _on_worker_joined,
        WorkerHeartbeat: _on_heartbeat,
        WorkerGone: _on_worker_gone,
        JobStarted: _on_job_started,
        ReceiptReceived: _on_receipt,
        PromotionFinished: _on_promotion,
        CancelRequested: _on_cancel,
        RetryRequested: _on_retry,
        Tick: _on_tick,
    }

    # -- transitions ---------------------------------------------------------------------
    def _enqueue(self, job: JobRec, now: float) -> None:
        self._queued += 1
        if job.ready_at > now:
            heapq.heappush(self._delayed, (job.ready_at, job.id))
        else:
            heapq.heappush(self._ready, (-job.priority, job.id))

    def _reset(self, job: JobRec) -> None:
        job.status, job.worker_id, job.started = _QUEUED, None, False
        job.cancel_requested, job.abort_sent_at = False, 0.0

    def _requeue(self, job: JobRec, now: float, reason: str, text: str) -> list[Action]:
        """Back to the queue at once, without spending a retry (capacity, a stopping worker)."""
        self._reset(job)
        job.ready_at = now
        self._enqueue(job, now)
        return [RequeueJob(job.id, job.retry_count, now, text, reason),
                Publish(EventName.JOB_RETRIED, {"job_id": job.id, "retry_count": job.retry_count,
                                                "delay_ms": 0, "error": text, "reason": reason})]

    def _finish_aborted(self, job: JobRec, reason: str, duration_ms: float) -> list[Action]:
        self.jobs.pop(job.id, None)
        return [AbortJob(job.id, reason),
                Publish(EventName.JOB_ABORTED, {"job_id": job.id, "worker_id": job.worker_id,
                                                "reason": reason,
                                                "duration_ms": round(duration_ms, 1)})]

    def _finish_failed(self, job: JobRec, error: ErrorInfo, text: str,
                       duration_ms: float | None) -> list[Action]:
        self.jobs.pop(job.id, None)
        kind = error.kind
        reason = _DEAD_LETTER_REASONS.get(kind, "permanent_error")
        kills = job.host_kills if kind == ErrorKind.HOST_KILLED else None
        return [FailJob(job.id, text, kind, error.traceback or "", kills),
                DeadLetter(job.id, reason, text),
                Publish(EventName.JOB_FAILED, {"job_id": job.id, "worker_id": job.worker_id,
                                               "error": text, "error_kind": kind,
                                               "retry_count": job.retry_count, "will_retry": False,
                                               "dead_letter": reason,
                                               "duration_ms": round(duration_ms or 0.0, 1)})]

    def _retry(self, job: JobRec, text: str, now: float) -> list[Action]:
        job.retry_count += 1
        delay = self.retry_backoff * (2 ** (job.retry_count - 1))
        self._reset(job)
        job.ready_at = now + delay
        self._enqueue(job, now)
        return [RequeueJob(job.id, job.retry_count, job.ready_at, text, "retry",
                           error_kind=ErrorKind.TRANSIENT),
                Publish(EventName.JOB_RETRIED, {"job_id": job.id, "retry_count": job.retry_count,
                                                "delay_ms": round(delay * 1000), "error": text,
                                                "reason": "retry"})]

    def _host_killed(self, job: JobRec, error: ErrorInfo, text: str, now: float,
                     duration_ms: float) -> list[Action]:
        """The job's plugin host died by a signal: run it again at once, up to
        ``host_kill_retries`` times (Dask's rule for a task whose worker died, there
        reported as ``KilledWorker``), then fail it saying how often and of which signal
        (the last one: a job killed by SIGSEGV, then by SIGKILL, names SIGKILL)."""
        job.host_kills += 1
        if job.host_kills <= self.host_kill_retries:
            self._reset(job)
            job.ready_at = now
            self._enqueue(job, now)
            return [RequeueJob(job.id, job.retry_count, now, text, "host_killed",
                               job.host_kills, ErrorKind.HOST_KILLED),
                    Publish(EventName.JOB_RETRIED, {"job_id": job.id,
                                                    "retry_count": job.retry_count,
                                                    "delay_ms": 0, "error": text,
                                                    "error_kind": ErrorKind.HOST_KILLED,
                                                    "reason": "host_killed"})]
        killer = "a signal" if error.signal is None else signal_name(int(error.signal))
        times = "once" if job.host_kills == 1 else f"{job.host_kills} times"
        final = ErrorInfo(ename=error.ename, kind=ErrorKind.HOST_KILLED, signal=error.signal,
                          evalue=f"plugin host killed by {killer} {times} "
                                 f"(limit {self.host_kill_retries})")
        return self._finish_failed(job, final, f"{final.ename}: {final.evalue}", duration_ms)

    def _lose_worker(self, w: _Worker, reason: str, now: float, *, graceful: bool) -> list[Action]:
        """A worker is gone: its running jobs go back to the queue (a crash spends a retry,
        a clean goodbye does not) or, out of retries, fail; a cancelled one is ABORTED.
        Whatever their lost attempts staged is removed: nothing will promote it."""
        self.workers.pop(w.worker_id, None)
        actions: list[Action] = []
        requeued: list[int] = []
        for job_id in sorted(w.running):
            job = self.jobs.get(job_id)
            if job is None or job.status != _RUNNING or job.worker_id != w.worker_id:
                continue
            # A receipt of this attempt, should one still come, is stale and discarded.
            actions.append(RemoveStaging(job.id, job.spec.job_id, job.attempt))
            if job.cancel_requested:
                actions += self._finish_aborted(job, "cancelled; its worker was lost", 0.0)
                continue
            if not graceful:
                job.retry_count += 1
            if job.retry_count > self.max_retries:
                err = ErrorInfo(ename="WorkerLost", evalue=reason, kind=ErrorKind.TRANSIENT)
                actions += self._finish_failed(job, err, f"WorkerLost: {reason}", None)
                continue
            self._reset(job)
            job.ready_at = now
            self._enqueue(job, now)
            requeued.append(job_id)
            actions.append(RequeueJob(job_id, job.retry_count, now, f"worker lost: {reason}",
                                      "worker_lost"))
        w.running.clear()
        # A clean goodbye is not a loss: the timeline and explain must not show it as one.
        name = EventName.WORKER_LEFT if graceful and not requeued else EventName.WORKER_LOST
        actions.append(Publish(name, {"worker_id": w.worker_id, "reason": reason,
                                      "requeued_job_ids": requeued}))
        return actions

    def _pop_ready(self, now: float) -> JobRec | None:
        while self._delayed and self._delayed[0][0] <= now:
            _, jid = heapq.heappop(self._delayed)
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED:
                heapq.heappush(self._ready, (-job.priority, jid))
        while self._ready:
            _, jid = heapq.heappop(self._ready)
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED:
                if job.ready_at > now:  # a stale entry of a job now waiting for a retry
                    continue
                return job
        return None

    def _dispatch(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self._queued or not self.workers or self.paused:
            return actions
        while True:
            worker = max(self.workers.values(), key=lambda w: w.free)
            if worker.free <= 0:
                return actions
            job = self._pop_ready(now)
            if job is None:
                return actions
            self._queued -= 1
            job.status, job.worker_id, job.dispatched_at = _RUNNING, worker.worker_id, now
            job.attempt += 1
            worker.running.add(job.id)
            actions += [
                ClaimJob(job.id, worker.worker_id, job.attempt),
                Send(worker.worker_id, Dispatch(job=job.spec, attempt=job.attempt,
                                                timeout_s=self.timeout_of(job))),
                Publish(EventName.JOB_DISPATCHED, {
                    "job_id": job.id, "worker_id": worker.worker_id,
                    **plugin_name_fields(job.spec),
                    "plugin_version": job.spec.parser_version, "attempt": job.attempt}),
            ]

    def next_wakeup(self) -> float | None:
        """When the earliest delayed (retry) job becomes ready, if any."""
        while self._delayed:
            ready_at, jid = self._delayed[0]
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED and job.ready_at == ready_at:
                return ready_at
            heapq.heappop(self._delayed)  # stale: cancelled, or re-queued since
        return None

"""The state machine's transitions of one job: requeue, retry, rerun after a killed host,
complete, abort, fail — each a list of store writes and published events — and a lost
worker's jobs. Pure, like all of :mod:`.state`.
"""

from __future__ import annotations

from typing import Any

from .._proc import signal_name
from ..protocol import ErrorInfo, ErrorKind, EventName, JobStatus
from ._queue import JobQueue, _Worker, plugin_name_fields
from ._vocabulary import (
    AbortJob,
    Action,
    CompleteJob,
    DeadLetter,
    FailJob,
    JobRec,
    Publish,
    RemoveStaging,
    RequeueJob,
)

_QUEUED, _RUNNING = JobStatus.QUEUED, JobStatus.RUNNING
#: ``cf_dead_letter.reason`` of a failed job, by the kind of its last error.
_DEAD_LETTER_REASONS = {ErrorKind.TRANSIENT: "max_retries_exceeded",
                        ErrorKind.HOST_KILLED: "host_kill_retries_exceeded"}

__all__ = ["Transitions"]


class Transitions(JobQueue):
    """How a job leaves RUNNING: back to the queue (a requeue, a retry with backoff, a killed
    host's rerun) or to its end (completed, aborted, failed); and what a lost worker's jobs
    become."""

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

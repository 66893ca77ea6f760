"""What the state machine decides on a user's request: cancel a job (at once while queued,
by an Abort to its worker while running) and retry FAILED/ABORTED jobs as new attempts,
or say why not. Pure, like all of :mod:`.state`.
"""

from __future__ import annotations

from ..protocol import (
    MANUAL_RETRY_REASON,
    Abort,
    CancelOutcome,
    CancelResult,
    EventName,
    JobStatus,
    Retried,
)
from ..store import CANCELLED_BY_USER
from ._transitions import Transitions
from ._vocabulary import (
    AbortJob,
    Action,
    CancelRequested,
    Publish,
    Reply,
    RequestCancel,
    RetryCandidate,
    RetryJob,
    RetryRequested,
    Send,
)

_QUEUED, _RUNNING, _PROMOTING = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PROMOTING

__all__ = ["UserRequests"]


class UserRequests(Transitions):
    """A user's cancel and retry requests, each answered with a ``Reply``."""

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

"""What the state machine decides when a worker reports on a job — it started, or its
receipt (success: promote; rejected for capacity; aborted; failed: retry, rerun or fail) —
and when the committer reports a finished promotion. Pure, like all of :mod:`.state`.
"""

from __future__ import annotations

from ..protocol import AbortCause, ErrorInfo, ErrorKind, EventName, JobStatus, ReceiptStatus
from ._transitions import Transitions
from ._vocabulary import (
    Action,
    Discard,
    JobStarted,
    MarkStarted,
    Promote,
    PromotionFinished,
    Publish,
    ReceiptReceived,
    RecordStaged,
)

_RUNNING, _PROMOTING = JobStatus.RUNNING, JobStatus.PROMOTING

__all__ = ["Receipts"]


class Receipts(Transitions):
    """A running attempt's news from its worker (started, its receipt) and from the
    committer (its promotion finished)."""

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

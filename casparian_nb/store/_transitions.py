"""Job state transitions of the writer (mixed into ``StateStore``).

Every transition is one guarded UPDATE (``WHERE id = ? AND status IN (...)``) that returns
whether the row moved. The guard is what makes duplicate or late messages harmless: a receipt
for a job that was already re-queued, aborted or completed changes nothing (F8), and a cancel
racing a completion ends in exactly one final state.

    QUEUED --claim_job--> RUNNING --complete_job--> COMPLETED
       |                    |  \\--fail_job-------> FAILED
       |                    |   \\--abort_job------> ABORTED
       |                    \\--requeue_job--> QUEUED   (retry, capacity rejection, lost worker)
    FAILED / ABORTED --retry_job--> QUEUED   (retried by its user: a new attempt)
       \\--cancel_queued / abort_job / fail_job --> ABORTED / FAILED

While RUNNING: mark_started (host pid), request_cancel ("aborting…"), record_staged (outputs
staged, promotion pending).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..protocol import MANUAL_RETRY_REASON, CompletionStatus, JobStatus
from .schema import check_iso, stamp

_QUEUED, _RUNNING = JobStatus.QUEUED, JobStatus.RUNNING

__all__ = ["CANCELLED_BY_USER", "JobTransitions", "dumps"]

#: The error message of a job cancelled by its user.
CANCELLED_BY_USER = "Cancelled by user"
#: The completion statuses a COMPLETED job may have.
_COMPLETED_AS = frozenset({CompletionStatus.SUCCESS, CompletionStatus.PARTIAL_SUCCESS})


def dumps(value: Any) -> str | None:
    """Compact JSON text for a JSON column (None stays NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


class JobTransitions:
    """Transition methods; the host class provides ``_conn``, ``_exec`` and ``transaction``."""

    _conn: sqlite3.Connection

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def claim_job(
        self, job_id: int, worker_id: str, now: str | None = None, *, attempt: int | None = None
    ) -> bool:
        """QUEUED -> RUNNING on ``worker_id``. ``attempt`` defaults to the stored one + 1.
        False if the job is not QUEUED."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, worker_id = ?, claimed_at = ?,"
            " started_at = NULL, host_pid = NULL, attempt = coalesce(?, attempt + 1),"
            " updated_at = ? WHERE id = ? AND status = ?",
            (_RUNNING, worker_id, now, attempt, now, job_id, _QUEUED),
        )

    def mark_started(self, job_id: int, host_pid: int | None, now: str | None = None) -> bool:
        """Record that the plugin host ``host_pid`` began the RUNNING job."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET started_at = ?, host_pid = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (now, host_pid, now, job_id, _RUNNING),
        )

    def request_cancel(self, job_id: int, now: str | None = None) -> bool:
        """Flag a RUNNING job as being aborted (the first request's time is kept).
        True while the job is RUNNING; use :meth:`cancel_queued` for QUEUED jobs."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET cancel_requested_at ="
            " coalesce(cancel_requested_at, ?), updated_at = ?"
            " WHERE id = ? AND status = ?",
            (now, now, job_id, _RUNNING),
        )

    def record_staged(
        self,
        job_id: int,
        staged: Any,
        *,
        source_hash: str | None = None,
        rows: Mapping[str, int] | None = None,
        quarantine_rows: int = 0,
        duration_ms: float | None = None,
        now: str | None = None,
    ) -> bool:
        """The worker staged a RUNNING job's outputs; promotion is pending.

        Stores ``staged_json = {"staged", "rows", "quarantine_rows", "duration_ms"}`` so a
        sentinel restarted before the promotion can redo it instead of re-running the job, and
        fills ``source_hash`` if the submit did not know it. The job stays RUNNING until
        :meth:`complete_job`. False if the job is not RUNNING.
        """
        now = stamp(now)
        record = {
            "staged": staged,
            "rows": dict(rows or {}),
            "quarantine_rows": quarantine_rows,
            "duration_ms": duration_ms,
        }
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET staged_json = ?,"
            " source_hash = coalesce(source_hash, ?), updated_at = ?"
            " WHERE id = ? AND status = ?",
            (dumps(record), source_hash, now, job_id, _RUNNING),
        )

    def complete_job(
        self,
        job_id: int,
        completion_status: CompletionStatus = CompletionStatus.SUCCESS,
        rows: int = 0,
        quarantine_rows: int = 0,
        outputs: Mapping[str, Any] | None = None,
        artifacts: Any = None,
        now: str | None = None,
        *,
        result_summary: str | None = None,
    ) -> bool:
        """RUNNING -> COMPLETED with the receipt's figures. False if the job is not RUNNING
        (a duplicate or late receipt), so no job completes twice."""
        if completion_status not in _COMPLETED_AS:
            raise ValueError(f"complete_job: completion_status {completion_status!r}")
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, completion_status = ?,"
            " rows = ?, quarantine_rows = ?, outputs_json = ?, artifacts_json = ?,"
            " result_summary = ?, ended_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (
                JobStatus.COMPLETED,
                completion_status,
                rows,
                quarantine_rows,
                dumps(outputs),
                dumps(artifacts),
                result_summary,
                now,
                now,
                job_id,
                _RUNNING,
            ),
        )

    def fail_job(
        self,
        job_id: int,
        error: str,
        error_kind: str | None = None,
        traceback: str | None = None,
        now: str | None = None,
        *,
        host_kills: int | None = None,
    ) -> bool:
        """QUEUED or RUNNING -> FAILED (completion FAILED). False if already final.
        ``host_kills``: the job's count of plugin hosts killed by a signal (kept when None)."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, completion_status = ?,"
            " error_message = ?, error_kind = ?, traceback = ?, ended_at = ?, updated_at = ?,"
            " host_kills = coalesce(?, host_kills)"
            " WHERE id = ? AND status IN (?, ?)",
            (JobStatus.FAILED, CompletionStatus.FAILED, error, error_kind, traceback, now, now,
             host_kills, job_id, _QUEUED, _RUNNING),
        )

    def abort_job(
        self, job_id: int, reason: str = CANCELLED_BY_USER, now: str | None = None
    ) -> bool:
        """QUEUED or RUNNING -> ABORTED (the worker confirmed, or a timeout). False if final."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, completion_status = ?,"
            " error_message = ?, ended_at = ?, updated_at = ?"
            " WHERE id = ? AND status IN (?, ?)",
            (JobStatus.ABORTED, CompletionStatus.ABORTED, reason, now, now, job_id, _QUEUED,
             _RUNNING),
        )

    def cancel_queued(self, job_id: int, now: str | None = None) -> bool:
        """QUEUED -> ABORTED "Cancelled by user" at once. False unless the job was QUEUED."""
        now = stamp(now)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, completion_status = ?,"
            " error_message = ?, ended_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (JobStatus.ABORTED, CompletionStatus.ABORTED, CANCELLED_BY_USER, now, now, job_id,
             _QUEUED),
        )

    def requeue_job(
        self,
        job_id: int,
        *,
        scheduled_at: str | None = None,
        retry_count: int | None = None,
        error: str | None = None,
        reason: str | None = None,
        now: str | None = None,
        host_kills: int | None = None,
        error_kind: str | None = None,
    ) -> bool:
        """RUNNING -> QUEUED, clearing the worker, claim and cancel fields.

        Used for a transient-failure retry (pass the new ``retry_count`` and a backoff
        ``scheduled_at``), a capacity rejection (leave ``retry_count`` None: unchanged, F9)
        and a lost worker, and after a plugin host was killed by a signal (pass the new
        ``host_kills``; kept when None). ``error`` (kept when None) and ``reason`` (in
        ``result_summary``) say why; ``error_kind`` is the kind of ``error`` (stored with it,
        so the two always describe the same failure). False if the job is not RUNNING.
        """
        now = stamp(now)
        check_iso(scheduled_at, "scheduled_at")
        # The attempt that ends here joins the job's history (a failure of the job, or an
        # attempt cut short: a lost worker, a capacity rejection, a restart).
        self._archive_attempt(job_id, JobStatus.FAILED if error_kind else JobStatus.ABORTED,
                              now, error=error, error_kind=error_kind, reason=reason,
                              only_if=_RUNNING)
        return 1 == self._exec(
            "UPDATE cf_processing_queue SET status = ?, completion_status = NULL,"
            " worker_id = NULL, host_pid = NULL, claimed_at = NULL, started_at = NULL,"
            " cancel_requested_at = NULL, staged_json = NULL, scheduled_at = ?,"
            " retry_count = coalesce(?, retry_count), error_message = coalesce(?, error_message),"
            " error_kind = CASE WHEN ? IS NULL THEN error_kind ELSE ? END,"
            " host_kills = coalesce(?, host_kills), result_summary = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (_QUEUED, scheduled_at, retry_count, error, error, error_kind, host_kills,
             reason and f"requeued: {reason}", now, job_id, _RUNNING),
        )

    def _archive_attempt(self, job_id: int, status: JobStatus, now: str, *,
                         error: str | None = None, error_kind: str | None = None,
                         reason: str | None = None, only_if: JobStatus | None = None) -> None:
        """Copy the job's current attempt (its row's attempt fields) into
        ``cf_job_attempts`` before the row is reused for the next attempt."""
        self._exec(
            "INSERT OR REPLACE INTO cf_job_attempts (job_id, attempt, status, error_message,"
            " error_kind, traceback, worker_id, host_pid, claimed_at, started_at, ended_at,"
            " reason) SELECT id, attempt, ?, coalesce(?, error_message),"
            " CASE WHEN ? IS NULL THEN error_kind ELSE ? END, traceback, worker_id, host_pid,"
            " claimed_at, started_at, coalesce(ended_at, ?), ?"
            " FROM cf_processing_queue WHERE id = ? AND attempt > 0"
            " AND (? IS NULL OR status = ?)",
            (status, error, error, error_kind, now, reason, job_id, only_if, only_if),
        )

    def retry_job(self, job_id: int, now: str | None = None) -> bool:
        """FAILED or ABORTED -> QUEUED as a new attempt, by its user's request: the ended
        attempt is kept in ``cf_job_attempts``, the automatic retry budgets start afresh,
        ``manual_retries`` counts one more, and the job leaves the dead letters. False if the
        job is not FAILED or ABORTED."""
        now = stamp(now)
        with self.transaction():
            row = self._conn.execute("SELECT status FROM cf_processing_queue WHERE id = ?",
                                     (job_id,)).fetchone()
            if row is None or row[0] not in (JobStatus.FAILED, JobStatus.ABORTED):
                return False
            self._archive_attempt(job_id, JobStatus(row[0]), now, reason=MANUAL_RETRY_REASON)
            self._exec("DELETE FROM cf_dead_letter WHERE original_job_id = ?", (job_id,))
            return 1 == self._exec(
                "UPDATE cf_processing_queue SET status = ?, completion_status = NULL,"
                " worker_id = NULL, host_pid = NULL, claimed_at = NULL, started_at = NULL,"
                " ended_at = NULL, cancel_requested_at = NULL, staged_json = NULL,"
                " scheduled_at = NULL, retry_count = 0, host_kills = 0,"
                " manual_retries = manual_retries + 1, dead_letter = NULL,"
                " error_message = NULL, error_kind = NULL, traceback = NULL,"
                " result_summary = ?, updated_at = ?"
                " WHERE id = ? AND status IN (?, ?)",
                (_QUEUED, MANUAL_RETRY_REASON, now, job_id, JobStatus.FAILED, JobStatus.ABORTED),
            )

    def reconcile_running(self, now: str | None = None) -> list[int]:
        """At sentinel start: the ids of jobs left RUNNING by a previous sentinel, oldest
        first. Their ``updated_at`` is set to ``now`` (when the new sentinel started looking);
        the sentinel then re-adopts each (a worker reports it) or re-queues / fails it."""
        now = stamp(now)
        with self.transaction():
            rows = self._conn.execute(
                "UPDATE cf_processing_queue SET updated_at = ? WHERE status = ? RETURNING id",
                (now, _RUNNING),
            ).fetchall()
        return sorted(int(r[0]) for r in rows)

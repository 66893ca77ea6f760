"""What the tape says about one job and one worker: the records :class:`~.reducer.JobReducer`
keeps, the tape's spelling of the job statuses, and what a worker event does to a worker's
record (shared with the timeline's array pass).
"""

from __future__ import annotations

from typing import Any

from ..protocol import JobStatus
from .envelope import WORKER_ACTIVE, WORKER_LEFT, WORKER_LOST, EventName

__all__ = ["ABORTED", "COMPLETED", "DISPATCHED", "FAILED", "QUEUED", "RUNNING", "SKIPPED",
           "TERMINAL", "JobRecord", "WorkerRecord", "apply_worker_event"]

_E = EventName
# the tape's spelling of the job statuses (``"queued"``, ...)
QUEUED, DISPATCHED, RUNNING = (s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                                     JobStatus.RUNNING))
COMPLETED, FAILED, ABORTED, SKIPPED = (s.tape_name for s in (
    JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED))
TERMINAL = frozenset({COMPLETED, FAILED, ABORTED, SKIPPED})


class JobRecord:
    """What the tape says about one job.

    Defaults live on the class and an instance stores only what events set: creating a
    record is on the hot path (one per job of a 100,000-job tape), and most stay sparse.
    The public fields hold what the tape held, so they are typed ``Any``: explain is lenient
    and must not reject an odd value.
    """

    plugin_name: Any = None
    plugin_version: Any = None
    status: Any = QUEUED
    rows: Any = 0
    quarantine_rows: Any = None
    outputs: Any = ()  # a list of output names once there is one
    error: Any = None
    error_kind: Any = None
    reason: Any = None
    worker_id: Any = None
    duration_ms: Any = None
    retries: Any = 0
    attempts: Any = 0
    cancel_requested: Any = False
    input_file: Any = None
    dispatched_at: float | None = None
    ended_at: float | None = None
    # the open run (dispatch -> end) for worker busy time
    run_start: float | None = None
    run_worker: str | None = None

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def add_output(self, name: str) -> None:
        """Record an output name once, in first-seen order."""
        if name not in self.outputs:
            if self.outputs:
                self.outputs.append(name)
            else:
                self.outputs = [name]

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the original's keys first (job_id, plugin_name, status, rows, outputs,
        error), then the additions."""
        return {
            "job_id": self.job_id,
            "plugin_name": self.plugin_name,
            "status": self.status,
            "rows": self.rows,
            "outputs": list(self.outputs),
            "error": self.error,
            "plugin_version": self.plugin_version,
            "worker_id": self.worker_id,
            "duration_ms": self.duration_ms,
            "retries": self.retries,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "error_kind": self.error_kind,
            "reason": self.reason,
            "quarantine_rows": self.quarantine_rows,
            "input_file": self.input_file,
        }

    def __copy__(self) -> JobRecord:
        new = JobRecord(self.job_id)
        new.__dict__.update(self.__dict__)  # the sparse instance dict: what events set
        if self.outputs:
            new.outputs = list(self.outputs)
        return new


class WorkerRecord:
    """A worker seen on the tape (by WorkerJoined or as a dispatch target)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.slots: Any = None
        self.pid: Any = None
        self.jobs = 0
        self.busy_s = 0.0
        self.joined_at: float | None = None
        self.lost_at: float | None = None
        self.left = False  # said goodbye (a clean stop), as opposed to lost

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "slots": self.slots,
            "pid": self.pid,
            "jobs": self.jobs,
            "busy_s": round(self.busy_s, 6),
            "status": (WORKER_LEFT if self.left else WORKER_LOST) if self.lost_at is not None
            else WORKER_ACTIVE,
        }

    def __copy__(self) -> WorkerRecord:
        new = WorkerRecord(self.worker_id)
        new.slots, new.pid, new.jobs, new.busy_s = self.slots, self.pid, self.jobs, self.busy_s
        new.joined_at, new.lost_at, new.left = self.joined_at, self.lost_at, self.left
        return new


def apply_worker_event(rec: WorkerRecord, kind: str, t: float | None, slots: Any,
                       pid: Any) -> None:
    """What WorkerJoined, WorkerLost and WorkerLeft (``kind``) do to
    the worker's own record (a split explain replays them on the merged record)."""
    if kind == _E.WORKER_JOINED:
        rec.joined_at = t
        rec.lost_at = None
        if isinstance(slots, int):
            rec.slots = slots
        if isinstance(pid, int):
            rec.pid = pid
    else:
        rec.lost_at = t if t is not None else 0.0
        if kind == _E.WORKER_LEFT:
            rec.left = True

"""What the sentinel's state machine hears (events) and says (actions): plain records.

:mod:`.state` decides; the server loop builds these events from sockets, timers and the
committer, and carries out the actions. A store write is one small frozen record per
operation (``ClaimJob``, ``CompleteJob``, ... — together the ``Persist`` union), which
``Persister.apply`` maps onto the typed method of the store. Re-exported by :mod:`.state`
(``st.Promote``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import ErrorKind, EventName, JobSpec, JobStatus, Receipt, ReceiptStatus, WireMessage

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
    "Tick",
    "WorkerGone",
    "WorkerHeartbeat",
    "WorkerJoined",
]


# -- events ---------------------------------------------------------------------------------

@dataclass(slots=True)
class JobRec:
    """What the dispatcher needs of a job that is not finished yet."""

    id: int
    priority: int
    #: The job as submitted; sent unchanged in every Dispatch.
    spec: JobSpec
    timeout_s: float | None = None
    retry_count: int = 0
    #: Plugin hosts killed by a signal while running it (its own budget, apart from retries).
    host_kills: int = 0
    attempt: int = 0
    ready_at: float = 0.0
    status: JobStatus = JobStatus.QUEUED  # QUEUED | RUNNING | PROMOTING
    worker_id: str | None = None
    dispatched_at: float = 0.0
    cancel_requested: bool = False
    #: The worker reported the plugin host it runs on (JobStarted, or the receipt), and when.
    started: bool = False
    started_at: float = 0.0
    #: When the sentinel sent its own timeout Abort (the worker-side timeout did not fire).
    abort_sent_at: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)  # rows etc. while promoting
    #: Output plan of the job (``plan.plan_to_json``), for its materializations.
    plan_json: str | None = None
    input_file: str = ""


@dataclass(slots=True)
class JobsQueued:
    jobs: list[JobRec]
    now: float


@dataclass(slots=True)
class WorkerJoined:
    worker_id: str
    identity: bytes
    slots: int
    pid: int
    now: float
    #: Jobs the worker keeps in a local backlog on top of its slots.
    prefetch: int = 0


@dataclass(slots=True)
class WorkerHeartbeat:
    worker_id: str
    now: float
    #: Slots the worker really has (its free slots + its running jobs), when it says.
    capacity: int | None = None


@dataclass(slots=True)
class WorkerGone:
    worker_id: str
    reason: str
    now: float
    #: The worker said goodbye (a clean stop): its jobs go back without spending a retry.
    graceful: bool = False


@dataclass(slots=True)
class JobStarted:
    job_id: int
    worker_id: str
    host_pid: int
    now: float


@dataclass(slots=True)
class ReceiptReceived:
    job_id: int
    worker_id: str
    attempt: int
    status: ReceiptStatus
    data: Receipt
    now: float


@dataclass(slots=True)
class PromotionFinished:
    job_id: int
    ok: bool
    artifacts: list[dict[str, Any]]
    error: str | None
    now: float


@dataclass(slots=True)
class CancelRequested:
    job_id: int
    request_id: str
    now: float


@dataclass(slots=True)
class RetryCandidate:
    """A finished job its user asked to retry, as the state DB holds it."""

    job: JobRec
    status: JobStatus
    manual_retries: int
    error: str | None = None
    #: The plugin file still holds the source the job was submitted with (a retry runs the
    #: same job; an edited plugin is a new submission).
    plugin_unchanged: bool = True


@dataclass(slots=True)
class RetryRequested:
    """``RetryJobs``: the jobs found (``candidates``) and the ids not found (``missing``)."""

    candidates: list[RetryCandidate]
    missing: list[int]
    request_id: str
    now: float


@dataclass(slots=True)
class Tick:
    now: float


#: Everything :meth:`SentinelState.handle <casparian_nb.sentinel.state.SentinelState.handle>`
#: accepts.
Event = (JobsQueued | WorkerJoined | WorkerHeartbeat | WorkerGone | JobStarted | ReceiptReceived
         | PromotionFinished | CancelRequested | RetryRequested | Tick)


# -- actions --------------------------------------------------------------------------------

# Persistence: one record per store operation. The loop carries out every one of them of a
# loop iteration in a single transaction (``Persister.apply`` maps each to its store method).

@dataclass(frozen=True, slots=True)
class ClaimJob:
    """QUEUED -> RUNNING on ``worker_id`` (``StateStore.claim_job``)."""

    job_id: int
    worker_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class MarkStarted:
    """The plugin host ``host_pid`` began the RUNNING job (``StateStore.mark_started``)."""

    job_id: int
    host_pid: int | None


@dataclass(frozen=True, slots=True)
class RequestCancel:
    """A RUNNING job is being aborted (``StateStore.request_cancel``)."""

    job_id: int


@dataclass(frozen=True, slots=True)
class RecordStaged:
    """The worker staged the job's outputs; promotion pending (``StateStore.record_staged``)."""

    job_id: int
    staged: dict[str, Any] | None
    source_hash: str | None
    rows: dict[str, int]
    quarantine_rows: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class CompleteJob:
    """RUNNING -> COMPLETED plus one materialization per planned output."""

    job_id: int
    artifacts: list[dict[str, Any]]
    outputs: dict[str, int]
    quarantine_rows: int
    source_hash: str | None
    spec: JobSpec
    plan_json: str | None


@dataclass(frozen=True, slots=True)
class RequeueJob:
    """RUNNING -> QUEUED, ready again at ``scheduled_at`` (unix seconds)."""

    job_id: int
    retry_count: int
    scheduled_at: float
    error: str
    reason: str
    #: The job's new count of killed plugin hosts (None: unchanged).
    host_kills: int | None = None
    #: The kind of ``error`` (None: not a failure of the job: a lost worker, capacity).
    error_kind: ErrorKind | None = None


@dataclass(frozen=True, slots=True)
class AbortJob:
    """QUEUED or RUNNING -> ABORTED (``StateStore.abort_job``)."""

    job_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class FailJob:
    """QUEUED or RUNNING -> FAILED (``StateStore.fail_job``)."""

    job_id: int
    error: str
    error_kind: ErrorKind
    traceback: str
    #: The job's final count of killed plugin hosts (None: unchanged).
    host_kills: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Record the failed job in ``cf_dead_letter`` (``StateStore.dead_letter``)."""

    job_id: int
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class RetryJob:
    """FAILED or ABORTED -> QUEUED as a new attempt (``StateStore.retry_job``)."""

    job_id: int


#: A store write the state machine asks for (``isinstance(action, Persist)`` works).
Persist = (ClaimJob | MarkStarted | RequestCancel | RecordStaged | CompleteJob | RequeueJob
           | AbortJob | FailJob | DeadLetter | RetryJob)


@dataclass(slots=True)
class Send:
    worker_id: str
    message: WireMessage

    @property
    def type(self) -> str:
        return type(self.message).__name__


@dataclass(slots=True)
class Publish:
    name: EventName
    data: dict[str, Any]


@dataclass(slots=True)
class Promote:
    job_id: int
    staged: dict[str, Any]
    mode: str
    submission_id: str | None


@dataclass(slots=True)
class Discard:
    staged: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RemoveStaging:
    """Remove what attempt ``attempt`` of a job staged (``<staging>/attempt-N/<job dir>``):
    that attempt is over (its worker was lost) and no receipt of it will be promoted. The
    loop removes the directory (never one with a promotion journal) and records a
    ``StagingRemoved`` event when there was something to remove."""

    job_id: int
    #: The job's key (``JobSpec.job_id``), which names its staging directory.
    job_key: str
    attempt: int


@dataclass(slots=True)
class Reply:
    """Answer the control request ``request_id`` (held by the server) with ``message``."""

    request_id: str
    message: WireMessage


Action = (ClaimJob | MarkStarted | RequestCancel | RecordStaged | CompleteJob | RequeueJob
          | AbortJob | FailJob | DeadLetter | RetryJob | Send | Publish | Promote | Discard | RemoveStaging
          | Reply)

"""What the sentinel's state machine hears (events) and says (actions): plain records.

:mod:`.state` decides; the server loop builds these events from sockets, timers and the
committer, and carries out the actions. Re-exported by :mod:`.state` (``st.Promote``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol import JobSpec, Receipt, ReceiptStatus, WireMessage

__all__ = [
    "Action",
    "CancelRequested",
    "Discard",
    "JobRec",
    "JobStarted",
    "JobsQueued",
    "Persist",
    "Promote",
    "PromotionFinished",
    "Publish",
    "ReceiptReceived",
    "Reply",
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
    attempt: int = 0
    ready_at: float = 0.0
    status: str = "QUEUED"  # QUEUED | RUNNING | PROMOTING
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
class Tick:
    now: float


# -- actions --------------------------------------------------------------------------------

@dataclass(slots=True)
class Persist:
    """Call ``store.<op>(**args)`` inside this iteration's transaction."""

    op: str
    args: dict[str, Any]


@dataclass(slots=True)
class Send:
    worker_id: str
    message: WireMessage

    @property
    def type(self) -> str:
        return type(self.message).__name__


@dataclass(slots=True)
class Publish:
    name: str
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


@dataclass(slots=True)
class Reply:
    """Answer the control request ``request_id`` (held by the server) with ``message``."""

    request_id: str
    message: WireMessage


Action = Persist | Send | Publish | Promote | Discard | Reply

"""Every wire message of casparian_nb, as ``msgspec.Struct`` classes, and how a socket serves them.

A message on any socket (control, worker, events) is the multipart frame list::

    [*routing_frames, b"CF1", signature, body]

``routing_frames`` are whatever sits before the magic frame: ROUTER identities, or the topic of a
PUB message. ``body`` is UTF-8 JSON ``{"v": 1, "type", "id", "ts", "reply_to", "payload"}``
(control replies add ``"status": "ok" | "error"``) and ``signature`` is the ASCII hex
HMAC-SHA256 of ``b"CF1" + body`` with the key from ``sentinel.json``, as in Jupyter's kernel
protocol. ``type`` is the name of the payload's Struct class (the tag of a tagged union whose
tag sits in the envelope), so ``GetJob(job_id=7)`` travels as
``{"type": "GetJob", ..., "payload": {"job_id": 7}}``.

Each socket has its union of the Structs it carries (:data:`ControlRequest`,
:data:`ControlReply`, :data:`WorkerMessage`, :data:`SentinelMessage`, :data:`EventMessage`)
and a :class:`Codec` built for it (``Codec(key, accepts=ControlRequest)``): decoding verifies
the signature before anything else, then validates the payload into its Struct. A ROUTER socket
serves its union through a :class:`HandlerTable` (Struct class -> handler); :func:`error_reply`
is the one place an ``Error`` reply is built, with the code given by the exception's class
(:func:`error_code`). :meth:`Codec.decode` raises only
:class:`~casparian_nb.errors.ProtocolError` subclasses — whatever the bytes — so a loop that
catches that one class survives hostile input (F14).

The job itself: :class:`JobSpec` is built once when a job is submitted (``sentinel/_submit.py``)
and travels unchanged — through the sentinel's state machine, the worker and the plugin host —
to the plugin's ``ctx``; it round-trips through ``msgspec.json`` for the state DB (a restarted
sentinel reads an equal one back). What differs per attempt does not belong to the job and
travels beside it: :class:`Dispatch` (sentinel -> worker) adds the attempt number and the
timeout; the worker adds its staging directory for that attempt when it hands the job to a
plugin host (:class:`HostJob`). The outcome of an attempt is one :class:`Receipt` (plugin host
-> worker -> sentinel), whose failures are an :class:`ErrorInfo`.

>>> codec = Codec(b"k" * 32)
>>> routing, msg = codec.decode([b"id", *codec.encode(GetJob(job_id=7))])
>>> routing, msg.type, msg.payload
([b'id'], 'GetJob', GetJob(job_id=7))
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, TypeAlias, Union, get_args

import msgspec

from ._codec import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    MAGIC,
    MAX_DEPTH,
    MAX_FRAMES,
    PROTOCOL_VERSION,
    Catalogue,
    FrameCodec,
    Int64,
    InvalidPayloadError,
    Message,
    MessageTooLargeError,
    SignatureError,
    StaleMessageError,
    UnknownMessageTypeError,
    WireError,
    WireMessage,
    one_line,
)
from ._ratelimit import LogLimiter
from ._router import (
    Error,
    ErrorCode,
    Handler,
    HandlerTable,
    RequestFailed,
    error_code,
    error_reply,
)
from .errors import ProtocolError, TransientError

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "FINISHED_JOB_STATUSES",
    "JOB_EVENTS",
    "MAGIC",
    "MANUAL_RETRY_REASON",
    "MAX_DEPTH",
    "MAX_FRAMES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REPLY_FOR",
    "STORED_JOB_STATUSES",
    "TAPE_JOB_STATUSES",
    "Abort",
    "AbortCause",
    "BatchStaged",
    "CancelJob",
    "CancelJobs",
    "CancelOutcome",
    "CancelResult",
    "Codec",
    "ColumnContract",
    "CompactOutputs",
    "Compacted",
    "CompactedOutput",
    "CompletionStatus",
    "ControlReply",
    "ControlRequest",
    "Dispatch",
    "Error",
    "ErrorCode",
    "ErrorInfo",
    "ErrorKind",
    "Event",
    "EventMessage",
    "EventName",
    "GetJob",
    "GetQueueStats",
    "Goodbye",
    "Handler",
    "HandlerTable",
    "Heartbeat",
    "HostBatch",
    "HostExit",
    "HostJob",
    "HostReady",
    "Identify",
    "InputDecision",
    "Int64",
    "InvalidPayloadError",
    "Job",
    "JobSpec",
    "JobStarted",
    "JobStatus",
    "Jobs",
    "ListJobs",
    "ListWorkers",
    "LogLimiter",
    "MaterializationStatus",
    "Message",
    "MessageTooLargeError",
    "OutputContract",
    "Ping",
    "PluginRegistered",
    "Pong",
    "PreviewData",
    "PreviewOutput",
    "ProtocolError",
    "QuarantinePolicy",
    "QueueStats",
    "Receipt",
    "ReceiptStatus",
    "Refused",
    "RegisterPlugin",
    "RequestFailed",
    "Retried",
    "RetryJobs",
    "SentinelMessage",
    "Shutdown",
    "ShutdownAck",
    "SignatureError",
    "SkippedInput",
    "StagingRemovalCause",
    "StaleMessageError",
    "SubmitJobs",
    "Submitted",
    "Subscribed",
    "UnknownMessageTypeError",
    "Welcome",
    "WireError",
    "WireMessage",
    "WorkerInfo",
    "WorkerMessage",
    "Workers",
    "error_code",
    "error_info",
    "error_reply",
    "one_line",
    "vocabulary",
]


# -- the vocabulary: every status and event name, defined once --------------------------------

class JobStatus(StrEnum):
    """Where a job is. The state DB stores :data:`STORED_JOB_STATUSES`; the sentinel also
    knows a job as ``PROMOTING`` (outputs being committed) and tapes and replays report
    ``DISPATCHED`` (sent to a worker, not started yet). Tapes spell them in lower case
    (:meth:`tape_name`)."""

    QUEUED = "QUEUED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    PROMOTING = "PROMOTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    SKIPPED = "SKIPPED"

    @property
    def tape_name(self) -> str:
        """The lower-case spelling ``tape explain`` and replays use (``"queued"``)."""
        return self.value.lower()


#: Statuses a row of ``cf_processing_queue`` may hold (its CHECK constraint).
STORED_JOB_STATUSES: Final = (
    JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED,
    JobStatus.ABORTED, JobStatus.SKIPPED,
)  # fmt: skip
#: Statuses after which nothing more happens to a job.
FINISHED_JOB_STATUSES: Final = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED}
)
#: Statuses a tape replay reports, in the order ``tape explain`` counts them.
TAPE_JOB_STATUSES: Final = (
    JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.COMPLETED,
    JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED,
)  # fmt: skip


class CompletionStatus(StrEnum):
    """How a finished job ended (``cf_processing_queue.completion_status``)."""

    SUCCESS = "SUCCESS"
    PARTIAL_SUCCESS = "PARTIAL_SUCCESS"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    ABORTED = "ABORTED"
    SKIPPED = "SKIPPED"


class ReceiptStatus(StrEnum):
    """What a worker reports of one job attempt (``Receipt.status``)."""

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    REJECTED = "REJECTED"


class MaterializationStatus(StrEnum):
    """What a materialization record says of a job's outputs."""

    SUCCESS = "success"
    PARTIAL_SUCCESS = "partial_success"
    NO_DATA = "no_data"


class ErrorKind(StrEnum):
    """Whether a failed job may be retried, and by which budget."""

    PERMANENT = "permanent"
    #: Retried with backoff up to ``max_retries`` times.
    TRANSIENT = "transient"
    #: The plugin host died by a signal (the OOM killer, ``kill -9``, a segfault): not a
    #: plugin error as far as we can tell; retried up to ``host_kill_retries`` times
    #: (``ErrorInfo.signal`` says which signal).
    HOST_KILLED = "host_killed"

    @property
    def label(self) -> str:
        """What ``job show`` and the queue widget say the failure was."""
        return _ERROR_KIND_LABELS[self]


_ERROR_KIND_LABELS: Final = {
    ErrorKind.PERMANENT: "error (permanent)",
    ErrorKind.TRANSIENT: "error (transient)",
    ErrorKind.HOST_KILLED: "plugin host killed by a signal (not a plugin error)",
}


class AbortCause(StrEnum):
    """Why a job attempt was killed (``Abort.cause``, ``Receipt.cause``)."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    #: The worker is stopping: the job is not at fault and goes back to the queue.
    SHUTDOWN = "shutdown"


class EventName(StrEnum):
    """Names of the events the sentinel publishes and records on its tape (``domain_event``),
    and of the responses to recorded commands (``system_response``)."""

    JOB_QUEUED = "JobQueued"
    JOB_DISPATCHED = "JobDispatched"
    JOB_STARTED = "JobStarted"
    CANCEL_REQUESTED = "CancelRequested"
    JOB_COMPLETED = "JobCompleted"
    JOB_FAILED = "JobFailed"
    JOB_ABORTED = "JobAborted"
    JOB_RETRIED = "JobRetried"
    JOB_SKIPPED = "JobSkipped"
    MATERIALIZATION_RECORDED = "MaterializationRecorded"
    WORKER_JOINED = "WorkerJoined"
    WORKER_LOST = "WorkerLost"
    WORKER_LEFT = "WorkerLeft"
    #: The sentinel removed staged outputs no job will promote (see ``StagingRemovalCause``).
    STAGING_REMOVED = "StagingRemoved"
    COMMAND_SUCCEEDED = "CommandSucceeded"
    COMMAND_FAILED = "CommandFailed"


class StagingRemovalCause(StrEnum):
    """Why the sentinel removed a staging directory (``StagingRemoved.cause``)."""

    #: The attempt's worker was lost; the job went back to the queue (or failed).
    WORKER_LOST = "worker_lost"
    #: Swept when the sentinel stopped: no promotion needed it.
    STOP = "stop"
    #: Swept when the sentinel started, after crash recovery.
    START = "start"


#: ``JobRetried.reason`` (and the job's ``result_summary``) of a retry its user asked for: a
#: FAILED or ABORTED job queued again as a new attempt (``RetryJobs``).
MANUAL_RETRY_REASON: Final = "retried by its user"


class InputDecision(StrEnum):
    """What a submission or a standalone run does with one input file
    (:func:`casparian_nb.plan.decide`, the one skip rule of both, F4/F15)."""

    #: Run it: some planned output is not materialized yet (or ``force``).
    RUN = "run"
    #: Every planned output is materialized by this plugin version and source.
    SKIP = "skip"
    #: Every planned output is materialized by this plugin version, but by a different source
    #: of it: skipped and reported (``force`` re-runs).
    STALE = "stale"


#: Events that concern one job (their payload has ``job_id``).
JOB_EVENTS: Final = frozenset({
    EventName.JOB_QUEUED, EventName.JOB_DISPATCHED, EventName.JOB_STARTED,
    EventName.CANCEL_REQUESTED, EventName.JOB_COMPLETED, EventName.JOB_FAILED,
    EventName.JOB_ABORTED, EventName.JOB_RETRIED, EventName.JOB_SKIPPED,
    EventName.MATERIALIZATION_RECORDED,
})  # fmt: skip


def vocabulary() -> dict[str, list[str]]:
    """Every status list, for front-ends that must not spell them themselves (the queue
    widget's JavaScript gets this from the kernel)."""
    return {
        "job_statuses": [s.value for s in JobStatus],
        "finished_job_statuses": sorted(s.value for s in FINISHED_JOB_STATUSES),
        "completion_statuses": [s.value for s in CompletionStatus],
        "event_names": [e.value for e in EventName],
    }


# -- the messages ----------------------------------------------------------------------------
# (their base, WireMessage, and Int64 are in _codec; Error, the failed reply, in _router)

# Control requests (client -> sentinel).

class Ping(WireMessage):
    """Liveness probe; answered by :class:`Pong`."""


class ListJobs(WireMessage):
    """A page of jobs, newest first; ``status`` filters (any case)."""

    status: str | None = None
    limit: Int64 | None = None
    offset: Int64 | None = None
    submission_id: str | None = None


class GetJob(WireMessage):
    job_id: Int64


class CancelJob(WireMessage):
    job_id: Int64


class CancelJobs(WireMessage):
    """Cancel the listed jobs, or every job in ``status`` (default QUEUED; "ALL" for all)."""

    job_ids: list[Int64] | None = None
    status: str | None = None


class GetQueueStats(WireMessage):
    pass


class SubmitJobs(WireMessage):
    """Queue one job per input file (directories and globs are expanded by the sentinel)."""

    plugin: str
    inputs: list[str]
    sink: str | None = None
    mode: str | None = None
    priority: Int64 = 0
    timeout: float | None = None
    submission_id: str | None = None
    force: bool = False
    #: This submission's quarantine limits (None: the plugin's ``quarantine``, else none).
    quarantine: QuarantinePolicy | None = None
    #: Resources each job needs, on top of (and overriding) the plugin's ``resources``.
    resources: dict[str, float] | None = None


class RetryJobs(WireMessage):
    """Re-queue FAILED/ABORTED jobs as new attempts: the ``job_ids`` given, else every job
    in one of ``statuses`` (default FAILED and ABORTED). Answered by :class:`Retried`."""

    job_ids: list[Int64] = []
    statuses: list[JobStatus] = []


class RegisterPlugin(WireMessage):
    path: str


class ListWorkers(WireMessage):
    pass


class Shutdown(WireMessage):
    """Stop (a control request to the sentinel; also sent by the sentinel to its workers)."""


class CompactOutputs(WireMessage):
    """Merge the small promoted files of a ``parquet://`` sink (``output``, or every output)
    into files of about ``target_size`` bytes. Answered by :class:`Compacted` once the merged
    files replaced the small ones and the jobs' artifacts name them."""

    sink: str
    output: str | None = None
    target_size: Int64 = 128 * 1024 * 1024


# Control replies (sentinel -> client).

class Pong(WireMessage):
    """``event_seq``: the ``seq`` of the last event published."""

    pid: Int64
    version: str
    uptime_s: float
    event_seq: Int64 = 0


class Jobs(WireMessage):
    """One page of job rows (state DB columns, without the bulky JSON ones) and how many
    jobs match in all."""

    jobs: list[dict[str, Any]]
    total: Int64


class Job(WireMessage):
    job: dict[str, Any] | None


class CancelOutcome(StrEnum):
    """What a cancel found, besides a job's :class:`JobStatus` (``CancelResult.state``)."""

    #: Abort sent; the job shows ABORTED once its worker confirms.
    ABORTING = "ABORTING"
    #: The job finished running; its outputs are being committed.
    COMPLETING = "COMPLETING"
    #: No such job.
    UNKNOWN = "UNKNOWN"
    #: The answer to CancelJobs: see its ``results``.
    MIXED = "MIXED"


class CancelResult(WireMessage):
    """``state``: a :class:`JobStatus` or a :class:`CancelOutcome` value (MIXED for
    :class:`CancelJobs`, whose ``results`` map each job id to its state)."""

    success: bool
    message: str
    state: str
    results: dict[str, str] | None = None


class QueueStats(WireMessage):
    queued: Int64 = 0
    running: Int64 = 0
    completed: Int64 = 0
    failed: Int64 = 0
    aborted: Int64 = 0
    skipped: Int64 = 0
    cancel_requested: Int64 = 0
    total: Int64 = 0


class SkippedInput(msgspec.Struct, kw_only=True):
    """An input a submission did not queue: every output it would make is materialized."""

    job_id: Int64
    input_file: str
    reason: str
    #: Materialized by the same plugin version with a different source (F15).
    stale: bool = False


class Submitted(WireMessage):
    job_ids: list[Int64]
    skipped: list[SkippedInput]
    submission_id: str


class Retried(WireMessage):
    """The jobs re-queued (their new attempt numbers) and those refused, with why."""

    job_ids: list[Int64]
    attempts: dict[str, Int64] = {}
    refused: dict[str, str] = {}


class PluginRegistered(WireMessage):
    plugin_id: Int64
    name: str
    version: str
    source_hash: str
    trust: str


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A connected worker: its slots (plus backlog), the jobs it runs, when it was last heard
    from (unix seconds) and how many more jobs it takes."""

    worker_id: str
    slots: Int64
    pid: Int64
    running: list[Int64]
    last_seen: float
    free: Int64


class Workers(WireMessage):
    workers: list[WorkerInfo]


class ShutdownAck(WireMessage):
    pass


class CompactedOutput(msgspec.Struct, kw_only=True):
    """What a compaction did to one output: files, rows moved and bytes, before and after."""

    output: str
    files_before: Int64
    files_after: Int64
    rows: Int64
    bytes_before: Int64
    bytes_after: Int64


class Compacted(WireMessage):
    """The answer to :class:`CompactOutputs`; ``jobs_repointed``: jobs whose artifacts now
    name a merged file."""

    sink: str
    target_size: Int64
    outputs: list[CompactedOutput] = []
    jobs_repointed: Int64 = 0


# The job and its outcome.

class QuarantinePolicy(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """How many of an output's rows may go to quarantine before the job fails permanently
    (and promotes nothing): ``max_pct`` of its rows (0-100), ``max_rows`` rows. None: no
    limit. From a submission (``quarantine=``) or the plugin's ``quarantine`` constant."""

    max_pct: float | None = None
    max_rows: Int64 | None = None


class ColumnContract(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One declared column of an output: ``type`` is the canonical spelling of
    :mod:`casparian_nb.contracts` (``int64``, ``decimal(10,2)``, ``list<string>``, ...).
    ``required=False``: a batch may omit it (it is then all null; needs ``nullable``)."""

    name: str
    type: str
    nullable: bool = True
    required: bool = True


class OutputContract(msgspec.Struct, kw_only=True, frozen=True):
    """The declared schema of one output (from the plugin's literal ``outputs``)."""

    output: str
    columns: list[ColumnContract]


class JobSpec(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, gc=False):
    """One job, as submitted: built once and never rebuilt (see the module docstring).

    ``job_id`` is text: the sentinel's integer id, or a standalone run's ``run-...`` id.
    ``plugin_name_declared`` says whether ``plugin_name`` is the plugin's declared ``name``
    (readable on tapes) or its file stem (user data: tapes hash it). Not tracked by the
    garbage collector (it holds only strings and numbers): 100,000 queued jobs hold one each.
    """

    job_id: str
    input_file: str
    plugin_path: str
    plugin_name: str
    plugin_name_declared: bool = False
    plugin_source_hash: str | None = None
    parser_version: str | None = None
    sink: str
    mode: str = "append"
    submission_id: str | None = None
    timeout_s: float | None = None
    #: One ``_cf_processed_at`` for every job of a standalone run (RFC 3339); None: the
    #: plugin host stamps the job when it runs it.
    processed_at: str | None = None
    #: The submission's quarantine limits (None: the plugin's, else no limit).
    quarantine: QuarantinePolicy | None = None
    #: Abstract resources one attempt needs, e.g. ``{"GPU": 1}``: the plugin's ``resources``
    #: merged with the submission's (which win). The dask executor passes them to
    #: ``Client.submit(resources=)``; the local executor ignores them.
    resources: dict[str, float] | None = None


class ErrorInfo(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A failure travelling as data: exception type name (``ename``), one-line message
    (``evalue``), the remote traceback, and whether a retry may help. Rendered on the
    controller by :class:`~casparian_nb.errors.RemoteJobError`."""

    ename: str
    evalue: str
    traceback: str = ""
    kind: ErrorKind = ErrorKind.PERMANENT
    input_file: str | None = None
    #: "load" when the plugin itself could not be loaded (the same for every input file).
    phase: str | None = None
    #: The signal that killed the plugin host (kind ``HOST_KILLED``), e.g. 9 for SIGKILL.
    signal: Int64 | None = None


class PreviewOutput(msgspec.Struct, kw_only=True, frozen=True):
    """One output of a preview run: its full row counts and its first rows (an Arrow IPC
    stream, schema included, base64: text like every other field), valid and
    would-be-quarantined (with ``_cf_row_error``)."""

    name: str
    table: str
    rows: Int64
    head: str
    quarantine_rows: Int64 = 0
    quarantine: str | None = None


class PreviewData(msgspec.Struct, kw_only=True, frozen=True):
    """What a preview run returns besides its receipt (its log is a file the caller reads)."""

    outputs: list[PreviewOutput]


class Receipt(WireMessage, omit_defaults=True):
    """The outcome of one job attempt: made by the plugin host, completed by the worker
    (``attempt``, ``worker_id``, ``host_pid``) and sent to the sentinel."""

    job_id: str
    status: ReceiptStatus
    attempt: Int64 = 0
    worker_id: str | None = None
    host_pid: Int64 | None = None
    rows: dict[str, Int64] | None = None
    quarantine_rows: Int64 = 0
    source_hash: str | None = None
    staged: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    duration_ms: float | None = None
    #: ABORTED: why, for people ("cancelled by user", "timeout: ...") and for the sentinel.
    reason: str | None = None
    cause: AbortCause | None = None
    #: Preview runs only (``HostJob.preview_rows``): the outputs' first rows.
    preview: PreviewData | None = None


# Worker socket (worker -> sentinel).

class Identify(WireMessage):
    """A worker's first message; ``prefetch`` jobs beyond ``slots`` wait in its backlog."""

    worker_id: str
    slots: Int64
    pid: Int64
    host: str
    prefetch: Int64 = 0


class Heartbeat(WireMessage):
    worker_id: str
    active_job_ids: list[str]
    free_slots: Int64


class JobStarted(WireMessage):
    job_id: str
    host_pid: Int64
    worker_id: str | None = None


class Goodbye(WireMessage):
    worker_id: str
    #: The worker is gone rather than leaving (a Dask worker that left its cluster, said by
    #: the dask bridge): its running attempts spend a retry, as for any lost worker.
    lost: bool = False
    reason: str | None = None


# Worker socket (sentinel -> worker).

class Welcome(WireMessage):
    worker_id: str
    heartbeat_interval: float


class Refused(WireMessage):
    reason: str


class Dispatch(WireMessage):
    """Run ``job`` as its attempt number ``attempt`` (from 1), killed after ``timeout_s``."""

    job: JobSpec
    attempt: Int64
    timeout_s: float | None = None


class Abort(WireMessage):
    """Kill the job, for ``cause`` (``reason`` says it in words)."""

    job_id: str
    reason: str
    cause: AbortCause = AbortCause.CANCELLED


# Events socket (sentinel -> subscribers).

class Event(WireMessage):
    """One published event; ``seq`` counts every event the sentinel published."""

    name: EventName
    seq: Int64
    data: dict[str, Any]
    #: The command that caused it (a job's submission id), when the sentinel knows one.
    correlation_id: str | None = None


class Subscribed(WireMessage):
    """Published on topic ``b"ready.<token>"`` when a subscription to it arrives: the
    subscriber then knows its earlier subscriptions are in place (no slow joiner)."""

    token: str


# Worker <-> plugin host, over the host's socket pair (a private pipe: not signed). The host
# says HostReady once, then answers each HostJob with a Receipt, and each HostBatch with one
# Receipt per member as it ends and then a BatchStaged, until HostExit.

class HostJob(msgspec.Struct, kw_only=True, frozen=True, tag=True):
    """One attempt of a job on a plugin host, staging under ``staging_root``."""

    job: JobSpec
    attempt: Int64 = 1
    staging_root: str
    #: False: the host skips the fsyncs of what it staged; the committer makes it durable
    #: (``sinks.sync_staged``) before promoting. The runner's choice; workers keep True.
    sync_staging: bool = True
    #: Where this attempt's captured output goes (``<log_root>/<job_id>/attempt-<n>.log``,
    #: :mod:`casparian_nb.joblogs`); None: the host's own log, as before.
    log_root: str | None = None
    #: Scrub paths, user and host names out of the captured output (like the tape).
    redact_log: bool = True
    #: Preview mode: stage nothing and answer with the first ``preview_rows`` rows of each
    #: output in ``Receipt.preview`` (:mod:`casparian_nb.previews`).
    preview_rows: Int64 | None = None


class HostBatch(msgspec.Struct, kw_only=True, frozen=True, tag=True):
    """Several small jobs run back to back on one plugin host, their outputs staged together
    under ``<staging_root>/<batch_id>/`` (one file per output for the whole batch, promoted
    as one): a standalone run's small files (:mod:`casparian_nb.runner`).

    Each member still runs, fails, is quarantine-checked and logged on its own; only rows
    of members that succeeded reach the shared staging. A member whose rows cannot join the
    batch's files (another schema) is staged alone, as a HostJob would be.
    """

    batch_id: str
    jobs: list[HostJob]


class BatchStaged(msgspec.Struct, kw_only=True, frozen=True, tag=True):
    """The host's last answer to a HostBatch, after every member's Receipt.

    ``staged`` is the shared staging (a :class:`~casparian_nb.sinks.StagedJob` as a dict,
    its ``job_id`` the batch's id), None when no member's rows went there; ``shares`` gives,
    per member job id whose receipt has no ``staged`` of its own, its rows per staged output
    (quarantine outputs included)."""

    batch_id: str
    staged: dict[str, Any] | None = None
    shares: dict[str, dict[str, Int64]] = {}


class HostExit(msgspec.Struct, frozen=True, tag=True):
    """Finish (the host exits after its current job)."""


class HostReady(msgspec.Struct, frozen=True):
    """The host's imports are done."""

    pid: Int64


ControlRequest: TypeAlias = Union[  # noqa: UP007 - a runtime union: get_args lists it
    Ping, ListJobs, GetJob, CancelJob, CancelJobs, GetQueueStats, SubmitJobs, RegisterPlugin,
    ListWorkers, Shutdown, RetryJobs, CompactOutputs,
]
ControlReply: TypeAlias = Union[  # noqa: UP007
    Pong, Jobs, Job, CancelResult, QueueStats, Submitted, PluginRegistered, Workers,
    ShutdownAck, Retried, Compacted, Error,
]
WorkerMessage: TypeAlias = Union[Identify, Heartbeat, JobStarted, Receipt, Goodbye]  # noqa: UP007
SentinelMessage: TypeAlias = Union[Welcome, Refused, Dispatch, Abort, Shutdown]  # noqa: UP007
EventMessage: TypeAlias = Union[Event, Subscribed]  # noqa: UP007


def _catalogue(*unions: Any) -> dict[str, type[WireMessage]]:
    return {cls.__name__: cls for union in unions for cls in get_args(union)}


#: Every message type on every socket, by name (the envelope's ``type``).
MESSAGE_TYPES: Final[Mapping[str, type[WireMessage]]] = _catalogue(
    ControlRequest, ControlReply, WorkerMessage, SentinelMessage, EventMessage)
_REPLIES: Final = frozenset(_catalogue(ControlReply))

#: The reply each control request expects (``Error`` is always possible too).
REPLY_FOR: Final[Mapping[type[WireMessage], type[WireMessage]]] = {
    Ping: Pong, ListJobs: Jobs, GetJob: Job, CancelJob: CancelResult, CancelJobs: CancelResult,
    GetQueueStats: QueueStats, SubmitJobs: Submitted, RegisterPlugin: PluginRegistered,
    ListWorkers: Workers, Shutdown: ShutdownAck, RetryJobs: Retried,
    CompactOutputs: Compacted,
}  # fmt: skip


def _reply_status(type_name: str) -> str | None:
    """A control reply's envelope ``status``: "error" for ``Error``, "ok" for the others;
    None for messages that are not control replies."""
    if type_name not in _REPLIES:
        return None
    return "error" if type_name == "Error" else "ok"


_ALL: Final = Catalogue(MESSAGE_TYPES, _reply_status)


class Codec(FrameCodec):
    """Encodes, signs, verifies and decodes the messages of one socket with one shared key.

    ``accepts`` is the union (or tuple of Struct classes) :meth:`decode` admits; any other
    known type is refused as ``UNKNOWN_TYPE`` (default: every message type). ``max_bytes``
    caps a whole message (checked before parsing or hashing anything); ``max_age`` is how far
    ``ts`` may lie in the past or future (None: no check, for replaying recorded traffic).
    Thread-safe: it holds no mutable state.
    """

    def __init__(self, key: bytes, *, accepts: Any = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float | None = DEFAULT_MAX_AGE) -> None:  # fmt: skip
        catalogue = _ALL
        if accepts is not None:
            classes = (accepts,) if isinstance(accepts, type) else get_args(accepts) or accepts
            catalogue = Catalogue(MESSAGE_TYPES, _reply_status,
                                  accepts=frozenset(c.__name__ for c in classes))
        super().__init__(key, catalogue, max_bytes=max_bytes, max_age=max_age)


# -- errors as data --------------------------------------------------------------------------

def error_info(exc: BaseException, *, kind: ErrorKind | None = None,
               limit: int = 20_000) -> ErrorInfo:  # fmt: skip
    """A failure as :class:`ErrorInfo`.

    ``kind`` defaults to transient for :class:`TransientError`, else permanent. The
    traceback keeps its last ``limit`` characters (the frames nearest the error), so a
    recursion error cannot produce a message near the size cap.
    """
    tb = "".join(traceback.format_exception(exc))
    if len(tb) > limit:
        tb = f"[... {len(tb) - limit} characters cut ...]\n" + tb[-limit:]
    if kind is None:
        kind = ErrorKind.TRANSIENT if isinstance(exc, TransientError) else ErrorKind.PERMANENT
    return ErrorInfo(ename=type(exc).__name__, evalue=str(exc)[:limit], traceback=tb, kind=kind)

"""The records a :class:`~casparian_nb.store.store.StateStore` writes in bulk: a job to
enqueue (:class:`NewJob`) and a materialization (:class:`Materialization`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import MaterializationStatus

__all__ = ["JOB_COLUMNS", "Materialization", "NewJob"]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue (one input file for one plugin). Field order matches ``JOB_COLUMNS``."""

    plugin_name: str
    input_file: str
    submission_id: str | None = None
    plugin_id: int | None = None
    parser_version: str | None = None
    #: Hash of the plugin source.
    parser_fingerprint: str | None = None
    #: Hash of the input file's bytes.
    source_hash: str | None = None
    sink_uri: str | None = None
    sink_mode: str | None = None
    #: ``plan.plan_to_json(...)`` of the output plan computed at submit (shared by a batch).
    plan_json: str | None = None
    priority: int = 0
    timeout_s: float | None = None
    #: Not before this time (RFC 3339); None = as soon as possible.
    scheduled_at: str | None = None
    #: The submission's ``QuarantinePolicy`` as JSON (None: the plugin's own).
    quarantine_json: str | None = None
    #: What the job needs of a worker (``{"GPU": 1.0}``) as JSON; None: nothing.
    resources_json: str | None = None


#: The columns of a NewJob, in its field order.
JOB_COLUMNS = (
    "plugin_name", "input_file", "submission_id", "plugin_id", "parser_version",
    "parser_fingerprint", "source_hash", "sink_uri", "sink_mode", "plan_json", "priority",
    "timeout_s", "scheduled_at", "quarantine_json", "resources_json",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Materialization:
    """One successful (or explicitly empty) output of a job, keyed by ``plan`` keys (F4)."""

    materialization_key: str
    output_target_key: str
    source_hash: str
    plugin_name: str
    parser_version: str | None
    output_name: str
    table_name: str | None
    sink_uri: str | None
    sink_mode: str | None
    schema_hash: str | None
    status: MaterializationStatus
    rows: int
    job_id: int | None
    #: sha256 of the plugin source that made it (F15: same version, other source = stale).
    parser_fingerprint: str | None = None

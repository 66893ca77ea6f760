"""Output sinks: URIs, modes, staging and atomic promotion.

The life of a job's outputs::

    stager = JobStager(settings.staging_dir, job_id, "parquet://output")   # plugin host
    stager.write("orders", "orders", valid_batch)          # any number of batches/outputs
    staged = stager.close()                                 # -> StagedJob (JSON over a pipe)
    artifacts = promote(staged, mode=SinkMode.APPEND)       # committer: all outputs or none
    results = promote_group([staged, ...])                  # many jobs, one journal's fsyncs
    recover(settings.staging_dir)                           # committer start-up, after a crash
    compact("parquet://output", target_size="128MB")        # merge small promoted files

``sink`` may also route outputs to several sinks (:class:`SinkRouting`: ``{"orders":
"duckdb://db.duckdb", "*": "parquet://out"}``); such a job still promotes all or nothing.
File outputs are named ``<output>_<16 hex of blake3(job_id)>.<ext>`` and never overwritten
(F0); promotion is atomic per job (F2); every sink kind honours every :class:`SinkMode` (F3).
"""

from __future__ import annotations

from .compaction import CompactionResult, OutputCompaction, compact
from .promotion import promote, promote_group, recover
from .routing import SinkRouting, routing_from_args
from .staging import (
    Artifact,
    JobStager,
    StagedJob,
    StagedOutput,
    discard,
    job_dirname,
    make_durable,
    sync_staged,
)
from .uri import SinkMode, SinkURI, job_hash16, output_filename, parse_sink_uri

__all__ = [
    "Artifact",
    "CompactionResult",
    "JobStager",
    "OutputCompaction",
    "SinkMode",
    "SinkRouting",
    "SinkURI",
    "StagedJob",
    "StagedOutput",
    "compact",
    "discard",
    "job_dirname",
    "job_hash16",
    "make_durable",
    "output_filename",
    "parse_sink_uri",
    "promote",
    "promote_group",
    "recover",
    "routing_from_args",
    "sync_staged",
]

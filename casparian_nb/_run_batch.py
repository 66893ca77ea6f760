"""How a standalone run puts its small files into batches, and what a batch's outcome means
for each of its files (:mod:`casparian_nb.runner`).

A batch (:class:`~casparian_nb.protocol.HostBatch`) runs several small files on one plugin
host and stages their rows in one file per output, promoted as one: per small file that
saves a staging directory, a Parquet file per output and its promotion (issue 18). Each file
is still its own job — its own receipt, error, quarantine limit, log, ledger record and
result — and a host that dies mid-batch costs only the file it died in: the others run again
one by one. Only runs into one sink batch (not those routing outputs to several); large
files run alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from .protocol import AbortCause, HostBatch, HostJob, Receipt, ReceiptStatus
from .sinks import Artifact, StagedJob
from .worker.pool import BatchOutcome, aborted

__all__ = ["BATCH_FILE_BYTES", "Ended", "Share", "plan_batches", "settle"]

#: Files larger than this run alone (their fixed costs are small beside their parse, and a
#: batch holds its members' rows in memory until each member has succeeded).
BATCH_FILE_BYTES = 1 << 20
#: At most this many input bytes in one batch.
_BATCH_BYTES = 16 << 20
#: Each host gets at least this many batches, so they finish close together.
_ROUNDS = 4


@dataclass(frozen=True)
class Share:
    """A file's rows in its batch's shared staging: ``rows`` per staged output."""

    staged: StagedJob
    rows: dict[str, int]

    def artifacts(self, promoted: Sequence[Artifact]) -> list[Artifact]:
        """This file's part of the batch's promoted artifacts."""
        return [Artifact(a.output, a.table, self.rows[a.output], a.uri, a.sink)
                for a in promoted if a.output in self.rows]


#: One ended file for the committer: its attempt, receipt and, for a file whose rows are in
#: its batch's staging, its share of it.
Ended = tuple[HostJob, Receipt, Share | None]


def plan_batches(jobs: Sequence[HostJob], hosts: int, run_id: str,
                 most: int) -> list[HostJob | HostBatch]:
    """``jobs`` as lone jobs and batches of at most ``most`` small files, in order, for
    ``hosts`` hosts."""
    per = max(1, min(most, len(jobs) // (hosts * _ROUNDS)))
    if per == 1:
        return list(jobs)
    plan: list[HostJob | HostBatch] = []
    pending: list[HostJob] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if len(pending) == 1:
            plan.append(pending[0])
        elif pending:
            plan.append(HostBatch(batch_id=f"run-{run_id}-batch-{len(plan):06d}",
                                  jobs=pending))
        pending, pending_bytes = [], 0

    for job in jobs:
        try:
            size = os.stat(job.job.input_file).st_size
        except OSError:  # its own job reports what is wrong with it
            size = BATCH_FILE_BYTES + 1
        if size > BATCH_FILE_BYTES:
            plan.append(job)
            continue
        if pending_bytes + size > _BATCH_BYTES:
            flush()
        pending.append(job)
        pending_bytes += size
        if len(pending) == per:
            flush()
    flush()
    return plan


def settle(batch: HostBatch, outcome: BatchOutcome) -> tuple[list[Ended], list[HostJob]]:
    """What ``outcome`` means per file: the files that ended, and those to run again alone
    (their rows were lost with a host that died, or timed out, in another file, or with
    shared files the host could not write)."""
    done: list[Ended] = []
    again: list[HostJob] = []
    result = outcome.staged
    shared = StagedJob.from_dict(result.staged) if result and result.staged else None
    # Killed on purpose (a cancel, the run stopping): what did not end is aborted, not redone.
    redo = outcome.killed in (None, AbortCause.TIMEOUT)
    for job, res in zip(batch.jobs, outcome.receipts, strict=False):
        if res.status != ReceiptStatus.SUCCESS or res.staged:
            done.append((job, res, None))
        elif result is not None and shared is not None and job.job.job_id in result.shares:
            done.append((job, res, Share(shared, dict(result.shares[job.job.job_id]))))
        elif redo:
            again.append(job)
        else:
            done.append((job, _lost(job, outcome), None))
    for job in batch.jobs[len(outcome.receipts):]:
        if redo:
            again.append(job)
        else:
            done.append((job, _lost(job, outcome), None))
    return done, again


def _lost(job: HostJob, outcome: BatchOutcome) -> Receipt:
    """The receipt of a file whose batch was killed on purpose before it could end."""
    last = outcome.receipts[-1] if outcome.receipts else None
    reason = (last.reason if last is not None and last.reason else None) or "aborted"
    res = aborted(job.job.job_id, reason, cause=outcome.killed or AbortCause.CANCELLED)
    return msgspec.structs.replace(res, host_pid=last.host_pid if last else None)

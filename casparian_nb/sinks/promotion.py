"""Promotion: moving a staged job into its sink, all outputs or none (F2), never
overwriting (F0), honouring the sink mode (F3).

Runs only in the committer that owns the sink (the runner's main process or the sentinel),
never in a plugin host. File sinks (parquet/csv) promote through a journal::

    1. checks      final names free (F0); mode=error / replace look for other runs' files
    2. journal     <staging_dir>/PROMOTING.json, state "started", lists src -> tmp -> dst
    3. move        each staged file to <sinkdir>/.<final>.cf-tmp (rename, or copy + fsync
                   across devices); readers ignore dot-files, so nothing is visible yet
    4. place       link(tmp, final) + unlink(tmp): link fails if the final exists, so even a
                   racing writer cannot make us overwrite; then fsync the directory
    5. replace     delete the other runs' files (only after this job's files are in place)
    6. done        journal state "done", staging dir removed

Three fsyncs per job in mode append/error: the journal (file and directory) before anything
moves, and the sink directory once every final is linked. Nothing else needs to reach the
disk for recovery to end in the same place after a power cut. mode=replace adds the
deletions' and the final journal's.

A crash after step 2 is finished by :func:`recover` (roll forward: every staged file is
complete and durable before promotion starts). An error in step 3 or 4 before the first
final exists rolls back instead (temps return to staging), recorded as journal state
"rollback" so that a crash during the rollback is also finished the same way.

A job whose outputs are routed to several sinks promotes through :mod:`._multi` instead:
the same journal, with a "preparing" state before its commit point and DuckDB steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import SinkError, SinkModeError
from . import _journal
from ._fs import read_json, remove_tree, write_json_atomic
from ._journal import final_path, finish, move_to_tmp, other_run_files, output_of, resume, rollback
from .staging import JOURNAL, Artifact, StagedJob
from .uri import SinkMode, SinkURI

__all__ = ["Artifact", "promote", "recover"]

log = logging.getLogger(__name__)


def promote(
    staged: StagedJob,
    *,
    mode: SinkMode | str = SinkMode.APPEND,
    run_job_ids: Collection[str] | None = None,
    lock_timeout: float = 10.0,
) -> list[Artifact]:
    """Publish every output of a staged job into its sink atomically; return the artifacts.

    ``run_job_ids`` are the jobs of the current run/submission (default: just this job);
    ``mode`` decides what happens to data of *other* runs in the same outputs (see
    :class:`SinkMode`). Re-promoting a job that already made it is a no-op returning the
    same artifacts. ``lock_timeout`` bounds the wait for a DuckDB file another process holds.
    """
    mode = SinkMode.parse(mode)
    run_ids = frozenset(run_job_ids or ()) | {staged.job_id}
    groups = staged.by_sink()
    if len(groups) > 1:
        from ._multi import promote_across  # outputs routed to several sinks

        artifacts = promote_across(staged, groups, mode, run_ids, lock_timeout)
        remove_tree(staged.staging_dir)
        return artifacts
    if not groups:
        remove_tree(staged.staging_dir)
        return []
    (sink,) = groups
    if sink.kind == "duckdb":
        from .duckdb_sink import promote_duckdb  # keep duckdb out of plugin-host imports

        artifacts = promote_duckdb(staged, sink, mode, run_ids, lock_timeout)
    else:
        artifacts = _promote_files(staged, sink, mode, run_ids)
    remove_tree(staged.staging_dir)
    return artifacts


def _artifacts(staged: StagedJob, sink: SinkURI) -> list[Artifact]:
    return [
        Artifact(o.output, o.table, o.rows, f"file://{final_path(sink, o.output, staged.job_id)}")
        for o in staged.outputs
    ]


def _promote_files(
    staged: StagedJob, sink: SinkURI, mode: SinkMode, run_ids: frozenset[str]
) -> list[Artifact]:
    journal = Path(staged.staging_dir) / JOURNAL
    artifacts = _artifacts(staged, sink)
    if journal.exists() and resume(journal) == "done":
        return artifacts  # an interrupted promotion of this very job: now finished
    plan = [(Path(o.path), final_path(sink, o.output, staged.job_id)) for o in staged.outputs]
    if not plan:
        return []
    taken = [dst for _, dst in plan if os.path.lexists(dst)]
    if taken:
        if len(taken) == len(plan) and not any(src.exists() for src, _ in plan):
            return artifacts  # promoted earlier and its staging already cleaned up
        raise SinkError(
            f"job {staged.job_id!r}: {taken[0]} already exists; outputs are never overwritten "
            "(F0) — was this job id promoted before?"
        )
    for src, _ in plan:
        if not src.is_file():
            raise SinkError(f"job {staged.job_id!r}: staged file {src} is missing")

    # Append never looks at what other runs wrote: scanning the sink dir would make every
    # promotion cost O(files already there).
    others = ([] if mode is SinkMode.APPEND
              else other_run_files(sink, {o.output for o in staged.outputs}, run_ids))
    if others and mode is SinkMode.ERROR:
        name = output_of(others[0].name, sink.extension)
        raise SinkModeError(
            f"output {name!r} already has data in {sink}; mode=error refuses to add to it — "
            "use mode=append or replace"
        )
    doomed = others if mode is SinkMode.REPLACE else []

    sink.path.mkdir(parents=True, exist_ok=True)
    moves = [
        {"src": str(src), "tmp": str(dst.with_name(f".{dst.name}.cf-tmp")), "dst": str(dst)}
        for src, dst in plan
    ]
    state: dict[str, Any] = {
        "job_id": staged.job_id,
        "sink": str(sink),
        "state": "started",
        "moves": moves,
        "delete": [str(p) for p in doomed],
    }
    write_json_atomic(journal, state)
    placed = 0
    try:
        # No fsync between the moves and the links: recovery finishes from any mix of
        # staged, ".cf-tmp" and final names the disk may hold after a power cut (the data
        # itself was made durable in staging, and the journal above before any move).
        for m in moves:
            move_to_tmp(Path(m["src"]), Path(m["tmp"]))
        for m in moves:
            _journal.place(Path(m["tmp"]), Path(m["dst"]))  # via the module: tests patch it
            placed += 1
    except BaseException as exc:
        if placed:
            # Some finals are visible: the only consistent way out is forward — try it now,
            # so the caller sees a finished job rather than one that recover() finishes later.
            if not isinstance(exc, Exception):
                raise
            try:
                finish(journal, state)
            except Exception:
                raise SinkError(
                    f"job {staged.job_id!r}: promotion into {sink} stopped after {placed} of "
                    f"{len(moves)} outputs ({exc}); recover() will complete it"
                ) from exc
            log.warning("promotion of job %s: %s; completed on retry", staged.job_id, exc)
            return artifacts
        rollback(journal, state)
        if isinstance(exc, Exception) and not isinstance(exc, SinkError):
            raise SinkError(
                f"job {staged.job_id!r}: promotion into {sink} failed and was rolled back: {exc}"
            ) from exc
        raise
    finish(journal, state)
    return artifacts


def recover(staging_root: str | Path) -> list[str]:
    """Complete every promotion a crash interrupted under ``staging_root``.

    Journals in state "started" are rolled forward (all outputs appear), "rollback" ones
    rolled back (none appear), and the temps they name are removed from the sink dirs. Call
    it in the committer before promoting anything. Returns the job ids touched. Staging dirs
    without a journal are left alone: their plugin host may still be writing.
    """
    root = Path(staging_root)
    touched: list[str] = []
    if not root.is_dir():
        return touched
    for job_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            (job_dir / (JOURNAL + ".tmp")).unlink()  # journal never published: nothing moved
        journal = job_dir / JOURNAL
        if not journal.exists():
            continue
        try:
            job_id = str(read_json(journal).get("job_id", job_dir.name))
            if resume(journal) == "done":
                remove_tree(job_dir)
        except (OSError, ValueError) as exc:
            log.error("cannot recover promotion in %s: %s", job_dir, exc)
            continue
        touched.append(job_id)
    return touched

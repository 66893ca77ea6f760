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

:func:`promote_group` runs the same steps for many jobs in mode append at once: one journal
(in the first job's staging dir) lists every job's moves, so those fsyncs are paid per group;
a crash is finished by :func:`recover` from that one journal, every job of the group together.

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
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..errors import SinkError, SinkModeError
from . import _journal
from ._fs import fsync_dir, read_json, remove_tree, write_json_atomic
from ._journal import finish, move_to_tmp, other_run_files, output_of, resume, rollback
from .staging import JOURNAL, Artifact, StagedJob, sync_staged
from .uri import SinkMode, SinkURI, output_filename

__all__ = ["Artifact", "promote", "promote_group", "recover"]

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
    sinkdir = str(sink.path)
    return [
        Artifact(o.output, o.table, o.rows, "file://" + os.path.join(
            sinkdir, output_filename(o.output, staged.job_id, sink.extension)))
        for o in staged.outputs
    ]


def _promote_files(
    staged: StagedJob, sink: SinkURI, mode: SinkMode, run_ids: frozenset[str]
) -> list[Artifact]:
    journal = Path(staged.staging_dir) / JOURNAL
    artifacts = _artifacts(staged, sink)
    if journal.exists() and resume(journal) == "done":
        return artifacts  # an interrupted promotion of this very job: now finished
    moves, doomed = _file_moves(staged, sink, mode, run_ids)
    if moves is None:
        return artifacts  # promoted earlier and its staging already cleaned up
    if not moves:
        return []
    sink.path.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "job_id": staged.job_id,
        "sink": str(sink),
        "state": "started",
        "moves": moves,
        "delete": [str(p) for p in doomed],
    }
    write_json_atomic(journal, state)
    _move_and_place(journal, state, f"job {staged.job_id!r}", str(sink))
    return artifacts


def _file_moves(
    staged: StagedJob, sink: SinkURI, mode: SinkMode, run_ids: frozenset[str]
) -> tuple[list[dict[str, str]] | None, list[Path]]:
    """The checks before a file sink promotion, and its moves (None: already promoted) and
    the other runs' files that ``mode=replace`` deletes."""
    # Plain strings, not Paths: a committer runs this for every job it promotes.
    sinkdir = str(sink.path)
    plan = [(o.path, os.path.join(sinkdir, output_filename(o.output, staged.job_id,
                                                           sink.extension)))
            for o in staged.outputs]
    if not plan:
        return [], []
    taken = [dst for _, dst in plan if os.path.lexists(dst)]
    if taken:
        if len(taken) == len(plan) and not any(os.path.exists(src) for src, _ in plan):
            return None, []  # promoted earlier and its staging already cleaned up
        raise SinkError(
            f"job {staged.job_id!r}: {taken[0]} already exists; outputs are never overwritten "
            "(F0) — was this job id promoted before?"
        )
    for src, _ in plan:
        if not os.path.isfile(src):
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
    moves = [{"src": src, "tmp": _tmp_name(dst), "dst": dst} for src, dst in plan]
    return moves, (others if mode is SinkMode.REPLACE else [])


def _tmp_name(dst: str) -> str:
    head, name = os.path.split(dst)
    return os.path.join(head, f".{name}.cf-tmp")


def _move_and_place(journal: Path, state: dict[str, Any], what: str, where: str) -> None:
    """Steps 3-6 for a journal already written: move, place, finish — or roll back when
    nothing is visible yet. ``what``/``where`` word the errors."""
    moves = state["moves"]
    placed = 0
    try:
        # No fsync between the moves and the links: recovery finishes from any mix of
        # staged, ".cf-tmp" and final names the disk may hold after a power cut (the data
        # itself was made durable in staging, and the journal above before any move).
        for m in moves:  # (plain strings: a committer runs this for every file it promotes)
            move_to_tmp(m["src"], m["tmp"])
        for m in moves:
            _journal.place(m["tmp"], m["dst"])  # via the module: tests patch it
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
                    f"{what}: promotion into {where} stopped after {placed} of "
                    f"{len(moves)} outputs ({exc}); recover() will complete it"
                ) from exc
            log.warning("promotion of %s: %s; completed on retry", what, exc)
            return
        rollback(journal, state)
        if isinstance(exc, Exception) and not isinstance(exc, SinkError):
            raise SinkError(
                f"{what}: promotion into {where} failed and was rolled back: {exc}"
            ) from exc
        raise
    if state.get("delete"):
        finish(journal, state)  # the deletions, and a durable "done" before the journal goes
        return
    # Every final was placed just now, by this process: nothing for finish() to look for.
    # The sink directories become durable; a "done" journal would be removed with its
    # staging directory right after, and if a power cut brings "started" back, recover()
    # rolls forward over finals already in place, changing nothing.
    for sinkdir in sorted({os.path.dirname(m["dst"]) for m in moves}):
        fsync_dir(sinkdir)


def promote_group(
    staged_jobs: Sequence[StagedJob],
    *,
    mode: SinkMode | str = SinkMode.APPEND,
    run_job_ids: Collection[str] | None = None,
    sync: bool = False,
    lock_timeout: float = 10.0,
) -> list[list[Artifact] | Exception]:
    """Promote several staged jobs; per job, in order, its artifacts or the exception that
    failed it (its staging is then left to the caller, as :func:`promote` leaves it).

    Each job's outputs appear all together or not at all, as with :func:`promote`. Jobs in
    mode append whose outputs all go to file sinks share one journal (in the first one's
    staging dir), so the disk's cost of a small job's promotion — the journal's fsyncs and
    the sink directory's — is paid once per group. ``sync``: the jobs were staged with
    ``close(sync=False)``; their files become durable together with the journal (on Linux
    one ``syncfs`` for both). Other jobs go through :func:`promote` one by one. A group
    whose journal rolled back is retried job by job, so one bad job fails alone.
    """
    mode = SinkMode.parse(mode)
    results: list[list[Artifact] | Exception] = [[] for _ in staged_jobs]
    grouped: list[tuple[int, StagedJob, SinkURI, list[dict[str, str]]]] = []
    for i, staged in enumerate(staged_jobs):
        try:
            sinks_of = staged.by_sink()
            groupable = (mode is SinkMode.APPEND and len(sinks_of) == 1
                         and next(iter(sinks_of)).is_file_sink
                         and not os.path.lexists(os.path.join(staged.staging_dir, JOURNAL)))
            if not groupable:
                if sync and (len(sinks_of) > 1 or any(s.is_file_sink for s in sinks_of)):
                    sync_staged(staged)  # (a lone DuckDB load is durable by its commit)
                results[i] = promote(staged, mode=mode, run_job_ids=run_job_ids,
                                     lock_timeout=lock_timeout)
                continue
            (sink,) = sinks_of
            moves, _ = _file_moves(staged, sink, mode, frozenset())
        except Exception as exc:
            results[i] = exc
            continue
        if not moves:  # nothing staged, or promoted earlier
            results[i] = _artifacts(staged, sink) if moves is None else []
            remove_tree(staged.staging_dir)
            continue
        grouped.append((i, staged, sink, moves))
    if not grouped:
        return results
    first = grouped[0][1]
    journal = Path(first.staging_dir) / JOURNAL
    state: dict[str, Any] = {
        "job_id": first.job_id,
        "job_ids": [g[1].job_id for g in grouped],
        "sink": ", ".join(sorted({str(g[2]) for g in grouped})),
        "state": "started",
        "moves": [m for g in grouped for m in g[3]],
        "delete": [],
    }
    try:
        for sinkdir in {g[2].path for g in grouped}:
            sinkdir.mkdir(parents=True, exist_ok=True)
        if sync:
            # The staged files, their directory entries and the journal reach the disk
            # together, before anything moves.
            write_json_atomic(journal, state, durable=False)
            try:
                sync_staged(*(g[1] for g in grouped), journal=journal)
            except BaseException:
                journal.unlink(missing_ok=True)  # nothing has moved yet
                raise
        else:
            write_json_atomic(journal, state)
        what = (f"job {first.job_id!r}" if len(grouped) == 1
                else f"jobs {first.job_id!r} and {len(grouped) - 1} more")
        _move_and_place(journal, state, what, state["sink"])
    except Exception as exc:
        if journal.exists():  # finals visible and recovery still to finish: all failed
            for i, *_ in grouped:
                results[i] = exc
            return results
        for i, staged, _sink, _moves in grouped:  # rolled back: each on its own
            try:
                if sync:
                    sync_staged(staged)
                results[i] = promote(staged, mode=mode, run_job_ids=run_job_ids,
                                     lock_timeout=lock_timeout)
            except Exception as one:
                results[i] = one
        return results
    for i, staged, sink, _ in grouped[1:]:
        results[i] = _artifacts(staged, sink)
        remove_tree(staged.staging_dir)
    results[grouped[0][0]] = _artifacts(first, grouped[0][2])
    journal.unlink(missing_ok=True)  # the journal's dir last: recovery starts from it
    remove_tree(first.staging_dir)
    return results


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

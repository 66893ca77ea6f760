"""Promotion of a job whose outputs are routed to several sinks: all of them, or none.

One journal (``PROMOTING.json`` in the job's staging dir) covers every sink::

    1. checks     file sinks: final names free (F0), mode=error / replace look for others
    2. load       DuckDB sinks, in file order: lock, BEGIN, mode, INSERT — not committed
    3. journal    state "preparing": every file move and every DuckDB step
    4. move       file outputs to ``<sinkdir>/.<final>.cf-tmp`` (invisible to readers)
    5. journal    state "started", fsynced: the commit point

(Without DuckDB sinks, 3 writes "started" at once, as a one-sink promotion does: temps are
rolled back by an error and forward by recovery. Without file sinks there is nothing to
move and 3 is skipped.)
    6. COMMIT     each DuckDB transaction, in file order
    7. place      link every file final, fsync each sink dir, replace's deletions, "done"

Any failure before 5 rolls everything back — DuckDB ROLLBACK, temps back to staging, the
journal removed — so no sink shows anything. A crash before 5 leaves DuckDB transactions
that died uncommitted with the process and a "preparing" journal that :func:`recover` rolls
back. From 5 on the only way is forward: :func:`recover` (or the next ``promote`` of the job)
redoes each DuckDB step — a no-op for a database that already holds rows of this job id,
one transaction from the still-staged Parquet otherwise — and places the files. A job's
rows can only be in a sink once its journal passed 5, so the job id alone keys the loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SinkError, SinkModeError
from ._fs import write_json_atomic
from ._held import current_holder
from ._journal import final_path, finish, move_to_tmp, other_run_files, output_of, resume, undo
from .staging import JOURNAL, Artifact, StagedJob, StagedOutput
from .uri import SinkMode, SinkURI

if TYPE_CHECKING:
    import duckdb

__all__ = ["promote_across"]

log = logging.getLogger(__name__)


def promote_across(staged: StagedJob, groups: dict[SinkURI, list[StagedOutput]],
                   mode: SinkMode, run_ids: frozenset[str],
                   lock_timeout: float) -> list[Artifact]:
    """Promote a job's outputs into their several sinks atomically (module docstring)."""
    artifacts = _artifacts(staged)
    journal = Path(staged.staging_dir) / JOURNAL
    if journal.exists() and resume(journal, lock_timeout) == "done":
        return artifacts  # an interrupted promotion of this very job: now finished
    files = {s: outs for s, outs in groups.items() if s.is_file_sink}
    # One step per DuckDB *file*: routes to one file with different ?table= share its
    # transaction (each staged output already names its table).
    by_file: dict[SinkURI, list[StagedOutput]] = {}
    for s, outs in groups.items():
        if not s.is_file_sink:
            by_file.setdefault(SinkURI("duckdb", s.path), []).extend(outs)
    ducks = sorted(by_file.items(), key=lambda pair: str(pair[0]))
    if not any(os.path.lexists(o.path) for o in staged.outputs):
        finals = [final_path(s, o.output, staged.job_id) for s, outs in files.items()
                  for o in outs]
        if all(os.path.lexists(f) for f in finals):
            return artifacts  # promoted earlier and its staging already cleaned up
        raise SinkError(f"job {staged.job_id!r}: its staged files are missing")
    moves, doomed = _plan_files(staged, files, mode, run_ids)
    state: dict[str, Any] = {
        "job_id": staged.job_id, "sink": staged.sink, "state": "preparing",
        "moves": moves, "delete": [str(p) for p in doomed], "mode": mode.value,
        "run_ids": sorted(run_ids) if mode is not SinkMode.APPEND else [],
        "duckdb": [{"sink": str(s), "outputs": [o.to_dict() for o in outs]} for s, outs in ducks],
    }
    from .duckdb_sink import load_uncommitted  # keep duckdb out of plugin-host imports

    committed = True
    with _connections([s.path for s, _ in ducks], time.monotonic() + lock_timeout) as cons:
        try:
            for sink, outs in ducks:
                part = StagedJob(staged.job_id, str(sink), staged.staging_dir, outs)
                load_uncommitted(cons[sink.path], part, sink, mode, run_ids)
            for sink in files:
                sink.path.mkdir(parents=True, exist_ok=True)
            if not ducks:  # files only: the one-sink protocol ("started", then move)
                state["state"] = "started"
            if moves:
                write_json_atomic(journal, state)
                for m in moves:
                    move_to_tmp(Path(m["src"]), Path(m["tmp"]))
            if ducks:
                state["state"] = "started"
                write_json_atomic(journal, state)  # the commit point
        except BaseException as exc:
            _rollback(cons, journal, state)
            if isinstance(exc, Exception) and not isinstance(exc, SinkError):
                raise SinkError(f"job {staged.job_id!r}: promotion into its sinks failed and "
                                f"was rolled back: {exc}") from exc
            raise
        for sink, _ in ducks:
            try:
                cons[sink.path].execute("COMMIT")
            except Exception as exc:  # DuckDB rolled it back: finish() loads it again
                log.warning("job %s: commit into %s failed (%s); retrying", staged.job_id,
                            sink, exc)
                committed = False
                _forget(sink.path)
    try:
        # Outside the block: a retried DuckDB step takes the file's lock again.
        finish(journal, state, loaded=committed, lock_timeout=lock_timeout)
    except Exception as exc:
        raise SinkError(f"job {staged.job_id!r}: promotion stopped after its commit point "
                        f"({exc}); recover() will complete it") from exc
    return artifacts


def _artifacts(staged: StagedJob) -> list[Artifact]:
    out = []
    for o in staged.outputs:
        sink = staged.sink_of(o)
        uri = (f"file://{final_path(sink, o.output, staged.job_id)}" if sink.is_file_sink
               else str(SinkURI("duckdb", sink.path, o.table)))
        out.append(Artifact(o.output, o.table, o.rows, uri, sink=str(sink)))
    return out


def _plan_files(staged: StagedJob, files: dict[SinkURI, list[StagedOutput]],
                mode: SinkMode, run_ids: frozenset[str]) -> tuple[list[dict[str, str]],
                                                                  list[Path]]:
    """The moves of every file output, and the other runs' files mode=replace deletes."""
    moves: list[dict[str, str]] = []
    doomed: list[Path] = []
    for sink, outs in files.items():
        for o in outs:
            src, dst = Path(o.path), final_path(sink, o.output, staged.job_id)
            if os.path.lexists(dst):
                raise SinkError(f"job {staged.job_id!r}: {dst} already exists; outputs are "
                                "never overwritten (F0) — was this job id promoted before?")
            if not src.is_file():
                raise SinkError(f"job {staged.job_id!r}: staged file {src} is missing")
            moves.append({"src": str(src), "tmp": str(dst.with_name(f".{dst.name}.cf-tmp")),
                          "dst": str(dst)})
        if mode is SinkMode.APPEND:
            continue
        others = other_run_files(sink, {o.output for o in outs}, run_ids)
        if others and mode is SinkMode.ERROR:
            name = output_of(others[0].name, sink.extension)
            raise SinkModeError(f"output {name!r} already has data in {sink}; mode=error "
                                "refuses to add to it — use mode=append or replace")
        doomed.extend(others)
    return moves, doomed


@contextlib.contextmanager
def _connections(paths: Sequence[Path],
                 deadline: float) -> Iterator[dict[Path, duckdb.DuckDBPyConnection]]:
    """Write connections to ``paths`` (in the given, sorted order, so two committers never
    wait on each other crosswise): the thread's held ones, else opened and closed here."""
    from ._duckdb_open import connect, exclusive

    holder = current_holder()
    cons: dict[Path, duckdb.DuckDBPyConnection] = {}
    with contextlib.ExitStack() as stack:
        try:
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                if holder is not None:
                    cons[path] = holder.connection(path, deadline)
                    continue
                stack.enter_context(exclusive(path, deadline))
                con = connect(path, deadline)
                stack.callback(con.close)
                cons[path] = con
            yield cons
        except BaseException:
            for path in cons:
                _forget(path)  # a held connection's state is unknown now: reconnect next time
            raise


def _forget(path: Path) -> None:
    holder = current_holder()
    if holder is not None:
        holder.close(path)


def _rollback(cons: dict[Path, duckdb.DuckDBPyConnection], journal: Path,
              state: dict[str, Any]) -> None:
    """Undo a promotion stopped before its commit point: nothing becomes visible."""
    for con in cons.values():
        with contextlib.suppress(Exception):  # duckdb.Error: no transaction left to end
            con.execute("ROLLBACK")
    if journal.exists():
        state["state"] = "rollback"
        write_json_atomic(journal, state)
        undo(journal, state)

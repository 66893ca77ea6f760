"""The promotion journal's mechanics, shared by one-sink (:mod:`.promotion`) and several-sink
(:mod:`._multi`) promotions: final names, moves into a sink directory, and rolling a journal
forward ("started") or back ("preparing", "rollback").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import SinkError
from ..lineage import quarantine_name
from ._fs import fsync_dir, fsync_file, read_json, write_json_atomic
from .staging import StagedJob, StagedOutput
from .uri import SinkMode, SinkURI, job_hash16, output_filename, parse_sink_uri

__all__ = ["RECOVER_LOCK_TIMEOUT", "final_path", "finish", "finish_duckdb", "move_to_tmp",
           "other_run_files", "output_of", "place", "resume", "rollback", "undo"]

#: How long recovery waits for a DuckDB file another process holds (seconds).
RECOVER_LOCK_TIMEOUT = 5.0


def final_path(sink: SinkURI, output: str, job_id: str) -> Path:
    """Where ``output`` of ``job_id`` lands in a file sink (F0: one name per output and job)."""
    return sink.path / output_filename(output, job_id, sink.extension)


def output_of(filename: str, ext: str) -> str:
    return filename[: -len(ext) - 18]  # strip "_<16 hex>.<ext>"


def other_run_files(sink: SinkURI, outputs: set[str], run_ids: frozenset[str]) -> list[Path]:
    """Files of these outputs (and their quarantine siblings) written by other runs' jobs."""
    if not sink.path.is_dir():
        return []
    governed = outputs | {quarantine_name(o) for o in outputs}
    ours = {job_hash16(j) for j in run_ids}
    names = "|".join(map(re.escape, sorted(governed)))
    pattern = re.compile(rf"^({names})_([0-9a-f]{{16}})\.{sink.extension}$")
    found = []
    with os.scandir(sink.path) as it:
        for entry in it:
            m = pattern.match(entry.name)
            if m and m.group(2) not in ours:
                found.append(Path(entry.path))
    return sorted(found)


def move_to_tmp(src: str | Path, tmp: str | Path) -> None:
    try:
        os.replace(src, tmp)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Staging and sink on different filesystems: copy under a second name first, so a
        # ".cf-tmp" file is always complete (recovery may promote it as it is).
        part = Path(f"{tmp}-part")
        shutil.copyfile(src, part)
        fsync_file(part)
        os.replace(part, tmp)


def place(tmp: str | Path, dst: str | Path) -> None:
    """Give ``tmp`` its final name without ever replacing an existing ``dst`` (F0)."""
    try:
        os.link(tmp, dst)
    except FileExistsError:
        if not os.path.samefile(tmp, dst):  # after a crash between link and unlink it is ours
            raise SinkError(f"{dst} already exists; outputs are never overwritten (F0)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this filesystem: rename after a check (one committer per sink).
        if os.path.lexists(dst):
            raise SinkError(f"{dst} already exists; outputs are never overwritten (F0)") from None
        os.rename(tmp, dst)
        return
    os.unlink(tmp)


def rollback(journal: Path, state: dict[str, Any]) -> None:
    state["state"] = "rollback"
    write_json_atomic(journal, state)
    undo(journal, state)


def undo(journal: Path, state: dict[str, Any]) -> None:
    for m in state["moves"]:
        tmp, src = Path(m["tmp"]), Path(m["src"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp.with_name(tmp.name + "-part"))
        if tmp.exists():
            if src.exists():
                tmp.unlink()  # a cross-device copy: the original never left staging
            else:
                os.replace(tmp, src)
    journal.unlink()


def finish(journal: Path, state: dict[str, Any], *, loaded: bool = False,
           lock_timeout: float | None = None) -> None:
    """Roll a started promotion forward to "done" (also the recovery path).

    A journal of several sinks also lists DuckDB loads: each is redone unless that database
    already holds the job's rows (``loaded``: the caller committed them just now).
    """
    if state.get("duckdb") and not loaded:
        finish_duckdb(state, RECOVER_LOCK_TIMEOUT if lock_timeout is None else lock_timeout)
    sinkdirs = sorted({str(Path(m["dst"]).parent) for m in state["moves"]})
    for m in state["moves"]:
        src, tmp, dst = Path(m["src"]), Path(m["tmp"]), Path(m["dst"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp.with_name(tmp.name + "-part"))
        if os.path.lexists(dst):
            if tmp.exists():
                if not os.path.samefile(tmp, dst):
                    # Someone else's file took our name: keep both, never overwrite (F0).
                    raise SinkError(
                        f"{dst} appeared during the promotion of job {state['job_id']!r}; "
                        f"outputs are never overwritten (F0) — move it away and run recover()"
                    )
                tmp.unlink()  # crashed between link and unlink: the final is already ours
            continue
        if not tmp.exists():
            if not src.exists():
                raise SinkError(
                    f"job {state['job_id']!r}: staged file {src} vanished during promotion"
                )
            move_to_tmp(src, tmp)
        place(tmp, dst)
    for sinkdir in sinkdirs:
        fsync_dir(sinkdir)
    for p in state.get("delete", []):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    for sinkdir in sorted({str(Path(p).parent) for p in state.get("delete", [])}):
        fsync_dir(sinkdir)
    state["state"] = "done"
    # Without deletions, not durable: the finals are (the fsync above), and if a power cut
    # brings "started" back, recover() rolls forward again, finds every final in place and
    # does nothing. With them (mode=replace) it is: a replayed delete list could otherwise
    # remove a file that another job wrote under one of those names since.
    write_json_atomic(journal, state, durable=bool(state.get("delete")))


def resume(journal: Path, lock_timeout: float | None = None) -> str:
    """Finish whatever promotion ``journal`` describes; return "done" or "rolled back"."""
    state = read_json(journal)
    if state.get("state") in ("rollback", "preparing"):
        # "preparing": a multi-sink promotion before its commit point — nothing is visible
        # and its DuckDB transactions died uncommitted with the process.
        undo(journal, state)
        return "rolled back"
    if state.get("state") != "done":
        finish(journal, state, lock_timeout=lock_timeout)
    return "done"


def finish_duckdb(state: dict[str, Any], lock_timeout: float = RECOVER_LOCK_TIMEOUT) -> None:
    """Redo every DuckDB step of a journal past its commit point (idempotent per database)."""
    from .duckdb_sink import promote_duckdb

    job_id = str(state["job_id"])
    mode = SinkMode.parse(state.get("mode") or SinkMode.APPEND)
    run_ids = frozenset(state.get("run_ids") or ()) | {job_id}
    for step in state["duckdb"]:
        outputs = [StagedOutput.from_dict(o) for o in step["outputs"]]
        part = StagedJob(job_id, str(step["sink"]), "", outputs)
        promote_duckdb(part, parse_sink_uri(step["sink"]), mode, run_ids, lock_timeout)

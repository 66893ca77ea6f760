"""Opening a DuckDB sink file for writing: casparian's own lock file (one committer per
file) and DuckDB's lock (a notebook may hold the file), each waited for up to a deadline."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from ..errors import SinkError, SinkLockedError

__all__ = ["connect", "exclusive"]

_PID = re.compile(r"PID (\d+)")
_POLL = 0.05


@contextlib.contextmanager
def exclusive(db: Path, deadline: float) -> Iterator[None]:
    """Hold ``<db>.lock`` exclusively: one casparian committer per DuckDB file."""
    lock_path = db.with_name(db.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    raise _locked(db, int(holder) if holder.isdigit() else None) from None
                time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # lets the loser name us
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def connect(db: Path, deadline: float) -> duckdb.DuckDBPyConnection:
    """Open read-write, waiting (bounded) while another process — a notebook — holds it."""
    while True:
        try:
            return duckdb.connect(str(db))
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" not in text.lower():
                raise SinkError(f"cannot open duckdb file {db}: {text.splitlines()[0]}") from exc
            if time.monotonic() >= deadline:
                m = _PID.search(text)
                raise _locked(db, int(m.group(1)) if m else None) from None
            time.sleep(_POLL)
        except duckdb.Error as exc:
            raise SinkError(f"cannot open duckdb file {db}: {str(exc).splitlines()[0]}") from exc


def _locked(db: Path, pid: int | None) -> SinkLockedError:
    who = f"pid {pid}" if pid else "pid unknown"
    return SinkLockedError(
        f"duckdb file {db} is in use by another process ({who}); close it and retry"
    )

"""The sentinels the server extension shows: which homes, their state, their jobs; cancel;
start one in a folder. Everything goes through :class:`~casparian_nb.client.ControlClient`
(the signed control API) — the browser never talks to a sentinel's sockets.

These functions block (ZMQ requests with a timeout, a sentinel start); the handlers run them
in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._connection import CONNECTION_FILE, connection_is_live, read_connection_file
from ..client import ControlClient
from ..config import Settings, default_home, load_settings
from ..errors import CasparianError, SentinelError
from ..launcher import LocalCluster
from ..protocol import JobStatus
from ..store import StateReader

__all__ = ["ServerSentinels", "discover_homes", "job_rows", "sentinel_summary"]

#: Jobs a cancel applies to (queued, or on a worker).
_ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING,
                     JobStatus.PROMOTING})
#: Folders never searched for homes (large, or not the user's data).
_SKIP_DIRS = frozenset({"node_modules", "__pycache__", ".git", ".venv", "venv", "site-packages"})
_SEARCH_DEPTH = 3
_JOB_PAGE = 200
_REQUEST_TIMEOUT = 3.0
#: Seconds a search of the root for homes is reused (the sidebar polls twice a second).
_DISCOVERY_TTL = 5.0


def discover_homes(root_dir: Path, extra: Iterable[str | os.PathLike[str]] = (),
                   *, depth: int = _SEARCH_DEPTH) -> list[Path]:
    """The default home, every home under ``root_dir`` (a folder with a ``sentinel.json`` or
    a state DB, at most ``depth`` levels down, hidden folders skipped; a stopped sentinel
    leaves its state DB), and ``extra`` homes; each once."""
    found: dict[Path, None] = {}
    for home in [default_home(), *(Path(p).expanduser() for p in extra),
                 *_connection_dirs(root_dir.resolve(), depth)]:
        found.setdefault(home.absolute(), None)
    return list(found)


def _connection_dirs(root: Path, depth: int) -> Iterator[Path]:
    if (root / CONNECTION_FILE).is_file() or Settings(home=root).state_db.is_file():
        yield root
    if depth <= 0:
        return
    try:
        children = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in children:
        if (entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                and entry.name not in _SKIP_DIRS):
            yield from _connection_dirs(Path(entry.path), depth - 1)


def sentinel_summary(home: Path) -> dict[str, Any]:
    """``{home, running, pid, workers, counts, tape, error}`` for one home (stopped when no
    live sentinel answers; ``error`` says why when that is a surprise)."""
    out: dict[str, Any] = {"home": str(home), "running": False, "pid": None, "workers": [],
                           "counts": {}, "tape": _latest_tape(home), "error": None}
    try:
        info = read_connection_file(home)
    except SentinelError as exc:
        if (home / CONNECTION_FILE).exists():
            out["error"] = str(exc)
        return _stored_counts(home, out)
    if not connection_is_live(info):
        return _stored_counts(home, out)
    try:
        with ControlClient(info, timeout=_REQUEST_TIMEOUT) as client:
            workers = client.list_workers()
            counts = client.queue_stats()
    except CasparianError as exc:
        out["error"] = str(exc)
        return out
    out.update(running=True, pid=info.pid, counts=counts,
               workers=[{"worker_id": w.get("worker_id"), "status": w.get("status"),
                         "slots": w.get("slots")} for w in workers])
    return out


def _stored_counts(home: Path, out: dict[str, Any]) -> dict[str, Any]:
    """A stopped sentinel's counts, read from its state DB (read-only), if it has one."""
    db = Settings(home=home).state_db
    if db.is_file():
        try:
            with StateReader.open(db) as reader:
                out["counts"] = reader.queue_stats()
        except CasparianError as exc:
            out["error"] = str(exc)
    return out


def _latest_tape(home: Path) -> str | None:
    """The newest sentinel tape of ``home`` (its session recording), if any."""
    try:
        tapes = sorted((home / "tapes").glob("sentinel-*.tape"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return str(tapes[-1]) if tapes else None


def job_rows(jobs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The columns the sidebar's queue shows, with ``active`` (cancellable) decided here so
    that the browser needs no status vocabulary."""
    return [{"job_id": j.get("id"), "status": str(j.get("status", "")).lower(),
             "plugin_name": j.get("plugin_name"), "input_path": j.get("input_file"),
             "worker_id": j.get("worker_id"),
             "cancel_requested": bool(j.get("cancel_requested")),
             "active": j.get("status") in _ACTIVE}
            for j in jobs]


class ServerSentinels:
    """The homes this server may act on, and the sentinels it started (stopped with it)."""

    def __init__(self, root_dir: Path, extra_homes: Iterable[str] = ()) -> None:
        self.root_dir = root_dir.resolve()
        self.extra_homes = list(extra_homes)
        self._started: dict[Path, LocalCluster] = {}
        self._found: tuple[float, list[Path]] | None = None

    def homes(self) -> list[Path]:
        """The default home, homes found under the root, configured ones, ones started here
        (the search is reused for a few seconds)."""
        now = time.monotonic()
        if self._found is None or now - self._found[0] > _DISCOVERY_TTL:
            self._found = (now, discover_homes(self.root_dir, self.extra_homes))
        return [*self._found[1], *(h for h in self._started if h not in self._found[1])]

    def known(self, home: str) -> Path:
        """``home`` if it is one of :meth:`homes` (the browser may not name any other folder)."""
        wanted = Path(home).expanduser().absolute()
        for h in self.homes():
            if h == wanted:
                return h
        raise LookupError(f"no sentinel home {home!r} is visible to this server")

    def summaries(self) -> list[dict[str, Any]]:
        return [sentinel_summary(h) for h in self.homes()]

    def client(self, home: Path) -> ControlClient:
        info = read_connection_file(home)
        if not connection_is_live(info):
            raise SentinelError(f"the sentinel of {home} is not running")
        return ControlClient(info, timeout=_REQUEST_TIMEOUT)

    def jobs(self, home: Path) -> list[dict[str, Any]]:
        with self.client(home) as c:
            return job_rows(c.list_jobs(limit=_JOB_PAGE)["jobs"])

    def cancel(self, home: Path, job_id: int) -> dict[str, Any]:
        with self.client(home) as c:
            return c.cancel_job(job_id)

    def retry(self, home: Path, job_id: int) -> dict[str, Any]:
        """Re-queue a FAILED or ABORTED job as a new attempt (the sentinel may refuse, with
        a reason: not failed, retried too often, its plugin changed)."""
        with self.client(home) as c:
            return c.retry_jobs([job_id])

    def start(self, folder: Path, workers: int = 2) -> dict[str, Any]:
        """Start a sentinel and ``workers`` workers whose home is ``folder``. This server is
        their owner process: they stop when it ends, however it ends."""
        cluster = LocalCluster(load_settings(folder), workers=workers, owner_pid=os.getpid())
        try:
            info = cluster.start(timeout=60.0)
        except BaseException:
            cluster.stop()
            raise
        self._started[folder.absolute()] = cluster
        return {"home": str(folder), "pid": info.pid, "workers": workers}

"""Per-job logs: what a job's plugin printed or logged, one file per attempt.

The plugin host captures everything a job writes — ``print``, ``sys.stderr``, output of C
extensions and subprocesses (fd level), :mod:`logging` records and ``ctx.log(...)`` — into
``<home>/logs/jobs/<job_id>/attempt-<n>.log`` (:mod:`casparian_nb.worker._capture`). A log
is bounded: it keeps the first and the last :data:`HEAD_BYTES`/:data:`TAIL_BYTES` of the
output with a line between them saying how much was left out, and a small
``attempt-<n>.meta.json`` beside it records the total. A job that writes nothing leaves no
file.

Reading needs no sentinel and creates nothing: :func:`read_job_log` only opens files.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import JobLogNotFoundError

__all__ = [
    "HEAD_BYTES", "TAIL_BYTES", "JobLog", "job_log_attempts", "job_log_dir", "job_log_file",
    "job_log_path",
    "job_logs_root", "read_job_log", "remove_job_logs",
]

#: Bytes kept from the start and from the end of a job attempt's output.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ATTEMPT = re.compile(r"^attempt-(\d+)\.log$")


def job_logs_root(home: str | Path) -> Path:
    """``<home>/logs/jobs``: where every job's log directory lives."""
    return Path(home) / "logs" / "jobs"


def _job_dir_name(job_id: str | int) -> str:
    """``job_id`` as the name of its log directory (a job id is never a path)."""
    name = str(job_id)
    if not _JOB_ID.fullmatch(name) or name.startswith(".."):
        raise ValueError(f"not a job id: {name!r}")
    return name


def job_log_dir(root: str | Path, job_id: str | int) -> Path:
    """The directory of one job's logs under ``root``."""
    return Path(root) / _job_dir_name(job_id)


def job_log_path(root: str | Path, job_id: str | int, attempt: int) -> Path:
    """``<root>/<job_id>/attempt-<attempt>.log``."""
    return Path(job_log_file(root, job_id, attempt))


def job_log_file(root: str | Path, job_id: str | int, attempt: int) -> str:
    """:func:`job_log_path` as text (no Path built: a run asks once per file)."""
    return os.path.join(root, _job_dir_name(job_id), f"attempt-{int(attempt)}.log")


def meta_path(log: Path) -> Path:
    """The sidecar with a log's totals (``attempt-<n>.meta.json``)."""
    return log.with_name(log.name.removesuffix(".log") + ".meta.json")


def job_log_attempts(home: str | Path, job_id: str | int) -> list[int]:
    """The attempts of ``job_id`` that have a log, in order."""
    folder = job_log_dir(job_logs_root(home), job_id)
    if not folder.is_dir():
        return []
    found = (_ATTEMPT.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


@dataclass(frozen=True)
class JobLog:
    """One attempt's captured output. ``text`` is what was kept (head and tail when
    ``truncated``); ``total_bytes`` is everything the attempt wrote. ``attempt`` is None when
    the job has no log at all (it printed nothing, or has not started)."""

    job_id: str
    attempt: int | None
    text: str
    total_bytes: int
    truncated: bool
    path: Path | None = None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the kept text."""
        if lines <= 0:
            return ""
        return "\n".join(self.text.rstrip("\n").splitlines()[-lines:])

    def __str__(self) -> str:
        return self.text

    def _header(self) -> str:
        if self.attempt is None:
            return f"job {self.job_id}: no output captured"
        cut = f", cut to its head and tail ({self.total_bytes:,} bytes in all)" \
            if self.truncated else f", {self.total_bytes:,} bytes"
        return f"job {self.job_id} attempt {self.attempt} log{cut}"

    def __repr__(self) -> str:
        return f"<JobLog {self._header()}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython's text/plain
        p.text(self.text if self.attempt is not None else self._header())

    def _repr_html_(self) -> str:
        body = html.escape(self.text) if self.text else "<i>(empty)</i>"
        return (f'<div class="cf-joblog"><div><b>{html.escape(self._header())}</b></div>'
                f'<pre style="max-height:30em;overflow:auto">{body}</pre></div>')

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt, "total_bytes": self.total_bytes,
                "truncated": self.truncated, "path": str(self.path) if self.path else None,
                "text": self.text}


def read_log_file(path: Path) -> tuple[str, int, bool]:
    """(text, total bytes written, truncated) of one log file and its sidecar."""
    data = path.read_bytes()
    total, truncated = len(data), False
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
        total, truncated = int(meta["total_bytes"]), bool(meta["truncated"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # still being written, or the host was killed before it wrote one
    return data.decode("utf-8", "replace"), total, truncated


def read_job_log(home: str | Path, job_id: str | int, attempt: int | None = None) -> JobLog:
    """The log of ``job_id``'s ``attempt`` (default: its latest attempt with a log).

    Read-only. A job without any log gives an empty :class:`JobLog` (``attempt`` None); an
    ``attempt`` asked for that has no log raises :class:`~casparian_nb.errors.JobLogNotFoundError`.
    """
    name = str(job_id)
    if attempt is None:
        attempts = job_log_attempts(home, name)
        if not attempts:
            return JobLog(name, None, "", 0, False)
        attempt = attempts[-1]
    path = job_log_path(job_logs_root(home), name, attempt)
    try:
        text, total, truncated = read_log_file(path)
    except FileNotFoundError:
        have = job_log_attempts(home, name)
        raise JobLogNotFoundError(
            f"job {name} has no log for attempt {attempt}"
            + (f" (attempts with a log: {', '.join(map(str, have))})" if have else
               " (it has written nothing)")) from None
    return JobLog(name, attempt, text, total, truncated, path)


def remove_job_logs(home: str | Path, job_id: str | int) -> None:
    """Remove every log of ``job_id`` (when the job itself is removed)."""
    shutil.rmtree(job_log_dir(job_logs_root(home), job_id), ignore_errors=True)

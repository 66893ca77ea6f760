"""The queue: ``casparian jobs``, ``job show``, ``job logs``, ``job retry`` and ``job cancel``
(``casparian submit`` is :mod:`.submit`).

Reads (``jobs``, ``job show``) open the state DB read-only, so they work whether or not a
sentinel runs and never block it (F5), and create nothing (a fresh home stays absent).
Mutations go through the control API only: the sentinel is the one writer of the state DB
(F17), so with no sentinel running ``job cancel`` changes nothing and says how to start one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..client import ControlClient, connection_is_live, read_connection_file
from ..config import Settings
from ..errors import CasparianError, SentinelError
from ..joblogs import job_log_attempts
from ..protocol import FINISHED_JOB_STATUSES, STORED_JOB_STATUSES, ErrorKind, JobStatus
from ._app import (
    EXIT_FAILED,
    EXIT_OK,
    App,
    recorded,
)

if TYPE_CHECKING:
    from ..store import StateReader

__all__ = ["job", "jobs"]


def _client(settings: Settings) -> ControlClient:
    """A client of the home's running sentinel; a one-line error when none runs."""
    client = _live_client(settings)
    if client is None:
        raise no_sentinel(settings)
    return client


def _live_client(settings: Settings) -> ControlClient | None:
    """A client of the sentinel serving the home, or None when none is running (no
    connection file, or the process it names is gone). A connection file that exists but
    cannot be used (refused for its mode, corrupt) raises: a sentinel may well be running."""
    try:
        info = read_connection_file(settings.home)
    except SentinelError:
        if settings.connection_file.exists():
            raise
        return None  # no file (or it vanished as its sentinel stopped): none is running
    if not connection_is_live(info):
        return None
    return ControlClient(info, timeout=settings.request_timeout)


def _reader(settings: Settings) -> StateReader | None:
    """A read-only reader of the home's state DB, or None when there is none yet."""
    from ..store import StateReader

    if not settings.state_db.exists():
        return None
    return StateReader.open(settings.state_db)


def no_sentinel(settings: Settings) -> SentinelError:
    """The one-line error of a command that needs the home's sentinel when none runs."""
    return SentinelError(f"no sentinel is running for {settings.home}; "
                         "start one with `casparian start`")


def _fmt_job(j: dict[str, Any]) -> str:
    name = Path(str(j.get("input_file") or "")).name
    err = (f"  {j['error_message']}"
           if j.get("error_message") and j["status"] != JobStatus.COMPLETED else "")
    if j.get("dead_letter"):  # out of automatic retries (or a permanent error): `job retry`
        err += f"  [dead letter: {j['dead_letter']}]"
    return (f"{j['id']:>8}  {j['status']:<10} {j.get('plugin_name', ''):<16} {name:<32} "
            f"{j.get('rows') or 0:>9}{err}")


def shown_status(job: dict[str, Any]) -> str:
    """A job's status as ``jobs`` shows it: a RUNNING job whose plugin has not started yet
    (the worker took it ahead of a free slot) is DISPATCHED."""
    if job.get("status") == JobStatus.RUNNING and not job.get("started_at"):
        return JobStatus.DISPATCHED.value
    return str(job.get("status"))


#: What ``jobs --status`` accepts: the stored statuses plus DISPATCHED (see shown_status).
_LISTED = [s.value for s in STORED_JOB_STATUSES] + [JobStatus.DISPATCHED.value]


@click.command(short_help="List jobs (read-only; works without a sentinel).")
@click.option("--status", type=click.Choice(_LISTED, case_sensitive=False),
              default=None, help="Only jobs in this status (DISPATCHED: on a worker, its "
                                 "plugin not started yet; RUNNING: the plugin runs).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many jobs.")
@click.option("--offset", type=int, default=0, show_default=True,
              help="Skip this many (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of job objects.")
@recorded("Jobs", creates_home=False)
def jobs(app: App, status: str | None, limit: int, offset: int, as_json: bool) -> int:
    """List jobs, newest first (read-only; works with or without a sentinel).

    Example: casparian jobs --status failed --json
    """
    found: list[dict[str, Any]] = []
    reader = _reader(app.settings)
    wanted = status.upper() if status else None
    stored = JobStatus.RUNNING.value if wanted == JobStatus.DISPATCHED else wanted
    if reader is not None:
        with reader:
            # DISPATCHED and RUNNING share the stored RUNNING: split them after reading
            # (running jobs are few: at most the workers' slots and what they took ahead).
            split = stored == JobStatus.RUNNING
            found = reader.list_jobs(status=stored, limit=100_000 if split else limit,
                                     offset=0 if split else offset)
    for j in found:
        j["status"] = shown_status(j)
    if stored == JobStatus.RUNNING:
        found = [j for j in found if j["status"] == wanted][offset:offset + limit]
    if as_json:
        print(json.dumps(found, indent=2, default=str))
        return EXIT_OK
    print(f"{'ID':>8}  {'STATUS':<10} {'PLUGIN':<16} {'INPUT':<32} {'ROWS':>9}")
    for j in found:
        print(_fmt_job(j))
    return EXIT_OK


@click.group()
def job() -> None:
    """Show, cancel or retry jobs, or read a job's logs."""


@job.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@recorded("Job", creates_home=False)
def job_show(app: App, job_id: int, as_json: bool) -> int:
    """Show every recorded field of job JOB_ID (read-only).

    Example: casparian job show 42
    """
    reader = _reader(app.settings)
    if reader is None:
        raise CasparianError(f"job {job_id} does not exist: no jobs in {app.settings.home} yet")
    with reader:
        found = reader.get_job(job_id)
        attempts = reader.attempts(job_id) if found is not None else []
    if found is None:
        raise CasparianError(f"job {job_id} does not exist")
    found["status"] = shown_status(found)
    logged = job_log_attempts(app.settings.home, job_id)
    if as_json:
        print(json.dumps({**found, "attempts": attempts, "log_attempts": logged}, indent=2,
                         default=str))
        return EXIT_OK
    for key, value in found.items():
        if value not in (None, "", [], {}) and key != "traceback":
            print(f"{key:>20}: {value}")
    failure = _failure(found)
    if failure:
        print(f"{'failure':>20}: {failure}")
    if attempts:
        print(f"{'attempts':>20}:")
        for a in attempts:
            print("  " + _fmt_attempt(a))
    if logged:
        print(f"{'logs':>20}: attempt(s) {', '.join(map(str, logged))} "
              f"(casparian job logs {job_id})")
    if found.get("traceback") and found.get("status") != JobStatus.COMPLETED:
        print("remote traceback:")
        print(str(found["traceback"]).rstrip("\n"))
    return EXIT_OK


@job.command("logs")
@click.argument("job_id", type=int)
@click.option("--attempt", type=int, default=None, metavar="N",
              help="This attempt's log (default: the latest attempt with output).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new output until the job finishes.")
@recorded("Job", creates_home=False)
def job_logs(app: App, job_id: int, attempt: int | None, follow: bool) -> int:
    """Print what job JOB_ID's plugin printed and logged (read-only; no sentinel needed).

    Example: casparian job logs 42 --follow
    """
    from ..joblogs import read_job_log

    if not follow:
        log = read_job_log(app.settings.home, job_id, attempt)
        if log.attempt is None:
            print(f"job {job_id} has no captured output", file=sys.stderr)
        _print_log(log.text)
        return EXIT_OK
    return _follow(app.settings, job_id, attempt)


def _print_log(text: str) -> None:
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _follow(settings: Settings, job_id: int, attempt: int | None) -> int:
    """Print the log as it grows, polling until the job is finished. Once a long log is cut
    to head and tail its middle is gone: say so, and print the final tail at the end."""
    from ..joblogs import job_log_attempts, read_job_log

    printed, shown_attempt, cut = 0, attempt, False
    found = _reader(settings)
    if found is None:
        raise CasparianError(f"job {job_id} does not exist: no jobs in {settings.home} yet")
    with found as reader:
        while True:
            row = reader.get_job(job_id)
            if row is None:
                raise CasparianError(f"job {job_id} does not exist")
            finished = row["status"] in FINISHED_JOB_STATUSES
            have = job_log_attempts(settings.home, job_id)
            if attempt is None and have and have[-1] != shown_attempt:
                if shown_attempt is not None:
                    print(f"[casparian: attempt {have[-1]}]")
                shown_attempt, printed, cut = have[-1], 0, False
            if shown_attempt is not None and shown_attempt in have:
                log = read_job_log(settings.home, job_id, shown_attempt)
                data = log.text.encode()
                if log.truncated and not cut:
                    cut = True
                    print(f"[casparian: output too long; the end of it follows when job "
                          f"{job_id} finishes]")
                elif not cut and len(data) > printed:
                    sys.stdout.write(data[printed:].decode("utf-8", "replace"))
                    sys.stdout.flush()
                    printed = len(data)
                if finished and cut:
                    _print_log(log.tail(200))
            if finished:
                return EXIT_OK
            time.sleep(0.25)  # a poll interval: the job's end is the deadline


def _fmt_attempt(a: dict[str, Any]) -> str:
    """One line per attempt: number, how it ended, where, when, and its error."""
    when = f"{a.get('started_at') or a.get('claimed_at') or '-'} -> {a.get('ended_at') or '-'}"
    error = f"  {a['error_message']}" if a.get("error_message") else ""
    return (f"#{a['attempt']:<3} {a['status']:<10} worker {a.get('worker_id') or '-':<14} "
            f"{when}{error}")


def _failure(j: dict[str, Any]) -> str | None:
    """What a job's (last) error was — a plugin's error, or its plugin host killed by a
    signal — from the stored kind, never from the message."""
    if j.get("status") == JobStatus.COMPLETED:
        return None
    try:
        kind = ErrorKind(str(j.get("error_kind")))
    except ValueError:  # no error, or one of no kind (a lost worker)
        return None
    if kind == ErrorKind.HOST_KILLED and j.get("status") not in FINISHED_JOB_STATUSES:
        kills = int(j.get("host_kills") or 0)
        return f"{kind.label}, {kills} time(s) so far; the job runs again"
    return kind.label


@job.command("retry")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--failed", is_flag=True, help="Retry every FAILED or ABORTED job.")
@recorded("Job", creates_home=False)
def job_retry(app: App, job_ids: tuple[int, ...], failed: bool) -> int:
    """Re-queue FAILED or ABORTED jobs (JOB_IDS, or every one with --failed) as new
    attempts on the running sentinel; each keeps its attempt history (job show).

    Example: casparian job retry 42 43 or casparian job retry --failed
    """
    if bool(job_ids) == failed:
        raise click.UsageError("give job ids or --failed (not both)")
    settings = app.settings
    client = _live_client(settings)
    if client is None:  # only the sentinel writes the state DB (F17): never retry here
        raise no_sentinel(settings)
    with client:
        reply = client.retry_jobs(job_ids, statuses=(JobStatus.FAILED, JobStatus.ABORTED)
                                  if failed else ())
    attempts = reply.get("attempts") or {}
    for job_id in reply["job_ids"]:
        print(f"job {job_id}: queued as attempt {attempts.get(str(job_id), '?')}")
    for job_id, why in (reply.get("refused") or {}).items():
        print(f"casparian: job {job_id} not retried: {why}", file=sys.stderr)
    app.response = {"job_ids": reply["job_ids"], "count": len(reply["job_ids"])}
    if failed and not reply["job_ids"] and not reply.get("refused"):
        print("no FAILED or ABORTED jobs to retry")
    return EXIT_FAILED if reply.get("refused") else EXIT_OK


@job.command("cancel")
@click.argument("job_id", type=int)
@recorded("Job", creates_home=False)
def job_cancel(app: App, job_id: int) -> int:
    """Cancel job JOB_ID through the running sentinel: a queued job is dropped, a running
    job's plugin is killed and nothing is promoted. With no sentinel running nothing changes
    (only the sentinel writes the state DB).

    Example: casparian job cancel 42
    """
    settings = app.settings
    client = _live_client(settings)
    if client is None:
        raise no_sentinel(settings)
    with client:
        reply = client.cancel_job(job_id)
    print(f"job {job_id}: {reply['message']} ({reply['state']})")
    return EXIT_OK if reply["success"] else EXIT_FAILED

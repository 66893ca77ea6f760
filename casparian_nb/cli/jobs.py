"""The queue: ``casparian submit``, ``jobs``, ``job show`` and ``job cancel``.

Reads (``jobs``, ``job show``) open the state DB read-only, so they work whether or not a
sentinel runs and never block it (F5). Mutations go through the control API; the one exception
is cancelling a queued job when no sentinel runs, done directly in the state DB (and said so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._inputs import expand_inputs
from ..client import ControlClient, connection_is_live, read_connection_file
from ..config import Settings
from ..errors import CasparianError, SentinelError
from ..plan import stale_warning
from ..protocol import FINISHED_JOB_STATUSES, STORED_JOB_STATUSES, ErrorKind, JobStatus
from ._app import EXIT_FAILED, EXIT_OK, App, recorded, sink_options

if TYPE_CHECKING:
    from ..store import StateReader

__all__ = ["job", "jobs", "submit"]


def _client(settings: Settings) -> ControlClient:
    """A client of the home's running sentinel; a one-line error when none runs."""
    info = read_connection_file(settings.home)
    if not connection_is_live(info):
        raise SentinelError(f"the sentinel recorded in {settings.connection_file} (pid {info.pid}) "
                            "is not running; start one with `casparian start`")
    return ControlClient(info, timeout=settings.request_timeout)


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


def _reader(settings: Settings) -> StateReader:
    from ..store import StateReader

    if not settings.state_db.exists():
        raise CasparianError(f"no state DB in {settings.home} yet; submit jobs first")
    return StateReader.open(settings.state_db)


@click.command(short_help="Queue one job per input file on the running sentinel.")
@click.argument("plugin")
@click.argument("inputs", nargs=-1, required=True)
@sink_options
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Per-job timeout (default: the home's job_timeout).")
@click.option("--force", is_flag=True, help="Run even if already materialized.")
@click.option("--json", "as_json", is_flag=True, help="Print the sentinel's reply as JSON.")
@recorded("Submit")
def submit(app: App, plugin: str, inputs: tuple[str, ...], sink: str | None, mode: str,
           priority: int, timeout: float | None, force: bool, as_json: bool) -> int:
    """Queue one job per input file of INPUTS (files, directories, globs) on the running
    sentinel; print the job ids."""
    from .. import plugins

    settings = app.settings
    plugin_path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    files = [str(p) for p in expand_inputs(inputs)]
    client = _client(settings)
    # The sentinel hashes every input before it answers: allow for big submissions.
    client.timeout = max(client.timeout, 30.0 + len(files) / 2000)
    with client:
        reply = client.submit(plugin=str(plugin_path), inputs=files, sink=sink, mode=mode,
                              priority=priority, timeout=timeout, force=force)
    if as_json:
        print(json.dumps(reply, indent=2))
    else:
        ids = reply["job_ids"]
        print(f"submitted {len(ids)} job(s)" + (f", skipped {len(reply['skipped'])} already "
                                                "materialized" if reply["skipped"] else ""))
        for job_id in ids:
            print(job_id)
    stale = sum(1 for s in reply["skipped"] if s.get("stale"))
    if stale:
        spec = plugins.inspect_plugin(plugin_path)
        print("casparian: warning: " + stale_warning(stale, spec.name, spec.version,
                                                    flag="--force"), file=sys.stderr)
    app.response = {"jobs": len(reply["job_ids"]), "skipped": len(reply["skipped"])}
    return EXIT_OK


def _fmt_job(j: dict[str, Any]) -> str:
    name = Path(str(j.get("input_file") or "")).name
    err = (f"  {j['error_message']}"
           if j.get("error_message") and j["status"] != JobStatus.COMPLETED else "")
    if j.get("dead_letter"):  # out of automatic retries (or a permanent error): `job retry`
        err += f"  [dead letter: {j['dead_letter']}]"
    return (f"{j['id']:>8}  {j['status']:<10} {j.get('plugin_name', ''):<16} {name:<32} "
            f"{j.get('rows') or 0:>9}{err}")


@click.command(short_help="List jobs (read-only; works without a sentinel).")
@click.option("--status", type=click.Choice([s.value for s in STORED_JOB_STATUSES],
                                            case_sensitive=False),
              default=None, help="Only jobs in this status.")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many jobs.")
@click.option("--offset", type=int, default=0, show_default=True,
              help="Skip this many (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of job objects.")
@recorded("Jobs")
def jobs(app: App, status: str | None, limit: int, offset: int, as_json: bool) -> int:
    """List jobs, newest first (read-only; works with or without a sentinel)."""
    with _reader(app.settings) as reader:
        found = reader.list_jobs(status=status.upper() if status else None, limit=limit,
                                 offset=offset)
    if as_json:
        print(json.dumps(found, indent=2, default=str))
        return EXIT_OK
    print(f"{'ID':>8}  {'STATUS':<10} {'PLUGIN':<16} {'INPUT':<32} {'ROWS':>9}")
    for j in found:
        print(_fmt_job(j))
    return EXIT_OK


@click.group()
def job() -> None:
    """Show, cancel or retry jobs."""


@job.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@recorded("Job")
def job_show(app: App, job_id: int, as_json: bool) -> int:
    """Show every recorded field of job JOB_ID (read-only)."""
    with _reader(app.settings) as reader:
        found = reader.get_job(job_id)
        attempts = reader.attempts(job_id) if found is not None else []
    if found is None:
        raise CasparianError(f"job {job_id} does not exist")
    if as_json:
        print(json.dumps({**found, "attempts": attempts}, indent=2, default=str))
    else:
        for key, value in found.items():
            if value not in (None, "", [], {}):
                print(f"{key:>20}: {value}")
        failure = _failure(found)
        if failure:
            print(f"{'failure':>20}: {failure}")
        if attempts:
            print(f"{'attempts':>20}:")
            for a in attempts:
                print("  " + _fmt_attempt(a))
    return EXIT_OK


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
@recorded("Job")
def job_retry(app: App, job_ids: tuple[int, ...], failed: bool) -> int:
    """Re-queue FAILED or ABORTED jobs (JOB_IDS, or every one with --failed) as new
    attempts on the running sentinel; each keeps its attempt history (job show)."""
    if bool(job_ids) == failed:
        raise click.UsageError("give job ids or --failed (not both)")
    settings = app.settings
    client = _live_client(settings)
    if client is None:  # only the sentinel writes the state DB (F17): never retry here
        print(f"casparian: no sentinel is running for {settings.home}; start one with "
              "`casparian start`", file=sys.stderr)
        return EXIT_FAILED
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
@recorded("Job")
def job_cancel(app: App, job_id: int) -> int:
    """Cancel job JOB_ID: through the running sentinel (a running job's plugin is killed and
    nothing is promoted) or, when no sentinel runs, a queued job directly in the state DB."""
    settings = app.settings
    # Only with no sentinel alive is the state DB ours to write; any other problem reaching
    # the sentinel (e.g. sentinel.json refused: chmod 600) is the error to report.
    client = _live_client(settings)
    if client is not None:
        with client:
            reply = client.cancel_job(job_id)
        print(f"job {job_id}: {reply['message']} ({reply['state']})")
        return EXIT_OK if reply["success"] else EXIT_FAILED
    from ..store import StateStore

    store = StateStore.open(settings.state_db)
    try:
        cancelled = store.cancel_queued(job_id)
        found = store.get_job(job_id)
    finally:
        store.close()
    if cancelled:
        print(f"job {job_id} cancelled directly in the state DB (no sentinel is running)")
        return EXIT_OK
    state = found["status"] if found else "unknown"
    print(f"job {job_id} could not be cancelled: it is {state} and no sentinel is running",
          file=sys.stderr)
    return EXIT_FAILED

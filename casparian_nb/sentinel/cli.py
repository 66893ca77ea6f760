"""CLI commands that involve the sentinel: ``sentinel``, ``worker``, ``start``, ``submit``,
``jobs``, ``job show``, ``job cancel``. Registered by :func:`casparian_nb.cli.build_parser`.

Reads (``jobs``, ``job show``) open the state DB read-only, so they work whether or not a
sentinel runs and never block it (F5). Mutations go through the control API; the one exception
is cancelling a queued job when no sentinel runs, done directly in the state DB (and said so).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .._inputs import expand_inputs
from ..client import ControlClient, connection_is_live, read_connection_file
from ..config import Settings
from ..errors import CasparianError, SentinelError

__all__ = ["add_commands"]

_TERMINAL = {"COMPLETED", "FAILED", "ABORTED", "SKIPPED"}


def _client(settings: Settings) -> ControlClient:
    info = read_connection_file(settings.home)
    if not connection_is_live(info):
        raise SentinelError(f"the sentinel recorded in {settings.connection_file} (pid {info.pid}) "
                            "is not running; start one with `casparian start`")
    return ControlClient(info, timeout=settings.request_timeout)


def _reader(settings: Settings) -> Any:
    from ..store import StateReader

    if not settings.state_db.exists():
        raise CasparianError(f"no state DB in {settings.home} yet; submit jobs first")
    return StateReader.open(settings.state_db)


def cmd_sentinel(args: argparse.Namespace, settings: Settings) -> int:
    from .server import run_sentinel

    return run_sentinel(settings)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ..worker.supervisor import run_worker

    return run_worker(settings, slots=args.slots, worker_id=args.worker_id,
                      advertise_slots=args.advertise_slots)


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    from ..launcher import LocalCluster

    cluster = LocalCluster(settings, workers=args.workers, slots=args.slots)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    info = cluster.start()
    print(f"casparian: sentinel pid {info.pid} serving {settings.home} "
          f"(control {info.control}); {args.workers} worker(s). Ctrl-C stops all.", flush=True)
    try:
        while not stopping and cluster.alive():
            time.sleep(0.1)
    finally:
        cluster.stop()
    print("casparian: stopped", flush=True)
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from .. import plugins

    plugin = plugins.resolve_plugin_path(args.plugin, settings.plugins_dir)
    files = [str(p) for p in expand_inputs(args.inputs)]
    client = _client(settings)
    # The sentinel hashes every input before it answers: allow for big submissions.
    client.timeout = max(client.timeout, 30.0 + len(files) / 2000)
    with client:
        reply = client.submit(plugin=str(plugin), inputs=files, sink=args.sink, mode=args.mode,
                              priority=args.priority, timeout=args.timeout, force=args.force)
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        ids = reply["job_ids"]
        print(f"submitted {len(ids)} job(s)" + (f", skipped {len(reply['skipped'])} already "
                                                "materialized" if reply["skipped"] else ""))
        for job_id in ids:
            print(job_id)
    args._tape_response = {"jobs": len(reply["job_ids"]), "skipped": len(reply["skipped"])}
    return 0


def _fmt_job(j: dict[str, Any]) -> str:
    name = Path(str(j.get("input_file") or "")).name
    err = f"  {j['error_message']}" if j.get("error_message") and j["status"] != "COMPLETED" else ""
    return f"{j['id']:>8}  {j['status']:<10} {j.get('plugin_name', ''):<16} {name:<32} {j.get('rows') or 0:>9}{err}"


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    reader = _reader(settings)
    try:
        jobs = reader.list_jobs(status=args.status.upper() if args.status else None,
                                limit=args.limit, offset=args.offset)
    finally:
        reader.close()
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    print(f"{'ID':>8}  {'STATUS':<10} {'PLUGIN':<16} {'INPUT':<32} {'ROWS':>9}")
    for j in jobs:
        print(_fmt_job(j))
    return 0


def cmd_job_show(args: argparse.Namespace, settings: Settings) -> int:
    reader = _reader(settings)
    try:
        job = reader.get_job(args.job_id)
    finally:
        reader.close()
    if job is None:
        raise CasparianError(f"job {args.job_id} does not exist")
    if args.json:
        print(json.dumps(job, indent=2, default=str))
    else:
        for key, value in job.items():
            if value not in (None, "", [], {}):
                print(f"{key:>20}: {value}")
    return 0


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


def cmd_job_cancel(args: argparse.Namespace, settings: Settings) -> int:
    # Only with no sentinel alive is the state DB ours to write; any other problem reaching
    # the sentinel (e.g. sentinel.json refused: chmod 600) is the error to report.
    client = _live_client(settings)
    if client is not None:
        with client:
            reply = client.cancel_job(args.job_id)
        print(f"job {args.job_id}: {reply['message']} ({reply['state']})")
        return 0 if reply["success"] else 1
    from ..store import StateStore

    store = StateStore.open(settings.state_db)
    try:
        ok = store.cancel_queued(args.job_id)
        job = store.get_job(args.job_id)
    finally:
        store.close()
    if ok:
        print(f"job {args.job_id} cancelled directly in the state DB (no sentinel is running)")
        return 0
    state = job["status"] if job else "unknown"
    print(f"job {args.job_id} could not be cancelled: it is {state} and no sentinel is running",
          file=sys.stderr)
    return 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("sentinel", help="run the sentinel in the foreground")
    p.set_defaults(handler=cmd_sentinel, tape_name="Sentinel")

    p = sub.add_parser("worker", help="run one worker in the foreground")
    p.add_argument("--slots", type=int, default=None, help="plugin hosts (default: cores)")
    p.add_argument("--worker-id", default=None)
    p.add_argument("--advertise-slots", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_worker, tape_name="Worker")

    p = sub.add_parser("start", help="run a sentinel and workers in the foreground")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=None, help="plugin hosts per worker")
    p.set_defaults(handler=cmd_start, tape_name="Start")

    p = sub.add_parser("submit", help="queue one job per input file on the running sentinel")
    p.add_argument("plugin")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--sink", default=None)
    p.add_argument("--mode", default="append", choices=["append", "replace", "error"])
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="per-job timeout in seconds")
    p.add_argument("--force", action="store_true", help="run even if already materialized")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_submit, tape_name="Submit")

    p = sub.add_parser("jobs", help="list jobs (read-only; works without a sentinel)")
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_jobs, tape_name="Jobs")

    p = sub.add_parser("job", help="show or cancel one job")
    jsub = p.add_subparsers(dest="job_command", metavar="ACTION")
    jsub.required = True
    s = jsub.add_parser("show")
    s.add_argument("job_id", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_job_show, tape_name="Job")
    s = jsub.add_parser("cancel")
    s.add_argument("job_id", type=int)
    s.set_defaults(handler=cmd_job_cancel, tape_name="Job")

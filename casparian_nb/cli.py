"""The ``casparian`` command. It only parses arguments and builds the same objects the Python
API uses; each subcommand lives in a ``cmd_*`` function returning an exit code.

Exit codes: 0 success, 1 the command ran but something it did failed (a job, a validation),
2 the command could not run (bad arguments, bad plugin, no sentinel) — with a one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import Settings, load_settings
from .errors import CasparianError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.home)


# -- run / demo -----------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from .runner import run

    if args.parallel is not None and args.parallel < 1:
        raise CasparianError(f"--parallel must be at least 1, got {args.parallel}")
    with _sigterm_as_interrupt():
        result = run(args.plugin, args.inputs, sink=args.sink, mode=args.mode,
                     parallel=args.parallel, settings=settings)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result)
    for failed in result.failed:  # one line per failed file, naming it
        print(f"casparian: {failed.status.lower()}: {failed.input_file}: {failed.error}",
              file=sys.stderr)
    args._tape_response = {"files": len(result.files), "failed": len(result.failed),
                           "rows": sum(result.rows.values())}
    return 0 if result.ok else 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """``kill PID`` stops a run like Ctrl-C does: hosts killed, nothing half-promoted."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start a sentinel + 2 workers, submit the sample plugin over the sample files, show
    progress, print the summary and stop cleanly."""
    from .client import ControlClient
    from .demo import write_sample_data, write_sample_plugin
    from .launcher import LocalCluster
    from .store import StateReader

    plugin = write_sample_plugin(settings.plugins_dir)
    data_dir = settings.home / "demo" / "data"
    files = write_sample_data(data_dir, files=args.files)
    print(f"casparian demo: {len(files)} sample files in {data_dir}")
    print(f"  plugin: {plugin}")
    cluster = LocalCluster(settings, workers=args.workers)
    started = time.perf_counter()
    info = cluster.start()
    print(f"  sentinel pid {info.pid} + {args.workers} workers on {info.control}")
    try:
        with ControlClient(info, timeout=settings.request_timeout) as client:
            reply = client.submit(plugin=str(plugin), inputs=[str(f) for f in files],
                                  force=args.force)
            ids = set(reply["job_ids"])
            print(f"  submitted {len(ids)} job(s)"
                  + (f", skipped {len(reply['skipped'])} already materialized" if reply["skipped"]
                     else ""))
            deadline = time.monotonic() + args.timeout
            while ids:
                stats = client.queue_stats()
                if sys.stderr.isatty():
                    sys.stderr.write(f"\r  queued {stats['queued']}  running {stats['running']}  "
                                     f"completed {stats['completed']}  failed {stats['failed']} ")
                    sys.stderr.flush()
                if stats["queued"] + stats["running"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise CasparianError(f"demo jobs did not finish within {args.timeout:.0f}s")
                time.sleep(0.1)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
    finally:
        cluster.stop()
    with StateReader.open(settings.state_db) as reader:
        jobs = reader.list_jobs(submission_id=reply["submission_id"], limit=100_000)
    done = [j for j in jobs if j["status"] == "COMPLETED"]
    skipped = [j for j in jobs if j["status"] == "SKIPPED"]
    bad = [j for j in jobs if j["status"] not in ("COMPLETED", "SKIPPED")]
    rows = sum(int(j.get("rows") or 0) for j in done)
    quarantined = sum(int(j.get("quarantine_rows") or 0) for j in done)
    tapes = sorted(settings.tapes_dir.glob("sentinel-*.tape"), key=lambda p: p.stat().st_mtime)
    print(f"\n{len(done)} of {len(jobs)} jobs completed in {time.perf_counter() - started:.1f}s: "
          f"{rows:,} rows, {quarantined:,} quarantined"
          + (f"; {len(skipped)} skipped (already materialized — use --force to re-run)"
             if skipped else ""))
    for j in bad:
        print(f"  {j['status']} {Path(j['input_file']).name}: {j.get('error_message')}")
    print(f"  outputs: {settings.output_dir}  (orders_*.parquet, orders_quarantine_*.parquet)")
    if tapes:
        print(f"  sentinel tape: {tapes[-1]}")
    _print_demo_query(settings.output_dir)
    args._tape_response = {"jobs": len(jobs), "completed": len(done), "rows": rows}
    return 0 if not bad else 1


def _print_demo_query(output_dir: Path) -> None:
    """Show the outputs are queryable: DuckDB over every promoted Parquet file, lineage included."""
    import duckdb

    files = f"{output_dir}/orders_[0-9a-f]*.parquet"
    sql = (f"SELECT customer, count(*) AS orders, round(sum(amount), 2) AS total, "
           f"count(DISTINCT _cf_source_hash) AS source_files FROM read_parquet('{files}') "
           f"GROUP BY customer ORDER BY customer")
    print(f"\nDuckDB over the outputs:\n  {sql}")
    print(duckdb.sql(sql))


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casparian",
        description="Run parser plugins over files and get typed tables with lineage.",
    )
    parser.add_argument("--home", default=None,
                        help="state directory (default: $CASPARIAN_HOME or ~/.casparian_flow)")
    parser.add_argument("--tape", default=None, metavar="FILE",
                        help="record this command on an NDJSON tape")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a plugin over files in this process (no sentinel)")
    p.add_argument("plugin", help="plugin file, or a name under <home>/plugins")
    p.add_argument("inputs", nargs="+", help="files, directories (recursive) or globs")
    p.add_argument("--sink", default=None, help="parquet://DIR, csv://DIR or duckdb://FILE")
    p.add_argument("--mode", default="append", choices=["append", "replace", "error"])
    p.add_argument("--parallel", type=int, default=None, help="plugin hosts (default: cores)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=cmd_run, tape_name="Run")

    p = sub.add_parser("demo", help="sentinel + workers run the sample plugin over sample files")
    p.add_argument("--files", type=int, default=12, help="sample files to generate")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument("--force", action="store_true", help="re-run files already materialized")
    p.set_defaults(handler=cmd_demo, tape_name="Demo")

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    """Subcommand groups that live in their own modules register themselves here."""
    from .bundle import add_commands as add_bundle_commands
    from .sentinel.cli import add_commands as add_sentinel_commands
    from .tape.cli import add_tape_commands

    add_sentinel_commands(sub)
    add_tape_commands(sub)
    add_bundle_commands(sub)


def _tape_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for key in ("plugin", "inputs", "sink", "mode", "status", "limit", "job_id", "workers"):
        if hasattr(args, key) and getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    return payload


#: Set by ``cf.start()`` for the sentinel and workers it launches: the kernel's pid.
OWNER_PID_ENV = "CASPARIAN_OWNER_PID"


def _watch_owner() -> None:
    """Stop this process (SIGTERM to itself: the graceful path) once the process named by
    ``$CASPARIAN_OWNER_PID`` — its parent, a notebook kernel — is gone. A kernel that is killed
    (nbval's teardown, "kernel died") runs no atexit handler; this is what still stops its
    sentinel and workers. The variable is removed so that grandchildren do not inherit it."""
    raw = os.environ.pop(OWNER_PID_ENV, "")
    if not raw.isdigit() or int(raw) != os.getppid():
        return  # not started by that process (or it is gone already): nothing to watch

    def watch(owner: int) -> None:
        while os.getppid() == owner:
            time.sleep(0.25)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30.0)  # the graceful stop hung: do not outlive the owner regardless
        os._exit(70)

    import threading

    threading.Thread(target=watch, args=(int(raw),), name="casparian-owner-watch",
                     daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _watch_owner()
    tape = None
    cmd_id: str | None = None
    corr = ""
    try:
        settings = _settings(args)
        if args.tape:
            from .tape import TapeWriter

            tape = TapeWriter(Path(args.tape), producer="cli", redact=settings.tape_redact)
            cmd_id, corr = tape.command(args.tape_name, _tape_payload(args))
        handler: Handler = args.handler
        code = handler(args, settings)
        if tape is not None and cmd_id is not None:
            response = getattr(args, "_tape_response", {})
            if code == 0:
                tape.succeeded(cmd_id, corr, response)
            else:
                tape.failed(cmd_id, corr, f"exit code {code}")
        return code
    except KeyboardInterrupt:
        print("casparian: interrupted", file=sys.stderr)
        if tape is not None and cmd_id is not None:
            tape.failed(cmd_id, corr, "interrupted")
        return 130
    except CasparianError as exc:
        if args.verbose:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"casparian: error: {message}", file=sys.stderr)
        if tape is not None and cmd_id is not None:
            tape.failed(cmd_id, corr, message)
        return 2
    finally:
        if tape is not None:
            tape.close()
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

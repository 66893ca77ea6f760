"""``casparian run`` (a plugin over files in this process, no sentinel) and ``casparian demo``
(a sentinel and workers run the sample plugin over sample files)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ..errors import CasparianError
from ..plan import stale_warning
from ..protocol import JobStatus
from ._app import EXIT_FAILED, EXIT_OK, App, recorded, sink_options

__all__ = ["demo", "run"]

#: The queue counts the demo's progress line shows.
_PROGRESS = [s.lower() for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED,
                                 JobStatus.FAILED)]


@click.command(short_help="Run a plugin over files in this process (no sentinel).")
@click.argument("plugin")
@click.argument("inputs", nargs=-1, required=True)
@sink_options
@click.option("--parallel", type=int, default=None, metavar="N",
              help="Plugin hosts to run at once (default: one per core).")
@click.option("--force", is_flag=True,
              help="Re-run files this plugin already materialized (also stale ones).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@recorded("Run")
def run(app: App, plugin: str, inputs: tuple[str, ...], sink: str | None, mode: str,
        parallel: int | None, force: bool, as_json: bool) -> int:
    """Run PLUGIN (a file, or a name under <home>/plugins) over INPUTS (files, directories,
    recursive, or globs) and promote its outputs. Exit 1 if any file failed."""
    from ..runner import run as run_plugin

    if parallel is not None and parallel < 1:
        raise CasparianError(f"--parallel must be at least 1, got {parallel}")
    with _sigterm_as_interrupt():
        result = run_plugin(plugin, list(inputs), sink=sink, mode=mode, parallel=parallel,
                            settings=app.settings, force=force)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result)
    for failed in result.failed:  # one line per failed file, naming it
        print(f"casparian: {failed.status.lower()}: {failed.input_file}: {failed.error}",
              file=sys.stderr)
    if result.stale and as_json:  # the text summary says it already
        print("casparian: warning: " + stale_warning(len(result.stale), result.plugin_name,
                                                     result.plugin_version, flag="--force"),
              file=sys.stderr)
    app.response = {"files": len(result.files), "failed": len(result.failed),
                    "skipped": len(result.skipped), "stale": len(result.stale),
                    "forced": force, "rows": sum(result.rows.values())}
    return EXIT_OK if result.ok else EXIT_FAILED


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


@click.command(short_help="Run the sample plugin over sample files on a sentinel + workers.")
@click.option("--files", type=int, default=12, show_default=True,
              help="Sample files to generate.")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers to start.")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Give up after this many seconds.")
@click.option("--force", is_flag=True, help="Re-run files already materialized.")
@recorded("Demo")
def demo(app: App, files: int, workers: int, timeout: float, force: bool) -> int:
    """Start a sentinel and workers, submit the sample plugin over generated sample files,
    show progress, print the summary and a DuckDB query over the outputs, stop cleanly."""
    import duckdb

    from ..demo import outputs_query, run_demo

    tty = sys.stderr.isatty()

    def progress(stats: dict[str, int]) -> None:  # queue counts, keyed by lower-case status
        counts = "  ".join(f"{name} {stats[name]}" for name in _PROGRESS)
        sys.stderr.write(f"\r  {counts} ")
        sys.stderr.flush()

    try:
        result = run_demo(app.settings, files=files, workers=workers, timeout=timeout,
                          force=force, say=print, progress=progress if tty else None)
    finally:
        if tty:
            sys.stderr.write("\n")
    done, skipped, bad = result.completed, result.skipped, result.failed
    print(f"\n{len(done)} of {len(result.jobs)} jobs completed in {result.duration_s:.1f}s: "
          f"{result.rows:,} rows, {result.quarantine_rows:,} quarantined"
          + (f"; {len(skipped)} skipped (already materialized — use --force to re-run)"
             if skipped else ""))
    for j in bad:
        print(f"  {j['status']} {Path(j['input_file']).name}: {j.get('error_message')}")
    print(f"  outputs: {result.output_dir}  (orders_*.parquet, orders_quarantine_*.parquet)")
    if result.sentinel_tape is not None:
        print(f"  sentinel tape: {result.sentinel_tape}")
    sql = outputs_query(result.output_dir)  # the outputs are queryable, lineage included
    print(f"\nDuckDB over the outputs:\n  {sql}")
    print(duckdb.sql(sql))
    app.response = {"jobs": len(result.jobs), "completed": len(done), "rows": result.rows}
    return EXIT_OK if not bad else EXIT_FAILED

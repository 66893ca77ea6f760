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
from ._app import (
    EXIT_FAILED,
    EXIT_OK,
    App,
    quarantine_from_options,
    quarantine_options,
    recorded,
    sink_options,
)

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
@quarantine_options
@click.option("--json", "as_json", is_flag=True,
              help="Print a machine-readable summary (failed jobs with their traceback).")
@click.option("--verbose", "-v", is_flag=True,
              help="Show each failed file's remote traceback and where its output is.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar (there is none anyway when stdout is not a terminal).")
@click.option("--force", is_flag=True,
              help="Re-run files this plugin already materialized (also stale ones).")
@recorded("Run")
def run(app: App, plugin: str, inputs: tuple[str, ...], sink: tuple[str, ...], mode: str,
        parallel: int | None, max_quarantine_pct: float | None,
        max_quarantine_rows: int | None, as_json: bool, verbose: bool, quiet: bool,
        force: bool) -> int:
    """Run PLUGIN (a file, or a name under <home>/plugins) over INPUTS (files, directories,
    recursive, or globs) and promote its outputs. Exit 1 if any file failed.

    Example: casparian run plugins/orders.py data/ --sink parquet://output
    --sink errors=csv://output/errors
    """
    from ..runner import run as run_plugin
    from ..sinks import routing_from_args

    if parallel is not None and parallel < 1:
        raise CasparianError(f"--parallel must be at least 1, got {parallel}")
    policy = quarantine_from_options(max_quarantine_pct, max_quarantine_rows)
    with _sigterm_as_interrupt():
        result = run_plugin(plugin, list(inputs), sink=routing_from_args(sink), mode=mode,
                            parallel=parallel, settings=app.settings, quarantine=policy,
                            progress=False if quiet else None, force=force)
    # The summary counts the failures; each one is named once, on stderr (-v: with its
    # remote traceback and where its output is; --json has both per job).
    print(json.dumps(result.to_dict(), indent=2, default=str) if as_json
          else result.format(failures=False))
    for failed in result.failed:
        print(f"casparian: {failed.status.lower()}: {failed.input_file}: {failed.error}",
              file=sys.stderr)
        if (verbose or app.verbose) and not as_json:
            print("\n".join(failed.details()), file=sys.stderr)
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
@click.option("--notebook", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Instead: run this notebook headless in a real kernel "
                                 "(e.g. notebooks/01-quickstart.ipynb) and print its summary.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --notebook: write the executed notebook here as HTML.")
@recorded("Demo")
def demo(app: App, files: int, workers: int, timeout: float, force: bool,
         notebook: Path | None, html: Path | None) -> int:
    """Start a sentinel and workers, submit the sample plugin over generated sample files,
    show progress, print the summary and a DuckDB query over the outputs, stop cleanly.
    With --notebook, run that notebook instead (what `make demo` does).

    Example: casparian demo --notebook notebooks/01-quickstart.ipynb --html out.html
    """
    if notebook is not None:
        from ..demo_notebook import run_notebook

        ran = run_notebook(notebook, html=html, timeout=timeout)
        print(ran.to_text())
        app.response = {"notebook": notebook.name, **{k: v for k, v in ran.summary.items()
                                                      if k in ("rows", "quarantined")}}
        return EXIT_OK
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

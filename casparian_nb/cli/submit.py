"""``casparian submit``: queue one job per input file on the running sentinel, optionally
waiting (``--wait``) for them to finish, with a progress bar on a terminal."""

from __future__ import annotations

import json
import sys
import time

import click

from .._inputs import expand_inputs
from ..config import Settings
from ..errors import ConfigError
from ..plan import stale_warning
from ..protocol import FINISHED_JOB_STATUSES, JobStatus
from ._app import (
    EXIT_FAILED,
    EXIT_OK,
    App,
    quarantine_from_options,
    quarantine_options,
    recorded,
    sink_options,
)
from .jobs import _client

__all__ = ["submit"]


@click.command(short_help="Queue one job per input file on the running sentinel.")
@click.argument("plugin")
@click.argument("inputs", nargs=-1, required=True)
@sink_options
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Per-job timeout (default: the home's job_timeout).")
@click.option("--force", is_flag=True, help="Run even if already materialized.")
@quarantine_options
@click.option("--resource", "resources", multiple=True, metavar="NAME=N",
              help="A resource each job needs on a Dask worker (repeatable), e.g. GPU=1; "
                   "the local executor ignores it.")
@click.option("--json", "as_json", is_flag=True, help="Print the sentinel's reply as JSON.")
@click.option("--wait", is_flag=True,
              help="Wait until every job is finished (a progress bar on a terminal); exit 1 "
                   "if any failed or was aborted.")
@click.option("--quiet", "-q", is_flag=True, help="With --wait: no progress bar.")
@recorded("Submit", creates_home=False)
def submit(app: App, plugin: str, inputs: tuple[str, ...], sink: tuple[str, ...], mode: str,
           priority: int, timeout: float | None, force: bool, max_quarantine_pct: float | None,
           max_quarantine_rows: int | None, resources: tuple[str, ...], as_json: bool,
           wait: bool, quiet: bool) -> int:
    """Queue one job per input file of INPUTS (files, directories, globs) on the running
    sentinel; print the job ids.

    Example: casparian submit plugins/orders.py data/ --sink parquet://output
    --sink orders=duckdb://db.duckdb --wait
    """
    from .. import plugins
    from ..sinks import SinkRouting, routing_from_args

    settings = app.settings
    policy = quarantine_from_options(max_quarantine_pct, max_quarantine_rows)
    needs = _resource_options(resources)
    plugin_path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    routing = routing_from_args(sink)
    if isinstance(routing, dict):
        # Sent as its canonical text, relative paths resolved here. The sentinel checks it
        # against the manifest too; checked here, a mismatch is a usage error (exit 2).
        parsed = SinkRouting.parse(routing)
        manifest = plugins.inspect_plugin(plugin_path).manifest
        if manifest:
            parsed.check_outputs(list(manifest))
        routing = str(parsed)
    files = [str(p) for p in expand_inputs(inputs)]
    client = _client(settings)
    # The sentinel hashes every input before it answers: allow for big submissions.
    client.timeout = max(client.timeout, 30.0 + len(files) / 2000)
    with client:
        reply = client.submit(plugin=str(plugin_path), inputs=files, sink=routing, mode=mode,
                              priority=priority, timeout=timeout, force=force,
                              submission_id=app.correlation_id, quarantine=policy,
                              resources=needs)
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
    if wait and reply["job_ids"]:
        return _wait_for(settings, [int(i) for i in reply["job_ids"]], quiet=quiet)
    return EXIT_OK


def _resource_options(values: tuple[str, ...]) -> dict[str, float] | None:
    """``("GPU=1", "MEMORY=8e9")`` -> ``{"GPU": 1.0, "MEMORY": 8e9}``; a usage error
    (exit 2) for anything else."""
    from .. import plugins

    out: dict[str, float] = {}
    for value in values:
        name, sep, amount = value.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{value!r}: expected NAME=N, e.g. GPU=1",
                                     param_hint="--resource")
    try:
        return plugins.check_resources(out) or None
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--resource") from None


def _wait_for(settings: Settings, ids: list[int], *, quiet: bool) -> int:
    """Poll the state DB (read-only) until every job of ``ids`` is finished, with a progress
    bar on a terminal; the final counts as one line on stderr; 1 if any did not complete."""
    from .._progress import ProgressCounts, terminal_progress
    from ..store import StateReader

    bar = terminal_progress("submit --wait", enabled=False if quiet else None)
    counts = ProgressCounts()
    done_as = {JobStatus.COMPLETED, JobStatus.SKIPPED}
    try:
        with StateReader.open(settings.state_db) as reader:
            while True:
                status = [str(r["status"]) for r in reader.queue_rows(ids=ids)]
                finished = [s for s in status if s in FINISHED_JOB_STATUSES]
                ok = sum(1 for s in finished if s in done_as)
                counts = ProgressCounts(ok, len(finished) - ok,
                                        sum(1 for s in status if s == JobStatus.RUNNING),
                                        sum(1 for s in status if s == JobStatus.QUEUED))
                if bar is not None:
                    bar.update(counts)
                if len(finished) == len(ids):
                    break
                time.sleep(0.2)  # a poll interval; the jobs' end is the deadline
    finally:
        if bar is not None:
            bar.finish(counts)
    if bar is None and not quiet:
        print(f"submit --wait: {counts.done} done, {counts.failed} failed of {len(ids)}",
              file=sys.stderr)
    return EXIT_OK if counts.failed == 0 else EXIT_FAILED

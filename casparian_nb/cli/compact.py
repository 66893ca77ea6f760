"""``casparian compact``: merge the small promoted Parquet files of a sink's outputs.

With a sentinel serving the home, the sentinel does it (each swap between two of its
promotions; it is the one writer of the state DB, F17, so it also repoints the jobs'
artifacts). Without one, this command does both itself: the state DB is then held by no one,
and this command takes its writer lock before it touches a file, so a sentinel cannot start
(and write beside it) before the artifacts are repointed.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..config import Settings
from ._app import EXIT_OK, App, recorded
from .jobs import _live_client

__all__ = ["compact"]


@click.command(short_help="Merge the small promoted Parquet files of a sink.")
@click.argument("sink", metavar="SINK_URI")
@click.option("--output", default=None, metavar="NAME",
              help="Only this output (default: every output in the sink).")
@click.option("--target-size", default="128MB", show_default=True, metavar="SIZE",
              help="Size of the merged files (e.g. 64MB, 1GB).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@recorded("Compact", creates_home=False)
def compact(app: App, sink: str, output: str | None, target_size: str, as_json: bool) -> int:
    """Merge the small promoted Parquet files of SINK_URI (parquet:// only) into files of
    about --target-size, atomically: queries through the notebook's catalog never see a row
    twice or miss one, lineage columns are kept, and the jobs' recorded artifacts name the
    merged files. Safe while jobs promote into the same sink.

    Example: casparian compact parquet://output --output orders --target-size 256MB
    """
    from ..sinks.compaction import CompactionResult, check_compactable

    settings = app.settings
    parsed, size = check_compactable(sink, output, target_size)  # one-line usage errors
    client = _live_client(settings)
    if client is not None:
        with client:
            reply = client.compact(str(parsed), output, target_size=size)
    else:
        reply = _compact_here(settings, str(parsed), output, size)
    outputs = reply.get("outputs") or []
    result = CompactionResult.from_reply(reply)
    before, after, rows = result.files_before, result.files_after, result.rows
    app.response = {"files_before": before, "files_after": after, "rows": rows}
    if as_json:
        print(json.dumps({**reply, "files_before": before, "files_after": after,
                          "rows": rows}, indent=2))
        return EXIT_OK
    if not outputs:
        print(f"nothing to compact in {reply['sink']}")
        return EXIT_OK
    print(f"compacted {reply['sink']}: {before} files -> {after}, {rows:,} rows moved, "
          f"{reply.get('jobs_repointed', 0)} job(s) repointed")
    for o in outputs:
        print(f"  {o['output']}: {o['files_before']} files -> {o['files_after']} "
              f"({_mb(o['bytes_before'])} -> {_mb(o['bytes_after'])})")
    return EXIT_OK


def _mb(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _compact_here(settings: Settings, sink: str, output: str | None,
                  size: int) -> dict[str, Any]:
    """No sentinel: compact in this process, then repoint the artifacts in the state DB."""
    from ..sinks import compact as compact_sink
    from ..store import StateStore

    # The writer lock first, before any file changes: a sentinel starting meanwhile then
    # waits for us (it fails in one line) instead of leaving artifacts we cannot repoint.
    store = StateStore.open(settings.state_db) if settings.state_db.exists() else None
    try:
        result = compact_sink(sink, output, target_size=size)
        repointed = store.repoint_artifacts(result.uri_moves()) if store is not None else 0
    finally:
        if store is not None:
            store.close()
    return {"sink": result.sink, "target_size": result.target_size,
            "jobs_repointed": repointed,
            "outputs": [{k: v for k, v in o.to_dict().items() if k != "merged"}
                        for o in result.outputs]}

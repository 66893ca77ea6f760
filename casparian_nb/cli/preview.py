"""``casparian preview PLUGIN FILE``: a dry run of a plugin on one file (no writes)."""

from __future__ import annotations

import json

import click

from ._app import EXIT_FAILED, EXIT_OK, App, recorded

__all__ = ["preview"]


@click.command(short_help="Dry-run a plugin on one file: first rows, schemas, no writes.")
@click.argument("plugin")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--rows", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows of each output to show.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Kill the plugin after this long (default: the home's job_timeout).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the preview as JSON (first rows as records).")
@recorded("Preview", creates_home=False)
def preview(app: App, plugin: str, file: str, rows: int, timeout: float | None,
            as_json: bool) -> int:
    """Run PLUGIN on FILE in a plugin host, as a job would run, and show each output's row
    count, schema and first rows, the rows a sink would quarantine, what the plugin printed,
    and its traceback if it raised. Nothing is written. Exit 1 if the plugin raised.

    Example: casparian preview plugins/orders.py data/jan.csv --rows 5
    """
    from ..previews import preview as run_preview

    result = run_preview(plugin, file, rows, timeout, settings=app.settings)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(_text(result, rows))
    app.response = {"status": "success" if result.ok else "failed",
                    "rows": result.row_counts}
    return EXIT_OK if result.ok else EXIT_FAILED


def _text(result: object, rows: int) -> str:
    import pandas as pd  # here, not above: every CLI command (the sentinel's too) imports this

    from ..previews import Preview

    assert isinstance(result, Preview)
    lines = [repr(result).split("\n  remote traceback:")[0]]
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        for d in result.details.values():
            lines += ["", f"== {d.name} (first {min(rows, d.rows)} of {d.rows:,} rows)",
                      str(d.schema), "", d.head.to_string(index=False, max_rows=rows)]
            if d.quarantine is not None and d.quarantine_rows:
                lines += ["", f"== {d.name}: {d.quarantine_rows:,} row(s) would be quarantined",
                          d.quarantine.to_string(index=False, max_rows=rows)]
    if result.log:
        lines += ["", "== output", result.log.rstrip("\n")]
    if result.error is not None:
        lines += ["", "== remote traceback",
                  (result.error.traceback or f"{result.error.ename}: {result.error.evalue}")
                  .rstrip("\n")]
    return "\n".join(lines)

"""``casparian support-bundle OUT.zip``: what a user attaches to a bug report
(:func:`casparian_nb.bundle.create_support_bundle`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._app import EXIT_OK, App, recorded

__all__ = ["support_bundle"]


@click.command("support-bundle",
               short_help="Zip tapes, scrubbed logs and a redacted config for a bug report.")
@click.argument("output", metavar="OUT.zip", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--no-tapes", is_flag=True, help="Leave the tapes out.")
@click.option("--no-logs", is_flag=True, help="Leave the logs out.")
@click.option("--no-config", is_flag=True, help="Leave the config summary out.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@recorded("SupportBundle")
def support_bundle(app: App, output: Path, no_tapes: bool, no_logs: bool, no_config: bool,
                   as_json: bool) -> int:
    """Write OUT.zip with the home's tapes, its logs (paths, home, user and host names
    scrubbed), a redacted config summary and a manifest. Never includes output data or
    plugin source.

    Example: casparian support-bundle bug-report.zip
    """
    from ..bundle import create_support_bundle

    result = create_support_bundle(app.settings, output, tapes=not no_tapes,
                                   logs=not no_logs, config=not no_config)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result)
    app.response = {"tape_count": result.tape_count, "log_count": result.log_count,
                    "size_bytes": result.size_bytes}
    return EXIT_OK

"""``python -m casparian_nb.sentinel [--home DIR]``: the sentinel of a home, in the foreground.

The same process as ``casparian --home DIR sentinel``, started without the CLI (a
supervisor's unit file, a container's entry point).
"""

from __future__ import annotations

import click

from ..config import load_settings
from .server import run_sentinel


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", metavar="DIR", default=None,
              help="State directory (default: $CASPARIAN_HOME or ~/.casparian_flow).")
def main(home: str | None) -> None:
    """Run the sentinel of the home in the foreground; Ctrl-C or SIGTERM stops it."""
    raise SystemExit(run_sentinel(load_settings(home)))


if __name__ == "__main__":
    main(prog_name="python -m casparian_nb.sentinel")

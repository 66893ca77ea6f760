"""``python -m casparian_nb.worker [--home DIR] [--slots N] [--worker-id ID]``: one worker of a
home's sentinel, in the foreground (the same process as ``casparian worker``)."""

from __future__ import annotations

import click

from ..config import load_settings
from .supervisor import run_worker


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", metavar="DIR", default=None,
              help="State directory (default: $CASPARIAN_HOME or ~/.casparian_flow).")
@click.option("--slots", type=int, default=None, metavar="N",
              help="Plugin hosts, i.e. jobs run at once (default: one per core).")
@click.option("--worker-id", default=None, metavar="ID",
              help="Name the worker reports to the sentinel (default: a random one).")
def main(home: str | None, slots: int | None, worker_id: str | None) -> None:
    """Run one worker in the foreground; it exits when its sentinel goes away."""
    raise SystemExit(run_worker(load_settings(home), slots=slots, worker_id=worker_id))


if __name__ == "__main__":
    main(prog_name="python -m casparian_nb.worker")

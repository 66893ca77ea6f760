"""The ``casparian`` root group, its global options and :func:`main`.

Global options go before the subcommand (``casparian --home H jobs``). Each command group
lives in its own module of this package and is only a thin layer over the objects the Python
API uses; :mod:`._app` holds what they share.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click
from click.exceptions import NoArgsIsHelpError

from .. import __version__
from .._proc import exit_with_owner
from ._app import EXIT_INTERRUPTED, EXIT_USAGE, App, stdout_gone
from .bundle import support_bundle
from .compact import compact
from .jobs import job, jobs
from .plugin import plugin
from .preview import preview
from .run import demo, run
from .sentinel import sentinel, start, stop, worker
from .submit import submit
from .tape import tape

__all__ = ["cli", "main"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("--home", metavar="DIR", default=None,
              help="State directory (default: $CASPARIAN_HOME or ~/.casparian_flow).")
@click.option("--tape", "tape_path", metavar="FILE", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Record this command on an NDJSON tape.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, "--version", prog_name="casparian",
                      message="%(prog)s %(version)s", help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, home: str | None, tape_path: Path | None, verbose: bool) -> None:
    """Run parser plugins over files and get typed tables with lineage."""
    app = ctx.ensure_object(App)
    app.home, app.tape_path, app.verbose = home, tape_path, verbose


for command in (run, preview, demo, sentinel, worker, start, stop, submit, jobs, job, plugin,
                compact, tape, support_bundle):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``casparian`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    # Started by a notebook kernel (cf.start)? Then stop when that kernel is killed.
    exit_with_owner()
    app = App()
    try:
        code = cli.main(args=list(sys.argv[1:] if argv is None else argv),
                        prog_name="casparian", standalone_mode=False, obj=app)
    except NoArgsIsHelpError as exc:  # `casparian`, `casparian job`: the help, exit 2
        exc.show()
        return EXIT_USAGE
    except click.UsageError as exc:  # a bad option or argument: one line, exit 2
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print(f"casparian: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except click.ClickException as exc:
        print(f"casparian: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except click.Abort:  # Ctrl-C outside a command's body (click turns it into Abort)
        print("casparian: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        app.close()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_gone()
    return int(code or 0)


def _one_line(exc: click.ClickException) -> str:
    return " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())

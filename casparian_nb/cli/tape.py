"""``casparian tape explain|validate FILE [--format text|json] [--json]``.

Exit codes: 0 success; 1 ``validate`` found the tape invalid; 2 the file cannot be read
(one line on stderr, no traceback). :func:`explain_command` and :func:`validate_command` are
the same commands for callers that pass their own streams.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO

import click

from ..errors import TapeError
from ._app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, App, recorded

__all__ = ["explain_command", "tape", "validate_command"]

FORMATS = ("text", "json")


def explain_command(path: str | os.PathLike[str], fmt: str = "text", *,
                    stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Print the explanation of a tape (:func:`casparian_nb.tape.explain_tape`); returns the
    exit code."""
    from ..tape import explain_tape

    out = stdout or sys.stdout
    try:
        explanation = explain_tape(path)
    except TapeError as exc:
        print(f"casparian tape explain: {exc}", file=stderr or sys.stderr)
        return EXIT_USAGE
    if fmt == "json":
        explanation.write_json(out)
    else:
        out.write(explanation.to_text())
    return EXIT_OK


def validate_command(path: str | os.PathLike[str], fmt: str = "text", *,
                     stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Print the validation report of a tape; 1 when invalid, 2 when unreadable."""
    from ..tape import validate_tape

    out = stdout or sys.stdout
    try:
        report = validate_tape(path)
    except TapeError as exc:
        print(f"casparian tape validate: {exc}", file=stderr or sys.stderr)
        return EXIT_USAGE
    if fmt == "json":
        out.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(report.to_text())
    return EXIT_OK if report.valid else EXIT_FAILED


@click.group(short_help="Explain or validate a recorded tape.")
def tape() -> None:
    """Explain or validate a tape recorded with --tape or by the sentinel."""


def _format_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Same as --format json.")(fn)
    fn = click.option("--format", "fmt", type=click.Choice(FORMATS), default="text",
                      show_default=True, help="Output format.")(fn)
    return click.argument("file", metavar="FILE")(fn)


@tape.command("explain")
@_format_options
@recorded("Tape", creates_home=False)
def explain(app: App, file: str, fmt: str, as_json: bool) -> int:
    """Summarise the commands, jobs, retries, errors and workers of tape FILE.

    Example: casparian tape explain home/tapes/sentinel-*.tape --format json
    """
    return explain_command(file, "json" if as_json else fmt)


@tape.command("validate")
@_format_options
@recorded("Tape", creates_home=False)
def validate(app: App, file: str, fmt: str, as_json: bool) -> int:
    """Check the envelope, sequence, ids and links of tape FILE; exit 1 if it is invalid.

    Example: casparian tape validate session.tape
    """
    return validate_command(file, "json" if as_json else fmt)

"""``casparian tape explain|validate FILE [--format text|json]`` for an argparse CLI.

The main ``casparian`` parser calls :func:`add_tape_commands` with its subparsers; each
subcommand stores ``func(args) -> int`` (also as ``handler(args, settings) -> int``) and
``tape_name = "Tape"`` in the namespace. ``python -m casparian_nb.tape``
runs the same commands on their own (:func:`main`).

Exit codes: 0 success; 1 ``validate`` found the tape invalid; 2 the file cannot be read
(one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from ..errors import TapeError

__all__ = ["add_tape_commands", "explain_command", "main", "validate_command"]

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def explain_command(
    path: str | os.PathLike[str],
    fmt: str = "text",
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Print the explanation of a tape; returns the exit code."""
    from ._split import explain_split

    out = stdout or sys.stdout
    try:
        # a big tape is explained on two cores (the same story; see tape/_split.py)
        explanation = explain_split(path, fmt)
    except TapeError as exc:
        print(f"casparian tape explain: {exc}", file=stderr or sys.stderr)
        return EXIT_UNREADABLE
    if fmt == "json":
        explanation.write_json(out)
    else:
        out.write(explanation.to_text())
    return EXIT_OK


def validate_command(
    path: str | os.PathLike[str],
    fmt: str = "text",
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Print the validation report of a tape; 1 when invalid, 2 when unreadable."""
    from .validate import validate_tape

    out = stdout or sys.stdout
    try:
        report = validate_tape(path)
    except TapeError as exc:
        print(f"casparian tape validate: {exc}", file=stderr or sys.stderr)
        return EXIT_UNREADABLE
    if fmt == "json":
        out.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(report.to_text())
    return EXIT_OK if report.valid else EXIT_INVALID


def _run_explain(args: argparse.Namespace, settings: Any = None) -> int:
    return explain_command(args.file, args.format)


def _run_validate(args: argparse.Namespace, settings: Any = None) -> int:
    return validate_command(args.file, args.format)


def _add_leaves(sub: Any) -> None:
    for name, func, text in (
        ("explain", _run_explain, "summarise commands, jobs, retries, errors and workers"),
        ("validate", _run_validate, "check envelope, sequence, ids and links; exit 1 if invalid"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("file", metavar="FILE", help="the .tape file")
        p.add_argument("--format", choices=("text", "json"), default="text",
                       help="output format (default: text)")
        # ``func(args)`` for plain argparse callers; ``handler(args, settings)`` and
        # ``tape_name`` for the casparian CLI (records the command on its --tape).
        p.set_defaults(func=func, handler=func, tape_name="Tape")


def add_tape_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tape explain`` and ``tape validate`` on an argparse subparsers object.

    Each leaf parser sets ``func`` (``args.func(args) -> exit code``). Returns the ``tape``
    parser so the caller can add options of its own.
    """
    tape: argparse.ArgumentParser = subparsers.add_parser(
        "tape", help="explain or validate a recorded tape",
        description="Inspect NDJSON tapes recorded with --tape or by the sentinel.",
    )
    sub = tape.add_subparsers(dest="tape_command", metavar="{explain,validate}")
    sub.required = True
    _add_leaves(sub)
    return tape


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m casparian_nb.tape {explain,validate} FILE [--format text|json]``."""
    parser = argparse.ArgumentParser(prog="python -m casparian_nb.tape")
    sub = parser.add_subparsers(dest="command", metavar="{explain,validate}")
    sub.required = True
    _add_leaves(sub)  # standalone, "tape" is implied
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `... | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return EXIT_OK

"""The ``casparian`` command tree: help everywhere, ``--version``, one-line usage errors, the
``--tape`` recording of a failing command. (The commands themselves run end to end in
tests/integration.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import casparian_nb
from casparian_nb.cli import cli, main
from casparian_nb.cli._app import SINK_MODES
from casparian_nb.sinks import SinkMode
from casparian_nb.tape import read_tape
from casparian_nb.tape.envelope import EventName

ROOT = Path(__file__).resolve().parents[2]


def _commands(group: click.Group, path: str = "casparian") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


ALL = [("casparian", cli), *_commands(cli)]


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p for p, _ in ALL])
def test_every_command_and_option_has_help(path: str, command: click.Command) -> None:
    assert command.help, f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{path} {param.opts[0]} has no help text"


def test_the_tape_names_are_the_envelopes_cli_commands(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every command records under a name ``tape validate`` accepts from the CLI."""
    leaves = [c for _, c in ALL if not isinstance(c, click.Group)]
    assert len(leaves) == 13  # with `job retry`
    recording = tmp_path / "c.tape"
    # `job show` of a home without a state DB: runs, fails in one line, and is recorded.
    code = main(["--home", str(tmp_path / "h"), "--tape", str(recording), "job", "show", "7"])
    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"casparian: error: no state DB in {tmp_path / 'h'} yet; submit jobs first"
    events = list(read_tape(recording))
    assert [e.name for e in events[1:3]] == ["Job", EventName.COMMAND_FAILED]
    assert events[1].payload == {"job_id": 7}
    assert events[2].payload["error"].startswith("no state DB in")
    assert main(["tape", "validate", str(recording)]) == 0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"casparian {casparian_nb.__version__}\n"


@pytest.mark.parametrize("argv", [
    ["--bogus", "jobs"],
    ["jobs", "--limit", "many"],
    ["jobs", "--status", "EXPLODED"],
    ["run", "plugin.py"],
    ["run", "plugin.py", "x.csv", "--mode", "overwrite"],
    ["job", "show", "seven"],
    ["frobnicate"],
])
def test_a_usage_mistake_is_one_line_exit_2(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("casparian: error: ") and "--help" in line, line
    assert captured.out == ""


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Commands:" in capsys.readouterr().err


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(tmp_path), "-v",
                           "jobs"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "no state DB" in done.stderr


def test_mode_choices_are_the_sink_modes() -> None:
    assert SINK_MODES == tuple(m.value for m in SinkMode)

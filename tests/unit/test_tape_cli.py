"""``casparian tape explain|validate``: formats, exit codes and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casparian_nb.cli import main
from casparian_nb.cli.tape import explain_command, validate_command
from casparian_nb.tape import read_tape

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tapes" / "golden_original.tape"
EXPLAINED = json.loads((ROOT / "tapes" / "golden_original.explain.json").read_text())


def test_explain_and_validate_in_both_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tape", "explain", str(GOLDEN)]) == 0
    assert capsys.readouterr().out.startswith("=== Tape Summary ===")
    assert main(["tape", "explain", str(GOLDEN), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPLAINED
    assert main(["tape", "validate", str(GOLDEN), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    assert main(["tape", "validate", str(GOLDEN)]) == 0
    assert "Result: VALID ✓" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["explain", "validate"])
def test_json_flag_is_format_json(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tape", command, str(GOLDEN), "--json"]) == 0
    short = capsys.readouterr().out
    assert main(["tape", command, str(GOLDEN), "--format", "json"]) == 0
    assert short == capsys.readouterr().out and json.loads(short)


def test_the_command_is_recorded_as_tape(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "cli.tape"
    assert main(["--home", str(tmp_path / "home"), "--tape", str(recording),
                 "tape", "validate", str(GOLDEN)]) == 0
    events = list(read_tape(recording))
    assert [e.name for e in events][1:3] == ["Tape", "CommandSucceeded"]


def test_tape_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tape"]) == 2
    assert "explain" in capsys.readouterr().err  # the group's help, listing its commands
    assert main(["tape", "explain", str(GOLDEN), "--format", "xml"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("casparian: error: ") and "'xml'" in line


def test_invalid_tape_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tape"
    bad.write_text(GOLDEN.read_text().replace('"seq":4', '"seq":9'))
    out = io.StringIO()
    assert validate_command(bad, "text", stdout=out) == 1
    assert "Line 5: Sequence gap (3 -> 9)" in out.getvalue()
    assert "Result: INVALID ✗" in out.getvalue()
    assert explain_command(bad, "json", stdout=io.StringIO()) == 0  # explain is lenient


@pytest.mark.parametrize("command", [explain_command, validate_command])
def test_unreadable_file_exits_2_with_one_line(tmp_path: Path, command) -> None:  # type: ignore[no-untyped-def]
    err = io.StringIO()
    assert command(tmp_path / "missing.tape", "text", stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().count("\n") == 1 and "cannot read tape" in err.getvalue()


def test_python_dash_m(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CASPARIAN_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "casparian_nb", "tape", "explain", str(GOLDEN),
                          "--format", "json"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == EXPLAINED
    missing = subprocess.run([sys.executable, "-m", "casparian_nb", "tape", "validate",
                              str(tmp_path / "x.tape")], capture_output=True, text=True,
                             env=env, timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1

"""tape explain/validate commands: argparse wiring, formats and exit codes."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casparian_nb.tape import add_tape_commands, explain_command, validate_command
from casparian_nb.tape.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tapes" / "golden_original.tape"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser(prog="casparian")
    add_tape_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.command == "tape"
    sys_stdout, sys_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = args.func(args)
    finally:
        sys.stdout, sys.stderr = sys_stdout, sys_stderr
    return code, out.getvalue(), err.getvalue()


def test_registered_on_a_host_parser() -> None:
    code, out, _ = run("tape", "explain", str(GOLDEN))
    assert code == 0 and out.startswith("=== Tape Summary ===")
    code, out, _ = run("tape", "explain", str(GOLDEN), "--format", "json")
    assert code == 0 and json.loads(out)["commands"] == ["Scan"]
    code, out, _ = run("tape", "validate", str(GOLDEN), "--format", "json")
    assert code == 0 and json.loads(out)["valid"] is True
    code, out, _ = run("tape", "validate", str(GOLDEN))
    assert code == 0 and "Result: VALID ✓" in out


def test_casparian_cli_conventions() -> None:
    """The main CLI calls ``args.handler(args, settings)`` and records ``args.tape_name``."""
    parser = argparse.ArgumentParser(prog="casparian")
    add_tape_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tape", "validate", str(GOLDEN), "--format", "json"])
    assert args.tape_name == "Tape"
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert args.handler(args, None) == 0
    finally:
        sys.stdout = sys_stdout
    assert json.loads(out.getvalue())["valid"] is True


def test_tape_requires_a_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="casparian")
    add_tape_commands(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["tape"])


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


def test_main_standalone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(GOLDEN)]) == 0
    assert "Result: VALID" in capsys.readouterr().out


def test_python_dash_m(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "casparian_nb.tape", "explain", str(GOLDEN),
                          "--format", "json"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    expected = json.loads((ROOT / "tapes" / "golden_original.explain.json").read_text())
    assert json.loads(out.stdout) == expected
    missing = subprocess.run([sys.executable, "-m", "casparian_nb.tape", "validate",
                              str(tmp_path / "x.tape")], capture_output=True, text=True,
                             env=env, timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

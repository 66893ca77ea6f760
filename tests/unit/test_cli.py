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
    if not isinstance(command, click.Group):
        assert f"Example: {path.split(' ')[0]}" in command.help, f"{path} shows no example"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{path} {param.opts[0]} has no help text"


def test_the_tape_names_are_the_envelopes_cli_commands(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every command records under a name ``tape validate`` accepts from the CLI."""
    leaves = [c for _, c in ALL if not isinstance(c, click.Group)]
    assert len(leaves) == 21  # + plugin schema, compact (issue 18), job logs, preview, job retry
    recording = tmp_path / "c.tape"
    # `job show` of a home without a state DB: runs, fails in one line (a failure: exit 1),
    # is recorded, and creates no home.
    code = main(["--home", str(tmp_path / "h"), "--tape", str(recording), "job", "show", "7"])
    assert code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"casparian: error: job 7 does not exist: no jobs in {tmp_path / 'h'} yet"
    assert not (tmp_path / "h").exists()
    events = list(read_tape(recording))
    assert [e.name for e in events[1:3]] == ["Job", EventName.COMMAND_FAILED]
    assert events[1].payload == {"job_id": 7}
    assert events[2].payload["error"].startswith("job 7 does not exist")
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
                           "job", "show", "3"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "job 3 does not exist" in done.stderr


def _run(tmp_path: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", *argv], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)})


def test_looking_creates_nothing(tmp_path: Path) -> None:
    """Read-only commands, and those that only ask a sentinel, leave no home behind."""
    home = tmp_path / ".casparian_flow"
    for argv, code in ([["jobs"], 0], [["jobs", "--json"], 0], [["job", "show", "1"], 1],
                       [["job", "cancel", "1"], 1], [["stop"], 1], [["--help"], 0],
                       [["tape", "explain", "none.tape"], 2], [["submit", "p.py", "x"], 2]):
        done = _run(tmp_path, *argv)
        assert done.returncode == code, (argv, done.stderr)
        assert not home.exists(), argv
        assert "Traceback" not in done.stderr
    assert _run(tmp_path, "jobs", "--json").stdout.strip() == "[]"


def test_no_sentinel_is_one_line_exit_1_naming_the_home(tmp_path: Path) -> None:
    """With no sentinel the state DB is not ours to write: nothing changes, and the error
    says where it looked and what to do."""
    for argv in (["job", "cancel", "1"], ["stop"]):
        done = _run(tmp_path, "--home", str(tmp_path / "h"), *argv)
        assert done.returncode == 1
        assert done.stderr == (f"casparian: error: no sentinel is running for {tmp_path / 'h'}; "
                               "start one with `casparian start`\n")


def test_missing_plugin_file_is_named(tmp_path: Path) -> None:
    done = _run(tmp_path, "--home", str(tmp_path / "h"), "run", "parsers/orders.py", "x.csv")
    assert done.returncode == 2
    assert done.stderr.startswith("casparian: error: plugin file not found: parsers/orders.py")
    assert done.stderr.count("\n") == 1


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``casparian jobs --json | head -c 1``: no BrokenPipeError traceback, status 141 like a
    Unix tool killed by SIGPIPE."""
    from casparian_nb.config import load_settings
    from casparian_nb.store import NewJob, StateStore

    settings = load_settings(tmp_path / "h")
    store = StateStore.open(settings.state_db)
    try:  # enough jobs that the JSON is larger than a pipe's buffer
        store.insert_jobs([NewJob("orders", f"/data/in/file_{i:05d}.csv") for i in range(3000)])
    finally:
        store.close()
    script = (f"{sys.executable} -m casparian_nb --home {tmp_path / 'h'} jobs --json "
              "--limit 3000 | head -c 1 >/dev/null; echo ${PIPESTATUS[0]} >&2")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.stderr == "141\n", done.stderr


def test_mode_choices_are_the_sink_modes() -> None:
    assert SINK_MODES == tuple(m.value for m in SinkMode)


def test_a_missing_notebook_extra_names_it(tmp_path: Path) -> None:
    """Without anywidget, the widgets say which extra to install, in one line."""
    code = ("import sys; sys.modules['anywidget'] = None\n"
            "import casparian_nb as cf\n"
            "try:\n    cf.timeline\nexcept ImportError as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.stdout == ("MissingExtraError casparian_nb.timeline needs anywidget, which is "
                           "not installed: pip install 'casparian_nb[notebook]'\n"), done.stderr


def test_jobs_tells_dispatched_from_running(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A job a worker took ahead of a free slot is DISPATCHED until its plugin starts."""
    import json

    from casparian_nb.config import load_settings
    from casparian_nb.store import NewJob, StateStore

    settings = load_settings(tmp_path / "h")
    store = StateStore.open(settings.state_db)
    try:
        a, b, _c = store.insert_jobs([NewJob("orders", f"/d/{i}.csv") for i in range(3)])
        assert store.claim_job(a, "w1") and store.claim_job(b, "w1")
        assert store.mark_started(b, 4242)
    finally:
        store.close()
    home = str(tmp_path / "h")
    assert main(["--home", home, "jobs", "--json"]) == 0
    shown = {j["id"]: j["status"] for j in json.loads(capsys.readouterr().out)}
    assert shown == {a: "DISPATCHED", b: "RUNNING", _c: "QUEUED"}
    for status, ids in (("dispatched", [a]), ("running", [b]), ("queued", [_c])):
        assert main(["--home", home, "jobs", "--status", status, "--json"]) == 0
        assert [j["id"] for j in json.loads(capsys.readouterr().out)] == ids
    assert main(["--home", home, "job", "show", str(a)]) == 0
    assert "status: DISPATCHED" in capsys.readouterr().out

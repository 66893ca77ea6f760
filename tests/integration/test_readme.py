"""Every command in the README runs, so the README cannot rot.

Each fenced ``console`` block is one scenario: its ``$ `` lines run in order in bash, in a
scratch directory that holds what the README's own text puts there (``plugins/orders.py`` is
the README's plugin block; ``data/`` holds sample order files), with ``CASPARIAN_HOME`` set to a
scratch home. A line ending in ``&`` starts a background process (``casparian start``); the
scenario waits until its sentinel serves, and stops whatever is left at the end. A line must
exit 0 unless it is marked ``# fails``.

Commands a test cannot run literally are checked by the closest real action, listed in
:data:`SUBSTITUTES` (installing from PyPI → resolving the local project with the same extra;
``jupyter lab FILE`` → a real server that serves that file; ``make X`` → the target exists).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casparian_nb.demo import write_sample_data

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(kind: str) -> list[str]:
    """The README's fenced blocks of ``kind``, in order."""
    return [body for lang, body in _FENCE.findall(README.read_text()) if lang == kind]


def commands(block: str) -> list[str]:
    """The ``$ `` lines of a console block (continuation lines joined)."""
    out: list[str] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append(line[2:])
        elif out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + line
    return out


def _words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _is(command: str, *prefix: str) -> bool:
    words = _words(command)
    return words[: len(prefix)] == list(prefix)


SUBSTITUTES = {
    "pip install": "resolve the local project with the same extras (no index: offline)",
    "jupyter lab": "start a real server on that file and fetch it",
    "make": "the target exists (make -n)",
}


def _substitute(command: str, scratch: Path, env: dict[str, str]) -> None:
    words = _words(command)
    if words[:2] == ["pip", "install"]:
        spec = words[2]
        extras = spec[spec.index("["):] if "[" in spec else ""
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
             "--no-build-isolation", "--quiet", f"{ROOT}{extras}"],
            capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, (command, done.stderr)
    elif words[:2] == ["jupyter", "lab"]:
        _serve_lab(words[2], env)
    elif words[0] == "make":
        done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    else:  # pragma: no cover - the table above is the list
        raise AssertionError(f"no substitute for {command!r}")


def _serve_lab(target: str, env: dict[str, str]) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # CI runs as root, which jupyter refuses without --allow-root (a user's machine does not).
    root = ["--allow-root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=readme", "--ServerApp.open_browser=False", *root, target],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        # Given a file, jupyter lab serves its folder and opens it: ask for it there.
        name = Path(target).name
        url = f"http://127.0.0.1:{port}/api/contents/{name}?content=0&token=readme"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    assert reply.status == 200
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    scratch = tmp_path / "work"
    (scratch / "plugins").mkdir(parents=True)
    [plugin] = [b for b in blocks("python") if b.startswith("# plugins/orders.py")]
    (scratch / "plugins" / "orders.py").write_text(plugin)
    write_sample_data(scratch / "data", files=4, rows=50)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASPARIAN_")}
    env.update(CASPARIAN_HOME=str(tmp_path / "home"), PATH=f"{BIN}:{env.get('PATH', '')}",
               PYTHONPATH=str(ROOT))
    return scratch, env


def _wait_serving(env: dict[str, str], scratch: Path) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run(["casparian", "jobs"], cwd=scratch, env=env, capture_output=True,
                         timeout=60).returncode != 0 or not (
            Path(env["CASPARIAN_HOME"]) / "sentinel.json").exists():
        assert time.monotonic() < deadline, "the sentinel started by the README never served"
        time.sleep(0.2)


def _run_line(command: str, scratch: Path, env: dict[str, str],
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """One README line in bash, in its own session: a line that hangs (a foreground
    ``casparian start``) is killed with everything it started, not left running."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=scratch, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"README line did not finish in {timeout:g} s: {command}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


CONSOLE = blocks("console")


@pytest.mark.parametrize("block", CONSOLE, ids=[f"block{i}" for i in range(len(CONSOLE))])
def test_readme_console_block_runs(block: str, tmp_path: Path) -> None:
    scratch, env = _scratch(tmp_path)
    background: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands(block):
            if any(_is(command, *p.split()) for p in SUBSTITUTES):
                _substitute(command, scratch, env)
                continue
            expect_failure = command.rstrip().endswith("# fails")
            if _words(command)[-1:] == ["&"] or command.split("#")[0].rstrip().endswith("&"):
                line = command.split("#")[0].rstrip()[:-1]
                background.append(subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=scratch,
                                                   env=env, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL,
                                                   start_new_session=True))
                _wait_serving(env, scratch)
                continue
            done = _run_line(command, scratch, env)
            if expect_failure:
                assert done.returncode != 0, command
                assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
            else:
                assert done.returncode == 0, (command, done.stdout, done.stderr)
    finally:
        if background:
            subprocess.run(["casparian", "stop"], cwd=scratch, env=env, capture_output=True,
                           timeout=60)
        for proc in background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_the_readme_has_commands_to_run() -> None:
    assert len(CONSOLE) >= 3 and sum(len(commands(b)) for b in CONSOLE) >= 10

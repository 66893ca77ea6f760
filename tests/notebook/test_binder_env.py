"""What Binder would do: a fresh environment from ``binder/`` alone, then every notebook in it.

The repository's files (tracked and not ignored: what a clone has) are copied to a temporary
folder; ``python -m venv`` makes an empty environment; ``pip install -r
binder/requirements.txt`` installs the pinned dependencies (with their dependencies — Binder
does not pass ``--no-deps``); ``binder/postBuild`` runs from the copy's root, as repo2docker runs
it. Then each notebook executes top to bottom with nbclient in that environment — the copy's
package, the fresh venv's kernel — under :mod:`tests.notebook.reaper`, so nothing may outlive
it. Nothing from the dev venv is used except to drive the test (pip's download cache is
shared, which only saves time).

Measured here: ~25-45 s to build (venv 4 s, pip 18-30 s from the local index, postBuild 3 s)
and ~20 s to run the four notebooks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.notebook.reaper import run_reaped

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"

#: The driver the fresh venv runs: execute one notebook in its own folder, stop at the first
#: unexpected error (cells tagged raises-exception may raise), then report where the kernel's
#: Python and casparian_nb came from.
DRIVER = r"""
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

path = Path(sys.argv[1])
nb = nbformat.read(path, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell(
    "import sys, casparian_nb\nprint(sys.prefix)\nprint(casparian_nb.__file__)"))
started = time.monotonic()
NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=False,
               resources={"metadata": {"path": str(path.parent)}}).execute()
errors = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
          and any(o.output_type == "error" for o in c.outputs)
          and "raises-exception" not in c.metadata.get("tags", [])]
where = nb.cells[-1].outputs[0]["text"].split()
print("DRIVER " + json.dumps({"seconds": round(time.monotonic() - started, 1),
                              "errors": errors, "prefix": where[0], "package": where[1]}))
"""


def _copy_repository(dest: Path) -> None:
    """The files a clone has: tracked, plus untracked ones not ignored (work in progress)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASPARIAN_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> float:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return time.monotonic() - started


@pytest.mark.timeout(1200)
def test_notebooks_run_in_a_fresh_binder_environment(tmp_path: Path) -> None:
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    _copy_repository(repo)
    assert (repo / "binder" / "requirements.txt").is_file() and (repo / "binder" / "postBuild").is_file()
    env = _env(venv)
    base_python = getattr(sys, "_base_executable", sys.executable)
    timings = {"venv": _run([base_python, "-m", "venv", str(venv)], repo, env, 120)}
    python = str(venv / "bin" / "python")
    timings["pip install -r binder/requirements.txt"] = _run(
        # --no-compile only skips writing .pyc files up front (~40% of the time here).
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "-r",
         "binder/requirements.txt"], repo, env, 900)
    timings["postBuild"] = _run(["bash", "binder/postBuild"], repo, env, 300)
    # The fresh environment is consistent and is not the dev venv.
    _run([python, "-m", "pip", "check"], repo, env, 120)
    (tmp_path / "driver.py").write_text(DRIVER, encoding="utf-8")

    for nb_path in sorted((repo / "notebooks").glob("*.ipynb")):
        report, output = run_reaped([python, str(tmp_path / "driver.py"), str(nb_path)],
                                    cwd=nb_path.parent, env=env, grace=15.0, timeout=600.0)
        lines = [ln for ln in output.splitlines() if ln.startswith("DRIVER ")]
        assert report["returncode"] == 0 and lines, f"{nb_path.name}:\n{output[-5000:]}"
        result = json.loads(lines[-1][len("DRIVER "):])
        assert result["errors"] == [], f"{nb_path.name}: unexpected errors in cells {result['errors']}"
        assert Path(result["prefix"]) == venv, result
        assert Path(result["package"]).is_relative_to(repo), result
        assert report["left_at_exit"] == [], f"{nb_path.name} left processes: {report}"
        timings[nb_path.stem] = result["seconds"]
    print("binder build and run, seconds:", {k: round(v, 1) for k, v in timings.items()})

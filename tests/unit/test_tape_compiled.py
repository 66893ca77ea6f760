"""The tape reducer compiled by mypyc at install (``setup.py``) and its plain-Python source
give the same results, and a compiled copy is used only while it matches the source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from casparian_nb.tape import reducer

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "casparian_nb"
BUILT = sorted((PACKAGE / "tape").glob("_reducer_c*.so"))

needs_build = pytest.mark.skipif(not BUILT, reason="no compiled reducer here (pure install)")


@pytest.mark.skipif(os.environ.get("CASPARIAN_PURE_PYTHON") is not None,
                    reason="installed as plain Python on purpose")
@pytest.mark.skipif(shutil.which("cc") is None or sys.platform != "linux",
                    reason="no C compiler: the package installs as plain Python")
def test_the_reducer_is_compiled_where_there_is_a_compiler() -> None:
    """``pip install`` (``make test``/``make demo``) builds it; a silent fallback to plain
    Python would cost explain a quarter of its speed."""
    assert BUILT, "no casparian_nb/tape/_reducer_c*.so: `pip install -v -e .` says why"


def _compiled_in(root: Path, env: dict[str, str] | None = None) -> str:
    """``COMPILED`` and the JobReducer class as a fresh interpreter under ``root`` sees them."""
    code = ("from casparian_nb.tape import reducer as r; "
            "print(r.COMPILED, r.JobReducer.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root),
                                                     **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_build
def test_the_compiled_reducer_is_used_when_it_was_built_from_this_source() -> None:
    assert reducer.COMPILED, "the compiled reducer is stale: reinstall (pip install -e .)"
    assert reducer.JobReducer.__module__ == "casparian_nb.tape._reducer_c"
    assert _compiled_in(ROOT) == "True casparian_nb.tape._reducer_c"
    assert _compiled_in(ROOT, {"CASPARIAN_PURE_PYTHON": "1"}) == (
        "False casparian_nb.tape.reducer")


@needs_build
def test_an_edited_reducer_is_not_shadowed_by_a_stale_build(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "casparian_nb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert _compiled_in(tmp_path) == "True casparian_nb.tape._reducer_c"
    source = tmp_path / "casparian_nb" / "tape" / "reducer.py"
    source.write_text(source.read_text() + "\n# an edit after the build\n")
    assert _compiled_in(tmp_path) == "False casparian_nb.tape.reducer"


@needs_build
def test_the_tape_tests_pass_on_the_plain_python_reducer_too() -> None:
    """Every explain/replay/split test, again in a process that uses the pure source."""
    files = [f"tests/unit/{name}" for name in (
        "test_tape_explain.py", "test_tape_replay.py", "test_golden_tapes.py",
        "test_tape_split.py")]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CASPARIAN_PURE_PYTHON": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout

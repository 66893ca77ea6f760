"""The example notebooks in ``notebooks/`` run top to bottom under nbval and leave nothing behind.

``test_notebooks_run_under_nbval`` is what CI runs for them::

    pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/notebook/nbval_sanitize.cfg notebooks/

in a subprocess under :mod:`tests.notebook.reaper`, so a sentinel, worker or plugin host that
outlives its notebook is found even after nbval has killed the kernel (its teardown is a
SIGKILL: no atexit handler runs). Every cell runs; the cells tagged ``nbval-check-output``
must reproduce their stored outputs (counts, statuses, sums; ids, paths and timings are
sanitized). The committed notebooks must carry no saved widget state.

The other tests check that a notebook that fails half-way still leaves no process running,
both when the kernel is shut down (``atexit``) and when it is killed (the processes watch
their kernel and stop themselves).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

from tests.conftest import running
from tests.notebook.reaper import run_reaped

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
EXPECTED = ["01-quickstart", "02-cancel-and-retry", "03-tape-timeline", "04-lineage"]
CHECK = "nbval-check-output"
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")
#: Each notebook runs top to bottom in under a minute here (kernel start included).
NOTEBOOK_BUDGET_S = 60.0


def nbval_command(*paths: Path, junit: Path | None = None, python: str = sys.executable,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """The nbval run of ``paths`` (the command `make test` effectively runs for notebooks)."""
    cmd = [python, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", str(SANITIZE), "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", *extra, *map(str, paths)]
    if junit is not None:
        cmd[4:4] = [f"--junitxml={junit}"]
    return cmd


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _junit_times(path: Path) -> dict[str, float]:
    """Seconds per notebook (setup, every cell and teardown) from a JUnit XML report."""
    per_file: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("classname", "") + "." + case.get("name", "")
        stem = next((s for s in EXPECTED if s in name), name)
        per_file[stem] += float(case.get("time", "0"))
    return dict(per_file)


# -- the committed notebooks -------------------------------------------------------------------

def test_the_four_example_notebooks_exist() -> None:
    assert [p.stem for p in _notebooks()] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_has_no_widget_state(name: str) -> None:
    raw = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
    assert "widgets" not in raw["metadata"], "strip it: python scripts/strip_notebook_state.py"
    for i, cell in enumerate(raw["cells"]):
        for out in cell.get("outputs", []):
            mimes = set(out.get("data", {}))
            assert not mimes & set(WIDGET_MIMES), f"cell {i} keeps a widget view output"
        assert "execution" not in cell.get("metadata", {}), f"cell {i} keeps execution timing"


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_checks_what_matters(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if CHECK in c.metadata.get("tags", [])]
    assert len(checked) >= 3, "tag the cells whose outputs matter"
    for cell in checked:  # a checked cell needs a stored reference, or it checks nothing
        assert cell.execution_count is not None and cell.outputs, cell.source[:80]
    for cell in code:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            assert "raises-exception" in cell.metadata.get("tags", []), cell.source[:80]
    # Each notebook starts its own sentinel and its last code cell stops it.
    text = "\n".join(c.source for c in code)
    assert "cf.start(" in text
    assert "ctl.stop()" in code[-1].source


# -- running them ------------------------------------------------------------------------------

def test_notebooks_run_under_nbval(tmp_path: Path) -> None:
    junit = tmp_path / "nbval.xml"
    report, output = run_reaped(nbval_command(NOTEBOOKS, junit=junit), cwd=ROOT, grace=15.0,
                                timeout=600.0)
    tail = output[-6000:]
    assert report["returncode"] == 0, f"nbval failed:\n{tail}"
    n_cells = sum(1 for p in _notebooks()
                  for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    assert f"{n_cells} passed" in output, f"expected every code cell to run:\n{tail}"
    assert report["left_at_exit"] == [], f"processes outlived their notebooks: {report}"
    times = _junit_times(junit)
    assert set(times) == set(EXPECTED), times
    slow = {k: round(v, 1) for k, v in times.items() if v > NOTEBOOK_BUDGET_S}
    assert not slow, f"over {NOTEBOOK_BUDGET_S:.0f}s: {slow}"
    print("seconds per notebook:", {k: round(v, 1) for k, v in sorted(times.items())})


def _failing_notebook(path: Path, home: Path) -> Path:
    """Starts a sentinel with a running job, then fails before any stop."""
    cells = [
        "import casparian_nb as cf\n"
        "from pathlib import Path\n"
        f"ctl = cf.start(workers=2, home={str(home)!r})\n"
        "Path('slow.py').write_text('import time\\nname = \"slow\"\\nversion = \"1\"\\n'\n"
        "                          'def parse(path):\\n    time.sleep(120)\\n')\n"
        "Path('in.txt').write_text('x')\n"
        "ids = ctl.submit('slow.py', 'in.txt')\n"
        "import time\n"
        "deadline = time.monotonic() + 30\n"
        "while ctl.stats()['running'] == 0 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(ctl.stats())\n"
        "import json, psutil\n"
        "hosts = [c.pid for w in ctl.cluster.workers for c in psutil.Process(w.pid).children()]\n"
        "_ = Path('pids.json').write_text(json.dumps({'cluster': ctl.cluster.pids, 'hosts': hosts}))",
        "raise RuntimeError('this notebook fails half-way')",
        "ctl.stop()  # never reached by nbclient (it stops at the first error)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_notebook_killed_half_way_leaves_nothing_running(tmp_path: Path) -> None:
    """nbval kills the kernel (SIGKILL to its process group) once the notebook is done; the
    sentinel and workers live in their own session, so they must notice on their own."""
    nb = _failing_notebook(tmp_path / "fails.ipynb", tmp_path / "home")
    # Run only the first two cells: drop the stop cell so nothing stops the cluster in-kernel.
    loaded = nbformat.read(nb, as_version=4)
    loaded.cells = loaded.cells[:2]
    nbformat.write(loaded, nb)
    report, output = run_reaped(nbval_command(nb), cwd=tmp_path, grace=20.0, timeout=300.0)
    assert report["returncode"] != 0 and "this notebook fails half-way" in output, output[-3000:]
    # The kernel died with the cluster up and a job running. Its sentinel, 2 workers and their
    # plugin hosts (re-parented to the reaper) stopped by themselves: nothing was left to kill.
    pids = json.loads((tmp_path / "pids.json").read_text())
    assert len(pids["cluster"]) == 3 and pids["hosts"], pids
    assert report["killed"] == [], f"still running after the kernel was killed: {report}"
    alive = [p for p in pids["cluster"] + pids["hosts"] if running(p)]
    assert alive == [], alive


def test_a_notebook_failing_under_nbclient_leaves_nothing_running(tmp_path: Path) -> None:
    """nbclient stops at the first error and shuts the kernel down gracefully: atexit."""
    nb = _failing_notebook(tmp_path / "fails.ipynb", tmp_path / "home")
    script = (
        "import sys, nbformat\n"
        "from nbclient import NotebookClient\n"
        "from nbclient.exceptions import CellExecutionError\n"
        f"nb = nbformat.read({str(nb)!r}, as_version=4)\n"
        "client = NotebookClient(nb, timeout=120, kernel_name='python3',\n"
        f"                        resources={{'metadata': {{'path': {str(tmp_path)!r}}}}})\n"
        "try:\n"
        "    client.execute()\n"
        "except CellExecutionError as exc:\n"
        "    print('FAILED AS EXPECTED:', str(exc).splitlines()[-1])\n"
        "print(nb.cells[0].outputs[-1].get('text', ''))\n"
    )
    report, output = run_reaped([sys.executable, "-c", script], cwd=tmp_path, grace=20.0,
                                timeout=300.0)
    assert "FAILED AS EXPECTED" in output and "running 1" in output, output[-3000:]
    pids = json.loads((tmp_path / "pids.json").read_text())
    assert len(pids["cluster"]) == 3 and pids["hosts"], pids
    # Stopped by the kernel's atexit before the kernel exited: gone when the client returned.
    assert report["left_at_exit"] == [], f"processes outlived the kernel: {report}"

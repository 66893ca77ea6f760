"""``make demo``'s command: the quickstart notebook headless in a real kernel, its summary
printed, the executed notebook written as HTML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_quickstart_notebook_and_writes_html(tmp_path: Path) -> None:
    home, html = tmp_path / "demo_home", tmp_path / "demo_home" / "quickstart.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASPARIAN_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "casparian_nb", "--home", str(home), "demo",
         "--notebook", str(ROOT / "notebooks" / "01-quickstart.ipynb"), "--html", str(html)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "01-quickstart.ipynb: executed in" in out
    assert "jobs: 12 (12 completed, 0 failed, 0 aborted)" in out
    assert "rows: 2,970   quarantined: 30" in out
    assert "DuckDB: select currency" in out and "EUR" in out and "USD" in out
    assert "Traceback" not in done.stderr
    page = html.read_text()
    # the executed notebook: its tables (stats, SQL results) are in the page
    assert "<table" in page and "orders" in page and "EUR" in page


def test_a_failing_cell_is_one_line_naming_it(tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("1 / 0")])
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    done = subprocess.run(
        [sys.executable, "-m", "casparian_nb", "--home", str(tmp_path / "h"), "demo",
         "--notebook", str(path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr == "casparian: error: bad.ipynb: cell 1: ZeroDivisionError: division by zero\n"

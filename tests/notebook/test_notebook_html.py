"""Saved example notebooks show what happened without a kernel: ``jupyter nbconvert --to html``
of each contains tables, the timeline as an SVG, the charts and the final counts of its
progress bars where the widgets were (the committed outputs keep each widget's static
snapshot; ``scripts/strip_notebook_state.py`` removes only the widget views and state)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "scripts"))

from strip_notebook_state import WIDGET_VIEW, strip  # noqa: E402

#: What each notebook's HTML must contain (where its widgets and charts were).
EXPECTED = {
    "01-quickstart": ["<table", 'class="cf-chart"', "cf-progress-snapshot"],
    "02-cancel-and-retry": ["<table", "cf-progress-snapshot"],  # (its queue: helper i14b)
    "03-tape-timeline": ['class="cf-timeline-snapshot"', 'class="cf-chart"',
                         "cf-progress-snapshot"],
    "04-lineage": ["<table", "cf-progress-snapshot"],
}


@pytest.fixture(scope="module")
def html() -> dict[str, str]:
    out = {}
    for name in EXPECTED:
        done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html",
                               "--stdout", str(NOTEBOOKS / f"{name}.ipynb")],
                              capture_output=True, text=True, timeout=300, check=True)
        out[name] = done.stdout
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exported_html_shows_the_widgets_and_charts(html: dict[str, str], name: str) -> None:
    page = html[name]
    for needle in EXPECTED[name]:
        assert needle in page, f"{name}: no {needle} in the exported HTML"


def test_both_timelines_of_notebook_03_are_svg_pictures(html: dict[str, str]) -> None:
    page = html["03-tape-timeline"]
    # the live session's (followed), the saved session tape's and the golden tape's
    assert page.count('class="cf-timeline-snapshot"') == 3
    snapshot = page.split('class="cf-timeline-snapshot"')[1]
    assert "<svg" in snapshot.split("</svg>")[0] and "worker slots" in snapshot


def test_strip_keeps_the_static_snapshot_and_drops_the_widget_view() -> None:
    out = nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/html": "<div>12 done</div>", "text/plain": "wait: 12 done"})
    bare = nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "def"}, "text/plain": "QueueWidget(...)"})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[out, bare])])
    nb.metadata["widgets"] = {"state": {}}
    strip(nb)
    assert "widgets" not in nb.metadata
    assert [o["data"] for o in nb.cells[0].outputs] == [
        {"text/html": "<div>12 done</div>", "text/plain": "wait: 12 done"}]

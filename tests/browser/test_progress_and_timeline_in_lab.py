"""The progress bar and a 100,000-job timeline in JupyterLab, driven by headless Chromium.

What only a browser shows: the bar moves while ``ctl.submit(..., wait=True)`` blocks and ends
with the final counts; a 100,000-job tape opens as density per worker slot and, zoomed in,
comes back from the kernel as exact bars. Screenshots go to ``docs/images/`` (the README's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.timeline_scale import generate_tape
from tests.browser.lab import requires_chromium, write_notebook
from tests.conftest import FIXTURE_PLUGIN

pytestmark = [pytest.mark.browser, requires_chromium]

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

_PROGRESS_JS = """() => {
  const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .cf-progress');
  if (!p) return null;
  return {text: p.querySelector('.cf-p-text').textContent,
          finished: p.classList.contains('cf-p-finished')};
}"""


def test_progress_bar_moves_and_ends_with_the_final_counts(open_notebook: Any,
                                                           tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(10):
        (data / f"slow_{i}.txt").write_text(f"mode=slow sleep=0.6\nfile {i}\n")
    nb = open_notebook(write_notebook(tmp_path / "progress.ipynb", [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=2, home={str(tmp_path / 'home')!r})",
        f"ids = ctl.submit({str(FIXTURE_PLUGIN)!r}, {str(data)!r}, wait=True)",
        "ctl.stop()"]), "browser-progress")
    nb.run_cell(0, timeout=120)
    nb.select_cell(1)
    nb.page.keyboard.press("Control+Enter")
    nb.wait_for(".cf-progress .cf-p-bar", "the progress bar", timeout=60)
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = nb.page.evaluate(_PROGRESS_JS)
        if state and (not seen or seen[-1] != state["text"]):
            seen.append(state["text"])
        if state and state["finished"]:
            break
        time.sleep(0.05)
    done_counts = {int(t.split(" done")[0]) for t in seen}
    assert len(done_counts) >= 3, f"the bar did not move: {seen}"  # it updated in place
    assert seen[-1].startswith("10 done · 0 failed · 0 running · 0 queued of 10"), seen
    assert nb.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .cf-progress").count() == 1
    nb.wait_cells_done(60, [1])
    IMAGES.mkdir(parents=True, exist_ok=True)
    nb.page.locator(".cf-progress").screenshot(path=str(IMAGES / "progress_bar.png"))
    nb.run_cell(2, timeout=60)


def test_timeline_of_a_100k_job_tape_opens_and_zooms(open_notebook: Any,
                                                      tmp_path: Path) -> None:
    tape = tmp_path / "big.tape"
    generate_tape(tape, 100_000)
    nb = open_notebook(write_notebook(tmp_path / "big.ipynb", [
        f"import casparian_nb as cf\ntl = cf.timeline({str(tape)!r})\ntl"]), "browser-timeline-100k")
    begin = time.monotonic()
    nb.select_cell(0)
    nb.page.keyboard.press("Control+Enter")
    nb.wait_for(".cf-timeline[data-mode='bins'] rect.cf-t-density", "the binned timeline",
                timeout=120)
    opened_s = time.monotonic() - begin
    lanes = nb.page.locator(".cf-timeline .cf-t-lane").count()
    assert lanes == 64, lanes  # 16 workers x 4 slots
    assert nb.page.locator(".cf-timeline rect.cf-t-bar").count() == 0  # no bar sent binned
    timeline = nb.page.locator(".cf-timeline")
    IMAGES.mkdir(parents=True, exist_ok=True)
    timeline.screenshot(path=str(IMAGES / "timeline_100k.png"))
    for _ in range(8):  # each "+" halves the view; the kernel answers with its detail
        if nb.page.locator(".cf-timeline[data-mode='bars']").count():
            break
        nb.page.locator(".cf-timeline button", has_text="+").click()
        nb.page.wait_for_timeout(400)
    nb.wait_for(".cf-timeline[data-mode='bars'] rect.cf-t-bar", "exact bars after zooming in",
                timeout=60)
    view = nb.page.locator(".cf-timeline").get_attribute("data-view") or ""
    t0, t1 = map(float, view.split(","))
    bars = nb.page.locator(".cf-timeline rect.cf-t-bar").count()
    assert 0 < bars <= 4000 and t1 - t0 < 200, (bars, view)
    timeline.screenshot(path=str(IMAGES / "timeline_100k_zoomed.png"))
    print(f"100k-job timeline: first render in the browser {opened_s:.1f} s after run; "
          f"zoomed to {t0:.0f}-{t1:.0f} s: {bars} bars")

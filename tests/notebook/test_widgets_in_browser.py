"""The widgets rendered by JupyterLab in headless Chromium (Debian's; never downloaded).

One notebook: a real sentinel with a job to cancel and the queue widget, then the golden
tape's timeline. Checks what only a browser can: the ES modules load, draw, and their clicks
reach the kernel and come back. Skipped without /usr/bin/chromium outside CI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tests.browser.lab import CHROMIUM, FLAGS, ROOT, Lab, requires_chromium
from tests.conftest import make_inputs, running, wait_until

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 serving ``tmp_path``; stopped by PID (kernels with it)."""
    state = tmp_path / "lab-state"
    state.mkdir()
    server = Lab.start(tmp_path, state)
    try:
        yield server
    finally:
        server.stop()


def test_queue_and_timeline_render_and_respond(lab: Lab, tmp_path: Path,
                                               fixture_plugin_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    make_inputs(data, 2)
    make_inputs(data, 1, mode="slow sleep=60", prefix="slow")
    home = tmp_path / "home"
    cells = [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=2, home={str(home)!r})\n"
        f"ids = ctl.submit({str(fixture_plugin_path)!r}, {str(data)!r})\n"
        "ctl.queue()",
        f"cf.timeline({str(ROOT / 'tapes' / 'golden_session.tape')!r})",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "widgets.ipynb")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{lab.url}/lab/tree/widgets.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            time.sleep(1)  # let the kernel connect before running
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Escape")
            page.keyboard.press("Shift+Enter")
            page.keyboard.press("Shift+Enter")

            # queue: rows render; the slow job gets a cancel button; the click reaches the
            # sentinel and the row ends ABORTED
            cancel = page.locator("tr.cf-row-RUNNING button.cf-q-cancel")
            cancel.first.wait_for(timeout=60_000)
            page.wait_for_selector("tr.cf-row-COMPLETED >> nth=1", timeout=60_000)
            cancel.first.click()
            page.wait_for_selector("tr.cf-row-ABORTED", timeout=30_000)
            assert page.locator(".cf-q-chip.cf-st-ABORTED").inner_text() == "aborted 1"
            page.screenshot(path=str(tmp_path / "queue.png"))

            # timeline: five bars, markers; a marker click fetches its payload; the
            # scrubber replays the queue
            page.wait_for_selector(".cf-timeline svg rect.cf-t-bar", timeout=30_000)
            assert page.locator(".cf-timeline rect.cf-t-bar").count() == 5
            page.locator(".cf-t-marker.cf-t-m-error").first.click()
            page.wait_for_selector(".cf-t-detail pre:has-text('JobFailed')", timeout=10_000)
            page.locator(".cf-t-slider").fill("600")  # t = 4.8 s of 8 s
            page.wait_for_selector(".cf-t-state:has-text('running 1')", timeout=10_000)
            page.locator(".cf-timeline").screenshot(path=str(tmp_path / "timeline.png"))
        finally:
            browser.close()
    # Shutting the server down shuts the kernel down, and that stops the kernel's cluster.
    sentinel = json.loads((home / "sentinel.json").read_text())["pid"]
    lab.stop()
    wait_until(lambda: not running(sentinel),
               20, message=f"sentinel {sentinel} to stop with the kernel")

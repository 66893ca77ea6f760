"""Fixtures of the browser tests: one JupyterLab and one Chromium per module, a page per test.

The lab serves a fresh root folder with a fresh workspace and settings folder; its kernels get
``CASPARIAN_HOME`` and ``TMPDIR`` inside the test's temporary folders (nothing touches
``~/.casparian_flow``). Everything is stopped by PID: the lab (SIGTERM; it shuts its kernels
down, and a kernel's shutdown stops the sentinel it started), the kernels of each test's
notebooks when the test ends (REST), and Chromium (playwright).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.browser.lab import Lab, NotebookPage, launch_chromium


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Workspaces, settings, log, TMPDIR and the default CASPARIAN_HOME of the lab."""
    return tmp_path_factory.mktemp("lab-state")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_state: Path) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab-root")
    (lab_state / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASPARIAN_", "CF_FIXTURE_"))}
    env.update(CASPARIAN_HOME=str(lab_state / "casparian-home"), TMPDIR=str(lab_state / "tmp"),
               PYTHONUNBUFFERED="1")
    server = Lab.start(root, lab_state, env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(lab: Lab, browser: Any) -> Iterator[Callable[..., NotebookPage]]:
    """``open_notebook(source, shot)``: copy ``source`` into the lab's root (a folder per
    test) with its stored outputs and execution counts cleared, open it in a fresh page and
    wait for its kernel. The kernels it started are shut down when the test ends.

    Clearing matters: the example notebooks are stored executed (nbval compares against
    those outputs), and a stored ``[15]`` prompt or ``stopped: True`` would let a test pass
    before, or without, the cell running in this lab."""
    assert lab.root is not None
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    opened: list[str] = []

    def open_(source: Path, shot: str) -> NotebookPage:
        folder = lab.root / shot
        folder.mkdir(exist_ok=True)
        notebook = nbformat.read(source, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nbformat.write(notebook, folder / source.name)
        rel = f"{shot}/{source.name}"
        opened.append(rel)
        return NotebookPage(context.new_page(), lab, rel, shot).open()

    try:
        yield open_
    finally:
        context.close()
        for rel in opened:
            lab.shutdown_kernels_of(rel)

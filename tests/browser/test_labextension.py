"""The JupyterLab extension in a real JupyterLab + Chromium: listed by `jupyter labextension
list`, a `.tape` opened from the file browser draws its lanes and summary (a damaged one its
errors), and the Casparian sidebar lists a sentinel started by the test and cancels its
running job (the plugin process is gone). Screenshots go to ``docs/images/``.

The lab loads the extension built in this checkout (``casparian_nb/labextension``, made by
``pip install -e .``) through a JUPYTER_PATH folder, and the server extension through the same
``jupyter_server_config.d`` file the wheel installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from casparian_nb.client import ControlClient
from casparian_nb.config import load_settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.notebook.timeline import TimelineWidget
from casparian_nb.store import StateReader
from tests.browser.lab import Lab, launch_chromium, requires_chromium, write_notebook
from tests.conftest import (
    FIXTURE_PLUGIN,
    ROOT,
    assert_no_leaks,
    descendants,
    make_inputs,
    wait_until,
)

pytestmark = [pytest.mark.browser, requires_chromium]

BUILT = ROOT / "casparian_nb" / "labextension"
IMAGES = ROOT / "docs" / "images"
GOLDEN = ROOT / "tapes" / "golden_session.tape"


@pytest.fixture(scope="module")
def ext_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a lab with this checkout's lab and server extensions."""
    if not (BUILT / "package.json").is_file():
        raise AssertionError(f"{BUILT} is not built: run `pip install -e .` (make install)")
    base = tmp_path_factory.mktemp("jupyter")
    (base / "data" / "labextensions").mkdir(parents=True)
    (base / "data" / "labextensions" / "casparian-nb").symlink_to(BUILT)
    (base / "config" / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(ROOT / "extensions" / "jupyter-config" / "casparian_nb.json",
                base / "config" / "jupyter_server_config.d")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASPARIAN_", "CF_FIXTURE_"))}
    env.update(JUPYTER_PATH=str(base / "data"), JUPYTER_CONFIG_PATH=str(base / "config"),
               CASPARIAN_HOME=str(base / "default-home"), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def ext_lab(tmp_path_factory: pytest.TempPathFactory, ext_env: dict[str, str]) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("ext-root")
    state = tmp_path_factory.mktemp("ext-state")
    server = Lab.start(root, state, ext_env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(ext_lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        try:
            context = chromium.new_context(viewport={"width": 1400, "height": 900})
            yield context.new_page()
        finally:
            chromium.close()


def shot(page: Any, name: str, target: Any = None) -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    (target or page).screenshot(path=str(path))
    return path


def test_jupyter_labextension_list_shows_casparian_nb_enabled(ext_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                          capture_output=True, text=True, env=ext_env, timeout=120)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "casparian-nb" in ln]
    assert lines, done.stdout + done.stderr
    assert "enabled" in lines[0] and "OK" in lines[0], lines[0]


def open_in_file_browser(page: Any, lab: Lab, folder: str, name: str) -> None:
    page.goto(f"{lab.url}/lab/workspaces/{folder}/tree/{folder}?reset")
    item = page.locator(f'.jp-DirListing-item[title^="Name: {name}"]')
    item.wait_for(timeout=60_000)
    item.dblclick()


def test_a_tape_opened_from_the_file_browser_shows_lanes_and_the_summary(
        ext_lab: Lab, page: Any) -> None:
    assert ext_lab.root is not None
    (ext_lab.root / "tapes").mkdir()
    shutil.copy(GOLDEN, ext_lab.root / "tapes" / "golden.tape")
    open_in_file_browser(page, ext_lab, "tapes", "golden.tape")
    page.wait_for_selector(".cf-tape-view .cf-timeline .cf-t-bar", timeout=60_000)
    widget = TimelineWidget(GOLDEN)  # the same payload as the notebook widget draws
    labels = page.locator(".cf-tape-view .cf-t-lane-label").all_inner_texts()
    lanes = [lane["worker"] if not lane["slot"] else f"{lane['worker']} #{lane['slot'] + 1}"
             for lane in widget.data["lanes"]]
    assert labels == ["session", "queue depth", *lanes]
    assert page.locator(".cf-tape-view .cf-t-bar").count() == len(widget.data["bars"]["job"])
    assert page.locator(".cf-tape-view .cf-t-marker").count() == len(widget.data["markers"])
    summary = page.locator(".cf-tape-summary").inner_text()
    assert "jobs: completed 2, failed 1, aborted 1" in summary
    assert "queue at this moment (4 jobs)" in page.locator(".cf-t-state").inner_text()
    # the scrubber asks the server to replay: back one event changes the state panel's seq
    where = page.locator(".cf-t-where").inner_text()
    page.locator(".cf-tape-view button[title='previous event']").click()
    page.wait_for_function("(w) => document.querySelector('.cf-t-where').textContent !== w",
                           arg=where, timeout=30_000)
    shot(page, "lab_tape_viewer")
    # "Open With → Editor" still shows the text
    page.locator('.jp-DirListing-item[title^="Name: golden.tape"]').click(button="right")
    page.locator('.lm-Menu-item:has-text("Open With")').hover()
    page.locator('.lm-Menu-item:has-text("Editor")').click()
    page.wait_for_selector('.jp-FileEditor .cm-content:has-text("tape_started")', timeout=30_000)


def test_a_damaged_tape_opens_with_its_errors(ext_lab: Lab, page: Any) -> None:
    assert ext_lab.root is not None
    (ext_lab.root / "damaged").mkdir()
    lines = GOLDEN.read_text().splitlines(keepends=True)
    (ext_lab.root / "damaged" / "broken.tape").write_text(
        "".join(lines[:5]) + "{not json\n" + "".join(lines[5:]))
    open_in_file_browser(page, ext_lab, "damaged", "broken.tape")
    errors = page.locator(".cf-tape-view .cf-tape-heading")  # not a blank page
    errors.wait_for(timeout=60_000)
    assert errors.inner_text().startswith("damaged tape:")
    assert "line 6" in page.locator(".cf-tape-view ul.cf-tape-errors").inner_text()
    shot(page, "lab_tape_damaged")


def _running_host(home: Path, job_id: int) -> int | None:
    with StateReader.open(load_settings(home).state_db) as r:
        job = r.get_job(job_id)
    return job["host_pid"] if job and job["status"] == "RUNNING" and job["host_pid"] else None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_sidebar_lists_a_running_sentinel_cancels_and_retries_its_job(
        ext_lab: Lab, page: Any, tmp_path: Path) -> None:
    assert ext_lab.root is not None
    home = ext_lab.root / "project" / "home"
    home.mkdir(parents=True, mode=0o700)
    cluster = LocalCluster(load_settings(home, heartbeat_interval=0.2), workers=1, slots=1)
    tracked: list[int] = []
    try:
        info = cluster.start()
        tracked += cluster.pids
        plugin = tmp_path / "fixture_plugin.py"
        shutil.copy(FIXTURE_PLUGIN, plugin)
        (hang,) = make_inputs(tmp_path / "in", 1, mode="hang")  # runs until killed
        with ControlClient(info) as ctl:
            job_id = ctl.submit(plugin, [str(hang)], sink=f"parquet://{tmp_path / 'out'}")[
                "job_ids"][0]
        host = wait_until(lambda: _running_host(home, job_id), 30, 0.05, "the plugin host")
        tracked.append(host)

        # a notebook to insert the attach cell into (not run: no kernel needed for that)
        write_notebook(ext_lab.root / "project" / "attach.ipynb", ["1 + 1"])
        page.goto(f"{ext_lab.url}/lab/workspaces/sidebar/tree/project/attach.ipynb?reset")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
        page.locator('.lm-TabBar-tab[data-id="casparian-sidebar"]').click(timeout=60_000)
        card = page.locator(f'.cf-sb-sentinel[data-home="{home}"]')
        card.wait_for(timeout=30_000)
        assert f"running (pid {info.pid}) · 1 worker(s)" in card.inner_text()
        card.click()
        row = page.locator(f'tr.cf-sb-job[data-job="{job_id}"]')
        page.wait_for_selector(f'tr.cf-sb-job[data-job="{job_id}"][data-status="running"] '
                               "button.cf-sb-cancel", timeout=30_000)
        shot(page, "lab_sidebar", page.locator("#casparian-sidebar"))
        row.locator("button.cf-sb-cancel").click()
        wait_until(lambda: _gone(host), 20, 0.05, f"plugin host {host} to be killed")
        page.wait_for_selector(f'tr.cf-sb-job[data-job="{job_id}"][data-status="aborted"]',
                               timeout=30_000)
        assert row.locator(".cf-sb-status").inner_text() == "aborted"
        assert row.locator("button.cf-sb-cancel").count() == 0
        with StateReader.open(load_settings(home).state_db) as r:
            assert r.get_job(job_id)["status"] == "ABORTED"  # type: ignore[index]
        shot(page, "lab_sidebar_cancelled", page.locator("#casparian-sidebar"))
        # retry from the sidebar: a new attempt runs (its plugin host starts again)
        row.locator("button.cf-sb-retry").click()
        page.wait_for_selector(f'tr.cf-sb-job[data-job="{job_id}"][data-status="running"] '
                               "button.cf-sb-cancel", timeout=30_000)
        again = wait_until(lambda: _running_host(home, job_id), 30, 0.05, "attempt 2's host")
        tracked.append(again)
        with StateReader.open(load_settings(home).state_db) as r:
            assert r.get_job(job_id)["attempt"] == 2  # type: ignore[index]
        row.locator("button.cf-sb-cancel").click()
        wait_until(lambda: _gone(again), 20, 0.05, f"plugin host {again} to be killed")

        page.locator("#casparian-sidebar button.cf-sb-attach").click()
        page.wait_for_selector(f'.jp-NotebookPanel .jp-Cell .cm-content:has-text('
                               f'"ctl = cf.attach(home=\\"{home}\\")")', timeout=30_000)
        page.locator("#casparian-sidebar button.cf-sb-open-tape").click()
        page.wait_for_selector(".cf-tape-view .cf-timeline .cf-t-bar", timeout=60_000)
        assert "sentinel-" in page.locator(".cf-tape-view .cf-t-title").inner_text()
    finally:
        tracked += descendants(cluster.pids)
        cluster.stop()
        assert_no_leaks(tracked)


def test_the_palette_has_the_casparian_commands(ext_lab: Lab, page: Any) -> None:
    page.goto(f"{ext_lab.url}/lab/workspaces/palette?reset")
    page.wait_for_selector(".jp-DirListing-content", timeout=60_000)
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type("Casparian")
    items = page.locator(".lm-CommandPalette-item:visible .lm-CommandPalette-itemLabel")
    items.first.wait_for(timeout=30_000)
    assert sorted(items.all_inner_texts()) == [
        "Casparian: open tape", "Casparian: start sentinel in this folder"]


def test_start_sentinel_in_this_folder_from_the_palette(ext_lab: Lab, page: Any) -> None:
    assert ext_lab.root is not None
    folder = ext_lab.root / "started_here"
    folder.mkdir()
    page.goto(f"{ext_lab.url}/lab/workspaces/start/tree/started_here?reset")
    page.wait_for_selector('.jp-FileBrowser .jp-BreadCrumbs:has-text("started_here")',
                           timeout=60_000)
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type("start sentinel in this folder")
    page.keyboard.press("Enter")
    pids: list[int] = []
    try:
        card = page.locator(f'.cf-sb-sentinel[data-home="{folder.resolve()}"]')
        card.wait_for(timeout=90_000)
        page.wait_for_function(
            "(h) => document.querySelector(`.cf-sb-sentinel[data-home=\"${h}\"]`)"
            "?.textContent.includes('2 worker(s)')", arg=str(folder.resolve()), timeout=30_000)
        with ControlClient.from_home(folder) as ctl:
            pids = [ctl.ping()["pid"]]
            pids += descendants(pids)
        assert (folder / "sentinel.json").is_file()
    finally:
        if (folder / "sentinel.json").is_file():
            pids += descendants(pids[:1])
            with ControlClient.from_home(folder) as ctl:
                ctl.shutdown()
        assert_no_leaks(pids, timeout=20)

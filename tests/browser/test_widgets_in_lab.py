"""The queue and timeline widgets in JupyterLab, driven by headless Chromium.

What only a browser shows: the ES modules load and draw; a click in the table reaches the
sentinel and its answer comes back; the timeline's colours, hover and scrubber work; and the
widgets still render after a kernel restart + ``cf.attach()``. Every test checks the DOM
against an independent source (the state DB, the tape reader) and saves a screenshot under
``screenshots/``.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from casparian_nb.client import ControlClient, read_connection_file
from casparian_nb.sinks.uri import job_hash16
from casparian_nb.store import StateReader
from casparian_nb.tape import ReplayIndex, explain_tape
from tests.browser.lab import NotebookPage, requires_chromium, write_notebook
from tests.conftest import FIXTURE_PLUGIN, assert_no_leaks, descendants, make_inputs

pytestmark = [pytest.mark.browser, requires_chromium]

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tapes" / "golden_session.tape"
QUEUE_CSS = ROOT / "casparian_nb" / "notebook" / "static" / "queue.css"


def _db_statuses(home: Path) -> dict[int, str]:
    with StateReader.open(home / "state.sqlite") as db:
        return {int(j["id"]): j["status"] for j in db.list_jobs(limit=10_000)}


def _cluster_pids(home: Path) -> list[int]:
    """The sentinel serving ``home``, its workers and their plugin hosts (by PID)."""
    info = read_connection_file(home)
    with ControlClient(info, timeout=5.0) as client:
        workers = [int(w["pid"]) for w in client.list_workers()]
    pids = [info.pid, *workers]
    return pids + descendants(pids)


def _is_sentinel_of(pid: int, home: Path) -> bool:
    """``pid`` is alive and is ``casparian_nb --home <home> sentinel`` (not a reused PID)."""
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "sentinel" in cmd and str(home) in cmd


def _status_colours() -> dict[str, str]:
    """Status -> ``rgb(r, g, b)`` from the queue widget's palette (both widgets share it)."""
    found = dict(re.findall(r"--cf-([A-Z]+):\s*#([0-9a-f]{6})", QUEUE_CSS.read_text()))
    return {s.lower(): "rgb({}, {}, {})".format(*(int(h[i:i + 2], 16) for i in (0, 2, 4)))
            for s, h in found.items()}


# -- scenario 2: cancel from the browser -------------------------------------------------------

# Records every status label the slow job's row shows, however briefly (a MutationObserver
# sees each table redraw, even two inside one task).
_WATCH_ROW_JS = """(id) => {
  window.__cfLabels = [];
  const tbody = document.querySelector('.cf-queue tbody');
  const seen = () => {
    const tr = tbody.querySelector(`tr[data-id="${id}"]`);
    const label = tr?.querySelector('.cf-q-badge')?.textContent;
    if (label && window.__cfLabels[window.__cfLabels.length - 1] !== label) window.__cfLabels.push(label);
  };
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.dataset?.id === String(id)) {
        const label = n.querySelector('.cf-q-badge')?.textContent;
        if (label && window.__cfLabels[window.__cfLabels.length - 1] !== label) window.__cfLabels.push(label);
      }
    }
  }).observe(tbody, {childList: true, subtree: true});
  seen();
}"""


def test_cancel_a_running_job_from_its_row(open_notebook: Any, tmp_path: Path) -> None:
    """Click a running job's cancel button: the row shows "aborting…", then ABORTED; the
    state DB says ABORTED and the job left no output file (the job beside it did)."""
    home, data = tmp_path / "home", tmp_path / "data"
    [normal] = make_inputs(data, 1)
    [slow] = make_inputs(data, 1, mode="slow sleep=60", prefix="slow")
    nb = open_notebook(write_notebook(tmp_path / "cancel.ipynb", [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=2, home={str(home)!r})\n"
        f"ids = ctl.submit({str(FIXTURE_PLUGIN)!r}, {str(data)!r})\n"
        "ctl.queue()",
    ]), "browser-cancel")
    nb.run_all()
    pids = _cluster_pids(home)

    rows = nb.poll(nb.queue_rows, lambda rows: bool(rows) and len(rows) == 2 and {
        (r["input"], r["status"]) for r in rows} == {(normal.name, "COMPLETED"),
                                                    (slow.name, "RUNNING")},
        f"{normal.name} COMPLETED and {slow.name} RUNNING")
    slow_id = next(r["id"] for r in rows if r["input"] == slow.name)
    done_id = next(r["id"] for r in rows if r["input"] == normal.name)
    assert next(r for r in rows if r["id"] == slow_id)["cancel"], \
        f"the running row has no cancel button: {rows}"

    nb.page.evaluate(_WATCH_ROW_JS, slow_id)
    nb.page.locator(f".cf-queue tr[data-id='{slow_id}'] button.cf-q-cancel").click()
    nb.poll(nb.queue_rows, lambda rows: any(r["id"] == slow_id and r["status"] == "ABORTED"
                                            for r in rows or []),
            f"job {slow_id}'s row to become ABORTED", timeout=30)
    labels = nb.page.evaluate("() => window.__cfLabels")
    assert labels[:1] == ["RUNNING"] and "aborting…" in labels and labels[-1] == "ABORTED" \
        and labels.index("aborting…") < labels.index("ABORTED"), \
        f"the row should go RUNNING → aborting… → ABORTED; it showed {labels}"
    row = next(r for r in nb.queue_rows() or [] if r["id"] == slow_id)
    assert not row["cancel"], f"an ABORTED row still offers cancel: {row}"
    assert "aborted 1" in nb.queue_chips(), nb.queue_chips()
    nb.screenshot(nb.page.locator(".cf-queue"))

    statuses = _db_statuses(home)
    assert statuses == {done_id: "COMPLETED", slow_id: "ABORTED"}, statuses
    outputs = sorted(p.name for p in (home / "output").rglob("*") if p.is_file())
    assert any(job_hash16(str(done_id)) in name for name in outputs), \
        f"the completed job {done_id} should have an output file; output/ holds {outputs}"
    assert not [n for n in outputs if job_hash16(str(slow_id)) in n], \
        f"the aborted job {slow_id} left output files: {outputs}"

    pids += descendants(pids)  # plugin hosts started since
    nb.lab.shutdown_kernels_of(nb.path)  # the kernel's shutdown stops the cluster it started
    assert_no_leaks(pids, timeout=20)


def test_expand_and_retry_a_failed_row(open_notebook: Any, tmp_path: Path) -> None:
    """Click a failed row: it expands to the error, the remote traceback and the attempts.
    Fix the input, click the row's retry button: the row runs again and COMPLETES as attempt
    2; the state DB lists both attempts. The header's stacked bar shows the counts."""
    home, data = tmp_path / "home", tmp_path / "data"
    [bad] = make_inputs(data, 1, mode="permanent msg=row 3 is not a number", prefix="bad")
    nb = open_notebook(write_notebook(tmp_path / "retry.ipynb", [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=1, home={str(home)!r})\n"
        f"ids = ctl.submit({str(FIXTURE_PLUGIN)!r}, {str(bad)!r})\n"
        "ctl.queue()",
    ]), "browser-retry")
    nb.run_all()
    pids = _cluster_pids(home)
    [row] = nb.poll(nb.queue_rows, lambda rows: bool(rows) and rows[0]["status"] == "FAILED",
                    f"{bad.name} to show FAILED")
    job_id = row["id"]
    retry = nb.page.locator(f".cf-queue tr[data-id='{job_id}'] button.cf-q-retry")
    assert retry.count() == 1, f"a FAILED row has no retry button: {nb.describe()}"

    nb.page.locator(f".cf-queue tr.cf-q-row[data-id='{job_id}'] td.cf-q-input").click()
    detail = nb.wait_for(f".cf-queue tr.cf-q-detail-row[data-id='{job_id}']", "the expanded row")
    text = detail.inner_text()
    assert "PermanentError: fixture permanent failure: row 3 is not a number" in text, text
    assert "Traceback (most recent call last)" in text and "attempts" in text, text
    nb.screenshot(nb.page.locator(".cf-queue"), "-expanded")

    bad.write_text("mode=normal rows=2\n")  # fixed
    retry.click()
    nb.poll(nb.queue_rows, lambda rows: bool(rows) and rows[0]["status"] == "COMPLETED",
            f"job {job_id} to COMPLETE after its retry", timeout=30)
    nb.poll(lambda: nb.page.locator(".cf-queue .cf-q-detail").inner_text(),
            lambda t: "COMPLETED" in t, "the expanded row to list the second attempt")
    segments = nb.page.locator(".cf-queue .cf-q-bar .cf-q-seg")
    assert segments.count() == 1 and "completed 1" in (segments.first.get_attribute("title") or "")
    nb.screenshot(nb.page.locator(".cf-queue"), "-retried")
    with StateReader.open(home / "state.sqlite") as db:
        attempts = [(a["attempt"], a["status"]) for a in db.attempts(job_id)]
    assert attempts == [(1, "FAILED"), (2, "COMPLETED")], attempts

    pids += descendants(pids)
    nb.lab.shutdown_kernels_of(nb.path)
    assert_no_leaks(pids, timeout=20)


# -- scenario 3: the timeline of the golden tape ------------------------------------------------

_BAR_JS = """(rect) => ({fill: getComputedStyle(rect).fill,
                        tip: document.querySelector('.cf-timeline .cf-t-tip').textContent,
                        tipShown: getComputedStyle(document.querySelector('.cf-timeline .cf-t-tip')).display})"""


def _chips(nb: NotebookPage) -> set[str]:
    return set(nb.page.locator(".cf-timeline .cf-t-state .cf-t-chip").all_inner_texts())


def _expected_chips(counts: dict[str, int]) -> set[str]:
    return {f"{k} {n}" for k, n in counts.items() if n}


def test_timeline_of_the_golden_tape(open_notebook: Any, tmp_path: Path) -> None:
    """One bar per job attempt, coloured by the job's final status (explain_tape); hovering
    a bar or a marker shows its event; moving the scrubber replays the counts of that moment."""
    explained = explain_tape(GOLDEN).to_json()
    final = {j["job_id"]: j["status"] for j in explained["jobs"]}
    attempts = {j["job_id"]: j["attempts"] for j in explained["jobs"]}
    colours = _status_colours()
    index = ReplayIndex(GOLDEN)
    nb = open_notebook(write_notebook(tmp_path / "timeline.ipynb", [
        f"import casparian_nb as cf\ncf.timeline({str(GOLDEN)!r})"]), "browser-timeline")
    nb.run_all()
    nb.wait_for(".cf-timeline svg rect.cf-t-bar", "the timeline's bars")

    # bars: hover each one; its tooltip names the job; its fill is its final status's colour
    bars = nb.page.locator(".cf-timeline svg rect.cf-t-bar")
    seen: dict[str, list[str]] = {}
    for i in range(bars.count()):
        bars.nth(i).hover()
        got = nb.page.evaluate(_BAR_JS, bars.nth(i).element_handle())
        m = re.match(r"job (\S+) · attempt (\d+) · (\S+)", got["tip"])
        assert got["tipShown"] == "block" and m, f"hovering bar {i} showed {got}"
        job = m.group(1)
        assert job in final, f"bar {i} is for job {job}, not in the tape's jobs {sorted(final)}"
        assert got["fill"] == colours[final[job]], \
            f"bar {i} (job {job}, final {final[job]}) is filled {got['fill']}, " \
            f"expected {colours[final[job]]}; tooltip {got['tip']!r}"
        if final[job] != m.group(3):
            assert f"(final: {final[job]})" in got["tip"], got["tip"]
        seen.setdefault(job, []).append(m.group(2))
    assert {j: len(a) for j, a in seen.items()} == attempts, \
        f"bars per job {seen}, explain_tape says attempts {attempts}"

    # a marker: its tooltip is the tape event at its seq
    cancel = nb.page.locator(".cf-timeline .cf-t-marker.cf-t-m-cancel")
    cancel.hover()
    tip = nb.page.locator(".cf-timeline .cf-t-tip")
    text = tip.inner_text()
    m = re.search(r"· seq (\d+)", text)
    assert tip.is_visible() and m, f"hovering the cancel marker showed {text!r}"
    event = next(e for e in index.events if e.seq == int(m.group(1)))
    assert event.name == "CancelRequested" and f"job {event.payload['job_id']}" in text, \
        f"the cancel marker's tooltip {text!r} does not describe event {event.to_dict()}"

    # scrubber: at the end it shows the final counts; dragged back, the counts of that moment
    end_counts = {k: n for k, n in explained["summary"].items() if k not in ("total", "total_rows")}
    assert _chips(nb) == _expected_chips(end_counts), _chips(nb)
    slider = nb.page.locator(".cf-timeline .cf-t-slider")
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    nb.page.mouse.move(box["x"] + box["width"] - 4, y)
    nb.page.mouse.down()
    nb.page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=8)
    nb.page.mouse.up()
    start = index.events[0].time
    assert start is not None

    def replayed() -> tuple[float, dict[str, Any], str, set[str]]:
        # The slider's value now (the label beside it changes width while it moves, so
        # read it back), the tape reducer's state at that moment, and what the panel shows.
        t = int(slider.input_value()) / 1000 * explained["duration_s"]
        return (t, index.state_at(time=start + t + 1e-6),
                nb.page.locator(".cf-timeline .cf-t-where").inner_text(), _chips(nb))
    t, expected, _, _ = nb.poll(
        replayed, lambda got: f"seq {got[1]['seq']} " in got[2]
        and got[3] == _expected_chips(got[1]["counts"]),
        "the state panel to show the tape's state at the scrubber's position", timeout=15)
    assert _expected_chips(expected["counts"]) != _expected_chips(end_counts), \
        f"the scrubber at t={t:.2f}s should show counts other than the end's"
    # the picture: the replayed moment, with the aborted job's bar hovered
    bars.nth(next(i for i in range(bars.count()) if "cf-t-aborted" in
                  (bars.nth(i).get_attribute("class") or ""))).hover()
    nb.screenshot(nb.page.locator(".cf-timeline"))


# -- scenario 4: the widgets after a kernel restart + cf.attach() -------------------------------

def test_queue_renders_after_kernel_restart_and_attach(open_notebook: Any,
                                                       tmp_path: Path) -> None:
    """A keep_alive sentinel survives "Restart Kernel"; ``cf.attach(home)`` in the new kernel
    draws the queue with the jobs it already ran, and no output says "Error displaying
    widget"."""
    home, data = tmp_path / "home", tmp_path / "data"
    make_inputs(data, 3)
    make_inputs(data, 1, mode="error msg=broken on purpose", prefix="bad")
    nb = open_notebook(write_notebook(tmp_path / "attach.ipynb", [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=2, home={str(home)!r}, keep_alive=True)\n"
        f"ids = ctl.submit({str(FIXTURE_PLUGIN)!r}, {str(data)!r})\n"
        "ctl.wait(ids, timeout=60)\n"
        "ctl.queue()",
        "import casparian_nb as cf\n"
        f"ctl = cf.attach({str(home)!r})\n"
        "ctl.queue()",
    ]), "browser-attach-after-restart")
    pids: list[int] = []
    try:
        nb.run_cell(0)
        pids = _cluster_pids(home)
        sentinel = pids[0]
        statuses = _db_statuses(home)
        assert sorted(statuses.values()) == ["COMPLETED"] * 3 + ["FAILED"], statuses

        nb.restart_kernel()
        assert psutil.pid_exists(sentinel), "the keep_alive sentinel died with the kernel"
        nb.run_cell(1)
        prompt = nb.cell(1).locator(".jp-InputPrompt").inner_text()
        assert prompt.strip() == "[1]:", f"cell 1 did not run in a fresh kernel: {prompt!r}"
        rows = nb.poll(lambda: nb.queue_rows(1),
                       lambda rows: bool(rows) and {r["id"]: r["status"] for r in rows}
                       == statuses,
                       f"the attached queue to show the DB's jobs {statuses}", timeout=30)
        assert all(not r["cancel"] for r in rows), f"finished jobs offer cancel: {rows}"
        assert "failed 1" in nb.queue_chips(1) and "completed 3" in nb.queue_chips(1), \
            nb.queue_chips(1)
        nb.assert_no_errors()  # no traceback, no "Error displaying widget" anywhere
        nb.cell(1).scroll_into_view_if_needed()
        nb.screenshot()
    finally:
        nb.lab.shutdown_kernels_of(nb.path)
        # keep_alive: nothing stops this sentinel but us; only the PID its sentinel.json names
        conn = home / "sentinel.json"
        if conn.exists():
            pid = int(json.loads(conn.read_text())["pid"])
            if _is_sentinel_of(pid, home):
                pids += [pid, *descendants([pid])]
                os.kill(pid, signal.SIGTERM)
    assert_no_leaks(pids, timeout=20)  # its workers leave when their sentinel is gone

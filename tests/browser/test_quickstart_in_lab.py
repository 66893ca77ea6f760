"""``notebooks/01-quickstart.ipynb`` run in JupyterLab by headless Chromium.

The notebook's last code cell stops the processes and deletes its scratch folder (the state DB
with it), so the test runs it in two steps, as a reader would: Run > "Run All Above Selected
Cell" with that cell selected, check the page against the state DB, then run the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from casparian_nb.client import ControlClient, read_connection_file
from casparian_nb.store import StateReader
from tests.browser.lab import ROOT, requires_chromium
from tests.conftest import assert_no_leaks, descendants

pytestmark = [pytest.mark.browser, requires_chromium]

QUICKSTART = ROOT / "notebooks" / "01-quickstart.ipynb"
TERMINAL = {"COMPLETED", "FAILED", "ABORTED", "SKIPPED"}

# The rendered DataFrame of a cell: header names and the body's rows as text.
_TABLE_JS = """(cell) => {
  const c = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')[cell];
  const t = c?.querySelector('.jp-OutputArea-output table');
  if (!t) return null;
  const head = [...t.querySelectorAll('thead tr:last-child th')].map((th) => th.textContent.trim());
  const rows = [...t.querySelectorAll('tbody tr')].map((tr) =>
    [...tr.querySelectorAll('th, td')].map((td) => td.textContent.trim()));
  return {head, rows};
}"""


def test_quickstart_runs_in_lab(open_notebook: Any, lab_state: Path) -> None:
    """Every cell runs; the queue widget has a row per job with the state DB's final status;
    the SQL cell's table counts the rows the DB says were materialized; the last cell stops
    every process the notebook started."""
    assert QUICKSTART.exists(), f"{QUICKSTART} is missing"
    nb = open_notebook(QUICKSTART, "browser-quickstart")
    stop = nb.cell_index("ctl.stop()", last=True)
    nb.select_cell(stop)
    nb.menu("Run", "Run All Above Selected Cell")
    sources = nb.cell_sources()
    nb.wait_cells_done(180, [i for i in range(stop) if sources[i] is not None])

    homes = list((lab_state / "tmp").glob("casparian-quickstart-*/home"))
    assert len(homes) == 1, f"expected the notebook's one scratch home under TMPDIR: {homes}"
    home = homes[0]
    info = read_connection_file(home)
    with ControlClient(info, timeout=5.0) as client:
        workers = [int(w["pid"]) for w in client.list_workers()]
    pids = [info.pid, *workers]
    pids += descendants(pids)
    with StateReader.open(home / "state.sqlite") as db:
        jobs = {int(j["id"]): j["status"] for j in db.list_jobs(limit=10_000)}
        mats = db.list_materializations(limit=100_000)
    assert jobs and set(jobs.values()) <= TERMINAL, f"jobs still unfinished after wait: {jobs}"

    # the queue: one row per job, each with the DB's status
    queue = nb.cell_index("ctl.queue()")
    nb.poll(lambda: nb.queue_rows(queue),
            lambda rows: rows is not None and {r["id"]: r["status"] for r in rows} == jobs
            and len(rows) == len(jobs),
            f"the queue widget to show the state DB's {len(jobs)} jobs {jobs}", timeout=15)
    counts = {s: list(jobs.values()).count(s) for s in set(jobs.values())}
    chips = nb.queue_chips(queue)
    assert f"all {len(jobs)}" in chips and all(
        f"{s.lower()} {n}" in chips for s, n in counts.items()), (chips, counts)
    nb.scroll_to(queue)
    nb.screenshot()

    # the SQL cell: one row; `orders` counts what the DB says was materialized into `orders`
    sql = nb.cell_index("ctl.sql(")
    table = nb.page.evaluate(_TABLE_JS, sql)
    if table is None:
        raise nb.fail("the ctl.sql cell shows no table")
    expected_rows = sum(m["rows"] for m in mats if m["table_name"] == "orders")
    expected_files = len({m["source_hash"] for m in mats if m["table_name"] == "orders"})
    assert expected_rows > 0, f"no rows materialized into `orders`: {mats}"
    assert len(table["rows"]) == 1, f"the SQL cell should show one row: {table}"
    shown = dict(zip(table["head"], table["rows"][0], strict=True))
    assert shown.get("orders") == str(expected_rows), \
        f"the SQL cell shows {shown}; the state DB materialized {expected_rows} `orders` rows"
    if "source_files" in shown:
        assert shown["source_files"] == str(expected_files), (shown, expected_files)
    nb.screenshot(nb.cell(sql), suffix="-sql")

    # the %%cql tables: their caption's row count is the number of rows drawn
    for i in range(nb.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").count()):
        text = nb.cell(i).locator(".jp-OutputArea-output").all_inner_texts()
        caption = next((m for t in text if (m := re.search(r"(\d+) rows? \u00d7", t))), None)
        if caption:
            drawn = nb.page.evaluate(_TABLE_JS, i)
            assert drawn and len(drawn["rows"]) == int(caption.group(1)), (i, caption[0], drawn)

    # the last cell: the processes stop, the scratch folder goes
    nb.run_cell(stop)
    for below in [i for i in range(stop + 1, len(sources)) if sources[i] is not None]:
        nb.run_cell(below)
    said = " ".join(nb.cell(stop).locator(".jp-OutputArea-output").all_inner_texts())
    assert "stopped: True" in said, f"the stop cell printed {said!r}"
    assert_no_leaks(pids, timeout=20)
    assert not home.exists(), f"the notebook left its scratch home {home}"

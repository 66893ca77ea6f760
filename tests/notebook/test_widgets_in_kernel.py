"""The notebook layer inside a real IPython kernel (nbclient), with a real sentinel.

This is where the threading model is checked for real: events arrive on the controller's
event thread, the queue widget flushes on ipykernel's own loop while the kernel is idle (an
awaiting cell), ``ctl.wait()`` pumps it while it blocks, and the widget state the front-end
would receive ends up in the notebook's saved widget state.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import make_inputs, running, wait_until


def test_queue_widget_live_in_a_kernel(home: Path, fixture_plugin_path: Path,
                                       tmp_path: Path) -> None:
    make_inputs(tmp_path / "data", 6)
    cells = [
        "import asyncio, json, threading\n"
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=1, home={str(home)!r})\n"
        "w = ctl.queue()\n"  # before the submit: every change must reach it as an event
        f"ids = ctl.submit({str(fixture_plugin_path)!r}, {str(tmp_path / 'data')!r})\n"
        "print(json.dumps(ctl.cluster.pids))\n"
        "w",
        # idle kernel (awaiting): flushes must come from ipykernel's loop, not our thread
        "for _ in range(300):\n"
        "    if w.counts.get('COMPLETED') == len(ids):\n"
        "        break\n"
        "    await asyncio.sleep(0.1)\n"
        "print(json.dumps({'completed': w.counts.get('COMPLETED'), 'flushes': w.flushes,\n"
        "                  'thread': w._thread is threading.main_thread()}))",
        "more = ctl.submit(" + repr(str(fixture_plugin_path)) + ", "
        + repr(str(tmp_path / "data" / "in_0000.txt")) + ", force=True)\n"
        "r = ctl.wait(more, timeout=60)\n"
        "print(json.dumps({'wait': r.counts, 'completed': w.counts.get('COMPLETED')}))",
        "%load_ext casparian_nb",
        "%%cql n <<\nselect count(*) as n from fixture_output",
        "print(int(n['n'][0]))\nctl.stop()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    pids: list[int] = []
    try:
        client.execute()
    finally:
        for output in nb.cells[0].get("outputs", []):
            if output.get("name") == "stdout":
                pids = json.loads(output["text"].strip().splitlines()[0])
    live = json.loads(nb.cells[1].outputs[0]["text"])
    assert live["completed"] == 6 and live["thread"]
    assert 1 <= live["flushes"] <= 40  # coalesced, not one message per event
    waited = json.loads(next(o["text"] for o in nb.cells[2].outputs if o.get("name") == "stdout"))
    assert waited == {"wait": {"COMPLETED": 1}, "completed": 7}  # wait() pumped the widget
    assert nb.cells[5].outputs[0]["text"].strip() == "70"
    # what the front-end would hold: the widget's saved state has the final counts
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    queue = [s["state"] for s in states.values() if "counts" in s["state"]]
    assert queue and queue[0]["counts"]["COMPLETED"] == 7
    assert len(queue[0]["rows"]) == 7
    wait_until(lambda: not [p for p in pids if running(p)],
               15, message="the kernel's cluster to stop")

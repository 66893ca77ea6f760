"""Progress bars of blocking calls: the widget (coalesced, ends with final counts, a static
snapshot in its display data), the terminal bar, and both driven by real runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from casparian_nb._progress import ProgressCounts, TerminalProgress
from casparian_nb.notebook.progress import ProgressWidget
from casparian_nb.runner import run
from tests.conftest import make_inputs
from tests.notebook.nb_harness import RecordingComm

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_updates_are_coalesced_to_ten_per_second(comms: list[RecordingComm]) -> None:
    now = [0.0]
    w = ProgressWidget("wait", clock=lambda: now[0])
    for i in range(100):  # 100 reports within 0.05 s: one sync
        now[0] = i * 0.0005
        w.update(ProgressCounts(done=i, queued=100 - i))
    assert w.flushes == 1
    now[0] = 0.2
    w.update(ProgressCounts(done=60, failed=2, running=3, queued=35))
    assert w.flushes == 2 and w.counts == {"done": 60, "failed": 2, "running": 3, "queued": 35}
    assert w.total == 100 and w.rate == 310.0 and w.eta_s == round(38 / 310, 1)


def test_it_ends_with_a_static_line_of_final_counts(comms: list[RecordingComm]) -> None:
    now = [0.0]
    w = ProgressWidget("run orders", clock=lambda: now[0])
    w.update(ProgressCounts(done=1, queued=9))
    now[0] = 4.0
    w.finish(ProgressCounts(done=9, failed=1))
    assert w.finished and w.counts["done"] == 9 and w.comm.merged()["finished"] is True
    data, _ = w._repr_mimebundle_()
    assert WIDGET in data
    assert data["text/plain"] == "run orders: 9 done, 1 failed of 10 in 4.0 s (2.5/s)"
    assert "9 done, 1 failed of 10" in data["text/html"] and "width:90.00%" in data["text/html"]


def test_terminal_bar_ends_with_one_plain_line() -> None:
    out = io.StringIO()
    now = [0.0]
    bar = TerminalProgress("run p", stream=out, clock=lambda: now[0])
    bar.update(ProgressCounts(done=1, running=2, queued=3))
    now[0] = 2.0
    bar.finish(ProgressCounts(done=5, failed=1))
    assert out.getvalue().splitlines()[-1] == "run p: 5 done, 1 failed of 6 in 2.0 s (3.0/s)"


def test_a_run_reports_every_file_and_finishes(fixture_plugin: Path, tmp_path: Path) -> None:
    """``run(progress=sink)``: one update per finished file, the last one all done."""
    make_inputs(tmp_path / "in", 5)
    seen: list[ProgressCounts] = []

    class Sink:
        final: ProgressCounts | None = None

        def update(self, counts: ProgressCounts) -> None:
            seen.append(counts)

        def finish(self, counts: ProgressCounts | None = None) -> None:
            Sink.final = counts

    result = run(fixture_plugin, tmp_path / "in", sink=f"parquet://{tmp_path / 'out'}",
                 parallel=2, progress=Sink())
    assert result.ok and len(seen) == 5
    assert [c.finished for c in seen] == [1, 2, 3, 4, 5] and all(c.total == 5 for c in seen)
    assert Sink.final == ProgressCounts(done=5)


def test_wait_and_run_show_a_bar_in_a_kernel(home: Path, fixture_plugin_path: Path,
                                             tmp_path: Path) -> None:
    """In a real kernel: ``submit(wait=True)`` and ``cf.run`` each display one bar, updated in
    place, whose saved display data ends with the final counts; ``progress=False``: none."""
    make_inputs(tmp_path / "data", 4)
    plugin, data = str(fixture_plugin_path), str(tmp_path / "data")
    cells = [
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=2, home={str(home)!r})",
        f"ids = ctl.submit({plugin!r}, {data!r}, wait=True)",
        "import json\nr = ctl.wait(ids, progress=False)\nprint(json.dumps(r.counts))",
        f"res = cf.run({plugin!r}, {data!r}, sink='parquet://{tmp_path / 'out'}', parallel=2)",
        "ctl.stop()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    for cell, label in ((1, "waiting for 4 job(s): 4 done, 0 failed of 4 in"),
                        (3, "run fixture_plugin.py: 4 done, 0 failed of 4 in")):
        shown = [o for o in nb.cells[cell].outputs if o["output_type"] == "display_data"]
        assert len(shown) == 1, nb.cells[cell].outputs  # one display, updated in place
        assert WIDGET in shown[0]["data"]
        assert shown[0]["data"]["text/plain"].startswith(label), shown[0]["data"]["text/plain"]
        assert "4 done, 0 failed of 4" in shown[0]["data"]["text/html"]
    assert [o["output_type"] for o in nb.cells[2].outputs] == ["stream"]
    assert json.loads(nb.cells[2].outputs[0]["text"]) == {"COMPLETED": 4}

"""A plugin defined in a notebook cell, in a real IPython kernel (nbclient) with a real
sentinel: previewed (shipped as source to a plugin host), then submitted; its job's log
(``ctl.logs``) and a failed job's traceback (``ctl.job``) as the notebook renders them; the
preview on the session tape."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from casparian_nb.tape import read_tape
from tests.conftest import running


def test_cell_plugin_preview_submit_logs_and_traceback(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("qty\n1\n2\n30\n")
    (data / "b.csv").write_text("qty\n4\nnot a number\n")
    out = tmp_path / "out"
    cells = [
        "import json\nimport pandas as pd\nimport casparian_nb as cf\nMAX_QTY = 10",
        # a parser defined in the notebook, using a module, a constant and ctx.log
        "def orders(path, ctx=None):\n"
        "    df = pd.read_csv(path)\n"
        "    ctx.log('read %d rows', len(df))\n"
        "    print('parsing', len(df), 'lines')\n"
        "    df['qty'] = df['qty'].astype('int64')\n"
        "    df['_cf_row_error'] = [None if q <= MAX_QTY else 'qty too big' for q in df['qty']]\n"
        "    return df",
        f"p = cf.preview(orders, {str(data / 'a.csv')!r}, rows=5, home={str(home)!r})\n"
        "print(json.dumps({'ok': p.ok, 'rows': p.row_counts,\n"
        "                  'quarantined': p.details['orders'].quarantine_rows,\n"
        "                  'log': p.log}))\n"
        "p",
        f"ctl = cf.start(workers=1, slots=1, home={str(home)!r})\n"
        f"ids = ctl.submit(orders, {str(data)!r}, sink={'parquet://' + str(out)!r})\n"
        "r = ctl.wait(ids, timeout=120)\n"
        "print(json.dumps({'ids': ids, 'counts': r.counts, 'pids': ctl.cluster.pids}))",
        "by_name = {ctl.job(i).input_file.rsplit('/', 1)[-1]: i for i in ids}\n"
        "log = ctl.logs(by_name['a.csv'])\n"
        "failed = ctl.job(by_name['b.csv'])\n"
        "print(json.dumps({'log': log.text, 'html': failed._repr_html_(),\n"
        "                  'ename': failed.error.ename, 'tb': failed.traceback}))\n"
        "failed",
        f"q = cf.preview(orders, {str(data / 'b.csv')!r}, home={str(home)!r})\n"
        "print(json.dumps({'ok': q.ok, 'tape': str(ctl.tape_path)}))\n"
        "ctl.stop()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        pids: list[int] = []
        for output in nb.cells[3].get("outputs", []):
            if output.get("name") == "stdout":
                pids = json.loads(output["text"])["pids"]
        assert not [p for p in pids if running(p)], "ctl.stop() left processes behind"

    def printed(i: int) -> dict:
        return json.loads(next(o["text"] for o in nb.cells[i].outputs if o.get("name") == "stdout"))

    preview = printed(2)
    assert preview["ok"] and preview["rows"] == {"orders": 2} and preview["quarantined"] == 1
    assert "parsing 3 lines" in preview["log"] and "read 3 rows" in preview["log"]
    rich = next(o for o in nb.cells[2].outputs if o.get("output_type") == "execute_result")
    assert "2 rows, 1 would be quarantined" in rich["data"]["text/html"]

    submitted = printed(3)
    assert submitted["counts"] == {"COMPLETED": 1, "FAILED": 1}, submitted
    shown = printed(4)
    assert "parsing 3 lines" in shown["log"] and "INFO read 3 rows" in shown["log"]
    assert shown["ename"] == "ValueError" and shown["tb"].count("Traceback (most recent") == 1
    assert "astype('int64')" in shown["tb"]  # the cell's own source line, shipped with it
    assert "remote traceback" in shown["html"] and "ValueError</b>" in shown["html"]
    assert not printed(5)["ok"]

    # both previews on the session tape: a Preview command and its response, linked
    events = list(read_tape(Path(printed(5)["tape"])))
    commands = [e for e in events if e.name == "Preview"]
    assert len(commands) == 1  # the first preview ran before cf.start(): no session tape yet
    [resp] = [e for e in events if e.parent_id == commands[0].event_id]
    assert resp.correlation_id == commands[0].correlation_id
    assert resp.payload["status"] == "failed" and "ValueError" in resp.payload["error"]

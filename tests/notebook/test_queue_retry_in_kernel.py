"""Retry and expand in the queue widget inside a real IPython kernel (nbclient), with a real
sentinel: the front-end's messages are delivered to the widget as a click would send them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import running, wait_until

CLICK = ("def click(content):\n"
         "    w._handle_msg({'content': {'data': {'method': 'custom', 'content': content}},\n"
         "                   'buffers': []})\n")


def test_retry_and_expand_a_failed_row_in_a_kernel(home: Path, fixture_plugin_path: Path,
                                                   tmp_path: Path) -> None:
    bad = tmp_path / "data" / "bad.txt"
    bad.parent.mkdir()
    bad.write_text("mode=permanent msg=row 3 is not a number\n")
    cells = [
        "import asyncio, json\n"
        "import casparian_nb as cf\n"
        f"ctl = cf.start(workers=1, slots=1, home={str(home)!r})\n"
        "w = ctl.queue()\n"
        f"[jid] = ctl.submit({str(fixture_plugin_path)!r}, {str(bad)!r})\n"
        "ctl.wait([jid], timeout=60)\n"
        "print(json.dumps(ctl.cluster.pids))\n"
        + CLICK,
        "click({'type': 'expand', 'job_id': jid})\n"
        "d = w.detail\n"
        "print(json.dumps({'error': d['error'], 'tb': 'PermanentError' in (d['traceback'] or ''),\n"
        "                  'attempts': [a['status'] for a in d['attempts']],\n"
        "                  'log': 'fixture_plugin mode=permanent' in (d['log'] or ''),\n"
        "                  'row': [r['retryable'] for r in w.rows if r['id'] == jid]}))",
        f"open({str(bad)!r}, 'w').write('mode=normal rows=4\\n')  # fixed\n"
        "click({'type': 'retry', 'job_id': jid})\n"
        "for _ in range(300):\n"
        "    if w.counts.get('COMPLETED') == 1:\n"
        "        break\n"
        "    await asyncio.sleep(0.1)\n"
        "click({'type': 'expand', 'job_id': jid})\n"
        "row = [r for r in w.rows if r['id'] == jid][0]\n"
        "job = ctl.job(jid)\n"
        "print(json.dumps({'status': row['status'], 'attempt': row['attempt'],\n"
        "                  'detail': [a['status'] for a in w.detail['attempts']],\n"
        "                  'job': [(a['attempt'], a['status']) for a in job.attempts],\n"
        "                  'html': 'completed 1' in w._repr_mimebundle_()[0]['text/html']}))",
        "ctl.stop()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    pids: list[int] = []
    try:
        client.execute()
    finally:
        for output in nb.cells[0].get("outputs", []):
            if output.get("name") == "stdout":
                pids = json.loads(output["text"].strip().splitlines()[-1])
    expanded = json.loads(nb.cells[1].outputs[-1]["text"])
    assert expanded == {"error": "PermanentError: fixture permanent failure: row 3 is not a "
                                 "number", "tb": True, "attempts": ["FAILED"], "log": True,
                        "row": [True]}
    retried = json.loads(nb.cells[2].outputs[-1]["text"])
    assert retried == {"status": "COMPLETED", "attempt": 2, "detail": ["FAILED", "COMPLETED"],
                       "job": [[1, "FAILED"], [2, "COMPLETED"]], "html": True}
    wait_until(lambda: not [p for p in pids if running(p)],
               15, message="the kernel's cluster to stop")

"""``make demo``: run the quickstart notebook headless in a real kernel and keep what it showed.

:func:`run_notebook` executes a notebook with nbclient, cell by cell in one real kernel. Just
before the last code cell (the notebook's own clean-up: ``ctl.stop()``), it asks the same
kernel for a summary — job counts, rows, quarantined rows and the notebook's DuckDB query —
without adding anything to the notebook, then runs the clean-up and writes the executed
notebook as HTML (widgets appear through their static ``text/html`` snapshots, as on GitHub).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._extras import import_with_extra
from .errors import CasparianError

__all__ = ["NotebookRun", "NotebookRunError", "run_notebook"]

_MARK = "__casparian_summary__"
#: Run in the kernel before clean-up: ``ctl`` (the notebook's controller) answers.
_SUMMARY_CODE = f"""
import json as _cf_json
_cf_stats = ctl.stats()
_cf_rows = ctl.sql("select count(*) as n from orders")["n"][0]
_cf_quarantined = ctl.sql("select count(*) as n from orders_quarantine")["n"][0]
_cf_query = ("select currency, count(*) as orders, round(sum(amount), 2) as total "
             "from orders group by currency order by currency")
print({_MARK!r} + _cf_json.dumps({{
    "jobs": _cf_stats.counts, "rows": int(_cf_rows), "quarantined": int(_cf_quarantined),
    "query": _cf_query, "result": ctl.sql(_cf_query).to_string(index=False)}}))
"""


class NotebookRunError(CasparianError, RuntimeError):
    """A cell of the demo notebook raised; the message names the cell and the error."""


@dataclass
class NotebookRun:
    """What :func:`run_notebook` did: the summary the kernel gave, the HTML written."""

    notebook: Path
    html: Path | None
    elapsed_s: float
    summary: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        """The summary as the demo prints it."""
        s = self.summary
        jobs = s.get("jobs", {})
        lines = [f"{self.notebook.name}: executed in {self.elapsed_s:.1f} s in a real kernel",
                 f"  jobs: {jobs.get('total', 0)} ({jobs.get('completed', 0)} completed, "
                 f"{jobs.get('failed', 0)} failed, {jobs.get('aborted', 0)} aborted)",
                 f"  rows: {s.get('rows', 0):,}   quarantined: {s.get('quarantined', 0):,}"]
        if s.get("query"):
            lines += ["", f"DuckDB: {s['query']}", s.get("result", "")]
        if self.html is not None:
            lines += ["", f"notebook with its outputs: {self.html}"]
        return "\n".join(lines)


def _summary_from(outputs: list[Any]) -> dict[str, Any]:
    for out in outputs:
        text = out.get("text", "") if out.get("output_type") == "stream" else ""
        for line in str(text).splitlines():
            if line.startswith(_MARK):
                return dict(json.loads(line[len(_MARK):]))
    return {}


def _cell_error(cell: Any, index: int) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"cell {index}: {out.get('ename')}: {out.get('evalue')}"
    return f"cell {index} failed"


def _probe(client: Any, nb: Any, nbformat: Any, nbclient: Any) -> dict[str, Any]:
    """Run the summary code in the notebook's kernel as a cell that is not kept."""
    probe = nbformat.v4.new_code_cell(_SUMMARY_CODE)
    nb.cells.append(probe)  # nbclient executes cells by their index in the notebook
    try:
        client.execute_cell(probe, len(nb.cells) - 1)
        return _summary_from(probe.outputs)
    except nbclient.exceptions.CellExecutionError:
        return {}  # not the quickstart (no ctl/orders): no summary, the notebook still runs
    finally:
        nb.cells.pop()


def run_notebook(path: str | os.PathLike[str], *, html: str | os.PathLike[str] | None = None,
                 timeout: float = 600.0, kernel_name: str = "python3") -> NotebookRun:
    """Execute the notebook at ``path`` in a new kernel (cwd: its folder), collect the
    summary before its last code cell, and write it executed to ``html`` (if given)."""
    nbformat = import_with_extra("nbformat", "running a notebook")
    nbclient = import_with_extra("nbclient", "running a notebook")
    import_with_extra("nbclient.exceptions", "running a notebook")
    exporter_cls = import_with_extra("nbconvert", "writing HTML").HTMLExporter
    nb_path = Path(path).resolve()
    if not nb_path.is_file():
        raise NotebookRunError(f"notebook not found: {nb_path}")
    nb = nbformat.read(nb_path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not code_cells:
        raise NotebookRunError(f"{nb_path}: no code cells")
    cleanup = code_cells[-1]
    client = nbclient.NotebookClient(nb, timeout=int(timeout), kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(nb_path.parent)}})
    started = time.monotonic()
    summary: dict[str, Any] = {}
    # The kernel's own stderr (its startup chatter) is not the user's business here: a cell's
    # errors arrive as outputs, and a failing cell is reported below.
    with client.setup_kernel(stderr=subprocess.DEVNULL):
        for index, cell in enumerate(list(nb.cells)):
            if index == cleanup:
                summary = _probe(client, nb, nbformat, nbclient)
            try:
                client.execute_cell(cell, index)
            except nbclient.exceptions.CellExecutionError:
                raise NotebookRunError(f"{nb_path.name}: {_cell_error(cell, index)}") from None
    elapsed = time.monotonic() - started
    out: Path | None = None
    if html is not None:
        out = Path(html)
        out.parent.mkdir(parents=True, exist_ok=True)
        body, _resources = exporter_cls().from_notebook_node(nb)
        out.write_text(body, encoding="utf-8")
    return NotebookRun(nb_path, out, elapsed, summary)

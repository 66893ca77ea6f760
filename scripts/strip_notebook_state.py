"""Keep committed notebooks free of widget state; optionally re-run them first.

    python scripts/strip_notebook_state.py notebooks/*.ipynb             # strip in place
    python scripts/strip_notebook_state.py --check notebooks/*.ipynb     # exit 1 if any would change
    python scripts/strip_notebook_state.py --execute notebooks/*.ipynb   # re-run, then strip

Stripped: ``metadata.widgets`` (the saved widget state), the widget-view part of every
widget output (``application/vnd.jupyter.widget-view+json``: a model id that means nothing
without the state) and per-cell execution timing; consecutive stream outputs are merged.
Kept: text and HTML outputs, including each widget's static ``text/html`` + ``text/plain``
snapshot (a table, an SVG timeline, final counts), so GitHub, nbviewer and nbconvert show
what happened; an output that was nothing but a widget view goes. nbval compares the cells
tagged ``nbval-check-output`` against what is kept; cell tags stay.

``--execute`` runs each notebook top to bottom in its own folder with nbclient (the kernel of
this interpreter), which is how the stored outputs that nbval checks are refreshed after a
deliberate change. Review the diff before committing it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: Cell metadata keys written by front-ends and executors that only churn diffs.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "jupyter")


def widget_problems(nb: Any) -> list[str]:
    """What saved widget state ``nb`` carries (empty when clean)."""
    found = []
    if "widgets" in nb.metadata:
        found.append("metadata.widgets")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data or WIDGET_STATE in data:
                found.append(f"cell {i}: widget output")
    return found


def strip(nb: Any) -> Any:
    """Remove widget state and volatile metadata from ``nb`` (in place); returns it."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        kept: list[Any] = []
        for out in cell.outputs:
            data = out.get("data", {})
            if {WIDGET_VIEW, WIDGET_STATE} & set(data):
                for mime in (WIDGET_VIEW, WIDGET_STATE):
                    data.pop(mime, None)
                if not set(data) - {"text/plain"}:
                    continue  # a widget without a static snapshot: its repr alone says nothing
                out.metadata = {}
            last = kept[-1] if kept else None
            if (out.output_type == "stream" and last is not None
                    and last.output_type == "stream" and last.name == out.name):
                last.text += out.text  # one print split across two messages: one output
                continue
            kept.append(out)
        cell.outputs = kept
    return nb


def execute(nb: Any, path: Path, timeout: int) -> None:
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            store_widget_state=False, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook carries widget state")
    parser.add_argument("--execute", action="store_true", help="re-run each notebook first")
    parser.add_argument("--timeout", type=int, default=300, help="per-cell timeout (s)")
    args = parser.parse_args(argv)
    dirty = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            problems = widget_problems(nb)
            if problems:
                dirty += 1
                print(f"{path}: {', '.join(problems)}")
            continue
        before = nbformat.writes(nb)
        if args.execute:
            execute(nb, path, args.timeout)
        strip(nb)
        after = nbformat.writes(nb)
        if after != before:
            path.write_text(after if after.endswith("\n") else after + "\n", encoding="utf-8")
            print(f"{path}: {'executed and ' if args.execute else ''}stripped")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())

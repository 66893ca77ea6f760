"""The queue widget's static snapshot: what a saved notebook shows where the widget was.

The header (counts as a stacked bar, throughput) and the current page as plain HTML with
inline colours (nbviewer and GitHub run no script and load no CSS). Built when the widget is
displayed or its display is refreshed, never on a live update.
"""

from __future__ import annotations

import html
import time
from typing import Any

from ..protocol import JobStatus
from ._queue_model import STATUSES, QueueModel

__all__ = ["queue_snapshot_html"]

#: Status colours of the static snapshot (the live widget's are in queue.css).
_COLORS = {JobStatus.QUEUED: "#6b7280", JobStatus.RUNNING: "#2563eb",
           JobStatus.COMPLETED: "#16a34a", JobStatus.FAILED: "#dc2626",
           JobStatus.ABORTED: "#9333ea", JobStatus.SKIPPED: "#9ca3af"}


def queue_snapshot_html(model: QueueModel, rows: list[dict[str, Any]], summary: str) -> str:
    """The static HTML of the queue: ``summary`` (its one-line counts), a stacked bar of the
    counts, the throughput, and ``rows`` (the page on show) as a table."""
    counts = model.count_dict()
    total = max(1, counts["total"])
    segments = "".join(
        f'<span title="{s.lower()} {counts[s]}" style="display:inline-block;height:8px;'
        f'width:{100 * counts[s] / total:.2f}%;background:{_COLORS.get(s, "#9ca3af")}">'
        "</span>" for s in STATUSES if counts.get(s))
    bar = (f'<div style="width:240px;background:#e5e7eb;font-size:0;line-height:0">'
           f"{segments}</div>")
    head = html.escape(summary) + (
        f", {counts['dead']} dead" if counts.get("dead") else "") + (
        f", {model.throughput(time.time()):.1f} jobs/s")
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["id"], r["label"] + (" (dead)" if r["dead_letter"] else "")
            + (" (stale)" if r["stale"] else ""), r["plugin"] or "", r["input"],
            r["error"] or "")) + "</tr>"
        for r in rows)
    table = ("<table><tr><th>#</th><th>status</th><th>plugin</th><th>input</th>"
             f"<th>error</th></tr>{cells}</table>") if cells else ""
    return f'<div class="cf-queue-snapshot"><div>{head}</div>{bar}{table}</div>'

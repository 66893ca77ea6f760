"""HTML and text renderings shared by the notebook objects (query results, jobs, stats).

Inline styles only: these reprs must look right in JupyterLab, classic Notebook, VS Code and
nbviewer, none of which load our CSS. Colours follow the job states everywhere (the widgets'
CSS uses the same palette).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ..protocol import JobStatus

__all__ = [
    "STATUS_COLORS", "QueryResult", "badge", "esc", "kv_table", "short_path", "traceback_html",
]

#: Job status -> colour (queue widget, timeline and HTML reprs agree).
STATUS_COLORS = {
    JobStatus.QUEUED: "#6b7280",
    JobStatus.RUNNING: "#2563eb",
    "ABORTING": "#d97706",
    JobStatus.COMPLETED: "#16a34a",
    JobStatus.FAILED: "#dc2626",
    JobStatus.ABORTED: "#9333ea",
    JobStatus.SKIPPED: "#9ca3af",
}

_TABLE = "border-collapse:collapse;font-size:12px;font-family:var(--jp-ui-font-family,sans-serif)"
_TD = "padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #e5e7eb"


def esc(value: Any) -> str:
    """HTML-escaped ``str(value)`` (``""`` for None)."""
    return "" if value is None else html.escape(str(value))


def short_path(path: Any, width: int = 48) -> str:
    """The file name of ``path``, or the tail of it when even that is too long."""
    text = "" if path is None else str(path)
    name = text.rsplit("/", 1)[-1]
    return name if len(name) <= width else "…" + name[-(width - 1):]


def badge(status: str) -> str:
    """A coloured status label."""
    color = STATUS_COLORS.get(status.upper(), "#6b7280")
    return (f'<span style="background:{color};color:white;border-radius:3px;'
            f'padding:0 6px;font-size:11px">{esc(status)}</span>')


def kv_table(rows: Iterable[tuple[str, str]], title: str = "") -> str:
    """A two-column table of already-escaped HTML values under an optional bold title."""
    body = "".join(f'<tr><th style="{_TD};color:#6b7280;font-weight:normal">{esc(k)}</th>'
                   f'<td style="{_TD}">{v}</td></tr>' for k, v in rows)
    head = f"<div style='font-weight:600;margin:2px 0'>{title}</div>" if title else ""
    return f'<div>{head}<table style="{_TABLE}">{body}</table></div>'


class QueryResult:
    """A query's DataFrame with a readable display: row count, then the first rows.

    ``.df`` is the pandas DataFrame; ``len()`` its row count. ``%%cql`` returns this.
    """

    #: Rows shown in the HTML/text display.
    max_rows = 20

    def __init__(self, df: pd.DataFrame, query: str = "", elapsed: float | None = None) -> None:
        self.df = df
        self.query = query
        self.elapsed = elapsed

    def __len__(self) -> int:
        return len(self.df)

    @property
    def summary(self) -> str:
        """``"3 rows x 2 columns (12 ms)"``."""
        n, m = self.df.shape
        took = f" ({self.elapsed * 1000:.0f} ms)" if self.elapsed is not None else ""
        shown = f", first {self.max_rows} shown" if n > self.max_rows else ""
        times = "\u00d7"  # the multiplication sign, as pandas writes shapes
        return f"{n:,} row{'s' * (n != 1)} {times} {m} column{'s' * (m != 1)}{shown}{took}"

    def _repr_html_(self) -> str:
        table = self.df.head(self.max_rows).to_html(index=False, max_cols=50, border=0,
                                                    na_rep="NULL", escape=True)
        return (f'<div><div style="font-size:12px;color:#6b7280;margin-bottom:4px">'
                f"{esc(self.summary)}</div>{table}</div>")

    def __repr__(self) -> str:
        if self.df.empty:
            return f"{self.summary}\n(columns: {', '.join(map(str, self.df.columns))})"
        text = self.df.head(self.max_rows).to_string(index=False, max_colwidth=60)
        return f"{self.summary}\n{text}"


def timed_query(run: Any, query: str) -> QueryResult:
    """Run ``run(query)`` (returning a DataFrame) and wrap it with its wall time."""
    started = time.perf_counter()
    df = run(query)
    return QueryResult(df, query, time.perf_counter() - started)


def html_rows(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of already-escaped cells under plain column headers."""
    head = "".join(f'<th style="{_TD};font-weight:600">{esc(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td style="{_TD}">{v}</td>' for v in r) + "</tr>"
                   for r in rows)
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def traceback_html(ename: str, evalue: str, traceback: str, title: str = "remote traceback") -> str:
    """A remote error shown the way IPython shows one: ``ename: evalue`` in bold red over
    the traceback on the error background (open, in a collapsible block)."""
    red = STATUS_COLORS[JobStatus.FAILED]
    return (f'<details open style="margin-top:4px"><summary style="cursor:pointer;color:{red}">'
            f'<b>{esc(ename)}</b>: {esc(evalue)} <span style="color:#6b7280">({esc(title)})'
            f'</span></summary><pre style="font-size:11px;background:#fdd;padding:4px 6px;'
            f'white-space:pre-wrap;margin:2px 0">{esc(traceback.rstrip())}</pre></details>')

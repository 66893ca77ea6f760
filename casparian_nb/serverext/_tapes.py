"""What the `.tape` viewer shows, from the same kernel-free code as the notebook timeline.

The viewer mounts ``casparian_nb/notebook/static/timeline.js`` (over ``timeline_draw.js``, the
one drawing code) on the JSON of a :class:`~casparian_nb.tape.timeline_view.TimelineSource`,
exactly as the :class:`~casparian_nb.notebook.timeline.TimelineWidget` feeds it from a kernel:
``data`` is the first render's payload, ``state``/``position`` the scrubber at the end, and a
zoom asks :meth:`TimelineSource.payload` for the view's level of detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..tape import explain_tape, validate_tape
from ..tape.timeline_view import TimelineSource

__all__ = ["TapeView", "tape_document"]

#: Validation issues sent to the browser (the count says how many there were).
_ISSUE_LIMIT = 200
#: One loaded tape: its payloads, scrubber states and events.
TapeView = TimelineSource


class ViewCache(Protocol):
    def get(self, path: Path) -> TapeView: ...


def tape_document(path: Path, title: str, *, views: ViewCache | None = None) -> dict[str, Any]:
    """Everything the viewer opens with: validation, the explain summary, the timeline and
    the scrubber at the end. A tape too damaged to replay still answers, with its errors.
    ``views`` keeps the loaded tape for the scrubbing requests that follow."""
    report = validate_tape(path).to_json()
    report["issues"] = report["issues"][:_ISSUE_LIMIT]
    doc: dict[str, Any] = {"title": title, "validation": report, "explain": None,
                           "explain_text": "", "data": None, "replay_error": None}
    try:
        explained = explain_tape(path)
        view = views.get(path) if views is not None else TimelineSource(path)
    except ValueError as exc:  # TapeError: nothing readable; the validation says why
        doc["replay_error"] = _first_line(exc).replace(str(path), title)
        return doc
    summary = {k: v for k, v in explained.to_json().items() if k != "jobs"}
    doc.update(explain=summary, explain_text=_summary_text(summary), data=view.payload(),
               **view.end())
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _summary_text(summary: Mapping[str, Any]) -> str:
    """A few lines of ``casparian tape explain``: jobs per status, commands, errors."""
    counts = summary.get("summary", {})
    lines = [f"{summary.get('event_count', 0)} events, {counts.get('total', 0)} jobs, "
             f"{summary.get('duration_s') or 0:.2f} s",
             "jobs: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                  if k not in ("total", "total_rows") and v),
             f"rows written: {counts.get('total_rows', 0)} · retries {summary.get('retries', 0)}"
             f" · cancels {summary.get('cancels', 0)}",
             "commands: " + (", ".join(summary.get("commands", [])[:20]) or "none")]
    lines += [f"error: {e}" for e in summary.get("errors", [])[:10]]
    return "\n".join(lines)

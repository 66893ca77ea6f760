"""The queue widget's answers to the page: the front-end's messages (view, cancel, retry,
expand, refresh) and the actions behind its buttons.

A cancel click marks the row ``aborting…`` at once; the row becomes ABORTED only when the
sentinel says so: a refused cancel clears the mark and shows the sentinel's reason. A retry
re-opens a row only once the sentinel's reply says the job is queued again. A mixin of
:class:`~casparian_nb.notebook.queue_widget.QueueWidget`, which owns the model and the flush.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import JobStatus
from ._queue_model import DEAD, STATUSES, QueueModel

if TYPE_CHECKING:
    from .queue_widget import QueueSource

__all__ = ["QueueActions"]


class QueueActions:
    """Front-end messages and button actions (the widget thread only)."""

    _source: QueueSource
    _model: QueueModel
    _log_tail: Callable[[int], str] | None
    # the widget's synced traits
    view: Any
    detail: Any
    message: Any

    if TYPE_CHECKING:
        def _flush(self, force: bool = False) -> None: ...

    def _on_frontend_msg(self, _widget: Any, content: Any, buffers: Sequence[bytes]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "view":
            self._set_view(content)
        elif kind == "cancel":
            self.cancel(content.get("job_id"))
        elif kind == "cancel_all_queued":
            self.cancel_all_queued()
        elif kind == "retry":
            self.retry(content.get("job_id"))
        elif kind == "retry_failed":
            self.retry_failed()
        elif kind == "expand":
            self.expand(content.get("job_id"))
        elif kind == "collapse":
            self.detail = {}
        elif kind == "refresh":
            self._model.load(self._source.job_snapshot())
            self._flush(force=True)

    def _set_view(self, change: Mapping[str, Any]) -> None:
        view = dict(self.view)
        status = str(change.get("status", view["status"]) or "").upper()
        view["status"] = status if status in (*STATUSES, "ABORTING", DEAD) else ""
        view["sort"] = str(change.get("sort", view["sort"]))
        view["desc"] = bool(change.get("desc", view["desc"]))
        view["limit"] = max(5, min(500, _int(change.get("limit"), view["limit"])))
        view["offset"] = max(0, _int(change.get("offset"), view["offset"]))
        if view != self.view:
            self.view = view
            self._flush(force=True)

    def cancel(self, job_id: Any) -> None:
        """What a row's cancel button does: mark it ``aborting…``, ask the sentinel."""
        jid = _int(job_id, -1)
        if jid < 0:
            return
        self._model.mark_aborting([jid])
        self._flush(force=True)  # the click shows at once, before the round trip
        self._after_cancel([jid], lambda: self._source.cancel(jid), f"job {jid}")

    def cancel_all_queued(self) -> None:
        """What "cancel all queued" does: every QUEUED row ``aborting…`` until confirmed."""
        ids = self._model.ids_with_status(JobStatus.QUEUED)
        self._model.mark_aborting(ids)
        self._flush(force=True)
        self._after_cancel(ids, self._source.cancel_all_queued, "queued jobs")

    def _after_cancel(self, ids: list[int], call: Callable[[], Mapping[str, Any]],
                      what: str) -> None:
        try:
            reply = call()
        except Exception as exc:
            self._model.mark_aborting(ids, on=False)
            self.message = f"cancel {what} failed: {exc}"
        else:
            if reply.get("success") is False:
                self._model.mark_aborting(ids, on=False)
                self.message = f"cancel {what}: {reply.get('message') or reply.get('state')}"
            else:
                self.message = ""
        self._flush(force=True)

    def retry(self, job_id: Any) -> None:
        """What a FAILED/ABORTED row's retry button does: ask the sentinel for a new attempt;
        the row shows QUEUED once the sentinel's reply confirms it."""
        jid = _int(job_id, -1)
        if jid >= 0:
            self._after_retry(lambda: self._source.retry([jid]), f"job {jid}")

    def retry_failed(self) -> None:
        """What "retry all failed" does: every FAILED or ABORTED job, a new attempt each."""
        self._after_retry(lambda: self._source.retry(), "failed jobs")

    def _after_retry(self, call: Callable[[], Mapping[str, Any]], what: str) -> None:
        try:
            reply = call()
        except Exception as exc:
            self.message = f"retry {what} failed: {exc}"
        else:
            self._model.reopen(int(i) for i in reply.get("job_ids") or ())
            refused = reply.get("refused") or {}
            self.message = "; ".join(f"job {k} not retried: {v}" for k, v in refused.items())
        self._flush(force=True)

    def expand(self, job_id: Any) -> None:
        """Open a row: its error, remote traceback, attempts and the tail of its log."""
        jid = _int(job_id, -1)
        if jid < 0:
            return
        try:
            job = self._source.job(jid)
        except Exception as exc:  # gone from the DB, or the DB is unreadable right now
            self.detail = {"job_id": jid, "error": f"cannot read job {jid}: {exc}"}
            return
        attempts = [{k: a.get(k) for k in ("attempt", "status", "worker_id", "started_at",
                                           "ended_at", "error_message")}
                    for a in (getattr(job, "raw", {}).get("attempts") or [])]
        log_text = None
        if self._log_tail is not None:
            try:
                log_text = self._log_tail(jid)
            except Exception as exc:
                log_text = f"(no log: {exc})"
        self.detail = {"job_id": jid, "status": str(job.status), "error": job.error_message,
                       "traceback": job.traceback, "attempts": attempts, "log": log_text,
                       "dead_letter": getattr(job, "raw", {}).get("dead_letter")}

    def _refresh_detail(self) -> None:
        """Re-read the expanded row when its job's status moved on (a retry ran)."""
        jid = self.detail.get("job_id") if self.detail else None
        row = self._model.rows.get(jid) if isinstance(jid, int) else None
        if row is not None and "status" in self.detail and row.status != self.detail["status"]:
            self.expand(jid)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

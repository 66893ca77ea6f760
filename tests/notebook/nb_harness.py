"""Widget test harness (imported by the tests and conftest): a comm that records every message, and a fake controller.

Widgets are tested without a browser, as ipywidgets and anywidget test themselves: the comm
records what the kernel would send (``comm_open`` with the initial state, then
``{"method": "update", "state": ...}`` messages), and tests play the front-end by handing the
widget the message a click would send (:func:`frontend_send`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any


class RecordingComm:
    """Stands in for the kernel's comm; ``messages`` holds ``(data, buffers)`` per send."""

    kernel = "recording"  # ipywidgets only sends when the comm has a kernel

    def __init__(self, **kwargs: Any) -> None:
        self.comm_id = kwargs.get("comm_id") or uuid.uuid4().hex
        self.open_data = kwargs.get("data")
        self.messages: list[tuple[dict[str, Any], Any]] = []
        self.threads: list[str] = []
        self.closed = False

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        self.messages.append((data, buffers))
        self.threads.append(threading.current_thread().name)

    def on_msg(self, callback: Any) -> None:
        pass

    def on_close(self, callback: Any) -> None:
        pass

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        self.closed = True

    # -- what the tests read -------------------------------------------------------------------
    def updates(self) -> list[dict[str, Any]]:
        """The ``state`` of every update message, oldest first."""
        return [d["state"] for d, _ in self.messages if d.get("method") == "update"]

    def merged(self) -> dict[str, Any]:
        """The front-end's view of the model: the open state plus every update since."""
        state = dict((self.open_data or {}).get("state") or {})
        for u in self.updates():
            state.update(u)
        return state


def frontend_send(widget: Any, content: dict[str, Any]) -> None:
    """Deliver ``content`` as if the front-end called ``model.send(content)``."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                        "buffers": []})


def job(job_id: int, status: str = "QUEUED", **extra: Any) -> dict[str, Any]:
    """A job dict shaped like a state-DB row (a RUNNING one has started, unless
    ``started_at=None`` is given)."""
    started = "2026-01-01T00:00:00Z" if status == "RUNNING" else None
    return {"id": job_id, "status": status, "plugin_name": "orders",
            "input_file": f"/data/in_{job_id:05d}.csv", "worker_id": None, "rows": 0,
            "claimed_at": None, "started_at": started, "ended_at": None,
            "cancel_requested_at": None, "error_message": None, "retry_count": 0, **extra}


class FakeSource:
    """A controller as the queue widget sees it; records cancels; publishes events."""

    def __init__(self, jobs: Sequence[dict[str, Any]] = ()) -> None:
        self.jobs = {j["id"]: dict(j) for j in jobs}
        self.cancelled: list[int] = []
        self.cancel_all_calls = 0
        self.cancel_reply: dict[str, Any] = {"success": True, "state": "ABORTING",
                                             "message": "Abort sent to worker"}
        self.callbacks: list[Callable[[list[Any]], None]] = []
        self.snapshots: list[Sequence[int] | None] = []

    def cancel(self, job_id: int) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return self.cancel_reply

    def cancel_all_queued(self) -> dict[str, Any]:
        self.cancel_all_calls += 1
        return {"success": True, "state": "MIXED", "message": "cancelled"}

    def job_snapshot(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        self.snapshots.append(ids)
        if ids is None:
            return sorted(self.jobs.values(), key=lambda j: -j["id"])
        return [self.jobs[i] for i in ids if i in self.jobs]

    def subscribe(self, callback: Callable[[list[Any]], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def publish(self, name: str, data: dict[str, Any], ts: float | None = None) -> None:
        for cb in list(self.callbacks):
            cb([(name, data, ts)])


class RetryingSource(FakeSource):
    """A :class:`FakeSource` that also answers retries (as the sentinel's ``Retried``) and
    ``job(id)`` (as ``ctl.job``), recording what was asked."""

    def __init__(self, jobs: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(jobs)
        self.retried: list[Any] = []

    def retry(self, ids: Any = None, status: Any = ("FAILED", "ABORTED")) -> dict[str, Any]:
        self.retried.append(ids)
        wanted = ids if ids is not None else [
            i for i, j in self.jobs.items() if j["status"] in status]
        ok = [i for i in wanted if self.jobs.get(i, {}).get("status") in ("FAILED", "ABORTED")]
        refused = {str(i): f"job {i} is not FAILED or ABORTED" for i in wanted if i not in ok}
        for i in ok:
            self.jobs[i]["status"] = "QUEUED"
        return {"job_ids": ok, "attempts": {str(i): 2 for i in ok}, "refused": refused}

    def job(self, job_id: int) -> Any:
        from casparian_nb.notebook._models import Job

        row = dict(self.jobs[job_id])
        row.setdefault("attempts", [{"attempt": 1, "status": row["status"], "worker_id": "w1",
                                     "error_message": row.get("error_message")}])
        return Job.from_row(row)

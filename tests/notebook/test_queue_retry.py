"""The queue widget's retry, expand, dead-letter, stale, stacked-bar and snapshot parts,
without a browser: recorded comm messages, the front-end played by messages."""

from __future__ import annotations

from typing import Any

from casparian_nb.notebook._scheduling import ManualScheduler
from casparian_nb.notebook.queue_widget import QueueWidget
from casparian_nb.protocol import MANUAL_RETRY_REASON
from casparian_nb.store import STALE_REASON
from tests.notebook.nb_harness import RecordingComm, RetryingSource, frontend_send, job


def _widget(source: RetryingSource, **kwargs: Any) -> QueueWidget:
    kwargs.setdefault("scheduler", ManualScheduler())
    kwargs.setdefault("reconcile_every", 0)
    return QueueWidget(source, **kwargs)


def _row(w: QueueWidget, job_id: int) -> dict[str, Any]:
    return next(r for r in w.comm.merged()["rows"] if r["id"] == job_id)


def test_retry_button_reopens_a_row_only_when_the_sentinel_confirms(
        comms: list[RecordingComm]) -> None:
    src = RetryingSource([job(1, "FAILED", error_message="ValueError: bad"),
                          job(2, "COMPLETED"), job(3, "ABORTED")])
    w = _widget(src)
    assert _row(w, 1)["retryable"] and not _row(w, 2)["retryable"]
    frontend_send(w, {"type": "retry", "job_id": 1})
    assert src.retried == [[1]]
    assert _row(w, 1)["status"] == "QUEUED" and not _row(w, 1)["retryable"]
    frontend_send(w, {"type": "retry", "job_id": 2})  # refused: the row stays, says why
    assert _row(w, 2)["status"] == "COMPLETED"
    assert w.message == "job 2 not retried: job 2 is not FAILED or ABORTED"
    frontend_send(w, {"type": "retry_failed"})
    assert src.retried[-1] is None and _row(w, 3)["status"] == "QUEUED" and w.message == ""


def test_a_manual_retry_event_reopens_a_terminal_row_other_events_cannot(
        comms: list[RecordingComm]) -> None:
    src = RetryingSource([job(4, "FAILED", attempt=1, dead_letter="max_retries_exceeded")])
    w = _widget(src)
    assert _row(w, 4)["dead_letter"] == "max_retries_exceeded"
    src.publish("JobRetried", {"job_id": 4, "retry_count": 1, "error": "late"})  # automatic
    w.flush()
    assert _row(w, 4)["status"] == "FAILED"
    src.publish("JobRetried", {"job_id": 4, "retry_count": 0, "attempt": 2,
                               "reason": MANUAL_RETRY_REASON, "error": "TransientError: x"})
    src.publish("JobDispatched", {"job_id": 4, "worker_id": "w1", "attempt": 2})
    w.flush()
    row = _row(w, 4)
    assert (row["status"], row["dead_letter"], row["attempt"]) == ("RUNNING", None, 2)
    src.publish("JobFailed", {"job_id": 4, "error": "TransientError: x", "will_retry": False,
                              "dead_letter": "max_retries_exceeded"}, ts=100.0)
    w.flush()
    assert _row(w, 4)["dead_letter"] == "max_retries_exceeded"
    assert w.comm.merged()["counts"]["dead"] == 1


def test_dead_filter_and_stale_marks(comms: list[RecordingComm]) -> None:
    src = RetryingSource([job(1, "FAILED", dead_letter="permanent_error"), job(2, "FAILED"),
                          job(3, "SKIPPED", result_summary=STALE_REASON), job(4, "SKIPPED")])
    w = _widget(src)
    frontend_send(w, {"type": "view", "status": "DEAD"})
    state = w.comm.merged()
    assert [r["id"] for r in state["rows"]] == [1] and state["view"]["status"] == "DEAD"
    assert state["counts"]["stale"] == 1
    frontend_send(w, {"type": "view", "status": ""})
    assert _row(w, 3)["stale"] and not _row(w, 4)["stale"]
    src.publish("JobSkipped", {"job_id": 5, "input_file": "/d/x.csv", "stale": True,
                               "reason": STALE_REASON})
    w.flush()
    assert _row(w, 5)["stale"]


def test_expand_sends_error_traceback_attempts_and_log_tail(
        comms: list[RecordingComm]) -> None:
    src = RetryingSource([job(7, "FAILED", error_message="ValueError: bad row 3",
                              traceback="Traceback (most recent call last):\n  ...\nValueError")])
    w = _widget(src, log_tail=lambda jid: f"last lines of job {jid}")
    frontend_send(w, {"type": "expand", "job_id": 7})
    detail = w.comm.merged()["detail"]
    assert detail["job_id"] == 7 and detail["error"] == "ValueError: bad row 3"
    assert detail["traceback"].startswith("Traceback") and detail["log"] == "last lines of job 7"
    assert [a["attempt"] for a in detail["attempts"]] == [1]
    frontend_send(w, {"type": "retry", "job_id": 7})  # the open row follows its job
    assert w.comm.merged()["detail"]["status"] == "QUEUED"
    frontend_send(w, {"type": "collapse"})
    assert w.comm.merged()["detail"] == {}
    plain = _widget(RetryingSource([job(8, "FAILED")]))  # no log_tail: no log part
    frontend_send(plain, {"type": "expand", "job_id": 8})
    assert plain.detail["log"] is None
    frontend_send(plain, {"type": "expand", "job_id": 99})  # gone: says so
    assert "cannot read job 99" in plain.detail["error"]


def test_throughput_and_static_snapshot(comms: list[RecordingComm]) -> None:
    import time

    src = RetryingSource([job(i) for i in range(1, 5)])
    w = _widget(src)
    now = time.time()
    for i in (1, 2, 3):
        src.publish("JobCompleted", {"job_id": i, "rows": 5}, ts=now - 1)
    src.publish("JobFailed", {"job_id": 4, "error": "ValueError: x", "will_retry": False,
                              "dead_letter": "permanent_error"}, ts=now - 1)
    w.flush()
    assert w.comm.merged()["throughput"] == 0.4  # 4 jobs in the last 10 s
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    snap = data["text/html"]
    assert "4 jobs: completed 3, failed 1, 1 dead, 0.4 jobs/s" in snap
    assert snap.count("<tr>") == 5 and "(dead)" in snap and "<script" not in snap
    assert "width:75.00%" in snap and data["text/plain"] == "<QueueWidget: live job queue>"

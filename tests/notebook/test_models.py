"""The public objects the notebook hands back: typed fields, the same reprs."""

from __future__ import annotations

import dataclasses

import pytest

from casparian_nb.errors import RemoteJobError
from casparian_nb.notebook._models import Job, QueueStats, WaitResult
from casparian_nb.protocol import JobStatus

ROW = {"id": 7, "status": "FAILED", "plugin_name": "orders", "input_file": "/in/a.csv",
       "parser_version": "1.0", "worker_id": "w1", "rows": 0, "retry_count": 2, "attempt": 3,
       "error_message": "ValueError: bad row", "error_kind": "permanent",
       "traceback": "Traceback ...\nValueError: bad row", "submission_id": "s1",
       "outputs_json": None}


def test_job_fields_are_typed_and_columns_stay_attributes() -> None:
    job = Job.from_row(ROW)
    assert job.status is JobStatus.FAILED and job.done and job.retry_count == 2
    assert job.submission_id == "s1" and job.raw["outputs_json"] is None  # any column
    with pytest.raises(AttributeError, match="no attribute or column 'nope'"):
        _ = job.nope
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = JobStatus.QUEUED  # type: ignore[misc]
    err = job.error
    assert isinstance(err, RemoteJobError) and "bad row" in str(err)
    with pytest.raises(RemoteJobError):
        job.raise_for_status()
    text = repr(job)
    assert text.startswith("Job 7: FAILED") and "remote traceback:" in text
    assert "retry_count: 2" in text and "rows: 0" in text and "quarantine_rows" not in text
    assert "remote traceback" in job._repr_html_() and ">FAILED<" in job._repr_html_()
    done = Job.from_row({**ROW, "status": "COMPLETED", "rows": 5})
    assert done.error is None and done.raise_for_status() is done and done.rows == 5


def test_queue_stats_from_the_store_counts() -> None:
    stats = QueueStats.from_counts({"queued": 3, "running": 1, "completed": 4, "failed": 0,
                                    "aborted": 0, "skipped": 0, "cancel_requested": 1,
                                    "total": 8})
    assert stats.queued == 3 and stats["RUNNING"] == 1 and stats.total == 8
    assert stats["unknown"] == 0 and stats.to_dict()["completed"] == 4
    assert repr(stats) == ("QueueStats(total 8: queued 3, running 1, completed 4, "
                           "cancel_requested 1)")
    assert ">COMPLETED<" in stats._repr_html_() and "<b>8</b>" in stats._repr_html_()


def test_wait_result_counts_and_failures() -> None:
    result = WaitResult({1: JobStatus.COMPLETED, 2: JobStatus.FAILED, 3: "SKIPPED"})
    assert result.counts == {"COMPLETED": 1, "FAILED": 1, "SKIPPED": 1}
    assert not result.ok and result.failed == [2]
    assert repr(result) == "WaitResult(3 jobs: completed 1, failed 1, skipped 1; failed jobs: [2])"
    assert WaitResult({1: JobStatus.COMPLETED, 2: JobStatus.SKIPPED}).ok

"""Staging no promotion needs is removed: the state machine asks for a lost attempt's
directory (``RemoveStaging``), the loop's helpers remove it — never a directory with a
promotion journal, never a PROMOTING job's — and the tape hashes the paths it records."""

from __future__ import annotations

from pathlib import Path

from casparian_nb.protocol import EventName, StagingRemovalCause
from casparian_nb.sentinel import state as st
from casparian_nb.sentinel._committer import remove_attempt, sweep_staging
from casparian_nb.sinks.staging import JOURNAL, attempt_root, job_dirname
from casparian_nb.tape.redact import Redactor
from tests.unit.test_sentinel_state import join, machine, persists, rec, success


def removals(actions: list[object]) -> list[st.RemoveStaging]:
    return [a for a in actions if isinstance(a, st.RemoveStaging)]


def test_a_lost_worker_has_the_staging_of_each_of_its_attempts_removed() -> None:
    m = machine(max_retries=1)
    m.handle(st.JobsQueued([rec(1), rec(2), rec(3)], 0.0))
    join(m, "a", slots=3)
    success(m, 3)  # PROMOTING: its staging is the committer's, never removed here
    m.handle(st.CancelRequested(2, "r", 0.5))
    acts = m.handle(st.WorkerGone("a", "worker process 100 exited", 1.0))
    assert removals(acts) == [st.RemoveStaging(1, "1", 1), st.RemoveStaging(2, "2", 1)]
    join(m, "b", now=1.0)
    assert m.jobs[1].attempt == 2  # the next attempt stages elsewhere
    # lost again, out of retries: FAILED, and its second attempt's staging goes too
    acts = m.handle(st.WorkerGone("b", "gone again", 2.0))
    assert persists(acts, st.FailJob) and removals(acts) == [st.RemoveStaging(1, "1", 2)]


def test_a_clean_goodbye_removes_what_its_unfinished_attempts_left() -> None:
    m = machine()
    m.handle(st.JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = m.handle(st.WorkerGone("a", "worker said goodbye", 1.0, graceful=True))
    assert removals(acts) == [st.RemoveStaging(1, "1", 1)]


def staged_dir(staging: Path, attempt: int, job: str, *, journal: bool = False) -> Path:
    d = attempt_root(staging, attempt) / job_dirname(job)
    d.mkdir(parents=True)
    (d / "out.parquet").write_bytes(b"PAR1")
    if journal:
        (d / JOURNAL).write_text("{}")
    return d


def test_remove_attempt_removes_exactly_that_attempt(tmp_path: Path) -> None:
    lost = staged_dir(tmp_path, 1, "7")
    other_attempt = staged_dir(tmp_path, 2, "7")
    other_job = staged_dir(tmp_path, 1, "8")
    assert remove_attempt(tmp_path, 1, "7") == str(lost)
    assert not lost.exists() and other_attempt.exists() and other_job.exists()
    assert remove_attempt(tmp_path, 1, "7") is None  # nothing left: nothing to record


def test_remove_attempt_never_touches_a_promotion_or_a_symlink(tmp_path: Path) -> None:
    promoting = staged_dir(tmp_path, 1, "7", journal=True)
    assert remove_attempt(tmp_path, 1, "7") is None and (promoting / JOURNAL).exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (attempt_root(tmp_path, 1) / job_dirname("9")).symlink_to(outside)
    assert remove_attempt(tmp_path, 1, "9") is None and (outside / "keep.txt").exists()


def test_sweep_keeps_promoting_jobs_and_journals(tmp_path: Path) -> None:
    needed = staged_dir(tmp_path, 1, "1")
    journal = staged_dir(tmp_path, 1, "2", journal=True)
    stale = staged_dir(tmp_path, 2, "3")
    assert sweep_staging(tmp_path, [str(needed)]) == [str(stale)]
    assert needed.exists() and journal.exists() and not stale.exists()


def test_the_tape_hashes_the_removed_path() -> None:
    path = "/home/someone/.casparian/staging/attempt-1/12-0123456789abcdef"
    out = Redactor(b"s" * 32).payload(EventName.STAGING_REMOVED, {
        "job_id": 12, "attempt": 1, "path": path, "cause": StagingRemovalCause.WORKER_LOST})
    assert out["job_id"] == 12 and out["attempt"] == 1 and out["cause"] == "worker_lost"
    assert out["path"] != path and len(out["path"]) == 16

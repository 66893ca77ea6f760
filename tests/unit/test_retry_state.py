"""The state machine's side of ``RetryJobs`` (pure: no I/O): which finished jobs go back to
the queue as new attempts, which are refused and why, and what is persisted and published."""

from __future__ import annotations

from casparian_nb.protocol import Dispatch, EventName, JobStatus, Retried
from casparian_nb.sentinel import state as st
from tests.unit.test_sentinel_state import join, machine, published, rec


def retry(m: st.SentinelState, *candidates: st.RetryCandidate, missing: tuple[int, ...] = (),
          now: float = 5.0) -> tuple[list[st.Action], Retried]:
    actions = m.handle(st.RetryRequested(list(candidates), list(missing), "req-1", now))
    [reply] = [a for a in actions if isinstance(a, st.Reply)]
    assert reply.request_id == "req-1" and isinstance(reply.message, Retried)
    return actions, reply.message


def test_failed_and_aborted_jobs_are_requeued_as_the_next_attempt_with_fresh_budgets() -> None:
    m = machine(manual_retry_limit=2)
    failed = rec(1, attempt=3, retry_count=2, host_kills=1)
    aborted = rec(2, attempt=1)
    actions, reply = retry(m, st.RetryCandidate(failed, JobStatus.FAILED, 0, "TransientError: x"),
                           st.RetryCandidate(aborted, JobStatus.ABORTED, 1))
    assert reply.job_ids == [1, 2] and reply.attempts == {"1": 4, "2": 2} and not reply.refused
    assert [a for a in actions if isinstance(a, st.RetryJob)] == [st.RetryJob(1), st.RetryJob(2)]
    events = published(actions, EventName.JOB_RETRIED)
    assert [(e.data["job_id"], e.data["attempt"], e.data["error"]) for e in events] == [
        (1, 4, "TransientError: x"), (2, 2, "ABORTED")]
    assert (failed.retry_count, failed.host_kills) == (0, 0)
    assert m.queued_count() == 2
    dispatched = join(m, "w1", slots=2, now=6.0)
    sent = [a.message for a in dispatched if isinstance(a, st.Send)]
    assert [(d.job.job_id, d.attempt) for d in sent if isinstance(d, Dispatch)] == [
        ("1", 4), ("2", 2)]


def test_refusals_say_why_and_change_nothing() -> None:
    m = machine(manual_retry_limit=1)
    m.handle(st.JobsQueued([rec(7)], 0.0))  # still queued
    actions, reply = retry(
        m, st.RetryCandidate(rec(7), JobStatus.FAILED, 0),
        st.RetryCandidate(rec(8, attempt=1), JobStatus.COMPLETED, 0),
        st.RetryCandidate(rec(9, attempt=2), JobStatus.FAILED, 1), missing=(10,))
    assert reply.job_ids == []
    assert set(reply.refused) == {"7", "8", "9", "10"}
    assert "not finished" in reply.refused["7"]
    assert "COMPLETED" in reply.refused["8"]
    assert "manual_retry_limit 1" in reply.refused["9"]
    assert "does not exist" in reply.refused["10"]
    assert not [a for a in actions if isinstance(a, st.RetryJob | st.Publish)]
    assert m.queued_count() == 1


def test_a_job_whose_plugin_changed_is_not_retried_but_resubmitted() -> None:
    m = machine()
    _, reply = retry(m, st.RetryCandidate(rec(3, attempt=1), JobStatus.FAILED, 0,
                                          plugin_unchanged=False))
    assert reply.job_ids == [] and "plugin changed since it was submitted" in reply.refused["3"]
    assert m.queued_count() == 0

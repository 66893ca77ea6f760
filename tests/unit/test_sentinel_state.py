"""The sentinel's pure state machine: every decision, no sockets, no DB, no clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from casparian_nb.protocol import (
    Abort,
    AbortCause,
    CancelResult,
    Dispatch,
    ErrorKind,
    EventName,
    JobSpec,
    Receipt,
)
from casparian_nb.sentinel import state as st
from casparian_nb.sentinel.state import (
    CancelRequested,
    Discard,
    JobRec,
    JobsQueued,
    JobStarted,
    Persist,
    Promote,
    PromotionFinished,
    Publish,
    ReceiptReceived,
    Reply,
    Send,
    SentinelState,
    Tick,
    WorkerGone,
    WorkerHeartbeat,
    WorkerJoined,
)

STAGED = {"job_id": "x", "sink": "parquet:///tmp/out", "staging_dir": "/tmp/s",
          "outputs": [{"output": "out", "table": "out", "rows": 3, "path": "/tmp/s/out.parquet",
                       "schema": [["n", "int64"]]}]}
EMPTY = {**STAGED, "outputs": []}


def rec(job_id: int, priority: int = 0, **kw: Any) -> JobRec:
    spec = JobSpec(job_id=str(job_id), plugin_name="p", plugin_name_declared=True,
                   parser_version="1", input_file=f"/in/{job_id}", sink="parquet:///tmp/out",
                   plugin_path="/p.py", timeout_s=kw.get("timeout_s"))
    return JobRec(id=job_id, priority=priority, spec=spec, plan_json="[]", **kw)


def reply_of(actions: list[Any]) -> CancelResult:
    message = next(a for a in actions if isinstance(a, Reply)).message
    assert isinstance(message, CancelResult)
    return message


def aborts(actions: list[Any]) -> list[Abort]:
    return [a.message for a in sends(actions, "Abort") if isinstance(a.message, Abort)]


def receipt_event(job_id: int, worker_id: str, attempt: int, status: str, now: float,
                  **data: Any) -> ReceiptReceived:
    """A ReceiptReceived as the worker socket makes it, from a Receipt's fields."""
    message = msgspec.convert({"job_id": str(job_id), "status": status, "attempt": attempt,
                               "worker_id": worker_id, **data}, Receipt)
    return ReceiptReceived(job_id, worker_id, attempt, message.status, message, now)


def machine(**kw: Any) -> SentinelState:
    kw.setdefault("max_retries", 2)
    kw.setdefault("retry_backoff", 1.0)
    kw.setdefault("worker_timeout", 10.0)
    kw.setdefault("timeout_grace", 2.0)
    return SentinelState(**kw)


def join(m: SentinelState, wid: str, slots: int = 1, now: float = 0.0,
         prefetch: int = 0) -> list[Any]:
    return m.handle(WorkerJoined(wid, wid.encode(), slots, 100, now, prefetch))


def sends(actions: list[Any], type_: str = "Dispatch") -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and a.type == type_]


def dispatched(actions: list[Any]) -> dict[int, str]:
    """job id -> worker id of the Dispatch sends."""
    return {int(a.message.job.job_id): a.worker_id for a in sends(actions)
            if isinstance(a.message, Dispatch)}


def persists(actions: list[Any], op: type[Persist] | None = None) -> list[Persist]:
    """The store writes among ``actions``, or only those of type ``op``."""
    return [a for a in actions if isinstance(a, op or Persist)]


def published(actions: list[Any], name: EventName) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and a.name == name]


def receipt(m: SentinelState, job_id: int, status: str, now: float = 1.0, **data: Any) -> list[Any]:
    job = m.jobs[job_id]
    assert job.worker_id is not None
    return m.handle(receipt_event(job_id, job.worker_id, job.attempt, status, now, **data))


def success(m: SentinelState, job_id: int, now: float = 1.0) -> list[Any]:
    return receipt(m, job_id, "SUCCESS", now, staged=STAGED, rows={"out": 3},
                   source_hash="h", host_pid=42)


def complete(m: SentinelState, job_id: int, now: float = 2.0) -> list[Any]:
    acts = success(m, job_id, now)
    return acts + m.handle(PromotionFinished(job_id, True, [], None, now))


# -- dispatch ------------------------------------------------------------------------------

def test_dispatch_fills_free_slots_across_workers() -> None:
    m = machine()
    m.handle(JobsQueued([rec(i) for i in range(1, 8)], 0.0))
    acts = join(m, "a", slots=2) + join(m, "b", slots=3)
    where = dispatched(acts)
    assert len(where) == 5
    assert sorted(where.values()).count("a") == 2 and sorted(where.values()).count("b") == 3
    assert m.queued_count() == 2
    # every dispatch is claimed in the DB and announced
    assert len(persists(acts, st.ClaimJob)) == 5 and len(published(acts, EventName.JOB_DISPATCHED)) == 5
    # a receipt frees exactly one slot, which takes the next job at once
    first_a = next(j for j, w in where.items() if w == "a")
    acts = complete(m, first_a)
    assert list(dispatched(acts).values()) == ["a"]
    assert m.queued_count() == 1


def test_no_dispatch_without_workers_and_prefetch_adds_capacity() -> None:
    m = machine()
    assert m.handle(JobsQueued([rec(1), rec(2), rec(3)], 0.0)) == []
    acts = join(m, "a", slots=1, prefetch=1)
    assert len(dispatched(acts)) == 2  # one running + one waiting in the worker's backlog


def test_priority_order_then_fifo() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1, 0), rec(2, 5), rec(3, 0), rec(4, 9), rec(5, 5)], 0.0))
    order = []
    join(m, "a")
    acts = m.handle(Tick(0.0))  # nothing new
    assert not dispatched(acts)
    order.append(next(iter(m.workers["a"].running)))
    for _ in range(4):
        acts = complete(m, order[-1])
        order += list(dispatched(acts))
    assert order == [4, 2, 5, 1, 3]


def test_dispatch_payload_carries_attempt_and_timeout() -> None:
    m = machine(default_timeout=30.0)
    m.handle(JobsQueued([rec(1), rec(2, timeout_s=1.5)], 0.0))
    acts = join(m, "a", slots=2)
    jobs = {int(s.message.job.job_id): s.message for s in sends(acts)
            if isinstance(s.message, Dispatch)}
    assert jobs[1].attempt == 1 and jobs[1].timeout_s == 30.0
    assert jobs[2].timeout_s == 1.5
    assert jobs[1].job.plugin_name == "p" and jobs[1].job.input_file == "/in/1"


# -- completion ------------------------------------------------------------------------------

def test_success_promotes_then_completes_once() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = success(m, 1)
    staged = persists(acts, st.RecordStaged)
    assert staged and staged[0].rows == {"out": 3}
    # the receipt named the host: started is recorded without a JobStarted message
    assert persists(acts, st.MarkStarted)[0].host_pid == 42
    assert next(a for a in acts if isinstance(a, Promote)).job_id == 1
    assert m.jobs[1].status == "PROMOTING"
    acts = m.handle(PromotionFinished(1, True, [{"output": "out", "table": "out", "rows": 3,
                                                  "uri": "file:///x"}], None, 2.0))
    done = persists(acts, st.CompleteJob)
    assert done and done[0].outputs == {"out": 3} and done[0].source_hash == "h"
    assert published(acts, EventName.JOB_COMPLETED)[0].data["rows"] == 3
    assert len(published(acts, EventName.MATERIALIZATION_RECORDED)) == 1
    assert 1 not in m.jobs
    # a duplicate PromotionFinished changes nothing
    assert m.handle(PromotionFinished(1, True, [], None, 3.0)) == []


@pytest.mark.parametrize(("declared", "extra"), [
    (True, {}), (False, {"plugin_name_source": "file"}), (None, {"plugin_name_source": "file"}),
])  # None: a spec that does not say
def test_events_say_when_the_plugin_name_is_the_file_stem(declared: bool | None,
                                                          extra: dict[str, str]) -> None:
    """JobDispatched and JobCompleted flag an undeclared plugin name (tape redaction hashes
    it); a spec that does not say is treated as undeclared (the safe side)."""
    job = rec(1)
    fields = {f: getattr(job.spec, f) for f in job.spec.__struct_fields__}
    fields.pop("plugin_name_declared")
    if declared is not None:
        fields["plugin_name_declared"] = declared
    job.spec = JobSpec(**fields)
    assert st.plugin_name_fields(job.spec) == {"plugin_name": "p", **extra}
    m = machine()
    m.handle(JobsQueued([job], 0.0))
    acts = join(m, "a") + complete(m, 1)
    for name in ("JobDispatched", "JobCompleted"):
        data = published(acts, name)[0].data
        assert data["plugin_name"] == "p"
        assert {k: data[k] for k in extra} == extra and ("plugin_name_source" in data) == bool(extra)


def test_a_job_that_staged_nothing_completes_without_a_promotion() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = receipt(m, 1, "SUCCESS", staged=EMPTY, rows={}, source_hash="h", host_pid=1)
    assert not [a for a in acts if isinstance(a, Promote)] and not persists(acts, st.RecordStaged)
    assert [a for a in acts if isinstance(a, Discard)] == [Discard(EMPTY)]
    assert persists(acts, st.CompleteJob)[0].outputs == {}
    assert published(acts, EventName.JOB_COMPLETED) and 1 not in m.jobs


def test_promotion_failure_fails_the_job_permanently() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    success(m, 1)
    acts = m.handle(PromotionFinished(1, False, [], "mode=error: output exists", 2.0))
    failed = persists(acts, st.FailJob)
    assert failed and "mode=error" in failed[0].error
    assert persists(acts, st.DeadLetter)
    assert 1 not in m.jobs


def test_job_started_is_recorded_and_published() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = m.handle(JobStarted(1, "a", 4242, 0.5))
    assert persists(acts, st.MarkStarted)[0] == st.MarkStarted(job_id=1, host_pid=4242)
    assert published(acts, EventName.JOB_STARTED)[0].data["host_pid"] == 4242
    # the receipt then does not record the start a second time
    assert not persists(success(m, 1), st.MarkStarted)
    # a JobStarted from a worker that does not run the job is ignored
    m.handle(JobsQueued([rec(2)], 1.0))
    assert m.handle(JobStarted(2, "zzz", 1, 1.0)) == []


# -- failures, retries, dead letter -------------------------------------------------------

def test_transient_failure_retries_with_exponential_backoff_then_dead_letters() -> None:
    m = machine(max_retries=2, retry_backoff=1.0)
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    err = {"ename": "TransientError", "evalue": "flaky", "kind": "transient"}
    acts = receipt(m, 1, "FAILED", 10.0, error=err)
    requeue = persists(acts, st.RequeueJob)[0]
    assert requeue.retry_count == 1 and requeue.scheduled_at == 11.0
    assert requeue.error_kind == ErrorKind.TRANSIENT and requeue.host_kills is None
    assert published(acts, EventName.JOB_RETRIED)[0].data["delay_ms"] == 1000
    assert not dispatched(acts)  # backoff: not before 11.0
    assert m.next_wakeup() == 11.0
    assert not dispatched(m.handle(Tick(10.9)))
    acts = m.handle(Tick(11.0))
    assert dispatched(acts) == {1: "a"} and m.jobs[1].attempt == 2
    acts = receipt(m, 1, "FAILED", 20.0, error=err)
    assert persists(acts, st.RequeueJob)[0].scheduled_at == 22.0  # doubled
    m.handle(Tick(22.0))
    acts = receipt(m, 1, "FAILED", 30.0, error=err)  # third failure: out of retries
    assert persists(acts, st.FailJob)[0].error_kind == ErrorKind.TRANSIENT
    dead = persists(acts, st.DeadLetter)[0]
    assert dead.reason == "max_retries_exceeded" and "flaky" in dead.error
    assert published(acts, EventName.JOB_FAILED)[0].data["retry_count"] == 2
    assert 1 not in m.jobs


def test_permanent_failure_fails_at_once() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = receipt(m, 1, "FAILED", error={"ename": "PermanentError", "evalue": "bad",
                                          "kind": "permanent", "traceback": "tb"})
    assert not persists(acts, st.RequeueJob)
    assert persists(acts, st.FailJob)[0].traceback == "tb"
    assert persists(acts, st.DeadLetter)[0].reason == "permanent_error"


def killed(signal: int = 9, pid: int = 4242) -> dict[str, Any]:
    """The error a worker's pool reports for a plugin host killed by ``signal``."""
    return {"ename": "PluginHostKilled", "kind": "host_killed", "signal": signal,
            "evalue": f"plugin host pid {pid} was killed by SIGKILL while running the job"}


def test_a_killed_host_reruns_the_job_at_once_on_its_own_budget() -> None:
    m = machine(max_retries=0, host_kill_retries=3)  # no ordinary retry to spend
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    for n in (1, 2):
        acts = receipt(m, 1, "FAILED", 10.0 * n, error=killed())
        requeue = persists(acts, st.RequeueJob)[0]
        assert (requeue.host_kills, requeue.retry_count, requeue.reason) == (n, 0, "host_killed")
        assert requeue.error_kind == ErrorKind.HOST_KILLED
        assert requeue.scheduled_at == 10.0 * n  # no backoff
        assert requeue.error.startswith("PluginHostKilled: plugin host pid 4242 was killed")
        event = published(acts, EventName.JOB_RETRIED)[0].data
        assert (event["reason"], event["error_kind"]) == ("host_killed", ErrorKind.HOST_KILLED)
        assert dispatched(acts) == {1: "a"} and m.jobs[1].attempt == n + 1
    acts = complete(m, 1, 30.0)
    assert persists(acts, st.CompleteJob) and 1 not in m.jobs


def test_a_host_killed_past_the_limit_fails_the_job_naming_the_signal_and_count() -> None:
    m = machine(host_kill_retries=3)
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    for n in range(1, 4):
        assert persists(receipt(m, 1, "FAILED", float(n), error=killed()), st.RequeueJob)
    acts = receipt(m, 1, "FAILED", 4.0, error=killed())
    fail = persists(acts, st.FailJob)[0]
    assert fail.error == "PluginHostKilled: plugin host killed by SIGKILL 4 times (limit 3)"
    assert fail.error_kind == ErrorKind.HOST_KILLED and fail.host_kills == 4
    assert persists(acts, st.DeadLetter)[0].reason == "host_kill_retries_exceeded"
    event = published(acts, EventName.JOB_FAILED)[0].data
    assert event["error_kind"] == ErrorKind.HOST_KILLED and event["retry_count"] == 0
    assert 1 not in m.jobs


def test_host_kills_carry_over_a_restart_and_a_zero_limit_fails_at_once() -> None:
    m = machine(host_kill_retries=2)
    m.handle(JobsQueued([rec(1, host_kills=2)], 0.0))  # as a restarted sentinel reads it back
    join(m, "a")
    fail = persists(receipt(m, 1, "FAILED", error=killed(signal=11)), st.FailJob)[0]
    assert fail.error == "PluginHostKilled: plugin host killed by SIGSEGV 3 times (limit 2)"
    m = machine(host_kill_retries=0)
    m.handle(JobsQueued([rec(2)], 0.0))
    join(m, "a")
    fail = persists(receipt(m, 2, "FAILED", error=killed()), st.FailJob)[0]
    assert fail.error == "PluginHostKilled: plugin host killed by SIGKILL once (limit 0)"


def test_a_killed_host_of_a_cancelled_job_ends_it_aborted() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    m.handle(CancelRequested(1, "r1", 0.5))
    acts = receipt(m, 1, "FAILED", error=killed())
    assert persists(acts, st.AbortJob) and not persists(acts, st.RequeueJob)


def test_capacity_rejection_requeues_without_spending_a_retry() -> None:
    m = machine()
    m.handle(JobsQueued([rec(i) for i in range(1, 5)], 0.0))
    acts = join(m, "liar", slots=3)  # advertises 3, really has 1
    assert len(dispatched(acts)) == 3
    running = sorted(m.workers["liar"].running)
    acts = receipt(m, running[1], "REJECTED", 0.1)
    req = persists(acts, st.RequeueJob)[0]
    assert req.retry_count == 0 and req.reason == "capacity"
    assert m.jobs[running[1]].retry_count == 0 and m.jobs[running[1]].status == "QUEUED"
    # the worker is believed to hold what it has now: no re-dispatch into the same hole
    assert not dispatched(acts)
    acts = receipt(m, running[2], "REJECTED", 0.2)
    assert not dispatched(acts)
    assert m.workers["liar"].free == 0
    # its real job completes: exactly one slot opens
    acts = complete(m, running[0])
    assert len(dispatched(acts)) == 1
    # a heartbeat reporting the real capacity keeps the cap
    m.handle(WorkerHeartbeat("liar", 3.0, capacity=1))
    assert m.workers["liar"].free == 0
    assert all(j.retry_count == 0 for j in m.jobs.values())


def test_heartbeat_with_full_capacity_lifts_the_cap() -> None:
    m = machine()
    join(m, "a", slots=2)
    m.workers["a"].cap = 1
    m.handle(WorkerHeartbeat("a", 1.0, capacity=2))
    assert m.workers["a"].cap is None and m.workers["a"].free == 2


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_queued_is_aborted_at_once() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1), rec(2)], 0.0))
    acts = m.handle(CancelRequested(2, "r1", 1.0))
    assert persists(acts, st.AbortJob)[0].job_id == 2
    reply = reply_of(acts)
    assert reply.success and reply.state == "ABORTED"
    assert m.queued_count() == 1
    # it is never dispatched
    assert dispatched(join(m, "a", slots=2)) == {1: "a"}


def test_cancel_running_sends_abort_and_waits_for_the_worker() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = m.handle(CancelRequested(1, "r1", 1.0))
    assert persists(acts, st.RequestCancel)
    abort = sends(acts, "Abort")
    assert abort and abort[0].worker_id == "a" and aborts(acts)[0].job_id == "1"
    assert reply_of(acts).state == "ABORTING"
    assert m.jobs[1].status == "RUNNING"  # "aborting…" until the worker confirms
    again = m.handle(CancelRequested(1, "r2", 1.1))
    assert reply_of(again).state == "ABORTING"
    assert not sends(again, "Abort")
    acts = receipt(m, 1, "ABORTED", 1.2, reason="cancelled by user")
    assert persists(acts, st.AbortJob)[0].reason == "cancelled by user"
    assert 1 not in m.jobs


def test_success_receipt_after_cancel_is_aborted_and_staged_discarded() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    m.handle(CancelRequested(1, "r1", 1.0))
    acts = success(m, 1, 1.1)
    assert next(a for a in acts if isinstance(a, Discard)).staged == STAGED
    assert not [a for a in acts if isinstance(a, Promote)]
    assert persists(acts, st.AbortJob) and not persists(acts, st.RecordStaged)
    assert 1 not in m.jobs


def test_failed_receipt_after_cancel_is_aborted_not_retried() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    m.handle(CancelRequested(1, "r1", 1.0))
    acts = receipt(m, 1, "FAILED", 1.1, error={"ename": "T", "evalue": "x", "kind": "transient"})
    assert persists(acts, st.AbortJob) and not persists(acts, st.RequeueJob)


def test_cancel_after_success_is_completing() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    success(m, 1)
    acts = m.handle(CancelRequested(1, "r1", 1.5))
    reply = reply_of(acts)
    assert not reply.success and reply.state == "COMPLETING"
    assert "completing" in reply.message
    assert not sends(acts, "Abort") and not persists(acts)
    acts = m.handle(PromotionFinished(1, True, [], None, 2.0))
    assert persists(acts, st.CompleteJob)


def test_cancel_of_unknown_job() -> None:
    acts = machine().handle(CancelRequested(99, "r", 0.0))
    assert reply_of(acts).success is False


def test_cancel_running_without_confirmation_ends_after_worker_timeout() -> None:
    m = machine(worker_timeout=5.0)
    m.handle(JobsQueued([rec(1), rec(2)], 0.0))
    join(m, "a")
    m.handle(CancelRequested(1, "r", 1.0))
    m.handle(WorkerHeartbeat("a", 5.0))
    assert 1 in m.jobs
    m.handle(WorkerHeartbeat("a", 6.1))
    acts = m.handle(Tick(6.1))
    assert "did not confirm" in persists(acts, st.AbortJob)[0].reason
    assert dispatched(acts) == {2: "a"}  # the slot is given up


# -- stale receipts, lost workers ---------------------------------------------------------

def test_stale_receipts_are_discarded() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    join(m, "b")
    assert m.jobs[1].worker_id == "a"
    m.handle(WorkerGone("a", "killed", 1.0))
    assert m.jobs[1].worker_id == "b" and m.jobs[1].attempt == 2
    # the late SUCCESS of attempt 1 from the lost worker: discarded, nothing promoted
    acts = m.handle(receipt_event(1, "a", 1, "SUCCESS", 2.0, staged=STAGED))
    assert acts == [Discard(STAGED)]
    # a receipt naming the wrong attempt on the right worker: also discarded
    acts = m.handle(receipt_event(1, "b", 1, "SUCCESS", 2.0, staged=STAGED))
    assert acts == [Discard(STAGED)]
    assert m.jobs[1].status == "RUNNING"
    # and one for a job that is already finished
    complete(m, 1)
    assert m.handle(receipt_event(1, "b", 2, "SUCCESS", 3.0, staged=STAGED)) == \
        [Discard(STAGED)]
    assert m.handle(receipt_event(1, "b", 2, "FAILED", 3.0)) == []


def test_lost_worker_requeues_its_jobs_spending_a_retry() -> None:
    m = machine(max_retries=1)
    m.handle(JobsQueued([rec(1), rec(2), rec(3)], 0.0))
    join(m, "a", slots=2)
    assert m.workers["a"].running == {1, 2}
    m.handle(CancelRequested(2, "r", 0.5))
    acts = m.handle(WorkerGone("a", "worker process 100 exited", 1.0))
    lost = published(acts, EventName.WORKER_LOST)[0].data
    assert lost["requeued_job_ids"] == [1]
    assert persists(acts, st.RequeueJob)[0].retry_count == 1
    assert persists(acts, st.AbortJob)[0].job_id == 2  # the cancelled one
    assert m.jobs[1].status == "QUEUED" and "a" not in m.workers
    join(m, "b", slots=2, now=1.0)
    assert m.jobs[1].worker_id == "b"
    # losing it again exceeds max_retries=1: failed and dead-lettered
    acts = m.handle(WorkerGone("b", "gone again", 2.0))
    assert persists(acts, st.FailJob)[0].job_id in (1, 3)
    assert any(p.reason == "max_retries_exceeded" for p in persists(acts, st.DeadLetter))


def test_graceful_goodbye_requeues_without_spending_a_retry() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = m.handle(WorkerGone("a", "worker said goodbye", 1.0, graceful=True))
    assert persists(acts, st.RequeueJob)[0].retry_count == 0
    assert published(acts, EventName.WORKER_LOST)  # it had a job: that one went back to the queue
    join(m, "b", now=1.0)
    assert m.jobs[1].worker_id == "b"
    complete(m, 1)
    acts = m.handle(WorkerGone("b", "worker said goodbye", 3.0, graceful=True))
    assert published(acts, EventName.WORKER_LEFT) and not published(acts, EventName.WORKER_LOST)


def test_worker_shutdown_abort_requeues_without_spending_a_retry() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = receipt(m, 1, "ABORTED", reason="shutdown", cause=AbortCause.SHUTDOWN)
    req = persists(acts, st.RequeueJob)[0]
    assert req.retry_count == 0 and req.reason == "worker_shutdown"
    assert not persists(acts, st.AbortJob)


def test_the_abort_cause_decides_not_the_reason_text() -> None:
    """A plugin may abort with any words; only the typed cause requeues or names a timeout."""
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = receipt(m, 1, "ABORTED", reason="shutdown")
    assert persists(acts, st.AbortJob)[0].reason == "shutdown"
    assert not persists(acts, st.RequeueJob)


def test_silent_worker_is_lost_after_worker_timeout() -> None:
    m = machine(worker_timeout=3.0)
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a", now=0.0)
    join(m, "b", now=0.0)
    m.handle(WorkerHeartbeat("b", 2.9))
    assert not published(m.handle(Tick(2.9)), EventName.WORKER_LOST)
    m.handle(WorkerHeartbeat("b", 3.5))
    acts = m.handle(Tick(3.5))
    assert [p.data["worker_id"] for p in published(acts, EventName.WORKER_LOST)] == ["a"]
    assert dispatched(acts) == {1: "b"}


def test_rejoining_worker_loses_what_it_ran() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1)], 0.0))
    join(m, "a")
    acts = join(m, "a", now=1.0)  # restarted under the same id
    assert published(acts, EventName.WORKER_LOST)
    assert m.jobs[1].attempt == 2 and m.jobs[1].worker_id == "a"


# -- timeouts --------------------------------------------------------------------------------

def test_worker_reported_timeout_is_aborted_with_reason() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1, timeout_s=1.0)], 0.0))
    join(m, "a")
    acts = receipt(m, 1, "ABORTED", reason="timeout: job ran longer than 1s", cause=AbortCause.TIMEOUT)
    assert persists(acts, st.AbortJob)[0].reason == "timed out after 1s"
    assert not persists(acts, st.RequeueJob)


def test_sentinel_backstop_aborts_a_job_the_worker_did_not_time_out() -> None:
    m = machine(timeout_grace=2.0, worker_timeout=5.0, default_timeout=10.0)
    m.handle(JobsQueued([rec(1, timeout_s=1.0), rec(2)], 0.0))
    join(m, "a", slots=2)
    m.handle(JobStarted(1, "a", 7, 0.1))
    m.handle(JobStarted(2, "a", 8, 0.1))
    assert not sends(m.handle(Tick(3.0)), "Abort")  # 1 + 2 s grace not over yet
    acts = m.handle(Tick(3.2))
    abort = aborts(acts)
    assert [a.job_id for a in abort] == ["1"]
    assert abort[0].reason.startswith("timeout")
    assert not sends(m.handle(Tick(3.3)), "Abort")  # sent once
    # the worker confirms: ABORTED "timed out"
    acts = receipt(m, 1, "ABORTED", 3.4, reason=abort[0].reason, cause=abort[0].cause)
    assert persists(acts, st.AbortJob)[0].reason == "timed out after 1s"


def test_backstop_gives_up_when_the_worker_never_confirms() -> None:
    m = machine(timeout_grace=1.0, worker_timeout=2.0)
    m.handle(JobsQueued([rec(1, timeout_s=1.0)], 0.0))
    join(m, "a")
    m.handle(JobStarted(1, "a", 7, 0.0))
    m.handle(WorkerHeartbeat("a", 2.5))
    assert sends(m.handle(Tick(2.5)), "Abort")
    m.handle(WorkerHeartbeat("a", 4.4))
    assert 1 in m.jobs
    m.handle(WorkerHeartbeat("a", 4.6))
    acts = m.handle(Tick(4.6))
    assert "did not confirm" in persists(acts, st.AbortJob)[0].reason
    assert m.workers["a"].free == 1


def test_no_backstop_for_a_job_waiting_in_the_worker_backlog() -> None:
    m = machine(timeout_grace=1.0)
    m.handle(JobsQueued([rec(1, timeout_s=1.0)], 0.0))
    join(m, "a")
    assert not sends(m.handle(Tick(100.0)), "Abort")  # never reported started


# -- restart re-adoption ---------------------------------------------------------------------

def test_promoting_jobs_from_a_restart_are_not_dispatched() -> None:
    m = machine()
    adopted = rec(1)
    adopted.status = "PROMOTING"
    adopted.result = {"rows": 2, "outputs": {"out": 2}, "quarantine_rows": 0,
                      "duration_ms": 1.0, "source_hash": "h"}
    m.handle(JobsQueued([adopted, rec(2)], 0.0))
    assert m.queued_count() == 1
    assert dispatched(join(m, "a", slots=2)) == {2: "a"}
    acts = m.handle(PromotionFinished(1, True, [], None, 1.0))
    assert persists(acts, st.CompleteJob)[0].outputs == {"out": 2}


def test_jobs_waiting_for_a_retry_after_restart_keep_their_time() -> None:
    m = machine()
    m.handle(JobsQueued([rec(1, ready_at=50.0)], 10.0))
    assert not dispatched(join(m, "a", now=10.0))
    assert m.next_wakeup() == 50.0
    assert not dispatched(m.handle(WorkerHeartbeat("a", 49.9)))
    assert dispatched(m.handle(Tick(50.0))) == {1: "a"}


def test_paused_machine_dispatches_nothing() -> None:
    m = machine()
    m.paused = True
    m.handle(JobsQueued([rec(1)], 0.0))
    assert not dispatched(join(m, "a"))


@pytest.mark.parametrize("n", [1000])
def test_many_jobs_dispatch_in_priority_order(n: int) -> None:
    m = machine()
    m.handle(JobsQueued([rec(i, priority=i % 3) for i in range(1, n + 1)], 0.0))
    join(m, "a")
    seen = [next(iter(m.workers["a"].running))]
    while len(seen) < n:
        seen += list(dispatched(complete(m, seen[-1])))
    complete(m, seen[-1])
    prios = [i % 3 for i in seen]
    assert prios == sorted(prios, reverse=True)
    assert m.queued_count() == 0 and not m.jobs


def test_action_types_are_exported() -> None:
    assert st.Action is not None

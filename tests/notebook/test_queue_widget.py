"""The queue widget without a browser: recorded comm messages, front-end played by messages."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from casparian_nb.notebook._scheduling import IOLoopScheduler, ManualScheduler
from casparian_nb.notebook.queue_widget import QueueWidget
from tests.notebook.nb_harness import FakeSource, RecordingComm, frontend_send, job


def _widget(source: FakeSource, **kwargs: Any) -> QueueWidget:
    kwargs.setdefault("scheduler", ManualScheduler())
    kwargs.setdefault("reconcile_every", 0)
    return QueueWidget(source, **kwargs)


def _row(state: dict[str, Any], job_id: int) -> dict[str, Any]:
    return next(r for r in state["rows"] if r["id"] == job_id)


def test_first_page_travels_with_comm_open(comms: list[RecordingComm]) -> None:
    """The initial page and counts are in ``comm_open``; no update is needed to show them."""
    src = FakeSource([job(1, "COMPLETED", rows=10), job(2, "RUNNING", worker_id="w1"), job(3)])
    w = _widget(src)
    state = w.comm.open_data["state"]
    assert [r["id"] for r in state["rows"]] == [3, 2, 1]
    assert state["counts"]["QUEUED"] == 1 and state["counts"]["total"] == 3
    assert _row(state, 2)["worker"] == "w1" and _row(state, 1)["rows"] == 10
    assert _row(state, 3)["cancellable"] and not _row(state, 1)["cancellable"]
    assert w.comm.updates() == []
    w.close()
    assert src.callbacks == []  # close() unsubscribes


def test_cancel_click_calls_controller_and_shows_aborting_until_confirmed(
        comms: list[RecordingComm]) -> None:
    """F10: after a click the row says "aborting…" — never ABORTED — until JobAborted."""
    src = FakeSource([job(7, "RUNNING", worker_id="w1")])
    w = _widget(src)
    frontend_send(w, {"type": "cancel", "job_id": 7})
    assert src.cancelled == [7]
    row = _row(w.comm.merged(), 7)
    assert (row["status"], row["label"], row["cancellable"]) == ("RUNNING", "aborting…", False)

    src.publish("CancelRequested", {"job_id": 7, "state": "RUNNING"})
    src.publish("JobStarted", {"job_id": 7, "worker_id": "w1"})  # late, harmless
    w.flush()
    assert _row(w.comm.merged(), 7)["label"] == "aborting…"
    seen = {r["status"] for u in w.comm.updates() for r in u.get("rows", [])}
    assert "ABORTED" not in seen  # nothing claimed the abort before the sentinel did

    src.publish("JobAborted", {"job_id": 7, "worker_id": "w1", "reason": "cancelled by user",
                               "duration_ms": 12.5})
    w.flush()
    row = _row(w.comm.merged(), 7)
    assert (row["status"], row["label"], row["duration_ms"]) == ("ABORTED", "ABORTED", 12.5)
    assert w.comm.merged()["counts"]["ABORTED"] == 1


def test_refused_cancel_clears_aborting_and_says_why(comms: list[RecordingComm]) -> None:
    src = FakeSource([job(3, "RUNNING")])
    src.cancel_reply = {"success": False, "state": "COMPLETING",
                        "message": "job already finished running"}
    w = _widget(src)
    frontend_send(w, {"type": "cancel", "job_id": 3})
    state = w.comm.merged()
    assert _row(state, 3)["label"] == "RUNNING"
    assert "already finished" in state["message"]
    assert any(_row(u, 3)["label"] == "aborting…" for u in w.comm.updates() if "rows" in u)
    w.close()


def test_cancel_all_queued(comms: list[RecordingComm]) -> None:
    src = FakeSource([job(1), job(2), job(3, "RUNNING")])
    w = _widget(src)
    frontend_send(w, {"type": "cancel_all_queued"})
    assert src.cancel_all_calls == 1
    state = w.comm.merged()
    assert [_row(state, i)["label"] for i in (1, 2, 3)] == ["aborting…", "aborting…", "RUNNING"]
    for i in (1, 2):
        src.publish("JobAborted", {"job_id": i, "reason": "cancelled while queued"})
    w.flush()
    assert w.comm.merged()["counts"]["ABORTED"] == 2
    w.close()


def test_events_update_the_page_in_one_message_per_flush(comms: list[RecordingComm]) -> None:
    """A flush after many events is one ``update`` carrying only what changed."""
    src = FakeSource([job(i) for i in range(1, 6)])
    w = _widget(src)
    for i in range(1, 6):
        src.publish("JobDispatched", {"job_id": i, "worker_id": "w1"}, time.time())
        src.publish("JobCompleted", {"job_id": i, "worker_id": "w1", "rows": i * 10,
                                     "duration_ms": 5.0})
    src.publish("JobQueued", {"job_id": 6, "plugin_name": "orders", "input_file": "/x/new.csv"})
    assert w.comm.updates() == []  # nothing is sent from the publishing thread
    w.flush()
    updates = w.comm.updates()
    assert len(updates) == 1
    assert set(updates[0]) <= {"rows", "counts", "total", "workers"}
    state = w.comm.merged()
    assert state["counts"]["COMPLETED"] == 5 and state["counts"]["QUEUED"] == 1
    assert _row(state, 6)["input"] == "new.csv"
    w.flush()
    assert len(w.comm.updates()) == 1  # nothing changed: nothing sent


def test_failed_job_shows_first_line_of_error_and_retry_requeues(
        comms: list[RecordingComm]) -> None:
    src = FakeSource([job(4, "RUNNING")])
    w = _widget(src)
    src.publish("JobFailed", {"job_id": 4, "error": "TransientError: flaky\nmore", "will_retry": True})
    src.publish("JobRetried", {"job_id": 4, "retry_count": 1, "error": "TransientError: flaky"})
    w.flush()
    row = _row(w.comm.merged(), 4)
    assert (row["status"], row["retries"], row["error"]) == ("QUEUED", 1, "TransientError: flaky")
    src.publish("JobFailed", {"job_id": 4, "error": "ValueError: bad row 3", "will_retry": False})
    w.flush()
    assert _row(w.comm.merged(), 4)["status"] == "FAILED"
    src.publish("JobQueued", {"job_id": 4})  # a replayed event cannot undo a terminal state
    w.flush()
    assert _row(w.comm.merged(), 4)["status"] == "FAILED"


def test_a_killed_host_is_told_apart_from_a_plugin_error(comms: list[RecordingComm]) -> None:
    killed = "PluginHostKilled: plugin host pid 7 was killed by SIGKILL while running the job"
    src = FakeSource([job(5, "RUNNING"), job(6, "FAILED", error_message="ValueError: bad",
                                              error_kind="permanent"),
                      job(7, "QUEUED", error_message=killed, error_kind="host_killed",
                          host_kills=2)])
    w = _widget(src)
    src.publish("JobRetried", {"job_id": 5, "retry_count": 0, "error": killed,
                               "error_kind": "host_killed", "reason": "host_killed"})
    w.flush()
    row = _row(w.comm.merged(), 5)
    assert (row["status"], row["retries"], row["host_kills"]) == ("QUEUED", 0, 1)
    assert row["error_kind"] == "host_killed" and row["error"] == killed
    assert row["error_cause"] == "plugin host killed by a signal (not a plugin error)"
    final = "PluginHostKilled: plugin host killed by SIGKILL 4 times (limit 3)"
    src.publish("JobFailed", {"job_id": 5, "error": final, "error_kind": "host_killed",
                              "will_retry": False})
    w.flush()
    row = _row(w.comm.merged(), 5)
    assert (row["status"], row["error"], row["error_kind"]) == ("FAILED", final, "host_killed")
    plugin_error = _row(w.comm.merged(), 6)  # from the state DB
    assert (plugin_error["error_kind"], plugin_error["error_cause"]) == ("permanent",
                                                                        "error (permanent)")
    rerun = _row(w.comm.merged(), 7)  # running again after two killed hosts (state DB)
    assert (rerun["host_kills"], rerun["error_kind"]) == (2, "host_killed")


def test_ten_thousand_jobs_page_sort_filter(comms: list[RecordingComm]) -> None:
    """10,000 jobs: each view change sends one page (small), never the whole list."""
    jobs = [job(i, "COMPLETED" if i % 3 else "FAILED", rows=i, duration_ms=None)
            for i in range(1, 10_001)]
    src = FakeSource(jobs)
    started = time.perf_counter()
    w = _widget(src, limit=25)
    assert time.perf_counter() - started < 2.0
    opened = w.comm.open_data["state"]
    assert len(opened["rows"]) == 25 and len(json.dumps(opened["rows"])) < 15_000

    frontend_send(w, {"type": "view", "offset": 5000})
    state = w.comm.merged()
    assert [r["id"] for r in state["rows"]][:2] == [5000, 4999] and state["total"] == 10_000

    frontend_send(w, {"type": "view", "status": "FAILED", "offset": 0})
    state = w.comm.merged()
    assert state["total"] == 3333 and {r["status"] for r in state["rows"]} == {"FAILED"}

    frontend_send(w, {"type": "view", "status": "", "sort": "rows", "desc": False})
    assert [r["rows"] for r in w.comm.merged()["rows"]][:3] == [1, 2, 3]

    started = time.perf_counter()
    for _ in range(20):
        frontend_send(w, {"type": "view", "sort": "rows", "desc": True, "offset": 25})
        frontend_send(w, {"type": "view", "offset": 50})
    per_view = (time.perf_counter() - started) / 40
    assert per_view < 0.1, f"{per_view * 1000:.0f} ms per view change"
    biggest = max(len(json.dumps(u)) for u in w.comm.updates())
    assert biggest < 20_000, biggest


def test_pump_respects_the_rate_limit(comms: list[RecordingComm]) -> None:
    now = [100.0]
    src = FakeSource([job(1)])
    w = _widget(src, clock=lambda: now[0], interval=0.1)
    src.publish("JobDispatched", {"job_id": 1, "worker_id": "w"})
    w.pump()
    assert w.flushes == 1
    src.publish("JobCompleted", {"job_id": 1, "rows": 1})
    now[0] += 0.05
    w.pump()
    assert w.flushes == 1  # too soon
    now[0] += 0.06
    w.pump()
    assert w.flushes == 2 and w.comm.merged()["counts"]["COMPLETED"] == 1


def test_direct_flushes_do_not_fork_the_timer(comms: list[RecordingComm]) -> None:
    """A flush outside the timer (reconcile, a click) while a timed flush is pending must not
    start a second timer chain: under a steady stream of events the rate stays <= 10/s."""
    now = [100.0]
    src = FakeSource([job(i) for i in range(1, 501)])
    sched = ManualScheduler(clock=lambda: now[0])
    w = _widget(src, scheduler=sched, clock=lambda: now[0], interval=0.1)
    for step in range(200):  # 2 s of events every 10 ms, a direct flush every 0.2 s
        src.publish("JobCompleted", {"job_id": step + 1, "rows": 1})
        if step % 20 == 5:
            w.reconcile()
        now[0] += 0.01
        sched.run_due()
    assert w.flushes <= 2 * 10 + 10, w.flushes  # timed flushes + the 10 direct ones
    w.close()


def test_reconcile_recovers_a_missed_event(comms: list[RecordingComm]) -> None:
    """PUB/SUB may drop events under load; the periodic re-read from the DB catches up."""
    src = FakeSource([job(1, "RUNNING", worker_id="w1")])
    sched = ManualScheduler()
    w = _widget(src, scheduler=sched, reconcile_every=3.0)
    src.jobs[1] = job(1, "COMPLETED", worker_id="w1", rows=5)  # the event never arrived
    w.reconcile()
    assert _row(w.comm.merged(), 1)["status"] == "COMPLETED"
    assert src.snapshots[-1] == [1]
    w.close()


class _SlowSource(FakeSource):
    """A source whose id-snapshot read blocks until released (the DB read in flight)."""

    def __init__(self, jobs: Any) -> None:
        super().__init__(jobs)
        self.reading = threading.Event()
        self.release = threading.Event()
        self.reader_threads: list[str] = []

    def job_snapshot(self, ids: Any = None) -> list[dict[str, Any]]:
        if ids is None:
            return super().job_snapshot(ids)
        self.reader_threads.append(threading.current_thread().name)
        rows = [dict(r) for r in super().job_snapshot(ids)]  # read now: stale later
        self.reading.set()
        assert self.release.wait(10)
        return rows


def _run_until(sched: ManualScheduler, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        sched.run_due()
        time.sleep(0.005)


def test_periodic_reconcile_reads_off_the_widget_thread_and_keeps_newer_events(
        comms: list[RecordingComm]) -> None:
    """The 3 s re-read runs its query on a helper thread (the kernel stays free), merges in
    slices on the widget thread, and a row an event changed while the query ran keeps the
    event's (newer) state; rows no event touched take the snapshot's."""
    now = [0.0]
    jobs = [job(i, "QUEUED") for i in range(1, 2501)]
    src = _SlowSource(jobs)
    sched = ManualScheduler(clock=lambda: now[0])
    w = _widget(src, scheduler=sched, reconcile_every=3.0, clock=lambda: now[0])
    src.jobs[1] = job(1, "COMPLETED", worker_id="w1", rows=5)  # its events were missed
    now[0] = 3.0
    sched.run_due()  # the tick starts the read and returns at once
    assert src.reading.wait(10)
    assert src.reader_threads == ["cf-queue-reconcile"]
    src.publish("JobDispatched", {"job_id": 2, "worker_id": "w2"})  # newer than the read
    w.flush()
    src.release.set()
    _run_until(sched, lambda: not w._reconciling)
    frontend_send(w, {"type": "view", "status": "", "sort": "id", "desc": False, "offset": 0,
                      "limit": 5})
    state = w.comm.merged()
    assert _row(state, 1)["status"] == "COMPLETED"
    assert _row(state, 2)["status"] == "RUNNING" and _row(state, 2)["worker"] == "w2"
    assert state["counts"]["QUEUED"] == 2498
    w.close()


def test_coalescing_on_a_real_ioloop(comms: list[RecordingComm]) -> None:
    """1,000 events published over 100 ms from another thread → at most 2 flushes, all of
    them sent from the loop's thread (never from the publishing thread)."""
    from tornado.ioloop import IOLoop

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        io = IOLoop.current()
        src = FakeSource([job(i) for i in range(1, 501)])
        w = QueueWidget(src, scheduler=IOLoopScheduler(io), reconcile_every=0)

        def produce() -> None:
            for chunk in range(10):
                batch = []
                for i in range(chunk * 50 + 1, chunk * 50 + 51):
                    batch.append(("JobDispatched", {"job_id": i, "worker_id": "w1"}, None))
                    batch.append(("JobCompleted", {"job_id": i, "rows": 1}, None))
                for event in batch:
                    for cb in src.callbacks:
                        cb([event])
                time.sleep(0.01)

        producer = threading.Thread(target=produce, name="events")
        producer.start()
        loop.run_until_complete(asyncio.sleep(0.45))
        producer.join()
        updates = w.comm.updates()
        assert 1 <= len(updates) <= 2, len(updates)
        assert w.flushes == len(updates)
        assert set(w.comm.threads) == {threading.current_thread().name}
        assert w.comm.merged()["counts"]["COMPLETED"] == 500
        w.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("bad", [{"type": "cancel", "job_id": "x"}, {"type": "nope"}, "text"])
def test_malformed_frontend_messages_are_ignored(comms: list[RecordingComm], bad: Any) -> None:
    src = FakeSource([job(1)])
    w = _widget(src)
    frontend_send(w, bad)
    assert src.cancelled == []


def test_missing_values_sort_last_and_offset_follows_a_shrinking_filter(
        comms: list[RecordingComm]) -> None:
    """Queued jobs (no duration) stay at the bottom either way; a filter that leaves fewer
    rows than the current offset moves the view to its last page."""
    jobs = [job(i, "RUNNING") for i in range(1, 61)]
    jobs += [job(61), job(62)]
    src = FakeSource(jobs)
    w = _widget(src, limit=10)
    for i in range(1, 61):
        src.publish("JobCompleted", {"job_id": i, "rows": 1, "duration_ms": float(i)})
    w.flush()
    for desc in (True, False):
        frontend_send(w, {"type": "view", "sort": "duration", "desc": desc, "offset": 0})
        rows = w.comm.merged()["rows"]
        assert rows[0]["duration_ms"] == (60.0 if desc else 1.0)
        frontend_send(w, {"type": "view", "offset": 60})
        assert [r["status"] for r in w.comm.merged()["rows"]] == ["QUEUED", "QUEUED"]
    frontend_send(w, {"type": "view", "status": "QUEUED", "offset": 50})
    state = w.comm.merged()
    assert state["view"]["offset"] == 0 and state["total"] == 2 and len(state["rows"]) == 2


def test_workers_and_requeues_from_worker_events(comms: list[RecordingComm]) -> None:
    """WorkerLost puts its jobs back to QUEUED; a clean WorkerLeft just removes the worker."""
    src = FakeSource([job(1, "RUNNING", worker_id="w1"), job(2, "RUNNING", worker_id="w2")])
    w = _widget(src)
    for wid in ("w1", "w2"):
        src.publish("WorkerJoined", {"worker_id": wid, "slots": 1, "pid": 1})
    src.publish("WorkerLost", {"worker_id": "w1", "requeued_job_ids": [1]})
    src.publish("WorkerLeft", {"worker_id": "w2", "requeued_job_ids": []})
    w.flush()
    state = w.comm.merged()
    assert state["workers"] == 0
    assert (_row(state, 1)["status"], _row(state, 1)["worker"]) == ("QUEUED", None)
    assert _row(state, 2)["status"] == "RUNNING"


def test_sync_agrees_with_the_db_even_before_the_event_arrives(
        comms: list[RecordingComm]) -> None:
    """What ``ctl.wait()`` calls last: the table shows what the state DB says now."""
    src = FakeSource([job(1, "RUNNING")])
    w = _widget(src, clock=lambda: 0.0)  # a frozen clock: pump() would never be due
    src.jobs[1] = job(1, "COMPLETED", rows=3)
    w.sync()
    assert _row(w.comm.merged(), 1)["status"] == "COMPLETED"


def test_a_dispatched_job_says_so_until_its_host_starts(comms: list[RecordingComm]) -> None:
    """F10: a job dispatched into a worker's backlog (prefetch) is RUNNING in the DB but has
    not started; the label says "dispatched" until JobStarted, and the run's start time is the
    host's, not the dispatch's."""
    src = FakeSource([job(1), job(2, "RUNNING", started_at=None, worker_id="w1")])
    w = _widget(src)
    assert _row(w.comm.merged(), 2)["label"] == "dispatched"
    src.publish("JobDispatched", {"job_id": 1, "worker_id": "w1"}, 100.0)
    w.flush()
    row = _row(w.comm.merged(), 1)
    assert (row["status"], row["label"], row["cancellable"]) == ("RUNNING", "dispatched", True)
    src.publish("JobStarted", {"job_id": 1, "worker_id": "w1"}, 104.5)
    w.flush()
    row = _row(w.comm.merged(), 1)
    assert (row["status"], row["label"], row["start"]) == ("RUNNING", "RUNNING", 104.5)
    w.close()


def test_pages_and_counts_match_a_full_scan_on_random_event_streams() -> None:
    """The model keeps an index of unfinished rows and pages by id without a key function;
    every page, count and id list must equal what scanning every row gives."""
    import random

    from casparian_nb.notebook._queue_model import STATUSES, TERMINAL, QueueModel

    rng = random.Random(11)
    names = ["JobQueued", "JobDispatched", "JobStarted", "CancelRequested", "JobCompleted",
             "JobFailed", "JobAborted", "JobRetried", "JobSkipped"]
    for trial in range(30):
        m = QueueModel()
        for step in range(rng.randint(1, 400)):
            jid = rng.randint(1, 120)
            r = rng.random()
            if r < 0.05:
                m.apply("WorkerLost", {"worker_id": "w1", "requeued_job_ids":
                                       rng.sample(range(1, 120), 5)})
            elif r < 0.08:
                m.mark_aborting(rng.sample(range(1, 120), 4), on=rng.random() < 0.7)
            elif r < 0.12:
                m.load([{"id": jid, "status": rng.choice((*STATUSES, "PROMOTING"))}])
            else:
                m.apply(rng.choice(names), {"job_id": jid, "worker_id": "w1",
                                            "will_retry": rng.random() < 0.3, "rows": 3},
                        float(step))
        rows = list(m.rows.values())
        assert set(m.active) == {r.id for r in rows if r.status not in TERMINAL}, trial
        assert sorted(m.active_ids()) == sorted(r.id for r in rows if r.status not in TERMINAL)
        for s in STATUSES:
            assert sorted(m.ids_with_status(s)) == sorted(r.id for r in rows if r.status == s)
        assert m.count_dict()["aborting"] == sum(
            1 for r in rows if r.status not in TERMINAL and (r.aborting or r.cancel_requested))
        for status in ("", "ABORTING", *STATUSES):
            pool = [r for r in rows if (r.label == "aborting…" if status == "ABORTING"
                                        else not status or r.status == status)]
            for desc in (True, False):
                for offset, limit in ((0, 50), (40, 7), (10_000, 25)):
                    total, off, page = m.page(status=status, sort="id", desc=desc,
                                              offset=offset, limit=limit)
                    ids = sorted((r.id for r in pool), reverse=desc)
                    assert total == len(pool)
                    assert off == max(0, min(offset, (total - 1) // limit * limit
                                             if total else 0))
                    assert [p["id"] for p in page] == ids[off:off + limit], (trial, status)


class _CountingSource(FakeSource):
    """A source that tells the widget about gaps in its event stream (as the controller
    does from the sentinel's event ``seq``) and whether it has caught up."""

    def __init__(self, jobs: Any) -> None:
        super().__init__(jobs)
        self.gaps = 0
        self.caught_up = True

    def event_gaps(self) -> int:
        return self.gaps

    def catch_up(self) -> bool:
        return self.caught_up


def test_without_a_gap_in_the_events_the_db_is_not_read_again(
        comms: list[RecordingComm]) -> None:
    """Every event arrived: the periodic re-read, a wait's pumps and its final sync read
    nothing (thousands of queued jobs re-read every few seconds stalled the kernel); after
    a gap they re-read the unfinished jobs, and a sync that cannot catch up does too."""
    now = [0.0]
    src = _CountingSource([job(i) for i in range(1, 301)])
    sched = ManualScheduler(clock=lambda: now[0])
    w = _widget(src, scheduler=sched, reconcile_every=3.0, clock=lambda: now[0])
    assert src.snapshots == [None]  # the first snapshot
    src.publish("JobCompleted", {"job_id": 1, "rows": 2}, 10.0)
    for t in (3.0, 6.0, 9.0):
        now[0] = t
        sched.run_due()
        w.pump()
    w.sync()
    assert src.snapshots == [None]
    assert w.comm.merged()["counts"]["COMPLETED"] == 1

    src.jobs[2] = job(2, "COMPLETED", rows=4)  # its events were lost: the stream had a gap
    src.gaps = 1
    now[0] = 12.0
    w.pump()
    assert len(src.snapshots) == 2 and len(src.snapshots[-1] or ()) == 299
    assert w.comm.merged()["counts"]["COMPLETED"] == 2
    src.caught_up = False
    w.sync()
    assert len(src.snapshots) == 3
    w.close()


def test_a_backlog_of_events_is_applied_a_slice_per_turn(comms: list[RecordingComm]) -> None:
    """Thousands of events at once (a big submit) are applied over several turns of the
    loop, a few hundred at a time, and synced once they are all in."""
    from casparian_nb.notebook import queue_widget

    now = [0.0]
    sched = ManualScheduler(clock=lambda: now[0])
    src = FakeSource([])
    w = _widget(src, scheduler=sched, clock=lambda: now[0])
    src.callbacks[0]([("JobQueued", {"job_id": i, "plugin_name": "p"}, None)
                      for i in range(1, 2001)])
    backlog: list[int] = []
    apply = w._apply
    w._apply = lambda limit=None: (backlog.append(len(w._inbox)), apply(limit))[1]  # type: ignore[method-assign]
    for t in (1.0, 2.0):  # the wake-up, then the timed flush
        now[0] = t
        sched.run_due()
    # one slice per turn of the loop, then the rest and a sync
    assert backlog[:3] == [2000, 2000 - queue_widget._APPLY_SLICE,
                           2000 - 2 * queue_widget._APPLY_SLICE]
    assert len(backlog) == 2000 // queue_widget._APPLY_SLICE + 1
    assert w.comm.merged()["counts"]["QUEUED"] == 2000 and w.flushes == 1
    w.close()


def test_the_event_thread_wakes_the_loop_once_per_flush(comms: list[RecordingComm]) -> None:
    """Batch after batch of events (the event thread hands over every few ms) wake the
    kernel's loop once until a flush takes them, not once per batch."""
    now = [0.0]
    sched = ManualScheduler(clock=lambda: now[0])
    src = FakeSource([job(i) for i in range(1, 101)])
    w = _widget(src, scheduler=sched, clock=lambda: now[0])
    wakes = 0
    for i in range(1, 101):  # the loop is idle: it runs what is due after every batch
        src.publish("JobDispatched", {"job_id": i, "worker_id": "w1"})
        wakes += sched.run_due()
    assert wakes == 1  # one wake-up for 100 batches (the flush timer is not due yet)
    now[0] = 1.0
    sched.run_due()
    assert w.comm.merged()["counts"]["RUNNING"] == 100 and not sched._heap
    src.publish("JobStarted", {"job_id": 1, "worker_id": "w1"})
    src.publish("JobStarted", {"job_id": 2, "worker_id": "w1"})
    assert len(sched._heap) == 1  # the next batch wakes the loop again, once
    w.close()

"""The kernel's self-updating widgets share one update budget (notebook/_pace.py): the queue
and a progress bar open together send at most ~10 comm messages a second, and neither
starves the other."""

from __future__ import annotations

from casparian_nb._progress import ProgressCounts
from casparian_nb.notebook._pace import CommPace
from casparian_nb.notebook._scheduling import ManualScheduler
from casparian_nb.notebook.progress import ProgressWidget
from casparian_nb.notebook.queue_widget import QueueWidget
from tests.notebook.nb_harness import FakeSource, RecordingComm, job


class _Member:
    """Anything a widget could be (the pace holds its members weakly)."""


def test_the_budget_is_split_among_the_live_widgets() -> None:
    now = [0.0]
    pace = CommPace(0.1, clock=lambda: now[0])
    a, b = _Member(), _Member()
    pace.join(a)
    assert pace.delay(-1.0) == 0 and pace.spacing() == 0.1
    pace.join(b)
    assert pace.spacing() == 0.2
    pace.took()
    assert pace.delay(-1.0) == 0.1  # nobody syncs within interval of the last sync
    now[0] = 0.15
    assert abs(pace.delay(0.0) - 0.05) < 1e-9  # its own share of the budget
    pace.leave(b)
    assert pace.spacing() == 0.1 and pace.live == 1
    del a  # dropped without leave(): its share comes back when it is collected
    assert pace.live == 0


def test_queue_and_progress_together_stay_within_ten_a_second(
        comms: list[RecordingComm]) -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    pace = CommPace(0.1, clock=clock)
    sched = ManualScheduler(clock=clock)
    src = FakeSource([job(i) for i in range(1, 3001)])
    queue = QueueWidget(src, scheduler=sched, clock=clock, pace=pace)
    bar = ProgressWidget("jobs", clock=clock, pace=pace)
    before_queue, before_bar = queue.flushes, bar.flushes
    sent: list[float] = []  # when either widget synced
    for step in range(300):  # 3 s: an event every 10 ms, the bar told every 10 ms
        src.publish("JobCompleted", {"job_id": step + 1, "rows": 1})
        bar.update(ProgressCounts(done=step + 1, queued=3000 - step - 1))
        q, b = queue.flushes, bar.flushes
        queue.pump()
        sched.run_due()
        sent += [now[0]] * ((queue.flushes - q) + (bar.flushes - b))
        now[0] += 0.01
    per_second = [sum(1 for t in sent if 100.0 + s <= t < 101.0 + s) for s in range(3)]
    assert max(per_second) <= 10, per_second
    assert queue.flushes - before_queue >= 10 and bar.flushes - before_bar >= 10  # both move
    bar.finish(ProgressCounts(done=300))
    assert pace.live == 1  # the finished bar gave its share back
    queue.close()
    assert pace.live == 0

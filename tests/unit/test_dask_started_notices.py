"""The dask executor's started notices: one thread per Dask worker says which jobs are still
running ``STARTED_DELAY`` after they took a host; a quick job is reported by its receipt
alone."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import wait_until

pytest.importorskip("distributed")

from casparian_nb.executors._dask_plugin import STARTED_DELAY, StartedNotices


class Said:
    """What the notices sent, as ``Worker.log_event(topic, msg)`` would have."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, dict[str, Any], float]] = []

    def __call__(self, topic: str, msg: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((topic, msg, time.monotonic()))


def test_only_jobs_still_running_after_the_delay_are_said_to_have_started() -> None:
    said = Said()
    notices = StartedNotices(said, "casparian-x")
    try:
        t0 = time.monotonic()
        notices.started("1", 1, 101)   # quick: finished before the delay
        notices.started("2", 1, 102)   # long: still running
        notices.started("2", 2, 103)   # another attempt of the same job, quick
        notices.finished("1", 1)
        notices.finished("2", 2)
        wait_until(lambda: said.events, 5, message="the started notice")
        time.sleep(3 * STARTED_DELAY)  # nothing else comes
        assert [(t, m) for t, m, _ in said.events] == [
            ("casparian-x", {"job_id": "2", "attempt": 1, "host_pid": 102})]
        assert said.events[0][2] - t0 >= STARTED_DELAY
    finally:
        notices.close()


def test_many_due_at_once_are_said_together_and_close_stops_the_thread() -> None:
    said = Said()
    notices = StartedNotices(said, "t")
    for i in range(50):
        notices.started(str(i), 1, 1000 + i)
    wait_until(lambda: len(said.events) == 50, 5, message="50 started notices")
    assert sorted(int(m["job_id"]) for _, m, _ in said.events) == list(range(50))
    notices.close()
    notices._thread.join(2)
    assert not notices._thread.is_alive()

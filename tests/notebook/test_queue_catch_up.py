"""The queue widget over a real controller: it has every event, so it does not re-read the
state DB (a sentinel and workers really started, loopback, tmp home)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casparian_nb.notebook._scheduling import ManualScheduler
from tests.conftest import make_inputs
from tests.notebook.nb_harness import RecordingComm


def test_wait_ends_caught_up_without_re_reading_the_db(
        controllers: Callable[..., Any], fixture_plugin_path: Path, tmp_path: Path,
        comms: list[RecordingComm]) -> None:
    """``catch_up`` answers at once on an idle sentinel (its last events were published
    before the controller subscribed and never arrive: not waited for), and after a wait
    every job's final event is in the table with no gap and no snapshot read but the
    first."""
    ctl = controllers(workers=1)
    started = time.monotonic()
    assert ctl.catch_up() is True and time.monotonic() - started < 0.5
    snapshots: list[Any] = []
    read = ctl.job_snapshot

    def counted(ids: Any = None) -> Any:
        snapshots.append(ids)
        return read(ids)

    ctl.job_snapshot = counted  # type: ignore[method-assign]  # the real read, counted
    w = ctl.queue(scheduler=ManualScheduler(), reconcile_every=0)
    make_inputs(tmp_path / "data", 30)
    ids = ctl.submit(fixture_plugin_path, tmp_path / "data")
    ctl.wait(ids[:1], timeout=60, progress=False)  # the others still queued or running
    assert snapshots == [None]
    ctl.wait(ids, timeout=60, progress=False)
    assert ctl.event_gaps() == 0 and snapshots == [None]
    assert w.comm.merged()["counts"]["COMPLETED"] == len(ids)

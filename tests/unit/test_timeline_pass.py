"""The timeline's array pass agrees with the tape reducer, and tapes are read incrementally.

The pass (``tape/_timeline_pass.py``) computes job statuses with numpy instead of running
the reducer event by event; here random tapes full of the odd cases (a start after the end,
a retry of a running job, a lost worker re-queueing finished and unknown jobs, integer job
ids, cancels, materializations) are reduced both ways and must agree.
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from casparian_nb.tape import read_tape
from casparian_nb.tape.replay import TapeReducer
from casparian_nb.tape.timeline_data import (
    STATUSES,
    clear_timeline_cache,
    load_timeline,
    timeline_payload,
)
from casparian_nb.tape.timeline_view import TimelineSource, replayed_state

_JOB_EVENTS = ["JobQueued", "JobDispatched", "JobStarted", "CancelRequested", "JobCompleted",
               "JobFailed", "JobRetried", "JobAborted", "JobSkipped",
               "MaterializationRecorded"]


def _line(seq: int, t: float, kind: str, name: str | None, payload: dict[str, Any]) -> str:
    whole, frac = divmod(round(t * 1e6), 1_000_000)
    minute, sec = divmod(whole, 60)
    stamp = f"2026-01-01T00:{minute:02d}:{sec:02d}.{frac:06d}Z"
    event_name = {"type": kind} if name is None else {"type": kind, "name": name}
    return json.dumps({"schema_version": 1, "event_id": f"e{seq}", "seq": seq,
                       "timestamp": stamp, "correlation_id": None, "parent_id": None,
                       "event_name": event_name, "payload": payload}) + "\n"


def _random_tape(seed: int, jobs: int = 60, events: int = 900) -> list[str]:
    rng = random.Random(seed)
    workers = ["w1", "w2", "w3"]
    out = [_line(0, 0.0, "tape_started", None, {"producer": "test"})]
    t = 0.0
    for seq in range(1, events):
        t += rng.choice([0.0, 0.001, 0.05, 0.3])
        roll = rng.random()
        if roll < 0.03:
            ids: list[Any] = [rng.randint(1, jobs + 5) for _ in range(rng.randint(0, 4))]
            ids = [str(i) if rng.random() < 0.7 else i for i in ids]
            name = rng.choice(["WorkerLost", "WorkerLeft"])
            out.append(_line(seq, t, "domain_event", name,
                             {"worker_id": rng.choice(workers), "requeued_job_ids": ids}))
        elif roll < 0.05:
            out.append(_line(seq, t, "domain_event", "WorkerJoined",
                             {"worker_id": rng.choice(workers), "slots": 2, "pid": 7}))
        elif roll < 0.07:
            out.append(_line(seq, t, "ui_command", "SubmitJobs", {}))
        else:
            n = rng.randint(1, jobs)
            job: Any = str(n) if n % 7 else n  # 123 and "123" are one job
            name = rng.choice(_JOB_EVENTS)
            payload: dict[str, Any] = {"job_id": job}
            if name in ("JobDispatched", "JobStarted", "JobCompleted", "JobFailed") and (
                    rng.random() < 0.9):
                payload["worker_id"] = rng.choice(workers)
            if name == "JobFailed":
                payload["will_retry"] = rng.random() < 0.5
                payload["error"] = "boom"
            if name == "JobCompleted" and rng.random() < 0.5:
                payload["duration_ms"] = rng.choice([0, 10, 400, -1, True])
            if name == "JobQueued":
                payload["plugin_name"] = rng.choice(["a", "b"])
            if name == "MaterializationRecorded":
                payload["output_name"] = "out"
            out.append(_line(seq, t, "domain_event", name, payload))
    return out


def _reduced(path: Path) -> tuple[TapeReducer, int, Any]:
    reducer, count, last = TapeReducer(), 0, None
    for event in read_tape(path, strict=False):
        reducer.apply(event)
        count, last = count + 1, event
    return reducer, count, last


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_array_pass_agrees_with_the_reducer(tmp_path: Path, seed: int) -> None:
    tape = tmp_path / "random.tape"
    tape.write_text("".join(_random_tape(seed)))
    data = load_timeline(tape)
    reducer, count, last = _reduced(tape)
    core = reducer.core
    assert data.jobs == len(core.jobs) and data.counts == core.counts()
    assert data.end_state == replayed_state(reducer, count, (last.kind, last.name))
    for job, final in zip(data.bar_job, data.bar_final.tolist(), strict=True):
        assert STATUSES[final] == core.jobs[job].status
    # the queue-depth strip ends where the reducer ends
    statuses = [j.status for j in core.jobs.values()]
    assert int(data.depth_queued[-1]) == statuses.count("queued")
    assert int(data.depth_running[-1]) == statuses.count("dispatched") + statuses.count(
        "running")
    # a lane never holds two bars at once
    t1 = [b if b == b else float("inf") for b in data.bar_t1.tolist()]
    by_lane: dict[int, list[tuple[float, float]]] = {}
    for lane, a, b in zip(data.bar_lane.tolist(), data.bar_t0.tolist(), t1, strict=True):
        by_lane.setdefault(lane, []).append((a, b))
    for bars in by_lane.values():
        bars.sort()
        assert all(nxt[0] >= prev[1] - 1e-9 for prev, nxt in pairwise(bars))


def test_a_growing_tape_is_read_on_and_matches_a_whole_read(tmp_path: Path) -> None:
    lines = _random_tape(9, events=600)
    tape = tmp_path / "live.tape"
    tape.write_text("".join(lines[:250]))
    first = load_timeline(tape)
    assert load_timeline(tape) is first  # unchanged: nothing read again
    # a write cut mid-line: the complete lines count, the cut one is a truncation
    with tape.open("a") as fh:
        fh.write("".join(lines[250:400]) + lines[400][:30])
    grown = load_timeline(tape)
    assert grown.events == 400 and grown.truncated == 401
    with tape.open("a") as fh:
        fh.write(lines[400][30:] + "".join(lines[401:]))
    followed = TimelineSource(tape)
    live = timeline_payload(load_timeline(tape))
    end = followed.end()
    clear_timeline_cache()
    whole = load_timeline(tape)
    assert whole is not first and whole.truncated is None and whole.events == 600
    assert live == timeline_payload(whole)
    assert end == TimelineSource(tape).end()


def test_a_tape_written_again_at_the_same_path_is_read_whole(tmp_path: Path) -> None:
    """Another tape in the same file (re-recorded, longer than the first): not read on from
    the old offset, but whole."""
    tape = tmp_path / "again.tape"
    tape.write_text("".join(_random_tape(11, events=300)))
    load_timeline(tape)
    tape.write_text("".join(_random_tape(12, events=500)))
    again = load_timeline(tape)
    clear_timeline_cache()
    assert timeline_payload(again) == timeline_payload(load_timeline(tape))
    assert again.events == 500

"""Replay: reducer state at any seq/time, the snapshot index, and the timeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from casparian_nb.tape import (
    ReplayIndex,
    TapeReducer,
    build_timeline,
    explain_tape,
    read_tape,
    state_at,
)

ROOT = Path(__file__).resolve().parents[2]
SESSION = ROOT / "tapes" / "golden_session.tape"


def statuses(state: dict) -> dict[str, str]:
    return {k: v["status"] for k, v in state["jobs"].items()}


@pytest.mark.parametrize(("seq", "expected"), [
    (0, {}),
    (4, {"1": "queued"}),
    (8, {"1": "queued", "2": "queued", "3": "queued", "4": "queued"}),
    (12, {"1": "running", "2": "running", "3": "queued", "4": "queued"}),
    (13, {"1": "running", "2": "queued", "3": "queued", "4": "queued"}),
    (16, {"1": "completed", "2": "queued", "3": "queued", "4": "queued"}),
    (20, {"1": "completed", "2": "running", "3": "running", "4": "queued"}),
    (24, {"1": "completed", "2": "running", "3": "aborted", "4": "queued"}),
    (32, {"1": "completed", "2": "completed", "3": "aborted", "4": "failed"}),
])
def test_state_at_seq(seq: int, expected: dict[str, str]) -> None:
    assert statuses(state_at(SESSION, seq=seq)) == expected


def test_state_details_mid_tape() -> None:
    s = state_at(SESSION, seq=22)
    assert s["seq"] == 22 and s["event_count"] == 23
    assert s["jobs"]["3"]["cancel_requested"] is True
    assert s["jobs"]["3"]["status"] == "running" and s["jobs"]["3"]["worker_id"] == "w1"
    assert s["jobs"]["1"]["rows"] == 120 and s["jobs"]["2"]["retries"] == 1
    assert s["counts"] == {"queued": 1, "dispatched": 0, "running": 2, "completed": 1,
                           "failed": 0, "aborted": 0, "skipped": 0}
    assert set(s["workers"]) == {"w1", "w2"}


def test_state_at_time() -> None:
    # seq 16 (JobCompleted of job 1) is at 00:00:04.000
    assert statuses(state_at(SESSION, time="2026-01-01T00:00:04Z"))["1"] == "completed"
    assert statuses(state_at(SESSION, time="2026-01-01T00:00:03.9Z"))["1"] == "running"
    assert state_at(SESSION, time=0.0)["event_count"] == 0


@pytest.mark.parametrize("every", [1, 3, 500])
def test_index_matches_streaming_reducer_at_every_seq(every: int) -> None:
    index = ReplayIndex(SESSION, snapshot_every=every)
    events = list(read_tape(SESSION))
    assert len(index) == len(events) == 33
    for seq in range(-1, 34):
        assert index.state_at(seq=seq) == state_at(events, seq=seq), seq
    assert index.state_at() == state_at(events)


def test_index_snapshots_make_late_queries_cheap(tmp_path: Path) -> None:
    """On a longer tape a query applies at most one interval of events."""
    from casparian_nb.tape import TapeWriter

    path = tmp_path / "long.tape"
    with TapeWriter(path) as tape:
        for i in range(2000):
            tape.domain("JobQueued", {"job_id": i})
            tape.domain("JobCompleted", {"job_id": i, "rows": 1})
    index = ReplayIndex(path, snapshot_every=100)
    calls = 0
    original = TapeReducer.apply

    def counting(self: TapeReducer, event: object) -> None:
        nonlocal calls
        calls += 1
        original(self, event)  # type: ignore[arg-type]

    TapeReducer.apply = counting  # type: ignore[method-assign]
    try:
        state = index.state_at(seq=3500)
    finally:
        TapeReducer.apply = original  # type: ignore[method-assign]
    assert calls < index.interval
    assert state["counts"]["completed"] == 1750 and state["counts"]["queued"] == 0


def test_final_replay_state_agrees_with_explain() -> None:
    final = ReplayIndex(SESSION).state_at()
    explained = {j["job_id"]: j for j in explain_tape(SESSION).to_json()["jobs"]}
    assert {k: (v["status"], v["rows"], v["worker_id"]) for k, v in final["jobs"].items()} == {
        k: (v["status"], v["rows"], v["worker_id"]) for k, v in explained.items()}


def test_timeline_bars_and_markers() -> None:
    tl = build_timeline(SESSION)
    assert tl.start == "2026-01-01T00:00:00.000000Z" and tl.duration_s == 8.0
    assert tl.lanes == ["w1", "w2"]
    bars = [(b["job_id"], b["lane"], b["attempt"], b["t0"], b["t1"], b["status"],
             b["final_status"]) for b in tl.bars]
    assert bars == [
        ("1", "w1", 1, 2.25, 4.0, "completed", "completed"),
        ("2", "w2", 1, 2.5, 3.25, "failed_retrying", "completed"),
        ("3", "w1", 1, 4.25, 6.0, "aborted", "aborted"),
        ("2", "w2", 2, 4.75, 6.5, "completed", "completed"),
        ("4", "w1", 1, 6.75, 7.25, "failed", "failed"),
    ]
    kinds = [(m["kind"], m["seq"]) for m in tl.markers]
    assert ("command", 3) in kinds and ("cancel", 22) in kinds and ("retry", 14) in kinds
    assert ("error", 13) in kinds and ("error", 29) in kinds
    assert [k for k, _ in kinds].count("worker_joined") == 2
    data = tl.to_dict()
    assert set(data) == {"start", "end", "duration_s", "lanes", "bars", "markers"}


def test_timeline_of_jobs_that_never_ran(tmp_path: Path) -> None:
    from casparian_nb.tape import TapeWriter

    path = tmp_path / "t.tape"
    with TapeWriter(path) as tape:
        tape.domain("JobQueued", {"job_id": "a"})
        tape.domain("JobQueued", {"job_id": "b"})
        tape.domain("JobSkipped", {"job_id": "a", "reason": "unchanged"})
        tape.domain("JobDispatched", {"job_id": "c", "worker_id": "w9"})
        tape.domain("WorkerLost", {"worker_id": "w9", "requeued_job_ids": ["c"]})
    bars = {b["job_id"]: b for b in build_timeline(path).bars}
    assert bars["a"]["lane"] == "job a" and bars["a"]["status"] == "skipped"
    assert bars["b"]["end"] is None and bars["b"]["final_status"] == "queued"
    assert bars["c"]["status"] == "requeued" and bars["c"]["final_status"] == "queued"

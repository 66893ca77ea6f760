"""The timeline widget over the golden tapes, without a sentinel and without a browser."""

from __future__ import annotations

from pathlib import Path

import pytest

import casparian_nb as cf
from casparian_nb.notebook.timeline import TimelineWidget, timeline
from casparian_nb.tape import ReplayIndex, TapeWriter
from tests.notebook.nb_harness import RecordingComm, frontend_send

TAPES = Path(__file__).resolve().parents[2] / "tapes"
SESSION = TAPES / "golden_session.tape"
ORIGINAL = TAPES / "golden_original.tape"


def _custom(w: TimelineWidget) -> list[dict]:
    return [d["content"] for d, _ in w.comm.messages if d.get("method") == "custom"]


def test_lanes_bars_and_markers_of_the_golden_session(comms: list[RecordingComm]) -> None:
    """One lane per worker; a bar per attempt coloured by final status; every marker kind."""
    w = cf.timeline(SESSION)
    data = w.comm.open_data["state"]["data"]
    assert data["lanes"] == ["w1", "w2"]
    bars = {(b["job"], b["attempt"]): b for b in data["bars"]}
    assert bars[("2", 1)]["status"] == "failed_retrying" and bars[("2", 1)]["final"] == "completed"
    assert bars[("3", 1)]["final"] == "aborted" and bars[("4", 1)]["final"] == "failed"
    assert bars[("2", 2)]["lane"] == 1 and bars[("1", 1)]["lane"] == 0
    kinds = {m["kind"] for m in data["markers"]}
    assert {"command", "cancel", "retry", "error", "worker_joined"} <= kinds
    commands = [m["label"] for m in data["markers"] if m["kind"] == "command"]
    assert commands == ["Submit", "Cancel", "Query"]
    cancel = next(m for m in data["markers"] if m["kind"] == "cancel")
    assert cancel["lane"] == 0  # on job 3's bar, on w1
    assert data["duration_s"] == pytest.approx(8.0)


@pytest.mark.parametrize("seq", [0, 7, 14, 20, 22, 24, 32])
def test_scrubber_state_is_the_reducer_state(comms: list[RecordingComm], seq: int) -> None:
    """Scrubbing to an event shows exactly what the tape reducer says at that point."""
    w = timeline(SESSION)
    frontend_send(w, {"type": "scrub", "seq": seq})
    expected = ReplayIndex(SESSION).state_at(seq=seq)
    state = w.comm.merged()["state"]
    assert state["seq"] == seq
    assert state["counts"] == expected["counts"]
    active = {j["job_id"]: j["status"] for j in state["active"]}
    assert active == {k: j["status"] for k, j in expected["jobs"].items()
                      if j["status"] in ("queued", "dispatched", "running")}
    assert w.comm.merged()["position"]["seq"] == seq


def test_scrub_to_the_cancel_shows_job_3_aborting(comms: list[RecordingComm]) -> None:
    """Between CancelRequested and JobAborted the replayed job is running, cancel requested."""
    w = timeline(SESSION)
    frontend_send(w, {"type": "scrub", "seq": 22})
    state = w.comm.merged()["state"]
    job3 = next(j for j in state["active"] if j["job_id"] == "3")
    assert (job3["status"], job3["cancel_requested"], state["aborting"]) == ("running", True, 1)
    frontend_send(w, {"type": "scrub", "seq": 24})
    assert w.comm.merged()["state"]["counts"]["aborted"] == 1


def test_scrub_by_time_matches_state_at_time(comms: list[RecordingComm]) -> None:
    w = timeline(SESSION)
    index = ReplayIndex(SESSION)
    start = index.events[0].time
    assert start is not None
    for t in (0.1, 2.3, 4.0, 5.3, 7.9):
        frontend_send(w, {"type": "scrub", "t": t})
        state = w.comm.merged()["state"]
        assert state["counts"] == index.state_at(time=start + t)["counts"], t
        assert w.comm.merged()["position"]["t"] == pytest.approx(t)


def test_scrubber_at_the_end_includes_the_last_event(comms: list[RecordingComm],
                                                     tmp_path: Path) -> None:
    """Times are rounded for drawing; the slider's end still means "every event"."""
    tape = tmp_path / "odd.tape"
    with TapeWriter(tape, redact=False, clock=iter([1e9 + 0.1234567 * i for i in range(10)]).__next__) as w:
        w.domain("JobQueued", {"job_id": 1})
        w.domain("JobDispatched", {"job_id": 1, "worker_id": "w1"})
        w.domain("JobCompleted", {"job_id": 1, "rows": 2})
    tl = timeline(tape)
    frontend_send(tl, {"type": "scrub", "seq": 0})
    frontend_send(tl, {"type": "scrub", "t": tl.data["duration_s"]})
    assert tl.comm.merged()["state"]["seq"] == 4  # tape_stopped, the last line


def test_click_on_a_marker_fetches_its_payload(comms: list[RecordingComm]) -> None:
    """Payloads are not synced up front; a click asks for one and gets the envelope."""
    w = timeline(SESSION)
    assert "payload" not in str(w.comm.open_data["state"]["data"]["markers"])
    frontend_send(w, {"type": "payload", "seq": 13})
    reply = _custom(w)[-1]
    assert reply["type"] == "payload" and reply["seq"] == 13
    assert reply["event"]["event_name"] == {"type": "domain_event", "name": "JobFailed"}
    assert reply["event"]["payload"]["will_retry"] is True
    frontend_send(w, {"type": "payload", "seq": 999})
    assert _custom(w)[-1]["event"] is None


def test_original_tape_without_workers_gets_a_lane_per_job(comms: list[RecordingComm]) -> None:
    w = timeline(ORIGINAL)
    data = w.comm.open_data["state"]["data"]
    assert data["lanes"] and all(lane.startswith("job ") for lane in data["lanes"])
    assert {b["final"] for b in data["bars"]} <= {"completed", "failed", "aborted", "queued",
                                                   "running", "dispatched", "skipped"}


def test_reload_picks_up_a_growing_session_tape(comms: list[RecordingComm], tmp_path: Path) -> None:
    """``ctl.timeline()`` reads a tape still being written; reload shows the new events."""
    tape = tmp_path / "live.tape"
    writer = TapeWriter(tape, producer="notebook", redact=False)
    try:
        writer.domain("WorkerJoined", {"worker_id": "w1", "slots": 1, "pid": 1})
        writer.domain("JobQueued", {"job_id": 1, "plugin_name": "p"})
        writer.domain("JobDispatched", {"job_id": 1, "worker_id": "w1"})
        w = timeline(tape)
        assert w.data["bars"][0]["t1"] is None  # still running: an open bar
        writer.domain("JobCompleted", {"job_id": 1, "worker_id": "w1", "rows": 3})
        frontend_send(w, {"type": "reload"})
        merged = w.comm.merged()
        assert merged["data"]["bars"][0]["final"] == "completed"
        assert merged["state"]["counts"]["completed"] == 1
    finally:
        writer.close()


def test_truncated_tape_still_renders(comms: list[RecordingComm], tmp_path: Path) -> None:
    tape = tmp_path / "cut.tape"
    tape.write_bytes(SESSION.read_bytes()[:-40])  # cut the last line short
    w = timeline(tape)
    assert w.data["truncated"] is not None
    assert w.state["jobs_total"] == 4

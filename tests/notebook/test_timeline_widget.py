"""The timeline widget over golden and generated tapes, without a sentinel or a browser."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

import casparian_nb as cf
from benchmarks.timeline_scale import generate_tape
from casparian_nb.notebook._scheduling import ManualScheduler
from casparian_nb.notebook.timeline import TimelineWidget, timeline
from casparian_nb.tape import ReplayIndex, TapeWriter
from casparian_nb.tape.timeline_data import STATUSES, load_timeline, timeline_payload
from tests.notebook.nb_harness import RecordingComm, frontend_send

TAPES = Path(__file__).resolve().parents[2] / "tapes"
SESSION = TAPES / "golden_session.tape"
ORIGINAL = TAPES / "golden_original.tape"


def _custom(w: TimelineWidget) -> list[dict]:
    return [d["content"] for d, _ in w.comm.messages if d.get("method") == "custom"]


def _bars(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The payload's columnar bars as dicts, statuses by name."""
    b = data["bars"]
    rows = [dict(zip(b, values, strict=True)) for values in zip(*b.values(), strict=True)]
    for row in rows:
        row["status"], row["final"] = STATUSES[row["status"]], STATUSES[row["final"]]
    return rows


def test_lanes_bars_and_markers_of_the_golden_session(comms: list[RecordingComm]) -> None:
    """A lane per worker slot; a bar per attempt coloured by final status; every marker kind."""
    w = cf.timeline(SESSION)
    data = w.comm.open_data["state"]["data"]
    assert data["lanes"] == [{"worker": "w1", "slot": 0}, {"worker": "w2", "slot": 0}]
    assert data["mode"] == "bars"
    bars = {(b["job"], b["attempt"]): b for b in _bars(data)}
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
    assert data["depth"]["queued"] and max(data["depth"]["queued"]) >= 1


def _concurrent_tape(path: Path) -> None:
    """w1 runs jobs 1-3 at once (and 4 after 1 ends); job 5 is queued and aborted, never run."""
    clock = iter([1e9 + t for t in (0, 0, *range(1, 16))]).__next__
    with TapeWriter(path, redact=False, clock=clock) as w:
        w.domain("WorkerJoined", {"worker_id": "w1", "slots": 3, "pid": 1})     # t=0
        for j in (1, 2, 3):
            w.domain("JobQueued", {"job_id": j, "plugin_name": "p"})          # t=1..3
        for j in (1, 2, 3):
            w.domain("JobDispatched", {"job_id": j, "worker_id": "w1"})       # t=4..6
        w.domain("JobCompleted", {"job_id": 1, "worker_id": "w1", "rows": 1})  # t=7
        w.domain("JobQueued", {"job_id": 4, "plugin_name": "p"})              # t=8
        w.domain("JobDispatched", {"job_id": 4, "worker_id": "w1"})           # t=9
        w.domain("JobQueued", {"job_id": 5, "plugin_name": "p"})              # t=10
        w.domain("JobAborted", {"job_id": 5, "reason": "cancelled"})          # t=11
        for j in (2, 3, 4):
            w.domain("JobCompleted", {"job_id": j, "worker_id": "w1", "rows": 1})


def test_a_worker_running_three_jobs_at_once_gets_three_slot_lanes(
        comms: list[RecordingComm], tmp_path: Path) -> None:
    tape = tmp_path / "concurrent.tape"
    _concurrent_tape(tape)
    data = timeline(tape).comm.open_data["state"]["data"]
    assert data["lanes"] == [{"worker": "w1", "slot": s} for s in range(3)]
    bars = _bars(data)
    assert sorted(b["lane"] for b in bars if b["job"] in ("1", "2", "3")) == [0, 1, 2]
    job4 = next(b for b in bars if b["job"] == "4")
    assert job4["lane"] == next(b["lane"] for b in bars if b["job"] == "1")  # 1's slot freed
    for lane in range(3):  # no two bars of a lane overlap
        spans = sorted((b["t0"], b["t1"]) for b in bars if b["lane"] == lane)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_a_job_that_never_reached_a_worker_gets_no_lane(comms: list[RecordingComm],
                                                         tmp_path: Path) -> None:
    """Job 5 (queued, aborted) has no bar and no lane; it counts in the queue-depth strip."""
    tape = tmp_path / "concurrent.tape"
    _concurrent_tape(tape)
    w = timeline(tape)
    data = w.comm.open_data["state"]["data"]
    assert "5" not in {b["job"] for b in _bars(data)}
    assert all(lane["worker"] == "w1" for lane in data["lanes"])
    assert data["counts"]["aborted"] == 1 and w.state["jobs_total"] == 5
    d = w.timeline_data
    queued_at = {round(t): q for t, q in zip(d.depth_t.tolist(), d.depth_queued.tolist(),
                                              strict=True)}
    assert queued_at[3] == 3 and queued_at[10] == 1 and queued_at[11] == 0


def test_zooming_in_refetches_exact_bars(comms: list[RecordingComm], tmp_path: Path) -> None:
    """A whole-tape view of many jobs is binned; the zoomed view comes back as bars."""
    tape = tmp_path / "mid.tape"
    generate_tape(tape, 6000, workers=4, slots=2)
    w = timeline(tape)
    assert w.data["mode"] == "bins" and w.data["bars"] is None
    assert len(w.data["density"]["busy"]) == len(w.data["lanes"]) == 8
    frontend_send(w, {"type": "view", "id": 7, "t0": 10.0, "t1": 20.0, "width": 600})
    reply = [d["content"] for d, _ in w.comm.messages if d.get("method") == "custom"][-1]
    assert reply["type"] == "view" and reply["id"] == 7
    zoomed = reply["payload"]
    assert zoomed["mode"] == "bars" and zoomed["view"] == {"t0": 10.0, "t1": 20.0}
    assert all(t0 <= 20.0 and (t1 is None or t1 >= 10.0)
               for t0, t1 in zip(zoomed["bars"]["t0"], zoomed["bars"]["t1"], strict=True))


def test_a_100k_job_tape_first_payload_is_binned_and_under_1_mb(tmp_path: Path) -> None:
    tape = tmp_path / "big.tape"
    generate_tape(tape, 100_000)
    begin, cpu = time.perf_counter(), time.process_time()
    payload = timeline_payload(load_timeline(tape))
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    wall, cpu = time.perf_counter() - begin, time.process_time() - cpu
    print(f"100k jobs: first payload {size / 1e6:.3f} MB in {wall:.2f} s (cpu {cpu:.2f} s)")
    assert payload["jobs"] == 100_000 and payload["mode"] == "bins"
    assert size <= 1_000_000
    assert len(payload["lanes"]) == 64  # 16 workers x 4 slots, all used


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


def test_original_tape_without_workers_has_no_job_lanes(comms: list[RecordingComm]) -> None:
    """The original's tapes name no worker: no slot lanes, the jobs show as queue depth."""
    w = timeline(ORIGINAL)
    data = w.comm.open_data["state"]["data"]
    assert not any(lane["worker"].startswith("job ") for lane in data["lanes"])
    assert data["jobs"] > 0 and sum(data["counts"].values()) == data["jobs"]


def test_reload_picks_up_a_growing_session_tape(comms: list[RecordingComm], tmp_path: Path) -> None:
    """``ctl.timeline()`` reads a tape still being written; reload shows the new events."""
    tape = tmp_path / "live.tape"
    writer = TapeWriter(tape, producer="notebook", redact=False)
    try:
        writer.domain("WorkerJoined", {"worker_id": "w1", "slots": 1, "pid": 1})
        writer.domain("JobQueued", {"job_id": 1, "plugin_name": "p"})
        writer.domain("JobDispatched", {"job_id": 1, "worker_id": "w1"})
        w = timeline(tape)
        assert w.data["bars"]["t1"][0] is None  # still running: an open bar
        writer.domain("JobCompleted", {"job_id": 1, "worker_id": "w1", "rows": 3})
        frontend_send(w, {"type": "reload"})
        merged = w.comm.merged()
        assert STATUSES[merged["data"]["bars"]["final"][0]] == "completed"
        assert merged["state"]["counts"]["completed"] == 1
    finally:
        writer.close()


def test_truncated_tape_still_renders(comms: list[RecordingComm], tmp_path: Path) -> None:
    tape = tmp_path / "cut.tape"
    tape.write_bytes(SESSION.read_bytes()[:-40])  # cut the last line short
    w = timeline(tape)
    assert w.data["truncated"] is not None
    assert w.state["jobs_total"] == 4


class _LiveSession:
    """What ``cf.timeline`` needs of a controller: its session tape and widget set."""

    def __init__(self, path: Path) -> None:
        self.tape_path = path
        self._widgets: set[Any] = set()


def test_following_a_live_session_tape_coalesces_rereads(comms: list[RecordingComm],
                                                         tmp_path: Path) -> None:
    """``cf.timeline(ctl)`` follows the session tape: a growth is picked up by the next tick
    (at most one re-read per interval), and the controller's blocking calls pump it."""
    tape = tmp_path / "session.tape"
    writer = TapeWriter(tape, producer="notebook", redact=False)
    try:
        writer.domain("WorkerJoined", {"worker_id": "w1", "slots": 1, "pid": 1})
        ctl = _LiveSession(tape)
        clock = [0.0]
        sched = ManualScheduler(clock=lambda: clock[0])
        w = cf.timeline(ctl, scheduler=sched, interval=0.5)
        assert w in ctl._widgets and w.following and w.data["jobs"] == 0
        writer.domain("JobQueued", {"job_id": 1, "plugin_name": "p"})
        writer.domain("JobDispatched", {"job_id": 1, "worker_id": "w1"})
        w._last_look = -1e9  # the monotonic clock of pump(): let the first tick look
        clock[0] = 0.6
        sched.run_due()
        assert w.data["jobs"] == 1 and w.state["counts"]["dispatched"] == 1
        updates = len(w.comm.updates())
        writer.domain("JobCompleted", {"job_id": 1, "worker_id": "w1", "rows": 3})
        w.pump()  # within the interval of the last look: coalesced, nothing re-read
        assert len(w.comm.updates()) == updates
        w.sync()  # the end of a blocking call catches up at once
        assert w.state["counts"]["completed"] == 1
    finally:
        writer.close()


def test_display_data_carries_a_static_svg_snapshot(comms: list[RecordingComm]) -> None:
    w = timeline(SESSION)
    data, _ = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "<svg" in data["text/html"] and "w1" in data["text/html"]
    assert data["text/plain"].startswith("golden_session.tape: 33 events, 4 jobs")


def test_the_kernel_free_source_answers_as_the_widget(comms: list[RecordingComm]) -> None:
    """``TimelineSource`` (what the ``.tape`` viewer's server extension serves) gives the
    widget's first payload, end state, scrubber states and events."""
    from casparian_nb.tape.timeline_view import TimelineSource

    src, w = TimelineSource(SESSION), timeline(SESSION)
    assert src.payload() == w.data
    assert src.end() == {"state": w.state, "position": w.position}
    for seq in (3, 13, 22):
        assert src.at(seq=seq) == {"state": w.scrub(seq=seq), "position": w.position}
    assert src.at(t=2.5)["state"] == w.scrub(t=2.5)
    assert src.event(13) == w.event(13) and src.event(13)["seq"] == 13


def test_a_followed_timeline_refreshes_its_saved_snapshot_when_a_cell_finishes(
        tmp_path: Path) -> None:
    """In a real kernel: the display of ``cf.timeline(live session)`` is updated after each
    cell that grew the tape (post_run_cell), so the saved notebook's SVG is the latest; a
    timeline of a finished tape registers no hook at all."""
    import nbformat
    from nbclient import NotebookClient

    tape = tmp_path / "live.tape"
    cells = [
        "import casparian_nb as cf\n"
        "from pathlib import Path\n"
        "from casparian_nb.tape import TapeWriter\n"
        f"writer = TapeWriter(Path({str(tape)!r}), producer='notebook', redact=False)\n"
        "writer.domain('WorkerJoined', {'worker_id': 'w1', 'slots': 1, 'pid': 1})\n"
        "class Live:\n"
        "    tape_path = Path(" + repr(str(tape)) + ")\n"
        "    _widgets = set()\n"
        "hooks = len(get_ipython().events.callbacks['post_run_cell'])\n"
        "cf.timeline(Live())",
        "writer.domain('JobQueued', {'job_id': 1, 'plugin_name': 'p'})\n"
        "writer.domain('JobDispatched', {'job_id': 1, 'worker_id': 'w1'})\n"
        "writer.domain('JobCompleted', {'job_id': 1, 'worker_id': 'w1', 'rows': 3})",
        "still = cf.timeline(" + repr(str(SESSION)) + ")\n"
        "print(len(get_ipython().events.callbacks['post_run_cell']) - hooks)\n"
        "writer.close()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for o in nb.cells[0].outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1
    assert "1 jobs" in shown[0]["data"]["text/plain"], shown[0]["data"]["text/plain"]
    assert "completed 1" in shown[0]["data"]["text/html"]
    assert nb.cells[2].outputs[0]["text"].strip() == "1"  # only the followed one hooked in

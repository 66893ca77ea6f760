"""TapeWriter: envelope shape, gapless seq across threads, one writer per file, lifecycle."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from casparian_nb.errors import TapeError
from casparian_nb.tape import (
    TapeLockedError,
    TapeWriter,
    read_tape,
    validate_tape,
)

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["schema_version", "event_id", "seq", "timestamp", "correlation_id", "parent_id",
        "event_name", "payload"]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_envelope_key_order_types_and_tape_started(tmp_path: Path) -> None:
    """Every line has the v1 keys in the original's order; TapeStarted carries no host/cwd."""
    path = tmp_path / "t.tape"
    with TapeWriter(path, producer="notebook") as tape:
        tape.emit("domain_event", "JobQueued", {"job_id": "1"})
    events = lines(path)
    assert [list(e) for e in events] == [KEYS] * 3
    started = events[0]
    assert started["seq"] == 0 and started["event_name"] == {"type": "tape_started"}
    assert set(started["payload"]) == {"producer", "casparian_version", "salt_hash", "redaction"}
    assert started["payload"]["producer"] == "notebook"
    assert started["payload"]["redaction"] == "hash"
    assert started["payload"]["salt_hash"] == tape.salt_hash
    raw = path.read_text(encoding="utf-8")
    assert os.getcwd() not in raw
    for e in events:
        assert uuid.UUID(e["event_id"]).version == 4
        assert TS.match(e["timestamp"]), e["timestamp"]
    assert events[1]["event_name"] == {"type": "domain_event", "name": "JobQueued"}
    assert events[2]["event_name"] == {"type": "tape_stopped"}
    assert events[2]["payload"] == {"reason": "session_end"}


def test_command_response_links(tmp_path: Path) -> None:
    """command/succeeded/failed share the correlation id; responses point at the command."""
    path = tmp_path / "t.tape"
    with TapeWriter(path) as tape:
        cmd, corr = tape.command("Run", {"plugin": "p.py"})
        ok = tape.succeeded(cmd, corr, {"rows": 3})
        cmd2, corr2 = tape.command("Jobs")
        bad = tape.failed(cmd2, corr2, ValueError("boom"))
    ev = {e["event_id"]: e for e in lines(path)}
    assert ev[cmd]["event_name"] == {"type": "ui_command", "name": "Run"}
    assert ev[cmd]["correlation_id"] == corr
    assert ev[ok]["parent_id"] == cmd and ev[ok]["correlation_id"] == corr
    assert ev[ok]["event_name"] == {"type": "system_response", "name": "CommandSucceeded"}
    assert ev[ok]["payload"] == {"status": "success", "rows": 3}
    assert ev[bad]["event_name"] == {"type": "error_event", "name": "CommandFailed"}
    assert ev[bad]["payload"] == {"status": "failed", "error": "ValueError: boom"}
    assert ev[bad]["parent_id"] == cmd2 and corr2 != corr
    assert validate_tape(path).valid


def test_threads_keep_seq_gapless_and_lines_whole(tmp_path: Path) -> None:
    """8 threads x 500 events: seq 0..N-1 in file order, every line parses."""
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(500):
            tape.emit("domain_event", "JobStarted", {"job_id": f"{n}-{i}", "worker_id": "w"})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tape.close()
    events = lines(path)
    assert [e["seq"] for e in events] == list(range(8 * 500 + 2))
    assert len({e["event_id"] for e in events}) == len(events)
    report = validate_tape(path)
    assert report.valid and not report.issues


def test_second_writer_in_another_process_fails_clearly(tmp_path: Path) -> None:
    """flock: a second process cannot open the tape, and does not truncate it."""
    path = tmp_path / "t.tape"
    with TapeWriter(path) as tape:
        tape.emit("domain_event", "JobQueued", {"job_id": "1"})
        code = textwrap.dedent(f"""
            from casparian_nb.tape import TapeWriter, TapeLockedError
            try:
                TapeWriter({str(path)!r})
            except TapeLockedError as exc:
                print("LOCKED", exc)
            else:
                print("OPENED")
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert "LOCKED" in out.stdout, out.stdout + out.stderr
        assert "already being written" in out.stdout
        assert len(lines(path)) == 2  # nothing truncated by the failed opener
    assert validate_tape(path).valid


def test_second_writer_in_same_process_fails_then_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    with pytest.raises(TapeLockedError):
        TapeWriter(path)
    tape.close()
    TapeWriter(path).close()  # free again after close


def test_close_is_idempotent_and_closed_writer_refuses(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    tape.close("kernel_restart")
    tape.close()
    assert tape.closed
    with pytest.raises(TapeError):
        tape.emit("domain_event", "JobQueued", {"job_id": "1"})
    events = lines(path)
    assert [e["event_name"]["type"] for e in events] == ["tape_started", "tape_stopped"]
    assert events[-1]["payload"] == {"reason": "kernel_restart"}


def test_exception_in_with_block_stops_with_reason_error(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    with pytest.raises(RuntimeError), TapeWriter(path):
        raise RuntimeError("x")
    assert lines(path)[-1]["payload"] == {"reason": "error"}


@pytest.mark.parametrize("kind", ["tape_started", "tape_stopped", "bogus"])
def test_emit_rejects_writer_owned_and_unknown_types(tmp_path: Path, kind: str) -> None:
    with TapeWriter(tmp_path / "t.tape") as tape, pytest.raises(ValueError):
        tape.emit(kind, "X", {})


def test_fixed_clock_and_ids_make_identical_tapes(tmp_path: Path) -> None:
    """Same salt, clock and ids -> byte-identical files (golden tapes rely on this)."""
    def write(path: Path) -> bytes:
        ticks = iter(range(100))
        ids = iter(range(1, 100))
        with TapeWriter(path, salt=b"s" * 32, clock=lambda: 1767225600.0 + next(ticks) / 4,
                        ids=lambda: f"id-{next(ids)}") as tape:
            tape.emit("domain_event", "JobQueued", {"job_id": 1, "input_file": "/a/b.csv"})
        return path.read_bytes()

    a, b = write(tmp_path / "a.tape"), write(tmp_path / "b.tape")
    assert a == b
    first = json.loads(a.splitlines()[0])
    assert first["timestamp"] == "2026-01-01T00:00:00.000000Z"
    assert json.loads(a.splitlines()[1])["timestamp"] == "2026-01-01T00:00:00.250000Z"


def test_non_json_values_are_written_as_valid_json(tmp_path: Path) -> None:
    """NaN becomes null, lone surrogates become escapes, objects become strings."""
    path = tmp_path / "t.tape"
    with TapeWriter(path, redact=False) as tape:
        tape.emit("domain_event", "JobCompleted",
                  {"job_id": "1", "duration_ms": float("nan"), "note": "bad \udcff byte",
                   "path": Path("/x")})
    payload = lines(path)[1]["payload"]
    assert payload["duration_ms"] is None
    assert payload["note"] == "bad \udcff byte"
    assert payload["path"] == "/x"
    assert lines(path)[0]["payload"]["redaction"] == "none"


def test_forked_child_cannot_write_the_parents_tape(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    pid = os.fork()
    if pid == 0:  # child: writing must fail, closing must not write TapeStopped
        try:
            tape.emit("domain_event", "JobQueued", {"job_id": "x"})
            os._exit(1)
        except TapeError:
            tape.close()
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    tape.emit("domain_event", "JobQueued", {"job_id": "1"})
    tape.close()
    assert [e["seq"] for e in lines(path)] == [0, 1, 2]


def test_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    with TapeWriter(path) as tape:
        eid = tape.emit("domain_event", "JobStarted", {"job_id": 7, "worker_id": "w1"},
                        correlation_id="c", parent_id=None)
    events = list(read_tape(path))
    assert [e.seq for e in events] == [0, 1, 2]
    ev = events[1]
    assert (ev.event_id, ev.kind, ev.name, ev.job_id, ev.line) == (
        eid, "domain_event", "JobStarted", "7", 2)
    assert ev.to_dict() == lines(path)[1]

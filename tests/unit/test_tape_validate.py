"""validate_tape: every defect kind is caught, on the right line; golden tapes are valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from casparian_nb.errors import TapeError
from casparian_nb.tape import TapeWriter, validate_tape

ROOT = Path(__file__).resolve().parents[2]
TAPES = ROOT / "tapes"


def ev(seq: int, eid: str | None = None, kind: str = "domain_event", name: str | None = "X",
       *, parent: str | None = None, version: int = 1,
       ts: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    event_name = {"type": kind} if kind in ("tape_started", "tape_stopped") else {
        "type": kind, "name": name}
    return {"schema_version": version, "event_id": eid or f"e{seq}", "seq": seq,
            "timestamp": ts, "correlation_id": None, "parent_id": parent,
            "event_name": event_name, "payload": {}}


def start(seq: int = 0) -> dict[str, Any]:
    return ev(seq, kind="tape_started")


def stop(seq: int) -> dict[str, Any]:
    return ev(seq, kind="tape_stopped")


def write(tmp_path: Path, *rows: Any, tail: str = "") -> Path:
    path = tmp_path / "t.tape"
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_text(text + tail, encoding="utf-8")
    return path


def kinds(path: Path) -> list[tuple[int, str]]:
    return [(i.line, i.kind) for i in validate_tape(path).issues]


@pytest.mark.parametrize("name", sorted(p.name for p in TAPES.glob("*.tape")))
def test_golden_tapes_are_valid(name: str) -> None:
    """Every checked-in tape (hand-made, builder-made or recorded) is valid and clean."""
    report = validate_tape(TAPES / name)
    assert report.valid and report.issues == [], report.to_text()
    assert report.schema_version == 1


def test_golden_original_text_layout() -> None:
    text = validate_tape(TAPES / "golden_original.tape").to_text()
    assert text.splitlines() == [
        "=== Tape Validation ===", f"File: {TAPES / 'golden_original.tape'}", "Lines: 7",
        "Schema Version: 1", "", "Result: VALID ✓"]


CASES: list[tuple[str, list[Any], str, list[tuple[int, str]]]] = [
    ("parse_error", [start(), "{not json", ev(2), stop(3)], "", [(2, "parse_error")]),
    ("parse_error then gap", [start(), "[1,", ev(3), stop(4)], "",
     [(2, "parse_error"), (3, "seq_gap")]),
    ("bad_envelope", [start(), {**ev(1), "seq": "one"}, stop(2)], "", [(2, "bad_envelope")]),
    ("missing key", [start(), {k: v for k, v in ev(1).items() if k != "timestamp"}, stop(2)],
     "", [(2, "bad_envelope")]),
    ("no name", [start(), {**ev(1), "event_name": {"type": "ui_command"}}, stop(2)], "",
     [(2, "bad_envelope")]),
    ("missing_event_id", [start(), {**ev(1), "event_id": ""}, stop(2)], "",
     [(2, "missing_event_id")]),
    ("bad_timestamp", [start(), ev(1, ts="yesterday"), stop(2)], "", [(2, "bad_timestamp")]),
    ("naive timestamp", [start(), ev(1, ts="2026-01-01T00:00:00"), stop(2)], "",
     [(2, "bad_timestamp")]),
    ("unknown_event_type", [start(), ev(1, kind="telemetry"), stop(2)], "",
     [(2, "unknown_event_type")]),
    ("schema_version mismatch", [start(), ev(1, version=2), stop(2)], "",
     [(2, "schema_version")]),
    ("schema_version first", [{**start(), "schema_version": 2}, ev(1, version=2),
                              {**stop(2), "schema_version": 2}], "", [(1, "schema_version")]),
    ("seq_gap", [start(), ev(1), ev(3), stop(4)], "", [(3, "seq_gap")]),
    ("seq_repeat", [start(), ev(1), ev(1, eid="other"), stop(2)], "", [(3, "seq_repeat")]),
    ("seq backwards", [start(), ev(2), ev(1), stop(3)], "",
     [(2, "seq_gap"), (3, "seq_repeat"), (4, "seq_gap")]),
    ("duplicate_event_id", [start(), ev(1, eid="dup"), ev(2, eid="dup"), stop(3)], "",
     [(3, "duplicate_event_id")]),
    ("parent later", [start(), ev(1, parent="e2"), ev(2), stop(3)], "",
     [(2, "parent_not_earlier")]),
    ("parent unknown", [start(), ev(1), ev(2, parent="nope"), stop(3)], "",
     [(3, "parent_not_earlier")]),
    ("parent self", [start(), ev(1, parent="e1"), stop(2)], "", [(2, "parent_not_earlier")]),
    ("first_event", [ev(0, kind="ui_command", name="Run"), stop(1)], "", [(1, "first_event")]),
    ("truncated", [start(), ev(1)], '{"schema_version":1,"event_id":"e2","se',
     [(3, "truncated")]),
]


@pytest.mark.parametrize(("label", "rows", "tail", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_defect_is_caught_on_its_line(tmp_path: Path, label: str, rows: list[Any],
                                           tail: str, expected: list[tuple[int, str]]) -> None:
    path = write(tmp_path, *rows, tail=tail)
    found = [x for x in kinds(path) if x[1] != "missing_tape_stopped"]
    assert found == expected
    report = validate_tape(path)
    assert not report.valid
    assert all(str(i).startswith(f"Line {i.line}: ") for i in report.issues)


def test_missing_tape_stopped_is_a_warning_only(tmp_path: Path) -> None:
    """A crash-cut tape whose last line is whole stays VALID, with a warning."""
    path = write(tmp_path, start(), ev(1), ev(2))
    report = validate_tape(path)
    assert report.valid
    assert [(i.line, i.kind, i.severity) for i in report.issues] == [
        (3, "missing_tape_stopped", "warning")]
    assert "Result: VALID ✓" in report.to_text()


def test_events_after_stop_warn(tmp_path: Path) -> None:
    path = write(tmp_path, start(), stop(1), ev(2))
    assert [(i.line, i.kind, i.severity) for i in validate_tape(path).issues] == [
        (3, "events_after_stop", "warning")]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path, start(), "", ev(1), "   ", ev(3), stop(4))
    assert kinds(path) == [(5, "seq_gap")]
    assert validate_tape(path).lines == 6


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert kinds(path) == [(1, "empty")]
    assert not validate_tape(path).valid


def test_not_utf8_is_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_bytes(json.dumps(start()).encode() + b"\n\xff\xfe\n" +
                     json.dumps(stop(1)).encode() + b"\n")
    assert kinds(path) == [(2, "parse_error")]


def test_crash_truncated_writer_tape(tmp_path: Path) -> None:
    """Write events, then append half a line: validate names it; earlier lines are fine."""
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    for i in range(5):
        tape.emit("domain_event", "JobQueued", {"job_id": str(i)})
    with path.open("ab") as fh:
        fh.write(b'{"schema_version":1,"event_id":"abc","seq":6,"timest')
    report = validate_tape(path)
    assert [(i.line, i.kind) for i in report.errors] == [(7, "truncated")]
    assert report.events == 6 and not report.valid
    tape.close()


def test_text_and_json_reports(tmp_path: Path) -> None:
    path = write(tmp_path, start(), ev(1), ev(3), stop(4))
    report = validate_tape(path)
    text = report.to_text().splitlines()
    assert text[:5] == ["=== Tape Validation ===", f"File: {path}", "Lines: 4",
                        "Schema Version: 1", ""]
    assert "Issues (1):" in text and "  - Line 3: Sequence gap (1 -> 3)" in text
    assert text[-1] == "Result: INVALID ✗"
    data = report.to_json()
    assert data["valid"] is False and data["lines"] == 4 and data["events"] == 4
    assert data["issues"] == [{"line": 3, "kind": "seq_gap", "severity": "error",
                               "message": "Sequence gap (1 -> 3)"}]
    json.dumps(data)


def test_missing_file_raises_tape_error(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="cannot read tape"):
        validate_tape(tmp_path / "nope.tape")
    with pytest.raises(TapeError, match="directory"):
        validate_tape(tmp_path)


def test_a_bad_timestamp_and_a_bad_event_name_on_one_line_is_one_issue_not_a_crash(
        tmp_path: Path) -> None:
    row = ev(1, "b")
    row.update(timestamp="not a time", event_name="oops")
    path = write(tmp_path, start(), row, stop(2))
    assert kinds(path) == [(2, "bad_envelope")]


def _adversarial_tape(rng: Any, n: int) -> bytes:
    """Valid-looking events with every kind of defect sprinkled in, at random."""
    lines: list[bytes] = []
    ids: list[str] = []
    seq = 0
    for i in range(n):
        r = rng.random()
        row: Any = ev(seq, f"e{rng.randint(0, 10**9)}",
                      rng.choice(["domain_event", "ui_command", "system_response",
                                  "error_event", "tape_stopped"]), rng.choice(["X", "Y"]))
        if i == 0:
            row = start()
        seq += rng.choice([1] * 12 + [0, 2, -1, 5])
        if r < 0.05 and ids:
            row["event_id"] = rng.choice(ids)  # duplicate
        elif r < 0.10:
            row["parent_id"] = rng.choice([*ids[-3:], "nowhere", 7])
        elif r < 0.13:
            row.pop(rng.choice(list(row)))
        elif r < 0.16:
            key = rng.choice(["schema_version", "seq", "event_id", "correlation_id"])
            row[key] = rng.choice([True, -3, "1", None, "", 2, [1]])
        elif r < 0.19:
            row["timestamp"] = rng.choice(["bad", 5, "2026-01-01T00:00:00+02:00"])
        elif r < 0.22:
            row["event_name"] = rng.choice(["oops", {"type": "nope"}, {"type": "ui_command"},
                                            {"name": "X"}, {"type": 3}])
        if isinstance(row.get("event_id"), str):
            ids.append(row["event_id"])
        text = json.dumps(row, separators=(",", ":")).encode()
        r = rng.random()
        if r < 0.03:
            lines.append(b"not json\n")
        elif r < 0.05:
            lines.append(rng.choice([b"\n", b"  \n", b"\r\n", b"[1]\n", b"{}\n", b"\xff\n"]))
        elif r < 0.06:
            lines.append(text + text + b"\n")  # two values on one line
        elif r < 0.07:
            lines.append(text.replace(b',"seq"', b',\n"seq"') + b"\n")  # one over two lines
        lines.append(text + b"\n")
    if rng.random() < 0.5:
        lines.append(lines[-1][: rng.randint(1, 30)].rstrip(b"\n"))  # cut off
    return b"".join(lines)


@pytest.mark.parametrize("block", [1 << 22, 4096, 300])
def test_decoded_blocks_and_line_by_line_checks_report_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """validate decodes blocks with msgspec and falls back to ``json`` line by line; on
    adversarial tapes both give the same report, issue for issue."""
    import random

    from casparian_nb.tape import validate as mod

    def report(path: Path) -> Any:
        r = validate_tape(path)
        return r.lines, r.events, r.schema_version, [
            (i.line, i.kind, i.message, i.severity) for i in r.issues]

    rng = random.Random(block)
    from casparian_nb.tape import reader

    monkeypatch.setattr(reader, "_BLOCK", block)
    fast_used = 0
    real_fast = mod._fast_block

    def counting(*args: Any) -> bool:
        nonlocal fast_used
        ok = real_fast(*args)
        fast_used += ok
        return ok

    for trial in range(25):
        path = tmp_path / f"t{trial}.tape"
        path.write_bytes(_adversarial_tape(rng, rng.randint(1, 400)))
        monkeypatch.setattr(mod, "_fast_block", counting)
        fast = report(path)
        monkeypatch.setattr(mod, "_fast_block", lambda *args: False)
        slow = report(path)
        assert fast == slow, trial
    assert fast_used > 0  # the decoded path really ran

"""explain_tape: golden expectations, first-appearance order, numeric ids, crash-cut tapes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from casparian_nb.errors import TapeError
from casparian_nb.tape import TapeWriter, explain_tape

ROOT = Path(__file__).resolve().parents[2]
TAPES = ROOT / "tapes"


def line(seq: int, kind: str, name: str | None, payload: Any, *, corr: str | None = None,
         ts: str | None = None) -> str:
    event_name = {"type": kind} if name is None else {"type": kind, "name": name}
    return json.dumps({"schema_version": 1, "event_id": f"e{seq}", "seq": seq,
                       "timestamp": ts or f"2026-01-01T00:00:{seq:02d}Z",
                       "correlation_id": corr, "parent_id": None, "event_name": event_name,
                       "payload": payload}, separators=(",", ":")) + "\n"  # canonical


def dom(seq: int, name: str, **payload: Any) -> str:
    return line(seq, "domain_event", name, payload)


EXPECTED = sorted(p.name.removesuffix(".explain.json") for p in TAPES.glob("*.explain.json"))


def test_both_golden_tapes_have_expectations() -> None:
    assert {"golden_original", "golden_session"} <= set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_golden_explain_equals_checked_in_json(name: str) -> None:
    """Every tapes/<name>.tape explains to its checked-in tapes/<name>.explain.json."""
    expected = json.loads((TAPES / f"{name}.explain.json").read_text(encoding="utf-8"))
    ex = explain_tape(TAPES / f"{name}.tape")
    assert ex.to_json() == expected
    buf = io.StringIO()
    ex.write_json(buf)  # the streaming writer produces the same document
    assert json.loads(buf.getvalue()) == expected


def test_golden_original_matches_the_reference() -> None:
    """Reference §6.5: 7 events, commands [Scan], job 123 completed, 1000 rows, [orders]."""
    data = explain_tape(TAPES / "golden_original.tape").to_json()
    assert data["schema_version"] == 1 and data["event_count"] == 7
    assert data["commands"] == ["Scan"]
    job = data["jobs"][0]
    assert {k: job[k] for k in ("job_id", "plugin_name", "status", "rows", "outputs",
                                "error")} == {
        "job_id": "123", "plugin_name": "test_parser", "status": "completed", "rows": 1000,
        "outputs": ["orders"], "error": None}
    assert data["materializations"] == 1 and data["errors"] == []
    text = explain_tape(TAPES / "golden_original.tape").to_text()
    assert text.startswith("=== Tape Summary ===\n\nSchema Version: 1\nTotal Events: 7\n")
    assert "  [completed] 123 - test_parser 1000 rows\n" in text
    assert "  Summary: 1 completed, 0 failed, 1000 total rows\n" in text
    assert "Materializations: 1\n" in text


def test_golden_session_story() -> None:
    data = explain_tape(TAPES / "golden_session.tape").to_json()
    jobs = {j["job_id"]: j for j in data["jobs"]}
    assert [j["job_id"] for j in data["jobs"]] == ["1", "2", "3", "4"]
    assert [(j["status"], j["retries"], j["cancel_requested"]) for j in jobs.values()] == [
        ("completed", 0, False), ("completed", 1, False), ("aborted", 0, True),
        ("failed", 0, False)]
    assert jobs["2"]["outputs"] == ["orders", "orders_quarantine"] and jobs["2"]["error"] is None
    assert jobs["4"]["error"].startswith("PermanentError: missing column 'amount' in <redacted:")
    assert data["commands"] == ["Submit", "Cancel", "Query"]
    assert data["summary"]["total_rows"] == 200 and data["retries"] == 1
    assert data["cancels"] == 1
    workers = {w["worker_id"]: w for w in data["workers"]}
    assert workers["w1"]["busy_s"] == 4.0 and workers["w2"]["busy_s"] == 2.5
    assert workers["w1"]["utilisation"] == 0.5


def test_job_ids_as_numbers_and_strings_are_one_job(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) +
                    dom(1, "JobQueued", job_id=7, plugin_name="p") +
                    dom(2, "JobDispatched", job_id="7", worker_id="w") +
                    dom(3, "JobCompleted", job_id=7.0, rows=5) +
                    dom(4, "MaterializationRecorded", job_id="7", output_name="o", rows=5))
    jobs = explain_tape(path).to_json()["jobs"]
    assert len(jobs) == 1
    assert (jobs[0]["job_id"], jobs[0]["status"], jobs[0]["rows"], jobs[0]["outputs"]) == (
        "7", "completed", 5, ["o"])


def test_jobs_in_first_appearance_order_and_statuses(tmp_path: Path) -> None:
    rows = [line(0, "tape_started", None, {})]
    ids = ["30", "4", "1000", "2", "x"]
    for n, jid in enumerate(ids, start=1):
        rows.append(dom(n, "JobQueued", job_id=jid))
    rows += [dom(6, "JobSkipped", job_id="x", reason="unchanged"),
             dom(7, "JobDispatched", job_id="2", worker_id="w1"),
             dom(8, "JobStarted", job_id="2", worker_id="w1"),
             dom(9, "JobDispatched", job_id="1000", worker_id="w2"),
             dom(10, "WorkerLost", worker_id="w2", requeued_job_ids=[1000]),
             dom(11, "JobAborted", job_id="4", reason="cancelled"),
             dom(12, "JobStarted", job_id="4", worker_id="w1")]  # late: no resurrection
    path = tmp_path / "t.tape"
    path.write_text("".join(rows))
    jobs = explain_tape(path).to_json()["jobs"]
    assert [j["job_id"] for j in jobs] == ids
    assert [j["status"] for j in jobs] == ["queued", "aborted", "queued", "running", "skipped"]
    assert jobs[2]["worker_id"] is None and jobs[1]["reason"] == "cancelled"


def test_errors_read_error_and_message_keys(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) +
                    line(1, "ui_command", "Run", {}, corr="c1") +
                    line(2, "error_event", "CommandFailed", {"status": "failed",
                                                             "error": "boom"}, corr="c1") +
                    line(3, "error_event", "Oops", {"message": "m"}) +
                    line(4, "system_response", "QueryError", {"error": "bad sql"}) +
                    line(5, "error_event", "Bare", {}))
    data = explain_tape(path).to_json()
    assert data["errors"] == ["CommandFailed: boom", "Oops: m", "QueryError: bad sql", "Bare"]
    assert data["command_list"] == [
        {"name": "Run", "status": "failed", "correlation_id": "c1", "error": "boom",
         "jobs_queued": 0}]


def test_crash_truncated_tape_explains_complete_events(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    tape = TapeWriter(path)
    tape.emit("domain_event", "JobQueued", {"job_id": "1", "plugin_name": "p"})
    tape.emit("domain_event", "JobDispatched", {"job_id": "1", "worker_id": "w"})
    with path.open("ab") as fh:
        fh.write(b'{"schema_version":1,"event_id":"x","seq":3,"timestamp":"2026-01-01T00:0')
    ex = explain_tape(path)
    data = ex.to_json()
    assert data["event_count"] == 3 and data["truncated"] is True
    assert data["truncated_line"] == 4 and data["skipped_lines"] == []
    assert data["jobs"][0]["status"] == "dispatched"
    assert "Warning: line 4 is truncated" in ex.to_text()
    tape.close()


@pytest.mark.parametrize("cut", [1, 2, 3, 30])
def test_line_cut_anywhere_near_the_end_is_truncation(tmp_path: Path, cut: int) -> None:
    """Cut the last line just before/after its payload closes: never a crash."""
    last = dom(2, "JobCompleted", job_id="1", rows=4).rstrip("\n")
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) + dom(1, "JobQueued", job_id="1") +
                    last[:-cut])
    data = explain_tape(path).to_json()
    assert data["truncated_line"] == 3 and data["event_count"] == 2
    assert data["jobs"][0]["status"] == "queued"


def test_bad_middle_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) + "garbage\n" +
                    dom(2, "JobQueued", job_id="1") + "[1, 2]\n")
    data = explain_tape(path).to_json()
    assert data["event_count"] == 2 and data["skipped_lines"] == [2, 4]
    assert data["truncated"] is False


def test_non_canonical_key_order_takes_the_slow_path(tmp_path: Path) -> None:
    """A hand-written line with keys in another order (and nested look-alikes) still
    explains right: the fast path only accepts the canonical layout."""
    odd = json.dumps({"payload": {"job_id": "9", "event_name": {"type": "x"}},
                      "event_name": {"type": "domain_event", "name": "JobQueued"},
                      "schema_version": 1, "event_id": "a", "seq": 1,
                      "timestamp": "2026-01-01T00:00:01Z"}) + "\n"
    tricky = ('{"schema_version":1,"event_id":"b","seq":2,"timestamp":"2026-01-01T00:00:02Z",'
              '"correlation_id":null,"parent_id":null,"event_name":{"type":"domain_event",'
              '"name":"JobCompleted"},"payload":{"job_id":"9","rows":3},"extra":1}\n')
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) + odd + tricky)
    jobs = explain_tape(path).to_json()["jobs"]
    assert [(j["job_id"], j["status"], j["rows"]) for j in jobs] == [("9", "completed", 3)]


def test_not_a_tape(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text("hello\nworld\n")
    with pytest.raises(TapeError, match="not a tape"):
        explain_tape(path)
    with pytest.raises(TapeError):
        explain_tape(tmp_path / "missing.tape")
    empty = tmp_path / "e.tape"
    empty.write_text("")
    assert explain_tape(empty).to_json()["event_count"] == 0


def test_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    """The golden session re-serialised with spaces (slow path only) explains the same."""
    src = TAPES / "golden_session.tape"
    spaced = tmp_path / "spaced.tape"
    spaced.write_text("".join(json.dumps(json.loads(x)) + "\n"
                              for x in src.read_text().splitlines()))
    assert explain_tape(spaced).to_json() == explain_tape(src).to_json()


def test_golden_session_is_reproducible_from_its_builder(tmp_path: Path) -> None:
    """tapes/make_golden_session.py rebuilds the checked-in tape byte for byte (bar the
    package version recorded in TapeStarted)."""
    import re
    import subprocess
    import sys

    out = tmp_path / "g.tape"
    subprocess.run([sys.executable, str(TAPES / "make_golden_session.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=60)

    def norm(p: Path) -> str:
        return re.sub(r'"casparian_version":"[^"]*"', '"casparian_version":"X"', p.read_text())

    assert norm(out) == norm(TAPES / "golden_session.tape")


def test_job_lines_are_the_json_of_to_dict_whatever_the_values() -> None:
    """The fast per-job encoder (msgspec) writes what ``to_dict()`` holds, whatever the values:
    odd ones (a lone surrogate from an undecodable line) take ``json`` with escapes, and
    NaN/infinity become null, so every line is strict UTF-8 JSON."""
    import math
    import random

    from casparian_nb.tape.explain import encode_jobs
    from casparian_nb.tape.reducer import JobRecord

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    rng = random.Random(3)
    pool: list[Any] = [None, True, False, 0, -1, 7, 2**70, 0.0, -0.0, 1.5, 1e-05, 1e16,
                       float("nan"), float("inf"), "", "x", 'q"uote', "back\\slash", "tab\t",
                       "é\u2028\x7f", "\udc80", [], ["a"], {"k": [1, {"z": None}]}, ("t",)]
    jobs = []
    for _ in range(3000):
        job = JobRecord(rng.choice(["1", "j\"x", "é", ""]))
        for attr in ("plugin_name", "plugin_version", "status", "error", "worker_id",
                     "duration_ms", "error_kind", "reason", "quarantine_rows", "input_file",
                     "cancel_requested", "retries", "attempts"):
            if rng.random() < 0.6:
                setattr(job, attr, rng.choice(pool))
        if rng.random() < 0.7:
            job.rows = rng.choice([0, 5, 2**64, True, 1.0])
        if rng.random() < 0.7:
            job.outputs = rng.choice([[], ["a", "b"], ["é", 'x"'], [1], ("a",)])
        jobs.append(job)
    lines = encode_jobs(jobs).split(b",\n    ")
    assert len(lines) == len(jobs)
    for i, (job, raw) in enumerate(zip(jobs, lines, strict=True)):
        assert json.loads(raw.decode("utf-8")) == finite(job.to_dict()), i


def _story(data: dict[str, Any]) -> dict[str, Any]:
    drop = ("event_count", "skipped_lines", "truncated", "truncated_line")
    return {k: v for k, v in data.items() if k not in drop}


@pytest.mark.parametrize("block", [64, 700, 1 << 22])
def test_decoded_blocks_and_line_by_line_parsing_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Blocks that msgspec decodes and blocks that fall back to ``json`` line by line (one
    bad line spoils its block) explain the same story; lines longer than a block too."""
    from casparian_nb.tape import reader

    monkeypatch.setattr(reader, "_BLOCK", block)
    src = TAPES / "golden_session.tape"
    lines = src.read_text().splitlines(keepends=True)
    clean = explain_tape(src).to_json()
    spoiled = tmp_path / "spoiled.tape"
    bad_at = [3, len(lines) // 2, len(lines) - 1]
    out = list(lines)
    for n in reversed(bad_at):
        out.insert(n, "not json\n")
    spoiled.write_text("".join(out))
    data = explain_tape(spoiled).to_json()
    assert _story(data) == _story(clean)
    assert data["event_count"] == clean["event_count"]
    assert data["skipped_lines"] == [n + 1 + i for i, n in enumerate(bad_at)]


def test_non_envelopes_and_blank_lines_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) + "\n  \n" + "{}\n" +
                    dom(1, "JobQueued", job_id="1") + '{"event_name": null}\n' +
                    dom(2, "JobCompleted", job_id=1, rows=4) + "\r\n")
    data = explain_tape(path).to_json()
    assert data["skipped_lines"] == [4, 6]
    assert data["event_count"] == 3
    assert [(j["job_id"], j["status"], j["rows"]) for j in data["jobs"]] == [("1", "completed", 4)]
    assert data["ended_at"] == "2026-01-01T00:00:02Z"


def test_values_of_unexpected_types_are_tolerated(tmp_path: Path) -> None:
    """Explain is lenient: odd payload values decode as what they are and are ignored where
    they make no sense; an unhashable event name is not a handler."""
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) +
                    dom(1, "JobQueued", job_id="1", plugin_name=["x"], input_file=None) +
                    line(2, "domain_event", None, {"job_id": "1"}).replace(
                        '"type":"domain_event"}', '"type":"domain_event","name":[1]}') +
                    dom(3, "JobCompleted", job_id="1", rows="many", outputs=[1],
                        quarantine_rows=2, duration_ms=True) +
                    dom(4, "MaterializationRecorded", job_id=1.0, output_name="o", rows=2**70))
    data = explain_tape(path).to_json()
    [job] = data["jobs"]
    assert job["status"] == "completed" and job["input_file"] is None
    assert job["rows"] == 2**70 and job["outputs"] == ["o"] and job["quarantine_rows"] == 2
    assert data["materialization_summary"] == [
        {"output_name": "o", "table": None, "count": 1, "rows": 2**70}]


def test_undecodable_bytes_in_a_payload_are_carried_not_fatal(tmp_path: Path) -> None:
    """A line that is not UTF-8 takes the line path (surrogate escapes); its values reach
    the reducer as they are."""
    path = tmp_path / "t.tape"
    raw = dom(1, "JobFailed", job_id="1", error="bad \udcff byte").encode(
        "utf-8", "surrogateescape").replace(b"\\udcff", b"\xff")
    path.write_bytes(line(0, "tape_started", None, {}).encode() + raw)
    [job] = explain_tape(path).to_json()["jobs"]
    assert job["status"] == "failed" and job["error"].startswith("bad ")


def test_an_unhashable_event_name_in_a_block_parsed_line_by_line_is_no_crash(
        tmp_path: Path) -> None:
    """A bad line sends its block to the line-by-line path; an event named ``[1]`` there is
    an unknown event, as it is on the decoded path."""
    path = tmp_path / "t.tape"
    odd = line(2, "domain_event", None, {"job_id": "1"}).replace(
        '"type":"domain_event"}', '"type":"domain_event","name":[1]}')
    path.write_text(line(0, "tape_started", None, {}) + "garbage\n" + odd +
                    dom(3, "JobQueued", job_id="1"))
    data = explain_tape(path).to_json()
    assert data["event_count"] == 3 and data["skipped_lines"] == [2]
    assert [(j["job_id"], j["status"]) for j in data["jobs"]] == [("1", "queued")]


def test_an_unhashable_output_name_or_table_is_explained_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_text(line(0, "tape_started", None, {}) +
                    dom(1, "MaterializationRecorded", job_id="1", output_name=["a"],
                        table={"t": 1}, rows=3) +
                    dom(2, "MaterializationRecorded", job_id="1", output_name="b", rows=2))
    data = explain_tape(path).to_json()
    assert data["materializations"] == 2
    assert [(m["output_name"], m["table"], m["rows"]) for m in
            data["materialization_summary"]] == [("['a']", "{'t': 1}", 3), ("b", None, 2)]
    assert data["jobs"][0]["rows"] == 3

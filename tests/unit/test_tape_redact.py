"""Redaction: by field per event name; a unique marker in user data never reaches the file."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from blake3 import blake3

from casparian_nb.tape import Redactor, TapeWriter, explain_tape
from casparian_nb.tape.redact import HASH, KEEP, TEXT, policy_for


def test_hash_is_salted_blake3_prefix() -> None:
    r = Redactor(b"k" * 32)
    assert r.hash("/data/a.csv") == blake3(b"k" * 32 + b"/data/a.csv").hexdigest()[:16]
    assert r.hash("/data/a.csv") == r.hash("/data/a.csv")  # stable within a tape
    assert Redactor(b"j" * 32).hash("/data/a.csv") != r.hash("/data/a.csv")
    assert r.salt_hash == r.hash(b"k" * 32)
    assert len(Redactor().salt) == 32 and Redactor().salt != Redactor().salt


@pytest.mark.parametrize(("event", "key", "policy"), [
    ("JobQueued", "input_file", HASH), ("JobQueued", "sink", HASH),
    ("JobQueued", "plugin_name", KEEP), ("JobQueued", "job_id", KEEP),
    ("JobFailed", "error", TEXT), ("JobFailed", "error_kind", KEEP),
    ("MaterializationRecorded", "sink", HASH), ("MaterializationRecorded", "table", KEEP),
    ("Query", "sql", HASH), ("Submit", "inputs", HASH), ("Submit", "mode", KEEP),
    ("SomethingNew", "job_id", KEEP), ("SomethingNew", "status", KEEP),
    ("SomethingNew", "run_id", KEEP), ("SomethingNew", "hostname", HASH),
    ("SomethingNew", "intent", HASH), ("SomethingNew", "message", TEXT),
    ("JobQueued", "unexpected_field", HASH),
    ("JobQueued", "plugin_name_source", KEEP), ("JobDispatched", "plugin_name_source", KEEP),
    ("JobCompleted", "plugin_name", KEEP), ("SomethingNew", "plugin_name_source", KEEP),
])
def test_policies(event: str, key: str, policy: str) -> None:
    assert policy_for(event, key) == policy


def test_payload_by_field() -> None:
    r = Redactor(b"s" * 32)
    out = r.payload("JobQueued", {"job_id": 5, "plugin_name": "orders", "priority": 1,
                                  "input_file": "/home/u/in.csv", "sink": "parquet:///o"})
    assert out == {"job_id": 5, "plugin_name": "orders", "priority": 1,
                   "input_file": r.hash("/home/u/in.csv"), "sink": r.hash("parquet:///o")}
    nested = r.payload("Submit", {"inputs": ["/a.csv", "/b.csv"], "mode": "append"})
    assert nested == {"inputs": [r.hash("/a.csv"), r.hash("/b.csv")], "mode": "append"}
    unknown = r.payload("Mystery", {"job_id": "1", "where": "/x", "n": 3,
                                    "opts": {"path": "/y", "status": "ok"}})
    assert unknown == {"job_id": "1", "where": r.hash("/x"), "n": 3,
                       "opts": {r.hash("path"): r.hash("/y"), r.hash("status"): r.hash("ok")}}
    completed = {"job_id": "1", "outputs": {"orders": 3}, "rows": 3}
    assert r.payload("JobCompleted", completed) == completed
    assert Redactor(enabled=False).payload("JobQueued", {"input_file": "/x"}) == {
        "input_file": "/x"}


@pytest.mark.parametrize("event", ["JobQueued", "JobDispatched", "JobCompleted", "SomethingNew"])
def test_a_plugin_name_taken_from_the_file_is_hashed(event: str) -> None:
    """An undeclared plugin name is the file's stem: user data, hashed like any file name
    (``plugin_name_source`` says so); a declared name stays readable."""
    r = Redactor(b"s" * 32)
    from_file = r.payload(event, {"job_id": 1, "plugin_name": "acme_q3_orders",
                                  "plugin_name_source": "file", "plugin_version": "0.0.0"})
    assert from_file == {"job_id": 1, "plugin_name": r.hash("acme_q3_orders"),
                         "plugin_name_source": "file", "plugin_version": "0.0.0"}
    declared = {"job_id": 1, "plugin_name": "orders", "plugin_version": "1.0"}
    assert r.payload(event, declared) == declared
    # Decided by the flag's value, not by its presence; other fields are unaffected.
    other = r.payload(event, {"plugin_name": "orders", "plugin_name_source": "declared"})
    assert other["plugin_name"] == "orders"
    # Nested objects follow the same rule (e.g. a job record inside a free-text field).
    nested = r.payload(event, {"detail": {"plugin_name": "acme", "plugin_name_source": "file"}})
    assert nested["detail"]["plugin_name"] == r.hash("acme")
    assert Redactor(enabled=False).payload(event, {"plugin_name": "acme",
                                                   "plugin_name_source": "file"}) == {
        "plugin_name": "acme", "plugin_name_source": "file"}


def test_undeclared_plugin_name_never_reaches_the_tape(tmp_path: Path) -> None:
    marker = f"MRK{uuid.uuid4().hex[:10]}"
    path = tmp_path / "s.tape"
    with TapeWriter(path, producer="sentinel") as tape:
        for job_id, name, source in (("1", f"plugin_{marker}", "file"), ("2", "orders", None)):
            extra = {"plugin_name_source": source} if source else {}
            tape.domain("JobQueued", {"job_id": job_id, "plugin_name": name, **extra,
                                      "plugin_version": "1", "input_file": "/x.csv"})
            tape.domain("JobDispatched", {"job_id": job_id, "worker_id": "w1",
                                          "plugin_name": name, **extra, "attempt": 1})
            tape.domain("JobCompleted", {"job_id": job_id, "worker_id": "w1",
                                         "plugin_name": name, **extra, "rows": 1,
                                         "outputs": {"out": 1}})
    assert marker.encode() not in path.read_bytes()
    jobs = {j["job_id"]: j for j in explain_tape(path).to_json()["jobs"]}
    hashed = jobs["1"]["plugin_name"]
    assert len(hashed) == 16 and all(c in "0123456789abcdef" for c in hashed)
    assert jobs["1"]["status"] == "completed"
    assert jobs["2"]["plugin_name"] == "orders"  # a declared name stays readable


def test_scrub_keeps_words_and_hashes_paths() -> None:
    r = Redactor(b"s" * 32)
    text = ("TransientError: reading /srv/data/jan.csv failed; also ./rel/x.json, "
            "C:\\Users\\bob\\f.csv, parquet://out/dir and 'orders.csv' (row 3)")
    out = r.scrub(text)
    assert out.startswith("TransientError: reading <redacted:")
    assert "failed; also" in out and "(row 3)" in out
    for secret in ("/srv/data", "jan.csv", "rel/x.json", "Users", "bob", "parquet://",
                   "orders.csv"):
        assert secret not in out, (secret, out)
    assert f"<redacted:{r.hash('/srv/data/jan.csv')}>" in out


def test_scrub_removes_home_user_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from casparian_nb.tape import redact

    monkeypatch.setattr(redact, "_identity",
                        lambda: ("/home/zed-marker", "zedmarker", "box-marker.lan"))
    r = Redactor(b"s" * 32)
    out = r.scrub("user zedmarker on box-marker.lan: ~ is /home/zed-marker; zedmarkers ok")
    assert "zedmarker " not in out and "box-marker" not in out and "/home/zed" not in out
    assert "zedmarkers ok" in out  # whole words only


def test_marker_bytes_never_reach_the_tape(tmp_path: Path) -> None:
    """A unique marker in paths, file names, SQL, free text and paths in error text: the
    written tape (and its explanation) never contains it; ids and statuses stay readable."""
    marker = f"MRK{uuid.uuid4().hex[:10]}"
    work = tmp_path / f"session_{marker}"
    data = work / f"in_{marker}.csv"
    path = tmp_path / "s.tape"
    with TapeWriter(path, producer="cli") as tape:
        cmd, corr = tape.command("Submit", {"plugin": str(work / "plugin.py"),
                                            "inputs": [str(data)], "sink": f"parquet://{work}",
                                            "mode": "append"})
        tape.emit("domain_event", "JobQueued",
                  {"job_id": "1", "plugin_name": "orders", "plugin_version": "1",
                   "input_file": str(data), "priority": 0, "sink": f"duckdb://{work}/x.duckdb"})
        tape.succeeded(cmd, corr, {"job_ids": ["1"]})
        tape.emit("domain_event", "JobFailed",
                  {"job_id": "1", "worker_id": "w1", "error_kind": "permanent",
                   "error": f"FileNotFoundError: [Errno 2] No such file: '{data}'",
                   "retry_count": 0, "will_retry": False})
        tape.emit("domain_event", "JobSkipped", {"job_id": "2", "input_file": f"{marker}.csv",
                                                 "reason": f"unchanged {data}"})
        q, qc = tape.command("Query", {"sql": f"select * from '{work}/*.parquet' -- {marker}"})
        # Error text keeps its words; the marker is in the paths it mentions (a bare word in
        # an error message is kept by design: errors must stay readable).
        tape.failed(q, qc, f"IO Error: cannot open {work}/db.duckdb nor ~/{marker}/x")
        tape.emit("ui_command", "SessionCreate", {"intent": f"clean {marker} files",
                                                  "input_dir": str(work)})
        tape.emit("domain_event", "RunStarted", {"run_id": "r1", "note": marker})
    raw = path.read_bytes()
    assert marker.encode() not in raw
    assert marker.lower().encode() not in raw.lower()
    text = raw.decode()
    assert '"job_id":"1"' in text and '"status":"failed"' in text
    assert "FileNotFoundError: [Errno 2] No such file:" in text  # the words survive
    ex = explain_tape(path).to_json()
    assert marker not in json.dumps(ex)
    assert ex["jobs"][0]["status"] == "failed"

"""Tapes end to end, with real sentinel and worker processes and the real ``casparian`` CLI.

* a sentinel tape explains to the same final job statuses as the state DB (normal, permanent
  and plain errors, transient retries into dead-letter, a cancelled slow job, skips);
* redaction: a whole session run under a directory whose name carries a unique marker (plugin
  and input file names carry it too) leaves the marker's bytes in no tape and nowhere in the
  support bundle;
* every tape the session produced validates, and explains to JSON;
* the CLI's own tape links each UICommand to its CommandSucceeded / CommandFailed.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from casparian_nb import cli
from casparian_nb.client import ControlClient
from casparian_nb.config import Settings
from casparian_nb.store import StateReader
from casparian_nb.tape import explain_tape, read_tape, validate_tape
from tests.conftest import FIXTURE_PLUGIN, make_inputs, wait_until

TERMINAL = {"COMPLETED", "FAILED", "ABORTED", "SKIPPED"}
MAX_RETRIES = 2


# -- fixtures: a home inside a directory named after a unique marker ----------------------------

@pytest.fixture
def marker() -> str:
    return f"MARKER-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def root(tmp_path: Path, marker: str) -> Path:
    r = tmp_path / marker
    r.mkdir()
    return r


@pytest.fixture
def home(root: Path) -> Path:  # overrides conftest's: the home path carries the marker
    h = root / "home"
    h.mkdir(mode=0o700)
    return h


# -- helpers --------------------------------------------------------------------------------------

def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASPARIAN_", "CF_FIXTURE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def casparian(*args: str, cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_input(path: Path, first_line: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(first_line + "\nbody\n")
    return path


def db_statuses(settings: Settings) -> dict[str, str]:
    with StateReader.open(settings.state_db) as reader:
        return {str(j["id"]): j["status"] for j in reader.list_jobs(limit=100_000)}


def wait_terminal(settings: Settings, timeout: float = 90.0) -> dict[str, str]:
    def done() -> dict[str, str] | None:
        statuses = db_statuses(settings)
        return statuses if statuses and set(statuses.values()) <= TERMINAL else None

    return wait_until(done, timeout, interval=0.1, message="every job to finish")


def wait_status(settings: Settings, job_id: int, status: str, timeout: float = 60.0) -> None:
    wait_until(lambda: db_statuses(settings).get(str(job_id)) == status, timeout, interval=0.05,
               message=f"job {job_id} to be {status}")


def sentinel_tapes(settings: Settings) -> list[Path]:
    return sorted(settings.tapes_dir.glob("sentinel-*.tape"))


def marked_plugin(root: Path, marker: str, *, keep_name: bool = True) -> Path:
    plugin = root / f"plugin_{marker}.py"
    source = FIXTURE_PLUGIN.read_text()
    if not keep_name:
        source = source.replace('name = "fixture_plugin"\n', "")
    plugin.write_text(source)
    return plugin


def events(path: Path) -> list[Any]:
    reader = read_tape(path)
    try:
        return list(reader)
    finally:
        reader.close()


# -- (a) a sentinel tape explains to the state DB's job statuses ----------------------------------

def test_sentinel_tape_explains_to_the_state_db_statuses(
        cluster_factory: Callable[..., Any], settings: Settings, root: Path, marker: str) -> None:
    cluster = cluster_factory(workers=2, slots=1, retry_backoff=0.05, max_retries=MAX_RETRIES)
    plugin = marked_plugin(root, marker)
    data = root / "data"
    slow = write_input(data / "a_slow.txt", "mode=slow sleep=60")
    normal = make_inputs(data, 3, prefix="b_ok")
    permanent = write_input(data / "c_permanent.txt", "mode=permanent msg=bad header")
    error = write_input(data / "d_error.txt", "mode=error msg=plain error")
    transient = write_input(data / "e_transient.txt", "mode=transient")
    inputs = [slow, *normal, permanent, error, transient]
    with ControlClient(cluster.info, timeout=10.0) as client:
        reply = client.submit(plugin=str(plugin), inputs=[str(p) for p in inputs])
        ids = dict(zip([p.name for p in inputs], reply["job_ids"], strict=True))
        wait_status(settings, ids[slow.name], "RUNNING")
        cancel = client.cancel_job(ids[slow.name])
        assert cancel["success"], cancel
        wait_terminal(settings)
        # Submitting the completed files again skips them: SKIPPED rows and JobSkipped events.
        again = client.submit(plugin=str(plugin), inputs=[str(p) for p in normal])
        assert len(again["skipped"]) == len(normal) and not again["job_ids"]
    cluster.stop()  # the sentinel closes its tape: TapeStopped

    db = wait_terminal(settings)
    assert db[str(ids[slow.name])] == "ABORTED"
    assert db[str(ids[transient.name])] == "FAILED"
    assert db[str(ids[permanent.name])] == "FAILED"
    assert db[str(ids[error.name])] == "FAILED"
    assert sorted(db.values()).count("SKIPPED") == len(normal)
    assert [db[str(ids[p.name])] for p in normal] == ["COMPLETED"] * len(normal)

    [tape] = sentinel_tapes(settings)
    report = validate_tape(tape)
    assert report.valid and report.issues == [], report.to_text()
    ex = explain_tape(tape).to_json()
    from_tape = {j["job_id"]: j["status"].upper() for j in ex["jobs"]}
    assert from_tape == db
    assert all(isinstance(j["job_id"], str) for j in ex["jobs"])
    # Jobs in order of first appearance (= submission order here).
    assert [j["job_id"] for j in ex["jobs"]] == [str(i) for i in sorted(int(k) for k in db)]

    by_id = {j["job_id"]: j for j in ex["jobs"]}
    tj = by_id[str(ids[transient.name])]
    assert tj["retries"] == MAX_RETRIES and tj["error_kind"] == "transient"
    assert "TransientError" in tj["error"]
    assert by_id[str(ids[permanent.name])]["error_kind"] == "permanent"
    assert by_id[str(ids[slow.name])]["cancel_requested"] is True
    assert ex["retries"] == MAX_RETRIES and ex["cancels"] >= 1
    assert ex["summary"]["completed"] == len(normal) and ex["summary"]["failed"] == 3
    assert ex["summary"]["total_rows"] == 10 * len(normal)
    assert ex["materializations"] == len(normal)
    assert {w["worker_id"] for w in ex["workers"]} and len(ex["workers"]) == 2
    # Rows on the tape agree with the DB.
    with StateReader.open(settings.state_db) as reader:
        for job in reader.list_jobs(status="COMPLETED", limit=100):
            assert by_id[str(job["id"])]["rows"] == job["rows"]


# -- (b, c, d) a whole CLI session: redaction, validation, command links --------------------------

def test_cli_session_leaves_no_marker_in_tapes_or_bundle(
        cluster_factory: Callable[..., Any], settings: Settings, root: Path, marker: str) -> None:
    home = settings.home
    cli_tapes = root / f"cli_{marker}"
    cli_tapes.mkdir()
    cluster = cluster_factory(workers=2, slots=1)
    plugin = marked_plugin(root, marker)
    data = root / f"data_{marker}"
    slow = write_input(data / f"slow_{marker}.txt", "mode=slow sleep=60")
    ok = make_inputs(data, 2, prefix=f"in_{marker}")
    bad = write_input(data / f"bad_{marker}.txt",
                      f"mode=error msg=cannot open {root}/secret_{marker}.csv for {marker}.txt")
    sink = f"parquet://{root}/out_{marker}"
    runs: list[tuple[str, subprocess.CompletedProcess[str], Path]] = []

    def run(label: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        tape = cli_tapes / f"{len(runs):02d}_{label}_{marker}.tape"
        proc = casparian("--home", str(home), "--tape", str(tape), *args, cwd=root)
        assert proc.returncode == expect, (label, proc.returncode, proc.stdout, proc.stderr)
        runs.append((label, proc, tape))
        return proc

    sub = run("submit", "submit", str(plugin), str(slow), *map(str, ok), str(bad),
              "--sink", sink, "--json")
    job_ids = json.loads(sub.stdout)["job_ids"]
    slow_id = job_ids[0]
    wait_status(settings, slow_id, "RUNNING")
    run("jobs", "jobs")
    run("jobs_json", "jobs", "--json")
    run("show", "job", "show", str(job_ids[1]), "--json")
    cancel = run("cancel", "job", "cancel", str(slow_id))
    assert "ABORT" in cancel.stdout
    missing = run("submit_missing", "submit", str(root / f"missing_{marker}.py"), str(ok[0]),
                  expect=2)
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("casparian: error:")
    nojob = run("show_missing", "job", "show", "999999", expect=1)
    assert nojob.stderr.strip() == "casparian: error: job 999999 does not exist"
    db = wait_terminal(settings)
    assert db[str(slow_id)] == "ABORTED" and db[str(job_ids[-1])] == "FAILED"
    for tape in sentinel_tapes(settings):
        run("validate", "tape", "validate", str(tape))
        run("explain", "tape", "explain", str(tape), "--format", "json")
    cluster.stop()

    # A demo-like run on the same home: its own sentinel + workers, its own sentinel tape.
    demo = run("demo", "demo", "--files", "3", "--timeout", "120")
    assert "3 of 3 jobs completed" in demo.stdout
    assert len(sentinel_tapes(settings)) == 2
    # A log that quotes paths and plugin source (as a plugin traceback would).
    (settings.logs_dir / "worker-7.out").write_text(
        "Traceback (most recent call last):\n"
        f'  File "{plugin}", line 120, in parse\n'
        f"    raise RuntimeError('{marker} secret source line')\n"
        f"RuntimeError: cannot open {data}/{ok[0].name} as {getpass.getuser()} "
        f"on {socket.gethostname()}\n")
    bundle = root / f"bundle_{marker}.zip"
    out = run("bundle", "support-bundle", str(bundle), "--json")
    info = json.loads(out.stdout)
    assert info["tape_count"] == 2 and info["config_included"] is True
    assert info["log_count"] >= 4

    # (b) the marker's bytes appear nowhere: tapes under the home, CLI tapes, the bundle.
    needles = [marker.encode(), marker.split("-", 1)[1].encode()]
    tapes = [*sorted(settings.tapes_dir.iterdir()), *sorted(cli_tapes.iterdir())]
    assert len(tapes) == 2 + len(runs)
    for tape in tapes:
        data_bytes = tape.read_bytes()
        for needle in needles:
            assert needle not in data_bytes, f"{needle!r} leaked into {tape.name}"
    raw = bundle.read_bytes()
    with zipfile.ZipFile(bundle) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    assert set(members) >= {"bundle.json", "config/redacted_config.json",
                            "logs/worker-7.out"}
    assert sum(name.startswith("tapes/") for name in members) == 2
    for needle in needles:
        assert needle not in raw
        for name, body in members.items():
            assert needle not in name.encode() and needle not in body, f"{needle!r} in {name}"
    scrubbed_log = members["logs/worker-7.out"].decode()
    assert "secret source line" not in scrubbed_log and "<source line omitted>" in scrubbed_log
    assert "<user>" in scrubbed_log and "<host>" in scrubbed_log
    assert str(root).encode() not in raw and all(str(root).encode() not in b
                                                 for b in members.values())

    # (c) every tape the session produced validates (warnings at most) and explains to JSON.
    for tape in tapes:
        code, text = _main("tape", "validate", str(tape), "--format", "json")
        report = json.loads(text)
        assert code == 0 and report["valid"], (tape.name, text)
        code, text = _main("tape", "explain", str(tape), "--format", "json")
        assert code == 0
        assert json.loads(text)["schema_version"] == 1

    # (d) each CLI tape: TapeStarted, UICommand, its response (same correlation id, parent =
    # the command's event id), TapeStopped.
    for label, proc, tape in runs:
        evs = events(tape)
        assert [e.kind for e in evs] == ["tape_started", "ui_command",
                                         "error_event" if proc.returncode else "system_response",
                                         "tape_stopped"], label
        cmd, resp = evs[1], evs[2]
        assert cmd.correlation_id and resp.correlation_id == cmd.correlation_id
        assert resp.parent_id == cmd.event_id
        if proc.returncode:
            assert resp.name == "CommandFailed" and resp.payload["status"] == "failed"
            error = resp.payload["error"]
            assert error and "\n" not in error
        else:
            assert resp.name == "CommandSucceeded" and resp.payload["status"] == "success"
    names = {label: events(tape)[1].name for label, _, tape in runs}
    assert names["submit"] == "Submit" and names["jobs"] == "Jobs" and names["show"] == "Job"
    assert names["demo"] == "Demo" and names["bundle"] == "SupportBundle"
    assert names["validate"] == "Tape"
    failed = events(dict((lb, t) for lb, _, t in runs)["show_missing"])[2]
    assert failed.payload["error"] == "job 999999 does not exist"
    submitted = events(runs[0][2])[1].payload
    assert set(submitted) >= {"plugin", "inputs", "sink"}
    assert all(len(h) == 16 for h in submitted["inputs"])  # hashed, one per input


def _main(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(list(argv))
    return code, buf.getvalue()


# -- a plugin without a declared name: its name is its file stem, hashed on every tape -----------

def test_plugin_without_a_name_does_not_leak_its_file_name(
        cluster_factory: Callable[..., Any], settings: Settings, root: Path, marker: str) -> None:
    cluster = cluster_factory(workers=1, slots=1)
    plugin = marked_plugin(root, marker, keep_name=False)
    [inp] = make_inputs(root / "data", 1)
    with ControlClient(cluster.info, timeout=10.0) as client:
        client.submit(plugin=str(plugin), inputs=[str(inp)])
        wait_terminal(settings)
    cluster.stop()
    [tape] = sentinel_tapes(settings)
    assert marker.encode() not in tape.read_bytes()
    # The stem is hashed the way other file names are (16 hex digits, the same in every
    # event of the tape), and the payload says why; explain shows that hash.
    named = [e.payload for e in events(tape)
             if e.name in ("JobQueued", "JobDispatched", "JobCompleted")]
    assert len(named) == 3
    assert {p["plugin_name_source"] for p in named} == {"file"}
    [hashed] = {p["plugin_name"] for p in named}
    assert len(hashed) == 16 and int(hashed, 16) >= 0
    [job] = explain_tape(tape).to_json()["jobs"]
    assert job["plugin_name"] == hashed and job["status"] == "completed"
    # ctx.logger of an unnamed plugin is "casparian_nb.plugin": the job's log (which the
    # plugin wrote to) and the host logs do not carry the file name either.
    job_logs = list((settings.logs_dir / "jobs").glob("*/attempt-*.log"))
    assert any(b"fixture_plugin mode=" in p.read_bytes() for p in job_logs)
    for log in [*job_logs, *settings.logs_dir.glob("host-*.log")]:
        assert marker.encode() not in log.read_bytes(), log.read_text()[-2000:]

    # The CLI's own tape of a standalone run of the same plugin leaks nothing either.
    cli_tape = root / f"run_{marker}.tape"
    proc = casparian("--home", str(settings.home), "--tape", str(cli_tape), "run", str(plugin),
                     str(inp), "--sink", f"parquet://{root}/out_{marker}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert marker.encode() not in cli_tape.read_bytes()
    assert validate_tape(cli_tape).valid


def test_support_bundle_of_a_fresh_home_via_cli(root: Path, marker: str) -> None:
    """No sentinel ever ran: no tapes, no schema version; still exit 0 and a valid zip."""
    home = root / "fresh"
    out = root / f"b_{marker}.zip"
    proc = casparian("--home", str(home), "support-bundle", str(out), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "tapes: 0" in proc.stdout
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("bundle.json"))
    assert manifest["schema_version"] is None and manifest["contents"]["tapes"] == []
    bad = casparian("--home", str(home), "support-bundle", str(root / "nope" / "b.zip"), cwd=root)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("casparian: error: cannot write support bundle")
    shutil.rmtree(home)

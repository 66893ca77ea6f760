"""``casparian support-bundle``: contents, scrubbing, flags, what never goes in, the manifest,
``--json``, and one-line errors. Real files in a tmp home; the CLI is called in-process."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import traceback
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

import casparian_nb
from casparian_nb import _scrub, bundle, cli
from casparian_nb.bundle import LOG_CAP_BYTES, BundleError, Scrubber, create_support_bundle
from casparian_nb.config import Settings, load_settings
from casparian_nb.store import SCHEMA_VERSION, StateStore
from casparian_nb.tape import TapeWriter, explain_tape, validate_tape

USER = "alice-the-user"
HOST = "buildhost-7"
PLUGIN_SOURCE = "SECRET_PLUGIN_SOURCE_TEXT = 'do not ship me'"
DATA_TEXT = b"SECRET_OUTPUT_ROW,42"


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def identities(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Known user, host and user-home names, so scrubbing is checked on any machine."""
    monkeypatch.setattr(_scrub, "_user_names", lambda: {USER})
    monkeypatch.setattr(_scrub, "_host_names", lambda: {HOST, f"{HOST}.corp.example"})
    user_home = tmp_path / "users" / USER
    user_home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(user_home))
    return user_home


@pytest.fixture
def home(identities: Path) -> Path:  # overrides conftest's: a home inside the user's home
    h = identities / ".casparian_flow"
    h.mkdir(mode=0o700)
    return h


@pytest.fixture
def populated(settings: Settings, tmp_path: Path) -> Settings:
    """A home with tapes, logs, outputs, plugins and a state DB."""
    home = settings.home
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # Tapes: a sentinel tape (writer-redacted) with paths in its payloads.
    with TapeWriter(settings.tapes_dir / "sentinel-20260101T000000Z-42.tape",
                    producer="sentinel") as t:
        t.domain("JobQueued", {"job_id": 1, "plugin_name": "orders", "plugin_version": "1",
                               "input_file": str(data_dir / "jan.csv"),
                               "sink": f"parquet://{home}/output"})
        t.domain("JobFailed", {"job_id": 1, "worker_id": "w-abc123",
                               "error": f"cannot read {data_dir}/jan.csv on {HOST}",
                               "error_kind": "permanent"})
    # A CLI tape the user put in the tapes dir under a name of their own.
    with TapeWriter(settings.tapes_dir / "project_acme_q3.tape", producer="cli") as t:
        cmd, corr = t.command("Jobs", {"limit": 5})
        t.succeeded(cmd, corr, {"count": 0})
    # Not tapes / not to be shipped.
    (settings.tapes_dir / "notes.txt").write_text("not a tape")
    (settings.tapes_dir / "orders.parquet").write_bytes(DATA_TEXT)
    # Logs.
    (settings.logs_dir / "sentinel.log").write_text(
        f"2026-01-01 sentinel INFO sentinel serving tcp://127.0.0.1:5555 (home {home})\n"
        f"2026-01-01 sentinel WARNING promotion failed: {home}/staging/job-1 on {HOST} "
        f"as {USER}\n"
        f"2026-01-01 sentinel WARNING bad input {data_dir}/feb.csv (sink "
        f"parquet://{home}/output)\n")
    (settings.logs_dir / "worker-0.out").write_text(_plugin_traceback(home))
    (settings.logs_dir / "my-debug-notes.log").write_text("free text\n")
    (settings.logs_dir / "copied.csv").write_bytes(DATA_TEXT)
    (settings.logs_dir / "helper.py").write_text(PLUGIN_SOURCE)
    os.symlink(data_dir / "linked.csv", settings.logs_dir / "linked.log")
    (data_dir / "linked.csv").write_bytes(DATA_TEXT)
    # Outputs, staging and plugins: never shipped.
    settings.output_dir.mkdir()
    (settings.output_dir / "orders_0123456789abcdef.parquet").write_bytes(DATA_TEXT)
    (settings.output_dir / "orders.csv").write_bytes(DATA_TEXT)
    (settings.output_dir / "orders.duckdb").write_bytes(DATA_TEXT)
    (settings.plugins_dir / "orders.py").write_text(PLUGIN_SOURCE + "\ndef parse(p): ...\n")
    (settings.staging_dir / "job-1").mkdir()
    (settings.staging_dir / "job-1" / "part.parquet").write_bytes(DATA_TEXT)
    StateStore.open(settings.state_db).close()
    return settings


def _plugin_traceback(home: Path) -> str:
    """A real traceback through the stdlib, with a plugin frame quoting plugin source."""
    try:
        json.loads("{not json")
    except ValueError:
        lib = traceback.format_exc()
    lines = lib.splitlines(keepends=True)
    plugin_frame = (f'  File "{home}/plugins/orders.py", line 2, in parse\n'
                    f"    {PLUGIN_SOURCE}\n"
                    "    ^^^^^^^^^^^^^^^^^^^^^^^^^^\n")
    return "".join([lines[0], plugin_frame, *lines[1:]])


def _bundle_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


# -- contents -------------------------------------------------------------------------------------

def test_contents_and_manifest(populated: Settings, tmp_path: Path) -> None:
    out = tmp_path / "bundle.zip"
    result = create_support_bundle(populated, out)
    members = _bundle_members(out)
    tapes = sorted(n for n in members if n.startswith("tapes/"))
    logs = sorted(n for n in members if n.startswith("logs/"))
    assert "tapes/sentinel-20260101T000000Z-42.tape" in tapes and len(tapes) == 2
    # A name the user chose is not shipped: it becomes a salted hash (extension kept).
    assert not any("acme" in n for n in members)
    assert any(re.fullmatch(r"tapes/tape-[0-9a-f]{16}\.tape", n) for n in tapes)
    assert {"logs/sentinel.log", "logs/worker-0.out"} <= set(logs) and len(logs) == 3
    assert "config/redacted_config.json" in members and "bundle.json" in members
    assert set(members) == {*tapes, *logs, "config/redacted_config.json", "bundle.json"}

    manifest = json.loads(members["bundle.json"])
    assert manifest["version"] == "1"
    assert datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00")).tzinfo
    assert manifest["casparian_version"] == casparian_nb.__version__
    assert set(manifest["platform"]) >= {"os", "arch", "python"}
    assert manifest["platform"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert sorted(manifest["contents"]["tapes"]) == [n.split("/", 1)[1] for n in tapes]
    assert sorted(manifest["contents"]["logs"]) == [n.split("/", 1)[1] for n in logs]
    assert manifest["contents"]["config"] is True
    assert "git_hash" not in manifest  # no shelling out to git in the cwd (reference §13.20)

    assert result.output_path == out and result.size_bytes == out.stat().st_size
    assert (result.tape_count, result.log_count, result.config_included) == (2, 3, True)


def test_bundled_tapes_stay_valid_and_explain_the_same(populated: Settings,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "bundle.zip"
    create_support_bundle(populated, out)
    extracted = tmp_path / "x"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(extracted)
    src = populated.tapes_dir / "sentinel-20260101T000000Z-42.tape"
    copy = extracted / "tapes" / src.name
    report = validate_tape(copy)
    assert report.valid and report.issues == [], report.to_text()
    a, b = explain_tape(src).to_json(), explain_tape(copy).to_json()
    assert a["jobs"][0]["status"] == b["jobs"][0]["status"] == "failed"
    assert a["event_count"] == b["event_count"]
    # The host name in the (writer-scrubbed) error was short enough to survive the writer's
    # rules only if it is a word; the bundle replaces it either way.
    assert HOST not in copy.read_text()


# -- scrubbing ----------------------------------------------------------------------------------

def test_no_home_user_host_or_paths_anywhere(populated: Settings, tmp_path: Path,
                                             identities: Path) -> None:
    out = tmp_path / "bundle.zip"
    create_support_bundle(populated, out)
    raw = out.read_bytes()
    members = _bundle_members(out)
    forbidden = [str(populated.home), str(identities), USER, HOST, str(tmp_path)]
    for name, body in members.items():
        text = body.decode("utf-8")
        for word in forbidden:
            assert word not in text, f"{word!r} in {name}"
            assert word not in name
    for word in forbidden:
        assert word.encode() not in raw
    log = members["logs/sentinel.log"].decode()
    assert "tcp://127.0.0.1:5555" in log  # endpoints are useful and not private
    assert "<home>/staging/<h:" in log and "<host>" in log and "<user>" in log
    assert "(home <home>)" in log and "(sink parquet://<home>/output)" in log
    assert "feb.csv" not in log and "bad input <path:" in log


def test_plugin_source_lines_are_dropped_library_frames_kept(populated: Settings,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "bundle.zip"
    create_support_bundle(populated, out)
    log = _bundle_members(out)["logs/worker-0.out"].decode()
    assert PLUGIN_SOURCE not in log
    lines = log.splitlines()
    frame = next(i for i, line in enumerate(lines) if "in parse" in line)
    assert lines[frame] == '  File "<home>/plugins/<h:' + lines[frame].split("<h:")[1]
    assert lines[frame + 1] == "    <source line omitted>"
    assert "^" not in lines[frame + 2]  # the caret line under it is gone too
    assert "Traceback (most recent call last):" in log and "JSONDecodeError" in log
    # The stdlib frame keeps its path and its source line.
    json_dir = Path(json.__file__).parent
    assert f'File "{json_dir}' in log


def test_never_output_data_plugin_source_or_databases(populated: Settings,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "bundle.zip"
    create_support_bundle(populated, out)
    members = _bundle_members(out)
    suffixes = {Path(n).suffix for n in members}
    assert not suffixes & {".parquet", ".csv", ".duckdb", ".py", ".sqlite", ".db", ".json5"}
    assert suffixes <= {".tape", ".log", ".out", ".json"}
    for name, body in members.items():
        assert DATA_TEXT not in body, name
        assert PLUGIN_SOURCE.encode() not in body, name
        assert b"SQLite format 3" not in body, name
    assert not any(n.startswith(("output/", "staging/", "plugins/")) for n in members)


def test_tape_written_without_redaction_is_redacted_in_the_bundle(settings: Settings,
                                                                  tmp_path: Path) -> None:
    secret = tmp_path / "clients" / "acme" / "orders.csv"
    path = settings.tapes_dir / "sentinel-20260101T000000Z-7.tape"
    with TapeWriter(path, producer="sentinel", redact=False) as t:
        t.domain("JobQueued", {"job_id": 1, "plugin_name": "orders",
                               "input_file": str(secret), "sink": "parquet:///srv/out"})
    assert str(secret) in path.read_text()
    out = tmp_path / "b.zip"
    create_support_bundle(settings, out)
    text = _bundle_members(out)[f"tapes/{path.name}"].decode()
    assert "acme" not in text and "/srv/out" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["payload"]["redaction"] == "hash (support bundle)"
    assert re.fullmatch(r"[0-9a-f]{16}", lines[1]["payload"]["input_file"])
    assert lines[1]["payload"]["plugin_name"] == "orders"
    assert validate_tape(_extract(out, f"tapes/{path.name}", tmp_path)).valid


def test_original_tape_started_cwd_and_hostname_are_hashed(settings: Settings,
                                                           tmp_path: Path) -> None:
    """The original Casparian wrote raw ``cwd`` and ``hostname`` into TapeStarted."""
    path = settings.tapes_dir / "sentinel-1.tape"
    first = {"schema_version": 1, "event_id": "e0", "seq": 0,
             "timestamp": "2026-01-01T00:00:00Z", "correlation_id": None, "parent_id": None,
             "event_name": {"type": "tape_started"},
             "payload": {"salt_hash": "abc", "hostname": "workstation-42",
                         "cwd": "/srv/projects/acme"}}
    stop = {**first, "event_id": "e1", "seq": 1, "event_name": {"type": "tape_stopped"},
            "payload": {"reason": "session_end"}}
    path.write_text(json.dumps(first) + "\n" + json.dumps(stop) + "\n")
    out = tmp_path / "b.zip"
    create_support_bundle(settings, out)
    text = _bundle_members(out)[f"tapes/{path.name}"].decode()
    assert "workstation-42" not in text and "acme" not in text
    assert json.loads(text.splitlines()[1]) == stop  # untouched lines stay byte-identical
    assert text.splitlines()[1] == json.dumps(stop)


def test_scrubber_rules() -> None:
    s = Scrubber("/data/h", users=["bob"], hosts=["node-1"], user_home="/home/bob",
                 salt=b"s" * 32)
    line = s.line("read /data/h/plugins/x.py and /home/bob/y.csv for bob@node-1 bobby "
                  "tcp://127.0.0.1:1 s3://bucket/key ./rel/p rel/q/r z.parquet /data/h2/x")
    assert "/data/h" not in line and "bob" not in line.replace("bobby", "")
    assert "bobby" in line  # whole words only
    assert "<home>/plugins/<h:" in line and "<user>@<host>" in line
    assert "tcp://127.0.0.1:1" in line and "s3://<path:" in line
    assert "z.parquet" not in line and "rel/q/r" not in line and "./rel/p" not in line
    # The same path hashes the same within one scrubber, differently with another salt.
    a = s.line("/srv/x/y")
    assert a == s.line("/srv/x/y")
    assert a != Scrubber("/data/h", users=[], hosts=[], user_home="/nonexistent").line("/srv/x/y")
    assert s.identities('{"p":"/data/h/x","u":"bob"}') == '{"p":"<home>/x","u":"<user>"}'


# -- flags, cap, output, errors --------------------------------------------------------------

@pytest.mark.parametrize("flag, missing", [("--no-tapes", "tapes/"), ("--no-logs", "logs/"),
                                           ("--no-config", "config/")])
def test_flags_leave_parts_out(populated: Settings, tmp_path: Path, flag: str,
                               missing: str) -> None:
    out = tmp_path / "b.zip"
    code, stdout, stderr = _main("--home", str(populated.home), "support-bundle", str(out),
                                 flag, "--json")
    assert code == 0, stderr
    members = _bundle_members(out)
    assert not any(n.startswith(missing) for n in members)
    others = {"tapes/", "logs/", "config/"} - {missing}
    assert all(any(n.startswith(o) for n in members) for o in others)
    manifest = json.loads(members["bundle.json"])
    info = json.loads(stdout)
    key = {"tapes/": "tapes", "logs/": "logs", "config/": "config"}[missing]
    assert not manifest["contents"][key]
    assert info == {"output_path": str(out), "size_bytes": out.stat().st_size,
                    "tape_count": 0 if flag == "--no-tapes" else 2,
                    "log_count": 0 if flag == "--no-logs" else 3,
                    "config_included": flag != "--no-config"}


def test_text_output_and_cli_tape(populated: Settings, tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    tape = tmp_path / "cli.tape"
    code, stdout, _ = _main("--home", str(populated.home), "--tape", str(tape),
                            "support-bundle", str(out))
    assert code == 0
    assert str(out) in stdout and f"{out.stat().st_size:,} bytes" in stdout
    assert "tapes: 2" in stdout and "logs: 3" in stdout and "config: yes" in stdout
    ex = explain_tape(tape).to_json()
    assert ex["commands"] == ["SupportBundle"]
    assert ex["command_list"][0]["status"] == "success"
    assert str(out) not in tape.read_text()


def test_each_log_is_capped(settings: Settings, tmp_path: Path) -> None:
    big = settings.logs_dir / "sentinel.log"
    with big.open("w") as fh:
        for i in range(200_000):
            fh.write(f"line {i:07d} flood\n")  # 19 bytes a line: ~3.8 MB
    out = tmp_path / "b.zip"
    result = create_support_bundle(settings, out, log_cap_bytes=64 * 1024)
    text = _bundle_members(out)["logs/sentinel.log"].decode()
    assert text.startswith("[support-bundle: only the last")
    body = text.splitlines()[1:]
    assert body[0].startswith("line ") and body[-1] == "line 0199999 flood"
    assert len(text) <= 64 * 1024 + 200
    assert result.truncated_logs == ("sentinel.log",)
    assert LOG_CAP_BYTES == 5 * 1024 * 1024


def test_config_summary_has_no_keys_or_paths(home: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    key = "MCowBQYDK2VwAyEAq1dummydummydummydummydummydummydummydu="
    (home / "config.toml").write_text(
        'job_timeout = "10m"\nworker_slots = 3\n'
        f'default_sink = "parquet://{tmp_path}/secret_out"\n'
        '[trust]\nallow_unsigned_python = false\nallowed_signers = ["alice"]\n'
        f'[trust.keys]\nalice = "{key}"\nbob = "{key}"\n')
    monkeypatch.setenv("CASPARIAN_MAX_RETRIES", "5")
    settings = load_settings(home)
    out = tmp_path / "b.zip"
    create_support_bundle(settings, out)
    body = _bundle_members(out)["config/redacted_config.json"]
    cfg = json.loads(body)
    assert cfg["settings_changed"] == {"worker_slots": 3, "job_timeout": 600.0,
                                       "max_retries": 5, "default_sink": "parquet://<redacted>"}
    assert cfg["trust"] == {"allow_unsigned_python": False, "allowed_signer_count": 1,
                            "key_count": 2}
    assert cfg["environment_variables_set"] == ["CASPARIAN_MAX_RETRIES"]
    assert cfg["home"]["config_file"] is True
    assert key.encode() not in body and b"alice" not in body and str(home).encode() not in body
    assert str(tmp_path).encode() not in body
    # The home path hash is salted: not the plain blake3 prefix, and new per bundle.
    h = cfg["home_path_hash"]
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h != blake3(str(home).encode()).hexdigest()[:16]
    create_support_bundle(settings, out)
    assert json.loads(_bundle_members(out)["config/redacted_config.json"])[
        "home_path_hash"] != h


def test_fresh_home_has_no_schema_version(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    result = create_support_bundle(settings, out)
    manifest = json.loads(_bundle_members(out)["bundle.json"])
    assert manifest["schema_version"] is None
    assert (result.tape_count, result.log_count) == (0, 0)


def test_existing_output_is_replaced_and_bundle_excludes_itself(settings: Settings) -> None:
    out = settings.logs_dir / "bundle.zip"
    out.write_bytes(b"old")
    create_support_bundle(settings, out)
    members = _bundle_members(out)
    assert not any(n.endswith(".zip") or ".casparian-bundle-" in n for n in members)
    assert [p.name for p in settings.logs_dir.iterdir()] == ["bundle.zip"]


def _err_line(code: int, stderr: str) -> str:
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("casparian: error: "), stderr
    return lines[0]


def test_errors_are_one_line_exit_2(settings: Settings, tmp_path: Path) -> None:
    home = str(settings.home)
    code, _, err = _main("--home", home, "support-bundle", str(tmp_path / "no" / "b.zip"))
    assert "does not exist" in _err_line(code, err)
    code, _, err = _main("--home", home, "support-bundle", str(tmp_path))
    assert "is a directory" in _err_line(code, err)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _main("--home", home, "support-bundle", str(blocker / "b.zip"))
    assert "is not a directory" in _err_line(code, err)
    with pytest.raises(BundleError):
        create_support_bundle(settings, tmp_path / "missing" / "b.zip")


def test_failure_mid_write_leaves_no_partial_file(settings: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (settings.logs_dir / "sentinel.log").write_text("x\n")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle, "_read_log", boom)
    out = tmp_path / "b.zip"
    with pytest.raises(BundleError, match="No space left on device"):
        create_support_bundle(settings, out)
    assert list(tmp_path.glob("*.zip*")) == [] and list(tmp_path.glob(".casparian-*")) == []


def _extract(zip_path: Path, member: str, tmp_path: Path) -> Path:
    dest = tmp_path / "extract"
    with zipfile.ZipFile(zip_path) as zf:
        return Path(zf.extract(member, dest))

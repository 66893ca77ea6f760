"""Bad files and state (issue 7 §5): corrupt and truncated tapes, a state DB of another
schema version (or no DB at all), a home that cannot be created, a DuckDB sink another process
holds. Each gives a one-line reason that says what to do; nothing crashes with a traceback,
nothing is changed, and a running sentinel keeps serving.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casparian_nb.cli.tape import explain_command, validate_command
from casparian_nb.client import ControlClient
from casparian_nb.config import Settings, load_settings
from casparian_nb.errors import CasparianError, ConfigError, SentinelError
from casparian_nb.launcher import LocalCluster
from casparian_nb.store import SCHEMA_VERSION, StateStore
from tests.hardening.harness import FAST, ROOT, audit, record, wait_final

GOLDEN = ROOT / "tapes" / "golden_session.tape"


def casparian(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASPARIAN_")}
    return subprocess.run([sys.executable, "-m", "casparian_nb", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    """A one-line error naming ``needles``, exit ``code`` (1 a failure, 2 a usage error)."""
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- tapes ---------------------------------------------------------------------------------

def _mutations() -> st.SearchStrategy[tuple[str, int, int, bytes]]:
    return st.tuples(
        st.sampled_from(["truncate", "flip", "drop-line", "dup-line", "swap-lines", "insert",
                         "delete-range"]),
        st.integers(0, 10**9), st.integers(0, 10**9),
        st.binary(min_size=1, max_size=40) | st.sampled_from(
            [b"{", b"\xff\xfe", b"null", b"[]", b'{"schema_version": 1}', b"\x00" * 8,
             b'{"seq": -1, "event_id": ""}']),
    )


def corrupt(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    for op, a, b, junk in mutations:
        lines = data.split(b"\n")
        n = max(1, len(lines))
        if op == "truncate":
            data = data[: a % (len(data) + 1)]
        elif op == "flip" and data:
            i = a % len(data)
            data = data[:i] + bytes([data[i] ^ (1 + b % 255)]) + data[i + 1:]
        elif op == "drop-line":
            del lines[a % n]
            data = b"\n".join(lines)
        elif op == "dup-line":
            lines.insert(a % n, lines[b % n])
            data = b"\n".join(lines)
        elif op == "swap-lines":
            i, j = a % n, b % n
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif op == "insert":
            lines.insert(a % (n + 1), junk)
            data = b"\n".join(lines)
        elif op == "delete-range" and data:
            i = a % len(data)
            data = data[:i] + data[i + b % 200:]
    return data


def check_tape(path: Path) -> tuple[int, int]:
    """Run validate and explain (text and json) in-process; both must end with an exit code,
    never an exception, and say why with line numbers."""
    codes = []
    for fmt in ("text", "json"):
        out, err = io.StringIO(), io.StringIO()
        code = validate_command(path, fmt, stdout=out, stderr=err)
        assert code in (0, 1, 2), code
        if code == 1:
            if fmt == "text":
                assert "Line " in out.getvalue(), out.getvalue()
            else:
                report = json.loads(out.getvalue())
                assert report["valid"] is False
                assert all(isinstance(i["line"], int) for i in report["issues"])
        if code == 2:
            assert err.getvalue().count("\n") == 1 and not out.getvalue(), err.getvalue()
        codes.append(code)
        out, err = io.StringIO(), io.StringIO()
        code = explain_command(path, fmt, stdout=out, stderr=err)
        assert code in (0, 2), code
        if code == 0 and fmt == "json":
            json.loads(out.getvalue())
        if code == 2:
            assert err.getvalue().count("\n") == 1, err.getvalue()
    return codes[0], codes[1]


def test_corrupt_and_truncated_tapes_are_explained_never_crash(tmp_path: Path) -> None:
    golden = GOLDEN.read_bytes()
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_mutations(), min_size=1, max_size=4))
    def one(mutations: list[tuple[str, int, int, bytes]]) -> None:
        path = tmp_path / "bad.tape"
        path.write_bytes(corrupt(golden, mutations))
        text_code, json_code = check_tape(path)
        assert text_code == json_code
        seen[text_code] = seen.get(text_code, 0) + 1

    one()
    assert seen.get(1), seen  # most corruptions are found invalid, with their lines
    record("corrupt tapes: validate/explain", None, checks=sum(seen.values()))


@pytest.mark.parametrize(("name", "make", "code", "needle"), [
    ("cut mid-line", lambda g: g[: g.rindex(b"\n", 0, len(g) - 1) + 40], 1, "Line "),
    ("a line of garbage", lambda g: g.replace(b"\n", b"\nnot json\n", 1), 1, "Line 2:"),
    ("binary", lambda g: os.urandom(2000), 1, "Line 1:"),
    ("not UTF-8", lambda g: g.replace(b"tape_started", b"tape_\xff\xfetarted", 1), 1, "Line 1:"),
    ("empty", lambda g: b"", 1, "empty"),
    ("a directory", None, 2, "casparian tape validate:"),
    ("missing", None, 2, "casparian tape validate:"),
])
def test_tape_cli_exit_codes_and_one_line_reasons(tmp_path: Path, name: str,
                                                  make: Callable[[bytes], bytes] | None,
                                                  code: int, needle: str) -> None:
    path = tmp_path / "t.tape"
    if make is not None:
        path.write_bytes(make(GOLDEN.read_bytes()))
    elif name == "a directory":
        path.mkdir()
    done = casparian("tape", "validate", str(path))
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert needle in (done.stdout if code == 1 else done.stderr), (done.stdout, done.stderr)
    if code == 2:
        assert done.stderr.count("\n") == 1
    explained = casparian("tape", "explain", str(path))
    assert explained.returncode in (0, 2) and "Traceback" not in explained.stderr


# -- the state DB --------------------------------------------------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _db_at_version(db: Path, version: str | None) -> None:
    StateStore.open(db).close()
    con = sqlite3.connect(db)
    if version is None:
        con.execute("DROP TABLE cf_meta")
    else:
        con.execute("UPDATE cf_meta SET value = ? WHERE key = 'schema_version'", (version,))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


@pytest.mark.parametrize(("version", "sentinel_says", "jobs_says"), [
    ("99", [f"newer than this casparian_nb supports ({SCHEMA_VERSION})", "upgrade casparian_nb"],
     [f"newer than this casparian_nb supports ({SCHEMA_VERSION})", "upgrade casparian_nb"]),
    ("0", [f"older than this casparian_nb supports ({SCHEMA_VERSION})", "move it aside (mv "],
     [f"older than this casparian_nb expects ({SCHEMA_VERSION})", "move it aside (mv "]),
    (None, ["but no schema version", "move it aside (mv "],
     ["but no schema version", "move it aside (mv "]),
    ("garbage", ["cannot be read", "move it aside (mv "], ["cannot", "move it aside"]),
])
def test_a_state_db_of_another_schema_version_is_refused_and_left_untouched(
        settings: Settings, version: str | None, sentinel_says: list[str],
        jobs_says: list[str]) -> None:
    db = settings.state_db
    if version == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        _db_at_version(db, version)
    before = _digest(db)
    home = str(settings.home)
    one_line_error(casparian("--home", home, "sentinel"), str(db), *sentinel_says)
    one_line_error(casparian("--home", home, "jobs"), str(db), *jobs_says)
    one_line_error(casparian("--home", home, "job", "show", "1"), str(db), *jobs_says)
    with pytest.raises(SentinelError):
        LocalCluster(settings, workers=0).start(timeout=30)
    assert _digest(db) == before, "a refused state DB was modified"
    assert not settings.connection_file.exists()
    record("state DB of another version refused", None, checks=4)


def test_cf_start_on_a_refused_state_db_says_what_to_do(settings: Settings) -> None:
    _db_at_version(settings.state_db, "0")
    with pytest.raises(SentinelError) as failed:
        LocalCluster(settings, workers=0).start(timeout=30)
    assert "move it aside (mv " in str(failed.value), str(failed.value)


def test_a_state_db_path_that_is_not_a_file(settings: Settings) -> None:
    settings.state_db.mkdir()
    for args in (("sentinel",), ("jobs",)):
        one_line_error(casparian("--home", str(settings.home), *args), str(settings.state_db),
                       "is not a regular file", "move it aside")


def test_a_second_sentinel_on_the_same_home_is_refused(
        hcluster: Callable[..., LocalCluster], settings: Settings) -> None:
    cluster = hcluster(workers=0)
    assert cluster.sentinel is not None
    one_line_error(casparian("--home", str(settings.home), "sentinel"),
                   "already open for writing by pid", str(cluster.sentinel.pid))
    with pytest.raises(SentinelError, match="already serves"):
        LocalCluster(settings, workers=0).start()
    with ControlClient.from_home(settings.home) as ctl:
        assert ctl.ping()["pid"] == cluster.sentinel.pid


# -- the home ------------------------------------------------------------------------------

def test_a_home_that_cannot_be_created(tmp_path: Path) -> None:
    """As root, chmod does not stop writes: a home below a regular FILE is the portable way
    to an unusable path (ENOTDIR on every write)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file\n")
    home = blocker / "home"
    for args in (("start",), ("sentinel",), ("worker",), ("demo",), ("run", "p.py", "x")):
        one_line_error(casparian("--home", str(home), *args), f"cannot create home directory "
                       f"{home}: Not a directory", "choose a writable one with --home", code=2)
    # Commands that create nothing do not trip over it: an empty list, or no sentinel.
    listed = casparian("--home", str(home), "jobs")
    assert listed.returncode == 0 and listed.stdout.split() == ["ID", "STATUS", "PLUGIN",
                                                                "INPUT", "ROWS"]
    one_line_error(casparian("--home", str(home), "job", "cancel", "1"), "no sentinel is running")
    with pytest.raises(ConfigError, match="choose a writable one"):
        load_settings(home)
    import casparian_nb as cf

    with pytest.raises(CasparianError, match="Not a directory"):
        cf.start(home=home, workers=0)
    # a sub-directory of the home that is a file is caught the same way
    other = tmp_path / "home2"
    other.mkdir()
    (other / "logs").write_text("not a dir\n")
    one_line_error(casparian("--home", str(other), "sentinel"), "cannot create home directory",
                   "choose a writable one", code=2)
    record("unusable home refused", None, checks=10)


# -- a DuckDB sink held by another process ------------------------------------------------

@contextmanager
def duckdb_held(db: Path, read_only: bool = False) -> Iterator[int]:
    """Another process (a notebook, say) keeps ``db`` open; yields its pid."""
    code = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == '1');"
            "print('ready', flush=True); sys.stdin.read()")
    if read_only:
        import duckdb

        duckdb.connect(str(db)).close()  # read-only needs the file to exist
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), "1" if read_only else "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        proc.communicate("", timeout=10)


def test_a_duckdb_sink_held_by_another_process(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """The job fails (its staged outputs are dropped) in one line naming the file, the holder
    and what to do; the sentinel keeps serving; once released a re-run completes."""
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    db = tmp_path / "held.duckdb"
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    with ControlClient(cluster.info) as ctl:
        with duckdb_held(db) as holder:
            [job_id] = ctl.submit(fixture_plugin, [str(src)], sink=f"duckdb://{db}")["job_ids"]
            row = wait_final(settings, [job_id], timeout=60)[job_id]
            assert ctl.ping()["pid"] == cluster.info.pid
        msg = row["error_message"]
        assert row["status"] == "FAILED" and "\n" not in msg, row
        for needle in (str(db), "in use by another process", f"pid {holder}", "close it and retry"):
            assert needle in msg, msg
        a = audit(settings, [job_id], sink=db, duckdb_table="fixture_output", client=ctl)
        [again] = ctl.submit(fixture_plugin, [str(src)], sink=f"duckdb://{db}",
                             force=True)["job_ids"]
        assert wait_final(settings, [again])[again]["status"] == "COMPLETED"
    a.assert_clean("duckdb held")
    record("DuckDB sink held by another process", a)


def test_a_held_duckdb_file_does_not_stall_other_sinks(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=2, **FAST)
    assert cluster.info is not None
    db = tmp_path / "held.duckdb"
    files = []
    for i in range(3):
        files.append(tmp_path / f"in_{i}.txt")
        files[-1].write_text(f"{i}\n")
    with ControlClient(cluster.info) as ctl, duckdb_held(db, read_only=True):
        ctl.submit(fixture_plugin, [str(files[0])], sink=f"duckdb://{db}")
        time.sleep(0.5)  # its promotion is now waiting for the file
        [job_id] = ctl.submit(fixture_plugin, [str(files[1])],
                              sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
        row = wait_final(settings, [job_id], timeout=5).get(job_id) or {}
        assert row.get("status") == "COMPLETED", "a parquet job waited for the DuckDB file"


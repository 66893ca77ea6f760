"""``casparian run`` end to end: the real CLI as a subprocess, and ``casparian_nb.runner.run``.

Covers F0 (never overwrite), F2 (kill -9 of a host mid-write and of the whole run: nothing
partial visible, each job all-or-nothing), F3 (append/replace/error for parquet, csv and
duckdb), F7 (reserved ``_cf_`` columns), F12/F13 (plugin paths and trust), lineage,
quarantine, bounded-memory generator streaming, input expansion, ``--json``, and the one-line
errors every bad plugin or bad input gets. Real files, real processes, no mocks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import psutil
import pyarrow.parquet as pq
import pytest

from casparian_nb import lineage, runner, sinks
from casparian_nb.config import Settings
from casparian_nb.errors import SinkModeError
from casparian_nb.plugins import generate_signing_key, sign_plugin
from casparian_nb.protocol import HostJob, JobSpec
from casparian_nb.worker.pool import HostPool
from tests.conftest import make_inputs, running, wait_until

HOST_MODULE = "casparian_nb.worker.host"
FINAL = re.compile(r"^(?P<output>[a-z][a-z0-9_]*)_(?P<hash>[0-9a-f]{16})\.(?P<ext>parquet|csv)$")


# -- helpers -------------------------------------------------------------------------------

def hosts_of(parent_pid: int) -> list[int]:
    """Live plugin hosts started by ``parent_pid`` (found by their ``--parent`` argument)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if (HOST_MODULE in cmd and "--parent" in cmd
                and cmd[cmd.index("--parent") + 1] == str(parent_pid)
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc.pid)
    return found


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CASPARIAN_", "CF_FIXTURE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_cmd(home: Path, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "casparian_nb", "--home", str(home), *map(str, args)]


class Done:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(home: Path, *args: str | Path, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 120) -> Done:
    """Run ``casparian --home HOME ARGS...`` to completion; check it left no host behind."""
    proc = subprocess.Popen(cli_cmd(home, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_until(lambda: not hosts_of(proc.pid), 5, message="the run's plugin hosts to exit")
    return Done(proc.returncode, out, err)


def one_error_line(done: Done, *needles: str) -> str:
    """The command wrote exactly one stderr line, and it contains every needle."""
    assert len(done.err_lines) == 1, f"expected one stderr line, got:\n{done.err}"
    [line] = done.err_lines
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def sink_files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def sql(query: str, database: str = ":memory:") -> list[tuple[Any, ...]]:
    con = duckdb.connect(database, read_only=database != ":memory:")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def sink_rows(kind: str, location: Path, output: str = "fixture_output") -> list[tuple[Any, ...]]:
    """(id, _cf_job_id) of every row of ``output`` in a sink, sorted."""
    if kind == "duckdb":
        if not location.exists():
            return []
        tables = {r[0] for r in sql("select table_name from duckdb_tables()", str(location))}
        if output not in tables:
            return []
        return sql(f"select id, _cf_job_id from {output} order by all", str(location))
    files = list(location.glob(f"{output}_*.{kind}"))
    if not files:
        return []
    reader = "read_parquet" if kind == "parquet" else "read_csv_auto"
    glob = str(location / f"{output}_*.{kind}")
    return sql(f"select id, _cf_job_id from {reader}('{glob}') order by all")


def job_ids(rows: list[tuple[Any, ...]]) -> set[str]:
    return {r[1] for r in rows}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as ex:
        yield ex


# -- F0: never overwrite -------------------------------------------------------------------

def test_two_cli_runs_write_distinct_files_and_overwrite_nothing(
        home: Path, fixture_plugin: Path, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "data", 2)
    out = tmp_path / "out"
    first = cli(home, "run", fixture_plugin, *inputs, "--sink", f"parquet://{out}")
    assert first.code == 0, first.err
    assert first.err == ""
    before = {name: (os.stat(out / name).st_ino, (out / name).read_bytes())
              for name in sink_files(out)}
    assert len(before) == 2 and all(FINAL.match(n) for n in before)

    # A plain second run skips both files (already materialized); a forced one writes anew.
    second = cli(home, "run", fixture_plugin, *inputs, "--sink", f"parquet://{out}", "--force")
    assert second.code == 0, second.err
    after = sink_files(out)
    assert len(after) == 4 and all(FINAL.match(n) for n in after)
    for name, (inode, data) in before.items():  # the first run's files are untouched
        assert os.stat(out / name).st_ino == inode and (out / name).read_bytes() == data
    rows = sink_rows("parquet", out)
    assert len(rows) == 40 and len(job_ids(rows)) == 4  # every job has its own id
    assert "fixture_output: 20" in first.out and "fixture_output: 20" in second.out


def test_runner_api_runs_get_unique_job_ids_and_lineage(
        settings: Settings, fixture_plugin: Path, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "data", 2)
    sink = f"parquet://{tmp_path / 'out'}"
    a = runner.run(fixture_plugin, inputs, sink=sink, settings=settings, parallel=2)
    b = runner.run(fixture_plugin, inputs, sink=sink, settings=settings, parallel=2, force=True)
    assert a.ok and b.ok and a.run_id != b.run_id
    ids = [f.job_id for f in (*a.files, *b.files)]
    assert len(set(ids)) == 4
    paths = [art["uri"].removeprefix("file://") for f in (*a.files, *b.files)
             for art in f.artifacts]
    assert len(set(paths)) == 4 and all(Path(p).is_file() for p in paths)
    for f in (*a.files, *b.files):
        [art] = f.artifacts
        table = pq.read_table(art["uri"].removeprefix("file://"))
        assert table.column_names[-4:] == list(lineage.LINEAGE_COLUMNS)
        assert set(table.column("_cf_job_id").to_pylist()) == {f.job_id}
        assert set(table.column("_cf_source_hash").to_pylist()) == {
            lineage.hash_file(f.input_file)}
        assert set(table.column("_cf_parser_version").to_pylist()) == {"1.0.0"}
        assert len(set(table.column("_cf_processed_at").to_pylist())) == 1
    assert not list(settings.staging_dir.iterdir()), "a finished run leaves no staging"


# -- F3: sink modes for every sink kind ----------------------------------------------------

@pytest.mark.parametrize("kind", ["parquet", "csv", "duckdb"])
def test_sink_modes_through_the_cli(home: Path, fixture_plugin: Path, tmp_path: Path,
                                    kind: str) -> None:
    location = tmp_path / ("out.duckdb" if kind == "duckdb" else "out")
    sink = f"{kind}://{location}"

    def run(mode: str, *rows: int) -> Done:
        files = []
        for i, n in enumerate(rows):
            p = tmp_path / f"{mode}-{time.monotonic_ns()}-{i}.txt"
            p.write_text(f"mode=normal rows={n}\n")
            files.append(p)
        return cli(home, "run", fixture_plugin, *files, "--sink", sink, "--mode", mode,
                   "--parallel", "1")

    # error on an empty sink is fine: there is nothing of another run to refuse.
    first = run("error", 3)
    assert first.code == 0, first.err
    assert len(sink_rows(kind, location)) == 3
    second = run("append", 4)
    assert second.code == 0, second.err
    rows = sink_rows(kind, location)
    assert len(rows) == 7 and len(job_ids(rows)) == 2
    earlier = job_ids(rows)

    # replace: exactly this run's rows remain (both of its jobs, none of the earlier runs).
    third = run("replace", 5, 6)
    assert third.code == 0, third.err
    rows = sink_rows(kind, location)
    assert sorted(r[0] for r in rows) == sorted([*range(5), *range(6)])
    assert len(job_ids(rows)) == 2 and not job_ids(rows) & earlier
    if kind != "duckdb":
        assert len(sink_files(location)) == 2

    # error: refused with one line, non-zero exit, and nothing written at all.
    snapshot = (sink_files(location) if kind != "duckdb" else None, rows)
    fourth = run("error", 2, 2)
    assert fourth.code == 2, fourth.out + fourth.err
    one_error_line(fourth, "mode=error", "already has data")
    assert (sink_files(location) if kind != "duckdb" else None,
            sink_rows(kind, location)) == snapshot


def test_mode_error_refusal_stops_the_run_and_kills_running_jobs(
        settings: Settings, fixture_plugin: Path, tmp_path: Path) -> None:
    """Through the Python API: the first refused promotion ends the run at once — jobs still
    running are killed, nothing of this run is written, no staging or host is left."""
    out = tmp_path / "out"
    sink = f"parquet://{out}"
    [first] = make_inputs(tmp_path / "first", 1)
    assert runner.run(fixture_plugin, [first], sink=sink, settings=settings).ok
    before = sink_files(out)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a_quick.txt").write_text("mode=normal rows=2\n")
    (data / "b_slow.txt").write_text("mode=slow sleep=60\n")
    (data / "c_slow.txt").write_text("mode=slow sleep=60\n")
    t0 = time.monotonic()
    with pytest.raises(SinkModeError, match="mode=error refuses"):
        runner.run(fixture_plugin, [data], sink=sink, mode="error", settings=settings,
                   parallel=2)
    assert time.monotonic() - t0 < 20
    assert sink_files(out) == before
    assert not list(settings.staging_dir.iterdir())
    wait_until(lambda: not hosts_of(os.getpid()), 5, message="hosts to exit")


# -- F7 and one bad file among good ones ---------------------------------------------------

def test_reserved_column_fails_that_file_only(home: Path, fixture_plugin: Path,
                                              tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_inputs(data, 3)
    bad = data / "collide.txt"
    bad.write_text("mode=collision\n")
    out = tmp_path / "out"
    done = cli(home, "run", fixture_plugin, data, "--sink", f"parquet://{out}")
    assert done.code == 1
    one_error_line(done, str(bad), "'_cf_job_id'", "reserved")
    assert "4 files, 3 succeeded, 1 failed" in done.out
    assert "LineageError" not in done.out  # the summary counts it; stderr names it, once
    assert len(sink_files(out)) == 3 and len(sink_rows("parquet", out)) == 30


def test_json_summary_lists_every_file_and_failures_do_not_stop_the_rest(
        home: Path, fixture_plugin: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = make_inputs(data, 3)
    bad = {
        "error": data / "z_error.txt",
        "crash": data / "z_crash.txt",
        "bad-return": data / "z_badret.txt",
    }
    bad["error"].write_text("mode=error msg=cannot parse line 7\n")
    bad["crash"].write_text("mode=crash\n")
    bad["bad-return"].write_text("mode=bad-return\n")
    out = tmp_path / "out"
    done = cli(home, "run", fixture_plugin, data, "--sink", f"parquet://{out}", "--json")
    assert done.code == 1
    summary = json.loads(done.out)
    assert (summary["files"], summary["succeeded"], summary["failed"]) == (6, 3, 3)
    assert summary["rows"] == {"fixture_output": 30}
    by_file = {j["input_file"]: j for j in summary["jobs"]}
    assert set(by_file) == {str(p) for p in (*good, *bad.values())}
    for p in good:
        job = by_file[str(p)]
        assert job["status"] == "COMPLETED" and job["error"] is None
        assert job["rows"] == {"fixture_output": 10} and len(job["artifacts"]) == 1
    reasons = {
        "error": "RuntimeError: cannot parse line 7",
        "crash": "PluginHostCrashed: plugin host exited with code 3",
        "bad-return": "PluginReturnError:",
    }
    for mode, p in bad.items():
        job = by_file[str(p)]
        assert job["status"] == "FAILED" and reasons[mode] in job["error"], job
        assert "\n" not in job["error"]
    # One stderr line per failed file, each naming its file.
    assert len(done.err_lines) == 3, done.err
    for p in bad.values():
        assert sum(str(p) in line for line in done.err_lines) == 1
    assert len(sink_files(out)) == 3


# -- bad plugins and bad inputs: exit 2 (or 1 per file) with one line ----------------------

def write_plugin(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


@pytest.mark.parametrize(("source", "needle"), [
    ("def parse(path:\n    return None\n", "syntax error"),
    ("name = 'x'\n\ndef transform(path):\n    return None\n", "no module-level parse"),
    # fails only when executed (in the host): still one line, exit 2, for every file at once
    ("import casparian_no_such_module\n\ndef parse(path):\n    return None\n",
     "import failed: ModuleNotFoundError"),
])
def test_unloadable_plugin_is_one_line_exit_2(home: Path, tmp_path: Path, source: str,
                                              needle: str) -> None:
    plugin = write_plugin(tmp_path / "broken_plugin.py", source)
    srcs = make_inputs(tmp_path / "data", 3)
    done = cli(home, "run", plugin, *srcs, "--sink", f"parquet://{tmp_path / 'out'}")
    assert done.code == 2
    line = one_error_line(done, str(plugin), needle)
    assert line.startswith("casparian: error: ")
    assert done.out == "" and not (tmp_path / "out").exists()


def test_bad_return_type_fails_the_file_in_one_line(home: Path, fixture_plugin: Path,
                                                    tmp_path: Path) -> None:
    [src] = make_inputs(tmp_path / "data", 1, mode="bad-return")
    done = cli(home, "run", fixture_plugin, src, "--sink", f"parquet://{tmp_path / 'out'}")
    assert done.code == 1
    one_error_line(done, str(src), "PluginReturnError", "parse() returned dict")
    assert not sink_files(tmp_path / "out")


def test_plugin_names_cannot_escape_the_plugins_dir(home: Path, fixture_plugin: Path,
                                                    tmp_path: Path) -> None:
    """F12: ``..`` in a named plugin ref and a symlink out of <home>/plugins are refused."""
    plugins_dir = home / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    (home / "evil.py").write_text(fixture_plugin.read_text())  # reachable only via ..
    outside = write_plugin(tmp_path / "elsewhere" / "evil2.py", fixture_plugin.read_text())
    (plugins_dir / "link.py").symlink_to(outside)
    [src] = make_inputs(tmp_path / "data", 1)
    work = tmp_path / "work"
    work.mkdir()
    cases = [("../evil", "'..' is not allowed"), ("sub/../../evil", "'..' is not allowed"),
             ("link", "outside the plugins directory")]
    procs = [(ref, needle, subprocess.Popen(
        cli_cmd(home, "run", ref, src, "--sink", f"parquet://{tmp_path / 'out'}"),
        cwd=work, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for ref, needle in cases]
    for ref, needle, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (ref, out, err)
        one_error_line(Done(proc.returncode, out, err), f"plugin ref {ref!r}", needle)
    assert not (tmp_path / "out").exists()


def test_trust_policy_unsigned_tampered_and_signed(home: Path, fixture_plugin: Path,
                                                   tmp_path: Path) -> None:
    """F13: unsigned refused when disallowed; a tampered signed plugin refused; a good
    signature by an allowed signer runs (by name, from <home>/plugins)."""
    [src] = make_inputs(tmp_path / "data", 1)
    sink = f"parquet://{tmp_path / 'out'}"
    deny = cli_env(CASPARIAN_ALLOW_UNSIGNED_PYTHON="0")

    unsigned = cli(home, "run", fixture_plugin, src, "--sink", sink, env=deny)
    assert unsigned.code == 2
    one_error_line(unsigned, str(fixture_plugin), "unsigned plugin refused")

    private, public = generate_signing_key()
    (home / "config.toml").write_text(
        "[trust]\nallow_unsigned_python = false\nallowed_signers = [\"alice\"]\n"
        f"[trust.keys]\nalice = \"{public}\"\n")
    plugin = home / "plugins" / "fixture_plugin.py"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(fixture_plugin.read_text())
    sign_plugin(plugin, "alice", private)

    signed = cli(home, "run", "fixture_plugin", src, "--sink", sink)
    assert signed.code == 0, signed.err
    assert len(sink_files(tmp_path / "out")) == 1

    with plugin.open("a") as fh:
        fh.write("\n# a harmless-looking change\n")
    tampered = cli(home, "run", "fixture_plugin", src, "--sink", sink)
    assert tampered.code == 2
    one_error_line(tampered, str(plugin), "modified after signing")
    assert len(sink_files(tmp_path / "out")) == 1


def test_missing_input_and_bad_sink_are_one_line_exit_2(home: Path, fixture_plugin: Path,
                                                        tmp_path: Path) -> None:
    [src] = make_inputs(tmp_path / "data", 1)
    missing = tmp_path / "nope" / "*.csv"
    cases = [
        (["run", fixture_plugin, src, missing], ["no input files match", str(missing)]),
        (["run", fixture_plugin, src, "--sink", "s3://bucket"], ["unknown scheme 's3'"]),
        (["run", tmp_path / "absent.py", src], ["absent.py"]),
    ]
    procs = [(needles, subprocess.Popen(cli_cmd(home, *args), env=cli_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)) for args, needles in cases]
    for needles, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (out, err)
        one_error_line(Done(2, out, err), "casparian: error:", *needles)


# -- inputs --------------------------------------------------------------------------------

def test_inputs_directories_recurse_and_globs_expand(home: Path, fixture_plugin: Path,
                                                     tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    nested = make_inputs(tree / "a" / "b", 2, prefix="deep")
    top = make_inputs(tree, 1, prefix="top")
    (tree / ".hidden.txt").write_text("not an input\n")
    (tree / ".git").mkdir()
    (tree / ".git" / "x.txt").write_text("not an input\n")
    globbed = make_inputs(tmp_path / "g", 3, prefix="log")
    (tmp_path / "g" / "skip.csv").write_text("not matched\n")
    done = cli(home, "run", fixture_plugin, tree, tmp_path / "g" / "log_*.txt",
               "--sink", f"parquet://{tmp_path / 'out'}", "--json")
    assert done.code == 0, done.err
    seen = {j["input_file"] for j in json.loads(done.out)["jobs"]}
    assert seen == {str(p) for p in (*nested, *top, *globbed)}


# -- quarantine ----------------------------------------------------------------------------

def test_quarantine_rows_go_to_their_own_output(settings: Settings, fixture_plugin: Path,
                                                tmp_path: Path) -> None:
    [src] = make_inputs(tmp_path / "data", 1, mode="quarantine")
    out = tmp_path / "out"
    res = runner.run(fixture_plugin, [src], sink=f"parquet://{out}", settings=settings)
    assert res.ok
    [f] = res.files
    assert f.rows == {"fixture_output": 7} and f.quarantine_rows == 3
    assert "quarantined rows: 3" in str(res)
    good = pq.read_table(out / sinks.output_filename("fixture_output", f.job_id, "parquet"))
    bad = pq.read_table(out / sinks.output_filename("fixture_output_quarantine", f.job_id,
                                                    "parquet"))
    assert "_cf_row_error" not in good.column_names
    assert good.column("id").to_pylist() == [0, 1, 3, 4, 6, 7, 9]
    assert bad.column("id").to_pylist() == [2, 5, 8]
    assert bad.column("_cf_row_error").to_pylist() == [f"bad value in row {i}" for i in (2, 5, 8)]
    assert bad.column("_cf_source_row").to_pylist() == [3, 6, 9]  # the plugin's __cf_row_id
    assert set(bad.column("_cf_job_id").to_pylist()) == {f.job_id}
    assert bad.column_names[-4:] == list(lineage.LINEAGE_COLUMNS)


# -- generator streaming: bounded memory ---------------------------------------------------

def _rss_during(settings: Settings, plugin: Path, src: Path) -> tuple[int, list[int], dict[str, Any]]:
    """Run one job on a fresh warm host: (idle RSS, RSS samples while it ran, result data)."""
    pool = HostPool(1, log_dir=settings.logs_dir)
    try:
        pool.wait_ready()
        [pid] = pool.pids
        host = psutil.Process(pid)
        idle = host.memory_info().rss
        job = HostJob(job=JobSpec(job_id=f"mem-{src.stem}", plugin_path=str(plugin),
                                  plugin_name=plugin.stem, input_file=str(src),
                                  sink=f"parquet://{settings.home / 'mem'}"),
                      staging_root=str(settings.staging_dir / "mem"))
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(pool.run(job)))
        t.start()
        samples = []
        while t.is_alive():
            try:
                samples.append(host.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.005)
        t.join()
        [res] = box
        assert res.status == "SUCCESS", res
        return idle, samples, msgspec.to_builtins(res)
    finally:
        pool.close()


def test_generator_outputs_stream_in_bounded_memory(settings: Settings, fixture_plugin: Path,
                                                    tmp_path: Path) -> None:
    rows = 2_000_000
    streamed = tmp_path / "streamed.txt"
    streamed.write_text(f"mode=big rows={rows} batch=100000\n")
    materialised = tmp_path / "materialised.txt"
    materialised.write_text(f"mode=normal rows={rows}\n")  # one table of all rows at once

    idle, samples, data = _rss_during(settings, fixture_plugin, streamed)
    full_idle, full_samples, _ = _rss_during(settings, fixture_plugin, materialised)
    mib = 1 << 20
    grow_stream, grow_full = max(samples) - idle, max(full_samples) - full_idle
    print(f"peak RSS growth: streamed {grow_stream / mib:.0f} MiB, "
          f"materialised {grow_full / mib:.0f} MiB")
    assert grow_full > 200 * mib  # sanity: holding 2M rows at once really is big
    assert grow_stream < grow_full / 2 and grow_stream < 160 * mib, (grow_stream, grow_full)
    # Bounded, not just smaller: after the first batches the RSS stops climbing.
    assert len(samples) >= 20
    early, late = max(samples[: len(samples) // 4]), max(samples[len(samples) // 2:])
    assert late - early < 40 * mib, (early, late)

    staged = sinks.StagedJob.from_dict(data["staged"])
    [out] = staged.outputs
    assert out.rows == rows
    meta = pq.ParquetFile(out.path).metadata
    assert meta.num_rows == rows and meta.num_row_groups > 1  # written as it streamed
    ts = pq.read_table(out.path, columns=["_cf_processed_at"]).column(0)
    assert len(ts.unique()) == 1  # one _cf_processed_at per job, across all batches


# -- F2: kill -9 mid-write -----------------------------------------------------------------

def check_sink_dir(out: Path, outputs_per_job: dict[str, int]) -> dict[str, set[str]]:
    """Only complete final files are visible; returns hash16 -> outputs present."""
    jobs: dict[str, set[str]] = {}
    for name in sink_files(out):
        if name.startswith("."):
            assert name.endswith(".cf-tmp"), name  # a promotion in flight: hidden, not *.parquet
            continue
        m = FINAL.match(name)
        assert m, f"unexpected entry in the sink dir: {name}"
        table = pq.read_table(out / name)  # complete and readable
        assert table.num_rows == outputs_per_job[m["output"]], name
        jobs.setdefault(m["hash"], set()).add(m["output"])
    for path in out.glob("*.parquet"):
        assert FINAL.match(path.name)
    return jobs


def test_kill_9_of_a_host_mid_write_leaves_nothing_visible(
        settings: Settings, fixture_plugin: Path, tmp_path: Path,
        executor: ThreadPoolExecutor) -> None:
    data = tmp_path / "data"
    data.mkdir()
    big = data / "a_big.txt"
    big.write_text("mode=big rows=4000000 batch=50000\n")
    small = make_inputs(data, 3)
    out = tmp_path / "out"
    fut: Future[runner.RunResult] = executor.submit(
        runner.run, fixture_plugin, [data], sink=f"parquet://{out}", settings=settings,
        parallel=2)

    def writing() -> Path | None:
        for f in settings.staging_dir.glob("run-*/run-*-000000-*/fixture_output.parquet"):
            if f.stat().st_size > 0:
                return f
        return None

    staged = wait_until(writing, 30, message="the big job to be writing its staged file")
    victim = None
    for pid in hosts_of(os.getpid()):
        try:
            if any(of.path == str(staged) for of in psutil.Process(pid).open_files()):
                victim = pid
        except psutil.NoSuchProcess:
            pass
    assert victim is not None, "no host has the staged file open"
    os.kill(victim, signal.SIGKILL)
    res = fut.result(timeout=60)

    by_file = {f.input_file: f for f in res.files}
    crashed = by_file[str(big)]
    assert crashed.status == "FAILED"
    assert crashed.error.startswith("PluginHostKilled: ") and "by SIGKILL" in crashed.error
    assert all(by_file[str(p)].status == "COMPLETED" for p in small)
    jobs = check_sink_dir(out, {"fixture_output": 10})
    assert len(jobs) == 3
    assert not any(n.startswith(".") for n in sink_files(out))
    assert sinks.job_hash16(crashed.job_id) not in jobs
    assert not staged.exists() and not list(settings.staging_dir.iterdir())
    wait_until(lambda: not hosts_of(os.getpid()), 5, message="hosts to exit")


def test_kill_9_of_the_whole_run_leaves_each_job_all_or_nothing(
        home: Path, fixture_plugin: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a_big.txt").write_text("mode=big rows=4000000 batch=50000\n")
    make_inputs(data, 8, mode="quarantine")  # two outputs per job: main + quarantine
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_cmd(home, "run", fixture_plugin, data, "--sink",
                                    f"parquet://{out}", "--parallel", "2"),
                            env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        staging = home / "staging"
        wait_until(lambda: len(hosts_of(proc.pid)) == 2, 30, message="two hosts")
        hosts = hosts_of(proc.pid)
        wait_until(lambda: any(f.stat().st_size > 0 for f in staging.glob(
            "run-*/run-*-000000-*/fixture_output.parquet")), 30,
            message="the big job to be writing")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The orphaned hosts notice their parent is gone and exit.
    wait_until(lambda: not any(running(h) for h in hosts), 5,
               message="orphaned hosts to exit")

    per_job = {"fixture_output": 7, "fixture_output_quarantine": 3}
    check_sink_dir(out, per_job)
    # The committer died: finish (or roll back) whatever promotion it was in.
    for run_dir in staging.glob("run-*"):
        sinks.recover(run_dir)
    jobs = check_sink_dir(out, per_job)
    assert not any(n.startswith(".") for n in sink_files(out))
    for outputs in jobs.values():
        assert outputs == set(per_job), outputs  # all of a job's outputs, or none

    # The next run in the same home sweeps the dead run's staging away.
    [src] = make_inputs(tmp_path / "next", 1)
    done = cli(home, "run", fixture_plugin, src, "--sink", f"parquet://{out}")
    assert done.code == 0, done.err
    assert not list(staging.iterdir())


def test_interrupting_a_run_kills_its_hosts_and_promotes_nothing_unfinished(
        home: Path, fixture_plugin: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a_slow.txt").write_text("mode=slow sleep=60\n")
    make_inputs(data, 2)
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_cmd(home, "run", fixture_plugin, data, "--sink",
                                    f"parquet://{out}", "--parallel", "2"),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: len(sink_files(out)) == 2, 30, message="the quick files' outputs")
        hosts = hosts_of(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130
    assert "casparian: interrupted" in err
    assert not any(running(h) for h in hosts)
    assert len(sink_files(out)) == 2  # the slow job never appeared
    assert not list((home / "staging").iterdir())


# -- append promotion must not scan what other runs wrote ------------------------------

def test_append_promotion_cost_does_not_grow_with_the_sink(tmp_path: Path) -> None:
    import pyarrow as pa

    lin = lineage.Lineage("ab" * 32, "j", datetime.now(UTC), "1")
    valid, _ = lineage.prepare_output("t", pa.table({"a": [1, 2, 3]}), lin)
    out = tmp_path / "out"
    out.mkdir()

    def promote_ms() -> float:
        # CPU time, not wall time: what grows with a scan of the sink is CPU work, while
        # the fsyncs' waits swing by 10x on a busy machine and made this test flaky.
        best = float("inf")
        for _ in range(5):
            stager = sinks.JobStager(tmp_path / "stg", f"job-{time.monotonic_ns()}",
                                     f"parquet://{out}")
            stager.write("t", "t", valid)
            staged = stager.close()
            t0 = time.process_time()
            sinks.promote(staged, mode="append")
            best = min(best, time.process_time() - t0)
        return best * 1e3

    empty = promote_ms()
    for i in range(10_000):  # other runs' outputs of the same name
        (out / f"t_{i:016x}.parquet").touch()
    crowded = promote_ms()
    assert crowded < 3 * empty + 2, f"append promote: {empty:.1f} ms CPU -> {crowded:.1f} ms"

"""A standalone run's small files in batches (``casparian_nb._run_batch``, ``HostBatch``).

Each test runs real plugin hosts over real files and reads the real sink back with DuckDB:
batched files share one Parquet file per output, yet every file is still its own job — its
own result, error, quarantine limit and lineage — and a host that dies in one file costs
only that file.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest

from casparian_nb import runner, sinks
from casparian_nb.config import Settings, load_settings
from casparian_nb.protocol import JobStatus
from tests.conftest import wait_until
from tests.integration.test_run import cli_cmd, cli_env

PLUGIN = '''\
"""Test parser: lines "id,value"; a first line "do=<what>" misbehaves on purpose."""
import os
import time

import pyarrow as pa

from casparian_nb.plugins import Output

name = "batched"
version = "1.0.0"
{manifest}


def parse(path, ctx=None):
    lines = open(path, encoding="utf-8").read().splitlines()
    do = lines[0][3:] if lines and lines[0].startswith("do=") else ""
    rows = [line.split(",") for line in lines if not line.startswith("do=")]
    if do == "raise":
        raise ValueError("this file is broken")
    if do == "crash":
        os._exit(7)
    if do == "sleep":
        time.sleep(60)
    if do == "nap":
        time.sleep(0.02)
    if do == "empty":
        return
    ids = [int(r[0]) for r in rows]
    values = [r[1] for r in rows]
    if do == "text":  # another type for the same column: cannot share the batch's file
        yield Output("items", pa.table({{"id": pa.array([str(i) for i in ids]), "value": values}}))
        return
    errors = [("bad value: " + v) if v == "bad" else None for v in values]
    yield Output("items", pa.table({{"id": ids, "value": values, "_cf_row_error": errors}}))
'''
MANIFEST = '''outputs = {"items": {"columns": [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "value", "type": "string"},
]}}'''


def write_plugin(tmp_path: Path, *, manifest: bool = True) -> Path:
    path = tmp_path / "plugins" / "batched.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(manifest=MANIFEST if manifest else ""), encoding="utf-8")
    return path


def write_files(directory: Path, n: int, *, rows: int = 5,
                special: dict[int, str] | None = None, bad: set[int] = frozenset()) -> list[Path]:
    """``n`` files of ``rows`` rows with ids unique across files; file i with a ``special``
    entry starts with ``do=<what>``; files in ``bad`` have one bad row (their 2nd)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        lines = [f"do={special[i]}"] if special and i in special else []
        lines += [f"{i * 1000 + r},{'bad' if i in bad and r == 1 else f'v{r}'}"
                  for r in range(rows)]
        path = directory / f"f_{i:03d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def rows_of(sink: Path, output: str = "items") -> list[tuple[Any, ...]]:
    """(id, _cf_job_id) of every row of an output (quarantine outputs excluded)."""
    names = [p for p in sink.glob(f"{output}_*.parquet") if "_quarantine_" not in p.name]
    if not names:
        return []
    files = ", ".join(f"'{p}'" for p in names)
    return duckdb.sql(f"SELECT id, _cf_job_id FROM read_parquet([{files}], union_by_name=true) "
                      "ORDER BY ALL").fetchall()


def expected_owner(result: runner.RunResult) -> dict[int, str]:
    """id -> job id of the file each id came from, read from the inputs themselves."""
    owner = {}
    for f in result.files:
        for line in Path(f.input_file).read_text(encoding="utf-8").splitlines():
            if not line.startswith("do="):
                owner[int(line.split(",")[0])] = f.job_id
    return owner


def run(plugin: Path, files: list[Path], sink: Path, settings: Settings, **kw: Any
        ) -> runner.RunResult:
    return runner.run(plugin, files, sink=f"parquet://{sink}", parallel=2, settings=settings,
                      progress=False, **kw)


def test_batched_files_share_files_yet_keep_their_own_lineage(
        tmp_path: Path, settings: Settings) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 40, bad={3, 17, 30})
    result = run(plugin, files, tmp_path / "out", settings)
    assert result.ok and len(result.files) == 40
    finals = sorted(p.name for p in (tmp_path / "out").iterdir())
    items = [n for n in finals if "_quarantine_" not in n]
    assert len(items) < 40 / 2, f"expected batches to share files, got {finals}"
    rows = rows_of(tmp_path / "out")
    owner = expected_owner(result)
    bad_ids = {i * 1000 + 1 for i in (3, 17, 30)}
    assert sorted(r[0] for r in rows) == sorted(set(owner) - bad_ids)  # each row once
    assert all(owner[i] == job for i, job in rows)  # each row names its own file's job
    # Each file's result counts its own rows, and its artifacts point at the shared files.
    for f in result.files:
        bad = int(Path(f.input_file).name in {"f_003.txt", "f_017.txt", "f_030.txt"})
        assert f.rows == {"items": 5 - bad} and f.quarantine_rows == bad
        by_output = {a["output"]: a for a in f.artifacts}
        assert by_output["items"]["rows"] == 5 - bad
        assert Path(by_output["items"]["uri"].removeprefix("file://")).is_file()
        assert ("items_quarantine" in by_output) == bool(bad)
    quarantine = duckdb.sql(
        f"SELECT id, _cf_job_id, _cf_source_row, _cf_row_error FROM read_parquet("
        f"'{tmp_path / 'out'}/items_quarantine_*.parquet') ORDER BY id").fetchall()
    assert [(q[0], q[2], q[3]) for q in quarantine] == [
        (i * 1000 + 1, 2, "bad value: bad") for i in (3, 17, 30)]
    assert all(owner[q[0]] == q[1] for q in quarantine)


def test_batched_and_lone_runs_give_the_same_rows(tmp_path: Path, settings: Settings,
                                                  home: Path) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 24, bad={5})
    batched = run(plugin, files, tmp_path / "batched", settings)
    (home / "config.toml").write_text("run_batch_files = 1\n", encoding="utf-8")
    alone = run(plugin, files, tmp_path / "alone", load_settings(home), force=True)
    assert batched.ok and alone.ok
    assert len(list((tmp_path / "alone").glob("items_[0-9a-f]*.parquet"))) == 24
    assert len(list((tmp_path / "batched").glob("items_[0-9a-f]*.parquet"))) < 24
    cols = "id, value, _cf_source_hash, _cf_parser_version"
    query = "SELECT {c} FROM read_parquet('{d}/items_[0-9a-f]*.parquet') ORDER BY id"
    assert (duckdb.sql(query.format(c=cols, d=tmp_path / "batched")).fetchall()
            == duckdb.sql(query.format(c=cols, d=tmp_path / "alone")).fetchall())


def test_a_failing_or_over_limit_file_fails_alone_in_its_batch(
        tmp_path: Path, settings: Settings) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 32, special={4: "raise", 9: "empty"}, bad={11})
    result = run(plugin, files, tmp_path / "out", settings,
                 quarantine={"max_pct": 10})  # file 11: 1 of 5 rows bad = 20%
    status = {Path(f.input_file).name: f for f in result.files}
    assert status["f_004.txt"].status == JobStatus.FAILED
    assert "ValueError: this file is broken" in (status["f_004.txt"].error or "")
    assert status["f_011.txt"].status == JobStatus.FAILED
    assert "quarantine limit exceeded" in (status["f_011.txt"].error or "")
    assert status["f_009.txt"].status == JobStatus.COMPLETED and not status["f_009.txt"].artifacts
    assert sum(f.status == JobStatus.COMPLETED for f in result.files) == 30
    ids = {r[0] for r in rows_of(tmp_path / "out")}
    assert not any(i // 1000 in (4, 9, 11) for i in ids)  # none of their rows
    assert len(ids) == 29 * 5
    assert not list((tmp_path / "out").glob("items_quarantine_*"))  # file 11 promoted nothing


def test_a_file_of_another_schema_is_staged_alone(tmp_path: Path, settings: Settings) -> None:
    plugin = write_plugin(tmp_path, manifest=False)  # no contract: types follow the data
    files = write_files(tmp_path / "in", 24, special={6: "text"})
    result = run(plugin, files, tmp_path / "out", settings)
    assert result.ok
    odd = next(f for f in result.files if f.input_file.endswith("f_006.txt"))
    [artifact] = [a for a in odd.artifacts if a["output"] == "items"]
    path = artifact["uri"].removeprefix("file://")
    got = duckdb.sql(f"SELECT typeof(id), count(*), min(_cf_job_id) FROM read_parquet('{path}') "
                     "GROUP BY ALL").fetchall()
    assert got == [("VARCHAR", 5, odd.job_id)]  # its own file, only its rows
    others = [p for p in (tmp_path / "out").glob("items_*.parquet") if str(p) != path]
    [(count,)] = duckdb.sql("SELECT count(*) FROM read_parquet([{}])".format(
        ", ".join(f"'{p}'" for p in others))).fetchall()
    assert count == 23 * 5


@pytest.mark.parametrize("what", ["crash", "sleep"])
def test_a_host_dying_in_one_file_costs_only_that_file(
        tmp_path: Path, settings: Settings, what: str) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 32, special={10: what})
    result = run(plugin, files, tmp_path / "out", settings,
                 timeout=3.0 if what == "sleep" else None)
    status = {Path(f.input_file).name: f for f in result.files}
    culprit = status.pop("f_010.txt")
    if what == "crash":
        assert culprit.status == JobStatus.FAILED
        assert "PluginHostCrashed" in (culprit.error or "")
    else:
        assert culprit.status == JobStatus.ABORTED
        assert "timeout" in (culprit.error or "")
    assert all(f.status == JobStatus.COMPLETED for f in status.values())
    rows = rows_of(tmp_path / "out")
    owner = expected_owner(result)
    assert sorted(r[0] for r in rows) == sorted(i for i in owner if i // 1000 != 10)
    assert all(owner[i] == job for i, job in rows)
    staging = settings.staging_dir
    assert not staging.exists() or not any(p for p in staging.rglob("*") if p.is_file()
                                           and p.name != "OWNER")


def test_replace_removes_an_earlier_runs_batch_files(tmp_path: Path, settings: Settings) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 24)
    first = run(plugin, files, tmp_path / "out", settings)
    second = run(plugin, files[:20], tmp_path / "out", settings, mode="replace", force=True)
    assert first.ok and second.ok
    assert {job for _, job in rows_of(tmp_path / "out")} == {f.job_id for f in second.files}
    assert len(rows_of(tmp_path / "out")) == 20 * 5
    with pytest.raises(Exception, match="mode=error"):
        run(plugin, files[:4], tmp_path / "out", settings, mode="error", force=True)


def test_every_input_row_is_read_back_exactly_once(tmp_path: Path, settings: Settings) -> None:
    """What the benchmark does, small: many small CSV files, batched, counted back."""
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 64, rows=20, bad={1, 2, 63})
    result = run(plugin, files, tmp_path / "out", settings)
    assert result.ok
    [(valid,)] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/out/items_[0-9a-f]*"
                            ".parquet')").fetchall()
    [(bad,)] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/out/items_quarantine_*"
                          ".parquet')").fetchall()
    total = sum(1 for f in files for _ in csv.reader(open(f, encoding="utf-8")))
    assert (valid, bad) == (total - 3, 3)
    assert sum(f.rows["items"] for f in result.files) == valid
    assert not settings.staging_dir.exists() or os.listdir(settings.staging_dir) == []


def test_a_duckdb_sink_loads_each_batch_in_one_transaction(tmp_path: Path,
                                                          settings: Settings) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 40, bad={2, 33})
    db = tmp_path / "out.duckdb"
    result = runner.run(plugin, files, sink=f"duckdb://{db}", parallel=2, settings=settings,
                        progress=False)
    assert result.ok
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT id, _cf_job_id FROM items ORDER BY id").fetchall()
        bad = con.execute("SELECT id, _cf_job_id, _cf_source_row FROM items_quarantine "
                          "ORDER BY id").fetchall()
    finally:
        con.close()
    owner = expected_owner(result)
    assert [r[0] for r in rows] == sorted(set(owner) - {2001, 33001})
    assert all(owner[i] == job for i, job in rows)
    assert [(b[0], b[2]) for b in bad] == [(2001, 2), (33001, 2)]
    assert all(owner[b[0]] == b[1] for b in bad)
    for f in result.files:
        [items] = [a for a in f.artifacts if a["output"] == "items"]
        assert items["uri"] == f"duckdb://{db}?table=items"
        assert items["rows"] == f.rows["items"]


def test_a_batch_promoted_again_into_duckdb_loads_nothing_twice(
        tmp_path: Path, settings: Settings) -> None:
    """A batch's staging promoted a second time (a committer that crashed after the
    commit and promotes again) is recognised by its files' job ids: no row twice."""
    from casparian_nb import plugins, sinks
    from casparian_nb.protocol import HostBatch, HostJob, JobSpec
    from casparian_nb.worker.host import execute_batch

    plugin = write_plugin(tmp_path)
    spec = plugins.inspect_plugin(plugin)
    files = write_files(tmp_path / "in", 6, bad={1})
    db = tmp_path / "out.duckdb"
    batch = HostBatch(batch_id="batch-1", jobs=[HostJob(job=JobSpec(
        job_id=f"job-{i}", input_file=str(f), plugin_path=str(plugin), plugin_name=spec.name,
        plugin_source_hash=spec.source_hash, sink=f"duckdb://{db}"),
        staging_root=str(tmp_path / "staging")) for i, f in enumerate(files)])
    receipts: list[Any] = []
    for attempt in range(2):
        receipts.clear()
        staged_answer = execute_batch(batch, receipts.append)
        assert [r.status for r in receipts] == ["SUCCESS"] * 6
        assert staged_answer.staged is not None
        staged = sinks.StagedJob.from_dict(staged_answer.staged)
        assert staged.members == [f"job-{i}" for i in range(6)]
        sinks.promote(staged)
        con = duckdb.connect(str(db), read_only=True)
        try:
            [(count,)] = con.execute("SELECT count(*) FROM items").fetchall()
        finally:
            con.close()
        assert count == 6 * 5 - 1, f"promotion {attempt + 1} loaded rows twice"


def test_kill_9_of_a_batched_run_leaves_each_file_all_or_nothing(
        tmp_path: Path, settings: Settings) -> None:
    plugin = write_plugin(tmp_path)
    files = write_files(tmp_path / "in", 64, special={i: "nap" for i in range(64)},
                        bad=set(range(0, 64, 5)))
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_cmd(settings.home, "run", plugin, tmp_path / "in", "--sink",
                                    f"parquet://{out}", "--parallel", "2"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed once some batches are promoted and others are being run
        wait_until(lambda: len(list(out.glob("items_[0-9a-f]*.parquet"))) >= 2, 60,
                   message="two promoted batches")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for run_dir in settings.staging_dir.glob("run-*"):  # what the next run would do first
        sinks.recover(run_dir)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    query = ("SELECT _cf_job_id, count(*) FROM read_parquet('{}', union_by_name=true) "
             "GROUP BY ALL")
    valid = dict(duckdb.sql(query.format(out / "items_[0-9a-f]*.parquet")).fetchall())
    bad = (dict(duckdb.sql(query.format(out / "items_quarantine_*.parquet")).fetchall())
           if list(out.glob("items_quarantine_*")) else {})
    assert valid, "nothing was promoted before the kill"
    assert len(valid) < 64, "the run finished before the kill"
    files_of_job = {}
    for job_id in valid:  # run-<run>-<nnnnnn>: the file's index in the run
        files_of_job[job_id] = int(job_id.rsplit("-", 1)[1])
    for job_id, i in files_of_job.items():
        expected_bad = 1 if i % 5 == 0 else 0
        assert (valid[job_id], bad.get(job_id, 0)) == (5 - expected_bad, expected_bad), job_id
    assert set(bad) <= set(valid)
    # The next run in the same home sweeps the dead run's staging away.
    again = runner.run(plugin, files[:1], sink=f"parquet://{tmp_path / 'other'}",
                       settings=settings, progress=False)
    assert again.ok
    assert not list(settings.staging_dir.iterdir())

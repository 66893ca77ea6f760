"""Per-output routing end to end (issue 18 item 3): ``cf.run``, ``casparian run``, and a
real sentinel with workers send each output of a job to its own sink — DuckDB, CSV and
Parquet at once — promote them together or not at all, and finish a promotion that a
SIGKILL cut between two sinks after a restart, with the tape agreeing with the state DB.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import casparian_nb as cf
from casparian_nb import runner
from casparian_nb.config import Settings
from casparian_nb.errors import SinkRoutingError
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import JobStatus
from casparian_nb.sinks import SinkRouting
from casparian_nb.store import StateReader
from tests.conftest import wait_until
from tests.integration.test_run import cli
from tests.integration.test_sentinel import FAST, control, wait_final

KILL_AT = Path(__file__).resolve().parents[1] / "hardening" / "kill_at"

PLUGIN = """\
import pyarrow as pa
from casparian_nb import Output

name = "three"
version = "1.0.0"
{manifest}

def parse(path, ctx=None):
    n = len(open(path).read().splitlines())
    ids = list(range(n))
    return [Output("orders", pa.table({{"id": ids, "amount": [i * 1.5 for i in ids]}})),
            Output("items", pa.table({{"id": ids, "sku": [f"s{{i}}" for i in ids]}})),
            Output("errors", pa.table({{"line": ids[:1], "msg": ["bad"]}}))]
"""
MANIFEST = """outputs = {
    "orders": {"columns": [{"name": "id", "type": "int64"}, {"name": "amount", "type": "float64"}]},
    "items": {"columns": [{"name": "id", "type": "int64"}, {"name": "sku", "type": "string"}]},
    "errors": {"columns": [{"name": "line", "type": "int64"}, {"name": "msg", "type": "string"}]},
}"""


def plugin(directory: Path, *, manifest: bool = True) -> Path:
    path = directory / "three.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(manifest=MANIFEST if manifest else ""), encoding="utf-8")
    return path


def inputs(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = directory / f"f{i}.txt"
        p.write_text("\n".join(f"line {j}" for j in range(3 + i)) + "\n")
        out.append(p)
    return out


def routes(root: Path) -> dict[str, str]:
    return {"orders": f"duckdb://{root}/db/out.duckdb", "errors": f"csv://{root}/csv",
            "*": f"parquet://{root}/pq"}


def counts(root: Path, *, temps: bool = False) -> dict[str, int]:
    """Rows of each output, queried in each sink (0 where the sink holds nothing)."""
    db = root / "db" / "out.duckdb"
    orders = 0
    if db.is_file():
        with duckdb.connect(str(db), read_only=True) as con:
            if con.execute("select count(*) from duckdb_tables() where table_name = 'orders'"
                           ).fetchone() == (1,):
                got = con.execute("select count(*), count(distinct _cf_job_id) from orders"
                                  ).fetchone()
                assert got is not None
                orders = int(got[0])
    csv = sum(pacsv.read_csv(p).num_rows for p in sorted((root / "csv").glob("errors_*.csv")))
    items = sum(pq.read_table(p).num_rows for p in sorted((root / "pq").glob("items_*.parquet")))
    stray = [p.name for d in (root / "csv", root / "pq") if d.is_dir() for p in d.iterdir()
             if not p.name.startswith(("errors_", "items_"))
             and not (temps and p.name.endswith(".cf-tmp"))]
    assert not stray, stray  # no other output, no temp left in a file sink
    return {"orders": orders, "errors": csv, "items": items}


def expected(n: int) -> dict[str, int]:
    return {"orders": sum(3 + i for i in range(n)), "errors": n,
            "items": sum(3 + i for i in range(n))}


# -- standalone: cf.run and casparian run ------------------------------------------------------


def test_cf_run_routes_three_outputs_to_three_sinks(settings: Settings, tmp_path: Path) -> None:
    files = inputs(tmp_path / "in", 3)
    res = cf.run(plugin(tmp_path / "p"), files, sink=routes(tmp_path), settings=settings,
                 progress=False)
    assert res.ok, res.failed
    assert counts(tmp_path) == expected(3)
    assert json.loads(res.sink)["orders"].startswith("duckdb://")
    arts = {a["output"]: a for a in res.files[0].artifacts}
    assert arts["orders"]["uri"].endswith("out.duckdb?table=orders")
    assert arts["errors"]["sink"] == f"csv://{tmp_path}/csv"
    assert arts["items"]["uri"].startswith(f"file://{tmp_path}/pq/items_")
    # Same routing again: every output of every file is materialized where it goes.
    again = cf.run(plugin(tmp_path / "p"), files, sink=routes(tmp_path), settings=settings,
                   progress=False)
    assert len(again.skipped) == 3 and counts(tmp_path) == expected(3)
    # Another sink for one output re-runs the files (for that output's sake).
    moved = {**routes(tmp_path), "errors": f"csv://{tmp_path}/csv2"}
    third = cf.run(plugin(tmp_path / "p"), files, sink=moved, settings=settings, progress=False,
                   mode="append")
    assert len(third.files) == 3 and not third.skipped


def test_cf_run_refuses_an_unknown_output_before_running(settings: Settings,
                                                         tmp_path: Path) -> None:
    with pytest.raises(SinkRoutingError, match=r"'orderz' that the plugin does not declare"):
        runner.run(plugin(tmp_path / "p"), inputs(tmp_path / "in", 1), settings=settings,
                   sink={"orderz": f"parquet://{tmp_path}/x", "*": f"parquet://{tmp_path}/y"})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_run_with_repeated_sink_options(home: Path, tmp_path: Path) -> None:
    files = inputs(tmp_path / "in", 2)
    r = routes(tmp_path)
    done = cli(home, "run", plugin(tmp_path / "p"), *files, "--sink", f"orders={r['orders']}",
               "--sink", f"errors={r['errors']}", "--sink", r["*"], "-q")
    assert done.code == 0, done.err
    assert counts(tmp_path) == expected(2)
    bad = cli(home, "run", plugin(tmp_path / "p"), *files, "--sink",
              f"nope=parquet://{tmp_path}/n", "--sink", r["*"], "-q")
    assert bad.code == 2 and len(bad.err_lines) == 1, bad.err
    assert "'nope' that the plugin does not declare" in bad.err


def test_cf_run_unrouted_output_of_a_plugin_without_manifest_fails_the_file(
        settings: Settings, tmp_path: Path) -> None:
    sink = {"orders": f"duckdb://{tmp_path}/db/out.duckdb", "items": f"parquet://{tmp_path}/pq"}
    res = runner.run(plugin(tmp_path / "p", manifest=False), inputs(tmp_path / "in", 1),
                     sink=sink, settings=settings, progress=False)
    [f] = res.files
    assert f.status == JobStatus.FAILED
    assert "SinkRoutingError: output 'errors' has no sink" in (f.error or "")
    assert counts(tmp_path) == {"orders": 0, "errors": 0, "items": 0}


# -- a real sentinel -----------------------------------------------------------------------------


def test_sentinel_routes_outputs_and_keys_each_by_its_sink(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    cluster_factory(workers=1, **FAST)
    files = inputs(tmp_path / "in", 3)
    ctl = cf.attach(settings.home)
    try:
        ids = ctl.submit(plugin(tmp_path / "p"), files, sink=routes(tmp_path))
        wait_final(settings, ids)
        assert counts(tmp_path) == expected(3)
        job = ctl.job(ids[0])
        assert job.status == JobStatus.COMPLETED
        assert json.loads(job.sink_uri or "") == json.loads(str(SinkRouting.parse(routes(tmp_path))))
        arts = {a["output"]: a["sink"] for a in job.artifacts_json}
        assert arts == {"orders": f"duckdb://{tmp_path}/db/out.duckdb",
                        "errors": f"csv://{tmp_path}/csv", "items": f"parquet://{tmp_path}/pq"}
        with StateReader.open(settings.state_db) as r:
            mats = {m["output_name"]: m["sink_uri"] for m in r.list_materializations(limit=100)
                    if m["job_id"] == ids[0]}
            assert set(r.sink_uris()) == set(arts.values())  # what ctl.sql's catalog reads
        assert mats == arts  # each output's materialization names its own sink
        # ctl.sql finds every output in its own sink.
        for output, n in expected(3).items():
            assert ctl.sql(f"select count(*) as n from {output}")["n"].tolist() == [n], output
        # Resubmitting the same routing skips every file; moving one output re-runs them.
        assert ctl.submit(plugin(tmp_path / "p"), files, sink=routes(tmp_path)) == []
        # `casparian submit --sink NAME=URI ... --wait`: errors moved elsewhere re-runs them.
        r = routes(tmp_path)
        done = cli(settings.home, "submit", plugin(tmp_path / "p"), *files, "--sink",
                   f"orders={r['orders']}", "--sink", f"errors=csv://{tmp_path}/csv2",
                   "--sink", r["*"], "--wait", "-q")
        assert done.code == 0, done.err
        assert done.out.startswith("submitted 3 job(s)"), done.out
        assert len(list((tmp_path / "csv2").glob("errors_*.csv"))) == 3
        bad = cli(settings.home, "submit", plugin(tmp_path / "p"), *files, "--sink",
                  f"orderz=csv://{tmp_path}/z", "--sink", r["*"])
        assert bad.code == 2 and len(bad.err_lines) == 1, bad.err
        assert "'orderz' that the plugin does not declare" in bad.err
        # `casparian job show --json` lists each artifact with its sink.
        shown = cli(settings.home, "job", "show", str(ids[0]), "--json")
        assert shown.code == 0, shown.err
        assert {a["output"]: a["sink"] for a in json.loads(shown.out)["artifacts_json"]} == arts
        # An unknown output name is refused at submit, in one line, before anything runs.
        with pytest.raises(Exception, match="'orderz' that the plugin does not declare") as err:
            ctl.submit(plugin(tmp_path / "p"), files,
                       sink={"orderz": f"parquet://{tmp_path}/z", "*": f"parquet://{tmp_path}/z"})
        assert "\n" not in str(err.value)
    finally:
        ctl.stop()


@pytest.mark.parametrize("broken", ["duckdb-is-a-directory", "csv-dir-is-a-file"])
def test_sentinel_failure_in_the_second_sink_promotes_nothing_anywhere(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path, broken: str) -> None:
    """The DuckDB sink is a directory, or the CSV sink's directory is a file (after the
    committer loaded DuckDB on its held connection, uncommitted): the job FAILS and no sink
    holds anything of it."""
    if broken == "duckdb-is-a-directory":
        (tmp_path / "db" / "out.duckdb").mkdir(parents=True)
    else:
        (tmp_path / "csv").write_text("not a directory")
    c = cluster_factory(workers=1, **FAST)
    with control(c) as client:
        ids = client.submit(plugin(tmp_path / "p"), inputs(tmp_path / "in", 2),
                            sink=str(SinkRouting.parse(routes(tmp_path))))["job_ids"]
    rows = wait_final(settings, ids)
    assert {r["status"] for r in rows.values()} == {JobStatus.FAILED}
    named = "out.duckdb" if broken == "duckdb-is-a-directory" else f"{tmp_path}/csv"
    assert all(named in (r["error_message"] or "") for r in rows.values()), rows
    if broken == "csv-dir-is-a-file":
        (tmp_path / "csv").unlink()
    assert counts(tmp_path) == {"orders": 0, "errors": 0, "items": 0}


def test_sentinel_unrouted_output_fails_the_job_permanently_naming_it(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    c = cluster_factory(workers=1, **FAST)
    sink = {"orders": f"duckdb://{tmp_path}/db/out.duckdb", "items": f"parquet://{tmp_path}/pq"}
    with control(c) as client:
        [job_id] = client.submit(plugin(tmp_path / "p", manifest=False),
                                 inputs(tmp_path / "in", 1),
                                 sink=str(SinkRouting.parse(sink)))["job_ids"]
    row = wait_final(settings, [job_id])[job_id]
    assert row["status"] == JobStatus.FAILED and row["attempt"] == 1  # permanent: no retry
    assert "output 'errors' has no sink" in row["error_message"]
    assert counts(tmp_path) == {"orders": 0, "errors": 0, "items": 0}


def _tape_events(home: Path) -> list[dict[str, Any]]:
    events = []
    for tape in sorted((home / "tapes").glob("sentinel-*.tape")):
        for line in tape.read_text(encoding="utf-8").splitlines():
            if line.strip():
                events.append(json.loads(line))
    return events


@pytest.mark.parametrize("point", ["committer-mid-promotion", "sentinel-after-staged",
                                   "committer-after-promotion"])
def test_sigkill_between_two_sinks_is_finished_by_the_restart(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """The sentinel dies (SIGKILL) with a multi-sink job staged but not promoted, promoted
    but not recorded, or — ``committer-mid-promotion`` — after the DuckDB commit, before the
    file sinks got their files; the restarted sentinel completes the job once, every sink
    holds its rows once, and its tape says COMPLETED as the state DB does."""
    marker = tmp_path / "killed"
    path = [str(KILL_AT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.setenv("CF_FIXTURE_KILL_AT", point)
    monkeypatch.setenv("CF_FIXTURE_KILL_MARKER", str(marker))
    first = cluster_factory(workers=1, **FAST)
    with control(first) as client:
        [job_id] = client.submit(plugin(tmp_path / "p"), inputs(tmp_path / "in", 1),
                                 sink=str(SinkRouting.parse(routes(tmp_path))))["job_ids"]
    assert first.sentinel is not None and first.sentinel.wait(60) == -signal.SIGKILL
    assert marker.read_text() == point
    at_crash = counts(tmp_path, temps=True)
    if point == "committer-mid-promotion":
        # Between the sinks: DuckDB holds the job's rows, the file sinks only hidden temps.
        assert at_crash == {"orders": 3, "errors": 0, "items": 0}
        assert len(list(tmp_path.glob("*/.*.cf-tmp"))) == 2
    else:
        assert at_crash == ({"orders": 0, "errors": 0, "items": 0}
                            if point == "sentinel-after-staged" else expected(1))
    with StateReader.open(settings.state_db) as r:
        assert (r.get_job(job_id) or {})["status"] == JobStatus.RUNNING
    monkeypatch.delenv("CF_FIXTURE_KILL_AT")
    first.stop()
    cluster_factory(workers=1, **FAST)
    row = wait_final(settings, [job_id])[job_id]
    assert row["status"] == JobStatus.COMPLETED and row["attempt"] == 1
    assert counts(tmp_path) == expected(1)  # every sink, exactly once
    events = [e for e in _tape_events(settings.home)
              if str((e.get("payload") or {}).get("job_id")) == str(job_id)]
    names = [e["event_name"].get("name") for e in events]
    assert names.count("JobCompleted") == 1 and "JobFailed" not in names, names


def test_a_locked_duckdb_sink_holds_back_the_other_sinks_too(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    """A notebook holds the DuckDB file: the job's Parquet and CSV outputs wait with it (the
    committer parks the whole job), and all three appear once the file is free."""
    db = tmp_path / "db" / "out.duckdb"
    db.parent.mkdir(parents=True)
    holder = duckdb.connect(str(db))  # read-write: DuckDB's own lock, as a notebook holds it
    c = cluster_factory(workers=1, sink_lock_timeout=60.0, **FAST)
    try:
        with control(c) as client:
            [job_id] = client.submit(plugin(tmp_path / "p"), inputs(tmp_path / "in", 1),
                                     sink=str(SinkRouting.parse(routes(tmp_path))))["job_ids"]

        def staged() -> bool:
            with StateReader.open(settings.state_db) as r:
                return bool((r.get_job(job_id) or {}).get("staged_json"))

        wait_until(staged, 30, message="the job to be staged")
        # For a while (the committer retries with backoff): nothing of it in any sink.
        watch_until = time.monotonic() + 1.0
        while time.monotonic() < watch_until:
            with StateReader.open(settings.state_db) as r:
                assert (r.get_job(job_id) or {})["status"] == JobStatus.RUNNING
            assert not list((tmp_path / "pq").glob("*"))
            assert not list((tmp_path / "csv").glob("*"))
            time.sleep(0.05)
    finally:
        holder.close()
    row = wait_final(settings, [job_id])[job_id]
    assert row["status"] == JobStatus.COMPLETED
    assert counts(tmp_path) == expected(1)

"""Schema contracts and the quarantine policy end to end (issue 18 items 1-2, F16).

Real plugin hosts (``cf.run`` and the ``casparian run`` CLI) and a real sentinel with
workers: a plugin's declared ``outputs`` is enforced on what it returns — bad rows go to
quarantine with ``schema:`` errors, shape problems fail the job permanently with diagnostics
that ``ctl.get_job``, ``casparian job show`` and the events carry — and a file over its
quarantine limit promotes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from casparian_nb import runner, sinks
from casparian_nb.client import ControlClient, EventSubscriber
from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import QuarantinePolicy
from tests.integration.test_run import cli, sink_files
from tests.integration.test_sentinel import FAST, subscribed, wait_final

MANIFEST = """\
name = "typed"
version = "1.0.0"
TOPIC = "orders"
outputs = {"orders": {"columns": [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "amount", "type": "float64"},
    {"name": "placed", "type": "date", "required": False},
]}}
"""

PARSE = """\
import json
import pyarrow as pa


def parse(path, ctx=None):
    # The input file holds the table's columns as JSON: the test chooses what comes back.
    with open(path, encoding="utf-8") as fh:
        columns = json.load(fh)
    return pa.table(columns)
"""


def plugin(directory: Path, extra: str = "") -> Path:
    path = directory / "typed.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MANIFEST + extra + "\n" + PARSE, encoding="utf-8")
    return path


def data(directory: Path, name: str, columns: dict[str, list[Any]]) -> Path:
    path = directory / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(columns), encoding="utf-8")
    return path


GOOD_AND_BAD = {"id": [1, 2, None, 4], "amount": ["1.5", "oops", "3", "4.25"],
                "placed": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-02-30"]}


def test_bad_rows_are_quarantined_and_the_output_keeps_its_declared_types(
        settings: Settings, tmp_path: Path) -> None:
    src = data(tmp_path / "in", "a", GOOD_AND_BAD)
    out = tmp_path / "out"
    res = runner.run(plugin(tmp_path / "p"), [src], sink=f"parquet://{out}", settings=settings)
    assert res.ok, res.failed
    [f] = res.files
    assert f.rows == {"orders": 1} and f.quarantine_rows == 3
    good = pq.read_table(out / sinks.output_filename("orders", f.job_id, "parquet"))
    assert good.schema.field("id").type == pa.int64()
    assert good.schema.field("amount").type == pa.float64()  # the strings were cast
    assert good.schema.field("placed").type == pa.date32()
    assert good.column("id").to_pylist() == [1] and good.column("amount").to_pylist() == [1.5]
    bad = pq.read_table(out / sinks.output_filename("orders_quarantine", f.job_id, "parquet"))
    assert bad.column("_cf_row_error").to_pylist() == [
        "schema: amount: 'oops' does not fit float64 losslessly",
        "schema: id: null not allowed",
        "schema: placed: '2024-02-30' does not fit date losslessly"]
    assert bad.column("_cf_source_row").to_pylist() == [2, 3, 4]


@pytest.mark.parametrize(("columns", "diagnostic"), [
    ({"id": [1], "amount": [1.0], "surprise": ["x"]}, "extra column 'surprise' (string)"),
    ({"amount": [1.0]}, "missing column 'id' (int64)"),
    ({"id": [[1]], "amount": [1.0]}, "column 'id': expected int64, got list<int64>"),
])
def test_a_shape_problem_fails_the_file_and_writes_nothing(
        settings: Settings, tmp_path: Path, columns: dict[str, list[Any]],
        diagnostic: str) -> None:
    out = tmp_path / "out"
    res = runner.run(plugin(tmp_path / "p"), [data(tmp_path / "in", "a", columns)],
                     sink=f"parquet://{out}", settings=settings)
    [f] = res.failed
    assert f.error is not None
    assert f.error.startswith("SchemaContractError: output 'orders' does not match its "
                              "declared schema: ")
    assert diagnostic in f.error
    assert sink_files(out) == []
    assert not any(p.is_file() for p in settings.staging_dir.rglob("*"))


def test_a_plugin_without_a_manifest_keeps_todays_behaviour(
        settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "p" / "free.py"
    path.parent.mkdir(parents=True)
    path.write_text(PARSE, encoding="utf-8")
    out = tmp_path / "out"
    src = data(tmp_path / "in", "a", {"anything": ["goes"], "id": [None]})
    res = runner.run(path, [src], sink=f"parquet://{out}", settings=settings)
    assert res.ok and res.files[0].rows == {"output": 1}


def test_over_the_submissions_quarantine_limit_nothing_is_promoted(
        settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = data(tmp_path / "in", "a", GOOD_AND_BAD)
    res = runner.run(plugin(tmp_path / "p"), [src], sink=f"parquet://{out}",
                     settings=settings, quarantine={"max_pct": 10})
    [f] = res.failed
    assert f.error == ("QuarantineLimitError: quarantine limit exceeded: 75% > 10% "
                       "(output 'orders': 3 of 4 rows quarantined)")
    assert sink_files(out) == []
    # Within the limit the same file is promoted, quarantine included.
    ok = runner.run(plugin(tmp_path / "p"), [src], sink=f"parquet://{out}",
                    settings=settings, quarantine={"max_pct": 80, "max_rows": 3})
    assert ok.ok and len(sink_files(out)) == 2


def test_the_plugins_quarantine_limit_applies_and_the_cli_overrides_it(
        settings: Settings, tmp_path: Path) -> None:
    path = plugin(tmp_path / "p", extra='quarantine = {"max_rows": 2}\n')
    src = data(tmp_path / "in", "a", GOOD_AND_BAD)
    out = tmp_path / "out"
    done = cli(settings.home, "run", path, src, "--sink", f"parquet://{out}")
    assert done.code == 1
    assert "quarantine limit exceeded: 3 rows > 2 (output 'orders'" in done.err
    assert sink_files(out) == []
    done = cli(settings.home, "run", path, src, "--sink", f"parquet://{out}",
               "--max-quarantine-rows", "3")
    assert done.code == 0, done.err
    assert len(sink_files(out)) == 2
    done = cli(settings.home, "run", path, src, "--max-quarantine-pct", "250")
    assert done.code == 2 and "--max-quarantine-pct must be a number from 0 to 100" in done.err


def test_a_bad_manifest_is_refused_before_anything_runs(settings: Settings,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "p" / "typo.py"
    path.parent.mkdir(parents=True)
    path.write_text('outputs = {"orders": {"columns": [{"name": "id", "type": "int46"}]}}\n'
                    + PARSE, encoding="utf-8")
    done = cli(settings.home, "run", path, data(tmp_path / "in", "a", {"id": [1]}))
    assert done.code != 0
    assert "line 1: outputs['orders'] column 1 ('id'): type 'int46': unknown type" in done.err


def test_sentinel_jobs_fail_permanently_with_diagnostics_everywhere(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    path = plugin(tmp_path / "p")
    broken = data(tmp_path / "in", "broken", {"id": [1], "amount": [1.0], "surprise": ["x"]})
    fine = data(tmp_path / "in", "fine", GOOD_AND_BAD)
    out = tmp_path / "out"
    assert cluster.info is not None
    with ControlClient(cluster.info, timeout=10) as ctl, EventSubscriber(cluster.info) as events:
        subscribed(events)
        reply = ctl.submit(path, [str(broken), str(fine)], sink=f"parquet://{out}")
        rows = wait_final(settings, reply["job_ids"])
        job = ctl.get_job(reply["job_ids"][0])
        seen = events.poll(0.5)
    bad_id, ok_id = reply["job_ids"]
    expected = ("SchemaContractError: output 'orders' does not match its declared schema: "
                "extra column 'surprise' (string)")
    assert rows[bad_id]["status"] == "FAILED" and rows[bad_id]["retry_count"] == 0
    assert rows[bad_id]["error_kind"] == "permanent"
    assert job is not None and expected in job["error_message"]
    assert rows[ok_id]["status"] == "COMPLETED" and rows[ok_id]["quarantine_rows"] == 3
    failed = [e.payload.data for e in seen if e.payload.name == "JobFailed"]
    assert any(expected in json.dumps(d) for d in failed), failed
    show = subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(settings.home),
                           "job", "show", str(bad_id)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert show.returncode == 0 and expected in show.stdout


def test_plugin_schema_prints_the_contract_and_infers_one(settings: Settings,
                                                         tmp_path: Path) -> None:
    path = plugin(tmp_path / "p")
    done = cli(settings.home, "plugin", "schema", path)
    assert done.code == 0, done.err
    assert "orders" in done.out and "id" in done.out and "nullable: no" in done.out
    src = data(tmp_path / "in", "a", {"id": [1], "amount": [1.5], "note": ["x"]})
    done = cli(settings.home, "plugin", "schema", path, "--infer", src)
    assert done.code == 0, done.err
    manifest = textwrap.dedent(done.out)
    namespace: dict[str, Any] = {}
    exec(manifest, namespace)  # what it prints is a manifest to paste
    assert namespace["outputs"] == {"orders": {"columns": [
        {"name": "id", "type": "int64"}, {"name": "amount", "type": "float64"},
        {"name": "note", "type": "string"}]}}


def test_a_submissions_quarantine_limit_holds_on_the_sentinel_and_from_the_cli(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    cluster_factory(workers=1, **FAST)
    path = plugin(tmp_path / "p", extra='quarantine = {"max_rows": 1}\n')
    src = data(tmp_path / "in", "a", GOOD_AND_BAD)
    out = tmp_path / "out"
    with ControlClient.from_home(settings.home, timeout=10) as ctl:
        reply = ctl.submit(path, [str(src)], sink=f"parquet://{out}",
                           quarantine=QuarantinePolicy(max_pct=10))
        [job_id] = reply["job_ids"]
        rows = wait_final(settings, [job_id])
        job = ctl.get_job(job_id)
    assert rows[job_id]["status"] == "FAILED" and rows[job_id]["error_kind"] == "permanent"
    assert job is not None and job["error_message"] == (
        "QuarantineLimitError: quarantine limit exceeded: 75% > 10% "
        "(output 'orders': 3 of 4 rows quarantined)")
    assert sink_files(out) == []
    # The CLI's limit overrides the plugin's (1 row): within it, the file is promoted.
    done = subprocess.run(
        [sys.executable, "-m", "casparian_nb", "--home", str(settings.home), "submit",
         str(path), str(src), "--sink", f"parquet://{out}", "--max-quarantine-rows", "3",
         "--wait", "--quiet"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(sink_files(out)) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "casparian_nb", "--home", str(settings.home), "submit",
         str(path), str(src), "--max-quarantine-pct", "250"],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "casparian: error: --max-quarantine-pct must be a number from 0 to 100, not 250.0 "
        "(see 'casparian submit --help')"]

"""Per-output routing (issue 18 item 3): ``SinkRouting``, staging each output for its own
sink, and promotion across sinks — all of them or none, with a crash between two sinks
finished by ``recover`` exactly once.

Real files, real DuckDB databases, and a real child process killed with SIGKILL at the
journaled point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

import casparian_nb.sinks._journal as journal_mod
from casparian_nb import plan
from casparian_nb.errors import SinkError, SinkModeError, SinkRoutingError, SinkURIError
from casparian_nb.lineage import Lineage, prepare_output, quarantine_name
from casparian_nb.sinks import (
    JobStager,
    SinkRouting,
    StagedJob,
    promote,
    recover,
    routing_from_args,
)
from casparian_nb.sinks.staging import JOURNAL
from tests.unit.test_sinks import TS, job_rows, rows, visible

# -- SinkRouting ----------------------------------------------------------------------------


def test_one_uri_is_a_routing_whose_text_is_the_canonical_uri(tmp_path: Path) -> None:
    r = SinkRouting.parse("parquet://out/", base=tmp_path)
    assert r.single is not None and str(r) == f"parquet://{tmp_path}/out"
    assert SinkRouting.parse({"*": "parquet://out"}, base=tmp_path) == r  # same routing
    assert r.sink_for("anything") == r.single


def test_a_mapping_routes_by_name_then_quarantine_sibling_then_star(tmp_path: Path) -> None:
    r = SinkRouting.parse({"orders": "duckdb://db.duckdb", "errors": "csv://e",
                           "*": "parquet://p"}, base=tmp_path)
    assert r.single is None
    assert r.sink_for("orders").kind == "duckdb"
    assert r.sink_for("orders_quarantine").kind == "duckdb"  # follows its output
    assert r.sink_for("errors").kind == "csv"
    assert r.sink_for("items").kind == "parquet"
    text = str(r)
    assert json.loads(text) == {"*": f"parquet://{tmp_path}/p", "errors": f"csv://{tmp_path}/e",
                                "orders": f"duckdb://{tmp_path}/db.duckdb"}
    assert SinkRouting.parse(text) == r  # the stored text reads back to the same routing
    assert [s.kind for s in r.sinks()] == ["csv", "duckdb", "parquet"]


def test_routing_errors_are_one_line_and_name_the_output(tmp_path: Path) -> None:
    r = SinkRouting.parse({"orders": "parquet://o"}, base=tmp_path)
    with pytest.raises(SinkRoutingError, match=r"output 'items' has no sink.*names orders and no"):
        r.sink_for("items")
    with pytest.raises(SinkRoutingError, match="not an output name"):
        SinkRouting.parse({"Bad-Name": "parquet://o"})
    with pytest.raises(SinkURIError, match=r"sink for output 'orders'.*unknown scheme"):
        SinkRouting.parse({"orders": "s3://bucket"})
    with pytest.raises(SinkRoutingError, match="empty"):
        SinkRouting.parse({})
    with pytest.raises(SinkRoutingError, match=r"output\(s\) 'nope' that the plugin does not declare"):
        SinkRouting.parse({"nope": "parquet://o", "*": "parquet://p"},
                          base=tmp_path).check_outputs(["orders"])
    with pytest.raises(SinkRoutingError, match="output 'items' has no sink"):
        r.check_outputs(["orders", "items"])
    SinkRouting.parse({"orders_quarantine": "csv://q", "*": "parquet://p"},
                      base=tmp_path).check_outputs(["orders"])  # a quarantine sibling is known


def test_cli_sink_values() -> None:
    assert routing_from_args([]) is None
    assert routing_from_args(["parquet://out"]) == "parquet://out"
    assert routing_from_args(["duckdb://f.duckdb?table=t"]) == "duckdb://f.duckdb?table=t"
    assert routing_from_args(["orders=duckdb://db?table=o", "parquet://out"]) == {
        "orders": "duckdb://db?table=o", "*": "parquet://out"}
    with pytest.raises(SinkRoutingError, match="twice"):
        routing_from_args(["parquet://a", "parquet://b"])


# -- plan keys per sink -----------------------------------------------------------------------

MANIFEST = {"orders": {"columns": [{"name": "id", "type": "int64"}]},
            "errors": {"columns": [{"name": "msg", "type": "string"}]}}


def _keys(sink: object) -> dict[str, str]:
    targets = plan.output_plan(manifest=MANIFEST, default_output="orders",
                               sink_uri=str(SinkRouting.parse(sink)), sink_mode="append")  # type: ignore[arg-type]
    return {t.output: t.target_key for t in targets}


def test_each_output_is_keyed_by_its_own_sink(tmp_path: Path) -> None:
    p, c, d = (f"parquet://{tmp_path}/p", f"csv://{tmp_path}/c", f"duckdb://{tmp_path}/d.db")
    one = _keys(p)
    # A mapping that sends everything to one sink is that sink: same keys, nothing re-runs.
    assert _keys({"*": p}) == one == _keys({"orders": p, "errors": p})
    moved = _keys({"errors": c, "*": p})
    assert moved["orders"] == one["orders"] and moved["errors"] != one["errors"]
    both = _keys({"errors": c, "orders": d})
    assert both["errors"] == moved["errors"] and both["orders"] != one["orders"]
    targets = plan.output_plan(manifest=MANIFEST, default_output="orders",
                               sink_uri=str(SinkRouting.parse({"errors": c, "orders": d})),
                               sink_mode="append")
    assert {t.output: t.sink for t in targets} == {"errors": c, "orders": d}
    assert plan.plan_from_json(plan.plan_to_json(targets)) == targets


def test_submit_time_checks_of_a_mapping_against_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(SinkRoutingError, match="does not declare"):
        _keys({"orderz": f"parquet://{tmp_path}/p", "*": f"parquet://{tmp_path}/p"})
    with pytest.raises(SinkRoutingError, match="output 'errors' has no sink"):
        _keys({"orders": f"parquet://{tmp_path}/p"})
    # Without a manifest nothing is known yet: the one target is keyed by the whole routing.
    [t] = plan.output_plan(manifest=None, default_output="out",
                           sink_uri=str(SinkRouting.parse({"x": f"csv://{tmp_path}/c"})),
                           sink_mode="append")
    assert t.output == plan.ALL_OUTPUTS and t.table == "out"


# -- staging and promotion across sinks -------------------------------------------------------


def routes(tmp_path: Path) -> dict[str, str]:
    return {"orders": f"duckdb://{tmp_path}/db/out.duckdb", "errors": f"csv://{tmp_path}/csv",
            "*": f"parquet://{tmp_path}/pq"}


def stage3(root: Path, job_id: str, routing: object) -> StagedJob:
    """Three outputs (one with quarantined rows) staged like the plugin host does."""
    lin = Lineage("cd" * 32, job_id, TS, "1.0")
    parsed = SinkRouting.parse(routing)  # type: ignore[arg-type]
    stager = JobStager(root, job_id, parsed)
    for name, table in {"orders": rows(4, bad=(1,)), "items": rows(3),
                        "errors": rows(2)}.items():
        valid, bad = prepare_output(name, table, lin)
        table_name = parsed.sink_for(name).table_for(name)  # as the plugin host names it
        stager.write(name, table_name, valid)
        if bad is not None:
            stager.write(quarantine_name(name), quarantine_name(table_name), bad)
    return stager.close()


def everywhere(tmp_path: Path) -> dict[str, dict[str, int]]:
    """Rows per job of every output, queried in every sink."""
    r = routes(tmp_path)
    return {"orders": dict(job_rows(r["orders"], "orders")),
            "orders_quarantine": dict(job_rows(r["orders"], "orders_quarantine")),
            "errors": dict(job_rows(r["errors"], "errors")),
            "items": dict(job_rows(r["*"], "items"))}


NOTHING = {"orders": {}, "orders_quarantine": {}, "errors": {}, "items": {}}


def test_staging_writes_each_output_for_its_own_sink(tmp_path: Path) -> None:
    staged = stage3(tmp_path / "stg", "j1", routes(tmp_path))
    kinds = {o.output: (Path(o.path).suffix, StagedJob.sink_of(staged, o).kind)
             for o in staged.outputs}
    assert kinds == {"orders": (".parquet", "duckdb"), "orders_quarantine": (".parquet", "duckdb"),
                     "items": (".parquet", "parquet"), "errors": (".csv", "csv")}
    again = StagedJob.from_dict(json.loads(json.dumps(staged.to_dict())))
    assert again == staged  # what travels from the host to the committer


def test_an_unrouted_output_fails_at_staging_naming_it(tmp_path: Path) -> None:
    stager = JobStager(tmp_path / "stg", "j1", {"orders": f"parquet://{tmp_path}/p"})
    with pytest.raises(SinkRoutingError, match="output 'items' has no sink"):
        stager.write("items", "items", rows(1))
    stager.discard()


def test_promotion_across_three_sinks(tmp_path: Path) -> None:
    staged = stage3(tmp_path / "stg", "j1", routes(tmp_path))
    artifacts = promote(staged)
    assert everywhere(tmp_path) == {"orders": {"j1": 3}, "orders_quarantine": {"j1": 1},
                                    "errors": {"j1": 2}, "items": {"j1": 3}}
    by = {a.output: a.uri for a in artifacts}
    assert by["orders"].startswith("duckdb://") and by["items"].startswith("file://")
    assert by["errors"].endswith(".csv") and not Path(staged.staging_dir).exists()
    # Promoting it again (a re-adopted job) changes nothing.
    assert [a.uri for a in promote(staged)] == [a.uri for a in artifacts]
    assert everywhere(tmp_path)["orders"] == {"j1": 3}


@pytest.mark.parametrize("broken", ["duckdb-is-a-directory", "csv-dir-is-a-file",
                                    "csv-move-fails"])
def test_a_failure_in_one_sink_promotes_nothing_anywhere(
        tmp_path: Path, broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB cannot open its file (before anything moved); the CSV sink's directory is a
    file (after the DuckDB load ran, uncommitted); the move into the CSV sink fails (after
    the load and after the Parquet output was moved next to its final name)."""
    r = routes(tmp_path)
    if broken == "duckdb-is-a-directory":
        (tmp_path / "db" / "out.duckdb").mkdir(parents=True)
    elif broken == "csv-dir-is-a-file":
        (tmp_path / "csv").write_text("not a directory")
    else:
        import casparian_nb.sinks._multi as multi_mod

        real_move = multi_mod.move_to_tmp

        def move(src: Path, tmp: Path) -> None:
            if src.suffix == ".csv":
                raise OSError(28, "No space left on device")
            real_move(src, tmp)

        monkeypatch.setattr(multi_mod, "move_to_tmp", move)
    staged = stage3(tmp_path / "stg", "j1", r)
    with pytest.raises(SinkError):
        promote(staged)
    monkeypatch.undo()
    # Query every sink: the file sinks hold nothing, not even a hidden temp ...
    assert visible(tmp_path / "pq") == [] and [p.name for p in (tmp_path / "pq").glob(".*")] == []
    if broken != "csv-dir-is-a-file":
        assert (tmp_path / "csv").is_file() or visible(tmp_path / "csv") == []
    if broken != "duckdb-is-a-directory":  # ... and the DuckDB load was rolled back
        assert job_rows(r["orders"], "orders") == {} and job_rows(r["*"], "items") == {}
        assert job_rows(r["orders"], "orders_quarantine") == {}
    if broken == "csv-move-fails":
        assert everywhere(tmp_path) == NOTHING
    # Nothing half-moved: every staged file is back, no journal, ready to retry.
    assert all(Path(o.path).is_file() for o in staged.outputs)
    assert not (Path(staged.staging_dir) / JOURNAL).exists()


def test_mode_error_in_one_sink_refuses_the_whole_job(tmp_path: Path) -> None:
    r = routes(tmp_path)
    promote(stage3(tmp_path / "stg", "old", r))
    before = everywhere(tmp_path)
    staged = stage3(tmp_path / "stg", "new", r)
    with pytest.raises(SinkModeError, match="'items' already has data"):
        promote(staged, mode="error")
    assert everywhere(tmp_path) == before


def test_mode_replace_across_sinks(tmp_path: Path) -> None:
    r = routes(tmp_path)
    promote(stage3(tmp_path / "stg", "old", r))
    promote(stage3(tmp_path / "stg", "new", r), mode="replace")
    assert everywhere(tmp_path) == {"orders": {"new": 3}, "orders_quarantine": {"new": 1},
                                    "errors": {"new": 2}, "items": {"new": 3}}


# -- crashes --------------------------------------------------------------------------------


def test_a_journal_left_started_is_finished_by_recover_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Die after the commit point: DuckDB committed, no file placed yet."""
    staged = stage3(tmp_path / "stg", "j1", routes(tmp_path))

    def die(tmp: Path, dst: Path) -> None:
        raise SystemExit("killed between sinks")

    monkeypatch.setattr(journal_mod, "place", die)
    with pytest.raises(SystemExit):
        promote(staged)
    monkeypatch.undo()
    journal = json.loads((Path(staged.staging_dir) / JOURNAL).read_text())
    assert journal["state"] == "started"
    state = everywhere(tmp_path)
    assert state["orders"] == {"j1": 3} and state["items"] == {} and state["errors"] == {}
    assert recover(tmp_path / "stg") == ["j1"]
    assert everywhere(tmp_path) == {"orders": {"j1": 3}, "orders_quarantine": {"j1": 1},
                                    "errors": {"j1": 2}, "items": {"j1": 3}}
    assert recover(tmp_path / "stg") == [] and not Path(staged.staging_dir).exists()


def test_a_journal_left_preparing_is_rolled_back(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Die before the commit point: DuckDB never committed, temps go back to staging."""
    staged = stage3(tmp_path / "stg", "j1", routes(tmp_path))
    real_write = journal_mod.write_json_atomic
    import casparian_nb.sinks._multi as multi_mod

    def write(path: Path, data: dict[str, object], **kw: object) -> None:
        if data.get("state") == "started":
            raise SystemExit("killed before the commit point")
        real_write(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(multi_mod, "write_json_atomic", write)
    monkeypatch.setattr(multi_mod, "_rollback", lambda *a: None)  # the process is gone
    with pytest.raises(SystemExit):
        promote(staged)
    monkeypatch.undo()
    assert json.loads((Path(staged.staging_dir) / JOURNAL).read_text())["state"] == "preparing"
    assert everywhere(tmp_path) == NOTHING  # the uncommitted load is gone with its connection
    assert recover(tmp_path / "stg") == ["j1"]
    assert everywhere(tmp_path) == NOTHING and all(Path(o.path).is_file() for o in staged.outputs)
    promote(staged)  # the job can still be promoted, once
    assert everywhere(tmp_path)["items"] == {"j1": 3}


def test_sigkill_between_two_sinks_then_recover(tmp_path: Path) -> None:
    """A real committer process killed with SIGKILL after its DuckDB commit, before the file
    sinks got their outputs; ``recover`` in a new process completes the job exactly once."""
    staged = stage3(tmp_path / "stg", "j1", routes(tmp_path))
    code = textwrap.dedent("""
        import json, os, signal, sys
        import casparian_nb.sinks._journal as journal
        from casparian_nb.sinks import StagedJob, promote

        def place(tmp, dst):
            os.kill(os.getpid(), signal.SIGKILL)

        journal.place = place
        promote(StagedJob.from_dict(json.loads(sys.argv[1])))
    """)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(staged.to_dict())],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
                          timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((Path(staged.staging_dir) / JOURNAL).read_text())["state"] == "started"
    db = routes(tmp_path)["orders"].removeprefix("duckdb://")
    with duckdb.connect(db, read_only=True) as con:  # committed before the kill, durable
        assert con.execute("select count(*) from orders").fetchone() == (3,)
    assert visible(tmp_path / "pq") == [] and visible(tmp_path / "csv") == []
    assert recover(tmp_path / "stg") == ["j1"]
    assert everywhere(tmp_path) == {"orders": {"j1": 3}, "orders_quarantine": {"j1": 1},
                                    "errors": {"j1": 2}, "items": {"j1": 3}}
    assert [p.name for p in (tmp_path / "pq").glob(".*")] == []


def test_single_sink_jobs_keep_their_one_sink_text(tmp_path: Path) -> None:
    stager = JobStager(tmp_path / "stg", "j1", f"parquet://{tmp_path}/p")
    stager.write("orders", "orders", prepare_output("orders", rows(1),
                                                    Lineage("ab" * 32, "j1", TS, "1"))[0])
    staged = stager.close()
    assert staged.sink == f"parquet://{tmp_path}/p" and "sink" not in staged.outputs[0].to_dict()


def test_two_duckdb_files_and_a_failure_in_the_second(tmp_path: Path) -> None:
    """Two DuckDB files (and two tables of one file): the second file unusable rolls back
    the first's load; usable, both commit."""
    a, b = f"duckdb://{tmp_path}/a.duckdb", f"duckdb://{tmp_path}/b.duckdb"
    routing = {"orders": a, "items": f"{a}?table=things", "errors": b}
    (tmp_path / "b.duckdb").mkdir()
    staged = stage3(tmp_path / "stg", "j1", routing)
    with pytest.raises(SinkError, match=r"b\.duckdb"):
        promote(staged)
    assert job_rows(a, "orders") == {} and job_rows(a, "things") == {}
    (tmp_path / "b.duckdb").rmdir()
    promote(staged)
    assert job_rows(a, "orders") == {"j1": 3} and job_rows(a, "things") == {"j1": 3}
    assert job_rows(a, "orders_quarantine") == {"j1": 1} and job_rows(b, "errors") == {"j1": 2}


def test_file_sinks_only_and_a_crash_while_moving(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV + Parquet (no DuckDB): the journal says "started" before the first move, so a
    crash among the moves is rolled forward, and an error among them rolled back."""
    routing = {"errors": f"csv://{tmp_path}/csv", "*": f"parquet://{tmp_path}/pq"}
    import casparian_nb.sinks._multi as multi_mod

    real_move = multi_mod.move_to_tmp
    calls: list[Path] = []

    def crash_on_second(src: Path, tmp: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise SystemExit("killed mid-move")
        real_move(src, tmp)

    staged = stage3(tmp_path / "stg", "j1", routing)
    monkeypatch.setattr(multi_mod, "move_to_tmp", crash_on_second)
    monkeypatch.setattr(multi_mod, "_rollback", lambda *a: None)  # the process is gone
    with pytest.raises(SystemExit):
        promote(staged)
    monkeypatch.undo()
    assert json.loads((Path(staged.staging_dir) / JOURNAL).read_text())["state"] == "started"
    assert recover(tmp_path / "stg") == ["j1"]
    assert job_rows(routing["*"], "items") == {"j1": 3}
    assert job_rows(routing["*"], "orders") == {"j1": 3}
    assert job_rows(routing["errors"], "errors") == {"j1": 2}

    again = stage3(tmp_path / "stg", "j2", routing)
    monkeypatch.setattr(multi_mod, "move_to_tmp", lambda s, t: (_ for _ in ()).throw(
        OSError(28, "No space left on device")) if s.suffix == ".csv" else real_move(s, t))
    with pytest.raises(SinkError, match="rolled back"):
        promote(again)
    monkeypatch.undo()
    assert job_rows(routing["*"], "items") == {"j1": 3}  # nothing of j2 anywhere
    assert job_rows(routing["errors"], "errors") == {"j1": 2}
    assert all(Path(o.path).is_file() for o in again.outputs)

"""Compaction of promoted Parquet files (sinks/compaction.py): merge correctness, lineage
kept, row counts, the reader's view at every step, and a crash at each step then recovery."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import casparian_nb.sinks._compaction_plan as comp_plan
import casparian_nb.sinks._compaction_swap as comp_swap
import casparian_nb.sinks.compaction as comp
from casparian_nb.errors import CompactionError, SinkURIError
from casparian_nb.lineage import LINEAGE_COLUMNS, ROW_ERROR, Lineage, prepare_output
from casparian_nb.sinks import JobStager, promote

TS = datetime(2026, 1, 1, tzinfo=UTC)


def promote_jobs(tmp_path: Path, n: int, rows_each: int = 20, start: int = 0,
                 extra_col: bool = False) -> str:
    uri = f"parquet://{tmp_path / 'out'}"
    for j in range(start, start + n):
        job = f"job{j}"
        data: dict[str, object] = {"id": pa.array(range(rows_each), pa.int32()),
                                   "name": [f"{job}-{i}" for i in range(rows_each)],
                                   ROW_ERROR: [("bad" if i == 0 else None)
                                               for i in range(rows_each)]}
        if extra_col and j % 2:
            data["extra"] = [1.5] * rows_each
        valid, bad = prepare_output("orders", pa.table(data), Lineage("ab" * 32, job, TS, "1"))
        stager = JobStager(tmp_path / "stg", job, uri)
        stager.write("orders", "orders", valid)
        if bad is not None:
            stager.write("orders_quarantine", "orders_quarantine", bad)
        promote(stager.close())
    return uri


def files(d: Path, output: str = "orders") -> list[str]:
    return sorted(p.name for p in d.iterdir() if comp_plan._FILE.match(p.name)
                  and p.name.rsplit("_", 1)[0] == output)


def reader_rows(d: Path, output: str = "orders") -> Counter[str]:
    """What the catalog sees: the glob minus hidden_files, under the read lock."""
    with comp.read_lock([d]):
        hide = comp.hidden_files(d)
        names = [d / n for n in files(d, output) if n not in hide]
        if not names:
            return Counter()
        got = duckdb.sql("select _cf_job_id from read_parquet($f, union_by_name=true)",
                         params={"f": [str(p) for p in names]}).fetchall()
    return Counter(r[0] for r in got)


def test_merges_small_files_keeping_every_row_and_lineage(tmp_path):
    uri = promote_jobs(tmp_path, 12, extra_col=True)
    out = tmp_path / "out"
    before = reader_rows(out)
    before_table = pq.read_table(out / files(out)[0])
    res = comp.compact(uri, target_size="1MB")
    assert [o.output for o in res.outputs] == ["orders", "orders_quarantine"]
    orders = res.outputs[0]
    assert (orders.files_before, orders.files_after, orders.rows) == (12, 1, 12 * 19)
    assert len(files(out)) == 1 and len(files(out, "orders_quarantine")) == 1
    assert reader_rows(out) == before
    merged = pq.read_table(out / files(out)[0])
    for col in (*LINEAGE_COLUMNS, "id", "name", "extra"):
        assert col in merged.column_names
    assert merged.schema.field("id").type == before_table.schema.field("id").type
    assert merged.column("extra").null_count == 6 * 19  # jobs without the column
    assert not [p for p in out.iterdir() if p.name.startswith(".cf-compact-")
                and p.name.endswith(".json")]
    assert not [p for p in out.iterdir() if p.name.endswith(comp_swap.TMP_SUFFIX)]


def test_target_size_packs_groups_and_skips_singletons(tmp_path):
    uri = promote_jobs(tmp_path, 10)
    out = tmp_path / "out"
    size = max((out / n).stat().st_size for n in files(out))
    res = comp.compact(uri, output="orders", target_size=size * 3 + 10)
    # 3 + 3 + 3 merged; the tenth alone is left as it is
    assert res.outputs[0].files_before == 9 and res.outputs[0].files_after == 3
    assert len(files(out)) == 4 and len(files(out, "orders_quarantine")) == 10
    assert sum(reader_rows(out).values()) == 10 * 19
    # Nothing small enough left to pair up: a second run does nothing.
    again = comp.compact(uri, output="orders", target_size=size * 3 + 10)
    assert sum(o.files_before for o in again.outputs) <= 4
    assert sum(reader_rows(out).values()) == 10 * 19


def test_uri_moves_name_every_replaced_file(tmp_path):
    uri = promote_jobs(tmp_path, 3)
    out = tmp_path / "out"
    old = files(out)
    res = comp.compact(uri, output="orders")
    moves = res.uri_moves()
    assert sorted(moves) == sorted(f"file://{out / n}" for n in old)
    assert set(moves.values()) == {f"file://{out / files(out)[0]}"}


@pytest.mark.parametrize("bad", ["csv", "duckdb"])
def test_only_parquet_sinks(tmp_path, bad):
    uri = f"{bad}://{tmp_path / 'x'}" + ("/a.duckdb" if bad == "duckdb" else "")
    with pytest.raises(SinkURIError, match="compaction is for parquet:// sinks"):
        comp.compact(uri)


@pytest.mark.parametrize(("text", "size"), [("128MB", 128 << 20), ("1.5G", 3 << 29),
                                            ("64MiB", 64 << 20), ("4096", 4096), (2048, 2048)])
def test_parse_size(text, size):
    assert comp.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12XB", "-1MB", "100"])
def test_parse_size_rejects(text):
    with pytest.raises(SinkURIError):
        comp.parse_size(text)


def test_one_compaction_per_directory(tmp_path):
    uri = promote_jobs(tmp_path, 3)
    fd = comp_swap.flock(tmp_path / "out" / comp.RUN_LOCK_NAME, comp.fcntl.LOCK_EX, 0, "x")
    try:
        with pytest.raises(CompactionError, match="already running"):
            comp.compact(uri)
    finally:
        os.close(fd)


def test_swap_waits_for_readers_then_gives_up(tmp_path):
    promote_jobs(tmp_path, 3)
    out = tmp_path / "out"
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    with comp.read_lock([out]), pytest.raises(CompactionError, match="readers kept"):
        comp.swap(out, j, lock_timeout=0.2)
    assert len(files(out)) == 3  # nothing changed
    assert comp.swap(out, j)
    assert len(files(out)) == 1


# -- crash at each step, then recovery ------------------------------------------------------
def test_crash_during_merge_leaves_an_invisible_tmp(tmp_path):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    (out / f".cf-compact-{j['id']}.json").unlink()  # died before the journal
    assert reader_rows(out) == Counter({f"job{i}": 19 for i in range(4)})
    comp.compact(uri, output="orders")
    assert not (out / j["tmp"]).exists()
    assert len(files(out)) == 1
    assert sum(reader_rows(out).values()) == 4 * 19


def test_crash_after_journal_rolls_forward(tmp_path):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    assert sum(reader_rows(out).values()) == 4 * 19  # tmp invisible, nothing hidden
    comp.compact(uri, output="quarantine_only_nothing")  # any compaction recovers first
    assert files(out) == [j["dst"]]
    assert sum(reader_rows(out).values()) == 4 * 19


def test_crash_after_journal_with_a_source_gone_drops_the_merge(tmp_path):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    (out / j["sources"][0]).unlink()  # a replace-mode promotion removed it meanwhile
    comp.recover_compactions(out)
    assert not (out / j["dst"]).exists() and not (out / j["tmp"]).exists()
    assert sum(reader_rows(out).values()) == 3 * 19
    del uri


@pytest.mark.parametrize("unlinked", [0, 1, 3])
def test_crash_inside_the_swap_is_invisible_to_readers(tmp_path, monkeypatch, unlinked):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    want = Counter({f"job{i}": 19 for i in range(4)})
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    real_unlink = Path.unlink
    count = {"n": 0}

    def dying_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name in j["sources"]:
            if count["n"] == unlinked:
                raise SystemExit("killed")  # the process dies here
            count["n"] += 1
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dying_unlink)
    with pytest.raises(SystemExit):
        comp.swap(out, j)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    # Merged file and 4 - unlinked sources on disk: the reader still counts each row once.
    assert (out / j["dst"]).exists() and len(files(out)) == 1 + 4 - unlinked
    assert comp.hidden_files(out) >= set(j["sources"][unlinked:])
    assert reader_rows(out) == want
    comp.compact(uri, output="orders")
    assert files(out) == [j["dst"]]
    assert reader_rows(out) == want
    assert comp.hidden_files(out) == set()


def test_files_promoted_during_compaction_are_untouched(tmp_path):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    groups = comp.plan(out, "orders", 1 << 20)
    j = comp.merge(groups[0])
    promote_jobs(tmp_path, 2, start=100)  # arrive between merge and swap
    assert comp.swap(out, j)
    got = reader_rows(out)
    assert sum(got.values()) == 6 * 19 and got["job100"] == 19
    del uri


def test_catalog_counts_each_row_once_after_a_crash_inside_the_swap(tmp_path, monkeypatch):
    from casparian_nb.notebook.catalog import OutputCatalog

    uri = promote_jobs(tmp_path, 5)
    out = tmp_path / "out"
    j = comp.merge(comp.plan(out, "orders", 1 << 20)[0])
    real_unlink = Path.unlink

    def dying_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == j["sources"][2]:
            raise SystemExit("killed")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dying_unlink)
    with pytest.raises(SystemExit):
        comp.swap(out, j)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    with OutputCatalog(tmp_path / "home", sinks=[uri]) as cat:
        assert len(files(out)) == 4  # merged + 3 sources left
        got = cat.sql("select _cf_job_id, count(*) n from orders group by 1 order by 1")
        assert got["n"].tolist() == [19] * 5
        comp.compact(uri, output="orders")
        assert cat.sql("select count(*) n from orders")["n"][0] == 5 * 19


@pytest.mark.parametrize(("args", "code", "text"), [
    (["csv://{d}"], 2, "compaction is for parquet:// sinks"),
    (["parquet://{d}", "--target-size", "12XB"], 2, "invalid size '12XB'"),
    (["parquet://{d}", "--output", "Bad-Name"], 2, "invalid output name"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, code, text):
    from casparian_nb.cli.main import main

    argv = ["--home", str(tmp_path / "h"), "compact", *(a.format(d=tmp_path / "o") for a in args)]
    assert main(argv) == code
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("casparian: error: ") and text in line


def test_cli_fails_with_exit_1_while_another_compaction_runs(tmp_path, capsys):
    from casparian_nb.cli.main import main

    uri = promote_jobs(tmp_path, 3)
    fd = comp_swap.flock(tmp_path / "out" / comp.RUN_LOCK_NAME, comp.fcntl.LOCK_EX, 0, "x")
    try:
        assert main(["--home", str(tmp_path / "h"), "compact", uri]) == 1
    finally:
        os.close(fd)
    assert "already running" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "h"), "compact", uri]) == 0
    assert "3 files -> 1" in capsys.readouterr().out


_CHILD = """
import os, pathlib, signal, sys
import pyarrow.parquet as pq
import casparian_nb.sinks._compaction_plan as comp_plan
import casparian_nb.sinks.compaction as comp

point, uri = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "write":  # the merged tmp half written (no footer), no journal
    real_write = pq.ParquetWriter.write_table
    def write(self, *a, **k):
        real_write(self, *a, **k)
        die()
    pq.ParquetWriter.write_table = write
elif point == "journal":  # the tmp complete, the journal not published
    real_replace = os.replace
    def replace(a, b):
        if str(b).endswith(".json"):
            die()
        real_replace(a, b)
    os.replace = replace
elif point in ("link", "unlink", "done"):
    real_link, real_unlink = os.link, pathlib.Path.unlink
    def link(a, b):
        real_link(a, b)
        if point == "link":  # the merged file visible, every source still there
            die()
    def unlink(self, missing_ok=False):
        if point == "done" and self.name.startswith(".cf-compact-"):
            die()  # every source gone, the journal left
        real_unlink(self, missing_ok=missing_ok)
        if point == "unlink" and comp_plan._FILE.match(self.name):
            die()  # one source gone
    os.link, pathlib.Path.unlink = link, unlink
comp.compact(uri, output="orders")
sys.exit(3)
"""


@pytest.mark.parametrize("point", ["write", "journal", "link", "unlink", "done"])
def test_killed_at_each_step_readers_stay_exact_and_the_next_compaction_recovers(tmp_path,
                                                                                 point):
    import signal
    import subprocess
    import sys

    uri = promote_jobs(tmp_path, 6)
    out = tmp_path / "out"
    want = Counter({f"job{i}": 19 for i in range(6)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(comp.__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, point, uri], env=env, timeout=120,
                          check=False)
    assert proc.returncode == -signal.SIGKILL
    journals = [p for p in out.iterdir() if comp_swap._JOURNAL.match(p.name)]
    assert bool(journals) == (point in ("link", "unlink", "done"))
    assert reader_rows(out) == want  # exact in every state a crash can leave
    comp.compact(uri, output="orders")
    assert len(files(out)) == 1
    assert reader_rows(out) == want
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")
                 and p.name not in (comp.LOCK_NAME, comp.RUN_LOCK_NAME)]
    assert leftovers == []


def test_a_source_removed_before_the_merge_skips_its_group(tmp_path, monkeypatch):
    uri = promote_jobs(tmp_path, 4)
    out = tmp_path / "out"
    real_merge = comp.merge

    def merge_after_a_replace(group: comp.MergeGroup) -> dict[str, object]:
        group.sources[1].unlink()  # what a replace-mode promotion would do meanwhile
        return real_merge(group)

    monkeypatch.setattr(comp, "merge", merge_after_a_replace)
    res = comp.compact(uri, output="orders")
    assert res.outputs == []
    assert len(files(out)) == 3 and sum(reader_rows(out).values()) == 3 * 19
    assert not [p for p in out.iterdir() if p.name.endswith(comp_swap.TMP_SUFFIX)]


def test_incompatible_column_types_fail_in_one_line_and_change_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i, values in enumerate(([1, 2], ["a", "b"])):
        pq.write_table(pa.table({"x": values}), out / f"orders_{i:016x}.parquet")
    with pytest.raises(CompactionError, match="output 'orders' have columns of types"):
        comp.compact(f"parquet://{out}")
    assert len(files(out)) == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".cf-compact-")] == []

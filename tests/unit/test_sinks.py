"""sinks/: URIs, modes, staging, atomic promotion (F0, F2, F3), DuckDB locking, recovery.

Real files under tmp_path, real DuckDB files, and real child processes killed with SIGKILL
where the invariant is about crashes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import casparian_nb.lineage as lineage_mod
import casparian_nb.sinks._journal as journal_mod
import casparian_nb.sinks.promotion as promote_mod
from casparian_nb.errors import (
    OutputNameError,
    SinkError,
    SinkLockedError,
    SinkModeError,
    SinkURIError,
)
from casparian_nb.lineage import ROW_ERROR, Lineage, prepare_output, quarantine_name
from casparian_nb.sinks import (
    Artifact,
    JobStager,
    SinkMode,
    SinkURI,
    StagedJob,
    discard,
    job_dirname,
    output_filename,
    parse_sink_uri,
    promote,
    recover,
)
from casparian_nb.sinks.staging import FLUSH_ROWS, JOURNAL

TS = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KINDS = ["parquet", "csv", "duckdb"]
REPO = Path(lineage_mod.__file__).resolve().parents[1]


# -- helpers --------------------------------------------------------------------------------


def sink_for(tmp_path: Path, kind: str) -> str:
    return f"{kind}://{tmp_path / 'sink'}" + ("/db.duckdb" if kind == "duckdb" else "")


def rows(n: int, bad: tuple[int, ...] = (), start: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "name": [f"n{i}" for i in range(start, start + n)],
            ROW_ERROR: [("bad" if i in bad else None) for i in range(n)],
        }
    )


def stage(root: Path, job_id: str, uri: str, outputs: dict[str, pa.Table]) -> StagedJob:
    """Stage like the plugin host does: prepare_output, then valid + quarantine batches."""
    lin = Lineage("cd" * 32, job_id, TS, "1.0")
    stager = JobStager(root, job_id, uri)
    sink = stager.sink
    for name, table in outputs.items():
        valid, bad = prepare_output(name, table, lin)
        stager.write(name, sink.table_for(name), valid)
        if bad is not None:
            stager.write(quarantine_name(name), quarantine_name(sink.table_for(name)), bad)
    return stager.close()


def job_rows(uri: str, output: str) -> Counter[str]:
    """How many rows of ``output`` each job id holds in the sink."""
    sink = parse_sink_uri(uri)
    if sink.kind == "duckdb":
        if not sink.path.exists():
            return Counter()
        con = duckdb.connect(str(sink.path), read_only=True)
        try:
            tables = {
                r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()
            }
            if output not in tables:
                return Counter()
            got = con.execute(f'select "_cf_job_id" from "{output}"').fetchall()
        finally:
            con.close()
        return Counter(r[0] for r in got)
    found: Counter[str] = Counter()
    for f in sorted(sink.path.glob(f"{output}_*.{sink.extension}")):
        if f.name[len(output) + 1 :].count("_"):
            continue  # a longer output name sharing the prefix (orders_quarantine_...)
        read = pq.read_table if sink.kind == "parquet" else pacsv.read_csv
        found.update(str(v) for v in read(f).column("_cf_job_id").to_pylist())
    return found


def visible(path: Path) -> list[str]:
    return (
        sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        if path.exists()
        else []
    )


def hidden(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith(".")) if path.exists() else []


def spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env)


def wait_for(marker: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode} before {marker.name}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {marker}")
        time.sleep(0.01)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# -- URIs and modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "parquet://out",
        "parquet://out/",
        "PARQUET://./out",
        "Parquet://a/../out//",
        "parquet://OUT/../out",
    ],
)
def test_uri_has_one_canonical_spelling(tmp_path, text):
    uri = parse_sink_uri(text, base=tmp_path)
    assert str(uri) == f"parquet://{tmp_path}/out"
    assert uri == SinkURI("parquet", tmp_path / "out", None)
    assert str(uri).startswith("parquet:///")


def test_uri_duckdb_with_table_and_roundtrip(tmp_path):
    uri = parse_sink_uri("DuckDB://data/x.duckdb?table=Orders_2", base=tmp_path)
    assert (uri.kind, uri.table) == ("duckdb", "Orders_2")
    assert str(uri) == f"duckdb://{tmp_path}/data/x.duckdb?table=Orders_2"
    for u in (uri, parse_sink_uri(f"csv://{tmp_path}/c"), parse_sink_uri("parquet:///abs/p")):
        assert parse_sink_uri(str(u)) == u


def test_uri_relative_to_cwd_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_sink_uri("csv://out").path == tmp_path / "out"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse_sink_uri("parquet://~/o").path == tmp_path / "home" / "o"
    assert parse_sink_uri(parse_sink_uri("csv://x")) == parse_sink_uri("csv://x")


def test_uri_table_for_output():
    plain = parse_sink_uri("duckdb:///d.duckdb")
    named = parse_sink_uri("duckdb:///d.duckdb?table=sales")
    assert plain.table_for("orders") == "orders"
    assert named.table_for("orders") == "sales"
    assert named.table_for("orders", "explicit") == "explicit"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("output", "no '://'"),
        ("parquet:/x", "no '://'"),
        ("parquet://", "empty path"),
        ("csv://?x=1", "empty path"),
        ("s3://bucket/x", "unknown scheme 's3'"),
        ("file://x.parquet", "unknown scheme 'file'"),
        ("parquet://out?table=t", "only duckdb sinks take ?table="),
        ("duckdb://x.duckdb?mode=append", "unknown query key 'mode'"),
        ("duckdb://x.duckdb?table=1bad", "bad table name '1bad'"),
        ("duckdb://x.duckdb?table=a;drop", "bad table name"),
        ("duckdb://x.duckdb?table=", "bad table name ''"),
        ("duckdb://x.duckdb?table=a&table=b", "more than once"),
        ("duckdb://dir/", "not a directory"),
    ],
)
def test_bad_uris_give_one_line_naming_uri_and_problem(text, problem):
    with pytest.raises(SinkURIError) as info:
        parse_sink_uri(text)
    msg = str(info.value)
    assert repr(text) in msg and problem in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_sink_mode_parse():
    assert SinkMode.parse("append") is SinkMode.APPEND
    assert SinkMode.parse(" REPLACE ") is SinkMode.REPLACE
    assert SinkMode.parse(SinkMode.ERROR) is SinkMode.ERROR
    assert SinkMode.APPEND == "append" and str(SinkMode.REPLACE) == "replace"
    with pytest.raises(SinkError) as info:
        SinkMode.parse("x")
    assert str(info.value) == "invalid sink mode 'x'; expected append, replace or error"


# -- F0: names --------------------------------------------------------------------------------


def test_output_filename_format():
    name = output_filename("orders", "42", "parquet")
    assert name.startswith("orders_") and name.endswith(".parquet")
    assert len(name) == len("orders_") + 16 + len(".parquet")
    assert output_filename("orders", "42", ".csv") == name.replace(".parquet", ".csv")
    with pytest.raises(SinkError, match="invalid output name"):
        output_filename("../x", "1", "csv")


def test_output_filenames_unique_across_100k_job_ids():
    sequential = {output_filename("o", str(i), "parquet") for i in range(100_000)}
    uuids = {output_filename("o", f"run-{uuid.uuid4()}", "parquet") for _ in range(100_000)}
    assert len(sequential) == 100_000 and len(uuids) == 100_000
    assert not sequential & uuids


def test_job_dirname_is_safe_and_distinct():
    names = {job_dirname(j) for j in ("a/b", "a_b", "../../etc", "x" * 300, "42")}
    assert len(names) == 5
    assert all("/" not in n and not n.startswith(".") and len(n) < 80 for n in names)


# -- staging ----------------------------------------------------------------------------------


def test_staging_streams_batches_and_touches_no_sink(tmp_path):
    uri = sink_for(tmp_path, "parquet")
    lin = Lineage("h", "j1", TS, "1")
    stager = JobStager(tmp_path / "stg", "j1", uri)
    for i in range(5):
        valid, _ = prepare_output("orders", rows(3, start=i * 3), lin)
        stager.write("orders", "orders", valid)
    staged = stager.close()
    assert not (tmp_path / "sink").exists()
    assert staged.rows == {"orders": 15}
    assert Path(staged.staging_dir).parent == tmp_path / "stg"
    table = pq.read_table(staged.outputs[0].path)
    assert table.column("id").to_pylist() == list(range(15))
    assert staged.outputs[0].schema[0] == ["id", "int64"]
    assert staged.outputs[0].schema[-1][0] == "_cf_parser_version"


def test_staged_job_json_roundtrip(tmp_path):
    staged = stage(tmp_path / "stg", "j1", sink_for(tmp_path, "csv"), {"orders": rows(4, bad=(1,))})
    wire = json.loads(json.dumps(staged.to_dict()))
    assert StagedJob.from_dict(wire) == staged
    assert staged.rows == {"orders": 3, "orders_quarantine": 1}
    assert staged.sink == str(parse_sink_uri(sink_for(tmp_path, "csv")))
    with pytest.raises(SinkError, match="malformed staged job"):
        StagedJob.from_dict({"job_id": "x"})


def test_small_batches_are_coalesced_into_few_row_groups(tmp_path):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "parquet"))
    for i in range(500):
        stager.write("o", "o", pa.table({"x": [i] * 10}))
    staged = stager.close()
    meta = pq.ParquetFile(staged.outputs[0].path).metadata
    assert meta.num_rows == 5000 and meta.num_row_groups == 1
    assert FLUSH_ROWS > 5000


@pytest.mark.parametrize(
    ("first", "later"),
    [
        (pa.array([1], pa.int64()), pa.array([2], pa.int32())),
        (pa.array([1], pa.int64()), pa.array([2], pa.uint16())),
        (pa.array(["a"]), pa.nulls(1)),
        (pa.array(["a"]), pa.array(["b"], pa.large_string())),
        (pa.array(["a"], pa.large_string()), pa.array(["b"])),
        (pa.array([1.5]), pa.array([2], pa.int32())),
        (pa.array(["a"]), pa.array(["b"]).dictionary_encode()),
    ],
)
def test_later_batches_are_cast_to_the_first_schema(tmp_path, first, later):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "parquet"))
    stager.write("o", "o", pa.table({"k": [1], "v": first}))
    stager.write("o", "o", pa.table({"v": later, "k": [2]}))  # column order may differ too
    staged = stager.close()
    table = pq.read_table(staged.outputs[0].path)
    assert table.schema.field("v").type == first.type and table.num_rows == 2
    assert table.column_names == ["k", "v"]


@pytest.mark.parametrize(
    ("first", "later", "needle"),
    [
        (
            pa.array([1], pa.int32()),
            pa.array([2], pa.int64()),
            "first batch int32, this batch int64",
        ),
        (pa.array([1]), pa.array(["x"]), "first batch int64, this batch string"),
        (pa.nulls(1), pa.array(["x"]), "all-null"),
        (pa.array([1], pa.int64()), pa.array([2**63], pa.uint64()), "'v'"),
    ],
)
def test_incompatible_batches_name_output_and_column(tmp_path, first, later, needle):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "parquet"))
    stager.write("orders", "orders", pa.table({"v": first}))
    with pytest.raises(SinkError, match="output 'orders'") as info:
        stager.write("orders", "orders", pa.table({"v": later}))
    assert needle in str(info.value) and "'v'" in str(info.value)


def test_batches_with_other_columns_are_refused(tmp_path):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "parquet"))
    stager.write("orders", "orders", pa.table({"a": [1], "b": [2]}))
    with pytest.raises(SinkError, match=r"output 'orders'.*missing 'b'; extra 'c'"):
        stager.write("orders", "orders", pa.table({"a": [1], "c": [2]}))


def test_stager_rejects_bad_names_and_table_clashes(tmp_path):
    stager = JobStager(tmp_path / "a", "j", "duckdb:///tmp/x.duckdb")
    with pytest.raises(OutputNameError):
        stager.write("../evil", "t", pa.table({"a": [1]}))
    with pytest.raises(SinkError, match="invalid table name"):
        stager.write("o", "bad name", pa.table({"a": [1]}))
    stager.write("o", "t", pa.table({"a": [1]}))
    with pytest.raises(SinkError, match="both target table 't'"):
        stager.write("p", "t", pa.table({"a": [1]}))
    with pytest.raises(SinkError, match="different tables"):
        stager.write("o", "u", pa.table({"a": [1]}))


def test_stager_close_is_final_and_idempotent(tmp_path):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "csv"))
    stager.write("o", "o", pa.table({"a": [1]}))
    first = stager.close()
    assert stager.close() is first
    with pytest.raises(SinkError, match="staging is closed"):
        stager.write("o", "o", pa.table({"a": [1]}))


def test_discard_and_context_manager(tmp_path):
    with pytest.raises(RuntimeError), JobStager(tmp_path, "j", sink_for(tmp_path, "parquet")) as st:
        st.write("o", "o", pa.table({"a": [1]}))
        raise RuntimeError("plugin failed")
    assert not st.staging_dir.exists()
    staged = stage(tmp_path, "k", sink_for(tmp_path, "parquet"), {"o": rows(1)})
    discard(staged)
    assert not Path(staged.staging_dir).exists()
    discard(staged.staging_dir)  # missing is fine


def test_stale_staging_of_a_retried_job_is_wiped(tmp_path):
    stale = tmp_path / job_dirname("j")
    stale.mkdir()
    (stale / "orders.parquet").write_bytes(b"half a file")
    staged = stage(tmp_path, "j", sink_for(tmp_path, "parquet"), {"fresh": rows(1)})
    assert sorted(p.name for p in Path(staged.staging_dir).iterdir()) == ["fresh.parquet"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_a_full_disk_when_the_buffered_file_is_written_out_is_a_sink_error(tmp_path, kind):
    """Staged files are written through a buffer, so a small one reaches the disk only at
    close: a full disk then is still a SinkError naming the output (transient), and the
    job's staging can be discarded."""
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, kind))
    (Path(stager.staging_dir) / f"orders.{kind}").symlink_to("/dev/full")
    stager.write("orders", "orders", rows(3))
    with pytest.raises(SinkError, match="output 'orders': cannot write orders"):
        stager.close()
    stager.discard()
    assert not Path(stager.staging_dir).exists()


def test_pandas_batch_metadata_is_not_stored(tmp_path):
    stager = JobStager(tmp_path, "j", sink_for(tmp_path, "parquet"))
    df = pd.DataFrame({"a": [1, 2]}, index=[5, 6])
    stager.write("o", "o", pa.Table.from_pandas(df))
    stager.write("o", "o", pa.Table.from_pandas(df))
    staged = stager.close()
    assert b"pandas" not in (pq.read_schema(staged.outputs[0].path).metadata or {})


def test_csv_staging_writes_header_and_lineage(tmp_path):
    staged = stage(tmp_path / "stg", "run-1", sink_for(tmp_path, "csv"), {"orders": rows(2)})
    text = Path(staged.outputs[0].path).read_text()
    assert (
        text.splitlines()[0]
        == '"id","name","_cf_source_hash","_cf_job_id","_cf_processed_at","_cf_parser_version"'
    )
    assert "run-1" in text and "2024-05-01 12:00:00" in text


# -- promotion: files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_file_promotion_places_all_outputs_and_cleans_staging(tmp_path, kind):
    uri = sink_for(tmp_path, kind)
    staged = stage(tmp_path / "stg", "run-1", uri, {"orders": rows(3, bad=(0,)), "items": rows(2)})
    artifacts = promote(staged, mode=SinkMode.APPEND)
    sinkdir = tmp_path / "sink"
    expected = sorted(
        output_filename(o, "run-1", kind) for o in ("orders", "orders_quarantine", "items")
    )
    assert visible(sinkdir) == expected and hidden(sinkdir) == []
    assert not Path(staged.staging_dir).exists()
    by_output = {a.output: a for a in artifacts}
    assert by_output["orders"] == Artifact(
        "orders", "orders", 2, f"file://{sinkdir / output_filename('orders', 'run-1', kind)}"
    )
    assert by_output["orders_quarantine"].rows == 1
    assert json.loads(json.dumps(by_output["items"].to_dict()))["rows"] == 2
    assert job_rows(uri, "orders") == {"run-1": 2}


def test_promotion_never_overwrites(tmp_path):
    """F0: an existing final name is an error; the existing file and the staging survive."""
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2), "items": rows(1)})
    sinkdir = tmp_path / "sink"
    sinkdir.mkdir()
    occupied = sinkdir / output_filename("items", "j1", "parquet")
    occupied.write_bytes(b"someone else's")
    with pytest.raises(SinkError, match="already exists; outputs are never overwritten"):
        promote(staged, mode="append")
    assert occupied.read_bytes() == b"someone else's"
    assert visible(sinkdir) == [occupied.name] and hidden(sinkdir) == []
    assert all(Path(o.path).exists() for o in staged.outputs)
    assert not (Path(staged.staging_dir) / JOURNAL).exists()


def test_place_refuses_a_final_that_appears_after_the_check(tmp_path):
    """The final step uses link(), which cannot replace a file even in a race."""
    tmp, dst = tmp_path / ".a.cf-tmp", tmp_path / "a"
    tmp.write_text("new")
    dst.write_text("old")
    with pytest.raises(SinkError, match="never overwritten"):
        journal_mod.place(tmp, dst)
    assert dst.read_text() == "old"


def _trace_fs(monkeypatch) -> list[tuple[str, str]]:
    """Record fsyncs (by the path their fd names) and renames/links/unlinks, in order."""
    trace: list[tuple[str, str]] = []
    real = {name: getattr(os, name) for name in ("fsync", "replace", "link", "unlink")}

    def fsync(fd):
        trace.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real["fsync"](fd)

    def op(name):
        def call(*args, **kw):
            trace.append((name, str(args[-1] if name != "unlink" else args[0])))
            return real[name](*args, **kw)
        return call

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("replace", "link", "unlink"):
        monkeypatch.setattr(os, name, op(name))
    return trace


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_promotion_makes_the_journal_then_the_finals_durable_and_nothing_more(
        tmp_path, monkeypatch):
    """Append mode: three fsyncs. The journal (file, then its directory) before any staged
    file moves; the sink directory after the last final is linked; the "done" journal is not
    synced (if a power cut loses it, recover() rolls forward over finals already there)."""
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(3, bad=(0,)), "items": rows(2)})
    sinkdir = str(tmp_path / "sink")
    trace = _trace_fs(monkeypatch)
    promote(staged, mode=SinkMode.APPEND)
    syncs = [(i, path) for i, (kind, path) in enumerate(trace) if kind == "fsync"]
    assert [p for _, p in syncs] == [
        str(Path(staged.staging_dir) / JOURNAL) + ".tmp", staged.staging_dir, sinkdir]
    moves = [i for i, (kind, dst) in enumerate(trace) if kind == "replace"
             and dst.endswith(".cf-tmp")]
    links = [i for i, (kind, _) in enumerate(trace) if kind == "link"]
    assert len(moves) == len(links) == 3
    assert syncs[1][0] < moves[0] and links[-1] < syncs[2][0]


def test_a_lost_done_journal_is_rolled_forward_as_a_no_op(tmp_path):
    """What a power cut may leave after an append promotion whose "done" never reached the
    disk: the "started" journal again, every final in place. recover() changes nothing."""
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(3, bad=(0,)), "items": rows(2)})
    journal = Path(staged.staging_dir) / JOURNAL
    promote(staged, mode=SinkMode.APPEND)
    sinkdir = tmp_path / "sink"
    before = {p.name: p.read_bytes() for p in sinkdir.iterdir()}
    # the journal as it was written, durably, before the moves
    state = {"job_id": "j1", "sink": str(parse_sink_uri(uri)), "state": "started", "delete": [],
             "moves": [{"src": str(Path(staged.staging_dir) / Path(o.path).name),
                        "tmp": str(sinkdir / f".{output_filename(o.output, 'j1', 'parquet')}"
                                   ".cf-tmp"),
                        "dst": str(sinkdir / output_filename(o.output, "j1", "parquet"))}
                       for o in staged.outputs]}
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps(state))
    assert recover(tmp_path / "stg") == ["j1"]
    assert {p.name: p.read_bytes() for p in sinkdir.iterdir()} == before
    assert not journal.parent.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_repromotion_is_idempotent(tmp_path, kind):
    uri = sink_for(tmp_path, kind)
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(3, bad=(2,))})
    first = promote(staged, mode="append")
    assert promote(staged, mode="append") == first
    assert promote(StagedJob.from_dict(staged.to_dict()), mode="error") == first
    assert job_rows(uri, "orders") == {"j1": 2}
    assert job_rows(uri, "orders_quarantine") == {"j1": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_crash_after_commit_before_cleanup_repromotes_idempotently(tmp_path, kind, monkeypatch):
    uri = sink_for(tmp_path, kind)
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2)})

    def crash(path):
        raise KeyboardInterrupt("killed before staging cleanup")

    monkeypatch.setattr(promote_mod, "remove_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        promote(staged, mode="append")
    monkeypatch.undo()
    assert Path(staged.staging_dir).exists()
    artifacts = promote(staged, mode="append")
    assert [a.rows for a in artifacts] == [2]
    assert job_rows(uri, "orders") == {"j1": 2}
    assert not Path(staged.staging_dir).exists()


def test_error_before_first_final_rolls_back(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2), "items": rows(1)})

    def broken_link(src, dst):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(promote_mod.os, "link", broken_link)
    with pytest.raises(SinkError, match=r"failed and was rolled back: .*disk on fire"):
        promote(staged, mode="append")
    monkeypatch.undo()
    sinkdir = tmp_path / "sink"
    assert visible(sinkdir) == [] and hidden(sinkdir) == []
    assert all(Path(o.path).exists() for o in staged.outputs)
    assert not (Path(staged.staging_dir) / JOURNAL).exists()
    assert len(promote(staged, mode="append")) == 2  # retry succeeds
    assert len(visible(sinkdir)) == 2


@pytest.mark.parametrize("persistent", [False, True])
def test_error_after_a_final_is_visible_rolls_forward(tmp_path, monkeypatch, persistent):
    """Once one final exists the job can only go forward: now, or by recover()."""
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2), "items": rows(1)})
    real_link, calls = os.link, []

    def flaky_link(src, dst):
        calls.append(dst)
        if len(calls) == 2 or (persistent and len(calls) > 1):
            raise OSError(errno.EIO, "flaky disk")
        return real_link(src, dst)

    monkeypatch.setattr(promote_mod.os, "link", flaky_link)
    if persistent:
        with pytest.raises(SinkError, match=r"stopped after 1 of 2 outputs .*recover"):
            promote(staged, mode="append")
        monkeypatch.undo()
        assert len(visible(tmp_path / "sink")) == 1
        assert recover(tmp_path / "stg") == ["j1"]
    else:
        assert len(promote(staged, mode="append")) == 2
        monkeypatch.undo()
    assert job_rows(uri, "orders") == {"j1": 2} and job_rows(uri, "items") == {"j1": 1}
    assert hidden(tmp_path / "sink") == [] and not Path(staged.staging_dir).exists()


def test_recover_keeps_a_foreign_file_that_took_a_final_name(tmp_path, monkeypatch):
    """F0 holds in recovery too: a file that appeared under our name is never replaced."""
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2)})
    # Simulate dying right after the temps were moved: no placement, no rollback.
    die = lambda *a: (_ for _ in ()).throw(SystemExit)  # noqa: E731
    monkeypatch.setattr(journal_mod, "place", die)
    monkeypatch.setattr(promote_mod, "rollback", die)
    with pytest.raises(SystemExit):
        promote(staged, mode="append")
    monkeypatch.undo()
    final = tmp_path / "sink" / output_filename("orders", "j1", "parquet")
    final.write_bytes(b"foreign")
    assert recover(tmp_path / "stg") == []  # refused and logged, journal kept for a human
    assert final.read_bytes() == b"foreign" and len(hidden(tmp_path / "sink")) == 1
    assert (Path(staged.staging_dir) / JOURNAL).exists()


def test_recover_finishes_an_interrupted_rollback(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2), "items": rows(1)})
    monkeypatch.setattr(
        promote_mod.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EIO, "io"))
    )
    monkeypatch.setattr(
        journal_mod, "undo", lambda j, s: (_ for _ in ()).throw(SystemExit("killed"))
    )
    with pytest.raises(SystemExit):
        promote(staged, mode="append")
    monkeypatch.undo()
    sinkdir = tmp_path / "sink"
    assert visible(sinkdir) == [] and len(hidden(sinkdir)) == 2
    assert json.loads((Path(staged.staging_dir) / JOURNAL).read_text())["state"] == "rollback"
    assert recover(tmp_path / "stg") == ["j1"]
    assert visible(sinkdir) == [] and hidden(sinkdir) == []
    assert all(Path(o.path).exists() for o in staged.outputs)  # staged data back, none visible
    assert len(promote(staged, mode="append")) == 2


def test_cross_device_promotion_copies_via_complete_temps(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "parquet")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(5), "items": rows(1)})
    real_replace = os.replace

    def exdev_replace(src, dst):
        if str(dst).endswith(".cf-tmp") and "stg" in str(src):
            raise OSError(errno.EXDEV, "cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(promote_mod.os, "replace", exdev_replace)
    promote(staged, mode="append")
    monkeypatch.undo()
    assert hidden(tmp_path / "sink") == []
    assert job_rows(uri, "orders") == {"j1": 5}


def test_filesystem_without_hard_links_falls_back_to_rename(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "csv")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2)})
    monkeypatch.setattr(
        promote_mod.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EPERM, "no"))
    )
    promote(staged, mode="append")
    monkeypatch.undo()
    assert job_rows(uri, "orders") == {"j1": 2} and hidden(tmp_path / "sink") == []


@pytest.mark.parametrize("kind", KINDS)
def test_job_without_outputs_promotes_to_nothing(tmp_path, kind):
    staged = JobStager(tmp_path / "stg", "j", sink_for(tmp_path, kind)).close()
    assert promote(staged, mode="replace") == []
    assert not Path(staged.staging_dir).exists()


# -- F3: every mode, every sink kind ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(SinkMode))
def test_mode_decides_what_happens_to_other_runs_data(tmp_path, kind, mode):
    uri = sink_for(tmp_path, kind)
    old = stage(tmp_path / "stg", "a-1", uri, {"orders": rows(3, bad=(0,))})
    promote(old, mode=SinkMode.APPEND, run_job_ids=["a-1"])
    run = ["b-1", "b-2"]
    new = [stage(tmp_path / "stg", j, uri, {"orders": rows(2, start=10)}) for j in run]

    if mode is SinkMode.ERROR:
        with pytest.raises(SinkModeError) as info:
            promote(new[0], mode=mode, run_job_ids=run)
        msg = str(info.value)
        assert msg.startswith("output 'orders")
        assert "already has data in" in msg and "mode=error refuses to add to it" in msg
        assert isinstance(info.value, FileExistsError)
        assert job_rows(uri, "orders") == {"a-1": 2}
        assert all(Path(o.path).exists() for o in new[0].outputs)  # still promotable
        return

    for staged in new:
        promote(staged, mode=mode, run_job_ids=run)
    if mode is SinkMode.APPEND:
        assert job_rows(uri, "orders") == {"a-1": 2, "b-1": 2, "b-2": 2}
        assert job_rows(uri, "orders_quarantine") == {"a-1": 1}
    else:  # replace leaves exactly this run's outputs, quarantine included
        assert job_rows(uri, "orders") == {"b-1": 2, "b-2": 2}
        assert job_rows(uri, "orders_quarantine") == {}


@pytest.mark.parametrize("kind", KINDS)
def test_error_mode_accepts_its_own_runs_jobs(tmp_path, kind):
    uri = sink_for(tmp_path, kind)
    run = ["r-1", "r-2", "r-3"]
    for j in run:
        promote(stage(tmp_path / "stg", j, uri, {"orders": rows(1)}), mode="error", run_job_ids=run)
    assert job_rows(uri, "orders") == {"r-1": 1, "r-2": 1, "r-3": 1}
    lone = stage(tmp_path / "stg", "s-1", uri, {"orders": rows(1)})
    with pytest.raises(SinkModeError):
        promote(lone, mode="error")  # run_job_ids=None: only this job counts as "this run"


@pytest.mark.parametrize("kind", KINDS)
def test_error_mode_counts_other_runs_quarantine(tmp_path, kind):
    uri = sink_for(tmp_path, kind)
    lin = Lineage("h", "a", TS, "1")
    stager = JobStager(tmp_path / "stg", "a", uri)  # an earlier run that left only quarantine
    stager.write(
        "orders_quarantine", "orders_quarantine", prepare_output("orders", rows(1), lin)[0]
    )
    promote(stager.close(), mode="append")
    with pytest.raises(SinkModeError, match="output 'orders_quarantine'"):
        promote(stage(tmp_path / "stg", "b", uri, {"orders": rows(1)}), mode="error")


def test_replace_keeps_other_outputs_in_the_same_directory(tmp_path):
    uri = sink_for(tmp_path, "parquet")
    promote(
        stage(tmp_path / "stg", "a", uri, {"orders": rows(1), "customers": rows(1)}), mode="append"
    )
    promote(stage(tmp_path / "stg", "b", uri, {"orders": rows(1)}), mode="replace")
    assert job_rows(uri, "orders") == {"b": 1}
    assert job_rows(uri, "customers") == {"a": 1}


# -- DuckDB -----------------------------------------------------------------------------------


def test_duckdb_tables_types_and_readable_after_promotion(tmp_path):
    uri = sink_for(tmp_path, "duckdb") + "?table=sales"
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(3, bad=(1,))})
    assert {o.table for o in staged.outputs} == {"sales", "sales_quarantine"}
    artifacts = promote(staged, mode="append")
    db = tmp_path / "sink" / "db.duckdb"
    assert {a.uri for a in artifacts} == {
        f"duckdb://{db}?table=sales",
        f"duckdb://{db}?table=sales_quarantine",
    }
    con = duckdb.connect(str(db), read_only=True)  # the committer closed its connection
    try:
        types = dict(
            con.execute(
                "select column_name, data_type from duckdb_columns() where table_name='sales'"
            ).fetchall()
        )
        quarantine = con.execute(
            'select id, "_cf_row_error", "_cf_source_row" from sales_quarantine'
        ).fetchall()
    finally:
        con.close()
    assert (
        types["_cf_job_id"] == "VARCHAR" and types["_cf_processed_at"] == "TIMESTAMP WITH TIME ZONE"
    )
    assert list(types)[-4:] == list(lineage_mod.LINEAGE_COLUMNS)
    assert quarantine == [(1, "bad", 2)]


def test_duckdb_job_is_atomic_across_tables(tmp_path):
    """F2: when one table fails to load, no table of the job changes."""
    uri = sink_for(tmp_path, "duckdb")
    db = tmp_path / "sink" / "db.duckdb"
    db.parent.mkdir()
    with duckdb.connect(str(db)) as con:
        con.execute("create table items (id date)")
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(2), "items": rows(1)})
    with pytest.raises(SinkError, match="cannot load output 'items' into table 'items'"):
        promote(staged, mode="append")
    assert job_rows(uri, "orders") == {}
    assert all(Path(o.path).exists() for o in staged.outputs)


def test_duckdb_replace_accepts_a_changed_schema(tmp_path):
    uri = sink_for(tmp_path, "duckdb")
    promote(stage(tmp_path / "stg", "a", uri, {"orders": rows(2)}), mode="append")
    wider = rows(1).append_column("extra", pa.array([1.5]))
    with pytest.raises(SinkError, match="cannot load output 'orders'"):
        promote(stage(tmp_path / "stg", "b", uri, {"orders": wider}), mode="append")
    promote(stage(tmp_path / "stg", "c", uri, {"orders": wider}), mode="replace")
    assert job_rows(uri, "orders") == {"c": 1}


def test_duckdb_kill_mid_transaction_leaves_nothing(tmp_path):
    marker = tmp_path / "paused"
    uri = sink_for(tmp_path, "duckdb")
    code = """
        import sys, time, pathlib, pyarrow as pa
        from datetime import datetime, timezone
        import casparian_nb.sinks.duckdb_sink as D
        from casparian_nb.lineage import Lineage, prepare_output
        from casparian_nb.sinks import JobStager, promote
        root, uri, marker = sys.argv[1:4]
        lin = Lineage("ab" * 32, "j1", datetime(2024, 1, 1, tzinfo=timezone.utc), "1")
        st = JobStager(root, "j1", uri)
        for out in ("orders", "items"):
            st.write(out, out, prepare_output(out, pa.table({"x": [1, 2]}), lin)[0])
        staged = st.close()
        real = D._load
        def paused(con, staged, sink):
            real(con, staged, sink)          # both tables loaded, transaction still open
            pathlib.Path(marker).touch(); time.sleep(600)
        D._load = paused
        promote(staged, mode="append")
    """
    proc = spawn(code, str(tmp_path / "stg"), uri, str(marker))
    wait_for(marker, proc)
    kill9(proc)
    assert job_rows(uri, "orders") == {} and job_rows(uri, "items") == {}
    staged = StagedJob("j1", str(parse_sink_uri(uri)), str(tmp_path / "stg" / job_dirname("j1")))
    assert sorted(p.name for p in Path(staged.staging_dir).iterdir()) == [
        "items.parquet",
        "orders.parquet",
    ]


HOLD_FLOCK = """
    import sys, time, pathlib
    from casparian_nb.sinks._duckdb_open import exclusive as _exclusive
    db, marker, hold = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3])
    with _exclusive(db, time.monotonic() + 5):
        marker.touch(); time.sleep(hold)
"""
HOLD_DUCKDB = """
    import sys, time, pathlib, duckdb
    con = duckdb.connect(sys.argv[1])
    pathlib.Path(sys.argv[2]).touch(); time.sleep(float(sys.argv[3]))
"""


@pytest.mark.parametrize(
    "holder", [HOLD_FLOCK, HOLD_DUCKDB], ids=["casparian-committer", "duckdb-client"]
)
def test_duckdb_held_by_another_process_raises_locked(tmp_path, holder):
    uri = sink_for(tmp_path, "duckdb")
    db = tmp_path / "sink" / "db.duckdb"
    db.parent.mkdir()
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(1)})
    proc = spawn(holder, str(db), str(tmp_path / "held"), "600")
    try:
        wait_for(tmp_path / "held", proc)
        started = time.monotonic()
        with pytest.raises(SinkLockedError) as info:
            promote(staged, mode="append", lock_timeout=0.3)
        assert time.monotonic() - started < 5
        assert str(info.value) == (
            f"duckdb file {db} is in use by another process (pid {proc.pid}); close it and retry"
        )
    finally:
        kill9(proc)
    promote(staged, mode="append")  # the lock died with its holder
    assert job_rows(uri, "orders") == {"j1": 1}


def test_duckdb_promotion_waits_for_a_short_lived_holder(tmp_path):
    uri = sink_for(tmp_path, "duckdb")
    db = tmp_path / "sink" / "db.duckdb"
    db.parent.mkdir()
    staged = stage(tmp_path / "stg", "j1", uri, {"orders": rows(1)})
    proc = spawn(HOLD_FLOCK, str(db), str(tmp_path / "held"), "0.5")
    wait_for(tmp_path / "held", proc)
    promote(staged, mode="append", lock_timeout=30)
    proc.wait(timeout=30)
    assert job_rows(uri, "orders") == {"j1": 1}


# -- F2: crashes of real processes -------------------------------------------------------------


def test_kill_during_staging_leaves_sink_untouched(tmp_path):
    marker = tmp_path / "writing"
    uri = sink_for(tmp_path, "parquet")
    code = """
        import sys, pathlib, pyarrow as pa
        from datetime import datetime, timezone
        from casparian_nb.lineage import Lineage, prepare_output
        from casparian_nb.sinks import JobStager
        root, uri, marker = sys.argv[1:4]
        lin = Lineage("ab" * 32, "big", datetime(2024, 1, 1, tzinfo=timezone.utc), "1")
        valid, _ = prepare_output("orders", pa.table({"a": range(200_000), "s": ["x" * 20] * 200_000}), lin)
        st = JobStager(root, "big", uri)
        i = 0
        while True:
            st.write("orders", "orders", valid); st.write("items", "items", valid)
            i += 1
            if i == 3:
                pathlib.Path(marker).touch()
    """
    proc = spawn(code, str(tmp_path / "stg"), uri, str(marker))
    wait_for(marker, proc)
    kill9(proc)
    assert not (tmp_path / "sink").exists()
    assert (tmp_path / "stg" / job_dirname("big")).exists()
    assert recover(tmp_path / "stg") == []  # no journal: nothing to roll forward
    assert not (tmp_path / "sink").exists()
    staged = stage(tmp_path / "stg", "big", uri, {"orders": rows(1)})  # the retry starts clean
    promote(staged, mode="append")
    assert job_rows(uri, "orders") == {"big": 1}


PROMOTE_WITH_PAUSE = """
    import os, sys, time, pathlib, pyarrow as pa
    from datetime import datetime, timezone
    from casparian_nb.lineage import Lineage, prepare_output
    from casparian_nb.sinks import JobStager, promote
    root, uri, marker, fn, nth, mode = sys.argv[1:7]
    lin = Lineage("ab" * 32, "j1", datetime(2024, 1, 1, tzinfo=timezone.utc), "1")
    st = JobStager(root, "j1", uri)
    for out, n in (("orders", 50_000), ("items", 20_000), ("extra", 10)):
        valid, _ = prepare_output(out, pa.table({"a": range(n)}), lin)
        st.write(out, out, valid)
    staged = st.close()
    real = getattr(os, fn)
    calls = 0
    def paused(*args, **kw):
        global calls
        if fn != "replace" or str(args[1]).endswith(".cf-tmp"):  # not the journal's replace
            calls += 1
            if calls == int(nth):
                pathlib.Path(marker).touch(); time.sleep(600)
        return real(*args, **kw)
    setattr(os, fn, paused)
    promote(staged, mode=mode)
"""


@pytest.mark.parametrize(
    ("fn", "nth", "mode"),
    [
        ("replace", "1", "append"),  # journal written, nothing moved yet
        ("replace", "3", "append"),  # two outputs moved to temps
        ("link", "2", "append"),  # one final visible, two temps
        ("unlink", "1", "append"),  # a temp and its final share an inode
        ("unlink", "4", "replace"),  # all finals in place, other run's file not yet deleted
    ],
)
def test_kill_during_promotion_is_completed_by_recover(tmp_path, fn, nth, mode):
    uri = sink_for(tmp_path, "parquet")
    sinkdir = tmp_path / "sink"
    promote(stage(tmp_path / "stg", "old", uri, {"orders": rows(4)}), mode="append")
    old_file = output_filename("orders", "old", "parquet")
    marker = tmp_path / "paused"
    proc = spawn(PROMOTE_WITH_PAUSE, str(tmp_path / "stg"), uri, str(marker), fn, nth, mode)
    wait_for(marker, proc)
    kill9(proc)

    finals = {
        output_filename(o, "j1", "parquet"): n
        for o, n in (("orders", 50_000), ("items", 20_000), ("extra", 10))
    }
    for name in visible(sinkdir):  # whatever is visible is complete
        assert name in finals or name == old_file
        if name in finals:
            assert pq.ParquetFile(sinkdir / name).metadata.num_rows == finals[name]
    assert all(n.endswith(".cf-tmp") for n in hidden(sinkdir))

    assert recover(tmp_path / "stg") == ["j1"]
    expected = set(finals) | ({old_file} if mode == "append" else set())
    assert set(visible(sinkdir)) == expected and hidden(sinkdir) == []
    assert not (tmp_path / "stg" / job_dirname("j1")).exists()
    assert recover(tmp_path / "stg") == []
    assert job_rows(uri, "orders")["j1"] == 50_000

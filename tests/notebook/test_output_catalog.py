"""The output catalog: DuckDB views over real Parquet/CSV/DuckDB files in a tmp home."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from casparian_nb.config import Settings
from casparian_nb.errors import CasparianError
from casparian_nb.notebook.catalog import CatalogQueryError, OutputCatalog, UnknownTableError
from casparian_nb.store import NewJob, StateStore
from casparian_nb.tape.writer import TapeWriter


def _parquet(directory: Path, output: str, job_hex: str, **cols: list[object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{output}_{job_hex}.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def _store(settings: Settings) -> StateStore:
    return StateStore.open(settings.state_db)


def test_view_per_output_and_new_files_appear(settings: Settings) -> None:
    """A new promoted file shows up in the next query without re-creating the catalog."""
    out = settings.output_dir
    _parquet(out, "orders", "0" * 16, id=[1, 2])
    with OutputCatalog(settings) as cat:
        assert cat.sql("select count(*) as n from orders")["n"][0] == 2
        _parquet(out, "orders", "1" * 16, id=[3], extra=["x"])  # new column: union_by_name
        df = cat.sql("select id, extra from orders order by id")
        assert df["id"].tolist() == [1, 2, 3]
        assert df["extra"].isna().tolist() == [True, True, False]


def test_quarantine_is_its_own_view(settings: Settings) -> None:
    """``orders_quarantine_<hex>`` never leaks into ``orders`` (fixed-width glob)."""
    out = settings.output_dir
    _parquet(out, "orders", "a" * 16, id=[1])
    _parquet(out, "orders_quarantine", "a" * 16, id=[9], _cf_row_error=["bad"])
    (out / ".orders_bbbbbbbbbbbbbbbb.parquet.cf-tmp").write_bytes(b"half written")
    with OutputCatalog(settings) as cat:
        assert cat.sql("select id from orders")["id"].tolist() == [1]
        assert cat.sql("select id from orders_quarantine")["id"].tolist() == [9]
        assert {"orders", "orders_quarantine", "jobs", "materializations"} <= set(cat.tables())


def test_csv_outputs_and_extra_sinks(settings: Settings, tmp_path: Path) -> None:
    """CSV sink directories given explicitly become views too."""
    csv_dir = tmp_path / "csv_out"
    csv_dir.mkdir()
    pacsv.write_csv(pa.table({"k": [1, 2, 3]}), csv_dir / f"events_{'c' * 16}.csv")
    with OutputCatalog(settings, sinks=[f"csv://{csv_dir}"]) as cat:
        assert cat.sql("select sum(k) as s from events")["s"][0] == 6


def test_sink_dirs_and_jobs_come_from_the_state_db(settings: Settings, tmp_path: Path) -> None:
    """A job's ``sink_uri`` adds its directory; ``jobs`` follows the DB without a restart."""
    other = tmp_path / "elsewhere"
    _parquet(other, "lines", "d" * 16, n=[1, 2, 3])
    with _store(settings) as store:
        store.insert_jobs([NewJob("p", "/data/a.txt", sink_uri=f"parquet://{other}")])
        with OutputCatalog(settings) as cat:
            assert cat.sql("select count(*) as n from lines")["n"][0] == 3
            jobs = cat.sql("select id, status, input_file from jobs")
            assert jobs["status"].tolist() == ["QUEUED"]
            store.insert_jobs([NewJob("p", "/data/b.txt")])
            assert len(cat.sql("select * from jobs")) == 2
            assert "output_name" in cat.sql("select * from materializations").columns


def test_fresh_home_has_empty_state_views(settings: Settings) -> None:
    """No sentinel ever ran: ``jobs`` exists, empty, with the real column names."""
    with OutputCatalog(settings) as cat:
        df = cat.sql("select * from jobs")
        assert len(df) == 0
        assert {"id", "status", "plugin_name", "input_file"} <= set(df.columns)


def test_unknown_table_lists_known_tables(settings: Settings) -> None:
    """The error is a CasparianError naming the missing table and every known one."""
    _parquet(settings.output_dir, "orders", "e" * 16, id=[1])
    with OutputCatalog(settings) as cat, pytest.raises(UnknownTableError) as info:
        cat.sql("select * from ordrs")
    assert isinstance(info.value, CasparianError)
    assert "ordrs" in str(info.value)
    assert "orders" in info.value.known and "jobs" in info.value.known


def test_other_sql_errors_are_catalog_errors(settings: Settings) -> None:
    with OutputCatalog(settings) as cat, pytest.raises(CatalogQueryError, match="Parser"):
        cat.sql("selec 1")


def test_tape_events_view(settings: Settings) -> None:
    """Tapes become ``tape_events``; a cut-off last line is skipped, not an error."""
    tape = settings.tapes_dir / "session.tape"
    with TapeWriter(tape, producer="notebook", redact=False) as w:
        cmd, corr = w.command("Submit", {"plugin": "p.py"})
        w.domain("JobQueued", {"job_id": 1})
        w.succeeded(cmd, corr, {"job_ids": [1]})
    with tape.open("a") as fh:
        fh.write('{"schema_version":1,"event_id":"x","seq":')  # a crash mid-write
    with OutputCatalog(settings, tapes=[tape]) as cat:
        df = cat.sql("select seq, event_type, event_name, payload->>'job_id' as job "
                     "from tape_events order by seq")
    assert df["event_type"].tolist() == ["tape_started", "ui_command", "domain_event",
                                         "system_response", "tape_stopped"]
    assert df["job"].tolist()[2] == "1"


def _duckdb_sink(settings: Settings, path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("create table sales as select range as id from range(5)")
    con.close()
    with _store(settings) as store:
        store.insert_jobs([NewJob("p", "/data/a.txt", sink_uri=f"duckdb://{path}")])


def test_duckdb_sink_attached_read_only_and_released(settings: Settings, tmp_path: Path) -> None:
    """DuckDB sink tables are queryable (bare and qualified) and the file is released after
    each query, so a writer process can open it read-write straight away."""
    db = tmp_path / "warehouse.duckdb"
    _duckdb_sink(settings, db)
    with OutputCatalog(settings) as cat:
        assert cat.sql("select count(*) as n from sales")["n"][0] == 5
        assert cat.sql("select max(id) as m from warehouse.sales")["m"][0] == 4
        assert "warehouse.sales" in cat.tables()
        writer = subprocess.run(
            [sys.executable, "-c", "import duckdb,sys; c=duckdb.connect(sys.argv[1]); "
             "c.execute('insert into sales values (99)'); c.close()", str(db)],
            capture_output=True, text=True, timeout=60)
        assert writer.returncode == 0, writer.stderr
        assert cat.sql("select count(*) as n from sales")["n"][0] == 6


def test_locked_duckdb_sink_is_skipped_not_waited_for(settings: Settings, tmp_path: Path) -> None:
    """While a committer holds ``<file>.lock`` the query returns at once with a note."""
    db = tmp_path / "warehouse.duckdb"
    _duckdb_sink(settings, db)
    with OutputCatalog(settings) as cat:
        assert cat.sql("select count(*) as n from sales")["n"][0] == 5
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the committer does
            started = time.monotonic()
            with pytest.raises(UnknownTableError, match="committer is writing"):
                cat.sql("select * from sales")
            assert time.monotonic() - started < 2.0
            assert any("committer" in n for n in cat.notes)
        finally:
            os.close(fd)
        assert cat.sql("select count(*) as n from sales")["n"][0] == 5

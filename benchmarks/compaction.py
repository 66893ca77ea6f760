"""Compaction benchmark: DuckDB over 1,000 small promoted Parquet files vs the compacted ones.

Why compaction exists: every job promotes one file per output, and DuckDB pays per file
(open, footer, metadata, one tiny row group each). This promotes ``--files`` jobs of
``--rows`` rows (id, a string, a float, plus the four lineage columns — what the
``end_to_end`` benchmark's parser produces) into a ``parquet://`` sink with the real
staging + promotion, then times, before and after ``sinks.compact``:

* ``count(*)`` and a group-by aggregate through the notebook's catalog (``OutputCatalog``:
  the glob + reader lock path ``ctl.sql`` takes);
* the same two queries in raw DuckDB over the glob (the anchor: no catalog at all).

Each query is run ``--repeat`` times; the median wall time and the process CPU time per query
(DuckDB's threads included) are printed. A benchmark, not a test: it prints figures, exits 0.

    .venv/bin/python benchmarks/compaction.py [--files 1000] [--rows 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from casparian_nb.lineage import Lineage, prepare_output  # noqa: E402
from casparian_nb.notebook.catalog import OutputCatalog  # noqa: E402
from casparian_nb.sinks import JobStager, compact, promote  # noqa: E402

COUNT = "select count(*) from orders"
AGG = ("select region, count(*) n, sum(amount) total, count(distinct _cf_job_id) jobs "
       "from orders group by region order by region")


def promote_files(tmp: Path, files: int, rows: int) -> str:
    uri = f"parquet://{tmp / 'out'}"
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    regions = ["north", "south", "east", "west"]
    for j in range(files):
        job = f"job-{j:05d}"
        table = pa.table({"id": pa.array(range(rows), pa.int64()),
                          "region": [regions[(i + j) % 4] for i in range(rows)],
                          "amount": [float(i % 97) for i in range(rows)]})
        valid, _ = prepare_output("orders", table, Lineage(f"{j:064x}", job, ts, "1.0"))
        stager = JobStager(tmp / "stg", job, uri)
        stager.write("orders", "orders", valid)
        promote(stager.close())
    return uri


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Median wall seconds, median process CPU seconds, last result."""
    walls, cpus = [], []
    result: object = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def measure(out: Path, home: Path, repeat: int) -> dict[str, tuple[float, float, object]]:
    glob = str(out / ("orders_" + "?" * 16 + ".parquet"))
    con = duckdb.connect()
    con.execute(f"create view orders as select * from read_parquet('{glob}')")
    figures = {}
    with OutputCatalog(home, sinks=[f"parquet://{out}"]) as cat:
        cat.sql(COUNT)  # warm-up: views created, state DB looked at
        figures["catalog count(*)"] = timed(lambda: cat.sql(COUNT).iat[0, 0], repeat)
        figures["catalog aggregate"] = timed(lambda: len(cat.sql(AGG)), repeat)
    figures["raw duckdb count(*)"] = timed(lambda: con.execute(COUNT).fetchone(), repeat)
    figures["raw duckdb aggregate"] = timed(lambda: len(con.execute(AGG).fetchall()), repeat)
    con.close()
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--target-size", default="128MB")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} (1/5/15 min), {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="cf-compaction-bench-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        uri = promote_files(tmp, args.files, args.rows)
        out = tmp / "out"
        n_before = len(list(out.glob("orders_*.parquet")))
        print(f"promoted {n_before} files x {args.rows} rows in "
              f"{time.perf_counter() - t0:.1f} s")
        before = measure(out, tmp / "home", args.repeat)
        w0, c0 = time.perf_counter(), time.process_time()
        res = compact(uri, target_size=args.target_size)
        cw, cc = time.perf_counter() - w0, time.process_time() - c0
        o = res.outputs[0]
        print(f"compacted {o.files_before} files -> {o.files_after} "
              f"({o.bytes_before / 1e6:.1f} MB -> {o.bytes_after / 1e6:.1f} MB, "
              f"{o.rows:,} rows) in {cw:.2f} s wall, {cc:.2f} s CPU")
        after = measure(out, tmp / "home", args.repeat)
        print(f"\n{'query':<22}{'before (wall/CPU)':>22}{'after (wall/CPU)':>22}{'speed-up':>10}")
        for name, (bw, bc, bres) in before.items():
            aw, ac, ares = after[name]
            assert str(bres) == str(ares), (name, bres, ares)  # same answer
            print(f"{name:<22}{bw * 1000:>10.1f} / {bc * 1000:>7.1f} ms"
                  f"{aw * 1000:>10.1f} / {ac * 1000:>7.1f} ms{bw / aw:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

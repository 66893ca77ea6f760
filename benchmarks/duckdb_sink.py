"""DuckDB sink benchmark: many small jobs into one DuckDB file through the sentinel.

Every job of a DuckDB sink is loaded by the sentinel's committer in its own transaction
(atomic per job, F2). Opening and closing the file costs more than loading a small job, so
the committer keeps the file open through a burst (``duckdb_hold_s``, default 1 s). This
measures, on a real sentinel + 2 workers (``LocalCluster``), submit -> all COMPLETED for
``--jobs`` one-file jobs of 3 rows each:

* ``duckdb_hold_s = 1`` (default) and ``duckdb_hold_s = 0`` (open + close per job);
* the same jobs into a Parquet sink (no committer-side database at all);
* anchor, in this process: raw DuckDB loading the same staged-size Parquet file once per
  job, one transaction each, through one open connection — and opening + closing per job.

A benchmark, not a test: it prints figures and exits 0.

    .venv/bin/python benchmarks/duckdb_sink.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks._harness import wait_completed  # noqa: E402
from casparian_nb.client import ControlClient  # noqa: E402
from casparian_nb.config import load_settings  # noqa: E402
from casparian_nb.launcher import LocalCluster  # noqa: E402

PLUGIN = '''import pyarrow as pa
name = "three_rows"
version = "1.0.0"
def parse(path, ctx=None):
    text = open(path).read().strip()
    return pa.table({"file": [text] * 3, "n": [1, 2, 3]})
'''


def through_sentinel(tmp: Path, label: str, sink: str, jobs: int, **overrides: float) -> float:
    """Seconds from SubmitJobs to all COMPLETED (after a 20-job warm-up)."""
    settings = dataclasses.replace(load_settings(tmp / f"home-{label}"), **overrides)
    plugin = tmp / "three_rows.py"
    plugin.write_text(PLUGIN)
    batches = []
    for b, k in enumerate((20, jobs)):
        d = tmp / f"in-{label}-{b}"
        d.mkdir()
        files = []
        for i in range(k):
            p = d / f"f{i:05d}.txt"
            p.write_text(f"{label} {b} {i}\n")
            files.append(str(p))
        batches.append(files)
    cluster = LocalCluster(settings, workers=2, slots=2)
    info = cluster.start()
    try:
        with ControlClient(info, timeout=120) as ctl:
            spent = 0.0
            for files in batches:
                before = ctl.queue_stats()["completed"]
                t0 = time.perf_counter()
                ctl.submit(plugin, files, sink=sink)
                wait_completed(ctl, before, len(files), poll=0.01)
                spent = time.perf_counter() - t0
            return spent
    finally:
        cluster.stop()


def raw_duckdb(tmp: Path, jobs: int, reopen: bool) -> float:
    """The floor: one small Parquet file loaded per job, one transaction each."""
    src = tmp / "one_job.parquet"
    pq.write_table(pa.table({"file": ["x"] * 3, "n": [1, 2, 3]}), src)
    db = tmp / f"raw-{reopen}.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{src}') LIMIT 0")
    t0 = time.perf_counter()
    for _ in range(jobs):
        if reopen:
            con.close()
            con = duckdb.connect(str(db))
        con.execute("BEGIN TRANSACTION")
        con.execute(f"INSERT INTO t BY NAME SELECT * FROM read_parquet('{src}')")
        con.execute("COMMIT")
    con.close()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    args = ap.parse_args()
    n = args.jobs
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-duckdb-"))
    rows = [
        ("raw DuckDB, one connection (anchor)", raw_duckdb(tmp, n, reopen=False)),
        ("raw DuckDB, open + close per job", raw_duckdb(tmp, n, reopen=True)),
        ("casparian_nb -> duckdb, duckdb_hold_s=1",
         through_sentinel(tmp, "hold", f"duckdb://{tmp / 'hold.duckdb'}", n)),
        ("casparian_nb -> duckdb, duckdb_hold_s=0",
         through_sentinel(tmp, "nohold", f"duckdb://{tmp / 'nohold.duckdb'}", n,
                          duckdb_hold_s=0.0)),
        ("casparian_nb -> parquet", through_sentinel(tmp, "pq", f"parquet://{tmp / 'pq'}", n)),
    ]
    for db in ("hold", "nohold"):
        with duckdb.connect(str(tmp / f"{db}.duckdb"), read_only=True) as con:
            got = con.execute("SELECT count(*) FROM three_rows").fetchone()
        assert got is not None and got[0] == 3 * (n + 20), (db, got)
    print(f"{n:,} one-file jobs of 3 rows, 2 workers x 2 slots ({tmp})")
    print(f"{'':<44} {'seconds':>8} {'jobs/s':>8}")
    for label, s in rows:
        print(f"{label:<44} {s:8.2f} {n / s:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput on real small files: casparian ``run`` against a Pool script and Dask.

    python benchmarks/end_to_end.py [--files 1000] [--rows 200] [--workers 2] [--repeat 1]

FILES deterministic CSV files (ROWS rows each, two malformed amounts per file) are parsed by
one function, ``parse`` of a plugin that declares its ``outputs`` (so schema contracts are on),
in the same run, with the same number of worker processes:

(a) Pool      a hand-written ``multiprocessing.Pool`` script: ``parse`` then one
              ``pq.write_table`` per file (pool start-up included);
(b) Dask      ``client.map`` of the same task on a ``distributed.LocalCluster`` with WORKERS
              single-threaded worker processes (cluster start-up *not* included);
(c) casparian ``casparian_nb.runner.run`` (``casparian run``): plugin hosts started for the
              run, contracts, lineage, quarantine split, staging, atomic promotion;
(d) casparian the same plugin without its manifest (contracts off), for the contracts' cost;
(e) casparian with ``--duckdb``: (c) into a ``duckdb://`` sink (tables, not files).

Each round runs the contenders in a rotated order. Besides wall time, each contender's CPU
time over all its processes (this one's threads and every child it reaped: pool workers,
plugin hosts) is printed per file, which holds up better than wall time on a busy machine
(Dask's is left out: its cluster's processes are not this process's children). Goals (issue 18): (c) >= 0.8x (a)'s
throughput and >= 1.5x (b)'s. Printed: best and median seconds and files/s of each,
both ratios, and the per-file overhead of (c) over (a) in worker-milliseconds
((wall_c - wall_a) x workers / files). Every run checks its outputs' row counts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from casparian_nb import runner
from casparian_nb.config import load_settings

PARSER = '''\
"""Benchmark parser: order CSV -> orders (+ quarantine for malformed amounts)."""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

name = "e2e_orders"
version = "1.0.0"
TOPIC = "orders"
{manifest}
_TYPES = {{"order_id": pa.int64(), "customer": pa.string(), "amount": pa.string(),
          "currency": pa.string(), "ordered_at": pa.string()}}


def parse(path, ctx=None):
    raw = pv.read_csv(path, convert_options=pv.ConvertOptions(column_types=_TYPES))
    ok = pc.match_substring_regex(raw["amount"], r"^-?[0-9]+(\\.[0-9]+)?$")
    return pa.table({{
        "order_id": raw["order_id"],
        "customer": raw["customer"],
        "amount": pc.cast(pc.if_else(ok, raw["amount"], None), pa.float64()),
        "currency": raw["currency"],
        "ordered_at": pc.strptime(raw["ordered_at"], format="%Y-%m-%dT%H:%M:%S", unit="s"),
        "_cf_row_error": pc.if_else(ok, None, pc.binary_join_element_wise(
            "bad amount: ", raw["amount"], "")),
    }})


def write_one(job):
    """The baselines' task: the same parse, one Parquet per file."""
    src, dst = job
    table = parse(src)
    pq.write_table(table, dst)
    return table.num_rows
'''

MANIFEST = '''outputs = {"orders": {"columns": [
    {"name": "order_id", "type": "int64", "nullable": False},
    {"name": "customer", "type": "string"},
    {"name": "amount", "type": "float64"},
    {"name": "currency", "type": "string"},
    {"name": "ordered_at", "type": "timestamp"},
]}}'''


def _cpu() -> float:
    """CPU seconds of this process and of every child process it has reaped."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_inputs(directory: Path, files: int, rows: int, seed: int = 18) -> list[Path]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths, order_id = [], 1
    for f in range(files):
        lines = ["order_id,customer,amount,currency,ordered_at"]
        bad = {rng.randrange(rows) for _ in range(2)}
        for r in range(rows):
            amount = "n/a" if r in bad else f"{rng.uniform(1, 500):.2f}"
            lines.append(f"{order_id},c{rng.randrange(1000)},{amount},"
                         f"{rng.choice(('EUR', 'USD', 'GBP'))},"
                         f"2026-{1 + f % 12:02d}-{1 + r % 28:02d}T{r % 24:02d}:00:00")
            order_id += 1
        path = directory / f"orders_{f:05d}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def parquet_rows(directory: Path) -> int:
    """Rows of every output under ``directory`` (its Parquet files, or its DuckDB tables)."""
    db = directory / "out.duckdb"
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()")
                      .fetchall()]
            return sum(int(con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0])
                       for t in tables)
        finally:
            con.close()
    [(count,)] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{directory}/*.parquet', "
                            "union_by_name=true)").fetchall()
    return int(count)


def time_pool(module: str, files: list[Path], out: Path, workers: int) -> float:
    write_one = importlib.import_module(module).write_one
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / f"{p.stem}.parquet")) for p in files]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(write_one, jobs, chunksize=1)
    return time.perf_counter() - start


def time_dask(module: str, plugin: Path, files: list[Path], out: Path, workers: int) -> float:
    from distributed import Client, LocalCluster

    write_one = importlib.import_module(module).write_one
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / f"{p.stem}.parquet")) for p in files]
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        client.upload_file(str(plugin))
        start = time.perf_counter()
        client.gather(client.map(write_one, jobs, pure=False))
        return time.perf_counter() - start


def time_casparian(plugin: Path, files: list[Path], out: Path, workers: int,
                   home: Path, *, duckdb_sink: bool = False) -> float:
    settings = load_settings(home)
    sink = f"duckdb://{out}/out.duckdb" if duckdb_sink else f"parquet://{out}"
    start = time.perf_counter()
    result = runner.run(plugin, files, sink=sink, parallel=workers,
                        settings=settings, progress=False)
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"{len(result.failed)} files failed: {result.failed[0].error}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--duckdb", action="store_true",
                    help="also run casparian into a duckdb:// sink")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-e2e-") as tmp:
        root = Path(tmp)
        plugin = root / "plugins" / "e2e_orders.py"
        plugin.parent.mkdir()
        plugin.write_text(PARSER.format(manifest=MANIFEST), encoding="utf-8")
        free = root / "plugins_free" / "e2e_orders_free.py"
        free.parent.mkdir()
        free.write_text(PARSER.format(manifest=""), encoding="utf-8")
        sys.path.insert(0, str(plugin.parent))  # the baselines import the same parse
        files = write_inputs(root / "in", args.files, args.rows)
        total_rows = args.files * args.rows
        print(f"{args.files} files x {args.rows} rows, {args.workers} workers, "
              f"repeat {args.repeat}")
        timings: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        runs: list[tuple[str, Callable[[Path], float]]] = [
            ("pool", lambda o: time_pool("e2e_orders", files, o, args.workers)),
            ("casparian", lambda o: time_casparian(plugin, files, o, args.workers,
                                                   root / "home")),
            ("casparian, contracts off", lambda o: time_casparian(
                free, files, o, args.workers, root / "home")),
        ]
        if args.duckdb:
            runs.append(("casparian, duckdb sink", lambda o: time_casparian(
                plugin, files, o, args.workers, root / "home", duckdb_sink=True)))
        if not args.no_dask:
            runs.insert(1, ("dask", lambda o: time_dask("e2e_orders", plugin, files, o,
                                                        args.workers)))
        for i in range(args.repeat):
            # A new order each round, so what a previous contender leaves behind (Dask's
            # worker teardown, dirty pages) does not always land on the same one.
            for name, fn in runs[i % len(runs):] + runs[:i % len(runs)]:
                out = root / f"out-{name.replace(', ', '-').replace(' ', '_')}-{i}"
                before = _cpu()
                timings.setdefault(name, []).append(fn(out))
                cpu.setdefault(name, []).append(_cpu() - before)
                rows = parquet_rows(out)
                if rows != total_rows:
                    raise RuntimeError(f"{name}: {rows} rows in the outputs, not {total_rows}")
        best = {name: min(ts) for name, ts in timings.items()}
        for name, ts in timings.items():
            cpu_ms = (f"  cpu {min(cpu[name]) / args.files * 1000:5.2f} ms/file"
                      if name != "dask" else "")
            print(f"  {name:<26} best {best[name]:6.2f} s  median {statistics.median(ts):6.2f} s"
                  f"  {args.files / best[name]:7.0f} files/s{cpu_ms}")
        ours = best["casparian"]
        print(f"casparian / pool throughput: {best['pool'] / ours:.2f}x (goal >= 0.8x)")
        if "dask" in best:
            print(f"casparian / dask throughput: {best['dask'] / ours:.2f}x (goal >= 1.5x)")
        overhead = (ours - best["pool"]) * args.workers / args.files * 1000
        contracts = (ours - best["casparian, contracts off"]) * args.workers / args.files * 1000
        print(f"per-file overhead over pool: {overhead:.2f} worker-ms; "
              f"of which contracts: {contracts:.2f} worker-ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

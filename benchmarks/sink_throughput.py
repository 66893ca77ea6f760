"""Sink throughput: the full ``run`` path against a plain ``pq.write_table`` baseline.

    python benchmarks/sink_throughput.py [--rows 1000000] [--tiny 500] [--repeat 3]

(a) baseline   one process builds a ROWS x 5 table (int64, float64, string, bool,
               timestamp) and writes it with ``pyarrow.parquet.write_table``.
(b) warm path  a plugin returning the same table, through an already started plugin host:
               host -> lineage -> staged Parquet -> promote, timed from submit to promoted.
               Goal: <= 1.3x (a). The cold ``casparian_nb.runner.run`` (hosts started for
               the run) is printed for reference.
(c) per file   TINY tiny files through 2 warm hosts, promoted one by one by this process
               (what ``runner.run`` does once its hosts are up). Goal: <= 5 ms per file.

Every figure is measured in this run, repeated ``--repeat`` times (best and median shown).
A breakdown of (b) — build, lineage, staging, promotion, measured in this process with the
functions the host calls — shows where the time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pyarrow.parquet as pq

from casparian_nb import lineage, plugins, runner, sinks
from casparian_nb.config import load_settings
from casparian_nb.protocol import HostJob, JobSpec
from casparian_nb.worker.pool import HostPool

BIG_PLUGIN = '''\
"""Benchmark plugin: a ROWS x 5 table (int64, float64, string, bool, timestamp)."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

name = "bench"
version = "1.0.0"
ROWS = {rows}


def build(n):
    ids = np.arange(n, dtype=np.int64)
    return pa.table({{
        "id": pa.array(ids),
        "amount": pa.array(ids * 0.25 + 0.5),
        "label": pc.binary_join_element_wise("item-", pc.cast(pa.array(ids % 100_003), pa.string()), ""),
        "flag": pa.array(ids % 3 == 0),
        "at": pa.array(ids * 1_000_000 + 1_700_000_000_000_000, pa.timestamp("us", tz="UTC")),
    }})


def parse(path):
    return build(ROWS)
'''

TINY_PLUGIN = '''\
"""Benchmark plugin: a few rows per tiny input file."""
import pyarrow as pa

name = "tiny"
version = "1.0.0"


def parse(path):
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return pa.table({"line_no": pa.array(range(len(lines)), pa.int64()),
                     "text": pa.array(lines, pa.string())})
'''


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plugin_inproc", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def job_spec(job_id: str, plugin: Path, src: Path, sink: str, staging: Path) -> HostJob:
    """A job attempt as ``runner.run`` builds it (the source hash lets the host reuse the
    plugin module it already loaded instead of re-reading and re-checking the file)."""
    spec = plugins.inspect_plugin(plugin)
    return HostJob(job=JobSpec(
        job_id=job_id, plugin_path=str(spec.path), plugin_source_hash=spec.source_hash,
        plugin_name=spec.name, parser_version=spec.version, input_file=str(src), sink=sink,
        processed_at=datetime.now(UTC).isoformat()), attempt=1, staging_root=str(staging))


def for_file(proto: HostJob, job_id: str, src: Path | None = None) -> HostJob:
    """``proto`` for another job id (and input file)."""
    job = msgspec.structs.replace(proto.job, job_id=job_id,
                                  input_file=str(src) if src else proto.job.input_file)
    return msgspec.structs.replace(proto, job=job)


class Bench:
    def __init__(self, root: Path, rows: int, tiny: int) -> None:
        self.root, self.rows, self.tiny = root, rows, tiny
        self.settings = load_settings(root / "home")
        self.big_plugin = root / "bench_plugin.py"
        self.big_plugin.write_text(BIG_PLUGIN.format(rows=rows))
        self.tiny_plugin = root / "tiny_plugin.py"
        self.tiny_plugin.write_text(TINY_PLUGIN)
        self.src = root / "input.bin"
        self.src.write_bytes(os.urandom(4096))
        self.tiny_dir = root / "tiny"
        self.tiny_dir.mkdir()
        for i in range(tiny):
            (self.tiny_dir / f"t{i:04d}.txt").write_text(f"a,{i}\nb,{i * 2}\nc,{i * 3}\n")
        self.build = load_module(self.big_plugin).build
        self.n = 0

    def fresh(self, what: str) -> Path:
        self.n += 1
        d = self.root / f"{what}-{self.n}"
        d.mkdir()
        return d

    # (a)
    def baseline(self) -> float:
        out = self.fresh("baseline") / "table.parquet"
        return timed(lambda: pq.write_table(self.build(self.rows), out))

    # (b) warm: submit -> promoted, on an already started host
    def warm(self, pool: HostPool) -> float:
        d = self.fresh("warm")
        job = job_spec(f"warm-{self.n}", self.big_plugin, self.src, f"parquet://{d / 'out'}",
                       self.settings.staging_dir)
        t0 = time.perf_counter()
        res = pool.run(job)
        assert res.status == "SUCCESS", res
        staged = sinks.StagedJob.from_dict(res.staged or {})
        sinks.promote(staged, mode="append", run_job_ids=[job.job.job_id])
        elapsed = time.perf_counter() - t0
        assert sum(o.rows for o in staged.outputs) == self.rows
        return elapsed

    # (b) cold, for reference
    def cold(self) -> float:
        d = self.fresh("cold")
        t0 = time.perf_counter()
        res = runner.run(self.big_plugin, [self.src], sink=f"parquet://{d / 'out'}",
                         settings=self.settings, parallel=1, progress=False)
        elapsed = time.perf_counter() - t0
        assert res.ok, str(res)
        return elapsed

    # (c) tiny files through 2 warm hosts, promoted by this process as runner.run does
    def per_file(self, pool: HostPool, limit: int | None = None) -> float:
        d = self.fresh("tiny")
        sink = f"parquet://{d / 'out'}"
        files = sorted(self.tiny_dir.iterdir())[:limit]
        proto = job_spec("proto", self.tiny_plugin, files[0], sink, self.settings.staging_dir)
        jobs = [for_file(proto, f"tiny-{self.n}-{i:06d}", f) for i, f in enumerate(files)]
        ids = frozenset(j.job.job_id for j in jobs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(pool.size) as ex:
            for res in ex.map(pool.run, jobs):
                assert res.status == "SUCCESS", res
                sinks.promote(sinks.StagedJob.from_dict(res.staged or {}), mode="append",
                              run_job_ids=ids)
        elapsed = time.perf_counter() - t0
        assert len(os.listdir(d / "out")) == len(files)
        return elapsed / len(files)

    # where the warm path's time goes (in this process, the functions the host calls)
    def breakdown(self) -> dict[str, float]:
        d = self.fresh("breakdown")
        parts: dict[str, float] = {}
        t0 = time.perf_counter()
        table = self.build(self.rows)
        parts["build table (plugin)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lin = lineage.Lineage(lineage.hash_file(self.src), "bd", datetime.now(UTC), "1.0.0")
        valid, _ = lineage.prepare_output("bench", table, lin)
        parts["hash + lineage"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stager = sinks.JobStager(d / "staging", "bd", f"parquet://{d / 'out'}")
        stager.write("bench", "bench", valid)
        staged = stager.close()
        parts["stage (Parquet write + fsync)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sinks.promote(staged, mode="append")
        parts["promote"] = time.perf_counter() - t0
        return parts


def tiny_breakdown(b: Bench, n: int = 100) -> dict[str, float]:
    """Per tiny job, in this process: the host's own job code, then the committer's promote."""
    from casparian_nb.worker.host import execute_job  # the exact code a host runs

    d = b.fresh("tiny-breakdown")
    files = sorted(b.tiny_dir.iterdir())[:n]
    proto = job_spec("proto", b.tiny_plugin, files[0], f"parquet://{d / 'out'}", d / "staging")
    execute_job(for_file(proto, "warm-up"))
    t0 = time.perf_counter()
    results = [execute_job(for_file(proto, f"tb-{i}", f)) for i, f in enumerate(files)]
    host = (time.perf_counter() - t0) / len(files)
    t0 = time.perf_counter()
    for r in results:
        sinks.promote(sinks.StagedJob.from_dict(r.staged or {}), mode="append")
    promote = (time.perf_counter() - t0) / len(files)
    return {"tiny job in the host (load, hash, lineage, stage)": host,
            "tiny job promote (committer, serial)": promote}


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tiny", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cf-bench-") as tmp:
        b = Bench(Path(tmp), args.rows, args.tiny)
        b.baseline()  # warm up imports and the page cache for both paths alike
        settings = b.settings
        base, warm, cold, tiny = [], [], [], []
        parts: list[dict[str, float]] = []
        with HostPool(1, log_dir=settings.logs_dir, name="bench") as pool1, \
                HostPool(2, log_dir=settings.logs_dir, name="bench-tiny") as pool2:
            pool1.wait_ready()
            pool2.wait_ready()
            b.warm(pool1)  # first job loads the plugin module into the host
            b.per_file(pool2, limit=8)  # ... and into both tiny-file hosts
            for _ in range(args.repeat):  # interleaved, so drift hits every figure alike
                base.append(b.baseline())
                warm.append(b.warm(pool1))
                tiny.append(b.per_file(pool2))
                parts.append({**b.breakdown(), **tiny_breakdown(b)})
        for _ in range(args.repeat):
            cold.append(b.cold())

    rows = args.rows
    (b_best, b_med), (w_best, w_med) = stats(base), stats(warm)
    (c_best, c_med), (t_best, t_med) = stats(cold), stats(tiny)
    print(f"sink_throughput: {rows:,} rows x 5 columns, {args.tiny} tiny files, "
          f"best/median of {args.repeat}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'measurement':<52}{'best':>10}{'median':>10}   {'rows/s (best)':>14}")
    print("-" * 90)
    print(f"{'(a) baseline: build + pq.write_table':<52}{b_best * 1e3:>8.0f}ms{b_med * 1e3:>8.0f}ms"
          f"   {rows / b_best:>14,.0f}")
    print(f"{'(b) run path, warm host: submit -> promoted':<52}{w_best * 1e3:>8.0f}ms"
          f"{w_med * 1e3:>8.0f}ms   {rows / w_best:>14,.0f}")
    print(f"{'    runner.run, cold (hosts started per run)':<52}{c_best * 1e3:>8.0f}ms"
          f"{c_med * 1e3:>8.0f}ms   {rows / c_best:>14,.0f}")
    ratio_best, ratio_med = w_best / b_best, w_med / b_med
    verdict = "ok" if ratio_best <= 1.3 else "MISSES"
    print(f"{'    ratio (b)/(a)  [goal <= 1.30x]':<52}{ratio_best:>9.2f}x{ratio_med:>9.2f}x   {verdict}")
    verdict = "ok" if t_best * 1e3 <= 5.0 else "MISSES"
    print(f"{'(c) per-file overhead, 2 warm hosts [goal <= 5 ms]':<52}{t_best * 1e3:>8.2f}ms"
          f"{t_med * 1e3:>8.2f}ms   {verdict}")
    print()
    print("where the time goes (in this process, median):")
    for key in parts[0]:
        value = statistics.median(p[key] for p in parts) * 1e3
        print(f"    {key:<52}{value:>8.2f}ms" if "tiny" in key else f"    {key:<52}{value:>8.0f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

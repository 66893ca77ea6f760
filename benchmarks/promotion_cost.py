"""The committer's CPU per promoted job: ``sinks.promote_group`` on small staged jobs.

    python benchmarks/promotion_cost.py [--jobs 1280] [--group 64] [--compare TREE]

JOBS jobs are staged as a plugin host stages them for a run (``close(sync=False)``: an
``orders`` output of 20 rows and an ``orders_quarantine`` output of 2), then promoted to a
Parquet sink in groups of GROUP with ``sync=True``, as the runner's and the sentinel's
committers do (one journal and one ``syncfs`` a group, the sink directory fsynced once).
Printed: the promoting process's CPU per job (user + system), and the wall time per job.

With ``--compare TREE`` the same is measured, in a child process, for casparian_nb imported
from TREE (a checkout of an earlier commit, say), alternating with this tree three times,
so both see the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(jobs: int, group: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per promoted job."""
    import pyarrow as pa

    from casparian_nb import sinks

    with tempfile.TemporaryDirectory(prefix="cf-promo-") as tmp:
        sink = f"parquet://{tmp}/out"
        rows = pa.table({"a": list(range(20)), "b": ["x"] * 20})
        staged = []
        for i in range(jobs):
            stager = sinks.JobStager(f"{tmp}/staging", f"job-{i:06d}", sink)
            stager.write("orders", "orders", rows)
            stager.write("orders_quarantine", "orders_quarantine", rows.slice(0, 2))
            staged.append(stager.close(sync=False))
        os.sync()  # staging's own writes are not the committer's cost
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, jobs, group):
            for got in sinks.promote_group(staged[start:start + group], sync=True):
                if isinstance(got, Exception):
                    raise got
        return ((time.process_time() - cpu) * 1000 / jobs,
                (time.perf_counter() - wall) * 1000 / jobs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1280)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--compare", metavar="TREE", default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    args = ap.parse_args()
    if args.one:
        print(*measure(args.jobs, args.group))
        return 0
    trees = {"this": str(Path(__file__).resolve().parents[1])}
    if args.compare:
        trees["compare"] = str(Path(args.compare).resolve())
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(3 if args.compare else 1):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run([sys.executable, __file__, "--one", "--jobs", str(args.jobs),
                                  "--group", str(args.group)], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            results[name].append((float(out[0]), float(out[1])))
    print(f"{args.jobs} jobs (2 outputs each) promoted in groups of {args.group}")
    for name, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"  {name:8s} {trees[name]}: CPU {cpu:.3f} ms/job, wall {wall:.3f} ms/job "
              f"(median of {len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

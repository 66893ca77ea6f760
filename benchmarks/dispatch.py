"""Dispatch benchmark: 2,000 no-op jobs on 2 workers, submit -> all COMPLETED, in jobs/s,
against ipyparallel and Dask distributed running 2,000 no-op tasks in the same run.

* casparian_nb: a real sentinel + 2 worker processes (``LocalCluster``) in a temporary home;
  one SubmitJobs of 2,000 input files with a plugin whose ``parse`` returns None; the clock
  runs from the submit until GetQueueStats reports all 2,000 COMPLETED. Every job is hashed,
  inserted, claimed, run in a warm plugin host, receipted, recorded COMPLETED with its
  materialization in the state DB (SQLite WAL) and written to the sentinel's tape. A second
  variant returns a one-row table, so each job also stages, lineage-stamps and atomically
  promotes a Parquet file.
* ipyparallel: ``ipyparallel.Cluster(n=2)``, a load-balanced view, ``apply_async`` of a no-op.
* Dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, ``client.map``.

Each system gets one warm-up batch, then ``--repeat`` timed batches of ``--jobs`` on the same
cluster; the table shows the median (and best) rate and the ratio against the faster anchor.
A benchmark, not a test: it prints figures and exits 0. Goal (issue 3): casparian >= 1.0x the
faster of ipyparallel and Dask.

    .venv/bin/python benchmarks/dispatch.py [--jobs 2000] [--repeat 3] [--skip-anchors]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from benchmarks._harness import wait_completed  # noqa: E402
from casparian_nb.client import ControlClient  # noqa: E402
from casparian_nb.config import load_settings  # noqa: E402
from casparian_nb.launcher import LocalCluster  # noqa: E402
from casparian_nb.store import StateReader  # noqa: E402

NOOP = '''name = "noop"
version = "1.0.0"
def parse(path, ctx=None):
    return None
'''
ONE_ROW = '''import pyarrow as pa
name = "one_row"
version = "1.0.0"
def parse(path, ctx=None):
    return pa.table({"n": [1]})
'''


def noop(*_: Any) -> None:
    return None


class Result:
    def __init__(self, system: str, config: str) -> None:
        self.system, self.config = system, config
        self.rates: list[float] = []
        self.note = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


class Runner:
    """One system's cluster: ``start()``, ``batch(k)`` (timed by the caller), ``stop()``."""

    result: Result

    def start(self) -> None: ...
    def batch(self, k: int) -> None: ...
    def stop(self) -> None: ...


# -- casparian_nb ----------------------------------------------------------------------------

class Casparian(Runner):
    def __init__(self, tmp: Path, slots: int, plugin_src: str, label: str, n: int,
                 repeat: int) -> None:
        self.result = Result(f"casparian_nb ({label})",
                             f"2 workers x {slots} slot{'s' if slots > 1 else ''}")
        self.slots = slots
        self.settings = load_settings(tmp / f"home-{label}-{slots}")
        self.plugin = tmp / f"{label.replace(' ', '_')}-{slots}.py"
        self.plugin.write_text(plugin_src)
        self.sink = f"parquet://{tmp / f'out-{label}-{slots}'}"
        # fresh input files for every batch: the same ones would be skipped (incremental)
        self.batches: list[list[str]] = []
        for b, k in enumerate([WARMUP] + [n] * repeat):
            d = tmp / f"in-{label}-{slots}-{b}"
            d.mkdir()
            files = []
            for i in range(k):
                p = d / f"f{i:05d}.txt"
                p.write_bytes(b"batch %d file %d\n" % (b, i))
                files.append(str(p))
            self.batches.append(files)
        self.cluster = LocalCluster(self.settings, workers=2, slots=slots)
        self.cpu: dict[str, float] = {}

    def start(self) -> None:
        info = self.cluster.start()
        self.ctl = ControlClient(info, timeout=120)

    def _cpu(self) -> dict[str, float]:
        procs = {"sentinel": [psutil.Process(self.cluster.pids[0])], "workers": [],
                 "hosts": []}
        for pid in self.cluster.pids[1:]:
            w = psutil.Process(pid)
            procs["workers"].append(w)
            procs["hosts"] += w.children()
        out = {}
        for k, ps in procs.items():
            out[k] = sum(p.cpu_times().user + p.cpu_times().system for p in ps)
        return out

    def batch(self, k: int) -> None:
        files = self.batches.pop(0)
        assert len(files) == k
        before = self.ctl.queue_stats()["completed"]
        cpu0 = self._cpu() if k > WARMUP else {}
        reply = self.ctl.submit(self.plugin, files, sink=self.sink)
        assert len(reply["job_ids"]) == k
        wait_completed(self.ctl, before, k, poll=0.02)
        if cpu0:
            cpu1 = self._cpu()
            for key in cpu1:
                self.cpu[key] = self.cpu.get(key, 0.0) + (cpu1[key] - cpu0[key]) / k

    def stop(self) -> None:
        self.ctl.close()
        self.cluster.stop()
        with StateReader.open(self.settings.state_db) as r:
            stats = r.queue_stats()
            mats = len(r.list_materializations(limit=10**7))
        tapes = sorted(self.settings.tapes_dir.glob("sentinel-*.tape"))
        events = sum(1 for _ in open(tapes[-1], "rb")) if tapes else 0
        total = stats["total"]
        assert stats["completed"] == total, stats
        assert mats == total, f"{mats} materializations for {total} jobs"
        n = len(self.result.rates)
        cpu = ", ".join(f"{k} {v / n * 1e6:.0f}" for k, v in self.cpu.items())
        self.result.note = (f"{total:,} COMPLETED rows, {mats:,} materializations, "
                            f"{events:,} tape events; CPU us/job: {cpu}")


# -- anchors ---------------------------------------------------------------------------------

class IPyParallel(Runner):
    def __init__(self) -> None:
        self.result = Result("ipyparallel", "2 engines, load-balanced view")

    def start(self) -> None:
        import ipyparallel as ipp

        logging.getLogger("ipyparallel").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.cluster = ipp.Cluster(n=2, log_level=logging.ERROR)
            self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.rc.wait_for_engines(2, timeout=120)
        self.view = self.rc.load_balanced_view()

    def batch(self, k: int) -> None:
        results = [self.view.apply_async(noop) for _ in range(k)]
        for ar in results:
            ar.get()

    def stop(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.rc.close()
            self.cluster.stop_cluster_sync()


class Dask(Runner):
    def __init__(self) -> None:
        self.result = Result("Dask distributed", "LocalCluster 2 procs x 1 thread")

    def start(self) -> None:
        from dask.distributed import Client
        from dask.distributed import LocalCluster as DaskCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = DaskCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def batch(self, k: int) -> None:
        from dask.distributed import wait

        futures = self.client.map(noop, range(k), pure=False)
        wait(futures)
        del futures

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


WARMUP = 50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-anchors", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-dispatch-"))
    anchors: list[Runner] = [] if args.skip_anchors else [IPyParallel(), Dask()]
    ours: list[Runner] = [Casparian(tmp, slots, NOOP, "no-op", args.jobs, args.repeat)
                          for slots in (1, 2)]
    ours.append(Casparian(tmp, 1, ONE_ROW, "1-row parquet", args.jobs, args.repeat))
    runners = anchors + ours
    # Every cluster is up for the whole run and the batches are interleaved round by round,
    # so a burst of load on this (shared) machine hits every system alike.
    try:
        for r in runners:
            r.start()
            r.batch(WARMUP)
        for _ in range(args.repeat):
            for r in runners:
                start = time.perf_counter()
                r.batch(args.jobs)
                r.result.rates.append(args.jobs / (time.perf_counter() - start))
    finally:
        for r in runners:
            try:
                r.stop()
            except Exception as exc:  # report, keep stopping the others
                print(f"stopping {r.result.system}: {exc!r}", file=sys.stderr)

    results = [r.result for r in ours]
    best_anchor = max((r.result for r in anchors), key=lambda r: r.median, default=None)
    print()
    print(f"dispatch: {args.jobs:,} no-op tasks on 2 workers, median of {args.repeat} "
          f"interleaved batches after a warm-up (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores)")
    head = f"{'system':<30} {'config':<32} {'tasks/s':>9} {'best':>9}"
    if best_anchor:
        head += f"  {'vs ' + best_anchor.system:>24}"
    print(head)
    for res in [r.result for r in anchors] + results:
        line = f"{res.system:<30} {res.config:<32} {res.median:9.0f} {max(res.rates):9.0f}"
        if best_anchor:
            line += f"  {res.median / best_anchor.median:23.2f}x"
        print(line)
    print()
    fastest = max((r for r in results if "no-op" in r.system), key=lambda r: r.median)
    print(f"fastest casparian_nb config: {fastest.config} ({fastest.median:.0f} jobs/s)")
    if best_anchor:
        print(f"goal >= 1.0x the faster anchor, {best_anchor.system} "
              f"({best_anchor.median:.0f} tasks/s): {fastest.median / best_anchor.median:.2f}x")
    for res in results:
        print(f"  {res.system}, {res.config}: {res.note}")
    print(f"  temporary homes under {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

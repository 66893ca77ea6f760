"""Dask executor benchmark: casparian_nb on a Dask cluster vs Dask-native ``client.map`` of
the same function on the same cluster, in the same run; the local executor beside them.

Two workloads, each in fresh input files per batch:

* no-op: 2,000 jobs of a plugin whose ``parse`` returns None;
* real: 1,000 small CSV files (20 rows each) that the plugin reads with ``pyarrow.csv``.

Systems (every cluster is up for the whole run; batches are interleaved round by round, so a
burst of load on this shared machine hits all alike):

* Dask-native: ``client.map(run_plugin, files, pure=False)`` + ``wait`` on a
  ``distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=2)``.
  ``run_plugin`` loads the same plugin file once per worker and calls its ``parse``; for the
  real workload it writes the table to Parquet (no lineage, no staging, no state).
* casparian_nb, dask executor: a sentinel + the bridge on *the same* Dask cluster; submit ->
  all COMPLETED (durable queue, plugin-host isolation, lineage, atomic promotion, tape).
* casparian_nb, local executor: a sentinel + 2 workers x 2 slots.

A benchmark, not a test: it prints rates and ratios and exits 0. Goal (issue 17): the dask
executor >= 0.7x Dask-native.

    .venv/bin/python benchmarks/dispatch_dask.py [--noop 2000] [--real 1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._harness import wait_completed  # noqa: E402
from casparian_nb.client import ControlClient  # noqa: E402
from casparian_nb.config import load_settings  # noqa: E402
from casparian_nb.launcher import LocalCluster  # noqa: E402

NOOP = '''name = "noop"
version = "1.0.0"
def parse(path, ctx=None):
    return None
'''
CSV = '''import pyarrow.csv as pv
name = "small_csv"
version = "1.0.0"
def parse(path, ctx=None):
    return pv.read_csv(path)
'''
WARMUP = 50
_PLUGINS: dict[str, ModuleType] = {}
#: The processes whose CPU time each batch reports, by what their command line runs.
GROUPS = ("scheduler+clients", "dask workers", "sentinel", "bridge / local workers",
          "plugin hosts")


def _group(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if "casparian_nb.worker.host" in cmd:
        return "plugin hosts"
    if " sentinel" in cmd:
        return "sentinel"
    if "casparian_nb.executors.dask" in cmd or (" worker" in cmd and "casparian_nb" in cmd):
        return "bridge / local workers"
    return "dask workers"


def cpu_by_group() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process (the Dask scheduler runs in it)
    and of every process under it, by group."""
    me = psutil.Process()
    out = dict.fromkeys(GROUPS, 0.0)
    t = me.cpu_times()
    out["scheduler+clients"] = t.user + t.system
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            out[_group(child)] += t.user + t.system
        except psutil.Error:  # gone meanwhile
            continue
    return out


def run_plugin(plugin: str, path: str, out_dir: str | None) -> int:
    """What Dask-native runs per file: the plugin's parse (module loaded once per worker
    process), its table written to Parquet when there is one."""
    mod = _PLUGINS.get(plugin)
    if mod is None:
        spec = importlib.util.spec_from_file_location(Path(plugin).stem, plugin)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _PLUGINS[plugin] = mod
    table = mod.parse(path)
    if table is None or out_dir is None:
        return 0
    import pyarrow.parquet as pq

    pq.write_table(table, Path(out_dir) / (Path(path).stem + ".parquet"))
    return int(table.num_rows)


def make_batches(tmp: Path, label: str, n: int, repeat: int, real: bool) -> list[list[str]]:
    batches = []
    for b, k in enumerate([WARMUP] + [n] * repeat):
        d = tmp / f"in-{label}-{b}"
        d.mkdir(parents=True)
        files = []
        for i in range(k):
            p = d / f"f{i:05d}.csv"
            if real:
                p.write_text("id,name,value\n" + "".join(
                    f"{j},{label}-{b}-{i},{j * 0.5}\n" for j in range(20)))
            else:
                p.write_bytes(b"batch %d file %d\n" % (b, i))
            files.append(str(p))
        batches.append(files)
    return batches


class System:
    """One system on one workload: ``start()``, ``batch()`` (timed by the caller), ``stop()``."""

    def __init__(self, name: str, batches: list[list[str]]) -> None:
        self.name = name
        self.batches = batches
        self.rates: list[float] = []
        #: CPU ms per job, by process group, of each timed batch.
        self.cpu: list[dict[str, float]] = []

    def start(self) -> None: ...
    def run(self, files: list[str]) -> None: ...
    def stop(self) -> None: ...

    def batch(self) -> tuple[int, float]:
        files = self.batches.pop(0)
        c0 = cpu_by_group()
        t0 = time.perf_counter()
        self.run(files)
        took = time.perf_counter() - t0
        c1 = cpu_by_group()
        self.cpu.append({g: (c1[g] - c0[g]) * 1000 / len(files) for g in GROUPS})
        return len(files), took


class DaskNative(System):
    def __init__(self, client: Any, plugin: Path, out: Path | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.client, self.plugin, self.out = client, str(plugin), out

    def run(self, files: list[str]) -> None:
        from distributed import wait

        futures = self.client.map(run_plugin, [self.plugin] * len(files), files,
                                  [str(self.out) if self.out else None] * len(files),
                                  pure=False)
        wait(futures)
        errors = [f for f in futures if f.status != "finished"]
        assert not errors, errors[:3]
        del futures


class Casparian(System):
    def __init__(self, tmp: Path, label: str, plugin: Path, sink: Path, *, dask: str | None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        overrides: dict[str, Any] = {"executor": "dask", "scheduler": dask} if dask else {}
        self.settings = load_settings(tmp / f"home-{label}", **overrides)
        self.cluster = LocalCluster(self.settings, workers=2, slots=2)
        self.plugin, self.sink = plugin, f"parquet://{sink}"

    def start(self) -> None:
        self.ctl = ControlClient(self.cluster.start(timeout=120), timeout=120)

    def run(self, files: list[str]) -> None:
        before = self.ctl.queue_stats()["completed"]
        reply = self.ctl.submit(self.plugin, files, sink=self.sink)
        assert len(reply["job_ids"]) == len(files)
        wait_completed(self.ctl, before, len(files), poll=0.02)

    def stop(self) -> None:
        self.ctl.close()
        self.cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noop", type=int, default=2000)
    ap.add_argument("--real", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from distributed import Client
    from distributed import LocalCluster as DaskCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-dask-"))
    noop_plugin, csv_plugin = tmp / "noop.py", tmp / "small_csv.py"
    noop_plugin.write_text(NOOP)
    csv_plugin.write_text(CSV)
    cluster = DaskCluster(processes=True, n_workers=2, threads_per_worker=2,
                          dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    address = cluster.scheduler_address
    workloads: dict[str, tuple[int, list[System]]] = {}
    for work, n, plugin in (("no-op", args.noop, noop_plugin), ("real", args.real, csv_plugin)):
        real = work == "real"
        out = tmp / f"native-{work}"
        out.mkdir()
        workloads[work] = (n, [
            DaskNative(client, plugin, out if real else None, name="Dask-native client.map",
                       batches=make_batches(tmp, f"native-{work}", n, args.repeat, real)),
            Casparian(tmp, f"dask-{work}", plugin, tmp / f"out-dask-{work}", dask=address,
                      name="casparian_nb, dask executor",
                      batches=make_batches(tmp, f"dask-{work}", n, args.repeat, real)),
            Casparian(tmp, f"local-{work}", plugin, tmp / f"out-local-{work}", dask=None,
                      name="casparian_nb, local executor",
                      batches=make_batches(tmp, f"local-{work}", n, args.repeat, real)),
        ])
    started: list[System] = []
    try:
        for _n, systems in workloads.values():
            for s in systems:
                s.start()
                started.append(s)
                s.batch()  # warm-up
        for _ in range(args.repeat):
            for _n, systems in workloads.values():
                for s in systems:
                    k, took = s.batch()
                    s.rates.append(k / took)
    finally:
        for s in started:
            try:
                s.stop()
            except Exception as exc:  # report, keep stopping the others
                print(f"stopping {s.name}: {exc!r}", file=sys.stderr)
        client.close()
        cluster.close()

    print()
    print(f"dask executor: one Dask LocalCluster (2 processes x 2 threads) shared by Dask-native "
          f"and the dask executor; local executor 2 workers x 2 slots; median of {args.repeat} "
          f"interleaved batches after a warm-up (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores)")
    print(f"{'workload':<16} {'system':<32} {'jobs/s':>8} {'best':>8} {'vs Dask-native':>15}")
    for work, (n, systems) in workloads.items():
        native = statistics.median(systems[0].rates)
        for s in systems:
            med = statistics.median(s.rates)
            print(f"{work + f' x {n:,}':<16} {s.name:<32} {med:8.0f} {max(s.rates):8.0f} "
                  f"{med / native:14.2f}x")
    print()
    print("CPU ms per job, median over the timed batches (all processes of the run; the idle "
          "systems' heartbeats included)")
    print(f"{'workload':<16} {'system':<32} " + " ".join(f"{g[:12]:>12}" for g in GROUPS)
          + f" {'total':>8}")
    for work, (n, systems) in workloads.items():
        for s in systems:
            per = {g: statistics.median(c[g] for c in s.cpu[1:]) for g in GROUPS}
            print(f"{work + f' x {n:,}':<16} {s.name:<32} "
                  + " ".join(f"{per[g]:12.2f}" for g in GROUPS)
                  + f" {sum(per.values()):8.2f}")
    for work, (_n, systems) in workloads.items():
        ratio = statistics.median(systems[1].rates) / statistics.median(systems[0].rates)
        print(f"goal >= 0.7x Dask-native ({work}): dask executor {ratio:.2f}x")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  temporary files under {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

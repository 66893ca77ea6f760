"""A plugin host's CPU per job: one warm host of a real ``HostPool`` running small files.

    python benchmarks/host_job_cost.py [--files 1000] [--rows 200] [--profile]

FILES small CSV files (``end_to_end.write_inputs``: ROWS rows, two bad amounts each) are run
one after the other on one warm host with the plugin of ``benchmarks/end_to_end.py``
(contracts on), as ``casparian run`` sends them: lineage, quarantine split, staging without
fsync, output captured into a job log. The first 20 jobs warm the host and are not counted.

With ``--compare TREE`` a second host imports casparian_nb from TREE (a checkout of main,
say) and the two run alternate blocks of 50 jobs, so both see the same machine load.

Printed per host: its CPU per job (all jobs; and the best and median block of 50, the best
being the figure least disturbed by other load on a shared machine) (user + system, from ``psutil``), split by thread — the main
thread runs the job, ``cf-joblog`` drains the captured output — and the wall time per job as
seen by the caller (round trip included). With ``--profile`` the host runs under cProfile
with ``time.thread_time`` (a temporary ``sitecustomize``) and the main thread's top
functions are printed by own and cumulative CPU.
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import MANIFEST, PARSER, write_inputs

from casparian_nb import plugins
from casparian_nb.protocol import HostJob, JobSpec, ReceiptStatus
from casparian_nb.worker.pool import HostPool

_WARM_JOBS = 20
#: Jobs per measured block: the best block is the figure least disturbed by other load.
_BLOCK = 50
_SITECUSTOMIZE = '''\
import atexit, cProfile, os, time
_prof = cProfile.Profile(time.thread_time)
atexit.register(lambda: _prof.dump_stats(os.path.join(
    os.environ["CF_HOST_PROFILE_DIR"], f"host-{os.getpid()}.prof")))
_prof.enable()
'''


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _thread_name(pid: int, tid: int) -> str:
    try:  # Linux: the name a thread gave itself (Python threads, Arrow's pools)
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() + f" ({tid})"
    except OSError:
        return f"thread {tid}"


class _Contender:
    """One warm host running the benchmark's jobs, and what it cost."""

    def __init__(self, label: str, root: Path, env: dict[str, str], plugin: str) -> None:
        self.label, self.root = label, root
        self.pool = HostPool(1, log_dir=root / "logs", name="cost", warm=plugin, env=env)
        self.pool.wait_ready()
        [self.pid] = self.pool.pids
        self.host = psutil.Process(self.pid)
        self.blocks: list[float] = []  # host CPU ms/job of each block of jobs
        self.wall = 0.0
        self.threads: dict[str, float] = {}  # thread -> CPU ms/job

    def run(self, jobs: list[HostJob]) -> float:
        """Run ``jobs``; the host's CPU seconds they took."""
        cpu0 = self.host.cpu_times()
        t0 = time.perf_counter()
        for job in jobs:
            res = self.pool.run(job)
            if res.status != ReceiptStatus.SUCCESS:
                raise RuntimeError(f"{self.label}: {job.job.input_file}: {res.error}")
        self.wall += time.perf_counter() - t0
        cpu1 = self.host.cpu_times()
        return float(cpu1.user + cpu1.system - cpu0.user - cpu0.system)


def _jobs(files: list[Path], spec: plugins.PluginSpec, root: Path) -> list[HostJob]:
    return [HostJob(job=JobSpec(
        job_id=f"run-cost-{i:06d}", input_file=str(path), plugin_path=str(spec.path),
        plugin_name=spec.name, plugin_name_declared=spec.name_declared,
        plugin_source_hash=spec.source_hash, parser_version=spec.version,
        sink=f"parquet://{root / 'out'}", processed_at="2026-12-07T00:00:00Z",
    ), staging_root=str(root / "staging" / "attempt-1"), sync_staging=False,
        log_root=str(root / "logs" / "jobs"), redact_log=True)
        for i, path in enumerate(files)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile the host (thread CPU)")
    ap.add_argument("--compare", metavar="TREE", default=None,
                    help="also run a host importing casparian_nb from TREE (e.g. a checkout "
                         "of main), its blocks alternating with this one's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-hostcost-") as tmp:
        root = Path(tmp)
        plugin = root / "plugins" / "e2e_orders.py"
        plugin.parent.mkdir()
        plugin.write_text(PARSER.format(manifest=MANIFEST), encoding="utf-8")
        spec = plugins.inspect_plugin(plugin)
        files = write_inputs(root / "in", args.files + _WARM_JOBS, args.rows)
        env = dict(os.environ)
        if args.profile:
            site = root / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
            env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
            env["CF_HOST_PROFILE_DIR"] = str(root)
        here = str(Path(__file__).resolve().parent.parent)
        # A host runs as ``python -m``, which puts its working directory first on sys.path:
        # start it from one holding no casparian_nb, so each imports the tree it is given.
        os.chdir(root)
        trees = [("this", here)] + ([("compare", args.compare)] if args.compare else [])
        contenders = []
        for label, tree in trees:
            (root / label).mkdir()
            tree_env = {**env, "PYTHONPATH": os.pathsep.join(
                [p for p in (str(root / "site") if args.profile else "", tree) if p])}
            contenders.append(_Contender(f"{label} ({tree})", root / label, tree_env,
                                         str(spec.path)))
        try:
            all_jobs = [_jobs(files, spec, c.root) for c in contenders]
            for c, jobs in zip(contenders, all_jobs, strict=True):
                c.run(jobs[:_WARM_JOBS])
            befores = [_thread_cpu(c.host) for c in contenders]
            for start in range(_WARM_JOBS, len(files), _BLOCK):  # alternating: same load
                for c, jobs in zip(contenders, all_jobs, strict=True):
                    block = jobs[start:start + _BLOCK]
                    c.blocks.append(c.run(block) / len(block) * 1000)
            for c, before in zip(contenders, befores, strict=True):
                c.threads = {f"main ({tid})" if tid == c.pid else _thread_name(c.pid, tid):
                             (cpu - before.get(tid, 0.0)) / args.files * 1000
                             for tid, cpu in _thread_cpu(c.host).items()}
        finally:
            for c in contenders:
                c.pool.close()
        n = args.files
        print(f"{n} jobs x {args.rows} rows per host (load {os.getloadavg()[0]:.2f}):")
        for c in contenders:
            print(f"  {c.label}: host CPU {statistics.mean(c.blocks):.3f} ms/job "
                  f"(blocks of {_BLOCK}: best {min(c.blocks):.3f}, median "
                  f"{statistics.median(c.blocks):.3f}); wall {c.wall / n * 1000:.3f} ms/job")
            for name, ms in sorted(c.threads.items(), key=lambda kv: -kv[1])[:4]:
                print(f"    {name:<24} {ms:.3f} ms/job")
        if len(contenders) == 2:  # adjacent blocks saw the same load: compare them in pairs
            diffs = [a - b for a, b in zip(contenders[0].blocks, contenders[1].blocks,
                                           strict=True)]
            err = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            print(f"  this - compare, block by block: {statistics.mean(diffs):+.3f} "
                  f"+- {err:.3f} ms/job (mean +- standard error)")
        if args.profile:
            for prof in root.glob("host-*.prof"):
                stats = pstats.Stats(str(prof))
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(45)
                stats.print_callees(r"serve|execute_job|_execute|staging.py:\d+\(__init__\)"
                                    r"|staging.py.*close|_make_dir")
    return 0


if __name__ == "__main__":
    sys.exit(main())

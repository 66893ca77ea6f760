"""A plugin host's CPU per job: one warm host of a real ``HostPool`` running small files.

    python benchmarks/host_job_cost.py [--files 1000] [--rows 200] [--profile]

FILES small CSV files (``end_to_end.write_inputs``: ROWS rows, two bad amounts each) are run
one after the other on one warm host with the plugin of ``benchmarks/end_to_end.py``
(contracts on), as ``casparian run`` sends them: lineage, quarantine split, staging without
fsync, output captured into a job log. The first 20 jobs warm the host and are not counted.

Printed: the host's CPU per job (all jobs; and the best and median block of 100, the best
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
_BLOCK = 100
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile the host (thread CPU)")
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
        jobs = [HostJob(job=JobSpec(
            job_id=f"run-cost-{i:06d}", input_file=str(path), plugin_path=str(spec.path),
            plugin_name=spec.name, plugin_name_declared=spec.name_declared,
            plugin_source_hash=spec.source_hash, parser_version=spec.version,
            sink=f"parquet://{root / 'out'}", processed_at="2026-12-07T00:00:00Z",
        ), staging_root=str(root / "staging" / "attempt-1"), sync_staging=False,
            log_root=str(root / "logs" / "jobs"), redact_log=True)
            for i, path in enumerate(files)]
        with HostPool(1, log_dir=root / "logs", name="cost", warm=str(spec.path),
                      env=env) as pool:
            pool.wait_ready()
            [pid] = pool.pids
            host = psutil.Process(pid)
            for job in jobs[:_WARM_JOBS]:
                assert pool.run(job).status == ReceiptStatus.SUCCESS
            before, t0 = _thread_cpu(host), time.perf_counter()
            blocks: list[float] = []  # host CPU ms/job of each block of jobs
            for start in range(_WARM_JOBS, len(jobs), _BLOCK):
                cpu0 = host.cpu_times()
                for job in jobs[start:start + _BLOCK]:
                    res = pool.run(job)
                    if res.status != ReceiptStatus.SUCCESS:
                        raise RuntimeError(f"{job.job.input_file}: {res.error}")
                cpu1 = host.cpu_times()
                blocks.append((cpu1.user + cpu1.system - cpu0.user - cpu0.system)
                              / len(jobs[start:start + _BLOCK]) * 1000)
            wall, after = time.perf_counter() - t0, _thread_cpu(host)
            names = {tid: _thread_name(pid, tid) for tid in after}
        n = args.files
        per = {tid: (cpu - before.get(tid, 0.0)) / n * 1000 for tid, cpu in after.items()}
        total = sum(per.values())
        print(f"{n} jobs x {args.rows} rows on one host (load {os.getloadavg()[0]:.2f}):")
        print(f"  host CPU {total:.3f} ms/job; wall {wall / n * 1000:.3f} ms/job (round trip)")
        print(f"  per block of {_BLOCK}: best {min(blocks):.3f}, median "
              f"{statistics.median(blocks):.3f} ms/job")
        for tid, ms in sorted(per.items(), key=lambda kv: -kv[1]):
            label = "main" if tid == pid else names[tid]
            print(f"    {label:<14} {ms:.3f} ms/job")
        if args.profile:
            [prof] = root.glob("host-*.prof")
            stats = pstats.Stats(str(prof))
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(45)
            stats.print_callees(r"serve|execute_job|_execute|staging.py:\d+\(__init__\)|staging.py.*close|_make_dir")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Control API benchmark: Ping latency, submitting 100,000 jobs, ListJobs with 100,000 jobs
queued, and the sentinel's memory at 100,000 jobs.

A real sentinel in a temporary home with NO workers, so every submitted job stays QUEUED
(the worst case for listing: nothing ever leaves the queue). Anchor, measured in the same
run: a raw ZMQ DEALER/ROUTER round trip with no codec, no signing, no handler.

Goals (issue 3): Ping p50 <= 1 ms, ListJobs(limit=100) <= 20 ms with 100,000 jobs queued,
submitting 100,000 jobs <= 10 s. A benchmark, not a test: it prints figures and exits 0.

    .venv/bin/python benchmarks/control_api.py [--jobs 100000] [--pings 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import zmq  # noqa: E402

from casparian_nb.client import ControlClient  # noqa: E402
from casparian_nb.config import load_settings  # noqa: E402
from casparian_nb.launcher import LocalCluster  # noqa: E402

PLUGIN = '''name = "tiny"
version = "1.0.0"
def parse(path, ctx=None):
    return None
'''


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def zmq_anchor(n: int) -> list[float]:
    """Raw DEALER -> ROUTER -> DEALER echo over tcp loopback, no casparian code at all."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def echo() -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                router.send_multipart(router.recv_multipart())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    times = []
    for i in range(n + 50):
        start = time.perf_counter()
        dealer.send(b"ping")
        dealer.recv()
        if i >= 50:
            times.append(time.perf_counter() - start)
    stop.set()
    t.join()
    ctx.destroy(linger=0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--lists", type=int, default=200)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-ctl-"))
    home = tmp / "home"
    settings = load_settings(home)
    plugin = tmp / "tiny.py"
    plugin.write_text(PLUGIN)
    inputs = tmp / "in"
    inputs.mkdir()
    t0 = time.perf_counter()
    files = []
    for i in range(args.jobs):
        p = inputs / f"f{i:06d}.txt"
        p.write_bytes(b"%d\n" % i)
        files.append(str(p))
    print(f"created {args.jobs:,} input files in {time.perf_counter() - t0:.1f}s ({inputs})")

    cluster = LocalCluster(settings, workers=0)
    info = cluster.start()
    sentinel = psutil.Process(info.pid)
    try:
        with ControlClient(info, timeout=300) as ctl:
            rss_idle = sentinel.memory_info().rss
            anchor = zmq_anchor(args.pings)
            for _ in range(100):
                ctl.ping()
            pings = []
            for _ in range(args.pings):
                start = time.perf_counter()
                ctl.ping()
                pings.append(time.perf_counter() - start)

            start = time.perf_counter()
            reply = ctl.submit(plugin, files)
            submit_s = time.perf_counter() - start
            assert len(reply["job_ids"]) == args.jobs, "not every job was queued"
            rss_full = sentinel.memory_info().rss

            stats = ctl.queue_stats()
            assert stats["queued"] == args.jobs, stats
            lists, filtered, deep, stat_times = [], [], [], []
            for i in range(args.lists):
                start = time.perf_counter()
                page = ctl.list_jobs(limit=100)
                lists.append(time.perf_counter() - start)
                start = time.perf_counter()
                ctl.list_jobs(status="QUEUED", limit=100, offset=(i * 100) % args.jobs)
                filtered.append(time.perf_counter() - start)
                start = time.perf_counter()
                ctl.list_jobs(limit=100, offset=args.jobs - 100)
                deep.append(time.perf_counter() - start)
                start = time.perf_counter()
                ctl.queue_stats()
                stat_times.append(time.perf_counter() - start)
            assert len(page["jobs"]) == 100 and page["total"] == args.jobs
            start = time.perf_counter()
            ctl.get_job(reply["job_ids"][len(files) // 2])
            get_s = time.perf_counter() - start
            ping_after = []
            for _ in range(200):
                start = time.perf_counter()
                ctl.ping()
                ping_after.append(time.perf_counter() - start)
    finally:
        cluster.stop()

    # Restart on the same home: the new sentinel reloads all queued jobs before it serves.
    start = time.perf_counter()
    again = LocalCluster(settings, workers=0)
    info = again.start()
    try:
        with ControlClient(info, timeout=300) as ctl:
            ctl.ping()
            restart_s = time.perf_counter() - start
            assert ctl.queue_stats()["queued"] == args.jobs
            rss_restart, hwm_restart = _rss_and_peak(info.pid)
    finally:
        again.stop()

    p50 = statistics.median(pings)
    a50 = statistics.median(anchor)
    n = args.jobs
    print()
    print(f"control API, sentinel with {n:,} jobs queued, no workers "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(f"{'measure':<44} {'p50':>11} {'p90':>11} {'max':>11}   goal")
    print(f"{'raw zmq round trip (anchor)':<44} {ms(a50)} {ms(pct(anchor, .9))} "
          f"{ms(max(anchor))}")
    print(f"{'Ping (signed, validated, handled)':<44} {ms(p50)} {ms(pct(pings, .9))} "
          f"{ms(max(pings))}   <= 1 ms   ({p50 / a50:.1f}x anchor)")
    print(f"{f'Ping with {n:,} jobs queued':<44} {ms(statistics.median(ping_after))} "
          f"{ms(pct(ping_after, .9))} {ms(max(ping_after))}")
    print(f"{'ListJobs(limit=100)':<44} {ms(statistics.median(lists))} {ms(pct(lists, .9))} "
          f"{ms(max(lists))}   <= 20 ms")
    print(f"{'ListJobs(status=QUEUED, limit=100, offset)':<44} "
          f"{ms(statistics.median(filtered))} {ms(pct(filtered, .9))} {ms(max(filtered))}")
    print(f"{f'ListJobs(limit=100, offset={n - 100:,})':<44} "
          f"{ms(statistics.median(deep))} {ms(pct(deep, .9))} {ms(max(deep))}")
    print(f"{'GetQueueStats':<44} {ms(statistics.median(stat_times))} "
          f"{ms(pct(stat_times, .9))} {ms(max(stat_times))}")
    print(f"{'GetJob':<44} {ms(get_s)}")
    print()
    print(f"submit {n:,} jobs (one SubmitJobs request): {submit_s:6.2f} s  "
          f"= {n / submit_s:,.0f} jobs/s   goal <= 10 s")
    print(f"sentinel RSS: {rss_idle / 2**20:6.1f} MiB idle, {rss_full / 2**20:6.1f} MiB with "
          f"{n:,} jobs queued (+{(rss_full - rss_idle) / n:,.0f} bytes/job)")
    print(f"restart with {n:,} jobs queued: first Pong after {restart_s:6.2f} s (process start "
          f"included); RSS {rss_restart / 2**20:.1f} MiB, peak {hwm_restart / 2**20:.1f} MiB")
    return 0


def _rss_and_peak(pid: int) -> tuple[int, int]:
    """Current and peak (VmHWM) resident set of a process, bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    kib = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    return kib["VmRSS"], kib["VmHWM"]


if __name__ == "__main__":
    sys.exit(main())

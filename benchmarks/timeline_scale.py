"""Timeline benchmark: how long a big tape takes to reach its first render, and its bytes.

Generates session-like tapes (``generate_tape``: a simulated queue on W workers x S slots,
jobs submitted in batches, ~4.4 events per job with some transient failures, retries,
cancels and permanent failures) of 10k, 100k and 1M events plus one of 100,000 jobs, then
times :func:`casparian_nb.tape.timeline_data.load_timeline` + ``timeline_payload`` (what
``cf.timeline(tape)`` does before its first comm message) from a cold cache and measures
that payload as JSON, then a zoom's payload (the tape's columns are kept: no re-read). Goal (issue 15): at 100,000 jobs, first render payload <= 2 s and <= 1 MB.

    PYTHONPATH=. .venv/bin/python benchmarks/timeline_scale.py [--events N ...] [--jobs N]
        [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from casparian_nb.tape import TapeWriter  # noqa: E402
from casparian_nb.tape.timeline_data import (  # noqa: E402
    clear_timeline_cache,
    load_timeline,
    timeline_payload,
)

GOAL_S = 2.0
GOAL_BYTES = 1_000_000
EVENTS_PER_JOB = 4.4  # measured on generate_tape's mix


def generate_tape(path: Path, jobs: int, *, workers: int = 16, slots: int = 4,
                  batch: int = 1000, never_dispatched: int = 0, seed: int = 7) -> int:
    """Write a tape of ``jobs`` jobs run by a simulated queue; returns the events written.

    Each job: JobQueued, JobDispatched, JobStarted and JobCompleted; 5% fail transiently
    (JobFailed will_retry, JobRetried, queued again), 2% are cancelled while running
    (CancelRequested, JobAborted), 2% fail for good. The last ``never_dispatched`` jobs are
    queued and aborted before any worker takes them. Times are simulated seconds (a fixed
    clock), so the tape is reproducible.
    """
    rng = random.Random(seed)
    out: list[tuple[float, int, str, dict[str, Any]]] = []  # (t, order, name, payload)
    order = 0

    def emit(t: float, name: str, payload: dict[str, Any]) -> None:
        nonlocal order
        out.append((t, order, name, payload))
        order += 1

    base = 1.8e9
    for w in range(workers):
        emit(base, "WorkerJoined", {"worker_id": f"w{w}", "slots": slots, "pid": 4000 + w})
    free: list[tuple[float, str]] = [(base, f"w{w}") for w in range(workers) for _ in range(slots)]
    heapq.heapify(free)
    ready: list[tuple[float, str]] = []  # (time queued, job id), in order
    runnable = jobs - never_dispatched
    # a batch about every 90% of the time the slots take to run one (mean run 1.6 s)
    every = 0.9 * batch * 1.6 / (workers * slots)
    for i in range(runnable):
        t_submit = base + (i // batch) * every
        jid = str(i + 1)
        emit(t_submit, "JobQueued", {"job_id": jid, "plugin_name": "orders",
                                     "input_file": f"/data/part-{jid}.csv"})
        ready.append((t_submit, jid))
    attempts: dict[str, int] = {}
    k = 0
    while k < len(ready):
        t_q, jid = ready[k]
        k += 1
        t_free, worker = heapq.heappop(free)
        t0 = max(t_free, t_q) + 0.001
        attempts[jid] = attempts.get(jid, 0) + 1
        emit(t0, "JobDispatched", {"job_id": jid, "worker_id": worker})
        emit(t0 + 0.002, "JobStarted", {"job_id": jid, "worker_id": worker})
        t1 = t0 + rng.uniform(0.2, 3.0)
        roll = rng.random()
        if roll < 0.05 and attempts[jid] == 1:
            emit(t1, "JobFailed", {"job_id": jid, "worker_id": worker, "error": "timeout",
                                   "error_kind": "transient", "will_retry": True})
            emit(t1 + 0.001, "JobRetried", {"job_id": jid, "retry_count": 1})
            ready.append((t1 + 0.5, jid))
        elif roll < 0.07:
            emit(t1 - 0.1, "CancelRequested", {"job_id": jid})
            emit(t1, "JobAborted", {"job_id": jid, "worker_id": worker, "reason": "cancelled"})
        elif roll < 0.09:
            emit(t1, "JobFailed", {"job_id": jid, "worker_id": worker, "error": "bad row",
                                   "error_kind": "permanent", "will_retry": False})
        else:
            emit(t1, "JobCompleted", {"job_id": jid, "worker_id": worker, "rows": 100,
                                      "duration_ms": round((t1 - t0) * 1000, 3)})
        heapq.heappush(free, (t1 + 0.001, worker))
    t_end = max(t for t, *_ in out) + 1.0
    for i in range(runnable, jobs):
        jid = str(i + 1)
        emit(t_end, "JobQueued", {"job_id": jid, "plugin_name": "orders"})
        emit(t_end + 0.5, "JobAborted", {"job_id": jid, "reason": "cancelled while queued"})
    out.sort(key=lambda e: (e[0], e[1]))
    times = iter([out[0][0]] + [e[0] for e in out])

    def clock() -> float:  # tape_started, each event, then tape_stopped at the last time
        return next(times, out[-1][0])

    with TapeWriter(path, producer="sentinel", redact=False, clock=clock) as tape:
        for _, _, name, payload in out:
            tape.domain(name, payload)
    return len(out) + 2


def measure(path: Path, repeat: int) -> tuple[float, float, int, dict[str, Any], float]:
    """Best wall and CPU time of ``repeat`` cold loads (nothing of the tape cached) to a first
    render payload (CPU time shows what a loaded machine's wall time hides), its JSON bytes,
    the payload, and the best wall time of a zoom (a tenth of the tape) once loaded."""
    best = cpu_best = zoom = float("inf")
    payload: dict[str, Any] = {}
    body = ""
    for _ in range(repeat):
        clear_timeline_cache()
        begin, cpu = time.perf_counter(), time.process_time()
        payload = timeline_payload(load_timeline(path))
        body = json.dumps(payload, separators=(",", ":"))
        best = min(best, time.perf_counter() - begin)
        cpu_best = min(cpu_best, time.process_time() - cpu)
        begin = time.perf_counter()
        end = payload["duration_s"]
        json.dumps(timeline_payload(load_timeline(path), (0.45 * end, 0.55 * end)))
        zoom = min(zoom, time.perf_counter() - begin)
    return best, cpu_best, len(body.encode()), payload, zoom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--jobs", type=int, default=100_000, help="the goal's tape (jobs)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the generated tapes in this folder")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cf-timeline-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = [(f"{n:,} events", int(n / EVENTS_PER_JOB)) for n in args.events]
    cases.append((f"{args.jobs:,} jobs (goal)", args.jobs))
    print(f"load average {os.getloadavg()[0]:.2f}; goal at {args.jobs:,} jobs: first render "
          f"payload <= {GOAL_S:g} s and <= {GOAL_BYTES / 1e6:g} MB")
    for label, jobs in cases:
        path = folder / f"timeline-{jobs}.tape"
        if not path.exists():
            generate_tape(path, jobs)
        seconds, cpu, size, payload, zoom = measure(path, args.repeat)
        line = (f"{label:>22}: {payload['events']:>9,} events, {payload['jobs']:>7,} jobs, "
                f"{len(payload['lanes']):>3} lanes, mode {payload['mode']:<4}  "
                f"{seconds:6.2f} s (cpu {cpu:5.2f} s)  {size / 1e6:6.3f} MB  "
                f"zoom {zoom:5.2f} s")
        if label.endswith("(goal)"):
            ok = seconds <= GOAL_S and size <= GOAL_BYTES
            line += "  " + ("meets the goal" if ok else "MISSES the goal")
        print(line, flush=True)
        if not args.keep:
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

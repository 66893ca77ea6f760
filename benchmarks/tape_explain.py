"""Tape benchmark: writer throughput, and ``tape explain --format json`` against DuckDB.

1. Generate a realistic tape of ``--events`` events (default 1,000,000; ~100,000 jobs)
   with :class:`TapeWriter` (redaction on) and report the events/s it sustained.
2. Run ``python -m casparian_nb.tape explain FILE --format json`` as a subprocess, output to
   /dev/null; wall time and the tool's own peak RSS (``os.wait4`` in a small fresh wrapper,
   because ``ru_maxrss`` carries over through ``exec`` from whatever forked the tool).
3. Run DuckDB ``SELECT count(*) FROM read_json(FILE, format='newline_delimited')`` the same
   way, in the same run, as the anchor.

Goals (issue 4): explain <= 3x DuckDB's time, explain peak RSS <= 300 MB, writer >= 100,000
events/s. A benchmark, not a test: it prints figures and ratios, and exits 0.

    PYTHONPATH=. .venv/bin/python benchmarks/tape_explain.py [--events N] [--keep FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from casparian_nb.tape import TapeWriter  # noqa: E402

OUTPUTS = ("orders", "order_lines", "customers", "orders_quarantine", "errors")


def generate(path: Path, events: int, *, seed: int = 7) -> tuple[int, int, float]:
    """Write a session-like tape of about ``events`` events (a window of jobs may overshoot).

    Per job: JobQueued (with input path and sink, hashed), JobDispatched, JobStarted, one
    MaterializationRecorded per output (5), JobCompleted — and on some jobs a transient
    failure + retry (10%), a cancel (2%), a permanent failure (3%) or a skip (1%). Jobs are
    submitted 1,000 at a time by a Submit command, run 32 at a time on 8 workers.
    Returns ``(events written, jobs, seconds spent generating and writing)``.
    """
    rng = random.Random(seed)
    spent = 0.0
    jobs = 0
    with TapeWriter(path, producer="sentinel") as t:
        emit = t.domain
        begin = time.perf_counter()
        for w in range(8):
            emit("WorkerJoined", {"worker_id": f"w{w}", "slots": 4, "pid": 5000 + w})
        sink = "parquet:///srv/casparian/home/output"
        while t.next_seq < events - 40:
            cmd, corr = t.command("Submit", {"plugin": "/srv/plugins/orders.py",
                                             "inputs": ["/srv/data/batch/*.csv"],
                                             "sink": sink, "mode": "append"})
            batch = [str(jobs + i + 1) for i in range(1000)]
            jobs += len(batch)
            for jid in batch:
                emit("JobQueued", {"job_id": jid, "plugin_name": "orders",
                                   "plugin_version": "1.4.2",
                                   "input_file": f"/srv/data/batch/part-{jid}.csv",
                                   "priority": 0, "sink": sink}, correlation_id=corr)
            t.succeeded(cmd, corr, {"job_ids": len(batch)})
            for start in range(0, len(batch), 32):
                window = batch[start : start + 32]
                for n, jid in enumerate(window):
                    emit("JobDispatched", {"job_id": jid, "plugin_name": "orders",
                                           "plugin_version": "1.4.2",
                                           "worker_id": f"w{n % 8}", "attempt": 1})
                    emit("JobStarted", {"job_id": jid, "worker_id": f"w{n % 8}"})
                for n, jid in enumerate(window):
                    _finish(emit, rng, jid, f"w{n % 8}", sink)
                if t.next_seq >= events - 40:
                    break
        spent = time.perf_counter() - begin
    return t.next_seq, jobs, spent


def _finish(emit, rng: random.Random, jid: str, wid: str, sink: str) -> None:  # type: ignore[no-untyped-def]
    r = rng.random()
    if r < 0.01:
        emit("JobSkipped", {"job_id": jid, "input_file": f"/srv/data/batch/part-{jid}.csv",
                            "reason": "unchanged since last run"})
        return
    if r < 0.03:
        emit("CancelRequested", {"job_id": jid, "state": "running"})
        emit("JobAborted", {"job_id": jid, "worker_id": wid, "reason": "cancelled by user",
                            "duration_ms": 35})
        return
    if r < 0.06:
        emit("JobFailed", {"job_id": jid, "worker_id": wid, "error_kind": "permanent",
                           "error": f"ValueError: bad header in /srv/data/batch/part-{jid}.csv",
                           "retry_count": 0, "will_retry": False, "duration_ms": 12})
        return
    if r < 0.16:
        err = "TransientError: connection reset"
        emit("JobFailed", {"job_id": jid, "worker_id": wid, "error_kind": "transient",
                           "error": err, "retry_count": 0, "will_retry": True,
                           "duration_ms": 20})
        emit("JobRetried", {"job_id": jid, "retry_count": 1, "delay_ms": 1000, "error": err})
        emit("JobDispatched", {"job_id": jid, "plugin_name": "orders",
                               "plugin_version": "1.4.2", "worker_id": wid, "attempt": 2})
        emit("JobStarted", {"job_id": jid, "worker_id": wid})
    rows = {name: rng.randrange(0, 5000) for name in OUTPUTS}
    for name in OUTPUTS:
        emit("MaterializationRecorded", {"job_id": jid, "output_name": name, "table": name,
                                         "rows": rows[name], "sink": sink})
    emit("JobCompleted", {"job_id": jid, "worker_id": wid, "rows": sum(rows.values()),
                          "quarantine_rows": rows["orders_quarantine"], "outputs": rows,
                          "duration_ms": rng.randrange(5, 900)})


def writer_only(source: Path, out: Path, limit: int = 200_000) -> float:
    """Events/s of the writer alone: re-emit the first ``limit`` events of ``source`` (built
    in memory first, so payload construction is not timed). Redaction still runs on every
    field by schema; only the values are already hashes."""
    events = []
    with source.open(encoding="utf-8") as fh:
        for text in fh:
            obj = json.loads(text)
            en = obj["event_name"]
            if "name" in en:
                events.append((en["type"], en["name"], obj["payload"], obj["correlation_id"]))
            if len(events) >= limit:
                break
    # The pre-built events are the producer's data, not the writer's: keep the collector
    # from re-scanning them on every generation-2 pass while the writer is timed.
    gc.collect()
    gc.freeze()
    with TapeWriter(out, producer="bench") as tape:
        emit = tape.emit
        begin = time.perf_counter()
        for kind, name, payload, corr in events:
            emit(kind, name, payload, correlation_id=corr)
        spent = time.perf_counter() - begin
    gc.unfreeze()
    return len(events) / spent


# ru_maxrss survives exec(): a child forked from this (large) process would report our RSS.
# A fresh, small interpreter forks and execs the tool instead, and reports its rusage.
_WRAPPER = """
import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
print(f"{wall} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
"""


def run_child(argv: list[str]) -> tuple[float, float, int]:
    """Run a tool to completion: (wall seconds, its peak RSS in MB, exit status)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], env=env, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall, rss_kib, status = out.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kib) / 1024.0, int(status)  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool (best kept)")
    ap.add_argument("--keep", type=Path, help="write the tape here and keep it")
    ap.add_argument("--writer-only", nargs=2, type=Path, metavar=("SRC", "OUT"),
                    help=argparse.SUPPRESS)  # internal: one writer measurement, fresh process
    args = ap.parse_args(argv)
    if args.writer_only:
        print(writer_only(*args.writer_only))
        return 0

    tmp = tempfile.TemporaryDirectory(prefix="tape_bench_")
    path = args.keep or Path(tmp.name) / "bench.tape"
    n, jobs, spent = generate(path, args.events)
    size_mb = path.stat().st_size / 1e6
    print(f"tape: {n:,} events, {jobs:,} jobs, {size_mb:.1f} MB")
    print(f"generate + write: {n / spent:,.0f} events/s ({spent:.2f} s, payloads built in "
          "Python per event)")
    # In a fresh process per run (best kept), as a producer would run it: this process's
    # heap after generating a million events is not what a sentinel's looks like.
    rates = [float(subprocess.run(
        [sys.executable, __file__, "--writer-only", str(path), str(Path(tmp.name) / "w.tape")],
        check=True, capture_output=True, text=True).stdout) for _ in range(max(1, args.repeat))]
    print(f"writer alone: {max(rates):,.0f} events/s best of {len(rates)} "
          f"(all: {', '.join(f'{r:,.0f}' for r in rates)}; redaction on, one os.write per "
          "event)  goal >= 100,000/s")

    py = sys.executable
    explain = [py, "-m", "casparian_nb.tape", "explain", str(path), "--format", "json"]
    quoted = str(path).replace("'", "''")
    duck = [py, "-c", "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM read_json("
            f"'{quoted}', format='newline_delimited')\").fetchall())"]
    results: dict[str, tuple[float, float]] = {}
    for label, cmd in (("duckdb count(*)", duck), ("tape explain --format json", explain)):
        runs = [run_child(cmd) for _ in range(max(1, args.repeat))]
        bad = [r for r in runs if r[2] != 0]
        if bad:
            print(f"{label}: exit status {bad[0][2]}")
            return 0
        results[label] = (min(r[0] for r in runs), max(r[1] for r in runs))

    base_t, _ = results["duckdb count(*)"]
    print()
    print(f"{'tool':<30} {'wall s':>8} {'peak RSS MB':>12} {'x DuckDB':>9}")
    for label, (wall, rss) in results.items():
        print(f"{label:<30} {wall:>8.3f} {rss:>12.1f} {wall / base_t:>9.2f}")
    wall, rss = results["tape explain --format json"]
    print()
    print(f"explain vs DuckDB: {wall / base_t:.2f}x (goal <= 3x); "
          f"explain peak RSS {rss:.0f} MB (goal <= 300 MB)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

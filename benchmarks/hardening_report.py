"""Hardening report (issue 7): run ``tests/hardening`` at full size and print the table.

    python benchmarks/hardening_report.py [--trials 10] [--fuzz-messages 10000] [-- PYTEST ARGS]

Runs the suite in a child pytest (real sentinel, worker and plugin-host processes) with
``CASPARIAN_HARDENING_TRIALS`` trials per fault scenario and at least
``CASPARIAN_FUZZ_MESSAGES`` hostile messages, collects every trial's audit and prints one row
per scenario: trials, jobs, jobs lost, jobs completed twice, partial/stray outputs visible,
orphan processes, jobs in an unexpected final state, staged debris left on disk, and trials
after which the sentinel did not answer Ping — then the fuzzer's message count. Exit status 0
only if pytest passed (routed bugs are strict xfails) and lost, duplicated, partial, orphans,
unexpected and down are all zero.

The rows include the staging scenarios of issue 20 (``tests/hardening/test_staging_window.py``):
a worker killed while its host stages, and the sentinel killed at four exact points between
a job's staged outputs and their record in the state DB (Parquet and DuckDB sinks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hardening.harness import format_table, summarise  # noqa: E402

MUST_BE_ZERO = ("lost", "duplicated", "partial", "orphans", "unexpected", "down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per fault scenario")
    parser.add_argument("--fuzz-messages", type=int, default=10_000,
                        help="hostile messages the fuzzer sends at least")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cf-hardening-") as tmp:
        results = Path(tmp) / "results.jsonl"
        env = {**os.environ, "CASPARIAN_HARDENING_TRIALS": str(args.trials),
               "CASPARIAN_FUZZ_MESSAGES": str(args.fuzz_messages),
               "CASPARIAN_HARDENING_RESULTS": str(results)}
        cmd = [sys.executable, "-m", "pytest", "tests/hardening", "-q", "-rxXf",
               "-p", "no:cacheprovider", *args.pytest_args]
        print(f"$ CASPARIAN_HARDENING_TRIALS={args.trials} "
              f"CASPARIAN_FUZZ_MESSAGES={args.fuzz_messages} {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        elapsed = time.monotonic() - started
        rows = [json.loads(line) for line in results.read_text().splitlines()] \
            if results.exists() else []
    print(f"\n== hardening report: {args.trials} trial(s) per fault scenario, "
          f"{elapsed:.0f} s, pytest exit {code} ==")
    print(format_table(rows) or "(no results recorded)")
    table, _ = summarise(rows)
    bad = {name: {k: v for k, v in counts.items() if k in MUST_BE_ZERO and v}
           for name, counts in table}
    bad = {name: counts for name, counts in bad.items() if counts}
    if bad:
        print(f"NOT ZERO: {bad}")
    return 1 if code or bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())

"""What several benchmarks share (imported as ``benchmarks._harness``; not a benchmark)."""

from __future__ import annotations

import time
from typing import Any


def wait_completed(ctl: Any, before: int, jobs: int, poll: float) -> None:
    """Poll ``ctl.queue_stats()`` until ``jobs`` more jobs than ``before`` completed;
    RuntimeError as soon as any job failed or was aborted."""
    while True:
        stats = ctl.queue_stats()
        if stats["completed"] - before >= jobs:
            return
        if stats["failed"] or stats["aborted"]:
            raise RuntimeError(f"jobs failed: {stats}")
        time.sleep(poll)

"""The demo: a sample ``orders`` plugin, generated sample files, and :func:`run_demo`.

``casparian demo`` (and ``make demo``) writes the plugin to ``<home>/plugins/orders.py`` and
sample CSV files to ``<home>/demo/data``, then runs them on a local sentinel and workers. A
few rows in every file are deliberately bad so the quarantine output has something to show.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import CasparianError
from .protocol import JobStatus

__all__ = ["SAMPLE_PLUGIN", "DemoResult", "outputs_query", "run_demo", "write_sample_data",
           "write_sample_plugin"]

SAMPLE_PLUGIN = '''\
"""Sample parser: order CSV exports -> an `orders` table (+ quarantine for bad rows)."""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

name = "orders"
version = "1.0.0"
outputs = {
    "orders": {
        "columns": [
            {"name": "order_id", "type": "int64"},
            {"name": "customer", "type": "string"},
            {"name": "amount", "type": "float64"},
            {"name": "currency", "type": "string"},
            {"name": "ordered_at", "type": "timestamp"},
        ]
    }
}


def parse(path, ctx=None):
    raw = pv.read_csv(path, convert_options=pv.ConvertOptions(
        column_types={c: pa.string() for c in ["order_id", "customer", "amount", "currency", "ordered_at"]}))
    ok_amount = pc.match_substring_regex(raw["amount"], r"^-?[0-9]+(\\.[0-9]+)?$")
    errors = pc.if_else(ok_amount, pa.scalar(None, pa.string()),
                        pc.binary_join_element_wise("bad amount: ", raw["amount"], ""))
    amount = pc.if_else(ok_amount, raw["amount"], pa.scalar(None, pa.string()))
    return pa.table({
        "order_id": pc.cast(raw["order_id"], pa.int64()),
        "customer": raw["customer"],
        "amount": pc.cast(amount, pa.float64()),
        "currency": raw["currency"],
        "ordered_at": pc.strptime(raw["ordered_at"], format="%Y-%m-%dT%H:%M:%S", unit="s"),
        "_cf_row_error": errors,
    })
'''

_CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]
_CURRENCIES = ["EUR", "USD", "GBP"]


def write_sample_plugin(plugins_dir: Path) -> Path:
    plugins_dir.mkdir(parents=True, exist_ok=True)
    path = plugins_dir / "orders.py"
    path.write_text(SAMPLE_PLUGIN, encoding="utf-8")
    return path


def write_sample_data(data_dir: Path, *, files: int = 12, rows: int = 500, seed: int = 7) -> list[Path]:
    """Deterministic sample order exports; every 97th row has a malformed amount."""
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    order_id = 1
    for f in range(files):
        path = data_dir / f"orders_{2026}_{f + 1:02d}.csv"
        lines = ["order_id,customer,amount,currency,ordered_at"]
        for _ in range(rows):
            amount = f"{rng.uniform(5, 500):.2f}" if order_id % 97 else "12.50EUR"
            day = 1 + (order_id % 28)
            lines.append(f"{order_id},{rng.choice(_CUSTOMERS)},{amount},{rng.choice(_CURRENCIES)},"
                         f"2026-{(f % 12) + 1:02d}-{day:02d}T{order_id % 24:02d}:00:00")
            order_id += 1
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


@dataclass(frozen=True)
class DemoResult:
    """What a demo run came to: its jobs (rows of the state DB) and where things are."""

    jobs: tuple[dict[str, Any], ...]
    duration_s: float
    output_dir: Path
    #: The newest sentinel tape of the home (the demo's), when there is one.
    sentinel_tape: Path | None

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["status"] == JobStatus.COMPLETED]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j["status"] == JobStatus.SKIPPED]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Jobs that neither completed nor were skipped."""
        return [j for j in self.jobs
                if j["status"] not in (JobStatus.COMPLETED, JobStatus.SKIPPED)]

    @property
    def rows(self) -> int:
        return sum(int(j.get("rows") or 0) for j in self.completed)

    @property
    def quarantine_rows(self) -> int:
        return sum(int(j.get("quarantine_rows") or 0) for j in self.completed)


def run_demo(settings: Settings, *, files: int = 12, workers: int = 2, timeout: float = 300.0,
             force: bool = False, say: Callable[[str], object] = print,
             progress: Callable[[dict[str, int]], object] | None = None) -> DemoResult:
    """Start a sentinel and ``workers`` workers, submit the sample plugin over ``files``
    sample files, wait (at most ``timeout`` seconds) until every job is final, stop cleanly.

    ``say`` gets a line at each step; ``progress`` the queue counts while jobs run.
    """
    from .client import ControlClient
    from .launcher import LocalCluster
    from .store import StateReader

    plugin = write_sample_plugin(settings.plugins_dir)
    data_dir = settings.home / "demo" / "data"
    inputs = write_sample_data(data_dir, files=files)
    say(f"casparian demo: {len(inputs)} sample files in {data_dir}")
    say(f"  plugin: {plugin}")
    cluster = LocalCluster(settings, workers=workers)
    started = time.perf_counter()
    info = cluster.start()
    say(f"  sentinel pid {info.pid} + {workers} workers on {info.control}")
    try:
        with ControlClient(info, timeout=settings.request_timeout) as client:
            reply = client.submit(plugin=str(plugin), inputs=[str(f) for f in inputs],
                                  force=force)
            say(f"  submitted {len(reply['job_ids'])} job(s)"
                + (f", skipped {len(reply['skipped'])} already materialized"
                   if reply["skipped"] else ""))
            deadline = time.monotonic() + timeout
            while reply["job_ids"]:
                stats = client.queue_stats()
                if progress is not None:
                    progress(stats)
                if stats[JobStatus.QUEUED.lower()] + stats[JobStatus.RUNNING.lower()] == 0:
                    break
                if time.monotonic() > deadline:
                    raise CasparianError(f"demo jobs did not finish within {timeout:.0f}s")
                time.sleep(0.1)
    finally:
        cluster.stop()
    with StateReader.open(settings.state_db) as reader:
        jobs = reader.list_jobs(submission_id=reply["submission_id"], limit=100_000)
    tapes = sorted(settings.tapes_dir.glob("sentinel-*.tape"), key=lambda p: p.stat().st_mtime)
    return DemoResult(tuple(jobs), time.perf_counter() - started, settings.output_dir,
                      tapes[-1] if tapes else None)


def outputs_query(output_dir: Path) -> str:
    """A DuckDB query over every promoted ``orders`` Parquet file (lineage columns included):
    what ``casparian demo`` shows to prove the outputs are queryable."""
    files = f"{output_dir}/orders_[0-9a-f]*.parquet"
    return (f"SELECT customer, count(*) AS orders, round(sum(amount), 2) AS total, "
            f"count(DISTINCT _cf_source_hash) AS source_files FROM read_parquet('{files}') "
            f"GROUP BY customer ORDER BY customer")

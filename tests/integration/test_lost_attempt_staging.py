"""Issue 20 §1: crashes and stops leave no staging behind.

A worker killed with its job mid-staging: its plugin host dies with it (the kernel kills it
as the worker exits), the sentinel removes the lost attempt's staging directory when it
re-queues the job — recording that on its tape — and the job completes on the other worker.
Whether the host had staged anything when the worker died is a race, so the scenario runs
many times in one test, the kill landing at a different moment of the staging each time.
A clean stop sweeps whatever no promotion needs and keeps what a parked promotion does.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import EventName, StagingRemovalCause
from casparian_nb.sinks.staging import attempt_root, job_dirname
from tests.conftest import running, wait_until
from tests.integration.test_sentinel import FAST, control, wait_final, wait_job
from tests.integration.test_sentinel_recovery import children_of, kill9

ROUNDS = 20
#: A plugin that stages for ~0.4 s: 20 batches, 20 ms apart — a window to land a kill in.
SLOW_STAGER = """
import time

import pyarrow as pa

from casparian_nb import Output

name = "slow_stager"
version = "1.0.0"


def parse(path, ctx=None):
    tag = open(path).read().strip()
    for i in range(20):
        ids = list(range(i * 100, (i + 1) * 100))
        yield Output("rows", pa.table({"id": pa.array(ids, pa.int64()),
                                       "tag": pa.array([tag] * len(ids))}))
        time.sleep(0.02)
"""


def job_staging(settings: Settings, job_id: int, attempt: int) -> Path:
    return attempt_root(settings.staging_dir, attempt) / job_dirname(str(job_id))


def staged_job_dirs(settings: Settings) -> list[Path]:
    """Every job directory under ``staging/attempt-*``."""
    return sorted(p for a in settings.staging_dir.glob("attempt-*") for p in a.iterdir())


def staging_removed(settings: Settings) -> list[dict[str, object]]:
    """The StagingRemoved payloads of every sentinel tape of the home."""
    found = []
    for tape in sorted(settings.tapes_dir.glob("sentinel-*.tape")):
        for line in tape.read_text().splitlines():
            if f'"{EventName.STAGING_REMOVED}"' in line:
                found.append(json.loads(line)["payload"])
    return found


def replace_dead_workers(cluster: LocalCluster) -> None:
    """Forget killed workers and start one in place of each (waits until it joined)."""
    dead = [w for w in cluster.workers if w.poll() is not None]
    cluster.workers = [w for w in cluster.workers if w.poll() is None]
    for _ in dead:
        cluster.add_worker(slots=1)


def test_a_worker_killed_mid_job_leaves_no_staging_of_its_attempt(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, tmp_path: Path) -> None:
    plugin = tmp_path / "slow_stager.py"
    plugin.write_text(SLOW_STAGER)
    rng = random.Random(20)
    cluster = cluster_factory(workers=2, **FAST)
    sink = tmp_path / "out"
    ids: list[int] = []
    started = time.monotonic()
    with control(cluster) as ctl:
        for round_ in range(ROUNDS):
            job_input = tmp_path / f"in_{round_:02d}.txt"  # new content: never skipped as done
            job_input.write_text(f"round {round_}\n")
            job_id = ctl.submit(plugin, [str(job_input)],
                                sink=f"parquet://{sink}")["job_ids"][0]
            ids.append(job_id)
            row = wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the job to start")
            victim = next(w["pid"] for w in ctl.list_workers()
                          if w["worker_id"] == row["worker_id"])
            hosts = children_of(victim)
            # The kill lands while the host writes its staging: from its first batch on.
            first = job_staging(settings, job_id, 1)
            wait_until(first.exists, 10, interval=0.002, message="the job to stage")
            time.sleep(rng.uniform(0.0, 0.3))
            kill9(victim)
            done = wait_final(settings, [job_id], timeout=30, status="COMPLETED")[job_id]
            assert done["worker_id"] != row["worker_id"] and done["attempt"] == 2
            assert not first.exists(), f"round {round_}: the lost attempt's staging is left"
            assert not [h for h in hosts if running(h)], \
                f"round {round_}: the dead worker's plugin hosts outlived it"
            replace_dead_workers(cluster)
    elapsed = time.monotonic() - started
    # Each lost attempt had staged (the kill came after its first batch) and its removal is
    # on the tape, once, with the path hashed like every path.
    removed = [p for p in staging_removed(settings) if p["cause"] == StagingRemovalCause.WORKER_LOST]
    assert sorted(int(str(p["job_id"])) for p in removed) == sorted(ids)
    assert all(p["attempt"] == 1 and "staging" not in str(p["path"]) for p in removed)
    # Each job's 2,000 rows were promoted once, by its second attempt.
    owners = [pq.read_table(p).column("_cf_job_id").unique().to_pylist()
              for p in sorted(sink.glob("rows_*.parquet"))]
    assert sorted(o[0] for o in owners if len(o) == 1) == sorted(str(i) for i in ids)
    assert all(pq.read_metadata(p).num_rows == 2000 for p in sink.glob("rows_*.parquet"))
    assert not staged_job_dirs(settings), "staging left behind after the run"
    cluster.stop()
    assert not staged_job_dirs(settings), "staging left behind after a clean stop"
    assert elapsed < 90, f"{ROUNDS} rounds took {elapsed:.0f}s"


def test_a_clean_stop_sweeps_the_staging_but_keeps_a_parked_promotion(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    """A leftover no job will promote (here: planted, as a silent remote worker's late write
    would be) is removed when the sentinel stops, and recorded; the staging of a promotion
    parked behind a locked DuckDB file is kept for the next start, which promotes it."""
    db = tmp_path / "out.duckdb"
    lock = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # what another casparian committer would hold
    try:
        first = cluster_factory(workers=1, **FAST)
        job_input = tmp_path / "in.txt"
        job_input.write_text("parked\n")
        with control(first) as ctl:
            job_id = ctl.submit(fixture_plugin, [str(job_input)],
                                sink=f"duckdb://{db}")["job_ids"][0]
        wait_job(settings, job_id, lambda j: j["staged_json"], 20, "the receipt to be recorded")
        parked = job_staging(settings, job_id, 1)
        stray = job_staging(settings, 999, 3)
        stray.mkdir(parents=True)
        (stray / "fixture_output.parquet").write_bytes(b"PAR1")
        first.stop()
        assert parked.is_dir() and not stray.exists(), staged_job_dirs(settings)
        swept = [p for p in staging_removed(settings) if p["cause"] == StagingRemovalCause.STOP]
        assert [p["attempt"] for p in swept] == [3]
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    second = cluster_factory(workers=1, **FAST)
    done = wait_final(settings, [job_id], timeout=30, status="COMPLETED")[job_id]
    assert done["attempt"] == 1  # promoted from what was kept, not run again
    second.stop()
    assert not staged_job_dirs(settings)

"""The hardening audit can fail: a lost job, a job completed twice, partial and stray outputs
and an orphan process are each caught (otherwise the table's zeros would prove nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from casparian_nb.config import Settings
from casparian_nb.sinks import job_hash16
from casparian_nb.store import NewJob, StateStore
from tests.conftest import wait_until
from tests.hardening.harness import ProcessTracker, audit, format_table


def _output(sink: Path, job_id: int, rows: int, owner: int | None = None, name: str = "") -> None:
    sink.mkdir(exist_ok=True)
    table = pa.table({"id": list(range(rows)), "_cf_job_id": [str(owner or job_id)] * rows})
    pq.write_table(table, sink / (name or f"o_{job_hash16(str(job_id))}.parquet"))


def test_the_audit_catches_every_violation(settings: Settings, tmp_path: Path) -> None:
    sink = tmp_path / "out"
    with StateStore.open(settings.state_db) as store:
        ids = store.insert_jobs([NewJob("p", f"/in/{i}") for i in range(5)])
        for job_id in ids[:4]:
            store.claim_job(job_id, "w")
        store.complete_job(ids[0], rows=10)  # fine
        store.complete_job(ids[1], rows=10)  # its file holds 7 rows: partial
        store.fail_job(ids[2], "boom")  # FAILED, yet its output is visible
        # ids[3] stays RUNNING and ids[4] QUEUED: lost
    _output(sink, ids[0], 10)
    _output(sink, ids[1], 7)
    _output(sink, ids[2], 3)
    _output(sink, ids[0], 10, name=f"o2_{job_hash16(str(ids[0]))}.parquet", owner=ids[1])
    (sink / f".o_{job_hash16(str(ids[3]))}.parquet.cf-tmp").write_bytes(b"half")
    (sink / f"o_{job_hash16('999')}.parquet").write_bytes(b"PAR1 truncated")
    settings.tapes_dir.mkdir(exist_ok=True)
    completed = json.dumps({"event_name": {"name": "JobCompleted"}, "payload": {"job_id": ids[0]}})
    (settings.tapes_dir / "sentinel-x.tape").write_text(f"{completed}\n{completed}\n")
    a = audit(settings, ids, sink=sink, expect={"/in/": "COMPLETED"})
    assert len(a.lost) == 2, a.lost
    assert any("completed 2 times" in d for d in a.duplicated), a.duplicated
    assert any(f"rows of jobs ['{ids[1]}']" in d for d in a.duplicated), a.duplicated
    assert any("7 rows on disk" in p for p in a.partial), a.partial
    assert any("output visible" in p for p in a.partial), a.partial
    assert any("cf-tmp" in p for p in a.partial) and any("unreadable" in p for p in a.partial)
    assert len(a.unexpected) == 1 and not a.clean
    assert "lost" in format_table([{"scenario": "x", "jobs": 5, "lost": 2}])


def test_the_tracker_finds_a_process_whose_parent_died(tmp_path: Path) -> None:
    tracker = ProcessTracker()
    try:
        # A child that starts a grandchild and dies: the grandchild is re-parented (orphan).
        code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                "'import time; time.sleep(60)']); print(p.pid, flush=True); time_ = "
                "__import__('time'); time_.sleep(0.5)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        wait_until(lambda: grandchild in tracker.seen, 5, message="the tracker to see it")
        child.wait(10)
        time.sleep(0.1)
        assert tracker.orphans() == [grandchild]
        assert tracker.wait_no_orphans(timeout=0.2) == [grandchild]  # ... and kills it
        wait_until(lambda: not tracker.orphans(), 5, message="the orphan to be killed")
    finally:
        tracker.close()

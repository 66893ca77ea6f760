"""Issue 20: the staging a crash can leave behind, and the window between staged and promoted.

* A worker ``kill -9``'d while its plugin host writes the job's staging: the host dies with
  it, the sentinel removes the lost attempt's directory when it re-queues the job, and no
  staging is left after the run or after a clean stop.
* The sentinel ``kill -9``'d at four exact points of a job's way from staged to recorded —
  by its loop thread and by its committer thread, before and after the outputs reach the
  sink. Random kills almost never land there, so the kill is injected: ``kill_at/
  sitecustomize.py`` on the sentinel's ``PYTHONPATH`` wraps the real function of that point
  (no test-only code in the production modules). After a restart on the same home every
  job's outputs are in the sink exactly once and the state DB agrees with the sink.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.sinks import job_hash16
from casparian_nb.sinks.staging import JOURNAL, attempt_root, job_dirname
from casparian_nb.store import StateReader
from tests.conftest import wait_until
from tests.hardening.harness import (
    FAST,
    TRIALS,
    ProcessTracker,
    audit,
    duckdb_rows,
    jobs_by_id,
    pids_of,
    record,
    wait_final,
    wait_job,
)
from tests.hardening.test_faults import control, inputs, kill9, replace_dead_workers, worker_pid

pytestmark = pytest.mark.slow

KILL_AT = Path(__file__).resolve().parent / "kill_at"
#: A plugin that stages for ~0.4 s (20 batches, 20 ms apart): a window to land a kill in.
SLOW_STAGER = """
import time

import pyarrow as pa

from casparian_nb import Output

name = "slow_stager"
version = "1.0.0"


def parse(path, ctx=None):
    for i in range(20):
        ids = list(range(i * 100, (i + 1) * 100))
        yield Output("rows", pa.table({"id": pa.array(ids, pa.int64())}))
        time.sleep(0.02)
"""


def job_dirs(settings: Settings) -> list[Path]:
    """Every job directory under ``staging/attempt-*``."""
    return sorted(p for a in settings.staging_dir.glob("attempt-*") for p in a.iterdir())


def test_kill_9_of_a_worker_while_its_host_stages(
        hcluster: Callable[..., LocalCluster], settings: Settings, tracker: ProcessTracker,
        tmp_path: Path) -> None:
    plugin = tmp_path / "slow_stager.py"
    plugin.write_text(SLOW_STAGER)
    rng = random.Random(20)
    cluster = hcluster(workers=2, **FAST)
    with control(cluster) as ctl:
        for trial in range(TRIALS):
            sink = tmp_path / f"out-{trial}"
            files = inputs(tmp_path / f"in-{trial}", 1)
            ids = ctl.submit(plugin, files, sink=f"parquet://{sink}")["job_ids"]
            job = wait_job(settings, ids[0], lambda j: j["host_pid"], 20, "the job to start")
            first = attempt_root(settings.staging_dir, 1) / job_dirname(str(ids[0]))
            wait_until(first.exists, 10, interval=0.002, message="the host to stage")
            time.sleep(rng.uniform(0.0, 0.3))
            kill9(worker_pid(ctl, job["worker_id"]))
            rows = wait_final(settings, ids)
            a = audit(settings, ids, sink=sink, tracker=tracker, client=ctl,
                      expect={"in_": "COMPLETED"})
            if first.exists():  # audit counts only dirs named like a job id: be exact
                a.debris.append(str(first))
            record("kill -9 worker while its host stages", a)
            a.assert_clean("kill -9 worker mid-staging")
            assert rows[ids[0]]["attempt"] == 2 and not a.debris, a.debris
            replace_dead_workers(cluster)
    cluster.stop()
    assert not job_dirs(settings), "staging left behind after a clean stop"


# -- the window between staged and promoted ---------------------------------------------------

#: point -> (scenario name, what the crash left: "staged" (nothing in the sink), "moving"
#: (journal + hidden temps in the sink), "promoted" (the outputs in the sink, not recorded)).
POINTS = {
    "sentinel-after-staged": ("kill -9 sentinel: staged, not promoted", "staged"),
    "committer-mid-promotion": ("kill -9 committer: mid-promotion", "moving"),
    "committer-after-promotion": ("kill -9 committer: promoted, not recorded", "promoted"),
    "sentinel-recording-completion": ("kill -9 sentinel: promoted, not recorded", "promoted"),
}


def _state_at_crash(settings: Settings, job: dict[str, Any], sink: Path, kind: str) -> str:
    """Where a job recorded as staged (RUNNING, ``staged_json`` set) stood when the sentinel
    died: "staged" (nothing in the sink), "moving" (journal written, hidden temps in the
    sink), "promoted" (its output in the sink, its staging gone) — or what else was seen."""
    staging = attempt_root(settings.staging_dir, job["attempt"]) / job_dirname(str(job["id"]))
    key = str(job["id"])
    if kind == "duckdb":
        ours = [f"{n} rows"] if (n := duckdb_rows(sink, "fixture_output")[key]) else []
        final = "10 rows"
    else:
        ours = sorted(p.name for p in sink.glob(f"*{job_hash16(key)}*")) if sink.is_dir() else []
        final = f"fixture_output_{job_hash16(key)}.parquet"
    if not ours and (staging / "fixture_output.parquet").is_file() \
            and not (staging / JOURNAL).exists():
        return "staged"
    if (staging / JOURNAL).is_file() and ours == [f".{final}.cf-tmp"]:
        return "moving"
    if ours == [final] and not staging.exists():
        return "promoted"
    left = sorted(os.listdir(staging)) if staging.exists() else None
    return f"unexpected: sink {ours}, staging {left}"


def _restart_env(monkeypatch: pytest.MonkeyPatch, point: str | None, marker: Path) -> None:
    """Arm the next sentinel started to kill itself at ``point`` (None: disarm)."""
    if point is None:
        monkeypatch.delenv("CF_FIXTURE_KILL_AT", raising=False)
        return
    path = [str(KILL_AT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.setenv("CF_FIXTURE_KILL_AT", point)
    monkeypatch.setenv("CF_FIXTURE_KILL_MARKER", str(marker))


@pytest.mark.parametrize(("point", "kind"), [
    *((point, "parquet") for point in POINTS),
    # DuckDB loads in a transaction (no journal, no temps): no "mid-promotion" window.
    *((point, "duckdb") for point in POINTS if point != "committer-mid-promotion"),
])
def test_kill_9_in_the_window_between_staged_and_recorded(
        point: str, kind: str, hcluster: Callable[..., LocalCluster], settings: Settings,
        tracker: ProcessTracker, fixture_plugin: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scenario, window = POINTS[point]
    scenario += " (duckdb)" if kind == "duckdb" else ""
    for trial in range(TRIALS):
        marker = tmp_path / f"killed-{trial}"
        sink = tmp_path / (f"out-{trial}.duckdb" if kind == "duckdb" else f"out-{trial}")
        files = inputs(tmp_path / f"in-{trial}", 3)
        _restart_env(monkeypatch, point, marker)
        first = hcluster(workers=1, **FAST)
        everyone = pids_of(first)
        with control(first) as ctl:
            ids = ctl.submit(fixture_plugin, files, sink=f"{kind}://{sink}")["job_ids"]
        assert first.sentinel is not None
        assert first.sentinel.wait(30) == -signal.SIGKILL and marker.read_text() == point
        stragglers = tracker.wait_gone(everyone, 10.0)  # its worker and hosts follow it
        at_crash = jobs_by_id(settings, ids)
        # The kill landed in its window; other jobs may have been recorded as staged and be
        # waiting for the committer (and the loop records several completions in one go).
        hit = [j for j in at_crash.values() if j["staged_json"] and j["status"] == "RUNNING"]
        states = sorted(_state_at_crash(settings, j, sink, kind) for j in hit)
        assert window in states and set(states) <= {window, "staged"}, states
        if point.startswith("committer"):  # it promotes one job at a time
            assert states.count(window) == 1, states

        _restart_env(monkeypatch, None, marker)
        second = hcluster(workers=1, **FAST)
        rows = wait_final(settings, ids)
        with control(second) as ctl:
            a = audit(settings, ids, sink=sink, tracker=tracker, client=ctl,
                      duckdb_table="fixture_output" if kind == "duckdb" else None,
                      expect={"in_": "COMPLETED"})
        a.orphans += stragglers
        record(scenario, a)
        a.assert_clean(scenario)
        for job in hit:  # promoted from what was staged, not run again
            assert rows[job["id"]]["attempt"] == job["attempt"], job["id"]
        # The state DB agrees with the sink: one materialization per job, the rows on disk.
        with StateReader.open(settings.state_db) as r:
            mats = [m for m in r.list_materializations(limit=10_000) if m["job_id"] in ids]
        assert sorted(m["job_id"] for m in mats) == sorted(ids)
        assert all(rows[i]["rows"] == 10 for i in ids) and not a.debris, a.debris
        second.stop()
        assert not job_dirs(settings), "staging left behind after a clean stop"

"""Retry and dead letters (issue 14 item 5): a FAILED or ABORTED job re-queued by its user
runs again as a new attempt with its history kept; a job out of automatic retries is visibly
dead-lettered, and a retry brings it back. Real sentinel, workers and CLI processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import JobStatus
from casparian_nb.store import StateReader
from tests.conftest import make_inputs
from tests.integration.test_sentinel import FAST, control, wait_final, wait_job


def cli(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home),
                           *map(str, args)], capture_output=True, text=True, timeout=120)


def attempts(settings: Settings, job_id: int) -> list[dict[str, object]]:
    with StateReader.open(settings.state_db) as r:
        return r.attempts(job_id)


def test_retry_of_an_aborted_job_completes_as_attempt_2_with_both_attempts_listed(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, home: Path,
        fixture_plugin: Path, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    [hang] = make_inputs(tmp_path / "in", 1, mode="hang")
    sink = f"parquet://{tmp_path / 'out'}"
    with control(cluster) as ctl:
        [job_id] = ctl.submit(fixture_plugin, [str(hang)], sink=sink)["job_ids"]
        wait_job(settings, job_id, lambda j: j["host_pid"], 20, "the job to start")
        assert ctl.cancel_job(job_id)["success"]
        wait_final(settings, [job_id], timeout=15, status="ABORTED")
        hang.write_text("mode=normal rows=3\n")  # what made it hang is fixed
        source = fixture_plugin.read_text()
        fixture_plugin.write_text(source + "\n# edited\n")  # a retry runs the same job:
        refused = ctl.retry_jobs([job_id])             # an edited plugin is a new submit
        assert "plugin changed since it was submitted" in refused["refused"][str(job_id)]
        fixture_plugin.write_text(source)
        reply = ctl.retry_jobs([job_id])
        assert reply["job_ids"] == [job_id] and reply["attempts"] == {str(job_id): 2}
        row = wait_final(settings, [job_id], status="COMPLETED")[job_id]
        # Retrying a COMPLETED job is refused, with the reason.
        again = ctl.retry_jobs([job_id, 999_999])
        assert again["job_ids"] == []
        assert "COMPLETED" in again["refused"][str(job_id)]
        assert "does not exist" in again["refused"]["999999"]
    assert row["attempt"] == 2 and row["manual_retries"] == 1 and row["rows"] == 3
    history = attempts(settings, job_id)
    assert [(a["attempt"], a["status"]) for a in history] == [
        (1, JobStatus.ABORTED), (2, JobStatus.COMPLETED)]
    assert history[0]["error_message"] == "cancelled by user" and history[0]["worker_id"]
    shown = cli(home, "job", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    attempt_lines = lines[lines.index(f"{'attempts':>20}:") + 1:]
    assert attempt_lines[0].startswith("  #1   ABORTED") and "cancelled by user" in attempt_lines[0]
    assert attempt_lines[1].startswith("  #2   COMPLETED")


def test_exhausted_retries_are_dead_lettered_and_a_retry_revives_them(
        cluster_factory: Callable[..., LocalCluster], settings: Settings, home: Path,
        fixture_plugin: Path, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, max_retries=1, manual_retry_limit=1, **FAST)
    [flaky] = make_inputs(tmp_path / "in", 1, mode="transient")
    [good] = make_inputs(tmp_path / "ok", 1)
    sink = f"parquet://{tmp_path / 'out'}"
    with control(cluster) as ctl:
        [dead_id] = ctl.submit(fixture_plugin, [str(flaky)], sink=sink)["job_ids"]
        [ok_id] = ctl.submit(fixture_plugin, [str(good)], sink=sink)["job_ids"]
        rows = wait_final(settings, [dead_id, ok_id])
        dead = rows[dead_id]
        assert dead["status"] == JobStatus.FAILED
        assert dead["dead_letter"] == "max_retries_exceeded"  # visibly dead, not gone
        assert rows[ok_id]["dead_letter"] is None
        assert [a["status"] for a in attempts(settings, dead_id)] == [JobStatus.FAILED] * 2
        [line] = [x for x in cli(home, "jobs").stdout.splitlines()
                  if x.split()[:1] == [str(dead_id)]]
        assert line.endswith("[dead letter: max_retries_exceeded]"), line
        # `job retry --failed` through the CLI: it is queued again, out of the dead letters.
        said = cli(home, "job", "retry", "--failed")
        assert said.returncode == 0, said.stderr
        assert said.stdout.strip() == f"job {dead_id}: queued as attempt 3"
        row = wait_final(settings, [dead_id], status="FAILED")[dead_id]
        assert row["dead_letter"] == "max_retries_exceeded" and row["manual_retries"] == 1
        assert len(attempts(settings, dead_id)) == 4  # 2 automatic + 2 after the retry
        refused = ctl.retry_jobs([dead_id])  # manual_retry_limit = 1
        assert refused["job_ids"] == []
        assert "manual_retry_limit 1" in refused["refused"][str(dead_id)]
        listed = ctl.list_jobs()
    assert {j["id"]: j["dead_letter"] for j in listed["jobs"]}[dead_id] == "max_retries_exceeded"


def test_job_retry_without_a_sentinel_says_so_and_writes_nothing(home: Path) -> None:
    said = cli(home, "job", "retry", "1")
    assert said.returncode == 1
    assert said.stderr.strip() == (f"casparian: error: no sentinel is running for {home}; start one "
                                   "with `casparian start`")
    assert not (home / "state.sqlite").exists()
    usage = cli(home, "job", "retry")
    assert usage.returncode == 2 and "give job ids or --failed" in usage.stderr

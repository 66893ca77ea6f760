"""How a standalone run batches its files and settles a batch's outcome
(``casparian_nb._run_batch``): pure functions over real files' sizes."""

from __future__ import annotations

from pathlib import Path

from casparian_nb._run_batch import BATCH_FILE_BYTES, plan_batches, settle
from casparian_nb.protocol import (
    AbortCause,
    BatchStaged,
    HostBatch,
    HostJob,
    JobSpec,
    Receipt,
    ReceiptStatus,
)
from casparian_nb.sinks import StagedJob
from casparian_nb.worker.pool import BatchOutcome, aborted


def jobs(tmp_path: Path, sizes: list[int]) -> list[HostJob]:
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"in{i}"
        path.write_bytes(b"x" * size)
        out.append(HostJob(job=JobSpec(job_id=f"j{i}", input_file=str(path), plugin_path="p.py", plugin_name="p",
                                       sink="parquet:///tmp/out"), staging_root=str(tmp_path)))
    return out


def shape(plan: list[HostJob | HostBatch]) -> list[int]:
    """1 for a lone job, the member count for a batch."""
    return [len(w.jobs) if isinstance(w, HostBatch) else 1 for w in plan]


def test_small_files_batch_so_each_host_still_gets_several(tmp_path: Path) -> None:
    plan = plan_batches(jobs(tmp_path, [10] * 40), hosts=2, run_id="r", most=32)
    assert shape(plan) == [5] * 8  # 40 // (2 hosts x 4 rounds)
    ids = [j.job.job_id for w in plan for j in (w.jobs if isinstance(w, HostBatch) else [w])]
    assert ids == [f"j{i}" for i in range(40)]  # order kept
    assert len({w.batch_id for w in plan if isinstance(w, HostBatch)}) == 8


def test_few_files_large_files_and_batch_size_one_run_alone(tmp_path: Path) -> None:
    assert shape(plan_batches(jobs(tmp_path, [10] * 12), 2, "r", 32)) == [1] * 12
    assert shape(plan_batches(jobs(tmp_path, [10] * 40), 2, "r", 1)) == [1] * 40
    sizes = [10] * 8 + [BATCH_FILE_BYTES + 1] + [10] * 31
    assert shape(plan_batches(jobs(tmp_path, sizes), 2, "r", 32)) == [5, 1, 5, 5, 5, 5, 5, 5, 4]


def test_a_missing_input_runs_alone_to_report_itself(tmp_path: Path) -> None:
    plan_jobs = jobs(tmp_path, [10] * 40)
    Path(plan_jobs[0].job.input_file).unlink()
    assert shape(plan_batches(plan_jobs, 2, "r", 32))[:2] == [1, 5]


def _batch(tmp_path: Path) -> HostBatch:
    return HostBatch(batch_id="b", jobs=jobs(tmp_path, [10] * 4))


def ok(job_id: str, staged: dict | None = None) -> Receipt:
    return Receipt(job_id=job_id, status=ReceiptStatus.SUCCESS, rows={"o": 1}, staged=staged)


def test_a_finished_batch_gives_every_file_its_share(tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    shared = StagedJob("b", "parquet:///tmp/out", str(tmp_path / "b"), []).to_dict()
    failed = Receipt(job_id="j1", status=ReceiptStatus.FAILED)
    alone = StagedJob("j3", "parquet:///tmp/out", str(tmp_path / "j3"), []).to_dict()
    outcome = BatchOutcome([ok("j0"), failed, ok("j2"), ok("j3", alone)],
                           BatchStaged(batch_id="b", staged=shared,
                                       shares={"j0": {"o": 1}, "j2": {"o": 1}}))
    done, again = settle(batch, outcome)
    assert again == []
    assert [(j.job.job_id, r.status, s is not None) for j, r, s in done] == [
        ("j0", "SUCCESS", True), ("j1", "FAILED", False), ("j2", "SUCCESS", True),
        ("j3", "SUCCESS", False)]
    assert done[0][2] is not None and done[0][2].staged is done[2][2].staged  # one promotion


def test_a_host_that_died_or_timed_out_has_the_other_files_run_again(tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    crashed = Receipt(job_id="j1", status=ReceiptStatus.FAILED)
    for killed in (None, AbortCause.TIMEOUT):
        done, again = settle(batch, BatchOutcome([ok("j0"), crashed], None, killed))
        assert [j.job.job_id for j, _, _ in done] == ["j1"]  # the file it died in
        assert [j.job.job_id for j in again] == ["j0", "j2", "j3"]


def test_shared_files_the_host_could_not_write_have_their_files_run_again(
        tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    failed = Receipt(job_id="j2", status=ReceiptStatus.FAILED)
    outcome = BatchOutcome([ok("j0"), ok("j1"), failed, ok("j3")], BatchStaged(batch_id="b"))
    done, again = settle(batch, outcome)
    assert [j.job.job_id for j, _, _ in done] == ["j2"]
    assert [j.job.job_id for j in again] == ["j0", "j1", "j3"]


def test_a_cancelled_batch_aborts_what_did_not_end(tmp_path: Path) -> None:
    batch = _batch(tmp_path)
    stop = aborted("j1", "run stopped", cause=AbortCause.SHUTDOWN)
    done, again = settle(batch, BatchOutcome([ok("j0"), stop], None, AbortCause.SHUTDOWN))
    assert again == []
    assert [(j.job.job_id, r.status) for j, r, _ in done] == [
        ("j0", "ABORTED"), ("j1", "ABORTED"), ("j2", "ABORTED"), ("j3", "ABORTED")]
    assert all(r.reason == "run stopped" for _, r, _ in done)

"""A Dask chunk syncs its attempts' staged files together before it reports them."""

from __future__ import annotations

import errno
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

pytest.importorskip("distributed")

from casparian_nb.executors import _dask_plugin
from casparian_nb.protocol import ErrorKind, HostJob, JobSpec, Receipt, ReceiptStatus
from casparian_nb.sinks import JobStager, StagedJob

_receipts = msgspec.json.Decoder(Receipt)


def _attempt(tmp_path: Path, n: int) -> tuple[HostJob, StagedJob, bytes]:
    job = HostJob(job=JobSpec(job_id=f"job-{n}", input_file=f"/in/{n}.csv", plugin_path="/p.py",
                              plugin_name="p", plugin_source_hash="0" * 64,
                              sink=f"parquet://{tmp_path / 'out'}"),
                  staging_root=str(tmp_path / "staging"), sync_staging=False)
    stager = JobStager(tmp_path / "staging", job.job.job_id, job.job.sink)
    stager.write("orders", "orders", pa.table({"a": [n, n + 1]}))
    staged = stager.close(sync=False)
    raw = msgspec.json.encode(Receipt(job_id=job.job.job_id, status=ReceiptStatus.SUCCESS,
                                      staged=staged.to_dict(), rows={"orders": 2}))
    return job, staged, raw


def test_a_synced_chunk_reports_its_receipts_as_they_were(tmp_path):
    attempts = [_attempt(tmp_path, n) for n in range(3)]
    out = [raw for _, _, raw in attempts]
    unsynced = [(i, job, staged) for i, (job, staged, _) in enumerate(attempts)]
    _dask_plugin._make_durable(unsynced, out)
    assert out == [raw for _, _, raw in attempts]
    assert all(Path(o.path).is_file() for _, s, _ in attempts for o in s.outputs)


def test_a_failed_sync_turns_its_receipts_into_transient_failures(tmp_path, monkeypatch):
    attempts = [_attempt(tmp_path, n) for n in range(2)]
    out = [raw for _, _, raw in attempts]
    unsynced = [(i, job, staged) for i, (job, staged, _) in enumerate(attempts)]

    def broken_disk(*staged: StagedJob) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_dask_plugin, "make_durable", broken_disk)
    _dask_plugin._make_durable(unsynced, out)
    for (job, staged, _), raw in zip(attempts, out, strict=True):
        receipt = _receipts.decode(raw)
        assert receipt.job_id == job.job.job_id
        assert receipt.status == ReceiptStatus.FAILED
        assert receipt.error is not None and receipt.error.kind == ErrorKind.TRANSIENT
        assert "cannot sync staged outputs" in receipt.error.evalue
        assert not Path(staged.staging_dir).exists()  # nothing left that was never durable

"""A worker syncs what its hosts staged before it sends their receipts (worker/_durable.py)."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pyarrow as pa

from casparian_nb.protocol import ErrorKind, Receipt, ReceiptStatus
from casparian_nb.sinks import JobStager
from casparian_nb.worker import _durable
from casparian_nb.worker._durable import StagingSyncer


def _receipt(tmp_path: Path, n: int) -> Receipt:
    stager = JobStager(tmp_path / "staging", f"job-{n}", f"parquet://{tmp_path / 'out'}")
    stager.write("orders", "orders", pa.table({"a": [n]}))
    staged = stager.close(sync=False)
    return Receipt(job_id=f"job-{n}", status=ReceiptStatus.SUCCESS, staged=staged.to_dict(),
                   rows={"orders": 1}, host_pid=1234)


def _collect() -> tuple[dict[int, Receipt], list[int], object]:
    got: dict[int, Receipt] = {}
    order: list[int] = []

    def deliver(key: int, receipt: Receipt) -> None:
        order.append(key)
        got[key] = receipt

    return got, order, deliver


def test_receipts_from_many_threads_are_delivered_as_they_were_once_synced(tmp_path,
                                                                           monkeypatch):
    receipts = [_receipt(tmp_path, n) for n in range(8)]
    synced: list[str] = []
    real = _durable.make_durable

    def recording(*jobs):  # the real sync, noting which jobs each call covered
        real(*jobs)
        synced.extend(j.job_id for j in jobs)

    monkeypatch.setattr(_durable, "make_durable", recording)
    got, _, deliver = _collect()
    syncer = StagingSyncer(deliver)
    threads = [threading.Thread(target=syncer.submit, args=(i, receipts[i]))
               for i in range(len(receipts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    syncer.close(timeout=10)
    assert [got[i] for i in range(len(receipts))] == receipts
    assert sorted(synced) == sorted(r.job_id for r in receipts)  # each synced exactly once


def test_nothing_is_delivered_before_its_sync_ends(tmp_path, monkeypatch):
    release = threading.Event()
    real = _durable.make_durable

    def slow(*jobs):
        assert release.wait(10)
        real(*jobs)

    monkeypatch.setattr(_durable, "make_durable", slow)
    got, _, deliver = _collect()
    syncer = StagingSyncer(deliver)
    syncer.submit(1, _receipt(tmp_path, 1))
    time.sleep(0.2)  # the syncer thread is inside the sync: nothing may be out yet
    assert got == {}
    release.set()
    syncer.close(timeout=10)
    assert list(got) == [1] and got[1].status == ReceiptStatus.SUCCESS


def test_a_receipt_without_staged_files_is_delivered_at_once(tmp_path, monkeypatch):
    def never(*jobs):
        raise AssertionError("nothing to sync")

    monkeypatch.setattr(_durable, "make_durable", never)
    got, _, deliver = _collect()
    failed = Receipt(job_id="j", status=ReceiptStatus.FAILED)
    StagingSyncer(deliver).submit(7, failed)
    assert got == {7: failed}


def test_a_failed_sync_fails_the_job_transiently_and_drops_its_staging(tmp_path, monkeypatch):
    receipt = _receipt(tmp_path, 1)
    staging = Path(receipt.staged["staging_dir"])

    def broken_disk(*jobs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_durable, "make_durable", broken_disk)
    got, _, deliver = _collect()
    syncer = StagingSyncer(deliver)
    syncer.submit(1, receipt)
    syncer.close(timeout=10)
    failed = got[1]
    assert failed.status == ReceiptStatus.FAILED and failed.job_id == "job-1"
    assert failed.error is not None and failed.error.kind == ErrorKind.TRANSIENT
    assert failed.error.evalue.startswith("cannot sync staged outputs:")
    assert failed.host_pid == 1234
    assert not staging.exists()


def test_with_linger_receipts_that_end_close_together_share_one_sync(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    real = _durable.make_durable

    def recording(*jobs):
        real(*jobs)
        calls.append([j.job_id for j in jobs])

    monkeypatch.setattr(_durable, "make_durable", recording)
    got, _, deliver = _collect()
    syncer = StagingSyncer(deliver, linger=0.5)
    receipts = [_receipt(tmp_path, n) for n in range(4)]
    for i, receipt in enumerate(receipts):  # well within the half second
        syncer.submit(i, receipt)
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [[r.job_id for r in receipts]]
    assert [got[i] for i in range(4)] == receipts
    syncer.close(timeout=10)


def test_a_receipt_submitted_after_close_is_synced_by_its_caller(tmp_path, monkeypatch):
    synced_on: list[str] = []
    real = _durable.make_durable

    def recording(*jobs):
        real(*jobs)
        synced_on.append(threading.current_thread().name)

    monkeypatch.setattr(_durable, "make_durable", recording)
    got, _, deliver = _collect()
    syncer = StagingSyncer(deliver)
    syncer.close()
    receipt = _receipt(tmp_path, 3)
    syncer.submit(3, receipt)
    assert got == {3: receipt}
    assert synced_on == [threading.current_thread().name]

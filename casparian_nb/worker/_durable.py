"""Staged outputs made durable outside the plugin host, several jobs per sync.

A host stages without a sync (``HostJob.sync_staging=False``): an ``fsync`` of each file and
of its directory per job is most of what a small job costs the disk, and one ``syncfs`` covers
the files of every job that ended meanwhile (:func:`casparian_nb.sinks.make_durable`); the
host goes on to its next job instead of waiting for the disk. The receipt of a job leaves
only after its files are durable: the sentinel may adopt and promote a staged job after a
power cut, so it must never record as staged what is not on the disk. If the sync fails,
the job's staging is dropped and its receipt becomes a transient failure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..protocol import ErrorInfo, ErrorKind, Receipt, ReceiptStatus
from ..sinks.staging import StagedJob, discard, make_durable

__all__ = ["StagingSyncer", "staged_of", "sync_failed"]

log = logging.getLogger("casparian_nb.worker")

K = TypeVar("K")


def staged_of(receipt: Receipt) -> StagedJob | None:
    """What a successful receipt staged (None for any other receipt, or one with nothing)."""
    if receipt.status != ReceiptStatus.SUCCESS or not receipt.staged:
        return None
    staged = StagedJob.from_dict(receipt.staged)
    return staged if staged.outputs else None


def sync_failed(receipt: Receipt, staged: StagedJob, exc: Exception) -> Receipt:
    """The receipt of a job whose staged files could not be synced; its staging is gone."""
    log.error("job %s: cannot sync its staged outputs: %s", receipt.job_id, exc)
    with contextlib.suppress(Exception):
        discard(staged)
    return Receipt(job_id=receipt.job_id, status=ReceiptStatus.FAILED,
                   host_pid=receipt.host_pid, duration_ms=receipt.duration_ms,
                   error=ErrorInfo(ename=type(exc).__name__,
                                   evalue=f"cannot sync staged outputs: {exc}",
                                   kind=ErrorKind.TRANSIENT))


class StagingSyncer(Generic[K]):
    """A thread that makes receipts' staged files durable and only then hands each receipt
    on (``deliver(key, receipt)``, from that thread).

    A job thread submits its receipt and goes on to its next job at once; the receipts that
    queue while one sync runs (and, with ``linger``, for that long before it) share the next
    one, so the disk's cost per job shrinks as jobs get shorter. A receipt with nothing
    staged is delivered at once, by the caller.
    """

    def __init__(self, deliver: Callable[[K, Receipt], None], *, linger: float = 0.0,
                 name: str = "cf-stage-sync") -> None:
        self._deliver = deliver
        #: How long a sync waits, after the first receipt that needs it, for others to join.
        self._linger = linger
        self._name = name
        self._cond = threading.Condition()
        self._pending: list[tuple[K, Receipt, StagedJob]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, key: K, receipt: Receipt) -> None:
        staged = staged_of(receipt)
        if staged is None:
            self._deliver(key, receipt)
            return
        with self._cond:
            closed = self._closed
            if not closed:
                self._pending.append((key, receipt, staged))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name,
                                                    daemon=True)
                    self._thread.start()
                self._cond.notify()
        if closed:  # a straggler after close(): synced here, on its own
            self._finish([(key, receipt, staged)])

    def close(self, timeout: float | None = None) -> None:
        """Sync and deliver what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                if self._linger > 0 and not self._closed:
                    until = time.monotonic() + self._linger
                    while not self._closed and (left := until - time.monotonic()) > 0:
                        self._cond.wait(left)
                batch, self._pending = self._pending, []
            self._finish(batch)

    def _finish(self, batch: list[tuple[K, Receipt, StagedJob]]) -> None:
        try:
            make_durable(*(staged for _, _, staged in batch))
            done = [(key, receipt) for key, receipt, _ in batch]
        except Exception as exc:  # whatever it is, the files may not be on the disk
            done = [(key, sync_failed(receipt, staged, exc)) for key, receipt, staged in batch]
        for key, receipt in done:
            try:
                self._deliver(key, receipt)
            except Exception:  # one bad delivery must not strand the others
                log.exception("job %s: cannot hand its receipt on", receipt.job_id)

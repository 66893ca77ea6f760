"""The dask bridge's side of the cluster (a mixin of
:class:`~casparian_nb.executors._dask_bridge.DaskBridge`): which workers there are — each a
*seat* on the sentinel, probed for the shared staging directory before it is seated, given
up (``Goodbye(lost=True)``) when it leaves — and aborts, an RPC to the one worker running
the attempt.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from ..errors import SharedStorageError
from ..protocol import (
    Abort,
    ErrorInfo,
    ErrorKind,
    Goodbye,
    Identify,
    Receipt,
    ReceiptStatus,
    WireMessage,
)
from ..worker.pool import aborted
from . import _dask_plugin as remote
from ._dask_seats import Chunk, Flight, Seat, probe_storage, seat_id

if TYPE_CHECKING:
    from .._connection import ConnectionInfo
    from ..config import Settings

__all__ = ["ClusterWorkers"]

log = logging.getLogger("casparian_nb.executors.dask")
_receipt_out = msgspec.json.Encoder()


class ClusterWorkers:
    """Seats for the cluster's workers, and aborts on them."""

    if TYPE_CHECKING:  # provided by DaskBridge and its other mixins
        settings: Settings
        client: Any
        info: ConnectionInfo
        name: str
        seats: dict[str, Seat]
        _by_sock: dict[zmq.Socket[bytes], Seat]
        _refused: set[str]
        _chunks_at: dict[str, set[Chunk]]
        _held: list[tuple[Seat, str, Flight]]
        _unsubmitted: list[tuple[Seat, str, Flight]]
        _fetched: queue.Queue[tuple[Seat, str, Flight, Any]]
        _rpc: ThreadPoolExecutor
        _ctx: zmq.Context[zmq.Socket[bytes]]

        def _send(self, seat: Seat, message: WireMessage) -> None: ...
        def _deliver(self, seat: Seat, job_id: str, flight: Flight, raw: Any) -> None: ...
        def _submit_pending(self) -> None: ...
        def _wake(self) -> None: ...

    def _scheduler_workers(self) -> dict[str, dict[str, Any]]:
        info = self.client.scheduler_info(n_workers=-1)
        workers = info.get("workers", {})
        return workers if isinstance(workers, dict) else {}

    def check_shared_storage(self, addresses: list[str], *, strict: bool) -> list[str]:
        """The addresses whose workers share the staging directory with us (a probe file
        each writes and we read). ``strict``: raise SharedStorageError on the first that
        does not (at start: the sentinel could never promote what they stage)."""
        staging = self.settings.staging_dir
        good = []
        for address, problem in probe_storage(self.client, staging, addresses).items():
            if problem is None:
                good.append(address)
                continue
            message = (f"the staging directory {staging} is not shared with Dask worker "
                       f"{address}: {problem}; put the casparian home on storage every "
                       "worker mounts at the same path")
            if strict:
                raise SharedStorageError(message)
            log.error("%s (worker not used)", message)
            self._refused.add(address)
        return good

    def _sync_workers(self) -> None:
        workers = self._scheduler_workers()
        for address in [a for a in self.seats if a not in workers]:
            seat = self.seats[address]
            log.warning("Dask worker %s left the cluster; its %d attempt(s) go back to the "
                        "queue", address, len(seat.running))
            futures = {id(f.future): f.future for f in seat.running.values()
                       if f.future is not None}
            if futures:
                self.client.cancel(list(futures.values()), force=True)
            self._drop_seat(seat, Goodbye(worker_id=seat.worker_id, lost=True,
                                          reason=f"Dask worker {address} left the cluster"))
            self._lost_elsewhere(address)
            self._chunks_at.pop(address, None)
        new = [a for a in workers if a not in self.seats and a not in self._refused]
        for address in self.check_shared_storage(new, strict=False):
            w = workers[address]
            self._seat(address, int(w.get("nthreads") or 1), str(w.get("host") or ""),
                       w.get("resources") or {})
        if self._held and new:  # a worker that joined may have what they wait for
            self._unsubmitted += self._held
            self._held = []
            self._submit_pending()

    def _lost_elsewhere(self, address: str) -> None:
        """Attempts of other seats that ran on the worker at ``address`` (for its resources)
        fail as transient: the sentinel retries them as new attempts, and never promotes a
        late answer of the lost one."""
        for seat in self.seats.values():
            for job_id, flight in list(seat.running.items()):
                if flight.address != address or flight.future is None:
                    continue
                self.client.cancel(flight.future, force=True)
                receipt = Receipt(job_id=job_id, status=ReceiptStatus.FAILED, error=ErrorInfo(
                    ename="WorkerLost", evalue=f"Dask worker {address} left the cluster",
                    kind=ErrorKind.TRANSIENT))
                self._deliver(seat, job_id, flight, _receipt_out.encode(receipt))

    def _seat(self, address: str, nthreads: int, host: str,
              resources: dict[str, float]) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        wid = seat_id(address)
        sock.setsockopt(zmq.IDENTITY, f"{wid}-{uuid.uuid4().hex[:6]}".encode())
        sock.connect(self.info.workers)
        seat = Seat(address, wid, max(1, nthreads), host or socket.gethostname(), sock,
                    resources={str(k): float(v) for k, v in resources.items()})
        self.seats[address] = seat
        self._by_sock[sock] = seat
        # pid: the bridge's own, so a sentinel on this machine sees every seat lost at once
        # when the bridge dies (it checks the pids of local workers).
        self._send(seat, Identify(worker_id=wid, slots=seat.nthreads, pid=os.getpid(),
                                  host=socket.gethostname(),
                                  prefetch=seat.capacity - seat.nthreads))
        log.info("Dask worker %s (%d threads) joined as %s", address, seat.nthreads, wid)

    def _drop_seat(self, seat: Seat, goodbye: Goodbye) -> None:
        for flight in seat.running.values():  # a chunk holds the attempts of one seat only
            if flight.chunk is not None:
                self._chunks_at.get(flight.chunk.address, set()).discard(flight.chunk)
        self._send(seat, goodbye)
        self.seats.pop(seat.address, None)
        self._by_sock.pop(seat.sock, None)
        seat.sock.close(linger=200)

    # -- aborts ----------------------------------------------------------------------------
    def _on_abort(self, seat: Seat, abort: Abort) -> None:
        flight = seat.running.get(abort.job_id)
        if flight is None:
            log.info("abort for job %s which is not running here", abort.job_id)
            return
        if flight.future is None:  # waiting for its chunk, or for resources: on no worker
            self._held = [h for h in self._held if h[2] is not flight]
            self._unsubmitted = [h for h in self._unsubmitted if h[2] is not flight]
            receipt = aborted(abort.job_id, abort.reason, cause=abort.cause)
            self._deliver(seat, abort.job_id, flight, _receipt_out.encode(receipt))
            return
        self._rpc.submit(self._abort_rpc, seat, abort, flight)

    def _abort_rpc(self, seat: Seat, abort: Abort, flight: Flight) -> None:
        """Kill the attempt's host on its worker, or have its chunk skip it. Once the worker
        says so (a killed host is reaped by then: nothing more gets staged), the ABORTED
        receipt goes out at once, without waiting for the task's own answer to come back
        through the scheduler; the rest of the chunk runs on."""
        address = flight.address or seat.address
        try:
            killed = self.client.run(remote.abort_on_worker, self.name, abort.job_id,
                                     int(flight.dispatch.attempt), abort.reason,
                                     str(abort.cause), str(flight.future.key),
                                     workers=[address],
                                     on_error="return")
        except Exception as exc:  # the worker is going away: its loss re-queues or aborts
            log.warning("abort of job %s on %s failed: %s", abort.job_id, address, exc)
            return
        if killed.get(address) is True:
            receipt = aborted(abort.job_id, abort.reason, cause=abort.cause)
            self._fetched.put((seat, abort.job_id, flight, _receipt_out.encode(receipt)))
            self._wake()

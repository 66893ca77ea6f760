"""How the dask bridge gets receipts back from its tasks (a mixin of
:class:`~casparian_nb.executors._dask_bridge.DaskBridge`).

Each attempt of a task (a chunk) pushes its Receipt (and ``JobStarted``) as a Dask event on the bridge's topic: the
worker's batched stream to the scheduler, which forwards it to the bridge's
``subscribe_topic`` handler on the client's thread. The handler queues it and wakes the loop
(once per burst); the loop forwards it to the sentinel on the attempt's seat. No ``gather``
round trip per receipt and no done callback per task: only a task found done without its
receipt (a scan every ``SYNC_INTERVAL``) is fetched, by the fetcher thread: the chunk's
result is the list of its receipts.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from ..protocol import ErrorInfo, ErrorKind, JobStarted, Receipt, ReceiptStatus, WireMessage
from ._dask_seats import Chunk, Flight, Seat

__all__ = ["RECEIPT_GRACE", "ReceiptRelay"]

log = logging.getLogger("casparian_nb.executors.dask")

#: A task's receipt normally comes as an event before Dask says the task finished; only
#: when it is this late (seconds) is it fetched from the worker (``gather``). Checked every
#: SYNC_INTERVAL.
RECEIPT_GRACE = 0.5
_receipt = msgspec.json.Decoder(Receipt)


class ReceiptRelay:
    """Receipts and started notices from the tasks to the sentinel."""

    if TYPE_CHECKING:  # provided by DaskBridge
        client: Any
        seats: dict[str, Seat]
        _events: queue.Queue[dict[str, Any]]
        _done: queue.Queue[list[tuple[Seat, str, Flight]] | None]
        _fetched: queue.Queue[tuple[Seat, str, Flight, Any]]
        _answered: list[Any]
        _chunks_at: dict[str, set[Chunk]]
        _job_time: dict[str, float]
        _job_times: dict[str, collections.deque[float]]
        _ctx: zmq.Context[zmq.Socket[bytes]]
        _wake_ep: str
        _wake_tx: zmq.Socket[bytes] | None
        _wake_lock: threading.Lock
        _wake_pending: bool

        def _send(self, seat: Seat, message: WireMessage) -> None: ...

    def _release_answered(self) -> None:
        """Release the futures of answered attempts, all in one call on the client's loop
        (a release from this thread would wake that loop once per future)."""
        if self._answered:
            futures, self._answered = self._answered, []
            self.client.loop.add_callback(_release, futures)

    def _check_late(self, now: float) -> None:
        """Attempts whose task is done (finished, erred, cancelled) but whose receipt did
        not come as an event within ``RECEIPT_GRACE``: the fetcher gets their results.
        A scan of what is in flight (a few per worker thread) every ``LATE_SCAN`` seconds,
        rather than a done callback per task."""
        late = []
        for seat in self.seats.values():
            for job_id, flight in seat.running.items():
                if flight.future is None or flight.fetching or not flight.future.done():
                    continue
                if not flight.done_at:
                    flight.done_at = now
                elif now - flight.done_at >= RECEIPT_GRACE:
                    flight.fetching = True
                    late.append((seat, job_id, flight))
        if late:
            self._done.put(late)

    def _on_task_event(self, event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if isinstance(msg, dict):
            self._events.put(msg)
            self._wake()

    def _wake(self) -> None:
        if self._wake_pending:  # the loop has not drained the last one yet
            return
        self._wake_pending = True
        with self._wake_lock:
            if self._wake_tx is None:
                self._wake_tx = self._ctx.socket(zmq.PUSH)
                self._wake_tx.setsockopt(zmq.LINGER, 0)
                self._wake_tx.connect(self._wake_ep)
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _send_events(self) -> None:
        """Forward what the tasks said: JobStarted, and receipts as they come (the usual
        way a receipt arrives: pushed by the task with the scheduler's batched stream, no
        ``gather`` round trip)."""
        while True:
            try:
                msg = self._events.get_nowait()
            except queue.Empty:
                return
            job_id, attempt = str(msg.get("job_id")), msg.get("attempt")
            for seat in self.seats.values():
                flight = seat.running.get(job_id)
                if flight is None or int(flight.dispatch.attempt) != attempt:
                    continue
                raw = msg.get("receipt")
                if isinstance(raw, str):
                    self._deliver(seat, job_id, flight, raw.encode())
                elif "host_pid" in msg:
                    self._send(seat, JobStarted(job_id=job_id, host_pid=int(msg["host_pid"]),
                                                worker_id=seat.worker_id))
                break

    def _fetch_results(self) -> None:
        """Fetcher thread, the fallback for receipts that did not come as events: fetch
        them (one ``gather`` per batch) and hand them to the loop. Off the loop, so a slow
        fetch (a worker going away under it) never holds up heartbeats, dispatches or
        aborts."""
        while True:
            batch = self._done.get()
            if batch is None:
                return
            finished = {f.future.key: f.future for _, _, f in batch
                        if f.future.status == "finished"}
            values: dict[Any, Any] = {}
            if finished:
                try:
                    values = self.client.gather(finished, errors="skip")
                except Exception as exc:
                    log.error("could not fetch %d result(s): %s", len(finished), exc)
            for seat, job_id, flight in batch:
                result = values.get(flight.future.key)
                raw = result[flight.index] if isinstance(result, list) \
                    and flight.index < len(result) else None
                self._fetched.put((seat, job_id, flight, raw))
            self._wake()

    def _send_results(self) -> None:
        while True:
            try:
                seat, job_id, flight, raw = self._fetched.get_nowait()
            except queue.Empty:
                return
            self._deliver(seat, job_id, flight, raw)

    def _deliver(self, seat: Seat, job_id: str, flight: Flight, raw: Any) -> None:
        """Send the receipt of an attempt still in flight on a seated worker (once: a
        future cancelled because its worker left, or at shutdown, was answered already)."""
        if seat.address not in self.seats or seat.running.get(job_id) is not flight:
            return
        del seat.running[job_id]
        if isinstance(raw, bytes):
            receipt = _receipt.decode(raw)
        else:  # the task erred (never by the plugin: run_attempt returns its failures)
            status = flight.future.status
            err = flight.future.exception() if status == "error" else None
            receipt = Receipt(job_id=job_id, status=ReceiptStatus.FAILED,
                              error=ErrorInfo(ename=type(err).__name__ if err else "DaskError",
                                              evalue=str(err or f"task {status}"),
                                              kind=ErrorKind.TRANSIENT))
        chunk = flight.chunk
        if chunk is not None:
            chunk.left -= 1
            if chunk.left == 0:  # its result is no longer needed on its worker
                self._answered.append(chunk.future)
                self._chunks_at.get(chunk.address, set()).discard(chunk)
        if receipt.status == ReceiptStatus.SUCCESS and receipt.duration_ms is not None:
            self._took(flight.dispatch.job.plugin_path, receipt.duration_ms / 1000)
        self._send(seat, msgspec.structs.replace(receipt, attempt=flight.dispatch.attempt,
                                                 worker_id=seat.worker_id))


    def _took(self, plugin_path: str, seconds: float) -> None:
        """What the plugin's attempts take: the lower median of its last 8 (a host's first
        job, which imports the plugin, is not the typical one)."""
        last = self._job_times.setdefault(plugin_path, collections.deque(maxlen=8))
        last.append(seconds)
        self._job_time[plugin_path] = sorted(last)[(len(last) - 1) // 2]


def _release(futures: list[Any]) -> None:
    for future in futures:
        future.release()

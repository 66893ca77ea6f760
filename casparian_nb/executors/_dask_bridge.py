"""The bridge process between a sentinel and a Dask cluster.

Each Dask worker becomes a *seat*: one DEALER to the sentinel's worker socket, introduced
with ``Identify(slots=nthreads, prefetch=PREFETCH_FACTOR x nthreads)`` (at most 64), so the
sentinel's capacity-based dispatch keeps a bounded number of attempts in flight per Dask
worker (a 100k-job queue stays in the state DB, not in the Dask scheduler), and ``casparian
jobs``, the queue widget and the timeline show Dask workers as workers. Dispatches go to Dask
in *chunks*: the attempts of one seat with the same ``resources`` are packed into tasks of at
most ``CHUNK_SIZE`` that run one after another on a worker thread (the scheduler and the
worker spend about 1 ms per task, however short the job), key
``casparian-<first job_id>-<its attempt>-x<count>`` (``casparian-<job_id>-<attempt>`` for
one), pinned to the seat's worker (``workers=[addr]``, no stealing) — or, when that worker
lacks the job's ``resources``, to one that has them. See :mod:`._dask_chunks`
for when a chunk is cut. The warm host pools live on the workers (:mod:`._dask_plugin`); each
attempt of a chunk pushes its own Receipt, and ``JobStarted``, as Dask events
(``log_event``), which the bridge forwards to the sentinel on the seat as they come;
``gather`` of the chunk's result is only the fallback for a receipt that did not come.

Workers joining and leaving are followed by polling the scheduler (``SYNC_INTERVAL``): a new
worker is probed (it must see the home's staging directory) and seated; a worker that left
says ``Goodbye(lost=True)`` on its seat, and the sentinel re-queues its attempts as for any
lost worker (a new attempt, so a late result of the old one is discarded: promotion once).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import zmq

from .. import plugins
from .._connection import ConnectionInfo, read_connection_file
from .._proc import pid_alive, profiled
from ..config import Settings, load_settings
from ..errors import CasparianError, ProtocolError, SharedStorageError
from ..joblogs import job_logs_root
from ..protocol import (
    Abort,
    AbortCause,
    Codec,
    Dispatch,
    ErrorInfo,
    ErrorKind,
    Goodbye,
    Heartbeat,
    HostJob,
    Receipt,
    ReceiptStatus,
    Refused,
    SentinelMessage,
    Shutdown,
    Welcome,
    WireMessage,
)
from ..sinks.staging import attempt_root
from . import _dask_plugin as remote
from ._dask_chunks import ChunkSubmitter
from ._dask_cluster import ClusterWorkers
from ._dask_names import BRIDGE_FILE, require_distributed
from ._dask_receipts import ReceiptRelay
from ._dask_seats import Chunk, Flight, Seat

__all__ = ["DaskBridge", "main"]

log = logging.getLogger("casparian_nb.executors.dask")

#: How often the bridge asks the scheduler which workers there are.
SYNC_INTERVAL = 0.5
#: Dispatches are submitted to Dask together once the first has waited this long (seconds)
#: or SUBMIT_BATCH are waiting: a graph update costs the scheduler and the worker about the
#: same for one task as for a dozen, and the sentinel's dispatches come one per receipt.
SUBMIT_DELAY = 0.005
SUBMIT_BATCH = 32
_hostjob = msgspec.json.Encoder()
_receipt_out = msgspec.json.Encoder()


class DaskBridge(ClusterWorkers, ReceiptRelay, ChunkSubmitter):
    """Serves the sentinel of ``settings.home`` with the workers of ``client``'s cluster."""

    def __init__(self, settings: Settings, client: Any, *, info: ConnectionInfo | None = None) -> None:
        self.settings = settings
        self.client = client
        self.info = info or read_connection_file(settings.home)
        self.codec = Codec(self.info.key_bytes, accepts=SentinelMessage,
                           max_bytes=settings.max_message_bytes)
        digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:10]
        #: The worker plugin's name and the event topic of this home's bridge.
        self.name = f"casparian-{digest}"
        self.seats: dict[str, Seat] = {}
        self._by_sock: dict[zmq.Socket[bytes], Seat] = {}
        self._refused: set[str] = set()
        self._trusted: dict[str, str] = {}
        self._staging_roots: dict[int, str] = {}
        self._log_root = str(job_logs_root(settings.home))
        #: Batches of finished attempts whose receipt came late (see ``_check_late``).
        self._done: queue.Queue[list[tuple[Seat, str, Flight]] | None] = queue.Queue()
        self._unsubmitted: list[tuple[Seat, str, Flight]] = []
        self._unsubmitted_since = 0.0
        self._answered: list[Any] = []
        #: The chunks submitted to each worker (address) with attempts still unanswered.
        self._chunks_at: dict[str, set[Chunk]] = {}
        #: Whether what waits in ``_unsubmitted`` waits to fill a chunk (the loop then need
        #: not wake every SUBMIT_DELAY: only a receipt or a dispatch changes its mind).
        self._filling = False
        #: Plugin path -> how long its attempts take (seconds; see ``_took``), and the last
        #: few it was taken from.
        self._job_time: dict[str, float] = {}
        self._job_times: dict[str, collections.deque[float]] = {}
        #: Attempts no worker has the resources for, and the resource sets said so in the log.
        self._held: list[tuple[Seat, str, Flight]] = []
        self._said_waiting: set[tuple[tuple[str, float], ...]] = set()
        self._fetched: queue.Queue[tuple[Seat, str, Flight, Any]] = queue.Queue()
        self._fetcher = threading.Thread(target=self._fetch_results, name="cf-bridge-fetch",
                                         daemon=True)
        #: Aborts are RPCs to one worker: off the loop, so a dying worker cannot stall it.
        self._rpc = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cf-bridge-rpc")
        #: What the tasks say through the topic: started jobs and receipts.
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._wake_ep = f"inproc://bridge-wake-{id(self)}"
        self._wake_rx = self._ctx.socket(zmq.PULL)
        self._wake_rx.bind(self._wake_ep)
        self._wake_tx: zmq.Socket[bytes] | None = None
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._ids = 0
        self._id_prefix = f"b{os.getpid():x}-"

    # -- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        s = self.settings
        self.client.register_plugin(remote.HostPoolPlugin(
            self.name, log_dir=str(s.logs_dir), cancel_grace=s.cancel_grace,
            memory_limit_mb=s.job_memory_limit_mb,
            log_max_bytes=s.host_log_max_mb * 1024 * 1024), name=self.name)
        self.client.subscribe_topic(self.name, self._on_task_event)
        self._fetcher.start()
        try:
            workers = self._scheduler_workers()
            self.check_shared_storage(list(workers), strict=True)
            self._write_info()
            self._loop()
            return 0
        finally:
            self._shutdown()

    def _write_info(self) -> None:
        data = {"scheduler": self.client.scheduler.address, "pid": os.getpid(),
                "dashboard": getattr(self.client, "dashboard_link", None)}
        path = self.settings.home / BRIDGE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _shutdown(self) -> None:
        self._done.put(None)
        self._rpc.shutdown(wait=False, cancel_futures=True)
        # The hosts first (the plugin's teardown kills the running ones), so that nothing is
        # staged any more once the sentinel reads the ABORTED receipts below.
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception as exc:  # the cluster may be gone already
            log.info("could not remove the worker plugin: %s", exc)
        for seat in list(self.seats.values()):
            futures = {id(f.future): f.future for f in seat.running.values()
                       if f.future is not None}  # None: dispatched, never submitted
            if futures:
                self.client.cancel(list(futures.values()), force=True)
            for job_id, flight in list(seat.running.items()):
                self._send(seat, Receipt(job_id=job_id, attempt=flight.dispatch.attempt,
                                         status=ReceiptStatus.ABORTED, reason="shutdown",
                                         cause=AbortCause.SHUTDOWN, worker_id=seat.worker_id))
            self._drop_seat(seat, Goodbye(worker_id=seat.worker_id))
        (self.settings.home / BRIDGE_FILE).unlink(missing_ok=True)
        self._wake_rx.close(0)
        if self._wake_tx is not None:
            self._wake_tx.close(0)
        self._ctx.destroy(linger=0)

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        interval = self.settings.heartbeat_interval
        next_beat = next_sync = 0.0
        poller, polled = zmq.Poller(), set[zmq.Socket[bytes]]()
        poller.register(self._wake_rx, zmq.POLLIN)
        while not self._stop.is_set():
            if polled != self._by_sock.keys():  # seats came or went: poll what there is
                poller, polled = zmq.Poller(), set(self._by_sock)
                poller.register(self._wake_rx, zmq.POLLIN)
                for sock in polled:
                    poller.register(sock, zmq.POLLIN)
            # Dispatches wait up to SUBMIT_DELAY to go to Dask together (see _submit_pending).
            ready = dict(poller.poll(int(SUBMIT_DELAY * 1000)
                                     if self._unsubmitted and not self._filling else 50))
            if self._wake_rx in ready:
                while True:
                    try:
                        self._wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                # Cleared before the queues are read: whatever comes after wakes us again.
                self._wake_pending = False
            for sock in [s for s in ready if s is not self._wake_rx]:
                seat = self._by_sock.get(sock)
                for _ in range(1000):
                    if seat is None or seat.address not in self.seats:
                        break
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(seat, frames)
            self._send_events()  # first: the receipts free the threads _submit_pending counts
            if self._unsubmitted and (time.monotonic() - self._unsubmitted_since >= SUBMIT_DELAY
                                      or len(self._unsubmitted) >= SUBMIT_BATCH):
                self._submit_pending()
            self._send_results()
            self._release_answered()
            now = time.monotonic()
            if now >= next_sync:
                next_sync = now + SYNC_INTERVAL
                self._sync_workers()
                self._check_late(now)
            if now >= next_beat:
                next_beat = now + interval
                if not pid_alive(self.info.pid):
                    log.warning("sentinel pid %d is gone; the bridge exits", self.info.pid)
                    return
                for seat in self.seats.values():
                    self._send(seat, Heartbeat(worker_id=seat.worker_id,
                                               active_job_ids=list(seat.running),
                                               free_slots=seat.capacity - len(seat.running)))

    def _send(self, seat: Seat, message: WireMessage) -> None:
        self._ids += 1
        try:
            seat.sock.send_multipart(self.codec.encode(message, msg_id=f"{self._id_prefix}{self._ids:x}"))
        except zmq.ZMQError as exc:
            log.warning("could not send %s for %s: %s", type(message).__name__,
                        seat.worker_id, exc)

    def _handle(self, seat: Seat, frames: list[bytes]) -> None:
        try:
            payload = self.codec.decode(frames)[1].payload
        except ProtocolError as exc:
            log.warning("dropped a message from the sentinel: %s", exc)
            return
        if isinstance(payload, Dispatch):
            self._on_dispatch(seat, payload)
        elif isinstance(payload, Abort):
            self._on_abort(seat, payload)
        elif isinstance(payload, Shutdown):
            self._stop.set()
        elif isinstance(payload, Refused):
            log.error("the sentinel refused %s: %s", seat.worker_id, payload.reason)
            self.seats.pop(seat.address, None)
            self._by_sock.pop(seat.sock, None)
            self._refused.add(seat.address)
            seat.sock.close(0)
        elif not isinstance(payload, Welcome):
            log.info("ignored %s", type(payload).__name__)

    # -- jobs ------------------------------------------------------------------------------
    def _on_dispatch(self, seat: Seat, dispatch: Dispatch) -> None:
        job_id, attempt = dispatch.job.job_id, int(dispatch.attempt)
        if len(seat.running) >= seat.capacity:
            self._send(seat, Receipt(job_id=job_id, attempt=attempt, worker_id=seat.worker_id,
                                     status=ReceiptStatus.REJECTED,
                                     error=ErrorInfo(ename="Capacity", evalue="worker at capacity",
                                                     kind=ErrorKind.TRANSIENT)))
            return
        try:
            self._check_trust(dispatch)
        except CasparianError as exc:
            self._send(seat, Receipt(job_id=job_id, attempt=attempt, worker_id=seat.worker_id,
                                     status=ReceiptStatus.FAILED,
                                     error=ErrorInfo(ename=type(exc).__name__, evalue=str(exc))))
            return
        staging = self._staging_roots.get(attempt)
        if staging is None:  # a handful of attempt numbers: paths made once each
            staging = self._staging_roots[attempt] = str(
                attempt_root(self.settings.staging_dir, attempt))
        # The job's captured output goes beside the staging dir, on the storage both sides
        # see (checked at start), so ctl.logs reads it as for a local worker.
        # Staged without a sync: the chunk syncs its attempts' files together before it
        # reports them (run_chunk), on the machine that wrote them.
        payload = _hostjob.encode(HostJob(job=dispatch.job, attempt=attempt,
                                          staging_root=staging, log_root=self._log_root,
                                          redact_log=self.settings.tape_redact,
                                          sync_staging=False))
        flight = Flight(dispatch, payload)
        seat.running[job_id] = flight
        if not self._unsubmitted:
            self._unsubmitted_since = time.monotonic()
        self._unsubmitted.append((seat, job_id, flight))

    def _place(self, seat: Seat, needs: dict[str, float] | None) -> str | None:
        """The worker an attempt runs on: its seat's, unless that one lacks the attempt's
        resources; then the one with them holding fewest of our attempts; None: none has."""
        if seat.offers(needs):
            return seat.address
        able = [s.address for s in self.seats.values() if s.offers(needs)]
        if not able:
            return None
        load = {a: 0 for a in able}
        for other in self.seats.values():
            for f in other.running.values():
                if f.address in load:
                    load[f.address] += 1
        return min(able, key=load.__getitem__)

    def _hold(self, item: tuple[Seat, str, Flight]) -> None:
        """Keep an attempt no worker has the resources for until one joins (``_sync_workers``
        submits it then). It stays DISPATCHED on its seat, and the log says why, once per
        resource set: it is waiting, not lost; a cancel answers it at once."""
        needs = item[2].dispatch.job.resources or {}
        said = tuple(sorted(needs.items()))
        if said not in self._said_waiting:
            self._said_waiting.add(said)
            log.warning("job %s needs resources %s, which no Dask worker of the cluster "
                        "offers (start one with dask worker --resources \"%s\"); its "
                        "attempts wait here until one joins", item[1], needs,
                        " ".join(f"{k}={v:g}" for k, v in needs.items()))
        self._held.append(item)

    def _check_trust(self, dispatch: Dispatch) -> None:
        """The bridge checks the trust policy before any worker sees the job (F13); the
        host checks the source hash again where it runs."""
        plugins.check_job_trust(dispatch.job.plugin_path, dispatch.job.plugin_source_hash,
                                self.settings.trust, self._trusted)


def main() -> int:
    """``python -m casparian_nb.executors.dask``: serve the home's sentinel (settings from
    ``CASPARIAN_*``, as the launcher passes them) with the configured Dask cluster."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s dask-bridge %(levelname)s %(message)s")
    try:
        settings = load_settings()
        distributed = require_distributed()
        deadline = time.monotonic() + 10.0
        while True:
            try:
                info = read_connection_file(settings.home)
                break
            except CasparianError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if settings.scheduler_file:
            client = distributed.Client(scheduler_file=settings.scheduler_file, timeout="20s")
        else:
            client = distributed.Client(settings.scheduler, timeout="20s")
    except (CasparianError, OSError, TimeoutError) as exc:
        print(f"casparian: error: {exc}", flush=True)
        return 1
    bridge = DaskBridge(settings, client, info=info)

    def _stop(signum: int, frame: object) -> None:
        bridge.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        with profiled("dask-bridge"):
            return bridge.run()
    except SharedStorageError as exc:
        print(f"casparian: error: {exc}", flush=True)
        return 1
    finally:
        client.close()

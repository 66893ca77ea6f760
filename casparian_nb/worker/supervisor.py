"""The worker process: connects to the sentinel, runs up to N jobs on warm plugin hosts.

Stateless apart from the jobs it is running. The main thread owns the DEALER socket; job
threads run :meth:`HostPool.run` and hand results back through a queue plus an inproc wake-up.
An ``Abort`` kills the job's host (SIGTERM, short grace, SIGKILL); the job thread then reports
ABORTED and the pool starts a fresh host. The worker exits when the sentinel that started it
is gone, so it never outlives its home's sentinel. The jobs themselves, from dispatch to
receipt, are :mod:`._jobs`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import zmq

from .._connection import ConnectionInfo, read_connection_file
from .._proc import lower_priority, pid_alive, profiled
from ..config import Settings
from ..errors import AuthenticationError, CasparianError, ProtocolError, SentinelError
from ..protocol import (
    MAGIC,
    Abort,
    AbortCause,
    Codec,
    Dispatch,
    ErrorInfo,
    ErrorKind,
    Goodbye,
    HandlerTable,
    Heartbeat,
    Identify,
    Message,
    Receipt,
    ReceiptStatus,
    Refused,
    SentinelMessage,
    Shutdown,
    SignatureError,
    StaleMessageError,
    Welcome,
    WireMessage,
    one_line,
)
from ._durable import StagingSyncer
from ._jobs import JobRunning, Started
from .pool import HostPool

__all__ = ["Worker", "run_worker"]

log = logging.getLogger("casparian_nb.worker")

#: How often the loop looks for started jobs while any run (they are held back for
#: ``_jobs.STARTED_DELAY``).
LOOK_INTERVAL = 0.02
#: Jobs a worker accepts beyond its slots and keeps in a local backlog, so a host starts its
#: next job the moment it finishes one instead of idling for a round trip to the sentinel.
PREFETCH = 1


class Worker(JobRunning):
    """One worker: ``slots`` plugin hosts serving jobs dispatched by the sentinel."""

    def __init__(self, settings: Settings, *, info: ConnectionInfo | None = None,
                 slots: int | None = None, worker_id: str | None = None,
                 prefetch: int = PREFETCH) -> None:
        self.settings = settings
        self.info = info or read_connection_file(settings.home)
        self.slots = slots or settings.effective_slots
        #: Slots announced to the sentinel (Identify).
        self.advertised = self.slots
        self.prefetch = max(0, prefetch)
        self.worker_id = worker_id or f"w-{socket.gethostname()[:12]}-{os.getpid()}"
        self.codec = Codec(self.info.key_bytes, accepts=SentinelMessage,
                           max_bytes=settings.max_message_bytes)
        self.table = HandlerTable(self.codec, {Dispatch: self._on_dispatch, Abort: self._on_abort,
                                               Shutdown: self._on_shutdown,
                                               Refused: self._on_refused,
                                               Welcome: self._on_welcome},
                                  name="worker", refusal=None, logger=log,
                                  log_burst=20)  # fmt: skip
        self._stop = threading.Event()
        self._results: queue.Queue[tuple[Dispatch, Receipt | Started]] = queue.Queue()
        self._running: dict[str, Dispatch] = {}
        self._trusted: dict[str, str] = {}
        self.pool: HostPool | None = None
        # _lock guards the backlog, the job-thread count and parked aborts: an Abort that
        # arrives between a job leaving the backlog and its host being taken is parked in
        # _pending_aborts and honoured by the job thread as soon as it can.
        self._lock = threading.Lock()
        self._backlog: deque[Dispatch] = deque()
        self._threads = 0
        self._pending_aborts: dict[str, Abort] = {}
        #: JobStarted messages held back for STARTED_DELAY: a job that finishes by then is
        #: reported by its receipt alone (one message instead of two for fast jobs).
        self._started: dict[str, tuple[float, Started]] = {}
        self._id_prefix = f"{os.getpid():x}-"
        self._ids = itertools.count(1)
        self._executor: ThreadPoolExecutor | None = None
        self._syncer: StagingSyncer[Dispatch] = StagingSyncer(self._deliver)

    # -- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        ctx = zmq.Context()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.sock.connect(self.info.workers)
        self.wake_rx = ctx.socket(zmq.PULL)
        self.wake_rx.bind(f"inproc://worker-wake-{id(self)}")
        self._wake_ep = f"inproc://worker-wake-{id(self)}"
        self._ctx = ctx
        self._tls = threading.local()
        self.pool = HostPool(self.slots, log_dir=self.settings.logs_dir,
                             cancel_grace=self.settings.cancel_grace,
                             memory_limit_mb=self.settings.job_memory_limit_mb,
                             log_max_bytes=self.settings.host_log_max_mb * 1024 * 1024,
                             name=f"host-{self.worker_id}")
        executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="cf-job")
        self._executor = executor
        try:
            # While the hosts import their libraries: what the first killed job needs (the
            # pool drops its staging through casparian_nb.sinks, which imports pyarrow), so
            # the first cancel is as quick as the others (~0.15-0.4 s otherwise).
            from .. import sinks  # noqa: F401

            self.pool.wait_ready()
            self._send(Identify(worker_id=self.worker_id, slots=self.advertised,
                                prefetch=self.prefetch, pid=os.getpid(),
                                host=socket.gethostname()))  # fmt: skip
            if not self._await_welcome():
                return 2
            self._loop()
            return 0
        finally:
            self._shutdown(executor)
            # Give the last receipts and the Goodbye a moment to leave (not forever: the
            # sentinel may be gone), then drop everything else.
            self.sock.close(linger=500 if pid_alive(self.info.pid) else 0)
            ctx.destroy(linger=0)

    def _await_welcome(self, timeout: float = 10.0) -> bool:
        """Wait for the sentinel's Welcome; False when stopped or unanswered in ``timeout``.

        The sentinel answers an Identify it cannot verify with a Refused signed with *its*
        key: a Refused that fails our verification means the key in our sentinel.json is not
        the running sentinel's, and raises :class:`AuthenticationError` at once. Any other
        unverifiable message (a forged Welcome) is dropped, as always. A Refused we can verify
        raises :class:`SentinelError` with the sentinel's reason.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            try:
                msg = self.codec.decode(frames)[1]
            except SignatureError as exc:
                log.warning("dropped a message from the sentinel: %s", exc)
                if _unverified_type(frames) != Refused.__name__:
                    continue  # nothing it says is acted on; only the peer we dialled can send
                if isinstance(exc, StaleMessageError):  # signed, but the clocks disagree
                    raise AuthenticationError(
                        f"the sentinel at {self.info.workers} answered with a message outside "
                        f"the accepted time window ({exc}); check that the clocks agree"
                    ) from None
                conn = self.info.path or self.settings.connection_file
                raise AuthenticationError(
                    f"the sentinel at {self.info.workers} rejected our signature: the key in "
                    f"{conn} is not the running sentinel's (restart the worker with the "
                    "current sentinel.json)") from None
            except ProtocolError as exc:
                log.warning("dropped a message from the sentinel: %s", exc)
                continue
            if isinstance(msg.payload, Welcome):
                return True
            if isinstance(msg.payload, Refused):
                reason = one_line(msg.payload.reason or "no reason given", 300)
                raise SentinelError(f"the sentinel at {self.info.workers} refused this "
                                    f"worker: {reason}")
        if self._stop.is_set():
            return False
        log.error("no answer from the sentinel at %s within %.0fs", self.info.workers, timeout)
        return False

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_rx, zmq.POLLIN)
        interval = self.settings.heartbeat_interval
        next_beat = 0.0
        while not self._stop.is_set():
            wait = min(interval, 0.25 if not self._running else LOOK_INTERVAL)
            if self._started:
                first = min(t for t, _ in self._started.values())
                wait = max(0.0, min(wait, first - time.monotonic()))
            ready = dict(poller.poll(int(wait * 1000)))
            if self.sock in ready:
                for _ in range(1000):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.table.handle(frames)  # never raises; nothing is answered
            if self.wake_rx in ready:
                while True:
                    try:
                        self.wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            self._send_results()
            now = time.monotonic()
            if self._started:
                self._send_started(now)
            if now >= next_beat:
                next_beat = now + interval
                if not pid_alive(self.info.pid):
                    log.warning("sentinel pid %d is gone; worker exits", self.info.pid)
                    return
                self._send(Heartbeat(worker_id=self.worker_id,
                                     active_job_ids=list(self._running),
                                     # counts the backlog: slots + prefetch in all
                                     free_slots=self.capacity - len(self._running)))

    @property
    def capacity(self) -> int:
        """Jobs this worker holds at most: one per slot plus the backlog."""
        return self.slots + self.prefetch

    # -- messages ------------------------------------------------------------------------
    def _send(self, message: WireMessage) -> None:
        self.sock.send_multipart(self.codec.encode(message,
                                                   msg_id=f"{self._id_prefix}{next(self._ids):x}"))

    def _on_welcome(self, msg: Message, routing: list[bytes]) -> None:
        """A second Welcome (the answer to an Identify sent again) changes nothing."""

    def _on_shutdown(self, msg: Message, routing: list[bytes]) -> None:
        self._stop.set()

    def _on_refused(self, msg: Message, routing: list[bytes]) -> None:
        assert isinstance(msg.payload, Refused)
        log.error("sentinel refused us: %s", msg.payload.reason)
        self._stop.set()

    def _on_dispatch(self, msg: Message, routing: list[bytes]) -> None:
        dispatch = msg.payload
        assert isinstance(dispatch, Dispatch)
        job_id = dispatch.job.job_id
        if len(self._running) >= self.capacity:
            self._send(Receipt(job_id=job_id, attempt=dispatch.attempt,
                               status=ReceiptStatus.REJECTED,
                               error=ErrorInfo(ename="Capacity", evalue="worker at capacity",
                                               kind=ErrorKind.TRANSIENT)))  # fmt: skip
            return
        try:
            self._check_trust(dispatch)
            self._accept(dispatch)
        except CasparianError as exc:
            self._send(Receipt(job_id=job_id, attempt=dispatch.attempt,
                               status=ReceiptStatus.FAILED,
                               error=ErrorInfo(ename=type(exc).__name__, evalue=str(exc))))
        except Exception:  # a bug of ours: the job still gets its receipt (transient)
            log.exception("taking on job %s failed", job_id)
            if job_id not in self._running:
                self._send(Receipt(job_id=job_id, attempt=dispatch.attempt,
                                   status=ReceiptStatus.FAILED, worker_id=self.worker_id,
                                   error=ErrorInfo(ename="WorkerError",
                                                   evalue="the worker could not take the job on",
                                                   kind=ErrorKind.TRANSIENT)))  # fmt: skip

    def _shutdown(self, executor: ThreadPoolExecutor) -> None:
        self._stop.set()  # job threads take nothing more from the backlog
        if self.pool is not None:
            self.pool.close()
        executor.shutdown(wait=True, cancel_futures=True)
        self._syncer.close(timeout=30.0)  # the last receipts, once durable
        try:
            self._send_results()
            for job_id, dispatch in list(self._running.items()):  # never reached a job thread
                self._running.pop(job_id, None)
                self._send(Receipt(job_id=job_id, attempt=dispatch.attempt,
                                   status=ReceiptStatus.ABORTED, reason="shutdown",
                                   cause=AbortCause.SHUTDOWN,
                                   worker_id=self.worker_id))
            self._send(Goodbye(worker_id=self.worker_id))
        except zmq.ZMQError:
            pass


def _unverified_type(frames: list[bytes]) -> str | None:
    """The ``type`` a message that failed verification claims to be (never acted on, only
    used to word an error), or None when its body does not even say."""
    try:
        body = frames[frames.index(MAGIC) + 2]
        claimed = json.loads(body).get("type")
    except (ValueError, IndexError, AttributeError, RecursionError):
        return None
    return claimed if isinstance(claimed, str) else None


def run_worker(settings: Settings, *, slots: int | None = None, worker_id: str | None = None,
               wait: float = 10.0) -> int:
    """Entry point of ``casparian worker``: wait (bounded) for a sentinel, then serve."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s worker %(levelname)s %(message)s")
    if settings.worker_nice > 0:
        # Batch work yields the CPU to interactive work (a notebook kernel, a shell) on a
        # busy machine, and costs nothing on an idle one; plugin hosts inherit it.
        try:
            lower_priority(settings.worker_nice)
        except OSError as exc:
            log.warning("cannot lower the worker's priority: %s", exc)
    deadline = time.monotonic() + wait
    while True:
        try:
            info = read_connection_file(settings.home)
            break
        except SentinelError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    worker = Worker(settings, info=info, slots=slots, worker_id=worker_id or
                    f"w-{uuid.uuid4().hex[:6]}")

    def _stop(signum: int, frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with profiled("worker"):
        return worker.run()

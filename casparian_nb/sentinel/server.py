"""The sentinel process: sockets, the state DB and a committer around the pure state machine.

One thread runs the ZMQ loop: it drains every ready socket, turns messages into events for
:class:`~casparian_nb.sentinel.state.SentinelState`, writes the resulting store operations in
one transaction, then sends, publishes and records. A second thread, the committer, promotes
staged outputs into sinks one job at a time, so each sink (a DuckDB file above all) has a single
writer; it reports back through an inproc socket (``_committer.py``: a DuckDB file another
process holds parks only its own promotions). The socket handler tables are in
``_control.py`` (control requests) and ``_workers.py`` (worker messages); the events socket
(subscriptions, publishing, the tape) is ``_events.py``; recovery at start, the staging sweeps
and the clean stop are ``_lifecycle.py``.
"""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from .. import __version__
from .._connection import write_connection_file
from .._proc import pid_alive, profiled
from ..config import Settings
from ..protocol import (
    Codec,
    ControlRequest,
    EventMessage,
    HandlerTable,
    Message,
    WireMessage,
    WorkerMessage,
)
from ..store.schema import now_iso
from . import state as st
from ._committer import Committer, CommitterItem, FinishedItem
from ._control import ControlHandlers
from ._events import EventPublisher
from ._lifecycle import Lifecycle
from ._persist import Persister, SentinelStore
from ._submit import SubmitHandler
from ._workers import WorkerHandlers, refused

__all__ = ["Sentinel"]

log = logging.getLogger("casparian_nb.sentinel")

#: Events queued per subscriber before the PUB socket drops for that subscriber (~1 KiB
#: each): a stalled subscriber costs the sentinel at most a few MiB.
EVENTS_SNDHWM = 1000
#: Subscriptions are ``\x01 + topic``; ours are a few bytes. A longer message ends that
#: subscriber's connection instead of being stored by the socket.
EVENTS_MAXMSGSIZE = 1024
#: Log lines about refused messages: per socket, at most this many per 10 s (the rest are
#: counted), so hostile traffic cannot grow sentinel.log at will.
REFUSED_LOG_BURST = 20


class Sentinel(ControlHandlers, WorkerHandlers, EventPublisher, Lifecycle):
    """Owns the home's state DB and serves the control, worker and event sockets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = os.urandom(32)
        # One codec per socket: each decodes only the messages its socket carries.
        self.codec = Codec(self.key, accepts=ControlRequest, max_bytes=settings.max_message_bytes)
        self.worker_codec = Codec(self.key, accepts=WorkerMessage,
                                  max_bytes=settings.max_message_bytes)
        self.events_codec = Codec(self.key, accepts=EventMessage,
                                  max_bytes=settings.max_message_bytes)
        store = SentinelStore.open(settings.state_db)
        assert isinstance(store, SentinelStore)
        self.store = store
        self.state = st.SentinelState(
            max_retries=settings.max_retries, retry_backoff=settings.retry_backoff,
            host_kill_retries=settings.host_kill_retries,
            manual_retry_limit=settings.manual_retry_limit,
            worker_timeout=settings.worker_timeout, default_timeout=settings.job_timeout,
            timeout_grace=max(2.0, 3 * settings.heartbeat_interval),
        )
        self.persist = Persister(self.store, settings)
        self.submitter = SubmitHandler(self.store, settings)
        self.started_at = time.time()
        self._stop = threading.Event()
        self._event_seq = 0
        self._job_corr: dict[int, str] = {}  # job id -> correlation id, for its tape events
        self._pending_replies: dict[str, tuple[list[bytes], Message]] = {}
        self._promotions: queue.Queue[CommitterItem] = queue.Queue()
        #: Promotions done, and tasks the committer hands back to the loop (a compaction's
        #: records and reply).
        self._finished: queue.Queue[FinishedItem] = queue.Queue()
        self.tape = self._open_tape()
        self.ctx = zmq.Context()
        self.endpoints: dict[str, str] = {}
        self.control_table = HandlerTable(self.codec, self._control_handlers(), name="control",
                                          logger=log, log_burst=REFUSED_LOG_BURST)
        self.worker_table = HandlerTable(self.worker_codec, self._worker_handlers(),
                                         name="worker socket", refusal=refused, logger=log,
                                         log_burst=REFUSED_LOG_BURST)
        self._actions: list[st.Action] = []
        # Message ids: a per-process prefix and a counter (uuid4 costs a getrandom per message).
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        #: Topics someone subscribed to (XPUB reports them); no subscriber, nothing to encode.
        #: Only prefixes of EVENT_TOPICS are kept, so it holds at most a handful.
        self._subscriptions: set[bytes] = set()
        self._ignored_topic_logged = False
        #: worker id -> (pid, same machine?) for the liveness check of local workers.
        self._worker_procs: dict[str, tuple[int, bool]] = {}
        self._committer_thread: threading.Thread | None = None
        #: GetQueueStats, cached until the next write to the state DB.
        self._stats: dict[str, int] | None = None

    # -- set-up --------------------------------------------------------------------------
    def _open_tape(self) -> Any:
        from ..tape import TapeWriter

        if not self.settings.sentinel_tape:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.settings.tapes_dir / f"sentinel-{stamp}-{os.getpid()}.tape"
        return TapeWriter(path, producer="sentinel", redact=self.settings.tape_redact)

    def _bind(self, sock: zmq.Socket[bytes], port: int) -> str:
        host = self.settings.bind_host
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("binding %s: the sentinel is reachable from other machines", host)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        if port:
            sock.bind(f"tcp://{host}:{port}")
            return f"tcp://{host}:{port}"
        chosen = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{chosen}"

    def bind(self) -> None:
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.wrk = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.XPUB)
        self.endpoints = {
            "control": self._bind(self.ctl, self.settings.control_port),
            "workers": self._bind(self.wrk, self.settings.worker_port),
            "events": self._bind(self.pub, self.settings.events_port),
        }
        # Bound what subscribers can cost: queued events per subscriber, subscription size.
        self.pub.setsockopt(zmq.SNDHWM, EVENTS_SNDHWM)
        self.pub.setsockopt(zmq.MAXMSGSIZE, EVENTS_MAXMSGSIZE)
        self.wake_rx = self.ctx.socket(zmq.PAIR)
        self.wake_rx.bind(f"inproc://wake-{id(self)}")
        self.wake_tx = self.ctx.socket(zmq.PAIR)
        self.wake_tx.connect(f"inproc://wake-{id(self)}")

    # -- main loop -----------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.bind()
        committer = threading.Thread(target=self._committer, name="cf-committer", daemon=True)
        self._committer_thread = committer
        self.recover()
        info = {**self.endpoints, "key": self.key.hex(), "pid": os.getpid(),
                "home": str(self.settings.home), "version": 1, "casparian_version": __version__,
                "started_at": datetime.now(UTC).isoformat()}
        committer.start()
        write_connection_file(self.settings.connection_file, info)
        log.info("sentinel serving %s (pid %d)", self.endpoints["control"], os.getpid())
        poller = zmq.Poller()
        for sock in (self.ctl, self.wrk, self.wake_rx, self.pub):
            poller.register(sock, zmq.POLLIN)
        last_tick = last_pid_check = 0.0
        try:
            self._flush()
            while not self._stop.is_set():
                timeout = 100
                wake = self.state.next_wakeup()
                if wake is not None:
                    timeout = int(max(0, min(0.1, wake - time.time())) * 1000)
                ready = dict(poller.poll(timeout))
                if self.pub in ready:  # first: a subscriber sees what the requests cause
                    self._drain_subscriptions()
                if self.wrk in ready:
                    self._drain(self.wrk, self._handle_worker)
                if self.ctl in ready:
                    self._drain(self.ctl, self._handle_control)
                    # A long request (a submit of 100,000 files) must not make the workers'
                    # heartbeats look overdue: read what they sent meanwhile before the Tick.
                    self._drain(self.wrk, self._handle_worker)
                if self.wake_rx in ready:
                    self._drain_wake()
                now = time.time()
                if now - last_tick >= 0.1:
                    last_tick = now
                    if now - last_pid_check >= 0.5:
                        last_pid_check = now
                        self._check_worker_pids(now)
                        for table in (self.control_table, self.worker_table):
                            table.limiter.flush()  # "N more ... not logged", once a flood ends
                    self._feed(st.Tick(now))
                self._flush()
        finally:
            self._shutdown()

    def _drain(self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None]) -> None:
        for _ in range(1000):  # bounded so one busy socket cannot starve the others
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:  # a handler bug must never take the loop down (F14)
                log.exception("handler failed")

    def _drain_wake(self) -> None:
        while True:
            try:
                self.wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        self._take_finished()

    def _take_finished(self) -> None:
        while True:
            try:
                ev = self._finished.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, st.PromotionFinished):
                self._feed(ev)
            else:
                ev()

    def _check_worker_pids(self, now: float) -> None:
        """A local worker whose process is gone is lost now, not after the heartbeat timeout."""
        for wid, (pid, local) in list(self._worker_procs.items()):
            if wid not in self.state.workers:
                self._worker_procs.pop(wid, None)
            elif local and not pid_alive(pid):
                self._worker_procs.pop(wid, None)
                self._feed(st.WorkerGone(wid, f"worker process {pid} exited", now))

    def _feed(self, event: st.Event) -> None:
        self._actions += self.state.handle(event)

    def _msg_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _send_worker(self, ident: bytes, message: WireMessage) -> None:
        self.wrk.send_multipart([ident, *self.worker_codec.encode(message, msg_id=self._msg_id())])

    def _flush(self) -> None:
        """Carry out the actions: store first (one transaction), then messages."""
        actions, self._actions = self._actions, []
        if not actions:
            return
        persists: list[st.Persist] = [a for a in actions if isinstance(a, st.Persist)]
        if persists:
            self._persist_all(persists)
        for a in actions:
            if isinstance(a, st.Send):
                ident = self.state.identity_of(a.worker_id)
                if ident is not None:
                    self._send_worker(ident, a.message)
            elif isinstance(a, st.Publish):
                self._publish(a.name, a.data)
            elif isinstance(a, st.Promote | st.Discard):
                self._promotions.put(a)
            elif isinstance(a, st.RemoveStaging):
                self._remove_staging(a)
            elif isinstance(a, st.Reply):
                self._reply_pending(a.request_id, a.message)

    def _persist_all(self, persists: list[st.Persist]) -> None:
        self._stats = None
        now = now_iso()
        try:
            with self.store.transaction():
                for a in persists:
                    self.persist.apply(a, now)
            return
        except Exception:
            log.exception("writing %d state change(s) in one transaction failed; "
                          "retrying them one by one", len(persists))
        for a in persists:  # keep every change that can be made; log the ones that cannot
            try:
                with self.store.transaction():
                    self.persist.apply(a, now)
            except Exception:
                log.exception("state change %r failed", a)

    # -- committer -----------------------------------------------------------------------
    def _committer(self) -> None:
        """The committer thread: the single writer of every sink (see ``_committer.py``);
        results go back through ``_finished``, the loop is woken once per burst."""
        Committer(self.persist, self._promotions, self._finished,
                  lambda: self.wake_tx.send(b""),
                  lock_timeout=self.settings.sink_lock_timeout,
                  hold_s=self.settings.duckdb_hold_s).run()

    # -- shutdown ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish (safe from signal handlers and other threads)."""
        self._stop.set()



def install_signal_handlers(sentinel: Sentinel) -> None:
    """SIGINT and SIGTERM stop the loop cleanly, even when started with SIGINT ignored."""

    def _stop(signum: int, frame: object) -> None:
        sentinel.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


#: Where LocalCluster sends a sentinel's stdout and stderr (in the home's logs dir).
STDERR_LOG = "sentinel.out"


def _stderr_is(path: Path) -> bool:
    """Whether our stderr is the file ``path`` (same inode), e.g. when LocalCluster started us."""
    try:
        ours, theirs = os.fstat(2), path.stat()
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def run_sentinel(settings: Settings) -> int:
    """Entry point of ``casparian sentinel``: log to ``<home>/logs/sentinel.log`` (and to
    stderr, unless stderr is ``sentinel.out`` next to it: each line is written once), serve."""
    cap = int(max(0.0, settings.sentinel_log_max_mb) * 1024 * 1024)
    handlers: list[logging.Handler] = [logging.handlers.RotatingFileHandler(
        settings.logs_dir / "sentinel.log", maxBytes=cap // 2, backupCount=1 if cap else 0)]
    if not _stderr_is(settings.logs_dir / STDERR_LOG):
        handlers.append(logging.StreamHandler())  # a terminal, a pipe, a supervisor's journal
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s sentinel %(levelname)s %(message)s", handlers=handlers)
    sentinel = Sentinel(settings)
    install_signal_handlers(sentinel)
    with profiled("sentinel"):
        sentinel.serve_forever()
    return 0

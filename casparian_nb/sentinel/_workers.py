"""The sentinel's worker socket: one handler per worker message (``Sentinel.worker_table``).

The socket is served by a :class:`~casparian_nb.protocol.HandlerTable` that answers what it
refuses with ``Refused{reason}`` (a worker with the wrong key learns why at once) and a
rate-limited log line; a worker that has not said ``Identify`` is told so. Everything else
becomes an event for the state machine; nothing on this socket is answered otherwise.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from ..protocol import (
    Error,
    Goodbye,
    HandlerTable,
    Heartbeat,
    Identify,
    JobStarted,
    Message,
    Receipt,
    Refused,
    Welcome,
    WireMessage,
)
from . import state as st

if TYPE_CHECKING:
    import zmq

    from ..config import Settings

__all__ = ["WorkerHandlers", "refused"]

log = logging.getLogger("casparian_nb.sentinel")


def refused(error: Error) -> Refused:
    """How the worker socket answers a message it refuses."""
    return Refused(reason=error.message[:300])


class WorkerHandlers:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: the worker messages."""

    if TYPE_CHECKING:  # provided by Sentinel
        wrk: zmq.Socket[bytes]
        settings: Settings
        state: st.SentinelState
        worker_table: HandlerTable
        _worker_procs: dict[str, tuple[int, bool]]

        def _feed(self, event: Any) -> None: ...
        def _send_worker(self, ident: bytes, message: WireMessage) -> None: ...

    def _worker_handlers(self) -> dict[type[WireMessage], Any]:
        return {Identify: self._on_identify, Heartbeat: self._on_heartbeat,
                JobStarted: self._on_job_started, Receipt: self._on_receipt,
                Goodbye: self._on_goodbye}  # fmt: skip

    def _handle_worker(self, frames: list[bytes]) -> None:
        out = self.worker_table.handle(frames)
        if out:
            self.wrk.send_multipart(out)

    def _known(self, ident: bytes, worker_id: str | None) -> str | None:
        if worker_id and self.state.identity_of(worker_id) == ident:
            return worker_id
        for w in self.state.workers.values():
            if w.identity == ident:
                return w.worker_id
        self._send_worker(ident, Refused(reason="unknown worker: send Identify first"))
        return None

    def _on_identify(self, msg: Message, routing: list[bytes]) -> None:
        p = msg.payload
        assert isinstance(p, Identify)
        ident = routing[0]
        self._send_worker(ident, Welcome(worker_id=p.worker_id,
                                         heartbeat_interval=self.settings.heartbeat_interval))
        self._worker_procs[p.worker_id] = (p.pid, p.host == socket.gethostname())
        prefetch = p.prefetch if 0 <= p.prefetch <= 64 else 0
        self._feed(st.WorkerJoined(p.worker_id, ident, p.slots, p.pid, time.time(), prefetch))

    def _on_heartbeat(self, msg: Message, routing: list[bytes]) -> None:
        p = msg.payload
        assert isinstance(p, Heartbeat)
        wid = self._known(routing[0], p.worker_id)
        if wid:
            capacity = p.free_slots + len(p.active_job_ids)
            self._feed(st.WorkerHeartbeat(wid, time.time(), capacity))

    def _on_job_started(self, msg: Message, routing: list[bytes]) -> None:
        p = msg.payload
        assert isinstance(p, JobStarted)
        wid = self._known(routing[0], p.worker_id)
        if wid and p.job_id.isdigit():
            self._feed(st.JobStarted(int(p.job_id), wid, p.host_pid, time.time()))

    def _on_receipt(self, msg: Message, routing: list[bytes]) -> None:
        p = msg.payload
        assert isinstance(p, Receipt)
        wid = self._known(routing[0], p.worker_id)
        if wid and p.job_id.isdigit():
            self._feed(st.ReceiptReceived(int(p.job_id), wid, p.attempt, p.status, p,
                                          time.time()))

    def _on_goodbye(self, msg: Message, routing: list[bytes]) -> None:
        p = msg.payload
        assert isinstance(p, Goodbye)
        wid = self._known(routing[0], p.worker_id)
        if wid:
            self._feed(st.WorkerGone(wid, p.reason or "worker said goodbye", time.time(),
                                     graceful=not p.lost))

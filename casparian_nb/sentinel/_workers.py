"""The sentinel's worker socket: one handler per worker message (``Sentinel.worker_handlers``).

A message that does not decode is dropped with a rate-limited log line and a ``Refused``
back to its sender (a worker with the wrong key learns why at once); a worker that has not
said ``Identify`` is told so. Everything else becomes an event for the state machine.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from ..protocol import Codec, LogLimiter, Message, ReceiptStatus
from . import state as st

if TYPE_CHECKING:
    import zmq

    from ..config import Settings

__all__ = ["WorkerHandlers"]

log = logging.getLogger("casparian_nb.sentinel")


class WorkerHandlers:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: the worker messages."""

    if TYPE_CHECKING:  # provided by Sentinel
        codec: Codec
        wrk: zmq.Socket[bytes]
        settings: Settings
        state: st.SentinelState
        worker_handlers: dict[str, Callable[[bytes, Message], None]]
        _refused_log: dict[str, LogLimiter]
        _worker_procs: dict[str, tuple[int, bool]]

        def _feed(self, event: Any) -> None: ...

    def _handle_worker(self, frames: list[bytes]) -> None:
        try:
            routing, msg = self.codec.decode(frames)
        except ProtocolError as exc:
            self._refused_log["workers"].log("worker socket: dropped message: %s", exc)
            ident = frames[0] if frames else b""
            if ident and len(frames) > 1:
                self.wrk.send_multipart([ident, *self.codec.encode(
                    "Refused", {"reason": str(exc)[:300]})])
            return
        handler = self.worker_handlers.get(msg.type)
        if handler is None:
            self._refused_log["workers"].log("worker socket: unknown message type %r", msg.type)
            return
        handler(routing[0], msg)

    def _known(self, ident: bytes, msg: Message) -> str | None:
        wid = str(msg.payload.get("worker_id") or "")
        if wid and self.state.identity_of(wid) == ident:
            return wid
        for w in self.state.workers.values():
            if w.identity == ident:
                return w.worker_id
        self.wrk.send_multipart([ident, *self.codec.encode(
            "Refused", {"reason": "unknown worker: send Identify first"})])
        return None

    def _on_identify(self, ident: bytes, msg: Message) -> None:
        p = msg.payload
        wid = str(p["worker_id"])
        self.wrk.send_multipart([ident, *self.codec.encode(
            "Welcome", {"worker_id": wid, "heartbeat_interval": self.settings.heartbeat_interval})])
        self._worker_procs[wid] = (int(p["pid"]), p.get("host") == socket.gethostname())
        prefetch = p.get("prefetch")
        prefetch = prefetch if isinstance(prefetch, int) and 0 <= prefetch <= 64 else 0
        self._feed(st.WorkerJoined(wid, ident, int(p["slots"]), int(p["pid"]), time.time(),
                                   prefetch))

    def _on_heartbeat(self, ident: bytes, msg: Message) -> None:
        wid = self._known(ident, msg)
        if wid:
            p = msg.payload
            capacity = None
            if isinstance(p.get("free_slots"), int) and isinstance(p.get("active_job_ids"), list):
                capacity = p["free_slots"] + len(p["active_job_ids"])
            self._feed(st.WorkerHeartbeat(wid, time.time(), capacity))

    def _on_job_started(self, ident: bytes, msg: Message) -> None:
        wid = self._known(ident, msg)
        if wid:
            self._feed(st.JobStarted(int(msg.payload["job_id"]), wid,
                                     int(msg.payload["host_pid"]), time.time()))

    def _on_receipt(self, ident: bytes, msg: Message) -> None:
        wid = self._known(ident, msg)
        if wid:
            p = msg.payload
            self._feed(st.ReceiptReceived(int(p["job_id"]), wid, int(p.get("attempt") or 0),
                                          ReceiptStatus(p["status"]), p, time.time()))

    def _on_goodbye(self, ident: bytes, msg: Message) -> None:
        wid = self._known(ident, msg)
        if wid:
            self._feed(st.WorkerGone(wid, "worker said goodbye", time.time(), graceful=True))

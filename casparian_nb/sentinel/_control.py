"""The sentinel's control socket: one handler per request type (``Sentinel.control_handlers``).

Every request gets a reply with a status; a message that does not decode gets an ``Error``
reply (and a rate-limited log line), an unknown type ``UNKNOWN_TYPE``, a handler that raises
a one-line ``Error`` — never a dead loop. Writes go through the state machine (``_feed``) or
are queued as actions, so a reply is sent only after what it reports is committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import CasparianError, ProtocolError
from ..protocol import Codec, LogLimiter, Message, error_code, error_reply
from . import state as st

if TYPE_CHECKING:
    import zmq

    from ._persist import SentinelStore
    from ._submit import SubmitHandler

__all__ = ["ControlHandlers"]

log = logging.getLogger("casparian_nb.sentinel")


class ControlHandlers:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: the control requests."""

    if TYPE_CHECKING:  # provided by Sentinel
        codec: Codec
        ctl: zmq.Socket[bytes]
        store: SentinelStore
        state: st.SentinelState
        submitter: SubmitHandler
        started_at: float
        control_handlers: dict[str, Callable[[list[bytes], Message], None]]
        _actions: list[st.Action]
        _event_seq: int
        _pending_replies: dict[str, tuple[list[bytes], Message]]
        _refused_log: dict[str, LogLimiter]
        _stats: dict[str, int] | None
        _stop: threading.Event

        def _msg_id(self) -> str: ...
        def _flush(self) -> None: ...
        def _feed(self, event: Any) -> None: ...

    def _handle_control(self, frames: list[bytes]) -> None:
        try:
            routing, msg = self.codec.decode(frames)
        except ProtocolError as exc:
            # WireError carries the routing frames, the error code and (once the signature
            # checked out) the request id, so the client can match the error to its request.
            routing = list(getattr(exc, "routing", None) or frames[:1])
            self._refused_log["control"].log("control: rejected message: %s", exc)
            self.ctl.send_multipart(error_reply(self.codec, getattr(exc, "request_id", None),
                                                error_code(exc), str(exc), routing=routing))
            return
        handler = self.control_handlers.get(msg.type)
        if handler is None:
            self._reply(routing, msg, "Error", {"code": "UNKNOWN_TYPE",
                                                "message": f"unknown request type {msg.type!r}"})
            return
        try:
            handler(routing, msg)
        except (CasparianError, ValueError, KeyError, TypeError) as exc:
            code = error_code(exc)
            text = (str(exc).splitlines() or [type(exc).__name__])[0]
            self._reply(routing, msg, "Error", {
                "code": "INVALID_REQUEST" if code == "INTERNAL" else code, "message": text})
        except Exception as exc:
            log.exception("control handler %s failed", msg.type)
            self._reply(routing, msg, "Error", {"code": "INTERNAL", "message": repr(exc)[:300]})

    def _reply(self, routing: list[bytes], req: Message, type_: str, payload: dict[str, Any]) -> None:
        status = "error" if type_ == "Error" else "ok"
        self.ctl.send_multipart([*routing, *self.codec.encode(
            type_, payload, reply_to=req.id, status=status, msg_id=self._msg_id())])

    def _reply_pending(self, request_id: str, type_: str, payload: dict[str, Any]) -> None:
        pending = self._pending_replies.pop(request_id, None)
        if pending is not None:
            self._reply(pending[0], pending[1], type_, payload)

    def _on_ping(self, routing: list[bytes], msg: Message) -> None:
        # event_seq: the seq of the last event published, so a subscriber can tell when it
        # has everything up to now (the notebook drains its session tape before stopping).
        self._reply(routing, msg, "Pong", {"pid": os.getpid(), "version": __version__,
                                           "uptime_s": round(time.time() - self.started_at, 3),
                                           "event_seq": self._event_seq})

    def _on_list_jobs(self, routing: list[bytes], msg: Message) -> None:
        p = msg.payload
        status = str(p["status"]).upper() if p.get("status") else None
        submission = p.get("submission_id")
        jobs = self.store.list_jobs(status=status,
                                    limit=max(0, min(int(p.get("limit") or 100), 10_000)),
                                    offset=max(0, int(p.get("offset") or 0)),
                                    submission_id=submission)
        if submission is not None:
            total = self.store.count_jobs(status, submission)
        else:
            stats = self._queue_stats()
            total = stats.get(status.lower(), 0) if status else stats.get("total", 0)
        self._reply(routing, msg, "Jobs", {"jobs": [_slim(j) for j in jobs], "total": total})

    def _queue_stats(self) -> dict[str, int]:
        """Counts per state, recounted only after the state DB changed (the sentinel is its
        only writer): polling an idle queue of 100,000 jobs costs nothing."""
        if self._stats is None:
            self._stats = self.store.queue_stats()
        return dict(self._stats)

    def _on_get_job(self, routing: list[bytes], msg: Message) -> None:
        job = self.store.get_job(int(msg.payload["job_id"]))
        if job is not None:
            job.pop("staged_json", None)
        self._reply(routing, msg, "Job", {"job": job})

    def _on_cancel_job(self, routing: list[bytes], msg: Message) -> None:
        self._pending_replies[msg.id] = (routing, msg)
        job_id = int(msg.payload["job_id"])
        if job_id not in self.state.jobs:
            self._pending_replies.pop(msg.id)
            self._flush()  # it may have just finished: let the DB say how before we read it
            row = self.store.get_job(job_id)
            text = (f"job {job_id} is already {row['status']}" if row
                    else f"job {job_id} does not exist")
            self._reply(routing, msg, "CancelResult", {
                "success": False, "state": row["status"] if row else "UNKNOWN", "message": text})
            return
        self._feed(st.CancelRequested(job_id, msg.id, time.time()))

    def _on_cancel_jobs(self, routing: list[bytes], msg: Message) -> None:
        p = msg.payload
        if p.get("job_ids"):
            ids = [int(j) for j in p["job_ids"]]
        else:
            want = str(p.get("status") or "QUEUED").upper()
            ids = [j.id for j in self.state.jobs.values()
                   if want == "ALL" or (j.status == want)]
        results: dict[str, str] = {}
        now = time.time()
        self._flush()  # what has finished in memory is in the DB before we read it
        for job_id in ids:
            if job_id not in self.state.jobs:  # finished (or unknown): say which
                row = self.store.get_job(job_id)
                results[str(job_id)] = row["status"] if row else "UNKNOWN"
                continue
            for a in self.state.handle(st.CancelRequested(job_id, uuid.uuid4().hex, now)):
                if isinstance(a, st.Reply):
                    results[str(job_id)] = a.payload.get("state", "")
                else:
                    self._actions.append(a)
        cancelled = sum(1 for state in results.values() if state in ("ABORTED", "ABORTING"))
        # Answered after this iteration's state changes are committed, like every write, so
        # a client that reads right after the reply sees them.
        self._pending_replies[msg.id] = (routing, msg)
        self._actions.append(st.Reply(msg.id, "CancelResult", {
            "success": True, "state": "MIXED", "message": f"{cancelled} job(s) cancelled",
            "results": results}))

    def _on_stats(self, routing: list[bytes], msg: Message) -> None:
        self._reply(routing, msg, "QueueStats", self._queue_stats())

    def _on_submit(self, routing: list[bytes], msg: Message) -> None:
        now = time.time()
        self._stats = None
        outcome = self.submitter.submit(msg.payload, now)
        for name, data in outcome.events:
            self._actions.append(st.Publish(name, data))
        self._feed(st.JobsQueued(outcome.records, now))
        self._reply(routing, msg, "Submitted", {"job_ids": outcome.job_ids,
                                                "skipped": outcome.skipped,
                                                "submission_id": outcome.submission_id})

    def _on_register(self, routing: list[bytes], msg: Message) -> None:
        self._reply(routing, msg, "PluginRegistered", self.submitter.register(msg.payload["path"]))

    def _on_workers(self, routing: list[bytes], msg: Message) -> None:
        self._reply(routing, msg, "Workers", {"workers": self.state.worker_table()})

    def _on_shutdown(self, routing: list[bytes], msg: Message) -> None:
        self._reply(routing, msg, "ShutdownAck", {})
        self._stop.set()

_BULKY = ("plan_json", "staged_json", "traceback", "artifacts_json")


def _slim(job: dict[str, Any]) -> dict[str, Any]:
    """A job row for listings: without the bulky per-job JSON (GetJob has everything)."""
    return {k: v for k, v in job.items() if k not in _BULKY}

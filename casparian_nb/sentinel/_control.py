"""The sentinel's control socket: one handler per request Struct (``Sentinel.control_table``).

The socket is served by a :class:`~casparian_nb.protocol.HandlerTable`: every request gets a
reply; a message that does not decode, an unknown type or a handler that raises gets a one-line
``Error`` reply (and a rate-limited log line) — never a dead loop. Writes go through the state
machine (``_feed``) or are queued as actions, so a reply is sent only after what it reports is
committed: a handler that cannot answer at once parks the request and returns None.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .. import __version__
from ..errors import CasparianError, CompactionError, SinkURIError
from ..protocol import (
    STORED_JOB_STATUSES,
    CancelJob,
    CancelJobs,
    CancelOutcome,
    CancelResult,
    Compacted,
    CompactedOutput,
    CompactOutputs,
    Error,
    ErrorCode,
    GetJob,
    GetQueueStats,
    HandlerTable,
    Job,
    Jobs,
    JobStatus,
    ListJobs,
    ListWorkers,
    Message,
    Ping,
    Pong,
    QueueStats,
    RegisterPlugin,
    RequestFailed,
    RetryJobs,
    Shutdown,
    ShutdownAck,
    SubmitJobs,
    Submitted,
    WireMessage,
    WorkerInfo,
    Workers,
)
from ..sinks import SinkMode
from ..sinks.compaction import CompactionResult, check_compactable, compact
from . import state as st

if TYPE_CHECKING:
    import queue

    import zmq

    from ._committer import CommitterItem, FinishedItem
    from ._persist import Persister, SentinelStore
    from ._submit import SubmitHandler

__all__ = ["ControlHandlers"]

log = logging.getLogger("casparian_nb.sentinel")

#: CancelJobs' ``status`` that selects every job not finished yet.
ALL_JOBS = "ALL"

T = TypeVar("T")


class ControlHandlers:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: the control requests."""

    if TYPE_CHECKING:  # provided by Sentinel
        ctl: zmq.Socket[bytes]
        store: SentinelStore
        state: st.SentinelState
        persist: Persister
        submitter: SubmitHandler
        started_at: float
        control_table: HandlerTable
        _actions: list[st.Action]
        _event_seq: int
        _pending_replies: dict[str, tuple[list[bytes], Message]]
        _stats: dict[str, int] | None
        _stop: threading.Event
        _promotions: queue.Queue[CommitterItem]
        _finished: queue.Queue[FinishedItem]
        wake_tx: zmq.Socket[bytes]

        def _flush(self) -> None: ...
        def _feed(self, event: Any) -> None: ...

    def _control_handlers(self) -> dict[type[WireMessage], Any]:
        return {
            Ping: self._on_ping, ListJobs: self._on_list_jobs, GetJob: self._on_get_job,
            CancelJob: self._on_cancel_job, CancelJobs: self._on_cancel_jobs,
            GetQueueStats: self._on_stats, SubmitJobs: self._on_submit,
            RegisterPlugin: self._on_register, ListWorkers: self._on_workers,
            Shutdown: self._on_shutdown, RetryJobs: self._on_retry,
            CompactOutputs: self._on_compact,
        }  # fmt: skip

    def _handle_control(self, frames: list[bytes]) -> None:
        out = self.control_table.handle(frames)
        if out:
            self.ctl.send_multipart(out)

    def _reply_pending(self, request_id: str, reply: WireMessage) -> None:
        pending = self._pending_replies.pop(request_id, None)
        if pending is not None:
            routing, request = pending
            self.ctl.send_multipart(self.control_table.reply(routing, request, reply))

    def _on_ping(self, msg: Message, routing: list[bytes]) -> Pong:
        # event_seq: the seq of the last event published, so a subscriber can tell when it
        # has everything up to now (the notebook drains its session tape before stopping).
        return Pong(pid=os.getpid(), version=__version__,
                    uptime_s=round(time.time() - self.started_at, 3), event_seq=self._event_seq)

    def _on_list_jobs(self, msg: Message, routing: list[bytes]) -> Jobs:
        req = msg.payload
        assert isinstance(req, ListJobs)
        status = _job_status(req.status) if req.status else None
        jobs = self.store.list_jobs(status=status,
                                    limit=max(0, min(req.limit or 100, 10_000)),
                                    offset=max(0, req.offset or 0),
                                    submission_id=req.submission_id)
        if req.submission_id is not None:
            total = self.store.count_jobs(status, req.submission_id)
        else:
            stats = self._queue_stats()
            total = stats.get(status.lower(), 0) if status else stats.get("total", 0)
        return Jobs(jobs=[_slim(j) for j in jobs], total=total)

    def _queue_stats(self) -> dict[str, int]:
        """Counts per state, recounted only after the state DB changed (the sentinel is its
        only writer): polling an idle queue of 100,000 jobs costs nothing."""
        if self._stats is None:
            self._stats = self.store.queue_stats()
        return dict(self._stats)

    def _on_get_job(self, msg: Message, routing: list[bytes]) -> Job:
        assert isinstance(msg.payload, GetJob)
        job = self.store.get_job(msg.payload.job_id)
        if job is not None:
            job.pop("staged_json", None)
        return Job(job=job)

    def _on_cancel_job(self, msg: Message, routing: list[bytes]) -> CancelResult | None:
        assert isinstance(msg.payload, CancelJob)
        job_id = msg.payload.job_id
        if job_id not in self.state.jobs:
            self._flush()  # it may have just finished: let the DB say how before we read it
            row = self.store.get_job(job_id)
            text = (f"job {job_id} is already {row['status']}" if row
                    else f"job {job_id} does not exist")
            state = row["status"] if row else CancelOutcome.UNKNOWN
            return CancelResult(success=False, state=state, message=text)
        self._pending_replies[msg.id] = (routing, msg)
        self._feed(st.CancelRequested(job_id, msg.id, time.time()))
        return None

    def _on_cancel_jobs(self, msg: Message, routing: list[bytes]) -> None:
        req = msg.payload
        assert isinstance(req, CancelJobs)
        if req.job_ids:
            ids = list(req.job_ids)
        else:
            want = (req.status or JobStatus.QUEUED).upper()
            everything = want == ALL_JOBS
            if not everything:
                want = _job_status(want, tuple(JobStatus))
            ids = [j.id for j in self.state.jobs.values() if everything or j.status == want]
        results: dict[str, str] = {}
        now = time.time()
        self._flush()  # what has finished in memory is in the DB before we read it
        for job_id in ids:
            if job_id not in self.state.jobs:  # finished (or unknown): say which
                row = self.store.get_job(job_id)
                results[str(job_id)] = row["status"] if row else CancelOutcome.UNKNOWN
                continue
            for a in self.state.handle(st.CancelRequested(job_id, uuid.uuid4().hex, now)):
                if isinstance(a, st.Reply):
                    assert isinstance(a.message, CancelResult)
                    results[str(job_id)] = a.message.state
                else:
                    self._actions.append(a)
        cancelled = sum(1 for s in results.values()
                        if s in (JobStatus.ABORTED, CancelOutcome.ABORTING))
        # Answered after this iteration's state changes are committed, like every write, so
        # a client that reads right after the reply sees them.
        self._pending_replies[msg.id] = (routing, msg)
        self._actions.append(st.Reply(msg.id, CancelResult(
            success=True, state=CancelOutcome.MIXED, message=f"{cancelled} job(s) cancelled",
            results=results)))

    def _on_retry(self, msg: Message, routing: list[bytes]) -> None:
        req = msg.payload
        assert isinstance(req, RetryJobs)
        statuses = [_job_status(s, (JobStatus.FAILED, JobStatus.ABORTED))
                    for s in req.statuses]
        self._flush()  # what has just finished is in the DB before we read it
        self._stats = None
        event = self.persist.retry_candidates(list(req.job_ids), statuses, time.time())
        event.request_id = msg.id
        # Answered once the re-queue is committed (the Reply action), like every write.
        self._pending_replies[msg.id] = (routing, msg)
        self._feed(event)

    def _on_stats(self, msg: Message, routing: list[bytes]) -> QueueStats:
        return msgspec.convert(self._queue_stats(), QueueStats)

    def _on_submit(self, msg: Message, routing: list[bytes]) -> Submitted:
        assert isinstance(msg.payload, SubmitJobs)
        now = time.time()
        self._stats = None
        outcome = self.submitter.submit(msg.payload, now)
        for name, data in outcome.events:
            self._actions.append(st.Publish(name, data))
        self._feed(st.JobsQueued(outcome.records, now))
        return Submitted(job_ids=outcome.job_ids, skipped=outcome.skipped,
                         submission_id=outcome.submission_id)

    def _on_register(self, msg: Message, routing: list[bytes]) -> WireMessage:
        assert isinstance(msg.payload, RegisterPlugin)
        return self.submitter.register(msg.payload.path)

    def _on_workers(self, msg: Message, routing: list[bytes]) -> Workers:
        return Workers(workers=[WorkerInfo(**w) for w in self.state.worker_table()])

    def _on_shutdown(self, msg: Message, routing: list[bytes]) -> ShutdownAck:
        self._stop.set()
        return ShutdownAck()

    # -- compaction ------------------------------------------------------------------------
    def _on_compact(self, msg: Message, routing: list[bytes]) -> None:
        """Merge small promoted files: merged in a thread of its own, each swap done by the
        committer between two promotions, the artifacts repointed and the reply sent by the
        loop — the request is answered once all of it is committed."""
        req = msg.payload
        assert isinstance(req, CompactOutputs)
        try:
            sink, _ = check_compactable(req.sink, req.output, req.target_size)
        except SinkURIError as exc:
            raise RequestFailed(ErrorCode.INVALID_REQUEST, str(exc)) from None
        # A replace/error-mode run tells its own files from other runs' by their names; a
        # merged file holding some of its jobs' rows would count as another run's.
        busy = [j.id for j in self.state.jobs.values()
                if j.spec.mode != SinkMode.APPEND and str(sink) in str(j.spec.sink)]
        if busy:
            raise RequestFailed(ErrorCode.INVALID_REQUEST, (
                f"{len(busy)} job(s) with mode replace/error are not finished in {sink} "
                f"(e.g. job {busy[0]}); compact after they finish"))
        self._pending_replies[msg.id] = (routing, msg)
        threading.Thread(target=self._compact, args=(msg.id, req), name="cf-compact",
                         daemon=True).start()

    def _on_committer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the committer thread (between two promotions) and wait for it."""
        done: Future[T] = Future()

        def task() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self._promotions.put(task)
        while True:  # the committer stops with the sentinel: do not wait for it forever
            try:
                return done.result(timeout=0.5)
            except TimeoutError:
                if self._stop.is_set():
                    raise CompactionError("the sentinel stopped during the compaction; "
                                          "the next compaction of the sink finishes it") from None

    def _compact(self, request_id: str, req: CompactOutputs) -> None:
        """The compaction thread: never touches the store or the sockets itself."""
        try:
            result: CompactionResult | Exception = compact(
                req.sink, req.output, target_size=req.target_size, swap_with=self._on_committer)
        except Exception as exc:
            if not isinstance(exc, CasparianError):
                log.exception("compaction of %s failed", req.sink)
            result = exc

        def finish() -> None:  # on the loop thread
            self._reply_pending(request_id, self._record_compaction(req, result))

        def hand_back() -> None:  # on the committer thread, which owns the wake socket
            self._finished.put(finish)
            self.wake_tx.send(b"")

        self._promotions.put(hand_back)

    def _record_compaction(self, req: CompactOutputs,
                           result: CompactionResult | Exception) -> WireMessage:
        if isinstance(result, Exception):
            code = ErrorCode.INVALID_REQUEST if isinstance(result, SinkURIError) \
                else ErrorCode.INTERNAL
            return Error(code=code, message=str(result).splitlines()[0] if str(result)
                         else type(result).__name__)
        repointed = 0
        try:
            with self.store.transaction():
                repointed = self.store.repoint_artifacts(result.uri_moves())
        except Exception as exc:
            log.exception("recording the compaction of %s failed", req.sink)
            return Error(code=ErrorCode.DB_ERROR,
                         message=f"files compacted, but recording it failed: {exc}")
        if result.outputs:
            log.info("compacted %s: %d files -> %d, %d job(s) repointed", result.sink,
                     result.files_before, result.files_after, repointed)
        return Compacted(sink=result.sink, target_size=result.target_size,
                         jobs_repointed=repointed,
                         outputs=[CompactedOutput(**{k: v for k, v in o.to_dict().items()
                                                     if k != "merged"})
                                  for o in result.outputs])


def _job_status(text: str, allowed: Collection[JobStatus] = STORED_JOB_STATUSES) -> JobStatus:
    """A status filter as a client sent it (any case), or INVALID_REQUEST."""
    status = text.strip().upper()
    if status not in allowed:
        raise RequestFailed(ErrorCode.INVALID_REQUEST, f"unknown job status {text[:40]!r}; "
                            f"expected one of {', '.join(allowed)}")
    return JobStatus(status)


_BULKY = ("plan_json", "staged_json", "traceback", "artifacts_json")


def _slim(job: dict[str, Any]) -> dict[str, Any]:
    """A job row for listings: without the bulky per-job JSON (GetJob has everything)."""
    return {k: v for k, v in job.items() if k not in _BULKY}

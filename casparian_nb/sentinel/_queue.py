"""The state machine's queue and capacity: the jobs waiting (ready by priority, or
delayed until a retry is due), the workers' slots, and dispatching ready jobs onto the
workers with free slots. Pure, like all of :mod:`.state`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Dispatch, EventName, JobSpec, JobStatus
from ._vocabulary import Action, ClaimJob, JobRec, Publish, Send

_QUEUED, _RUNNING = JobStatus.QUEUED, JobStatus.RUNNING

__all__ = ["JobQueue", "plugin_name_fields"]


def plugin_name_fields(spec: JobSpec) -> dict[str, Any]:
    """``plugin_name`` for an event payload, plus ``plugin_name_source: "file"`` when the name
    is the plugin file's stem rather than a declared ``name`` (tape redaction then hashes it,
    as it does every file name)."""
    if spec.plugin_name_declared:
        return {"plugin_name": spec.plugin_name}
    return {"plugin_name": spec.plugin_name, "plugin_name_source": "file"}


@dataclass(slots=True)
class _Worker:
    worker_id: str
    identity: bytes
    slots: int  # as advertised, plus the backlog it keeps (prefetch)
    pid: int
    last_seen: float
    running: set[int] = field(default_factory=set)
    #: Slots the worker proved to have (a capacity rejection, a heartbeat); None = trust
    #: the advertised number.
    cap: int | None = None

    @property
    def free(self) -> int:
        limit = self.slots if self.cap is None else min(self.slots, self.cap)
        return limit - len(self.running)



class JobQueue:
    """The queue (ready and delayed heaps) and the workers' slots: which job runs where.

    The attributes are set by ``SentinelState.__init__``; the parts of the machine, all
    subclasses of this one, share them.
    """

    max_retries: int
    manual_retry_limit: int
    host_kill_retries: int
    retry_backoff: float
    worker_timeout: float
    default_timeout: float | None
    timeout_grace: float
    jobs: dict[int, JobRec]
    workers: dict[str, _Worker]
    _ready: list[tuple[int, int]]  # (-priority, id)
    _delayed: list[tuple[float, int]]  # (ready_at, id)
    _queued: int
    #: Dispatch nothing (the sentinel is shutting down).
    paused: bool

    # -- introspection -------------------------------------------------------------------
    def queued_count(self) -> int:
        """How many jobs wait in the queue (ready or delayed)."""
        return self._queued

    def worker_table(self) -> list[dict[str, Any]]:
        """The connected workers, as ``ListWorkers`` reports them."""
        return [
            {"worker_id": w.worker_id, "slots": w.slots, "pid": w.pid, "running": sorted(w.running),
             "last_seen": w.last_seen, "free": w.free}
            for w in self.workers.values()
        ]

    def identity_of(self, worker_id: str) -> bytes | None:
        """The worker socket's routing id of ``worker_id`` (None once it is gone)."""
        w = self.workers.get(worker_id)
        return w.identity if w else None

    def timeout_of(self, job: JobRec) -> float | None:
        """The job's own timeout, else the sentinel's default (None: no timeout)."""
        return job.timeout_s if job.timeout_s is not None else self.default_timeout

    # -- the queue -----------------------------------------------------------------------
    def _enqueue(self, job: JobRec, now: float) -> None:
        self._queued += 1
        if job.ready_at > now:
            heapq.heappush(self._delayed, (job.ready_at, job.id))
        else:
            heapq.heappush(self._ready, (-job.priority, job.id))


    # -- dispatch ------------------------------------------------------------------------
    def _pop_ready(self, now: float) -> JobRec | None:
        while self._delayed and self._delayed[0][0] <= now:
            _, jid = heapq.heappop(self._delayed)
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED:
                heapq.heappush(self._ready, (-job.priority, jid))
        while self._ready:
            _, jid = heapq.heappop(self._ready)
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED:
                if job.ready_at > now:  # a stale entry of a job now waiting for a retry
                    continue
                return job
        return None

    def _dispatch(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if not self._queued or not self.workers or self.paused:
            return actions
        while True:
            worker = max(self.workers.values(), key=lambda w: w.free)
            if worker.free <= 0:
                return actions
            job = self._pop_ready(now)
            if job is None:
                return actions
            self._queued -= 1
            job.status, job.worker_id, job.dispatched_at = _RUNNING, worker.worker_id, now
            job.attempt += 1
            worker.running.add(job.id)
            actions += [
                ClaimJob(job.id, worker.worker_id, job.attempt),
                Send(worker.worker_id, Dispatch(job=job.spec, attempt=job.attempt,
                                                timeout_s=self.timeout_of(job))),
                Publish(EventName.JOB_DISPATCHED, {
                    "job_id": job.id, "worker_id": worker.worker_id,
                    **plugin_name_fields(job.spec),
                    "plugin_version": job.spec.parser_version, "attempt": job.attempt}),
            ]

    def next_wakeup(self) -> float | None:
        """When the earliest delayed (retry) job becomes ready, if any."""
        while self._delayed:
            ready_at, jid = self._delayed[0]
            job = self.jobs.get(jid)
            if job is not None and job.status == _QUEUED and job.ready_at == ready_at:
                return ready_at
            heapq.heappop(self._delayed)  # stale: cancelled, or re-queued since
        return None

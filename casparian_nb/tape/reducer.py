"""The job-queue state machine over tape domain events, shared by explain and replay.

One implementation of "what does this event do to a job" keeps ``tape explain``, the replay
reducer and the timeline in agreement. Status rules (last event wins, in tape order):

=====================  ========================================================
JobQueued              ``queued`` (creates the job; a re-queue resets the worker)
JobDispatched          ``dispatched``; opens a run on ``worker_id``
JobStarted             ``running`` (never resurrects a finished job)
CancelRequested        ``cancel_requested = true``; status unchanged
JobCompleted           ``completed``; rows, outputs, duration; error cleared
JobFailed              ``failed``, or ``queued`` when ``will_retry`` is true
JobRetried             ``queued``; ``retries += 1``
JobAborted             ``aborted``; ``reason``
JobSkipped             ``skipped``; ``reason``
MaterializationRecorded  appends ``output_name`` to outputs (once)
WorkerLost             every job in ``requeued_job_ids`` back to ``queued``
=====================  ========================================================

Jobs are kept in order of first appearance (dict insertion order); any job event creates the
job it names, so a tape that starts mid-session still explains. Job ids ``123`` and
``"123"`` are the same job (:func:`job_key`). Memory grows with jobs and workers, not events.
The records, the status names and :func:`apply_worker_event` are in :mod:`._records`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ._decode import UNSET, Payload, to_payload
from ._records import ABORTED as ABORTED
from ._records import COMPLETED as COMPLETED
from ._records import (
    DISPATCHED,
    QUEUED,
    RUNNING,
    TERMINAL,
    JobRecord,
    WorkerRecord,
    apply_worker_event,
)
from ._records import FAILED as FAILED
from ._records import SKIPPED as SKIPPED
from .envelope import JOB_STATUSES, EventName, job_key, parse_timestamp

__all__ = ["TERMINAL", "JobRecord", "JobReducer", "WorkerRecord", "apply_worker_event"]

# The records and the status names are in ._records; explain imports the names from here.
_E = EventName

Handler = Callable[[Payload, Any], None]


class JobReducer:
    """Applies job and worker domain events; holds jobs, workers and counters.

    ``handlers`` maps an event name to its ``handler(payload, timestamp)``; a fast reader
    (explain) calls them directly.
    """

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.retries = 0
        self.cancels = 0
        self.materializations = 0
        #: (output_name, table) -> [count, rows]
        self.materialized: dict[tuple[Any, Any], list[int]] = {}
        #: correlation id of the command that queued a job -> how many jobs it queued
        self.queued_by: dict[str, int] = {}
        self._strings: dict[str, str] = {}
        self.handlers: dict[str, Handler] = {
            _E.JOB_QUEUED: self._queued,
            _E.JOB_DISPATCHED: self._dispatched,
            _E.JOB_STARTED: self._started,
            _E.CANCEL_REQUESTED: self._cancel,
            _E.JOB_COMPLETED: self._completed,
            _E.JOB_FAILED: self._failed,
            _E.JOB_RETRIED: self._retried,
            _E.JOB_ABORTED: self._aborted,
            _E.JOB_SKIPPED: self._skipped,
            _E.MATERIALIZATION_RECORDED: self._materialized,
            _E.WORKER_JOINED: self._worker_joined,
            _E.WORKER_LOST: self._worker_lost,
            _E.WORKER_LEFT: self._worker_left,
        }

    def apply_envelopes(self, events: list[Any], other: Callable[[Any], None]) -> int:
        """Apply decoded envelopes (``_decode.Envelope``) in order: domain events through
        ``handlers``, every other envelope through ``other(envelope)``. Returns how many
        were not envelopes (``event_name`` None)."""
        handlers = self.handlers
        skipped = 0
        queued, queued_by = _E.JOB_QUEUED, self.queued_by
        for e in events:
            en = e.event_name
            if en is None:  # valid JSON, but not an envelope
                skipped += 1
            elif en.type == "domain_event":
                p = e.payload
                try:
                    handler = handlers.get(en.name)
                except TypeError:  # a corrupt tape's unhashable event name: not a handler
                    continue
                if handler is not None and p is not None:
                    handler(p, e.timestamp)
                    corr = e.correlation_id
                    if corr is not None and en.name == queued and type(corr) is str:
                        # which command queued it: explain counts jobs per command
                        queued_by[corr] = queued_by.get(corr, 0) + 1
            else:
                other(e)
        return skipped

    def apply(self, name: Any, payload: Any, timestamp: Any = None) -> bool:
        """Apply one domain event (``payload`` a dict or a :class:`Payload`); returns
        whether it was a job/worker event."""
        # A corrupt tape may name an event with anything, a list included (unhashable).
        handler = self.handlers.get(name) if type(name) is str else None
        if handler is None:
            return False
        p = payload if type(payload) is Payload else to_payload(payload)
        if p is None:
            return False
        handler(p, timestamp)
        return True

    def copy(self) -> JobReducer:
        """An independent copy (replay snapshots)."""
        new = JobReducer()
        new.jobs = {k: copy.copy(v) for k, v in self.jobs.items()}
        new.workers = {k: copy.copy(v) for k, v in self.workers.items()}
        new.retries, new.cancels = self.retries, self.cancels
        new.materializations = self.materializations
        new.materialized = {k: list(v) for k, v in self.materialized.items()}
        new.queued_by = dict(self.queued_by)
        new._strings = self._strings
        return new

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        out = dict.fromkeys(JOB_STATUSES, 0)
        for job in self.jobs.values():
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def busy_until(self, end: float | None) -> dict[str, float]:
        """Busy seconds per worker, counting runs still open at ``end``."""
        busy = {w: rec.busy_s for w, rec in self.workers.items()}
        if end is not None:
            for job in self.jobs.values():
                if job.run_start is not None and job.run_worker in busy:
                    busy[job.run_worker] += max(0.0, end - job.run_start)
        return busy

    # -- helpers ---------------------------------------------------------------------------
    # These run once per event on million-event tapes: they avoid re-interning values that
    # did not change and look ids up directly before normalising them.
    def _s(self, value: Any) -> str | None:
        """Interned string (plugin names repeat per job; keep one copy)."""
        if value is None:
            return None
        text = value if type(value) is str else str(value)
        return self._strings.setdefault(text, text)

    def _job(self, payload: Payload) -> JobRecord | None:
        raw = payload.job_id
        job = self.jobs.get(raw) if type(raw) is str else None
        if job is None:
            key = job_key(raw)
            if key is None:
                return None
            job = self.jobs.get(key)
            if job is None:
                job = self.jobs[key] = JobRecord(key)
        return job

    def _worker(self, worker_id: Any) -> WorkerRecord | None:
        if worker_id is None:
            return None
        rec = self.workers.get(worker_id) if type(worker_id) is str else None
        if rec is None:
            key = self._s(worker_id) or ""
            rec = self.workers.get(key)
            if rec is None:
                rec = self.workers[key] = WorkerRecord(key)
        return rec

    def _plugin(self, job: JobRecord, p: Payload) -> None:
        name, version = p.plugin_name, p.plugin_version
        if name is not None and name != job.plugin_name:
            job.plugin_name = self._s(name)
        if version is not None and version != job.plugin_version:
            job.plugin_version = self._s(version)

    def _set_worker(self, job: JobRecord, worker_id: Any) -> None:
        if worker_id is not None and worker_id != job.worker_id:
            rec = self._worker(worker_id)
            job.worker_id = rec.worker_id if rec is not None else None

    def _end_run(self, job: JobRecord, t: float | None) -> None:
        """Close the job's open run: busy time to its worker, duration if none reported."""
        if job.run_start is not None and t is not None:
            elapsed = max(0.0, t - job.run_start)
            rec = self.workers.get(job.run_worker or "")
            if rec is not None:
                rec.busy_s += elapsed
            if job.duration_ms is None:
                job.duration_ms = round(elapsed * 1000.0, 3)
        job.run_start = None
        job.run_worker = None
        job.ended_at = t

    # -- handlers --------------------------------------------------------------------------
    def _queued(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        job.status = QUEUED
        job.worker_id = None
        self._plugin(job, p)
        if p.input_file is not UNSET:
            job.input_file = p.input_file

    def _dispatched(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        t = parse_timestamp(ts)
        if job.run_start is not None:
            self._end_run(job, t)  # a dispatch without an end: the previous run is over
        job.status = DISPATCHED
        job.attempts += 1
        job.duration_ms = None
        job.ended_at = None
        name, version = p.plugin_name, p.plugin_version
        if (name is not None and name != job.plugin_name) or (
                version is not None and version != job.plugin_version):
            self._plugin(job, p)
        job.dispatched_at = job.run_start = t
        # the per-event checks stay here, not behind a call (plain Python pays per call)
        wid = p.worker_id
        rec = self.workers.get(wid) if type(wid) is str else None
        if rec is None:
            rec = self._worker(wid)
        if rec is not None:
            rec.jobs += 1
            job.worker_id = job.run_worker = rec.worker_id
        else:
            job.worker_id = None

    def _started(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        wid = p.worker_id
        if job.status in TERMINAL:
            # A late start does not resurrect the job, but the worker it names exists: that
            # does not depend on the job's state (a split explain relies on it).
            if wid is not None:
                self._worker(wid)
            return
        job.status = RUNNING
        if wid is not None and wid != job.worker_id:
            self._set_worker(job, wid)

    def _cancel(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is not None:
            job.cancel_requested = True
            self.cancels += 1

    def _finish(self, job: JobRecord, p: Payload, ts: Any, status: str) -> None:
        job.status = status
        wid = p.worker_id
        if wid is not None and wid != job.worker_id:
            self._set_worker(job, wid)
        dur = p.duration_ms
        if type(dur) is int or type(dur) is float:
            job.duration_ms = dur
        self._end_run(job, parse_timestamp(ts))

    def _completed(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        self._finish(job, p, ts, COMPLETED)
        rows = p.rows
        if type(rows) is int:
            job.rows = rows
        if p.quarantine_rows is not UNSET:
            job.quarantine_rows = p.quarantine_rows
        outputs = p.outputs
        # usually the outputs its materializations already named, in the same order
        if type(outputs) is dict and outputs and list(outputs) != job.outputs:
            for name in outputs:
                if name not in job.outputs:
                    job.add_output(self._s(name) or name)
        if job.error is not None:
            job.error = None
        if job.error_kind is not None:
            job.error_kind = None

    def _failed(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        self._finish(job, p, ts, QUEUED if p.will_retry is True else FAILED)
        job.error = p.error if p.error is not None else p.message
        job.error_kind = self._s(p.error_kind)
        if type(p.retry_count) is int:
            job.retries = max(job.retries, p.retry_count)

    def _retried(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is None:
            return
        self.retries += 1
        job.retries += 1
        if job.status not in (DISPATCHED, RUNNING):
            job.status = QUEUED
        if p.error is not None:
            job.error = p.error

    def _aborted(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is not None:
            self._finish(job, p, ts, ABORTED)
            job.reason = p.reason

    def _skipped(self, p: Payload, ts: Any) -> None:
        job = self._job(p)
        if job is not None:
            job.status = SKIPPED
            job.reason = p.reason
            if p.input_file is not UNSET:
                job.input_file = p.input_file

    def _materialized(self, p: Payload, ts: Any) -> None:
        # The most frequent event (one per output per job).
        self.materializations += 1
        name, rows = p.output_name, p.rows
        key = (name, p.table)
        try:
            agg = self.materialized.get(key)
        except TypeError:  # a corrupt tape's list or object as a name: keyed by its text
            key = (None if name is None else str(name), None if p.table is None else str(p.table))
            agg = self.materialized.get(key)
        if agg is None:
            agg = self.materialized[key] = [0, 0]
        agg[0] += 1
        counted = type(rows) is int
        if counted:
            agg[1] += rows
        job = self._job(p)
        if job is None:
            return
        if name is not None and name not in job.outputs:
            job.add_output(self._s(name) or str(name))
        if counted and not job.rows:
            job.rows = rows  # the original takes rows from here; JobCompleted's total wins

    def _worker_joined(self, p: Payload, ts: Any) -> None:
        rec = self._worker(p.worker_id)
        if rec is not None:
            self._worker_event(rec, _E.WORKER_JOINED, parse_timestamp(ts), p.slots, p.pid)

    def _worker_left(self, p: Payload, ts: Any) -> None:
        self._lost(p, ts, _E.WORKER_LEFT)

    def _worker_lost(self, p: Payload, ts: Any) -> None:
        self._lost(p, ts, _E.WORKER_LOST)

    def _lost(self, p: Payload, ts: Any, kind: str) -> None:
        rec = self._worker(p.worker_id)
        t = parse_timestamp(ts)
        if rec is not None:
            self._worker_event(rec, kind, t, None, None)
        ids = p.requeued_job_ids
        self.requeue(ids if isinstance(ids, list) else (), t)

    def _worker_event(self, rec: WorkerRecord, kind: str, t: float | None, slots: Any,
                      pid: Any) -> None:
        apply_worker_event(rec, kind, t, slots, pid)

    def requeue(self, ids: Any, t: float | None) -> None:
        """A lost worker's jobs (``requeued_job_ids``) back to ``queued``, unless finished."""
        for raw in ids:
            key = job_key(raw) or ""
            job = self.jobs.get(key)
            if job is not None and job.status not in TERMINAL:
                self._end_run(job, t)
                job.status = QUEUED
                job.worker_id = None

"""Replay a tape without a sentinel: job-queue state at any ``seq`` or time, and a timeline.

* :class:`TapeReducer` — ``apply(event)`` one event at a time; ``state()`` is the queue as
  the sentinel had it then (jobs with status/worker/rows, counts per status, workers).
* :func:`state_at` — one-off: stream a tape up to a ``seq`` or a time.
* :class:`ReplayIndex` — the whole tape in memory plus reducer snapshots, so the timeline
  widget can scrub: ``state_at(seq=k)`` copies the nearest snapshot at or before ``k`` and
  applies at most one interval of events.
* :func:`build_timeline` — per-attempt bars (lane = worker, or the job while it waits) and
  markers (commands, cancels, retries, errors, workers) as plain dicts for the widget.

The job rules are :mod:`.reducer`'s, shared with ``tape explain``.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import JobStatus
from .envelope import (
    DOMAIN_EVENT,
    ERROR_EVENT,
    SYSTEM_RESPONSE,
    UI_COMMAND,
    EventName,
    TapeEvent,
    job_key,
    parse_timestamp,
)
from .reader import read_tape
from .reducer import JobReducer

__all__ = ["ReplayIndex", "TapeReducer", "Timeline", "build_timeline", "state_at"]

Source = str | os.PathLike[str] | Iterable[TapeEvent]
_E = EventName
# Snapshot budget: total job records copied across all snapshots of one ReplayIndex.
_SNAPSHOT_BUDGET = 2_000_000


def _events(source: Source) -> Iterable[TapeEvent]:
    if isinstance(source, str | os.PathLike):
        return read_tape(source, strict=False)
    return source


class TapeReducer:
    """Rebuilds the job-queue state event by event."""

    def __init__(self) -> None:
        self.core = JobReducer()
        self.seq: int | None = None
        self.timestamp: str | None = None
        self.event_count = 0

    def apply(self, event: TapeEvent) -> None:
        """Apply one event (any type; only domain events change jobs and workers)."""
        self.seq = event.seq
        self.timestamp = event.timestamp
        self.event_count += 1
        if event.kind == DOMAIN_EVENT:
            self.core.apply(event.name, event.payload, event.timestamp)

    def state(self) -> dict[str, Any]:
        """``{seq, timestamp, event_count, jobs: {job_id: {...}}, counts, workers, retries,
        cancels, materializations}`` — plain data, safe to keep or serialise."""
        core = self.core
        return {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "event_count": self.event_count,
            "jobs": {k: j.to_dict() for k, j in core.jobs.items()},
            "counts": core.counts(),
            "workers": {k: w.to_dict() for k, w in core.workers.items()},
            "retries": core.retries,
            "cancels": core.cancels,
            "materializations": core.materializations,
        }

    def copy(self) -> TapeReducer:
        """An independent copy."""
        new = TapeReducer()
        new.core = self.core.copy()
        new.seq, new.timestamp, new.event_count = self.seq, self.timestamp, self.event_count
        return new


def _as_time(value: float | str | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    t = parse_timestamp(value)
    if t is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    return t


def state_at(
    source: Source, seq: int | None = None, time: float | str | None = None
) -> dict[str, Any]:
    """The reducer state after every event with ``seq <= seq`` and ``time <= time``
    (either bound optional; ``time`` as epoch seconds or RFC 3339). Streams the source."""
    limit_t = _as_time(time)
    reducer = TapeReducer()
    for event in _events(source):
        if seq is not None and event.seq > seq:
            break
        if limit_t is not None:
            t = event.time
            if t is not None and t > limit_t:
                break
        reducer.apply(event)
    return reducer.state()


class ReplayIndex:
    """A tape loaded for random access to its state (what the timeline widget scrubs).

    Snapshots are taken every ``snapshot_every`` events — more sparsely on huge tapes so
    that all snapshots together copy at most ~2M job records.
    """

    def __init__(self, source: Source, *, snapshot_every: int = 500) -> None:
        reader = _events(source)
        self.events: list[TapeEvent] = list(reader)
        #: line number of a truncated last line, when the source was a file
        self.truncated: int | None = getattr(reader, "truncated", None)
        self.skipped: list[tuple[int, str]] = list(getattr(reader, "skipped", []))
        final = TapeReducer()
        for event in self.events:
            final.apply(event)
        self.final = final
        jobs = max(1, len(final.core.jobs))
        self.interval = max(1, snapshot_every,
                            math.ceil(len(self.events) * jobs / _SNAPSHOT_BUDGET))
        self._snapshots: list[TapeReducer] = []
        r = TapeReducer()
        for i, event in enumerate(self.events):
            if i % self.interval == 0:
                self._snapshots.append(r.copy())
            r.apply(event)
        self._seqs = [e.seq for e in self.events]
        self._monotonic = all(a < b for a, b in zip(self._seqs, self._seqs[1:], strict=False))
        times: list[float] = []
        last = -math.inf
        for e in self.events:  # unparseable times inherit the previous one
            t = e.time
            last = t if t is not None else last
            times.append(last)
        self._times = times

    def __len__(self) -> int:
        return len(self.events)

    def reducer_after(self, count: int) -> TapeReducer:
        """A reducer with the first ``count`` events applied."""
        count = max(0, min(count, len(self.events)))
        if count == len(self.events):
            return self.final.copy()
        base = min(count // self.interval, len(self._snapshots) - 1) if self._snapshots else -1
        if base < 0:
            return TapeReducer()
        r = self._snapshots[base].copy()
        for event in self.events[base * self.interval : count]:
            r.apply(event)
        return r

    def count_at(self, seq: int | None = None, time: float | str | None = None) -> int:
        """How many leading events have ``seq <= seq`` and ``time <= time``."""
        n = len(self.events)
        if seq is not None:
            if self._monotonic:
                n = bisect.bisect_right(self._seqs, seq)
            else:
                n = next((i for i, s in enumerate(self._seqs) if s > seq), n)
        limit_t = _as_time(time)
        if limit_t is not None:
            n = min(n, bisect.bisect_right(self._times, limit_t))
        return n

    def state_at(self, seq: int | None = None, time: float | str | None = None) -> dict[str, Any]:
        """The state after the events up to ``seq`` / ``time`` (see :func:`state_at`)."""
        return self.reducer_after(self.count_at(seq, time)).state()

    def timeline(self) -> Timeline:
        """The timeline of the whole tape."""
        return build_timeline(self.events)


@dataclass
class Timeline:
    """Bars and markers for a timeline view; times are seconds from ``start``."""

    start: str | None = None
    end: str | None = None
    duration_s: float = 0.0
    lanes: list[str] = field(default_factory=list)
    bars: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what the widget receives)."""
        return {"start": self.start, "end": self.end, "duration_s": self.duration_s,
                "lanes": list(self.lanes), "bars": list(self.bars),
                "markers": list(self.markers)}


_BAR_END: dict[str, str] = {_E.JOB_COMPLETED: JobStatus.COMPLETED.tape_name,
                            _E.JOB_FAILED: JobStatus.FAILED.tape_name,
                            _E.JOB_ABORTED: JobStatus.ABORTED.tape_name,
                            _E.JOB_SKIPPED: JobStatus.SKIPPED.tape_name}
_WORKER_VERB: dict[str, str] = {_E.WORKER_JOINED: "joined", _E.WORKER_LOST: "lost",
                                _E.WORKER_LEFT: "left"}
_QUEUED, _RUNNING = JobStatus.QUEUED.tape_name, JobStatus.RUNNING.tape_name


def build_timeline(source: Source) -> Timeline:
    """Per-attempt job bars and event markers of a tape.

    A bar is ``{job_id, lane, attempt, start, end, t0, t1, status, final_status, plugin_name,
    worker_id}``: from dispatch to the end of that attempt on the worker's lane; a job that
    never ran gets one bar on its own lane (``job <id>``) from queueing to skip/abort (or
    open: ``end``/``t1`` None). ``status`` is that attempt's outcome — ``running`` (still
    open), ``completed``, ``failed``, ``failed_retrying`` (a transient failure that will be
    retried), ``aborted``, ``skipped``, ``queued`` (never ran) or ``requeued`` (its worker was
    lost or it was dispatched again); ``final_status`` is the job's status at the tape's end.
    Marker kinds: ``command``, ``error``, ``cancel``, ``retry``, ``worker_joined``,
    ``worker_lost``.
    """
    tl = Timeline()
    reducer = TapeReducer()
    t_start: float | None = None
    open_bars: dict[str, dict[str, Any]] = {}
    waiting: dict[str, dict[str, Any]] = {}
    lanes: dict[str, None] = {}

    def rel(ts: str) -> float | None:
        t = parse_timestamp(ts)
        return None if t is None or t_start is None else round(t - t_start, 6)

    def close(bar: dict[str, Any], ts: str, status: str) -> None:
        bar.update(end=ts, t1=rel(ts), status=status)

    for ev in _events(source):
        if tl.start is None:
            tl.start, t_start = ev.timestamp, ev.time
        tl.end = ev.timestamp
        reducer.apply(ev)
        p = ev.payload if isinstance(ev.payload, dict) else {}
        jid = job_key(p.get("job_id"))
        mark = {"seq": ev.seq, "timestamp": ev.timestamp, "t": rel(ev.timestamp)}
        if ev.kind == UI_COMMAND:
            tl.markers.append({**mark, "kind": "command", "label": ev.name})
        elif ev.kind == ERROR_EVENT or (ev.kind == SYSTEM_RESPONSE and ev.name and (
                "Failed" in ev.name or "Error" in ev.name)):
            tl.markers.append({**mark, "kind": "error", "label": f"{ev.name}: "
                               f"{p.get('error') or p.get('message') or ''}".rstrip(": ")})
        if ev.kind != DOMAIN_EVENT:
            continue
        name = ev.name
        if name == _E.JOB_QUEUED and jid is not None and jid not in open_bars:
            waiting[jid] = {"job_id": jid, "lane": f"job {jid}", "attempt": 0,
                            "start": ev.timestamp, "end": None, "t0": rel(ev.timestamp),
                            "t1": None, "status": _QUEUED, "worker_id": None}
        elif name == _E.JOB_DISPATCHED and jid is not None:
            waiting.pop(jid, None)
            if jid in open_bars:
                close(open_bars.pop(jid), ev.timestamp, "requeued")
            worker = p.get("worker_id")
            lane = str(worker) if worker is not None else f"job {jid}"
            lanes.setdefault(lane)
            bar: dict[str, Any] = {"job_id": jid, "lane": lane, "attempt": reducer.core.jobs[jid].attempts,
                   "start": ev.timestamp, "end": None, "t0": rel(ev.timestamp), "t1": None,
                   "status": _RUNNING, "worker_id": worker}
            open_bars[jid] = bar
            tl.bars.append(bar)
        elif name in _BAR_END and jid is not None:
            status = _BAR_END[name]
            if name == _E.JOB_FAILED and p.get("will_retry") is True:
                status = "failed_retrying"
            ended = open_bars.pop(jid, None) or waiting.pop(jid, None)
            if ended is not None:
                if ended["attempt"] == 0:  # never dispatched: it ends on its own lane
                    lanes.setdefault(ended["lane"])
                    tl.bars.append(ended)
                close(ended, ev.timestamp, status)
            if name == _E.JOB_FAILED:
                tl.markers.append({**mark, "kind": "error", "job_id": jid,
                                   "label": f"job {jid}: {p.get('error') or 'failed'}"})
        elif name == _E.CANCEL_REQUESTED:
            tl.markers.append({**mark, "kind": "cancel", "job_id": jid,
                               "label": f"cancel job {jid}"})
        elif name == _E.JOB_RETRIED:
            tl.markers.append({**mark, "kind": "retry", "job_id": jid,
                               "label": f"retry job {jid} (#{p.get('retry_count', '?')})"})
        elif name in (_E.WORKER_JOINED, _E.WORKER_LOST, _E.WORKER_LEFT):
            wid = str(p.get("worker_id"))
            lanes.setdefault(wid)
            joined = name == _E.WORKER_JOINED
            verb = _WORKER_VERB[name]
            tl.markers.append({**mark, "kind": f"worker_{verb}", "worker_id": wid,
                               "label": f"{wid} {verb}"})
            for raw in () if joined else p.get("requeued_job_ids") or ():
                lost = open_bars.pop(job_key(raw) or "", None)
                if lost is not None:
                    close(lost, ev.timestamp, "requeued")
    for bar in waiting.values():  # still queued at the end of the tape
        lanes.setdefault(bar["lane"])
        tl.bars.append(bar)
    final = reducer.core.jobs
    for bar in tl.bars:
        job = final.get(bar["job_id"])
        bar["final_status"] = job.status if job is not None else bar["status"]
        bar["plugin_name"] = job.plugin_name if job is not None else None
    tl.lanes = list(lanes)
    tl.duration_s = (rel(tl.end) or 0.0) if tl.end else 0.0
    return tl

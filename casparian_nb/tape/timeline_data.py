"""Timeline data of a tape, kernel-free: worker-slot lanes, queue depth, a level of detail.

The one source of what a timeline draws, for the notebook widget (``cf.timeline``) and the
JupyterLab ``.tape`` viewer's server extension alike (both through
:class:`.timeline_view.TimelineSource`); no widget or kernel import here.

>>> data = load_timeline("tapes/golden_session.tape")               # doctest: +SKIP
>>> payload = timeline_payload(data, view=(0.0, 4.0), width_px=800) # doctest: +SKIP

Truth rules:

* A lane is a worker **slot**. Each worker's attempts (dispatch → end) are assigned greedily,
  in order of start, to its lowest free slot, so a worker running three jobs at once gets
  three sub-lanes and no two bars on a lane overlap.
* A job that never reached a worker gets no lane: it counts in the queue-depth strip (and in
  the scrubber's replayed state), never as a bar.
* Status rules are the tape reducer's (:mod:`.reducer`), shared with explain and replay.

The payload (JSON; version 1) — what :func:`timeline_payload` returns and the front-end's
``mountTimeline`` (``notebook/static/timeline_draw.js``) draws::

    {"version": 1, "start": RFC 3339 | None, "end": ..., "duration_s": float,
     "events": int, "jobs": int, "last_seq": int | None, "truncated": line | None,
     "skipped": int, "counts": {status: jobs at the tape's end},
     "statuses": [status names; bars and bins refer to them by index],
     "view": {"t0": s, "t1": s}, "width_px": int,
     "mode": "bars" | "bins",      # exact bars when <= BAR_LIMIT are in view, else density
     "lanes": [{"worker": "w1", "slot": 0}, ...],
     "depth": {"t0": s, "dt": s, "queued": [max per bin], "running": [max per bin]},
     "bars": {"job": [...], "lane": [...], "t0": [...], "t1": [s | None (open)],
              "status": [index], "final": [index], "attempt": [...]} | None,
     "density": {"t0": s, "dt": s, "busy": [[0..100 % busy per bin] per lane],
                 "failed": [[attempts ending failed/aborted per bin] per lane]} | None,
     "markers": [{"seq", "t", "kind", "label", "job", "lane"}],   # <= MARKER_LIMIT in view
     "marker_bins": {kind: [count per bin]} | None}               # when more are in view

Times are seconds from the tape's first event. Zooming asks again with a narrower ``view``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from ..protocol import JobStatus
from ._decode import EventName, Payload, to_payload
from ._timeline_layout import assign_slots, density_bins, depth_bins
from .envelope import (
    DOMAIN_EVENT,
    ERROR_EVENT,
    SYSTEM_RESPONSE,
    UI_COMMAND,
    TapeEvent,
    job_key,
    parse_timestamp,
)
from .envelope import EventName as E
from .reader import LINES, open_tape, read_blocks, split_lines
from .replay import TapeReducer

__all__ = ["BAR_LIMIT", "MARKER_LIMIT", "STATUSES", "TimelineData", "load_timeline",
           "timeline_from_events", "timeline_payload"]

#: Most exact bars a payload carries; more in view → binned density.
BAR_LIMIT = 4000
#: Most markers a payload lists; more in view → counts per bin by kind.
MARKER_LIMIT = 1500

_QUEUED, _DISPATCHED, _RUNNING = (s.tape_name for s in (JobStatus.QUEUED, JobStatus.DISPATCHED,
                                                        JobStatus.RUNNING))
_COMPLETED, _FAILED, _ABORTED, _SKIPPED = (s.tape_name for s in (
    JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED))
#: Attempt outcomes and final statuses; bars carry their index.
STATUSES = [_RUNNING, _COMPLETED, _FAILED, "failed_retrying", _ABORTED, _SKIPPED, _QUEUED,
            "requeued", _DISPATCHED]
_CODE = {s: i for i, s in enumerate(STATUSES)}
_FAILING = np.array([_CODE[_FAILED], _CODE["failed_retrying"], _CODE[_ABORTED]])
_BAR_END: dict[str, str] = {E.JOB_COMPLETED: _COMPLETED, E.JOB_FAILED: _FAILED, E.JOB_ABORTED: _ABORTED,
            E.JOB_SKIPPED: _SKIPPED}
_WORKER_VERB: dict[str, str] = {E.WORKER_JOINED: "joined", E.WORKER_LOST: "lost", E.WORKER_LEFT: "left"}
#: Queue-depth category of a status: 0 queued, 1 on a worker, 2 neither.
_CATEGORY = {_QUEUED: 0, _DISPATCHED: 1, _RUNNING: 1}
#: Job events drawn as bar ends or markers.
_DRAWN = frozenset({E.JOB_DISPATCHED, E.JOB_STARTED, E.CANCEL_REQUESTED, E.JOB_RETRIED,
                    *_BAR_END})


class _Envelope(msgspec.Struct, gc=False):
    seq: Any = None
    timestamp: Any = None
    event_name: EventName | None = None
    payload: Payload | None = None


_DECODER = msgspec.json.Decoder(_Envelope)


@dataclass
class TimelineData:
    """A tape reduced to what a timeline draws; build with :func:`load_timeline`."""

    start: str | None = None
    end: str | None = None
    duration_s: float = 0.0
    events: int = 0
    last_seq: int | None = None
    #: (kind, name) of the last event, for the scrubber's label
    last_event: tuple[str, str | None] | None = None
    truncated: int | None = None
    skipped: int = 0
    lanes: list[tuple[str, int]] = field(default_factory=list)
    #: bar columns, sorted by start; open bars have t1 NaN
    bar_t0: Any = None
    bar_t1: Any = None
    bar_lane: Any = None
    bar_status: Any = None
    bar_final: Any = None
    bar_attempt: Any = None
    bar_job: list[str] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    #: queue-depth change points: time, queued, running
    depth_t: Any = None
    depth_queued: Any = None
    depth_running: Any = None
    #: the reducer after the last event (scrubber's state at the end)
    final: TapeReducer = field(default_factory=TapeReducer)

    @property
    def jobs(self) -> int:
        return len(self.final.core.jobs)


class _Pass:
    """One pass over the events: reducer, bars, markers, queue depth."""

    def __init__(self) -> None:
        self.reducer = TapeReducer()
        self.core = self.reducer.core
        self.t_start: float | None = None
        self.data = TimelineData(final=self.reducer)
        self.t0: list[float] = []
        self.t1: list[float] = []
        self.worker: list[str] = []
        self.job: list[str] = []
        self.attempt: list[int] = []
        self.status: list[int] = []
        self.open: dict[str, int] = {}  # job -> index of its open bar
        self.last_bar: dict[str, int] = {}
        self.workers: dict[str, None] = {}
        self.queued = 0
        self.running = 0
        self.depth: list[tuple[float, int, int]] = []
        self.handlers = self.core.handlers
        self.jobs = self.core.jobs
        self.first: Any = None
        self.count = 0
        self.last: tuple[Any, Any, Any, Any] | None = None

    def apply(self, events: list[_Envelope]) -> None:
        """Apply decoded events in order. This loop runs ~500,000 times for a 100,000-job
        tape, so it keeps its state in locals, parses a time only where one is drawn, and
        looks each job up once before and once after the reducer's handler."""
        if not events:
            return
        if self.first is None:
            self.first = events[0].timestamp
            self.t_start = parse_timestamp(self.first)
        t_start, handlers, jobs = self.t_start, self.handlers, self.jobs
        depth, cat, drawn, bar_end = self.depth, _CATEGORY, _DRAWN, _BAR_END
        queued, running = self.queued, self.running
        dispatched = E.JOB_DISPATCHED
        for e in events:
            en = e.event_name
            if en is None:
                continue
            kind, name, p, ts = en.type, en.name, e.payload, e.timestamp
            if kind != DOMAIN_EVENT:
                self._other(e.seq, ts, kind, name, p)
                continue
            if p is None or type(name) is not str:
                continue
            handler = handlers.get(name)
            if handler is None:
                continue
            raw = p.job_id
            jid = raw if type(raw) is str else job_key(raw)
            if jid is None or name in _WORKER_VERB:
                self.queued, self.running = queued, running
                self._worker_event(e.seq, ts, name, handler, p)
                queued, running = self.queued, self.running
                continue
            job = jobs.get(jid)
            was = 2 if job is None else cat.get(job.status, 2)
            handler(p, ts)
            job = jobs.get(jid)
            now = 2 if job is None else cat.get(job.status, 2)
            if now == was and name not in drawn:
                continue
            # The reducer parsed the time of a dispatch or an end already; reuse it.
            t = None
            if job is not None:
                t = job.run_start if name == dispatched else (
                    job.ended_at if name in bar_end else None)
            if t is None:
                t = parse_timestamp(ts)
            if t is None or t_start is None:
                continue
            rel = t - t_start
            if now != was:
                queued += (now == 0) - (was == 0)
                running += (now == 1) - (was == 1)
                depth.append((rel, queued, running))
            if name in drawn:
                self._bars(e.seq, rel, name, jid, p)
        self.queued, self.running = queued, running
        last = events[-1]
        self.count += sum(1 for e in events if e.event_name is not None)
        named = [e for e in events[-8:] if e.event_name is not None] or [last]
        en = named[-1].event_name
        self.last = (named[-1].seq, named[-1].timestamp, en.type if en else None,
                     en.name if en else None)

    def _other(self, seq: Any, ts: Any, kind: Any, name: Any, p: Payload | None) -> None:
        """Commands and errors: markers on the session row."""
        if kind == UI_COMMAND:
            self._marker(seq, ts, "command", name, None, None)
        elif kind == ERROR_EVENT or (kind == SYSTEM_RESPONSE and type(name) is str and (
                "Failed" in name or "Error" in name)):
            text = (p.error or p.message or "") if p is not None else ""
            self._marker(seq, ts, "error", f"{name}: {text}".rstrip(": "), None, None)

    def _marker(self, seq: Any, ts: Any, kind: str, label: Any, job: str | None,
                bar: int | None) -> None:
        t = parse_timestamp(ts)
        if t is not None and self.t_start is not None:
            self.data.markers.append({"seq": seq, "t": t - self.t_start, "kind": kind,
                                      "label": label, "job": job, "bar": bar})

    def _worker_event(self, seq: Any, ts: Any, name: str, handler: Any, p: Payload) -> None:
        """Worker events (a lost worker re-queues its jobs) and job events without a job."""
        ids = [k for k in map(job_key, p.requeued_job_ids or ()) if k is not None]
        jobs = self.jobs
        before = [_CATEGORY.get(jobs[k].status, 2) if k in jobs else 2 for k in ids]
        handler(p, ts)
        if name not in _WORKER_VERB:
            return
        wid = str(p.worker_id)
        self.workers.setdefault(wid)
        verb = _WORKER_VERB[name]
        t = parse_timestamp(ts)
        if t is None or self.t_start is None:
            return
        rel = t - self.t_start
        self.data.markers.append({"seq": seq, "t": rel, "kind": f"worker_{verb}",
                                  "worker": wid, "label": f"{wid} {verb}"})
        changed = False
        for k, was in zip(ids, before, strict=True):
            i = self.open.pop(k, None)
            if i is not None:
                self._close(i, rel, "requeued")
            job = jobs.get(k)
            now = _CATEGORY.get(job.status, 2) if job is not None else 2
            if now != was:
                changed = True
                self.queued += (now == 0) - (was == 0)
                self.running += (now == 1) - (was == 1)
        if changed:
            self.depth.append((rel, self.queued, self.running))

    def _close(self, i: int, rel: float, status: str) -> None:
        self.t1[i] = rel
        self.status[i] = _CODE[status]

    def _bars(self, seq: Any, rel: float, name: str, jid: str, p: Payload) -> None:
        markers = self.data.markers
        if name == E.JOB_DISPATCHED:
            if jid in self.open:
                self._close(self.open.pop(jid), rel, "requeued")
            worker = p.worker_id
            if worker is None:
                return  # a dispatch to nowhere: no slot to draw it in
            worker = str(worker)
            self.workers.setdefault(worker)
            i = len(self.t0)
            self.t0.append(rel)
            self.t1.append(math.nan)
            self.worker.append(worker)
            self.job.append(jid)
            self.attempt.append(int(self.core.jobs[jid].attempts or 0))
            self.status.append(_CODE[_RUNNING])
            self.open[jid] = self.last_bar[jid] = i
        elif name == E.JOB_STARTED:
            # The plugin started: the bar begins here, not at the dispatch. A worker takes a
            # few jobs ahead of its free slots; drawn from the dispatch they would overlap and
            # need lanes the worker never had. (A fast job sends no JobStarted: from dispatch.)
            j = self.open.get(jid, -1)
            if j >= 0 and rel >= self.t0[j]:
                self.t0[j] = rel
        elif name in _BAR_END:
            status = _BAR_END[name]
            if name == E.JOB_FAILED and p.will_retry is True:
                status = "failed_retrying"
            j = self.open.pop(jid, -1)
            if j >= 0:
                # The worker's slot was busy for the plugin's run, not until the committer
                # recorded the end (promotions go in batches): end the bar when the run did.
                dur = p.duration_ms
                end = rel
                if type(dur) in (int, float) and dur >= 0:
                    end = min(rel, max(self.t0[j], self.t0[j] + dur / 1000.0))
                self._close(j, end, status)
            if name == E.JOB_FAILED:
                markers.append({"seq": seq, "t": rel, "kind": "error", "job": jid,
                                "bar": self.last_bar.get(jid),
                                "label": f"job {jid}: {p.error or 'failed'}"})
        elif name == E.CANCEL_REQUESTED:
            markers.append({"seq": seq, "t": rel, "kind": "cancel", "job": jid,
                            "bar": self.open.get(jid), "label": f"cancel job {jid}"})
        elif name == E.JOB_RETRIED:
            count = p.retry_count if p.retry_count is not None else "?"
            markers.append({"seq": seq, "t": rel, "kind": "retry", "job": jid,
                            "bar": self.last_bar.get(jid),
                            "label": f"retry job {jid} (#{count})"})

    def finish(self) -> TimelineData:
        data = self.data
        data.events, data.start = self.count, self.first
        if self.last is not None:
            data.last_seq, data.end, kind, name = self.last
            data.last_event = (kind, name)
            r = self.reducer
            r.seq, r.timestamp, r.event_count = data.last_seq, data.end, self.count
        if data.end is not None and self.t_start is not None:
            data.duration_s = round((parse_timestamp(data.end) or self.t_start) - self.t_start, 6)
        t0 = np.asarray(self.t0, dtype=np.float64)
        t1 = np.asarray(self.t1, dtype=np.float64)
        order = np.argsort(t0, kind="stable")
        t0, t1 = t0[order], t1[order]
        workers = [self.worker[i] for i in order]
        lane, data.lanes = assign_slots(t0, np.where(np.isnan(t1), np.inf, t1), workers,
                                         list(self.workers))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        jobs = self.core.jobs
        data.bar_t0, data.bar_t1, data.bar_lane = t0, t1, lane
        data.bar_status = np.asarray(self.status, dtype=np.int8)[order]
        data.bar_attempt = np.asarray(self.attempt, dtype=np.int32)[order]
        data.bar_job = [self.job[i] for i in order]
        data.bar_final = np.asarray([_CODE.get(jobs[j].status, 0) for j in data.bar_job],
                                    dtype=np.int8)
        first_lane = {w: i for i, (w, s) in reversed(list(enumerate(data.lanes)))}
        for m in data.markers:
            bar = m.pop("bar", None)
            worker = m.pop("worker", None)
            m.setdefault("job", None)
            m["t"] = round(m["t"], 6)
            if bar is not None:
                m["lane"] = int(lane[rank[bar]])
            else:
                m["lane"] = first_lane.get(worker) if worker is not None else None
        depth = np.asarray(self.depth, dtype=np.float64).reshape(-1, 3)
        data.depth_t = depth[:, 0]
        data.depth_queued = depth[:, 1].astype(np.int64)
        data.depth_running = depth[:, 2].astype(np.int64)
        return data


def load_timeline(source: str | os.PathLike[str]) -> TimelineData:
    """Read a tape once (msgspec over blocks of lines; a block that does not decode is read
    line by line, skipping bad lines) into :class:`TimelineData`."""
    run = _Pass()
    skipped = 0
    truncated = None
    number = 0
    with open_tape(source) as fh:
        for data, cut, kind in read_blocks(fh):
            block = data[:cut] if cut < len(data) else data
            events = None
            if kind != LINES:
                try:
                    events = _DECODER.decode_lines(block)
                except (msgspec.MsgspecError, ValueError):
                    events = None
            if events is not None:
                skipped += sum(1 for e in events if e.event_name is None)
                run.apply(events)
                number += block.count(b"\n")
                continue
            for raw in split_lines(block):
                number += 1
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                    e = msgspec.convert(obj, _Envelope)
                except (ValueError, msgspec.MsgspecError):
                    if not raw.endswith(b"\n"):
                        truncated = number
                    else:
                        skipped += 1
                    continue
                if e.event_name is None:
                    skipped += 1
                    continue
                run.apply([e])
    result = run.finish()
    result.truncated, result.skipped = truncated, skipped
    return result


def timeline_from_events(events: Iterable[TapeEvent]) -> TimelineData:
    """:class:`TimelineData` of already-read events (a :class:`~.replay.ReplayIndex`'s)."""
    run = _Pass()
    run.apply([_Envelope(e.seq, e.timestamp, EventName(e.kind, e.name), to_payload(e.payload))
               for e in events])
    return run.finish()


def _view(data: TimelineData, view: tuple[float, float] | None) -> tuple[float, float]:
    full = max(1e-3, data.duration_s)
    if view is None:
        return 0.0, full
    t0 = min(max(0.0, float(view[0])), full)
    t1 = min(max(t0 + 1e-6, float(view[1])), full)
    return t0, max(t1, t0 + 1e-6)


def _r(values: Any) -> list[Any]:
    return [None if math.isnan(v) else round(v, 6) for v in values.tolist()]


def timeline_payload(data: TimelineData, view: tuple[float, float] | None = None, *,
                     width_px: int = 800, bar_limit: int = BAR_LIMIT) -> dict[str, Any]:
    """What the front-end draws for ``view`` (seconds; None = the whole tape) at
    ``width_px``: the module docstring's payload, a plain JSON-ready dict. More than
    ``bar_limit`` bars in view are sent as density bins."""
    v0, v1 = _view(data, view)
    nbins = max(20, min(2000, int(width_px) // 2))
    edges = np.linspace(v0, v1, nbins + 1)
    dt = (v1 - v0) / nbins
    end = max(data.duration_s, v1)
    t1_or_end = np.where(np.isnan(data.bar_t1), end, data.bar_t1)
    visible = np.nonzero((data.bar_t0 <= v1) & (t1_or_end >= v0))[0]
    payload: dict[str, Any] = {
        "version": 1, "start": data.start, "end": data.end, "duration_s": data.duration_s,
        "events": data.events, "jobs": data.jobs, "last_seq": data.last_seq,
        "truncated": data.truncated, "skipped": data.skipped,
        "counts": data.final.core.counts(), "statuses": STATUSES,
        "view": {"t0": round(v0, 6), "t1": round(v1, 6)}, "width_px": int(width_px),
        "lanes": [{"worker": w, "slot": s} for w, s in data.lanes],
        "depth": depth_bins(data.depth_t, data.depth_queued, data.depth_running, edges, dt),
        "bars": None, "density": None, "markers": [], "marker_bins": None,
    }
    if len(visible) <= bar_limit:
        payload["mode"] = "bars"
        payload["bars"] = {
            "job": [data.bar_job[i] for i in visible.tolist()],
            "lane": data.bar_lane[visible].tolist(), "t0": _r(data.bar_t0[visible]),
            "t1": _r(data.bar_t1[visible]), "status": data.bar_status[visible].tolist(),
            "final": data.bar_final[visible].tolist(),
            "attempt": data.bar_attempt[visible].tolist()}
    else:
        payload["mode"] = "bins"
        failing = visible[np.isin(data.bar_status[visible], _FAILING)]
        payload["density"] = density_bins(
            len(data.lanes), data.bar_lane[visible], data.bar_t0[visible], t1_or_end[visible],
            data.bar_lane[failing], data.bar_t1[failing], edges, dt)
    in_view = [m for m in data.markers if v0 <= m["t"] <= v1]
    if len(in_view) <= MARKER_LIMIT:
        payload["markers"] = in_view
    else:
        # The few that matter most stay exact; the rest become counts per bin by kind.
        keep = [m for m in in_view if m["kind"] in ("command", "worker_joined", "worker_lost",
                                                   "worker_left")][:MARKER_LIMIT]
        payload["markers"] = keep
        counts: dict[str, list[int]] = {}
        for m in in_view:
            if m["kind"] not in ("command", "worker_joined", "worker_lost", "worker_left"):
                row = counts.setdefault(m["kind"], [0] * nbins)
                row[min(nbins - 1, int((m["t"] - v0) / dt))] += 1
        payload["marker_bins"] = {"t0": round(v0, 6), "dt": dt, "counts": counts}
    return payload

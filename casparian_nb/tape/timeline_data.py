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
* Status rules are the tape reducer's (:mod:`.reducer`), shared with explain and replay;
  the timeline applies them to whole columns at once (:mod:`._timeline_pass`, checked
  against the reducer by ``tests/unit/test_timeline_pass.py``): a 100,000-job tape has
  ~420,000 events, too many for a Python loop in the 2 s a first render may take.

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

import bisect
import json
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ..protocol import JobStatus
from ._decode import EventName, Payload, to_payload
from ._timeline_layout import assign_slots, density_bins, depth_bins
from ._timeline_pass import CLOSED_NAMES, STATUS_NAMES, Columns, reduce_columns
from .envelope import TapeEvent, parse_timestamp
from .reader import LINES, open_tape, read_blocks, split_lines

__all__ = ["BAR_LIMIT", "MARKER_LIMIT", "STATUSES", "TimelineData", "clear_timeline_cache",
           "load_timeline", "timeline_from_events", "timeline_payload"]

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


class _Envelope(msgspec.Struct, gc=False):
    seq: Any = None
    timestamp: Any = None
    event_name: EventName | None = None
    payload: Payload | None = None


class _Fields(msgspec.Struct, gc=False):
    """The payload fields the timeline's pass reads (fewer fields decode faster)."""

    job_id: Any = None
    worker_id: Any = None
    will_retry: Any = None
    duration_ms: Any = None
    error: Any = None
    message: Any = None
    retry_count: Any = None
    requeued_job_ids: Any = None
    slots: Any = None
    pid: Any = None


class _Event(msgspec.Struct, gc=False):
    seq: Any = None
    timestamp: Any = None
    event_name: EventName | None = None
    payload: _Fields | None = None


_DECODER = msgspec.json.Decoder(_Event)


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
    #: jobs per status at the tape's end (every status, zeros included)
    counts: dict[str, int] = field(default_factory=dict)
    jobs: int = 0
    #: the scrubber's state after the last event (see ``timeline_view.replayed_state``)
    end_state: dict[str, Any] = field(default_factory=dict)


def _timeline(cols: Columns) -> TimelineData:
    """The columns reduced (:mod:`._timeline_pass`), laid out in slot lanes."""
    r = reduce_columns(cols)
    data = TimelineData(start=cols.first_timestamp, events=len(cols), skipped=cols.skipped,
                        counts=r["counts"], jobs=r["jobs"], end_state=r["end_state"])
    if cols.last is not None:
        data.last_seq, data.end, kind, name = cols.last
        data.last_event = (kind, name)
    t_start = r["t_start"]
    if data.end is not None and t_start is not None:
        data.duration_s = round((parse_timestamp(data.end) or t_start) - t_start, 6)
    order = np.argsort(r["bar_t0"], kind="stable")
    t0, t1 = r["bar_t0"][order], r["bar_t1"][order]
    workers = [r["bar_worker"][i] for i in order.tolist()]
    lane, data.lanes = assign_slots(t0, np.where(np.isnan(t1), np.inf, t1), workers,
                                     r["workers"])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    keys, final = r["keys"], r["final"]
    jobs = r["bar_job_index"][order]
    data.bar_t0, data.bar_t1, data.bar_lane = t0, t1, lane
    data.bar_status = _CLOSED_CODE[r["bar_closed"][order]]
    data.bar_attempt = r["bar_attempt"][order]
    data.bar_job = keys[jobs].tolist()
    data.bar_final = _FINAL_CODE[final[jobs]]
    first_lane = {w: i for i, (w, s) in reversed(list(enumerate(data.lanes)))}
    for _, m, where in r["markers"]:
        m["t"] = round(m["t"], 6)
        if isinstance(where, str):
            m["lane"] = first_lane.get(where)
        elif where is not None and where >= 0:
            m["lane"] = int(lane[rank[where]])
        else:
            m["lane"] = None
        data.markers.append(m)
    data.depth_t = r["depth_t"]
    data.depth_queued = r["depth_queued"].astype(np.int64)
    data.depth_running = r["depth_running"].astype(np.int64)
    return data


#: bar status and final status codes (indices into STATUSES) of the pass's codes
_CLOSED_CODE = np.array([_CODE[str(s)] for s in CLOSED_NAMES], dtype=np.int8)
_FINAL_CODE = np.array([0] + [_CODE[str(s)] for s in STATUS_NAMES[1:]], dtype=np.int8)


class _TapeFile:
    """A tape file read so far: its columns and where the next read starts (a live tape
    grows; only the new lines are decoded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # held by the reader (load_timeline)
        self._start()

    def _start(self) -> None:
        """Nothing read yet."""
        self.cols = Columns()
        self.cols.envelope_at = self._envelope_at
        self.offset = 0  # the next unread line starts here
        self.number = 0  # lines read
        self.truncated: int | None = None
        self.bad = 0
        # the blocks read: (first named event, byte offset, indices of the named lines
        # among its non-blank lines, or None: all), to read a few events again at the end
        self._blocks: list[tuple[int, int, list[int] | None]] = []
        self.stamp: tuple[int, int, int] | None = None
        self._block: tuple[int, list[bytes]] | None = None  # the last block read again
        self.data: TimelineData | None = None
        self._seen: tuple[bytes, bytes] = (b"", b"")

    def read(self) -> TimelineData:
        """Read on from the last complete line (or from the start, when the file is no
        longer the one read) and reduce everything read."""
        stat = os.stat(self.path)
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self.data is not None and stamp == self.stamp:
            return self.data  # a zoom, a second widget: nothing new to read
        self.truncated = None
        with open_tape(self.path) as fh:
            if self.offset and self._marks(fh) != self._seen:
                self._start()  # replaced, cut or rewritten: read it whole again
            for data, cut, kind in read_blocks(fh, self.offset):
                block = memoryview(data)[:cut]
                if not (kind != LINES and self._fast(block)):
                    self._lines(bytes(block))
            self._seen = self._marks(fh)
        self.stamp = stamp
        self.data = _timeline(self.cols)
        self.data.truncated, self.data.skipped = self.truncated, self.cols.skipped + self.bad
        return self.data

    def _marks(self, fh: Any) -> tuple[bytes, bytes]:
        """The file's first bytes and those before ``offset``: while they stay the same, the
        file only grew since it was read."""
        fh.seek(0)
        head = fh.read(min(_MARK, self.offset))
        fh.seek(max(0, self.offset - _MARK))
        return head, fh.read(min(_MARK, self.offset))

    def _fast(self, block: memoryview) -> bool:
        try:
            events = _DECODER.decode_lines(block)
        except (msgspec.MsgspecError, ValueError):
            return False
        lines = bytes.count(block.obj, b"\n", 0, len(block))  # type: ignore[arg-type]
        if len(events) != lines:
            return False  # blank lines, or two values on a line: read line by line
        first = len(self.cols)
        kept = self.cols.add(events)
        self._blocks.append((first, self.offset, kept if len(kept) != len(events) else None))
        self.offset += len(block)
        self.number += lines
        return True

    def _lines(self, block: bytes) -> None:
        at = self.offset
        for raw in split_lines(block):
            line_at, at = at, at + len(raw)
            self.number += 1
            if not raw.strip():
                self.offset = at
                continue
            try:
                e = msgspec.convert(json.loads(raw), _Event)
            except (ValueError, msgspec.MsgspecError):
                if not raw.endswith(b"\n"):
                    self.truncated = self.number  # a cut-off last line: read again next time
                    self.number -= 1
                    return
                self.bad += 1
                self.offset = at
                continue
            first = len(self.cols)
            if self.cols.add([e]):
                self._blocks.append((first, line_at, None))
            self.offset = at

    def _envelope_at(self, i: int) -> tuple[Any, Payload | None, Any]:
        """(event name, payload, timestamp) of named event ``i``, read again from the file
        (its block, whose lines are all events)."""
        b = bisect.bisect_right(self._blocks, i, key=lambda x: x[0]) - 1
        first, offset, kept = self._blocks[b]
        end = self._blocks[b + 1][1] if b + 1 < len(self._blocks) else self.offset
        if self._block is None or self._block[0] != offset:
            with open_tape(self.path) as fh:
                fh.seek(offset)
                self._block = (offset, fh.read(end - offset).split(b"\n"))
        line = i - first if kept is None else kept[i - first]
        e = msgspec.convert(json.loads(self._block[1][line]), _Envelope)
        assert e.event_name is not None
        return e.event_name.name, e.payload, e.timestamp


_MARK = 256  # bytes compared to tell a grown tape from another one at the same path
_FILES: dict[Path, _TapeFile] = {}
_FILES_KEPT = 2  # tapes whose columns stay in memory (a 100,000-job tape: ~100 MB)
# The lab's server extension loads tapes on worker threads: one read of a file at a time.
_FILES_LOCK = threading.Lock()


def load_timeline(source: str | os.PathLike[str]) -> TimelineData:
    """Read a tape (msgspec over blocks of lines; a block that does not decode is read line
    by line, skipping bad lines) into :class:`TimelineData`.

    The columns read are kept per file (the last few files): asking again for a file that
    has not changed returns the same data at once, and a file that grew (a live session
    tape) is read on from its last complete line."""
    path = Path(source)
    open_tape(path).close()  # a missing file or a folder: one-line TapeError
    key = path.resolve()
    with _FILES_LOCK:
        tape = _FILES.pop(key, None) or _TapeFile(key)
        _FILES[key] = tape  # most recently used last
        while len(_FILES) > _FILES_KEPT:
            _FILES.pop(next(iter(_FILES)))
    with tape.lock:
        return tape.read()


def clear_timeline_cache() -> None:
    """Forget the columns kept of every tape (the next :func:`load_timeline` reads whole)."""
    with _FILES_LOCK:
        _FILES.clear()


def timeline_from_events(events: Iterable[TapeEvent]) -> TimelineData:
    """:class:`TimelineData` of already-read events (a :class:`~.replay.ReplayIndex`'s)."""
    envelopes = [_Envelope(e.seq, e.timestamp, EventName(e.kind, e.name),
                           to_payload(e.payload)) for e in events]
    cols = Columns()
    cols.add(envelopes)
    named = [e for e in envelopes if e.event_name is not None]
    cols.envelope_at = lambda i: (named[i].event_name.name,  # type: ignore[union-attr]
                                  named[i].payload, named[i].timestamp)
    return _timeline(cols)


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
        "counts": data.counts, "statuses": STATUSES,
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

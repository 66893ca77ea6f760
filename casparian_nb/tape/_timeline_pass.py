"""The timeline's pass over decoded events, as array operations instead of a loop per event.

A 100,000-job tape has ~420,000 events; a Python loop running the reducer on each took
longer than the 2 s a first render may take. Here the events become columns (kind, job,
time, worker) once, and everything the timeline draws is computed over them with numpy:

* each job's status after each of its events: rows sorted by (job, tape order); the events
  that set a status outright set it, the conditional ones (``JobStarted`` does not resurrect
  a finished job, ``JobRetried`` leaves a running job alone, a lost worker re-queues only
  unfinished jobs; a cancel or a materialization changes nothing) are resolved in a few
  passes from the status before them. These are :mod:`.reducer`'s rules, which
  ``tests/unit/test_timeline_pass.py`` checks this module against, event for event.
* the queue-depth strip: the change of each row's category (queued / on a worker / neither),
  summed in tape order;
* bars: a dispatch to a worker opens one; the job's next dispatch, end or re-queue closes it;
  a ``JobStarted`` in between moves its start;
* markers, and the scrubber's state at the end (the few unfinished jobs it lists go through
  the real reducer, only their own events).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..protocol import JobStatus
from ._timeline_columns import (
    ENDS,
    K_A,
    K_C,
    K_D,
    K_F,
    K_FR,
    K_K,
    K_OK,
    K_OTHER,
    K_Q,
    K_R,
    K_REQ,
    K_S,
    K_WJ,
    K_WL,
    K_WLEFT,
    Columns,
)
from .envelope import (
    ERROR_EVENT,
    JOB_STATUSES,
    SYSTEM_RESPONSE,
    UI_COMMAND,
    job_key,
    parse_timestamp,
)
from .envelope import EventName as E
from .reducer import JobReducer, WorkerRecord, apply_worker_event

__all__ = ["CLOSED_NAMES", "Columns", "reduce_columns", "state_dict"]

_VERB = {K_WJ: "joined", K_WL: "lost", K_WLEFT: "left"}
_EVENT_OF = {K_WJ: E.WORKER_JOINED, K_WL: E.WORKER_LOST, K_WLEFT: E.WORKER_LEFT}

# Statuses as small ints; 0: the job does not exist (yet).
S_NONE, S_Q, S_D, S_RUN, S_OK, S_F, S_A, S_K = range(8)
STATUS_NAMES: list[str | None] = [None, *(s.tape_name for s in (
    JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.COMPLETED,
    JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED))]
#: The status an event sets whatever came before; -1: it depends on the status before.
_SETS = np.full(17, -1, dtype=np.int8)
for _k, _s in ((K_Q, S_Q), (K_D, S_D), (K_OK, S_OK), (K_F, S_F), (K_FR, S_Q), (K_A, S_A),
               (K_K, S_K)):
    _SETS[_k] = _s
#: Queue-depth category: 0 queued, 1 on a worker, 2 neither (or no job).
_CATEGORY = np.array([2, 0, 1, 1, 2, 2, 2, 2], dtype=np.int8)
_CLOSERS = np.array([K_D, K_OK, K_F, K_FR, K_A, K_K, K_REQ])
#: A bar's status (``timeline_data.STATUSES`` name) by the row kind that closed it.
CLOSED_KINDS = (K_D, K_REQ, K_OK, K_F, K_FR, K_A, K_K)
CLOSED_NAMES = (STATUS_NAMES[S_RUN], "requeued", "requeued", STATUS_NAMES[S_OK],
                STATUS_NAMES[S_F], "failed_retrying", STATUS_NAMES[S_A], STATUS_NAMES[S_K])
#: Unfinished jobs the scrubber's state lists (its counts cover all of them).
ACTIVE_LIMIT = 100


class Rows:
    """Job rows (a job event, or a lost worker's re-queue of one job) sorted by (job, tape
    order), with each job's status after the row and before it."""

    def __init__(self, cols: Columns) -> None:
        _, kind, job, _, _ = cols.arrays()
        pos = np.nonzero(job >= 0)[0]
        jobs, kinds = job[pos], kind[pos]
        keys = dict(cols.keys)
        end = max(keys.values(), default=-1) + 1
        extra_pos: list[int] = []
        extra_job: list[int] = []
        for i in np.nonzero((kind == K_WL) | (kind == K_WLEFT))[0].tolist():
            ids = cols.extra[i][3]
            for raw in ids if isinstance(ids, list) else ():
                extra_pos.append(i)
                key = job_key(raw) or ""
                if key not in keys:  # re-queued, never queued: no job (the reducer's rule)
                    keys[key] = end
                    end += 1
                extra_job.append(keys[key])
        if extra_pos:
            pos = np.concatenate((pos, np.asarray(extra_pos, dtype=np.int64)))
            jobs = np.concatenate((jobs, np.asarray(extra_job, dtype=np.int64)))
            kinds = np.concatenate((kinds, np.full(len(extra_pos), K_REQ, dtype=np.int8)))
        #: job id by index (None: an index no job has)
        self.keys: Any = np.full(end, None, dtype=object)
        if keys:
            self.keys[np.fromiter(keys.values(), dtype=np.int64, count=len(keys))] = list(keys)
        order = np.lexsort((pos, jobs))  # stable: a list's re-queues keep their order
        self.pos, self.job, self.kind = pos[order], jobs[order], kinds[order]
        n = len(order)
        self.first = np.ones(n, dtype=bool)
        self.first[1:] = self.job[1:] != self.job[:-1]
        self.status, self.before = self._statuses()

    def _statuses(self) -> tuple[Any, Any]:
        n = len(self.kind)
        prev = np.arange(n, dtype=np.int64) - 1
        prev[self.first] = -1
        status = _SETS[self.kind].astype(np.int8)
        pending = np.nonzero(status < 0)[0]
        while pending.size:  # as many passes as the longest run of conditional events
            p = prev[pending]
            was = np.where(p >= 0, status[np.maximum(p, 0)], S_NONE)
            ready = was >= 0
            idx, was, k = pending[ready], was[ready], self.kind[pending[ready]]
            base = np.where(was == S_NONE, S_Q, was)  # a job event creates a queued job
            finished = base >= S_OK
            new = base.copy()  # a cancel or a materialization: unchanged
            new = np.where(k == K_S, np.where(finished, base, S_RUN), new)
            new = np.where(k == K_R, np.where((base == S_D) | (base == S_RUN), base, S_Q), new)
            new = np.where(k == K_REQ, np.where(was == S_NONE, S_NONE,
                                                np.where(finished, base, S_Q)), new)
            status[idx] = new
            pending = pending[~ready]
        before = np.where(prev >= 0, status[np.maximum(prev, 0)], S_NONE).astype(np.int8)
        return status, before

    def final(self) -> Any:
        """The status of each job (by index) at the end."""
        last = np.ones(len(self.job), dtype=bool)
        last[:-1] = self.first[1:]
        out = np.zeros(len(self.keys), dtype=np.int8)
        out[self.job[last]] = self.status[last]
        return out


def reduce_columns(cols: Columns) -> dict[str, Any]:
    """Everything :class:`~.timeline_data.TimelineData` holds (times in seconds from the
    tape's first event; an event without a time is not drawn)."""
    epoch, kind, _, worker, _ = cols.arrays()
    t_start = parse_timestamp(cols.first_timestamp)
    times = epoch - t_start if t_start is not None else np.full(len(epoch), np.nan)
    rows = Rows(cols)
    t = times[rows.pos]
    drawn = ~np.isnan(t)
    out: dict[str, Any] = {"t_start": t_start}
    out.update(_depth(rows, t, drawn))
    out.update(_bars(cols, rows, t, drawn))
    out["markers"] = _markers(cols, rows, t, drawn, out.pop("opener_bar"), times)
    final = rows.final()
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for code, n in enumerate(np.bincount(final, minlength=8).tolist()):
        if code != S_NONE and n:
            counts[STATUS_NAMES[code]] += n  # type: ignore[index]
    out["final"], out["keys"], out["counts"] = final, rows.keys, counts
    out["jobs"] = int(np.count_nonzero(final != S_NONE))
    # lanes: workers in the order they are first seen (a worker event, or a bar)
    seen = np.nonzero(np.isin(kind, [K_WJ, K_WL, K_WLEFT]))[0]
    first = np.sort(np.concatenate((seen, out["bar_pos"])))
    names = [*cols.worker_ids, "None"]  # -1: a worker event without a worker id
    ids, at = np.unique(worker[first], return_index=True)
    out["workers"] = [names[w] for w in ids[np.argsort(at)].tolist()]
    out["end_state"] = _end_state(cols, rows, final, counts, out["jobs"])
    return out


def _depth(rows: Rows, t: Any, drawn: Any) -> dict[str, Any]:
    now, was = _CATEGORY[rows.status], _CATEGORY[rows.before]
    dq = ((now == 0).astype(np.int64) - (was == 0)) * drawn
    dr = ((now == 1).astype(np.int64) - (was == 1)) * drawn
    changed = np.nonzero((dq != 0) | (dr != 0))[0]
    order = changed[np.argsort(rows.pos[changed], kind="stable")]
    pos = rows.pos[order]
    last = np.ones(len(order), dtype=bool)  # one point per event (a re-queue of many jobs)
    last[:-1] = pos[1:] != pos[:-1]
    return {"depth_t": t[order][last], "depth_queued": np.cumsum(dq[order])[last],
            "depth_running": np.cumsum(dr[order])[last]}


def _next_closer(closer: Any) -> Any:
    """For each row i, the first closer row after i (n when none)."""
    n = len(closer)
    at = np.where(closer, np.arange(n), n)
    after = np.minimum.accumulate(at[::-1])[::-1]
    return np.append(after[1:], n) if n else after


def _last(mask: Any, inclusive: bool) -> Any:
    """For each row i, the last row (<= i, or < i) where ``mask`` holds; -1 when none."""
    n = len(mask)
    if not n:
        return np.zeros(0, dtype=np.int64)
    last = np.maximum.accumulate(np.where(mask, np.arange(n), -1))
    return last if inclusive else np.concatenate(([-1], last[:-1]))


def _bars(cols: Columns, rows: Rows, t: Any, drawn: Any) -> dict[str, Any]:
    _, _, _, worker_of, duration_of = cols.arrays()
    k, job, n = rows.kind, rows.job, len(rows.kind)
    worker = np.where(k == K_D, worker_of[rows.pos], -1)
    opener = (k == K_D) & drawn & (worker >= 0)
    closer = drawn & np.isin(k, _CLOSERS)
    # attempts: the job's dispatches so far, this one included (every dispatch counts)
    dispatches = np.cumsum(k == K_D)
    start = _last(rows.first, inclusive=True)
    attempts = dispatches - (dispatches[start] - (k[start] == K_D)) if n else dispatches
    # bars in tape order of their dispatch (a later sort by start keeps it for ties)
    opens = np.nonzero(opener)[0]
    opens = opens[np.argsort(rows.pos[opens], kind="stable")]
    opener_bar = np.full(n, -1, dtype=np.int64)
    opener_bar[opens] = np.arange(len(opens))
    t0 = t[opens].copy()
    # a JobStarted while the bar is open moves its start (to the latest such, if later)
    boundary = _last(closer, inclusive=False)
    started = np.nonzero((k == K_S) & drawn)[0]
    b = boundary[started]
    ok = b >= 0
    started, b = started[ok], b[ok]
    ok = opener[b] & (job[b] == job[started])
    np.maximum.at(t0, opener_bar[b[ok]], t[started[ok]])
    close = _next_closer(closer)[opens]
    closed = close < n
    close_row = np.where(closed, close, 0)
    closed &= job[close_row] == job[opens]
    t1 = np.where(closed, t[close_row], np.nan)
    status = np.zeros(len(opens), dtype=np.int8)  # index into CLOSED_NAMES: 0 running
    for code, kk in enumerate(CLOSED_KINDS, 1):
        status[closed & (k[close_row] == kk)] = code
    # the slot was busy for the plugin's run, not until the committer recorded the end
    ends = closed & np.isin(k[close_row], ENDS)
    dur = duration_of[rows.pos[close_row]]
    fix = ends & ~np.isnan(dur)
    t1[fix] = np.minimum(t1[fix], np.maximum(t0[fix], t0[fix] + dur[fix] / 1000.0))
    names = list(cols.worker_ids)
    return {"opener_bar": opener_bar, "bar_t0": t0, "bar_t1": t1, "bar_closed": status,
            "bar_job_index": job[opens], "bar_attempt": attempts[opens].astype(np.int32),
            "bar_worker": [names[w] for w in worker[opens].tolist()],
            "bar_pos": rows.pos[opens]}


def _markers(cols: Columns, rows: Rows, t: Any, drawn: Any, opener_bar: Any,
             times: Any) -> list[tuple[int, dict[str, Any], Any]]:
    """(event index, marker, bar index (-1 none) | worker id | None), in tape order."""
    _, kind, _, _, _ = cols.arrays()
    k, job, keys = rows.kind, rows.job, rows.keys
    out: list[tuple[int, dict[str, Any], Any]] = []
    opener = opener_bar >= 0
    last_opened = _last(opener, inclusive=True)
    boundary = _last(drawn & np.isin(k, _CLOSERS), inclusive=False)
    for r in np.nonzero(drawn & np.isin(k, [K_F, K_FR, K_C, K_R]))[0].tolist():
        i, jid = int(rows.pos[r]), keys[job[r]]
        seq, error, retry_count = cols.extra[i][:3]
        base = {"seq": seq, "t": float(t[r]), "job": jid}
        if k[r] == K_C:
            b = boundary[r]
            bar = opener_bar[b] if b >= 0 and opener[b] and job[b] == job[r] else -1
            out.append((i, {**base, "kind": "cancel", "label": f"cancel job {jid}"}, bar))
            continue
        b = last_opened[r]
        bar = opener_bar[b] if b >= 0 and job[b] == job[r] else -1
        if k[r] == K_R:
            count = retry_count if retry_count is not None else "?"
            label = f"retry job {jid} (#{count})"
            out.append((i, {**base, "kind": "retry", "label": label}, bar))
        else:
            label = f"job {jid}: {error or 'failed'}"
            out.append((i, {**base, "kind": "error", "label": label}, bar))
    has_time = ~np.isnan(times)
    for i in np.nonzero(np.isin(kind, [K_WJ, K_WL, K_WLEFT]) & has_time)[0].tolist():
        wid, verb = str(cols.extra[i][6]), _VERB[int(kind[i])]
        out.append((i, {"seq": cols.extra[i][0], "t": float(times[i]), "kind": f"worker_{verb}",
                        "job": None, "label": f"{wid} {verb}"}, wid))
    for i in np.nonzero((kind == K_OTHER) & has_time)[0].tolist():
        seq, ty, name, text = cols.extra[i]
        if ty == UI_COMMAND:
            label, mk = name, "command"
        elif ty == ERROR_EVENT or (ty == SYSTEM_RESPONSE and type(name) is str and (
                "Failed" in name or "Error" in name)):
            label, mk = f"{name}: {text}".rstrip(": "), "error"
        else:
            continue
        out.append((i, {"seq": seq, "t": float(times[i]), "kind": mk, "label": label,
                        "job": None}, None))
    out.sort(key=lambda m: m[0])
    return out


def _end_state(cols: Columns, rows: Rows, final: Any, counts: dict[str, int],
               jobs: int) -> dict[str, Any]:
    """The scrubber's state after the last event (what the full reducer would give), from
    the columns, and the reducer run over the listed unfinished jobs' own events."""
    k = rows.kind
    unfinished = np.nonzero((final == S_Q) | (final == S_D) | (final == S_RUN))[0]
    cancelled = np.zeros(len(rows.keys), dtype=bool)
    cancelled[rows.job[k == K_C]] = True
    listed = unfinished[:ACTIVE_LIMIT]
    reducer = JobReducer()
    mine = np.nonzero(np.isin(rows.job, listed))[0]
    for r in mine[np.argsort(rows.pos[mine], kind="stable")].tolist():
        name, payload, timestamp = cols.envelope_at(int(rows.pos[r]))
        if k[r] == K_REQ:
            reducer.requeue([rows.keys[rows.job[r]]], parse_timestamp(timestamp))
        else:
            reducer.apply(name, payload, timestamp)
    last = cols.last
    return state_dict(
        seq=last[0] if last else None, timestamp=last[1] if last else None, count=len(cols),
        event=(last[2], last[3]) if last else None, counts=counts, jobs_total=jobs,
        aborting=int(np.count_nonzero(cancelled[unfinished])),
        active=[reducer.jobs[rows.keys[j]] for j in listed.tolist()],
        workers=_workers(cols, rows), retries=int(np.sum(k == K_R)),
        cancels=int(np.sum(k == K_C)))


def _workers(cols: Columns, rows: Rows) -> list[dict[str, Any]]:
    """Workers in the order the reducer meets them, with status and dispatch count."""
    _, kind, _, worker, _ = cols.arrays()
    names = list(cols.worker_ids)
    events = np.isin(kind, [K_WJ, K_WL, K_WLEFT])
    named = np.zeros(len(kind), dtype=bool)
    named[rows.pos[np.isin(rows.kind, [K_D, K_S, K_OK, K_F, K_FR, K_A])]] = True
    at = np.nonzero((events | named) & (worker >= 0))[0]
    ids, first = np.unique(worker[at], return_index=True)
    records = {names[w]: WorkerRecord(names[w]) for w in ids[np.argsort(first)].tolist()}
    for i in np.nonzero(events & (worker >= 0))[0].tolist():
        ki = int(kind[i])
        slots, pid = cols.extra[i][4:6]
        apply_worker_event(records[names[worker[i]]], _EVENT_OF[ki],
                           None if ki == K_WJ else 0.0, slots, pid)
    dispatched = worker[rows.pos[rows.kind == K_D]]
    for w, n in zip(*np.unique(dispatched[dispatched >= 0], return_counts=True), strict=True):
        records[names[w]].jobs = int(n)
    return [{"worker_id": rec.worker_id, "status": rec.to_dict()["status"], "jobs": rec.jobs}
            for rec in records.values()]


def state_dict(*, seq: Any, timestamp: Any, count: int, event: tuple[Any, Any] | None,
               counts: dict[str, int], jobs_total: int, aborting: int, active: list[Any],
               workers: list[dict[str, Any]], retries: int, cancels: int) -> dict[str, Any]:
    """The scrubber's state panel (JSON), from job records of the unfinished jobs listed."""
    return {
        "seq": seq, "timestamp": timestamp, "event_count": count,
        "event": None if event is None else (f"{event[0]}: {event[1]}" if event[1]
                                             else str(event[0])),
        "counts": counts, "jobs_total": jobs_total, "aborting": aborting,
        "active": [{"job_id": j.job_id, "status": j.status, "worker_id": j.worker_id,
                    "plugin_name": j.plugin_name, "cancel_requested": j.cancel_requested,
                    "retries": j.retries} for j in active[:ACTIVE_LIMIT]],
        "workers": workers, "retries": retries, "cancels": cancels,
    }

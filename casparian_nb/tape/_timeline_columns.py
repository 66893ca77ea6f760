"""A tape's events as columns: what the timeline's pass (:mod:`._timeline_pass`) reads.

Decoded envelopes come in blocks; each block becomes a few numpy arrays (time, row kind,
job index, worker index, duration) and, for the few events drawn as markers, their details.
Payloads are not kept, so a 100,000-job tape's columns take tens of MB, and a growing tape
is read on block by block.
"""

from __future__ import annotations

from itertools import count, repeat
from operator import attrgetter, is_, itemgetter
from typing import Any

import numpy as np

from ._decode import Payload
from ._vector_time import epoch_seconds
from .envelope import DOMAIN_EVENT, job_key
from .envelope import EventName as E

__all__ = ["Columns"]

# Row kinds. 0: not a row (no payload, no handler, no job id).
K_Q, K_D, K_S, K_C, K_OK, K_F, K_FR, K_R, K_A, K_K, K_M, K_REQ = range(1, 13)
K_WJ, K_WL, K_WLEFT, K_OTHER = 13, 14, 15, 16
_KIND: dict[str, int] = {
    E.JOB_QUEUED: K_Q, E.JOB_DISPATCHED: K_D, E.JOB_STARTED: K_S, E.CANCEL_REQUESTED: K_C,
    E.JOB_COMPLETED: K_OK, E.JOB_FAILED: K_F, E.JOB_RETRIED: K_R, E.JOB_ABORTED: K_A,
    E.JOB_SKIPPED: K_K, E.MATERIALIZATION_RECORDED: K_M, E.WORKER_JOINED: K_WJ,
    E.WORKER_LOST: K_WL, E.WORKER_LEFT: K_WLEFT}
ENDS = np.array([K_OK, K_F, K_FR, K_A, K_K])
#: Kinds whose worker id is kept (bars, worker records), ...
_NAMES_WORKER = np.array([K_D, K_WJ, K_WL, K_WLEFT])
#: ... and kinds whose worker id is kept when it names a worker not seen before.
_NAMES_WORKER_TOO = np.array([K_S, K_OK, K_F, K_FR, K_A])
#: Kinds whose details are kept.
_DETAILED = np.array([K_F, K_FR, K_C, K_R, K_WJ, K_WL, K_WLEFT, K_OTHER])


class Columns:
    """The named events of a tape, compact, in tape order; grows block by block (a live
    tape is read on from where it stopped). Payloads are not kept: what the pass needs of
    them is in arrays, and the few events the end state replays are read again through
    ``envelope_at(i)`` (set by the loader)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.first_timestamp: Any = None
        self.last: tuple[Any, Any, Any, Any] | None = None  # seq, timestamp, type, name
        self.count = 0
        #: job id -> index (increasing in order of first job event; not dense)
        self.keys: dict[str, int] = {}
        self._next_job = count()
        self.worker_ids: dict[str, int] = {}
        self.extra: dict[int, tuple[Any, ...]] = {}  # event -> details of the few that need them
        self._times: list[Any] = []
        self._kind: list[Any] = []
        self._job: list[Any] = []
        self._worker: list[Any] = []
        self._duration: list[Any] = []
        self._arrays: tuple[Any, ...] | None = None
        self.envelope_at: Any = None

    def __len__(self) -> int:
        return self.count

    def add(self, events: list[Any]) -> list[int]:
        """Append decoded envelopes; returns the indices (into ``events``) kept (named).

        ~420,000 events for a 100,000-job tape: every per-event step here is a C-level
        ``map`` (attrgetter, dict lookups) or numpy, never a Python statement per event."""
        if events and self.first_timestamp is None and not self.count:
            self.first_timestamp = events[0].timestamp
        ens = list(map(_EVENT_NAME, events))
        kept = list(range(len(events)))
        named = events
        if None in ens:
            kept = [i for i, en in enumerate(ens) if en is not None]
            named, ens = _pick(events, kept), _pick(ens, kept)
        self.skipped += len(events) - len(named)
        if not named:
            return kept
        base = self.count
        self.count += len(named)
        last = named[-1]
        self.last = (last.seq, last.timestamp, ens[-1].type, ens[-1].name)
        pays: list[Payload | None] = list(map(_PAYLOAD, named))
        self._times.append(epoch_seconds(list(map(_TIMESTAMP, named))))
        kind = _kinds(ens, pays)
        idx = np.nonzero((kind >= K_Q) & (kind <= K_M))[0].tolist()
        job = np.full(len(named), -1, dtype=np.int64)
        raws = list(map(_JOB_ID, _pick(pays, idx)))
        if not _all_str(raws):  # 123 and "123" are the same job
            raws = [r if type(r) is str else job_key(r) for r in raws]
        if None in raws:  # not a job id: no row
            ok = [i for i, r in zip(idx, raws, strict=True) if r is not None]
            idx, raws = ok, [r for r in raws if r is not None]
        # One C-level pass: a job's index is the count of job events before its first one
        # (sparse, in order of first appearance; Rows makes names of them).
        job[idx] = np.fromiter(map(self.keys.setdefault, raws, self._next_job), dtype=np.int64,
                               count=len(raws))
        worker = np.full(len(named), -1, dtype=np.int64)
        known = set(self.worker_ids)
        self._index_workers(worker, pays, np.nonzero(np.isin(kind, _NAMES_WORKER))[0])
        # A start or an end names a worker first only when it is not known yet (the
        # reducer's worker order); most blocks name none: then only those events are read.
        idx = np.nonzero(np.isin(kind, _NAMES_WORKER_TOO))[0].tolist()
        try:
            fresh = not set(map(_WORKER_ID, _pick(pays, idx))) <= known | {None}
        except TypeError:  # a corrupt tape's unhashable worker id
            fresh = True
        if fresh:
            worker[:] = -1
            self._index_workers(worker, pays, np.nonzero(np.isin(
                kind, np.concatenate((_NAMES_WORKER, _NAMES_WORKER_TOO))))[0])
        idx = np.nonzero(np.isin(kind, ENDS))[0].tolist()
        duration = np.full(len(named), np.nan)
        duration[idx] = _durations(list(map(_DURATION, _pick(pays, idx))))
        for i in np.nonzero(np.isin(kind, _DETAILED))[0].tolist():
            p, k = pays[i], int(kind[i])
            if k == K_OTHER:
                text = (p.error or p.message or "") if p is not None else ""
                self.extra[base + i] = (named[i].seq, ens[i].type, ens[i].name, text)
            else:
                assert p is not None
                self.extra[base + i] = (named[i].seq, p.error, p.retry_count,
                                        p.requeued_job_ids, p.slots, p.pid, p.worker_id)
        self._kind.append(kind)
        self._job.append(job)
        self._worker.append(worker)
        self._duration.append(duration)
        self._arrays = None
        return kept

    def _index_workers(self, worker: Any, pays: list[Any], at: Any) -> None:
        idx = at.tolist()
        ws = list(map(_WORKER_ID, _pick(pays, idx)))
        worker[idx] = _index(self.worker_ids, ws if _all_str(ws) else [
            None if w is None else w if type(w) is str else str(w) for w in ws])

    def arrays(self) -> tuple[Any, Any, Any, Any, Any]:
        """(epoch seconds, kind, job index, worker index, duration ms) per event."""
        if self._arrays is None:
            parts = (self._times, self._kind, self._job, self._worker, self._duration)
            empty = (np.float64, np.int8, np.int64, np.int64, np.float64)
            joined = tuple(np.concatenate(x) if x else np.zeros(0, dtype=d)
                           for x, d in zip(parts, empty, strict=True))
            for x, j in zip(parts, joined, strict=True):
                x[:] = [j]  # keep one array per column from now on
            self._arrays = joined
        return self._arrays  # type: ignore[return-value]


_EVENT_NAME, _PAYLOAD, _TIMESTAMP = (attrgetter(a) for a in (
    "event_name", "payload", "timestamp"))
_TYPE, _NAME, _JOB_ID, _WORKER_ID, _DURATION, _WILL_RETRY = (attrgetter(a) for a in (
    "type", "name", "job_id", "worker_id", "duration_ms", "will_retry"))


def _pick(values: list[Any], idx: list[int]) -> list[Any]:
    """``[values[i] for i in idx]``, in C."""
    if len(idx) > 1:
        return list(itemgetter(*idx)(values))
    return [values[i] for i in idx]


def _all_str(values: list[Any]) -> bool:
    return not values or set(map(type, values)) == {str}


def _index(index: dict[str, int], keys: list[str | None]) -> list[int]:
    """Each key's index in ``index`` (new keys appended in order of first appearance);
    -1 for None."""
    new = [k for k in dict.fromkeys(keys) if k not in index and k is not None]
    index.update(zip(new, range(len(index), len(index) + len(new)), strict=True))
    return list(map(index.get, keys, repeat(-1)))  # type: ignore[arg-type]


def _durations(values: list[Any]) -> Any:
    """``duration_ms`` values as floats; NaN where not a number >= 0 (bools are not)."""
    kinds = set(map(type, values))
    if kinds <= {int, float, type(None)}:
        out = np.array(values, dtype=np.float64)  # None -> NaN
    else:
        out = np.array([v if type(v) in (int, float) else np.nan for v in values],
                       dtype=np.float64)
    out[out < 0] = np.nan
    return out


class _Kinds(dict[Any, int]):
    """Row kind by event name; 0 for any other name."""

    def __missing__(self, key: Any) -> int:
        return 0


_KINDS = _Kinds(_KIND)


def _kinds(ens: list[Any], pays: list[Any]) -> Any:
    n = len(ens)
    try:
        kind = np.fromiter(map(_KINDS.__getitem__, map(_NAME, ens)), dtype=np.int8, count=n)
    except TypeError:  # a corrupt tape's unhashable event name: not a handler
        kind = np.array([_KINDS[en.name] if type(en.name) is str else 0 for en in ens],
                        dtype=np.int8)
    types = list(map(_TYPE, ens))
    domain = np.ones(n, dtype=bool)
    if types.count(DOMAIN_EVENT) != n:  # commands, responses, errors: a few per block
        domain[[i for i, t in enumerate(types) if t != DOMAIN_EVENT]] = False
        kind[~domain] = K_OTHER
    if None in pays:
        none = np.fromiter(map(is_, pays, repeat(None)), dtype=bool, count=n)
        kind[none & domain] = 0
    failed = np.nonzero(kind == K_F)[0]
    retry = np.fromiter(map(is_, map(_WILL_RETRY, _pick(pays, failed.tolist())), repeat(True)),
                        dtype=bool, count=len(failed))
    kind[failed[retry]] = K_FR
    return kind

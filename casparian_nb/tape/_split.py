"""``tape explain`` of a big tape on two cores: two byte ranges at once, merged exactly.

The tape is cut at a line start near its middle. This process explains the first part while
a forked child explains the second as if it were a tape of its own; the child's story is then
laid after ours. Nearly everything merges directly: counts and output totals add up, commands,
errors and worker joins/losses follow ours in order, a response finds its command in our part
by correlation id, line numbers shift by our line count.

A job's state does not: a job seen in both parts (in flight at the cut, or re-queued later)
was explained by the child from a blank record. For those *boundary* jobs (168 on the
benchmark's 1,000,130-event tape) the child reads the blocks where it saw them again, and
sends us their events; we replay them on our record of the job, and take back the busy time
the child's blank replay gave their workers. Jobs are independent of one another except
through a lost worker's ``requeued_job_ids``, which is replayed as one of each named job's
events. This relies on the reducer's effects beyond the job itself not depending on the
job's state (counters, output totals, and the workers an event names all exist either way).
The child process and its pipes are ``_fork``.

While we replay and write our jobs, the child writes its own (already in the output format),
so the output costs no more than half of the serial time either. The result is the same as a
one-process explain (tests cut tapes at every line) except that a worker's busy seconds add
up in another order, which may move the last bits of a float.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._decode import Payload
from ._fork import CHILD_FAILED, Child
from ._scan import MAX_SKIPPED, Block, Cursor, finish, reread, scan, settle
from .envelope import EventName, job_key, parse_timestamp
from .explain import Explanation, encode_jobs, explain_tape, text_job_lines
from .reader import open_tape
from .reducer import JobReducer, WorkerRecord, apply_worker_event

__all__ = ["SPLIT_MIN_BYTES", "MergedExplanation", "Segment", "explain_split"]

#: below this a tape is explained in one process (forking costs more than it saves)
SPLIT_MIN_BYTES = 32 << 20

_LOST = (EventName.WORKER_LOST, EventName.WORKER_LEFT)
Event = tuple[str | None, Any, Any]  # (handler name, or None for a lost worker's requeue; payload; timestamp)


class Segment:
    """A byte range of a tape explained as a tape of its own, and what a merge needs of it."""

    def __init__(self, path: Path, start: int, end: int | None) -> None:
        self.path, self.start, self.end = path, start, end
        self.ex = Explanation()
        self.ex.reducer = JobReducer(track=True)
        self.ex.unmatched = []
        self.cur = Cursor()
        self.blocks: list[Block] = []

    def scan(self) -> Segment:
        with open_tape(self.path) as fh:
            scan(self.ex, self.cur, fh, self.start, self.end, self.blocks)
        settle(self.ex, self.cur)
        return self

    def candidates(self) -> list[str]:
        """Keys of the jobs an earlier segment may also know: every job seen here, and every
        job a lost worker's requeue named."""
        r = self.ex.reducer
        named = r.lost_names or set()
        return [*r.jobs, *(named - r.jobs.keys())]

    def boundary_events(self, keys: set[str]) -> dict[str, list[Event]]:
        """Each listed job's events in this segment, in order: the blocks between where it
        was first and last seen, and those with a lost worker, are read again."""
        r = self.ex.reducer
        which = set(r.lost_blocks or ())
        for key in keys:
            job = r.jobs.get(key)
            if job is not None:
                which.update(range(job.first_block, job.last_block + 1))
        out: dict[str, list[Event]] = {k: [] for k in keys}
        if not keys:
            return out
        recorder = Explanation()
        recorder.reducer.handlers = {name: _record(name, out) for name in r.handlers}
        with open_tape(self.path) as fh:
            reread(recorder, fh, self.blocks, which)
        return out

    def story(self, keys: set[str]) -> dict[str, Any]:
        """Everything but the jobs themselves, as plain data (it crosses a pipe)."""
        ex, r = self.ex, self.ex.reducer
        return {
            "event_count": ex.event_count, "started_at": ex.started_at,
            "last": self.cur.last, "lines": self.cur.number,
            "skipped_lines": ex.skipped_lines, "skipped_count": ex.skipped_count,
            "truncated": ex.truncated, "commands": ex.commands, "by_corr": ex._by_corr,
            "unmatched": ex.unmatched, "errors": ex.errors,
            "retries": r.retries, "cancels": r.cancels, "materializations": r.materializations,
            "materialized": r.materialized,
            "workers": [(w.worker_id, w.jobs, w.busy_s) for w in r.workers.values()],
            "worker_log": r.worker_log, "boundary": self.boundary_events(keys),
        }

    def jobs(self, keys: set[str], fmt: str) -> dict[str, Any]:
        """The jobs not in ``keys``, rendered in ``fmt`` ("json" lines or "text" lines),
        with their counts by status, completed rows and runs still open."""
        counts: dict[str, int] = {}
        rows = 0
        open_runs: list[tuple[str | None, float]] = []
        mine = [j for j in self.ex.reducer.jobs.values() if j.job_id not in keys]
        for j in mine:
            counts[j.status] = counts.get(j.status, 0) + 1
            if j.status == "completed":
                rows += j.rows
            if j.run_start is not None:
                open_runs.append((j.run_worker, j.run_start))
        if fmt == "json":
            text = encode_jobs(mine)
        else:
            text = "\n".join(line for j in mine for line in text_job_lines(j)).encode(
                "utf-8", "surrogatepass")
        return {"text": text, "count": len(mine), "counts": counts, "rows": rows,
                "open_runs": open_runs}


def _record(name: str, out: dict[str, list[Event]]) -> Callable[[Payload, Any], None]:
    """A handler that notes a boundary job's event instead of applying it."""
    if name in _LOST:
        def lost(p: Payload, ts: Any) -> None:
            ids = p.requeued_job_ids
            for raw in ids if isinstance(ids, list) else ():
                events = out.get(job_key(raw) or "")
                if events is not None:
                    events.append((None, None, ts))
        return lost

    def job(p: Payload, ts: Any) -> None:
        events = out.get(job_key(p.job_id) or "")
        if events is not None:
            events.append((name, p, ts))
    return job


class MergedExplanation(Explanation):
    """Our segment's explanation with the child's laid after it; the child's jobs arrive
    already rendered (``jobs``: fetched when first needed, so both sides render at once)."""

    _fetch: Callable[[], dict[str, Any]]
    _other: dict[str, Any] | None = None

    def _others(self) -> dict[str, Any]:
        if self._other is None:
            self._other = self._fetch()
        return self._other

    def _job_count(self) -> int:
        return super()._job_count() + self._others()["count"]

    def _rendered(self, fmt: str) -> bytes:
        if self._fetch_format != fmt:
            raise TypeError(f"this explanation's jobs were rendered as {self._fetch_format}, "
                            f"not {fmt}")
        return bytes(self._others()["text"])

    def _job_chunks(self) -> Iterator[bytes]:
        yield from super()._job_chunks()
        yield self._rendered("json")

    def _text_job_lines(self) -> Iterator[str]:
        yield from super()._text_job_lines()
        text = self._rendered("text")
        if text:
            yield text.decode("utf-8", "surrogatepass")

    def summary(self) -> dict[str, int]:
        out = super().summary()
        other = self._others()
        out["total"] += other["count"]
        for status, n in other["counts"].items():
            out[status] = out.get(status, 0) + n
        out["total_rows"] += other["rows"]
        return out

    def _busy(self) -> dict[str, float]:
        busy = super()._busy()
        end = parse_timestamp(self.ended_at)
        if end is not None:
            for worker, start in self._others()["open_runs"]:
                if worker in busy:
                    busy[worker] += max(0.0, end - start)
        return busy

    def to_json(self) -> dict[str, Any]:
        import json

        others = self._rendered("json")
        data = super().to_json()
        data["jobs"] += json.loads(b"[" + others + b"]")
        return data

    _fetch_format = "json"


def merge(first: Segment, story: dict[str, Any],
          fetch: Callable[[], dict[str, Any]], fmt: str) -> MergedExplanation:
    """Lay the second segment's ``story`` after ``first``; its jobs come from ``fetch()``."""
    m = MergedExplanation.__new__(MergedExplanation)
    m.__dict__.update(first.ex.__dict__)
    m._fetch, m._fetch_format = fetch, fmt
    r = m.reducer
    for wid, jobs, busy in story["workers"]:
        rec = r.workers.get(wid)
        if rec is None:
            rec = r.workers[wid] = WorkerRecord(wid)
        rec.jobs += jobs
        rec.busy_s += busy
    for wid, kind, t, slots, pid in story["worker_log"]:
        apply_worker_event(r.workers[wid], kind, t, slots, pid)
    r.retries += story["retries"]
    r.cancels += story["cancels"]
    r.materializations += story["materializations"]
    for key, (count, rows) in story["materialized"].items():
        agg = r.materialized.setdefault(key, [0, 0])
        agg[0] += count
        agg[1] += rows
    for key, events in story["boundary"].items():
        for wid, delta in _replay(r, key, events).items():
            r.workers[wid].busy_s += delta
    for corr, status, failed, text in story["unmatched"]:
        idx = m._by_corr.get(corr)
        if idx is not None:
            m.settle_command(idx, status, failed, text)
    offset = len(m.commands)
    m.commands += story["commands"]
    m._by_corr.update({corr: i + offset for corr, i in story["by_corr"].items()})
    m.errors += story["errors"]
    if story["event_count"] and not m.event_count:
        m.started_at = story["started_at"]
    m.event_count += story["event_count"]
    lines = first.cur.number
    room = max(0, MAX_SKIPPED - len(m.skipped_lines))
    m.skipped_lines += [n + lines for n in story["skipped_lines"][:room]]
    m.skipped_count += story["skipped_count"]
    if story["truncated"] is not None:
        m.truncated = story["truncated"] + lines
    finish(m, first.path, lines + story["lines"])
    last = story["last"] or first.cur.last
    if last is not None:
        m.ended_at, m.schema_version = last
    return m


def _replay(r: JobReducer, key: str, events: list[Event]) -> dict[str, float]:
    """Replay a boundary job's later events on our record of it; returns per worker the
    busy seconds to add: the exact replay's minus those the child's blank replay gave."""
    exact, blank = JobReducer(), JobReducer()
    for red in (exact, blank):
        red.workers = {w: WorkerRecord(w) for w in r.workers}
    exact.jobs[key] = copy.copy(r.jobs[key])
    for name, payload, ts in events:
        for red in (exact, blank):
            if name is None:
                red.requeue((key,), parse_timestamp(ts))
            else:
                red.handlers[name](payload, ts)
    r.jobs[key] = exact.jobs[key]
    return {w: exact.workers[w].busy_s - rec.busy_s
            for w, rec in blank.workers.items() if w in r.workers and w in exact.workers}


def cut_point(path: Path, at: int) -> int | None:
    """The first line start at or after byte ``at`` (None if there is none before the end)."""
    with open_tape(path) as fh:
        if at <= 0:
            return None
        fh.seek(at - 1)
        fh.readline()  # to the end of the line holding byte at-1
        pos = fh.tell()
        return pos if fh.read(1) else None


def explain_split(path: str | os.PathLike[str], fmt: str = "json", *,
                  split_at: int | None = None, fork: bool = True,
                  min_bytes: int = SPLIT_MIN_BYTES) -> Explanation:
    """Explain a tape in two processes when it is big enough (``min_bytes``) and this system
    can fork: the same story as :func:`explain_tape` (the CLI renders it in ``fmt``).

    ``split_at`` chooses the cut (default: the middle); ``fork=False`` explains both
    segments here, one after the other (tests; and what happens if the child fails).
    """
    p = Path(path)
    size = p.stat().st_size if p.is_file() else 0
    if split_at is None:
        if size < min_bytes or not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
            return explain_tape(p)
        split_at = size // 2
    mid = cut_point(p, split_at)
    if mid is None:
        return explain_tape(p)
    first, second = Segment(p, 0, mid), Segment(p, mid, None)
    child = Child(second) if fork and hasattr(os, "fork") else None
    try:
        first.scan()
        if child is not None:
            try:
                candidates = child.ask()
                keys = {k for k in candidates if k in first.ex.reducer.jobs}
                story = child.ask((sorted(keys), fmt))
                merged = merge(first, story, _from_child(child, second, keys, fmt), fmt)
                weakref.finalize(merged, child.close)  # never rendered: still reaped
                return merged
            except CHILD_FAILED:
                child.close()
                child = None
        second.scan()
        keys = {k for k in second.candidates() if k in first.ex.reducer.jobs}
        story = second.story(keys)
        return merge(first, story, lambda: second.jobs(keys, fmt), fmt)
    except BaseException:
        if child is not None:
            child.close()
        raise


def _from_child(child: Child, second: Segment, keys: set[str],
                fmt: str) -> Callable[[], dict[str, Any]]:
    """The child's rendered jobs; if it fails now, the segment is explained here instead."""
    def fetch() -> dict[str, Any]:
        try:
            return child.jobs()
        except CHILD_FAILED:
            return second.scan().jobs(keys, fmt)
        finally:
            child.close()
    return fetch

"""The sentinel's committer thread, and the removal of staging no promotion needs.

The committer is the single writer of every sink: it promotes staged outputs one job at a
time, except that appends to file sinks waiting together go as one group (one journal, one
fsync per sink directory: :func:`casparian_nb.sinks.promote_group`), each job still all or
nothing. A DuckDB file that another process holds (a notebook with it open) must not stall the
line, so a DuckDB promotion never waits for the file: it is tried once, and when the file is
locked it is *parked* and retried with backoff while every other promotion keeps flowing.
Through a burst of promotions the DuckDB files stay open (``sinks._held``): closed when the
queue runs dry, and at least every ``HOLD_MAX_AGE`` seconds.
Promotions to the same DuckDB file stay in order (once a file has parked promotions, new ones
for it queue behind them). A promotion still locked out ``lock_timeout`` seconds after it
arrived fails its job with the lock's one-line reason (which file, which process, what to do).

A parked job stays PROMOTING. Nothing about it is lost across a crash: its staged record is in
the state DB (``record_staged`` is written before the ``Promote`` reaches us), its staging dir
is untouched until the load commits, and a restart re-adopts and re-promotes it (idempotent).

Staging that nothing will promote is removed by the loop, never by this thread:
:func:`remove_attempt` drops one lost attempt's directory (its worker died), and
:func:`sweep_staging` every job directory but those of PROMOTING jobs, when the sentinel
starts (after crash recovery) and when it stops (after the committer has finished). A
directory holding a promotion journal is never removed by either.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from .. import sinks
from ..errors import SinkLockedError
from ..sinks._held import ConnectionHolder, holding_connections
from ..sinks.staging import ATTEMPT_PREFIX, JOURNAL, attempt_root, job_dirname
from . import state as st
from ._persist import Persister

__all__ = ["Committer", "CommitterItem", "FinishedItem", "remove_attempt", "sweep_staging"]

log = logging.getLogger("casparian_nb.sentinel")

#: Retry delays for a locked DuckDB file: first, then doubling up to the cap.
FIRST_RETRY = 0.05
MAX_RETRY = 1.0
#: Wake the loop at least once per this many finished promotions (else once per burst).
WAKE_EVERY = 64
#: Most promotions taken as one group.
GROUP_MAX = 64
#: Longest a DuckDB file stays open across a burst of promotions, seconds (the default of
#: Settings.duckdb_hold_s).
HOLD_MAX_AGE = 1.0


#: What the committer's queue carries: promotions, discards, a task to run between two
#: promotions (a callable: it reports its own outcome), or None to stop.
CommitterItem = st.Promote | st.Discard | Callable[[], None] | None
#: What goes back to the loop: finished promotions, or a task for the loop thread.
FinishedItem = st.PromotionFinished | Callable[[], None]


@dataclass(slots=True)
class _Parked:
    item: st.Promote
    deadline: float  # monotonic: give up on the lock after this


@dataclass(slots=True)
class _Line:
    """The parked promotions of one DuckDB file, oldest first."""

    items: deque[_Parked] = field(default_factory=deque)
    next_try: float = 0.0
    delay: float = FIRST_RETRY


class Committer:
    """Promote what arrives on ``promotions``; put a ``PromotionFinished`` per job on
    ``finished`` and call ``wake`` once per burst. ``None`` on ``promotions`` stops it;
    promotions still parked then are left to the next start (their jobs stay PROMOTING in
    memory and RUNNING-with-staged-outputs in the state DB, which ``recover`` re-adopts)."""

    def __init__(self, persist: Persister,
                 promotions: queue.Queue[CommitterItem],
                 finished: queue.Queue[FinishedItem], wake: Callable[[], None],
                 *, lock_timeout: float = 10.0, hold_s: float = HOLD_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.persist = persist
        self.promotions = promotions
        self.finished = finished
        self.wake = wake
        self.lock_timeout = lock_timeout
        self.hold_s = hold_s
        self.clock = clock
        #: DuckDB file (real path) -> its parked promotions.
        self.parked: dict[str, _Line] = {}
        self._done = 0
        self._held: ConnectionHolder | None = None

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """The thread's body: returns after ``None`` arrives."""
        with holding_connections(max_age=self.hold_s) as held:
            self._held = held
            after: list[CommitterItem] = []  # taken off the queue behind a group: next
            while True:
                try:
                    item = after.pop() if after else self.promotions.get(
                        timeout=self._until_retry())
                except queue.Empty:
                    pass  # a parked line is due
                else:
                    if item is None:
                        if self.parked:
                            log.info("stopping with %d promotion(s) waiting for a DuckDB "
                                     "file; the next start finishes them",
                                     sum(len(line.items) for line in self.parked.values()))
                        return
                    if isinstance(item, st.Promote) and _groupable(item):
                        after = self.take_group(item)
                    elif isinstance(item, st.Promote):
                        self.take(item)
                    elif isinstance(item, st.Discard):
                        try:
                            sinks.discard(sinks.StagedJob.from_dict(item.staged))
                        except Exception:
                            log.exception("discarding staged outputs failed")
                    else:  # a step that must not overlap a promotion (a compaction's swap)
                        try:
                            item()
                        except Exception:
                            log.exception("committer task failed")
                self.retry_due()
                # DuckDB files stay open through a burst (a small job loads in ~2 ms, an
                # open + close costs ~15 ms) and are closed when it ends, or at least every
                # HOLD_MAX_AGE seconds so a notebook waiting to read gets in.
                held.release(only_old=self.hold_s > 0 and not self.promotions.empty())
                if self._done and self.promotions.empty():  # once per burst, not per job
                    self._wake()

    def _until_retry(self) -> float | None:
        """Seconds until the earliest parked line is due (None: nothing parked, block)."""
        if not self.parked:
            return None
        soonest = min(line.next_try for line in self.parked.values())
        return max(0.0, soonest - self.clock())

    def _wake(self) -> None:
        self.wake()
        self._done = 0

    def _finish(self, fin: st.PromotionFinished) -> None:
        if self._held is not None and (self.hold_s <= 0 or self.promotions.empty()):
            # The last of a burst: close the files before anyone hears the job is done, so
            # a notebook that queries right after its wait() finds them free.
            self._held.release()
        self.finished.put(fin)
        self._done += 1
        if self._done >= WAKE_EVERY:
            self._wake()

    # -- promotions ----------------------------------------------------------------------
    def take_group(self, first: st.Promote) -> list[CommitterItem]:
        """Promote ``first`` with the groupable promotions queued behind it; return the
        item that ended the group, if any, to be handled next (in queue order)."""
        group: list[st.Promote] = [first]
        while len(group) < GROUP_MAX:
            try:
                item = self.promotions.get_nowait()
            except queue.Empty:
                return self._promote_group(group, [])
            if not (isinstance(item, st.Promote) and _groupable(item)):
                return self._promote_group(group, [item])
            group.append(item)
        return self._promote_group(group, [])

    def _promote_group(self, group: list[st.Promote],
                       after: list[CommitterItem]) -> list[CommitterItem]:
        if len(group) == 1:
            self.take(group[0])
        else:
            for fin in self.persist.promote_group(group):
                self._finish(fin)
        return after

    def take(self, item: st.Promote) -> None:
        """Promote ``item`` now, or park it behind its DuckDB file's parked promotions."""
        key = _duckdb_key(item)
        line = self.parked.get(key) if key is not None else None
        if line is not None:  # keep per-file order: never overtake a parked promotion
            line.items.append(_Parked(item, self.clock() + self.lock_timeout))
            return
        try:
            fin = self.persist.promote(item, lock_timeout=0.0, raise_locked=True)
        except SinkLockedError as exc:
            now = self.clock()
            if key is None or self.lock_timeout <= 0:
                self._finish(self.persist.failed(item, exc))
                return
            log.warning("promotion of job %s waits (up to %gs): %s", item.job_id,
                        self.lock_timeout, exc)
            self.parked[key] = _Line(deque([_Parked(item, now + self.lock_timeout)]),
                                     next_try=now + FIRST_RETRY)
            return
        self._finish(fin)

    def retry_due(self) -> None:
        """Retry the head of every parked line whose backoff has run out."""
        now = self.clock()
        for key, line in list(self.parked.items()):
            if line.next_try <= now:
                self._drain(key, line)

    def _drain(self, key: str, line: _Line) -> None:
        """Promote the line's promotions in order until one finds the file still locked."""
        while line.items:
            head = line.items[0]
            try:
                fin = self.persist.promote(head.item, lock_timeout=0.0, raise_locked=True)
            except SinkLockedError as exc:
                now = self.clock()
                if now < head.deadline:
                    line.delay = min(line.delay * 2, MAX_RETRY)
                    line.next_try = min(now + line.delay, head.deadline)
                    return
                # Waited long enough: fail this job with the lock's reason; the next one in
                # line (it arrived later) gets the rest of its own wait.
                fin = self.persist.failed(head.item, exc)
            line.items.popleft()
            self._finish(fin)
        del self.parked[key]


def _groupable(item: st.Promote) -> bool:
    """An append whose outputs all go to file sinks (no DuckDB file to wait on)."""
    return item.mode == "append" and _duckdb_key(item) is None


def _duckdb_key(item: st.Promote) -> str | None:
    """The DuckDB file a promotion writes (its real path; the first in file order when its
    outputs are routed to several), or None when it writes none."""
    try:
        routing = sinks.SinkRouting.parse(str(item.staged.get("sink") or ""))
    except Exception:
        return None  # promote() reports the bad URI
    ducks = [s for s in routing.sinks() if s.kind == "duckdb"]
    return os.path.realpath(ducks[0].path) if ducks else None


def remove_attempt(staging: Path, attempt: int, job_key: str) -> str | None:
    """Remove the staging dir of attempt ``attempt`` of job ``job_key``; return its path, or
    None when there was nothing to remove (the attempt staged nothing, or its worker's
    cleanup got there first).

    Only for an attempt that is over: its worker was lost, so nothing will promote what it
    staged (a late receipt of it is stale and discarded). A dir with a promotion journal is
    kept all the same (that cannot be a lost attempt's: promotion starts only after the
    sentinel accepted a receipt), and so is a symlink in its place.
    """
    path = attempt_root(staging, attempt) / job_dirname(job_key)
    if not path.is_dir() or path.is_symlink() or os.path.lexists(path / JOURNAL):
        return None
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # the next sweep (stop or start) tries again
        log.warning("cannot remove the staging of a lost attempt, %s: %s", path, exc)
        return None
    return str(path)


def sweep_staging(staging: Path, keep: Collection[str]) -> list[str]:
    """Remove the sentinel's job staging dirs (``<staging>/attempt-N/<job dir>``) that no
    promotion needs; return them.

    Call at start-up, after crash recovery rolled the journals forward and the state DB was
    reconciled, and at a clean stop, after the committer finished and the workers were told
    to stop: ``keep`` are the staging dirs of the jobs that are PROMOTING (re-adopted, or
    parked behind a locked DuckDB file). Every other job dir belongs to an attempt that is
    over (its worker died, or stopped and discarded it; a late receipt is discarded as
    stale; a job still queued or running re-runs under a new attempt dir). Dirs with a
    journal (a promotion recovery could not finish) are left for a human. Symlinks are never followed: only real directories inside
    ``attempt-*`` are removed, and ``rmtree`` unlinks links instead of descending into them.
    Standalone runs (``run-*``) clean up after themselves and are not touched.
    """
    wanted = {os.path.realpath(p) for p in keep}
    removed: list[str] = []
    try:
        attempts = [e for e in os.scandir(staging)
                    if e.name.startswith(ATTEMPT_PREFIX) and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return removed
    for attempt in attempts:
        try:
            jobs = [e for e in os.scandir(attempt.path) if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log.warning("cannot list %s: %s", attempt.path, exc)
            continue
        for job in jobs:
            if os.path.realpath(job.path) in wanted or os.path.lexists(
                    os.path.join(job.path, JOURNAL)):
                continue
            try:
                shutil.rmtree(job.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove stale staging %s: %s", job.path, exc)
                continue
            removed.append(job.path)
    return removed

"""``ctl.wait()``: block until jobs finish — bounded, interruptible, never a busy loop.

Final states come from two places: the event thread records every final event it relays, and
every ``check_every`` seconds the state DB (read-only) is asked which of the pending jobs are
still QUEUED or RUNNING. The DB check catches what events cannot: jobs that finished before
the subscription, and events a slow subscriber lost. Between checks the loop sleeps on the
event thread's "a job finished" flag, and pumps the open queue widgets (the kernel's loop is
blocked by this cell, so they would otherwise freeze).

:class:`Waiting` is the controller's part that blocks: ``wait`` and ``catch_up``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from .._progress import ProgressCounts, ProgressSink
from ..protocol import JobStatus
from ._base import ControllerBase
from ._models import TERMINAL, WaitInterrupted, WaitResult, WaitTimeoutError

__all__ = ["Waiting", "wait_for"]

_OK = frozenset({JobStatus.COMPLETED, JobStatus.SKIPPED})
_ON_WORKER = frozenset({JobStatus.RUNNING, JobStatus.DISPATCHED})


def _db_statuses(ctl: ControllerBase, pending: set[int]) -> tuple[dict[int, str], set[int]]:
    """Final statuses, from the state DB, of the pending jobs that have one; and which of
    the others are on a worker (for the progress bar)."""
    found = ctl._rows.statuses(pending)
    out: dict[int, str] = {j: s for j, s in found.items() if s in TERMINAL}
    for jid in pending - set(found):
        out[jid] = "UNKNOWN"  # not in the DB at all: waiting for it would never end
    running = {j for j, s in found.items() if s in _ON_WORKER}
    return out, running


def _counts(done: dict[int, str], pending: set[int], running: set[int]) -> ProgressCounts:
    ok = sum(1 for s in done.values() if s in _OK)
    on_worker = len(pending & running)
    return ProgressCounts(ok, len(done) - ok, on_worker, len(pending) - on_worker)


def _hint(pending: list[int]) -> str:
    shown = ", ".join(map(str, pending[:5])) + (", ..." if len(pending) > 5 else "")
    return (f"stopped waiting; {len(pending)} job(s) still queued or running ({shown}) and "
            "they keep running. Cancel them with ctl.cancel(job_id) or "
            "ctl.cancel_all_queued(), or wait with cancel_on_interrupt=True")


def wait_for(ctl: ControllerBase, ids: list[int], timeout: float | None,
             cancel_on_interrupt: bool, poll: float = 0.25,
             check_every: float = 1.0, progress: ProgressSink | None = None) -> WaitResult:
    """The body of :meth:`Controller.wait`; reports to ``progress`` (a bar) while it blocks."""
    done: dict[int, str] = {}
    pending = set(ids)
    running: set[int] = set()
    try:
        return _wait(ctl, ids, timeout, cancel_on_interrupt, poll, check_every, progress,
                     done, pending, running)
    finally:
        if progress is not None:
            progress.finish(_counts(done, pending, running))


def _wait(ctl: ControllerBase, ids: list[int], timeout: float | None, cancel_on_interrupt: bool,
          poll: float, check_every: float, progress: ProgressSink | None,
          done: dict[int, str], pending: set[int], running: set[int]) -> WaitResult:
    deadline = None if timeout is None else time.monotonic() + timeout
    next_check = 0.0  # check the DB at once: jobs may have finished already
    try:
        while pending:
            finished = ctl.events.finished()
            for jid in [j for j in pending if j in finished]:
                done[jid] = finished[jid]
                pending.discard(jid)
            now = time.monotonic()
            if pending and now >= next_check:
                final, on_worker = _db_statuses(ctl, pending)
                running.clear()
                running.update(on_worker)
                for jid, status in final.items():
                    done[jid] = status
                    pending.discard(jid)
                next_check = now + check_every
                if pending:
                    ctl._check()  # a dead sentinel finishes nothing: raise, do not hang
            if progress is not None:
                progress.update(_counts(done, pending, running))
            ctl._pump_widgets()
            if not pending:
                break
            if deadline is not None and now >= deadline:
                left = sorted(pending)
                raise WaitTimeoutError(
                    f"{len(left)} of {len(ids)} job(s) not finished after {timeout:g}s "
                    f"(e.g. {left[:5]}); they keep running — ctl.wait() again or ctl.cancel()",
                    left)
            ctl.events.changed.wait(poll)
            ctl.events.changed.clear()
    except KeyboardInterrupt:
        left = sorted(pending)
        if cancel_on_interrupt and left:
            _cancel(ctl, left)
            raise WaitInterrupted(f"stopped waiting and requested cancellation of {len(left)} "
                                  "job(s); running ones show ABORTED once their workers "
                                  "confirm (see ctl.queue() or ctl.jobs())", left) from None
        raise WaitInterrupted(_hint(left), left) from None
    ctl._pump_widgets(final=True)
    return WaitResult({j: done[j] for j in ids if j in done})


def _cancel(ctl: ControllerBase, ids: list[int]) -> Any:
    try:
        with ctl.session.command("Cancel", {"job_ids": ids}) as r:
            reply = ctl.client.cancel_jobs(ids)
            r.update(count=len(reply.get("results") or {}))
        return reply
    except Exception as exc:  # report, but the interrupt is what the user asked for
        print(f"casparian: cancelling after the interrupt failed: {exc}", file=sys.stderr)
        return None


class Waiting(ControllerBase):
    """Blocking until jobs finish, or until the widgets have every published event."""

    def wait(self, ids: int | Iterable[int] | None = None, timeout: float | None = None, *,
             cancel_on_interrupt: bool = False, poll: float = 0.25,
             progress: bool | None = None) -> Any:
        """Block until the jobs (default: every job submitted here) finish; a WaitResult.

        Interruptible: "interrupt kernel" / Ctrl-C stops waiting (the jobs keep running) and
        the message says how to cancel them; with ``cancel_on_interrupt=True`` the pending
        jobs are cancelled first. ``timeout`` raises :class:`WaitTimeoutError`. While it
        blocks a progress bar shows (a widget in a notebook, stderr on a terminal) ending
        with the final counts; ``progress=False`` turns it off.
        """
        self._check()
        wanted = list(self._submitted) if ids is None else (
            [int(ids)] if isinstance(ids, int) else [int(i) for i in ids])
        with self.session.command("Wait", {"job_ids": wanted[:1000], "count": len(wanted)}) as r:
            bar = None
            if wanted and progress is not False:
                from .progress import progress_for

                bar = progress_for(f"waiting for {len(wanted)} job(s)", progress)
            result = wait_for(self, wanted, timeout, cancel_on_interrupt, poll, progress=bar)
            r.update(count=len(result.statuses), failed_job_ids=result.failed,
                     aborted_job_ids=sorted(j for j, s in result.statuses.items()
                                            if s == JobStatus.ABORTED))
        return result

    def event_gaps(self) -> int:
        """How often the sentinel's event stream skipped events so far (see
        ``EventPump.gaps``): the queue widget re-reads the state DB only when this grew."""
        return self.events.gaps

    def catch_up(self, timeout: float = 1.0) -> bool:
        """Wait until every event the sentinel has published so far has reached the widgets;
        False when that cannot be told (the sentinel does not answer) or took too long."""
        seq = self._published_seq(timeout)
        if seq is None:  # gone or busy: the caller re-reads the state DB instead
            return False
        return seq <= self._event_floor or self.events.wait_seq(seq, timeout)

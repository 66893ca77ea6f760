"""The live job-queue widget: one table for every job, with cancel and retry buttons.

>>> w = ctl.queue()                                                 # doctest: +SKIP

The widget is a thin model over a :class:`QueueSource` (the controller): a state-DB snapshot
at start, then the sentinel's events. Events arrive on the controller's event thread, which
only appends them to a deque; the widget applies them and syncs the page on its own thread
(the kernel's main thread, see :mod:`._scheduling`) at most ``1 / interval`` times a second —
less while other widgets update too (the kernel's widgets share one budget, :mod:`._pace`) —
inside ``hold_sync()`` so one flush is one comm message. Only the visible page (``limit`` rows)
and the counts cross the wire, and only when they changed.

Front-end → kernel messages (``model.send`` in ``static/queue.js``)::

    {"type": "view", "status": "FAILED", "sort": "duration", "desc": true, "offset": 0, "limit": 25}
    {"type": "cancel", "job_id": 42}
    {"type": "cancel_all_queued"}
    {"type": "retry", "job_id": 42}          # a FAILED or ABORTED row: a new attempt
    {"type": "retry_failed"}                 # every FAILED or ABORTED job
    {"type": "expand", "job_id": 42}         # the row's error, traceback, attempts, log tail
    {"type": "collapse"}
    {"type": "refresh"}

A cancel click marks the row ``aborting…`` at once; the row becomes ABORTED only when the
sentinel says so (``JobAborted`` or the state DB): the widget never shows what the sentinel has
not confirmed (F10). A refused cancel clears the mark and shows the sentinel's reason. A retry
re-opens a row only once the sentinel's reply says the job is queued again.

The header shows the counts per status as a small stacked bar and the throughput (jobs
finished per second over the last ten seconds). The widget's display data also carries a
static ``text/html`` snapshot of that header and the first page (and ``text/plain``), so a
saved notebook shows what the queue looked like without a kernel (F10).

The answers to the front-end's messages and the buttons' actions are :mod:`._queue_actions`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anywidget
import traitlets

from ..protocol import JobStatus, vocabulary
from ._pace import CommPace, pace_for
from ._queue_actions import QueueActions
from ._queue_model import DEAD, STATUSES, QueueModel
from ._queue_snapshot import queue_snapshot_html
from ._scheduling import Scheduler, default_scheduler

__all__ = ["QueueEvent", "QueueSource", "QueueWidget"]

log = logging.getLogger("casparian_nb.notebook")

_STATIC = Path(__file__).parent / "static"
#: Snapshot rows merged per turn of the kernel's loop (~3 ms): a cell waits for one turn.
_MERGE_SLICE = 250
#: Events applied per turn of the kernel's loop on a timed flush (~3 ms); a submit of
#: thousands of jobs brings thousands of events at once.
_APPLY_SLICE = 300
#: ``(event name, data, publish time)`` as the sentinel sent it.
QueueEvent = tuple[str, Mapping[str, Any], float | None]


#: What the ``vocabulary`` trait holds.
STATUS_VOCABULARY: dict[str, Any] = {
    "statuses": [str(s) for s in STATUSES], "queued": str(JobStatus.QUEUED),
    "running": str(JobStatus.RUNNING), "dispatched": str(JobStatus.DISPATCHED),
    "finished": vocabulary()["finished_job_statuses"], "dead": DEAD,
    "retryable": [str(JobStatus.FAILED), str(JobStatus.ABORTED)],
}


class QueueSource(Protocol):
    """What the widget needs from a controller.

    A source may also offer ``event_gaps() -> int`` (how often its event stream skipped
    events) and ``catch_up() -> bool`` (wait until every event published so far has been
    delivered): then the widget re-reads the state DB only after a gap. Without them it
    re-reads the unfinished jobs every ``reconcile_every`` seconds and at every ``sync``."""

    def cancel(self, job_id: int) -> Mapping[str, Any]:
        """Ask the sentinel to cancel one job; its ``CancelResult`` reply."""

    def cancel_all_queued(self) -> Mapping[str, Any]:
        """Ask the sentinel to cancel every queued job."""

    def retry(self, ids: Any = None, status: Any = ...) -> Mapping[str, Any]:
        """Ask the sentinel to re-queue FAILED/ABORTED jobs; its ``Retried`` reply."""

    def job(self, job_id: int) -> Any:
        """One job with its traceback and ``attempts`` (``ctl.job``)."""

    def job_snapshot(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Job dicts from the state DB: the newest jobs (``ids`` None) or those ids."""

    def subscribe(self, callback: Callable[[list[QueueEvent]], None]) -> Callable[[], None]:
        """Call ``callback`` with each batch of events (any thread); returns unsubscribe."""


class QueueWidget(QueueActions, anywidget.AnyWidget):
    """One table for the whole queue: counts, filter, sort, pages, cancel buttons."""

    _esm = _STATIC / "queue.js"
    _css = _STATIC / "queue.css"

    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    counts = traitlets.Dict().tag(sync=True)
    total = traitlets.Int(0).tag(sync=True)
    view = traitlets.Dict().tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)
    workers = traitlets.Int(0).tag(sync=True)
    #: Jobs finished per second over the last ten seconds.
    throughput = traitlets.Float(0.0).tag(sync=True)
    #: The expanded row: ``{"job_id", "error", "traceback", "attempts", "log"}`` ({}: none).
    detail = traitlets.Dict().tag(sync=True)
    #: The status names the front-end shows (it spells none itself): the statuses counted,
    #: in table order, and which mean queued, running and dispatched.
    vocabulary = traitlets.Dict(STATUS_VOCABULARY).tag(sync=True)

    def __init__(self, source: QueueSource, *, limit: int = 25, interval: float = 0.1,
                 reconcile_every: float = 3.0, scheduler: Scheduler | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 log_tail: Callable[[int], str] | None = None,
                 pace: CommPace | None = None, **kwargs: Any) -> None:
        self._source = source
        #: ``log_tail(job_id)``: the last lines of a job's captured log, for an expanded row.
        self._log_tail = log_tail
        self._model = QueueModel()
        self._scheduler = scheduler or default_scheduler()
        self._clock = clock
        self._thread = threading.current_thread()  # the one thread that touches traits
        #: Minimum seconds between two flushes (0.1 → at most 10 updates per second).
        self.interval = interval
        #: The update budget this widget shares with the kernel's other live widgets.
        self._pace = pace or pace_for(interval, clock)
        self.reconcile_every = reconcile_every
        #: Flushes that sent something, for tests and benchmarks.
        self.flushes = 0
        self._inbox: deque[QueueEvent] = deque()
        self._wake_pending = False
        self._flush_scheduled = False
        self._last_flush = -1e9
        self._last_reconcile = clock()
        self._reconciling = False  # a background re-read is in flight
        self._closed = False
        # Subscribe before the snapshot: an event published in between is applied after it,
        # and a stale snapshot row can never undo a terminal event (see QueueModel.load).
        self._unsubscribe = source.subscribe(self._on_events)
        gaps = getattr(source, "event_gaps", None)
        #: the source's event gaps at the last look (see _missed_events); the snapshot
        #: below covers any before now
        self._gaps_seen = int(gaps()) if gaps is not None else 0
        self._model.load(source.job_snapshot())
        view = {"status": "", "sort": "id", "desc": True, "offset": 0, "limit": limit}
        total, _, page = self._model.page(limit=limit)
        # The first page travels with comm_open: no update message just to fill the table.
        super().__init__(rows=page, counts=self._model.count_dict(), total=total, view=view,
                         workers=len(self._model.workers), **kwargs)
        self.on_msg(self._on_frontend_msg)
        self._pace.join(self)
        if self._inbox:
            self._schedule_flush()
        if reconcile_every > 0:
            self._scheduler.call_later(reconcile_every, self._reconcile_tick)

    # -- events in (any thread) --------------------------------------------------------------
    def _on_events(self, events: list[QueueEvent]) -> None:
        if self._closed:
            return
        self._inbox.extend(events)
        if not self._wake_pending:
            self._wake_pending = True
            self._scheduler.call_soon_threadsafe(self._schedule_flush)

    # -- widget thread -----------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        # The wake-up flag stays set until a flush takes the inbox: the event thread wakes
        # the kernel's loop once per flush, not once per batch (hundreds a second under
        # load, each a cross-thread wake-up and a turn of the loop fighting a cell for the
        # GIL).
        if self._flush_scheduled or self._closed:
            return
        self._flush_scheduled = True
        # A short first delay lets a burst collapse into one flush even after a quiet spell.
        delay = max(0.02, self._pace.delay(self._last_flush))
        self._scheduler.call_later(delay, self._timed_flush)

    def _timed_flush(self) -> None:
        # Only the one pending timer clears the flag: a direct flush in between (reconcile, a
        # click, a view change) must not start a second timer chain, or the rate doubles.
        self._flush_scheduled = False
        if self._closed:
            return
        wait = self._pace.delay(self._last_flush)
        if wait > 0.001:  # a direct flush ran since this timer was set: keep the spacing
            self._flush_scheduled = True
            self._scheduler.call_later(wait, self._timed_flush)
            return
        if len(self._inbox) > _APPLY_SLICE:
            # a slice now, the rest on the next turns: a cell run meanwhile waits for one
            # slice, not for the whole backlog
            self._apply(_APPLY_SLICE)
            self._flush_scheduled = True
            self._scheduler.call_later(0.0, self._timed_flush)
            return
        self._flush()

    def _apply(self, limit: int | None = None) -> None:
        """Apply pending events (at most ``limit``) to the model, in arrival order."""
        inbox, apply = self._inbox, self._model.apply
        n = len(inbox) if limit is None else min(limit, len(inbox))
        for _ in range(n):
            name, data, ts = inbox.popleft()
            apply(name, data, ts)

    def _flush(self, force: bool = False) -> None:
        if self._closed:
            return
        self._wake_pending = False  # cleared first: an event from now on wakes the loop again
        self._apply()
        if not (force or self._model.dirty):
            return
        v = self.view
        total, offset, page = self._model.page(status=v["status"], sort=v["sort"],
                                               desc=v["desc"], offset=v["offset"],
                                               limit=v["limit"])
        counts = self._model.count_dict()
        view = v if offset == v["offset"] else {**v, "offset": offset}
        rate = round(self._model.throughput(time.time()), 2)
        sent = False
        with self.hold_sync():
            for name, value in (("rows", page), ("counts", counts), ("total", total),
                                ("workers", len(self._model.workers)), ("view", view),
                                ("throughput", rate)):
                if getattr(self, name) != value:
                    setattr(self, name, value)
                    sent = True
        self._refresh_detail()
        self._last_flush = self._clock()
        self.flushes += sent
        if sent:
            self._pace.took()
        if self._inbox:  # arrived while we worked: next flush, still rate-limited
            self._schedule_flush()

    def _missed_events(self) -> bool:
        """Whether events may have been lost since the last look (the source's event stream
        had a gap, or the source cannot tell): only then is the state DB worth re-reading.
        Re-reading every unfinished job every few seconds held the kernel's thread (and its
        GIL, and the garbage collector) for tens of ms with thousands of jobs queued."""
        gaps = getattr(self._source, "event_gaps", None)
        if gaps is None:
            return True
        seen, self._gaps_seen = self._gaps_seen, int(gaps())
        return seen != self._gaps_seen

    def pump(self) -> None:
        """Flush pending events now if one is due (called by ``ctl.wait()`` between polls,
        when the kernel's loop cannot run); a no-op off the widget thread."""
        if threading.current_thread() is not self._thread or self._closed:
            return
        if self._clock() - self._last_reconcile >= self.reconcile_every > 0:
            if self._missed_events():
                self.reconcile()
            else:
                self._last_reconcile = self._clock()
        if self._inbox and self._pace.delay(self._last_flush) <= 0:
            self._flush()

    def flush(self) -> None:
        """Apply every pending event and sync now (ignores the rate limit)."""
        self._flush(force=True)

    def sync(self) -> None:
        """Catch up completely now: pending events, then the unfinished jobs re-read from the
        state DB (``ctl.wait()`` ends with this, so the table agrees with what it returned
        even if the last events are still on their way)."""
        if threading.current_thread() is not self._thread or self._closed:
            return
        catch_up = getattr(self._source, "catch_up", None)
        if catch_up is not None and catch_up() and not self._missed_events():
            # every event published so far is in: the table is what the sentinel says
            self._flush(force=True)
            return
        self._flush()
        self.reconcile()
        self._flush(force=True)

    def reconcile(self) -> None:
        """Re-read the unfinished jobs from the state DB (covers events a slow subscriber
        missed: PUB/SUB drops messages when a subscriber falls behind)."""
        self._last_reconcile = self._clock()
        active = self._model.active_ids()
        if active:
            self._model.load(self._source.job_snapshot(active))
            self._flush()

    def _reconcile_tick(self) -> None:
        if self._closed:
            return
        if self._clock() - self._last_reconcile >= self.reconcile_every * 0.9:
            if self._missed_events():
                self._reconcile_in_background()
            else:
                self._last_reconcile = self._clock()
        self._scheduler.call_later(self.reconcile_every, self._reconcile_tick)

    def _reconcile_in_background(self) -> None:
        """The periodic re-read, off the kernel's thread: with 10,000 unfinished jobs the
        query takes tens of ms, which a user would feel as a stalled cell. The rows come
        back to this thread and are merged in slices; rows an event touched meanwhile keep
        the (newer) event."""
        if self._reconciling:
            return
        self._last_reconcile = self._clock()
        active = self._model.active_ids()
        if not active:
            return
        mark = self._model.seq
        self._reconciling = True

        def read() -> None:
            try:
                rows = self._source.job_snapshot(active)
            except Exception:  # the DB went away (stop, restart): the next tick retries
                log.debug("queue widget: re-reading unfinished jobs failed", exc_info=True)
                rows = []
            self._scheduler.call_soon_threadsafe(lambda: self._merge(rows, mark, 0))

        threading.Thread(target=read, name="cf-queue-reconcile", daemon=True).start()

    def _merge(self, rows: list[dict[str, Any]], mark: int, start: int) -> None:
        if self._closed:
            self._reconciling = False
            return
        end = start + _MERGE_SLICE
        self._model.load(rows[start:end], since=mark)
        if end < len(rows):  # let the kernel run a cell between slices
            self._scheduler.call_soon_threadsafe(lambda: self._merge(rows, mark, end))
            return
        self._reconciling = False
        self._schedule_flush()

    # -- static snapshot -----------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live widget plus a static ``text/html`` snapshot for saved notebooks."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/html"] = self.snapshot_html()
        return bundle

    def snapshot_html(self) -> str:
        """The header (counts as a stacked bar, throughput) and the current page, as static
        HTML: no script, the colours inline."""
        return queue_snapshot_html(self._model, self.rows, self.summary())

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening to events and close the widget's comm."""
        if not self._closed:
            self._closed = True
            self._unsubscribe()
            self._pace.leave(self)
        super().close()

    def summary(self) -> str:
        """``"12 jobs: queued 3, running 2, completed 7"`` (the counts right now)."""
        c = self._model.count_dict()
        parts = ", ".join(f"{k.lower()} {c[k]}" for k in STATUSES if c.get(k))
        return f"{c['total']} jobs" + (f": {parts}" if parts else "")

    def __repr__(self) -> str:
        # Constant on purpose: nbval compares a widget's text/plain, and counts change.
        return "<QueueWidget: live job queue>"

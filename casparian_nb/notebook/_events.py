"""The controller's event thread: the sentinel's events into the session tape and the widgets.

One daemon thread owns the SUB socket (zmq sockets are not thread-safe). For every batch it

1. appends each event to the session tape as a ``domain_event``, linked to the user command
   that caused it (``correlation_id`` of the ``Submit``/``Cancel``, ``parent_id`` of the
   previous event of the same job), so one session tape tells the whole story;
2. records which jobs reached a final state (what ``ctl.wait()`` waits on) and wakes waiters;
3. hands the batch to each subscriber (queue widgets), which only buffer it — widget state is
   changed on the kernel's thread, never here (see :mod:`._scheduling`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..client import ConnectionInfo, EventSubscriber
from ..protocol import Event as EventMessage
from ..protocol import EventName, JobStatus
from ..tape import TapeWriter

__all__ = ["EventPump", "is_final"]

log = logging.getLogger("casparian_nb.notebook")

#: ``(event name, data, publish time)``, what subscribers receive.
Event = tuple[str, Mapping[str, Any], float | None]
Subscriber = Callable[[list[Event]], None]
_FINAL = {EventName.JOB_COMPLETED, EventName.JOB_ABORTED, EventName.JOB_SKIPPED}
#: The status each final event leaves its job in.
_FINAL_STATUS: dict[str, JobStatus] = {EventName.JOB_COMPLETED: JobStatus.COMPLETED,
                 EventName.JOB_ABORTED: JobStatus.ABORTED,
                 EventName.JOB_SKIPPED: JobStatus.SKIPPED, EventName.JOB_FAILED: JobStatus.FAILED}


def is_final(name: str, data: Mapping[str, Any]) -> bool:
    """Whether this event ends its job (a failure that will be retried does not)."""
    return name in _FINAL or (name == EventName.JOB_FAILED and data.get("will_retry") is not True)


class EventPump:
    """Subscribe to a sentinel's events on a background thread until :meth:`stop`."""

    def __init__(self, info: ConnectionInfo, tape: TapeWriter | None) -> None:
        self.info = info
        self.tape = tape
        #: Events relayed so far (all kinds).
        self.received = 0
        #: Set whenever a job reaches a final state; ``wait()`` sleeps on it.
        self.changed = threading.Event()
        self._finished: dict[int, str] = {}
        #: The highest event ``seq`` received (see :meth:`wait_seq`).
        self.last_seq = 0
        #: Gaps seen in the sentinel's event ``seq`` (PUB/SUB drops events a slow subscriber
        #: does not take in time; a restarted sentinel starts again at 1). While it stays the
        #: same, the widgets have every event and need not re-read the state DB.
        self.gaps = 0
        self._next_seq: int | None = None
        self._seq_seen = threading.Condition()
        self._links: dict[str, tuple[str, str]] = {}  # job id -> (correlation id, last event)
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="casparian-events", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start the thread; returns once its socket is connected."""
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close its socket (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_seq(self, seq: int, timeout: float) -> bool:
        """Block until every event up to ``seq`` has been handled (relayed to the tape);
        False after ``timeout`` (an event the PUB socket dropped never comes)."""
        with self._seq_seen:
            return self._seq_seen.wait_for(lambda: self.last_seq >= seq or not self.alive,
                                           timeout) and self.last_seq >= seq

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- subscribers and links (any thread) --------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Deliver every later batch to ``callback`` (on this pump's thread)."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def link(self, job_ids: Iterable[Any], correlation_id: str, parent_id: str) -> None:
        """Tie the tape events of these jobs to the command that created or cancelled them."""
        with self._lock:
            for jid in job_ids:
                self._links[str(jid)] = (correlation_id, parent_id)

    def forget_finished(self, job_ids: Iterable[int]) -> None:
        """Jobs that run again (a retry): their earlier final status no longer holds."""
        with self._lock:
            for jid in job_ids:
                self._finished.pop(int(jid), None)

    def finished(self) -> dict[int, str]:
        """A copy of ``{job id: final status}`` for every final event seen."""
        with self._lock:
            return dict(self._finished)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            sub = EventSubscriber(self.info)
        except Exception:
            log.exception("cannot subscribe to the sentinel's events")
            self._ready.set()
            return
        try:
            # Until the sentinel has our subscription its events are not sent to us: the
            # JobQueued of a submit right after start() would be missing from the tape.
            if not sub.wait_ready(3.0):
                log.warning("the sentinel did not confirm the event subscription within 3 s; "
                            "early events may be missing from the session tape")
        except Exception:
            log.exception("waiting for the event subscription failed")
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    messages = sub.poll(0.2)
                except Exception:  # the context went away at interpreter exit
                    if self._stop.is_set():
                        break
                    log.exception("event subscriber failed; retrying")
                    self._stop.wait(0.5)
                    continue
                events = [(m.payload, m.ts) for m in messages if isinstance(m.payload, EventMessage)]
                if events:
                    for e, _ in events:
                        if self._next_seq is not None and e.seq != self._next_seq:
                            self.gaps += 1
                        self._next_seq = e.seq + 1
                    self._handle([(e.name, e.data, ts) for e, ts in events],
                                 [e.correlation_id for e, _ in events])
                    top = max(e.seq for e, _ in events)
                    with self._seq_seen:
                        self.last_seq = max(self.last_seq, top)
                        self._seq_seen.notify_all()
        finally:
            sub.close()

    def _handle(self, batch: list[Event], correlations: list[str | None] | None = None) -> None:
        any_final = False
        with self._lock:
            for i, (name, data, ts) in enumerate(batch):
                self._relay(name, data, ts, correlations[i] if correlations else None)
                if is_final(name, data) and data.get("job_id") is not None:
                    try:
                        self._finished[int(data["job_id"])] = _final_status(name)
                    except (TypeError, ValueError):
                        continue
                    any_final = True
            subscribers = list(self._subscribers)
        self.received += len(batch)
        if any_final:
            self.changed.set()
        for callback in subscribers:
            try:
                callback(batch)
            except Exception:  # one broken widget must not starve the others or the tape
                log.exception("event subscriber %r failed", callback)

    def _relay(self, name: str, data: Mapping[str, Any], at: float | None = None,
               correlation_id: str | None = None) -> None:
        # ``at``: when the sentinel published it. The relay runs in batches, later; the
        # timeline of a session tape must show when jobs ran, not when they were relayed.
        if self.tape is None or self.tape.closed or not name:
            return
        jid = data.get("job_id")
        # The command that caused it: linked here after its reply, or named by the sentinel
        # (a job's first events can arrive before the submit's reply).
        corr, parent = (self._links.get(str(jid), (correlation_id, None)) if jid is not None
                        else (correlation_id, None))
        try:
            event_id = self.tape.domain(name, dict(data), correlation_id=corr, parent_id=parent,
                                        at=at)
        except Exception:  # a full disk must not stop live updates
            log.exception("cannot append %s to the session tape", name)
            return
        if corr is not None:
            self._links[str(jid)] = (corr, event_id)


def _final_status(name: str) -> JobStatus:
    return _FINAL_STATUS[name]

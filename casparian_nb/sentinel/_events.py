"""The sentinel's events socket (XPUB): subscriptions in, events out.

Every event the state machine publishes goes to the subscribers whose topic matches (encoded
only when someone listens) and onto the sentinel's tape, under the correlation id of the command
that submitted the job. The socket also answers a subscription to ``ready.<token>`` with a
``Subscribed`` message, so a subscriber knows when it is connected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zmq

from ..protocol import Codec, Event, EventName, Subscribed

if TYPE_CHECKING:
    from . import state as st

__all__ = ["EVENT_TOPICS", "READY_PREFIX", "EventPublisher"]

log = logging.getLogger("casparian_nb.sentinel")

#: Every topic the sentinel publishes on (see ``_publish``). A subscription can only ever
#: match one of these if it is a prefix of it; all other topics are ignored.
EVENT_TOPICS = (b"job", b"worker")
#: A subscription to b"ready.<token>" is answered with a ``Subscribed`` message on that
#: topic (see EventSubscriber.wait_ready); never stored.
READY_PREFIX = b"ready."
#: Job ids whose command correlation id the tape writer remembers after they finished.
_CORR_KEPT = 100_000


class EventPublisher:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: the events socket."""

    if TYPE_CHECKING:  # provided by Sentinel
        pub: zmq.Socket[bytes]
        events_codec: Codec
        state: st.SentinelState
        tape: Any
        _event_seq: int
        _job_corr: dict[int, str]
        _subscriptions: set[bytes]
        _ignored_topic_logged: bool

        def _msg_id(self) -> str: ...

    def _drain_subscriptions(self) -> None:
        """XPUB hands us (un)subscriptions: b"\\x01topic" / b"\\x00topic" (first and last
        subscriber of each topic only).

        Only topics that can match an event (prefixes of EVENT_TOPICS, b"" included) are
        kept: a peer subscribing to millions of other topics grows neither this set nor the
        cost of ``_publish``.
        """
        for _ in range(1000):  # bounded, like _drain: a stream of them cannot starve the loop
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            op, topic = frame[:1], frame[1:]
            if op not in (b"\x00", b"\x01"):
                continue
            if topic.startswith(READY_PREFIX) and len(topic) <= 64:
                if op == b"\x01":
                    token = topic[len(READY_PREFIX):].decode("ascii", "replace")
                    self.pub.send_multipart([topic, *self.events_codec.encode(
                        Subscribed(token=token), msg_id=self._msg_id())])
                continue
            if not any(t.startswith(topic) for t in EVENT_TOPICS):
                if op == b"\x01" and not self._ignored_topic_logged:
                    self._ignored_topic_logged = True  # once: a typo'd topic, or junk
                    log.info("events socket: ignoring subscriptions to topics no event is "
                             "published on (first: %r; topics are %s)", topic[:40],
                             b", ".join(EVENT_TOPICS).decode())
                continue
            if op == b"\x01":
                self._subscriptions.add(topic)
            else:
                self._subscriptions.discard(topic)

    def _publish(self, name: EventName, data: dict[str, Any]) -> None:
        self._event_seq += 1
        topic = b"worker" if name.startswith("Worker") else b"job"
        corr = self._correlation(data)
        if any(topic.startswith(t) for t in self._subscriptions):
            event = Event(name=EventName(name), seq=self._event_seq, data=data,
                          correlation_id=corr)
            frames = self.events_codec.encode(event, msg_id=self._msg_id())
            self.pub.send_multipart([topic, *frames])
        if self.tape is not None:
            self.tape.emit("domain_event", name, data, correlation_id=corr)

    def _correlation(self, data: dict[str, Any]) -> str | None:
        """The correlation id of the command that caused a job's events: its submission id,
        which a controller or a recorded CLI command sets to its own correlation id. Kept
        here from the job's first event, since a finished job leaves the state machine
        before its final event is published."""
        raw = data.get("job_id")
        if raw is None:
            return None
        try:
            job_id = int(raw)
        except (TypeError, ValueError):
            return None
        job = self.state.jobs.get(job_id)
        if job is not None and job.spec.submission_id:
            self._job_corr[job_id] = job.spec.submission_id
            if len(self._job_corr) > _CORR_KEPT:  # oldest first: finished long ago
                del self._job_corr[next(iter(self._job_corr))]
            return job.spec.submission_id
        return self._job_corr.get(job_id)

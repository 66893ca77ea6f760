"""Resource limits against real processes: what a misbehaving plugin or peer can make the
sentinel and the workers hold.

* A plugin that floods stdout/stderr fills at most the head and tail of its job's log
  (:mod:`casparian_nb.joblogs`), which records the total; its host's log stays within
  ``host_log_max_mb``; the job's outcome is what it would be without the flood.
* A peer subscribing to very many event topics: the sentinel keeps only the topics that can
  match an event, keeps answering ``Ping``, and still publishes to a normal subscriber.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import zmq

from casparian_nb.client import ControlClient, EventSubscriber
from casparian_nb.config import Settings
from casparian_nb.joblogs import HEAD_BYTES, TAIL_BYTES, read_job_log
from casparian_nb.launcher import LocalCluster
from casparian_nb.protocol import MAGIC, Event
from tests.conftest import wait_until
from tests.hardening.harness import (
    FAST,
    FINAL,
    HOSTILE_PLUGIN,
    ProcessTracker,
    audit,
    host_log_sizes,
    jobs_by_id,
    note,
    record,
)
from tests.hardening.wire import Wire

MiB = 1 << 20


def _write(path: Path, first_line: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((first_line + "\n" if first_line else "") + f"{uuid.uuid4().hex}\n")
    return str(path)


def test_a_flooding_plugin_stays_within_host_log_max_mb(
        hcluster: Callable[..., LocalCluster], settings: Settings, tracker: ProcessTracker,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=1, slots=1, host_log_max_mb=1, **FAST)
    assert cluster.info is not None
    sink = tmp_path / "out"
    # 8 MiB to stdout and 8 MiB to stderr, then the normal 10 rows; then a normal job on the
    # same host (one slot): the host still serves after its log rotated.
    files = [_write(tmp_path / "in" / "flood.txt", "mode=flood mb=8"),
             _write(tmp_path / "in" / "normal.txt")]
    largest = 0

    def finished(ids: list[int]) -> bool:
        nonlocal largest  # sampled all along: the cap holds during the flood, not just after
        largest = max([largest, *host_log_sizes(settings.logs_dir).values()])
        return all(j["status"] in FINAL for j in jobs_by_id(settings, ids).values())

    with ControlClient(cluster.info, timeout=10) as ctl:
        ids = ctl.submit(HOSTILE_PLUGIN, files, sink=f"parquet://{sink}")["job_ids"]
        wait_until(lambda: finished(ids), 90, interval=0.02, message="both jobs to finish")
        a = audit(settings, ids, sink=sink, tracker=tracker, client=ctl,
                  expect={"flood": "COMPLETED", "normal": "COMPLETED"})
    record("plugin floods 16 MiB into a 1 MiB host log", a)
    a.assert_clean("plugin floods its host log")
    rows = jobs_by_id(settings, ids)
    for job_id in ids:  # the outcome a plugin without the flood has
        assert rows[job_id]["rows"] == 10 and rows[job_id]["retry_count"] == 0, rows[job_id]

    largest = max([largest, *host_log_sizes(settings.logs_dir).values()])
    note("plugin host log after a 16 MiB flood with host_log_max_mb = 1, MiB (max)",
         round(largest / MiB, 2))
    assert largest <= MiB, f"a host log took {largest} bytes (cap {MiB})"
    # The flood went to the job's own log (joblogs): its head and tail are kept, the total is
    # recorded, and the end of the flood is there (what a user debugging the plugin reads).
    flood_id = next(j for j in ids if "flood" in rows[j]["input_file"])
    log = read_job_log(settings.home, flood_id)
    size = log.path.stat().st_size if log.path else 0
    note("job log after a 16 MiB flood, KiB (head and tail kept)", round(size / 1024, 1))
    assert log.truncated and log.total_bytes >= 16 * MiB, (log.total_bytes, log.truncated)
    assert size <= HEAD_BYTES + TAIL_BYTES + 200
    assert "bytes left out here" in log.text and log.tail(1).startswith("flood flood")


def test_a_peer_subscribing_to_very_many_topics_does_not_stop_the_events(
        hcluster: Callable[..., LocalCluster], settings: Settings, fixture_plugin: Path,
        tmp_path: Path) -> None:
    cluster = hcluster(workers=1, **FAST)
    info = cluster.info
    assert info is not None
    sentinel = psutil.Process(info.pid)
    rss_before = sentinel.memory_info().rss
    ctx: zmq.Context[Any] = zmq.Context()
    hostile = ctx.socket(zmq.SUB)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.setsockopt(zmq.SNDHWM, 0)  # else libzmq drops subscriptions beyond 1000 queued
    hostile.connect(info.events)
    oversized = ctx.socket(zmq.XSUB)  # one subscription over the sentinel's 1 KiB limit
    oversized.setsockopt(zmq.LINGER, 0)
    oversized.connect(info.events)
    n = 100_000
    try:
        for i in range(n):
            hostile.setsockopt(zmq.SUBSCRIBE, b"t%07d" % i)
        hostile.setsockopt(zmq.SUBSCRIBE, b"jobs")  # a near miss: no event has this topic
        # Last, one that matches: once this peer gets a job event, the sentinel has been
        # through every subscription before it (they arrive in order).
        hostile.setsockopt(zmq.SUBSCRIBE, b"job")
        oversized.send(b"\x01" + b"x" * 4096)
        with ControlClient(info, timeout=5) as ctl, \
                EventSubscriber(info, topics=(b"job",)) as events:  # fmt: skip
            t0 = time.monotonic()
            assert ctl.ping()["pid"] == info.pid  # serving while the subscriptions pour in
            first_ping = time.monotonic() - t0
            n_jobs = 0

            def hostile_got_a_job_event() -> bool:
                nonlocal n_jobs
                n_jobs += 1
                ctl.submit(fixture_plugin, [_write(tmp_path / "in" / f"a{n_jobs}.txt")])
                if not hostile.poll(500):
                    return False
                while hostile.poll(0):
                    hostile.recv_multipart()
                return True

            wait_until(hostile_got_a_job_event, 60, interval=0.0,
                       message="the storm of subscriptions to be processed")
            events.poll(0.0)  # drop what came before; now one more job, watched end to end
            src = _write(tmp_path / "in" / "watched.txt")
            [job_id] = ctl.submit(fixture_plugin, [src])["job_ids"]
            names: list[str] = []

            def completed() -> bool:
                names.extend(m.payload.name for m in events.poll(0.2)
                             if isinstance(m.payload, Event)
                             and m.payload.data.get("job_id") == job_id)
                return "JobCompleted" in names

            wait_until(completed, 30, interval=0.0, message="the normal subscriber's events")
            assert names[0] == "JobQueued", names
            assert events.dropped == 0
            t0 = time.monotonic()
            assert ctl.ping()["pid"] == info.pid
            last_ping = time.monotonic() - t0
    finally:
        hostile.close(0)
        oversized.close(0)
        ctx.term()
    assert cluster.alive()
    text = (settings.logs_dir / "sentinel.log").read_text(errors="replace")
    assert text.count("ignoring subscriptions to topics no event is published on") == 1
    grown = sentinel.memory_info().rss - rss_before
    note(f"sentinel RSS growth after {n:,} junk subscriptions, MiB (ZeroMQ's own table)",
         round(grown / MiB, 1))
    note("Ping during a storm of subscriptions, s (max)", round(max(first_ping, last_ping), 3))
    record("events: a peer subscribes to 100,000 topics", None, checks=5, serving=True)


def test_the_sentinel_log_is_capped_by_sentinel_log_max_mb(
        hcluster: Callable[..., LocalCluster], settings: Settings) -> None:
    """sentinel.log rotates into one older part (sentinel.log.1), each at most half the cap:
    refusals are rate-limited, but a sentinel that runs for months stays bounded too."""
    cap = 2048  # bytes; 1 KiB per part
    cluster = hcluster(workers=0, sentinel_log_max_mb=cap / MiB)
    assert cluster.info is not None
    log = settings.logs_dir / "sentinel.log"
    wire = Wire(cluster.info)
    try:
        for _ in range(200):
            wire.ask([MAGIC, b"", b"{}"])  # unsigned: a (rate-limited) refusal line each
    finally:
        wire.close()
    rotated = log.with_name("sentinel.log.1")
    wait_until(rotated.exists, 10, message=f"sentinel.log rotated ({log.stat().st_size} B: "
               f"{log.read_text()[-300:]!r})")
    for part in (log, rotated):
        assert part.stat().st_size <= cap // 2 + 1000, part  # + at most one line past it
    with ControlClient(cluster.info, timeout=5.0) as ctl:
        assert ctl.ping()

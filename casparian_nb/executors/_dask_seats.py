"""The dask bridge's view of one Dask worker (a *seat*), and the shared-storage probe."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..protocol import Dispatch
from . import _dask_plugin as remote

__all__ = ["CHUNK_SIZE", "CHUNK_WORK", "PREFETCH_FACTOR", "Chunk", "Flight", "Seat", "chunk_key",
           "probe_storage", "seat_id", "split"]

#: Attempts a seat holds beyond its threads (the Dask worker queues them), per thread: enough
#: that a thread finds its next attempt already there while the receipt of the last one and
#: the dispatch that replaces it go round the scheduler, the bridge and the sentinel (tens of
#: ms on a busy machine; with 3, most tasks in flight were waiting for that, not running).
PREFETCH_FACTOR = 10
#: At most this many attempts go to Dask as one task (a *chunk*, run one after another on
#: one worker thread): the scheduler and the worker spend ~1 ms each per task, however
#: short the job (see scale-out.md, "Costs", for how it was chosen).
CHUNK_SIZE = 8
#: ... and at most about this much work (seconds), by what the plugin's attempts took so far
#: (a plugin not seen yet: one attempt per task). A chunk runs on one thread: long jobs in
#: one would wait there while another thread of the worker is free.
CHUNK_WORK = 0.2


@dataclass(eq=False)
class Chunk:
    """One Dask task: attempts run one after another on a worker thread of ``address``."""

    future: Any
    address: str
    #: Its attempts whose receipt has not reached the sentinel yet.
    left: int


@dataclass(eq=False)
class Flight:
    """One attempt for Dask: its dispatch, and once submitted its chunk (the encoded
    ``HostJob`` until then)."""

    dispatch: Dispatch
    payload: bytes = b""
    #: The task it runs in, and its place there (its receipt is that task's result[index]).
    chunk: Chunk | None = None
    index: int = 0
    #: The Dask worker it is pinned to: its seat's, or for a job whose resources that worker
    #: lacks, one that has them; None while no worker has them (held by the bridge).
    address: str | None = None
    #: When the bridge first saw the task done without its receipt (monotonic; 0: not yet),
    #: and whether the fetcher has it.
    done_at: float = 0.0
    fetching: bool = False

    @property
    def future(self) -> Any:
        """Its chunk's Dask future; None while not submitted."""
        return None if self.chunk is None else self.chunk.future


@dataclass(eq=False)
class Seat:
    """One Dask worker, presented to the sentinel as one worker."""

    address: str
    worker_id: str
    nthreads: int
    host: str
    sock: zmq.Socket[bytes]
    running: dict[str, Flight] = field(default_factory=dict)
    #: What the Dask worker offers (``dask worker --resources "GPU=1"``).
    resources: dict[str, float] = field(default_factory=dict)

    def offers(self, needs: dict[str, float] | None) -> bool:
        """Whether this worker has (in total) every resource ``needs`` asks for."""
        return all(self.resources.get(name, 0.0) >= amount
                   for name, amount in (needs or {}).items())

    @property
    def capacity(self) -> int:
        # The sentinel takes a prefetch of at most 64 per worker.
        return self.nthreads + min(64, self.nthreads * PREFETCH_FACTOR)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` consecutive runs as even as can be (the first ones longer)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def chunk_key(job_id: str, attempt: int, count: int) -> str:
    """The deterministic Dask key of a task: ``casparian-<job_id>-<attempt>`` for one
    attempt, ``casparian-<first job_id>-<its attempt>-x<count>`` for a chunk of ``count``
    (an attempt is submitted once, so its first attempt makes the key unique)."""
    base = f"casparian-{job_id}-{attempt}"
    return base if count == 1 else f"{base}-x{count}"


def seat_id(address: str) -> str:
    """``tcp://10.0.0.5:40123`` -> ``dask-10.0.0.5-40123`` (the worker id the sentinel sees)."""
    bare = address.split("://", 1)[-1]
    return "dask-" + bare.replace(":", "-").replace("/", "-").strip("[]")


def probe_storage(client: Any, staging: Path, addresses: list[str]) -> dict[str, str | None]:
    """Each worker at ``addresses`` writes a probe file under ``staging`` (``Client.run``)
    and we read it back: address -> None when it is shared, else what went wrong."""
    if not addresses:
        return {}
    token = uuid.uuid4().hex[:12]
    try:
        names = client.run(remote.probe_write, str(staging), token, workers=addresses,
                           on_error="return")
    except Exception as exc:  # the cluster is gone: every probe failed
        names = {a: exc for a in addresses}
    out: dict[str, str | None] = {}
    for address in addresses:
        name = names.get(address)
        if isinstance(name, BaseException) or not isinstance(name, str):
            out[address] = f"it could not write there ({name})"
            continue
        path = staging / name
        try:
            seen = path.read_text()
            path.unlink()
        except OSError:
            seen = ""
        out[address] = None if seen.startswith(token) else \
            "the probe file it wrote is not visible here"
    return out

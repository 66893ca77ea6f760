"""How the dask bridge cuts the attempts dispatched to it into Dask tasks (a mixin of
:class:`~casparian_nb.executors._dask_bridge.DaskBridge`).

The Dask scheduler and a Dask worker each spend about 1 ms of CPU per task, however short
the job, so a task runs a *chunk* of attempts one after another on one worker thread
(:func:`~casparian_nb.executors._dask_plugin.run_chunk`). A chunk holds the attempts of one
seat, for one worker and one resource set, at most ``CHUNK_SIZE`` of them and about
``CHUNK_WORK`` seconds of work by what the plugin's attempts took so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _dask_plugin as remote
from ._dask_seats import CHUNK_SIZE, CHUNK_WORK, Chunk, Flight, Seat, chunk_key, split

__all__ = ["ChunkSubmitter"]


class ChunkSubmitter:
    """Dispatched attempts to Dask tasks."""

    if TYPE_CHECKING:  # provided by DaskBridge
        client: Any
        name: str
        seats: dict[str, Seat]
        _unsubmitted: list[tuple[Seat, str, Flight]]
        _chunks_at: dict[str, set[Chunk]]
        _filling: bool
        _job_time: dict[str, float]

        def _place(self, seat: Seat, needs: dict[str, float] | None) -> str | None: ...
        def _hold(self, item: tuple[Seat, str, Flight]) -> None: ...

    def _submit_pending(self) -> None:
        """Submit, in chunks, the attempts dispatched since the last call: one
        ``client.map`` per seat, worker and resource set (one graph update for the
        scheduler, however many tasks), each task with its deterministic key, pinned to one
        worker (no stealing: the bridge knows where each attempt runs, for its abort and for
        the loss of its worker).

        Where the worker has threads without a chunk, everything goes at once, in at least
        as many chunks as there are such threads (no thread idles while a chunk has two
        attempts waiting). Where every thread has a chunk, only full chunks go; the rest
        waits here for more dispatches until a thread is free or the worker has no more than
        two attempts per thread left: it would only wait in the worker's queue.
        """
        pending, self._unsubmitted = self._unsubmitted, []
        groups: dict[tuple[str, str, tuple[tuple[str, float], ...]],
                     list[tuple[Seat, str, Flight]]] = {}
        for item in pending:
            seat, job_id, flight = item
            if seat.address not in self.seats or seat.running.get(job_id) is not flight:
                continue
            needs = flight.dispatch.job.resources
            flight.address = self._place(seat, needs)
            if flight.address is None:
                self._hold(item)
                continue
            key = (seat.address, flight.address, tuple(sorted((needs or {}).items())))
            groups.setdefault(key, []).append(item)
        for (_seat, address, wanted), items in groups.items():
            busy = self._chunks_at.setdefault(address, set())
            threads = self.seats[address].nthreads if address in self.seats else 1
            free, left = threads - len(busy), sum(c.left for c in busy)
            size = self._chunk_size(items)
            if free > 0 or left <= 2 * threads:
                runs = split(items, max(min(free, len(items)), -(-len(items) // size)))
            else:
                full = len(items) // size * size
                runs = [items[i:i + size] for i in range(0, full, size)]
                self._unsubmitted += items[full:]
            if runs:
                self._submit_chunks(address, dict(wanted) or None, runs)
        self._filling = bool(self._unsubmitted)

    def _chunk_size(self, items: list[tuple[Seat, str, Flight]]) -> int:
        """How many of ``items`` make a full chunk: ``CHUNK_SIZE``, fewer when their plugins'
        jobs take long (``CHUNK_WORK``), 1 for a plugin whose jobs were not timed yet."""
        longest = max(self._job_time.get(f.dispatch.job.plugin_path, CHUNK_WORK)
                      for _, _, f in items)
        return max(1, min(CHUNK_SIZE, int(CHUNK_WORK / max(longest, 1e-4))))

    def _submit_chunks(self, address: str, resources: dict[str, float] | None,
                       runs: list[list[tuple[Seat, str, Flight]]]) -> None:
        """One task per run of attempts, all in one ``client.map``."""
        keys = [chunk_key(run[0][1], int(run[0][2].dispatch.attempt), len(run)) for run in runs]
        futures = self.client.map(
            remote.run_chunk, [self.name] * len(runs), keys,
            [[f.payload for _, _, f in run] for run in runs],
            [[f.dispatch.timeout_s or None for _, _, f in run] for run in runs], key=keys,
            workers=[address], allow_other_workers=False, pure=False, retries=0,
            resources=resources)
        busy = self._chunks_at.setdefault(address, set())
        for run, future in zip(runs, futures, strict=True):
            chunk = Chunk(future, address, len(run))
            busy.add(chunk)
            for index, (_seat, _job_id, flight) in enumerate(run):
                flight.chunk, flight.index, flight.payload = chunk, index, b""

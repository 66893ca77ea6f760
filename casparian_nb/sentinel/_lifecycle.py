"""The sentinel's start and stop: what a crash left behind is recovered before the loop takes
a message, and a clean stop records the last promotions, tells the workers and closes
everything.

Staging that no promotion will need is removed here, on the loop thread, and each removal is
recorded (``StagingRemoved``): a lost worker's attempts when its jobs are re-queued
(``RemoveStaging``), and everything but the PROMOTING jobs' when the sentinel starts and when
it stops (``sweep_staging``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from .. import sinks
from .._proc import pid_alive
from ..protocol import EventName, JobStatus, Shutdown, StagingRemovalCause
from ..sinks.staging import ATTEMPT_PREFIX, attempt_root
from . import state as st
from ._committer import remove_attempt, sweep_staging

if TYPE_CHECKING:
    import queue
    import threading

    from ..config import Settings
    from ..protocol import WireMessage
    from ._committer import CommitterItem, FinishedItem
    from ._persist import Persister, SentinelStore

__all__ = ["Lifecycle"]

log = logging.getLogger("casparian_nb.sentinel")

#: At a clean stop, how long to wait for local workers to exit (after the Shutdown) before
#: sweeping the staging, so that no plugin host writes into it after the sweep.
STOP_WORKERS_WAIT = 5.0


class Lifecycle:
    """Mixin of :class:`~casparian_nb.sentinel.server.Sentinel`: recovery at start, the
    staging sweeps, the clean stop."""

    if TYPE_CHECKING:  # provided by Sentinel
        settings: Settings
        store: SentinelStore
        state: st.SentinelState
        persist: Persister
        tape: Any
        ctx: zmq.Context[Any]
        _promotions: queue.Queue[CommitterItem]
        _finished: queue.Queue[FinishedItem]
        _committer_thread: threading.Thread | None
        _worker_procs: dict[str, tuple[int, bool]]

        def _feed(self, event: Any) -> None: ...
        def _flush(self) -> None: ...
        def _take_finished(self) -> None: ...
        def _send_worker(self, ident: bytes, message: WireMessage) -> None: ...
        def _publish(self, name: EventName, data: dict[str, Any]) -> None: ...

    def recover(self) -> None:
        """Finish interrupted promotions and put jobs left RUNNING by a crash back in play."""
        staging = self.settings.staging_dir
        sinks.recover(staging)
        if staging.is_dir():  # workers stage each attempt under staging/attempt-N/
            for sub in sorted(staging.glob("attempt-*")):
                if sub.is_dir() and not sub.is_symlink():  # never act outside the home
                    sinks.recover(sub)
        now = time.time()
        requeued, adopted = self.persist.reconcile(now)
        # Staged outputs no promotion needs (a receipt lost with the old sentinel; that job is
        # QUEUED again and re-runs under a new attempt dir) would stay on disk for good.
        keep = [str(rec.result["staged"].get("staging_dir") or "") for rec in adopted
                if isinstance(rec.result.get("staged"), dict)]
        swept = sweep_staging(staging, [k for k in keep if k])
        self._staging_removed(swept, StagingRemovalCause.START)
        recs = self.persist.load_queued(now)
        self._feed(st.JobsQueued([*adopted, *recs], now))
        for rec in adopted:
            self._promotions.put(st.Promote(rec.id, rec.result.pop("staged"), rec.spec.mode,
                                            rec.spec.submission_id))
        if requeued or adopted or swept:
            log.info("restart: re-queued %d job(s) left RUNNING, re-promoting %d, removed %d "
                     "stale staging dir(s)", len(requeued), len(adopted), len(swept))

    def _remove_staging(self, a: st.RemoveStaging) -> None:
        """Drop what a lost attempt staged; record it when there was something."""
        removed = remove_attempt(self.settings.staging_dir, a.attempt, a.job_key)
        if removed is not None:
            self._publish(EventName.STAGING_REMOVED, {
                "job_id": a.job_id, "attempt": a.attempt, "path": removed,
                "cause": StagingRemovalCause.WORKER_LOST})

    def _staging_removed(self, paths: list[str], cause: StagingRemovalCause) -> None:
        """Record the job staging dirs a sweep removed (``<staging>/attempt-N/<job dir>``)."""
        for path in paths:
            attempt = Path(path).parent.name.removeprefix(ATTEMPT_PREFIX)
            self._publish(EventName.STAGING_REMOVED, {
                "attempt": int(attempt) if attempt.isdigit() else None, "path": path,
                "cause": cause})

    def _sweep_on_stop(self) -> None:
        """A clean stop leaves no staging behind but what a PROMOTING job still needs (a
        promotion parked behind a locked DuckDB file: the next start finishes it)."""
        deadline = time.monotonic() + STOP_WORKERS_WAIT
        # Those still registered were just sent the Shutdown; one that said goodbye has
        # stopped its hosts already.
        local = [pid for wid, (pid, is_local) in self._worker_procs.items()
                 if is_local and wid in self.state.workers]
        while any(pid_alive(pid) for pid in local) and time.monotonic() < deadline:
            time.sleep(0.02)  # told to stop: their hosts write nothing more once they are gone
        staging = self.settings.staging_dir
        keep = [str(attempt_root(staging, job.attempt)
                    / sinks.job_dirname(job.spec.job_id))
                for job in self.state.jobs.values() if job.status == JobStatus.PROMOTING]
        removed = sweep_staging(staging, keep)
        self._staging_removed(removed, StagingRemovalCause.STOP)
        if removed:
            log.info("stop: removed %d staging dir(s) no promotion needs", len(removed))

    def _shutdown(self) -> None:
        # Dispatch nothing more; let the committer finish what it holds and record it, so a
        # clean stop leaves no promotion half-recorded (a crash is handled by recover()).
        self.state.paused = True
        self._promotions.put(None)
        committer = self._committer_thread
        if committer is not None and committer.is_alive():
            committer.join(timeout=30.0)
            if committer.is_alive():
                log.warning("the committer is still promoting; the next start finishes it")
        try:
            self._take_finished()
            self._flush()
        except Exception:
            log.exception("recording the last promotions failed")
        try:
            for w in list(self.state.workers.values()):
                self._send_worker(w.identity, Shutdown())
        except zmq.ZMQError:
            pass
        try:
            self._sweep_on_stop()
        except Exception:
            log.exception("sweeping the staging at stop failed")
        try:
            if self.tape is not None:
                self.tape.close("sentinel_stopped")
        except Exception:
            log.exception("closing the tape failed")
        conn = self.settings.connection_file
        try:
            if conn.exists() and f'"pid": {os.getpid()}' in conn.read_text():
                conn.unlink()
        except OSError:
            pass
        self.persist.close()
        self.ctx.destroy(linger=0)
        self.store.close()

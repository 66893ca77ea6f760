"""The command side of the controller: ``submit``, ``cancel``, ``retry``,
``cancel_all_queued`` and ``compact`` — the mutations, each a request to the sentinel's
control API recorded as a ``ui_command`` on the session tape (with its response), whose jobs
the event pump then links to that command.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from .._cellplugin import is_source_plugin, write_plugin_source
from ..plan import stale_warning
from ..protocol import JobStatus, QuarantinePolicy
from ._compaction import Compaction
from ._wait import Waiting

__all__ = ["Commands"]


class Commands(Waiting):
    """The control API's mutations (a :class:`Waiting` part: ``submit(wait=True)`` waits)."""

    def submit(self, plugin: str | os.PathLike[str] | Callable[..., Any] | types.ModuleType,
               inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
               sink: str | Mapping[str, str] | None = None, mode: str = "append",
               priority: int = 0, timeout: float | None = None, force: bool = False,
               wait: bool = False, progress: bool | None = None,
               quarantine: Mapping[str, Any] | QuarantinePolicy | None = None,
               resources: dict[str, float] | None = None) -> list[int]:
        """Queue one job per input file; returns the new job ids.

        ``plugin``: a plugin file (path, or name under ``<home>/plugins``), or a module or
        ``parse``-like function defined in the notebook, written to
        ``<home>/plugins/cell/<name>-<hash>.py`` first (:mod:`casparian_nb._cellplugin`).

        ``inputs``: files, directories (every non-hidden file below) or globs. Files whose
        outputs this plugin version already materialized are skipped (``force=True`` runs
        them anyway); ``last_submission`` says which. ``wait=True`` then blocks until they
        finish (:meth:`wait`, with its progress bar unless ``progress=False``).

        ``sink``: one URI, or a mapping of output names to URIs with ``"*"`` for the rest
        (``{"orders": "duckdb://db.duckdb", "*": "parquet://out"}``); each job's outputs
        promote into all their sinks or none.

        ``quarantine={"max_pct": 10, "max_rows": 1000}`` fails (and promotes nothing of) a
        job whose output sends more rows to quarantine; it overrides the plugin's
        ``quarantine``, and a restarted sentinel keeps it.

        ``resources``: what each job needs on a Dask worker, e.g. ``{"GPU": 1}`` (on top of
        the plugin's own ``resources``); the dask executor runs it only on a worker that
        offers them (``dask worker --resources "GPU=1"``), the local executor ignores them.
        """
        from .. import plugins
        from .._inputs import expand_inputs
        from ..contracts import quarantine_policy
        from ..sinks import SinkRouting

        self._check()
        policy = quarantine_policy(quarantine)
        if isinstance(sink, Mapping):  # resolved here, where its relative paths were typed
            sink = str(SinkRouting.parse(sink))
        if is_source_plugin(plugin):  # a notebook function: shipped as a plugin file
            plugin = write_plugin_source(plugin, self.settings.plugins_dir / "cell")
        if not isinstance(plugin, str | os.PathLike):
            raise TypeError(f"plugin must be a path, a module or a function, not "
                            f"{type(plugin).__name__}")
        specs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        payload = {"plugin": os.fspath(plugin), "inputs": [os.fspath(i) for i in specs],
                   "sink": sink, "mode": mode, "priority": priority, "force": force,
                   **({"quarantine": msgspec.structs.asdict(policy)} if policy else {}),
                   **({"resources": resources} if resources else {})}
        with self.session.command("Submit", payload) as r:
            path = plugins.resolve_plugin_path(plugin, self.settings.plugins_dir)
            files = [str(p) for p in expand_inputs(specs)]
            # The submission id is this command's correlation id: the sentinel's tape then
            # links every event of these jobs to the Submit on this session tape.
            reply = self.client.submit(path, files, sink=sink, mode=mode, priority=priority,
                                       timeout=timeout, force=force,
                                       submission_id=r.correlation_id, quarantine=policy,
                                       resources=resources)
            ids = [int(j) for j in reply["job_ids"]]
            self.events.link(ids, r.correlation_id, r.event_id)
            r.update(job_ids=ids, count=len(ids))
        self._submitted.extend(ids)
        self.last_submission = reply
        stale = self.last_stale
        fresh = len(reply.get("skipped") or []) - len(stale)
        if fresh:
            print(f"casparian: {fresh} file(s) skipped, already materialized by "
                  "this plugin version (submit(..., force=True) re-runs them)")
        if stale:
            spec = plugins.inspect_plugin(path)
            print("casparian: warning: " + stale_warning(len(stale), spec.name, spec.version,
                                                        flag="force=True"))
        if wait and ids:
            self.wait(ids, progress=progress)
        return ids

    @property
    def last_stale(self) -> list[int]:
        """Ids of the SKIPPED jobs of the last :meth:`submit` whose outputs were made by the
        same plugin version with a different source (F15); ``force=True`` re-runs them."""
        reply = self.last_submission or {}
        return [int(s["job_id"]) for s in reply.get("skipped") or [] if s.get("stale")]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel one job: a queued job is aborted at once; a running one shows
        ``cancel_requested`` until its worker confirms ABORTED. The sentinel's answer."""
        self._check()
        with self.session.command("Cancel", {"job_id": int(job_id)}) as r:
            self.events.link([job_id], r.correlation_id, r.event_id)
            reply = self.client.cancel_job(int(job_id))
            r.update(job_ids=[int(job_id)], state=reply.get("state"))
        return reply

    def retry(self, ids: int | Iterable[int] | None = None,
              status: str | Sequence[str] = (JobStatus.FAILED, JobStatus.ABORTED),
              ) -> dict[str, Any]:
        """Re-queue FAILED/ABORTED jobs as new attempts: the jobs ``ids``, else every job in
        ``status``. Each keeps its attempt history (``ctl.job(id).attempts``); a job may be
        retried ``manual_retry_limit`` times (settings). The sentinel's answer:
        ``{"job_ids": [...], "attempts": {id: attempt}, "refused": {id: reason}}``."""
        self._check()
        wanted = None if ids is None else [int(ids)] if isinstance(ids, int) else \
            [int(i) for i in ids]
        statuses = [str(status)] if isinstance(status, str) else [str(s) for s in status]
        payload: dict[str, Any] = ({"job_ids": wanted} if wanted is not None
                                   else {"status": statuses})
        with self.session.command("Retry", payload) as r:
            if wanted:
                self.events.link(wanted, r.correlation_id, r.event_id)
            reply = self.client.retry_jobs(wanted or (), statuses=() if wanted else statuses)
            queued = [int(i) for i in reply["job_ids"]]
            self.events.link(queued, r.correlation_id, r.event_id)
            # wait() must not take their earlier end for this attempt's (the state DB
            # check still sees this attempt end, even if its event came before this line).
            self.events.forget_finished(queued)
            r.update(job_ids=queued, count=len(queued))
        self._submitted.extend(i for i in queued if i not in self._submitted)
        for job_id, why in (reply.get("refused") or {}).items():
            print(f"casparian: job {job_id} not retried: {why}")
        return reply

    def cancel_all_queued(self) -> dict[str, Any]:
        """Cancel every job still QUEUED (running jobs keep running)."""
        self._check()
        with self.session.command("Cancel", {"status": JobStatus.QUEUED}) as r:
            reply = self.client.cancel_jobs(status=JobStatus.QUEUED)
            r.update(count=len(reply.get("results") or {}))
        return reply

    def compact(self, sink: str, output: str | None = None,
                target_size: int | str = "128MB") -> Compaction:
        """Merge the small promoted files of a ``parquet://`` sink (``output``, or every
        output) into files of about ``target_size``. The sentinel does it, taking turns with
        its promotions, so it is safe while jobs run; queries (``ctl.sql``) never see a row
        twice or miss one; the jobs' artifacts then name the merged files."""
        from ..sinks.compaction import check_compactable

        self._check()
        parsed, size = check_compactable(sink, output, target_size)
        payload = {"sink": str(parsed), "output": output, "target_size": size}
        with self.session.command("Compact", payload) as r:
            result = Compaction.from_reply(self.client.compact(str(parsed), output,
                                                               target_size=size))
            r.update(files_before=result.files_before, files_after=result.files_after,
                     rows=result.rows)
        return result

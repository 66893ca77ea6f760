"""Carry out the state machine's ``Persist`` and ``Promote`` actions against the store/sinks.

Also the start-up half of crash recovery: jobs left RUNNING by a dead sentinel are either
re-promoted (their staged outputs were recorded before the crash, and promotion is idempotent)
or put back in the queue — never left RUNNING, never completed twice (F8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import plan, sinks
from ..config import Settings
from ..store import Materialization, StateReader, StateStore
from ..store.schema import iso_from_epoch
from . import state as st
from ._submit import job_spec

__all__ = ["Persister"]

log = logging.getLogger("casparian_nb.sentinel")


class Persister:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._plugin_paths: dict[int, str] = {}
        self._submission_ids: dict[str, frozenset[str]] = {}
        self._reader: StateReader | None = None  # the committer thread's own connection

    # -- Persist actions (loop thread) ---------------------------------------------------
    def apply(self, action: st.Persist, publish: Callable[[str, dict[str, Any]], None]) -> None:
        a = action.args
        op = action.op
        if op == "requeue_job":
            self.store.requeue_job(a["job_id"], scheduled_at=iso_from_epoch(a["scheduled_at"]),
                                   retry_count=a["retry_count"], error=a["error"],
                                   reason=a["reason"])
        elif op == "claim_job":
            self.store.claim_job(a["job_id"], a["worker_id"], attempt=a["attempt"])
        elif op == "complete_job":
            self._complete(a["job_id"], a["artifacts"])
        else:
            getattr(self.store, op)(**a)

    def _complete(self, job_id: int, artifacts: list[dict[str, Any]]) -> None:
        row = self.store.get_job(job_id)
        if row is None:
            return
        staged = row.get("staged_json") or {}
        outputs: dict[str, int] = dict(staged.get("rows") or {})
        quarantine = int(staged.get("quarantine_rows") or 0)
        self.store.complete_job(
            job_id, "PARTIAL_SUCCESS" if quarantine else "SUCCESS",
            rows=sum(outputs.values()), quarantine_rows=quarantine, outputs=outputs,
            artifacts=artifacts, result_summary="Partial success" if quarantine else "Success")
        source_hash = row.get("source_hash") or ""
        targets = plan.plan_from_json(row.get("plan_json") or "[]")
        mats = []
        for t in targets:
            produced = outputs.get(t.output) if t.output != "*" else sum(outputs.values())
            mats.append(Materialization(
                materialization_key=plan.materialization_key(
                    source_hash, row["plugin_name"], row.get("parser_version") or "",
                    t.target_key),
                output_target_key=t.target_key, source_hash=source_hash,
                plugin_name=row["plugin_name"], parser_version=row.get("parser_version"),
                output_name=t.output, table_name=t.table, sink_uri=row.get("sink_uri"),
                sink_mode=row.get("sink_mode"), schema_hash=t.schema_hash,
                status="success" if produced else "no_data", rows=int(produced or 0),
                job_id=job_id))
        if mats:
            self.store.record_materializations(mats)

    # -- start-up ------------------------------------------------------------------------
    def _plugin_path(self, plugin_id: int | None) -> str:
        if plugin_id is None:
            return ""
        if plugin_id not in self._plugin_paths:
            plugin = self.store.get_plugin(plugin_id) or {}
            self._plugin_paths[plugin_id] = str(plugin.get("path") or "")
        return self._plugin_paths[plugin_id]

    def _rec(self, row: dict[str, Any], now: float) -> st.JobRec:
        spec = job_spec(row, self._plugin_path(row.get("plugin_id")), str(self.settings.staging_dir))
        return st.JobRec(id=int(row["id"]), priority=int(row.get("priority") or 0), spec=spec,
                         timeout_s=row.get("timeout_s"), retry_count=int(row.get("retry_count") or 0),
                         attempt=int(row.get("attempt") or 0))

    def reconcile(self, now: float) -> tuple[list[int], list[tuple[int, dict[str, Any], str, str | None]]]:
        """RUNNING rows after a restart: re-promote those with recorded staged outputs,
        re-queue the rest (their workers died with the old sentinel)."""
        requeued: list[int] = []
        repromote: list[tuple[int, dict[str, Any], str, str | None]] = []
        with self.store.transaction():
            for job_id in self.store.reconcile_running():
                row = self.store.get_job(job_id) or {}
                staged = (row.get("staged_json") or {}).get("staged")
                if staged:
                    repromote.append((job_id, staged, row.get("sink_mode") or "append",
                                      row.get("submission_id")))
                else:
                    self.store.requeue_job(job_id, scheduled_at=iso_from_epoch(now),
                                           error="sentinel restarted while the job ran",
                                           reason="sentinel_restart")
                    requeued.append(job_id)
        return requeued, repromote

    def load_queued(self, now: float) -> list[st.JobRec]:
        rows = self.store.list_jobs(status=["QUEUED"], limit=10**9)
        recs = [self._rec(r, now) for r in rows]
        recs.sort(key=lambda r: r.id)
        return recs

    def load_job(self, job_id: int, now: float) -> st.JobRec | None:
        row = self.store.get_job(job_id)
        return self._rec(row, now) if row else None

    # -- promotion (committer thread) ----------------------------------------------------
    def _run_ids(self, submission_id: str | None, job_id: int) -> frozenset[str]:
        if not submission_id:
            return frozenset({str(job_id)})
        if submission_id not in self._submission_ids:
            if self._reader is None:
                self._reader = StateReader.open(self.settings.state_db)
            ids = self._reader.job_ids_for_submission(submission_id)
            self._submission_ids[submission_id] = frozenset(str(i) for i in ids)
        return self._submission_ids[submission_id]

    def promote(self, item: st.Promote) -> st.PromotionFinished:
        import time

        try:
            staged = sinks.StagedJob.from_dict(item.staged)
            run_ids = None
            if item.mode != "append":
                run_ids = self._run_ids(item.submission_id, item.job_id)
            artifacts = sinks.promote(staged, mode=sinks.SinkMode.parse(item.mode),
                                      run_job_ids=run_ids)
            return st.PromotionFinished(item.job_id, True, [a.to_dict() for a in artifacts], None,
                                        time.time())
        except Exception as exc:
            log.warning("promotion of job %s failed: %s", item.job_id, exc)
            try:
                sinks.discard(sinks.StagedJob.from_dict(item.staged))
            except Exception:
                log.exception("discarding staged outputs of job %s failed", item.job_id)
            return st.PromotionFinished(item.job_id, False, [], str(exc).splitlines()[0] if
                                        str(exc) else type(exc).__name__, time.time())

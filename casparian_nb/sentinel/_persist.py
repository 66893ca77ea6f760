"""Carry out the state machine's ``Persist`` and ``Promote`` actions against the store/sinks.

Also the start-up half of crash recovery: jobs left RUNNING by a dead sentinel are either
re-promoted (their staged outputs were recorded before the crash, and promotion is idempotent)
or put back in the queue — never left RUNNING, never completed twice (F8).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, assert_never

from .. import plan, sinks
from ..config import Settings
from ..errors import SinkLockedError
from ..protocol import CompletionStatus, JobStatus, MaterializationStatus
from ..store import BatchingStateStore, Materialization, StateReader, StateStore
from ..store.schema import iso_from_epoch
from . import state as st
from ._submit import job_spec_from_row

__all__ = ["Persister", "SentinelStore"]

log = logging.getLogger("casparian_nb.sentinel")


#: The sentinel's store: writes batched into one transaction per loop iteration.
SentinelStore = BatchingStateStore


class Persister:
    """Carries out the state machine's store writes (loop thread) and promotions (committer
    thread), and rebuilds its records from the state DB at start-up."""

    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._plugin_paths: dict[int, str] = {}
        self._submission_ids: dict[str, frozenset[str]] = {}
        self._plans: dict[str, list[plan.OutputTarget]] = {}
        self._plan_texts: dict[str, str] = {}
        self._reader: StateReader | None = None  # the committer thread's own connection

    # -- Persist actions (loop thread) ---------------------------------------------------
    def apply(self, action: st.Persist, now: str | None = None) -> None:
        """Carry out one store write of the state machine; ``now`` (RFC 3339) stamps it (one
        clock read per batch)."""
        store = self.store
        match action:
            case st.ClaimJob(job_id, worker_id, attempt):
                store.claim_job(job_id, worker_id, now, attempt=attempt)
            case st.MarkStarted(job_id, host_pid):
                store.mark_started(job_id, host_pid, now)
            case st.RequestCancel(job_id):
                store.request_cancel(job_id, now)
            case st.RecordStaged():
                store.record_staged(action.job_id, action.staged, source_hash=action.source_hash,
                                    rows=action.rows, quarantine_rows=action.quarantine_rows,
                                    duration_ms=action.duration_ms, now=now)
            case st.CompleteJob():
                self._complete(action, now)
            case st.RequeueJob():
                store.requeue_job(action.job_id, scheduled_at=iso_from_epoch(action.scheduled_at),
                                  retry_count=action.retry_count, error=action.error,
                                  error_kind=action.error_kind, reason=action.reason, now=now,
                                  host_kills=action.host_kills)
            case st.AbortJob(job_id, reason):
                store.abort_job(job_id, reason, now)
            case st.FailJob(job_id, error, error_kind, traceback, host_kills):
                store.fail_job(job_id, error, error_kind, traceback, now, host_kills=host_kills)
            case st.DeadLetter(job_id, reason, error):
                store.dead_letter(job_id, reason, error, now)
            case st.RetryJob(job_id):
                store.retry_job(job_id, now)
            case _:
                assert_never(action)

    def _targets(self, plan_json: str | None) -> list[plan.OutputTarget]:
        if not plan_json:
            return []
        targets = self._plans.get(plan_json)
        if targets is None:
            if len(self._plans) > 256:
                self._plans.clear()
            targets = self._plans[plan_json] = plan.plan_from_json(plan_json)
        return targets

    def _complete(self, a: st.CompleteJob, now: str | None) -> None:
        """RUNNING → COMPLETED plus one materialization per planned output (F4)."""
        outputs = dict(a.outputs)
        quarantine = int(a.quarantine_rows or 0)
        moved = self.store.complete_job(
            a.job_id,
            CompletionStatus.PARTIAL_SUCCESS if quarantine else CompletionStatus.SUCCESS,
            rows=sum(outputs.values()), quarantine_rows=quarantine, outputs=outputs,
            artifacts=a.artifacts, now=now,
            result_summary="Partial success" if quarantine else "Success")
        if not moved:
            return  # not RUNNING (a duplicate): its materializations exist already
        spec = a.spec
        source_hash = a.source_hash or ""
        plugin_name = spec.plugin_name
        version = spec.parser_version
        key_version = plan.key_version(version, spec.plugin_source_hash)
        mats = []
        for t in self._targets(a.plan_json):
            produced = outputs.get(t.output) if t.output != plan.ALL_OUTPUTS else sum(outputs.values())
            mats.append(Materialization(
                materialization_key=plan.materialization_key(source_hash, plugin_name,
                                                             key_version, t.target_key),
                output_target_key=t.target_key, source_hash=source_hash,
                plugin_name=plugin_name, parser_version=version,
                output_name=t.output, table_name=t.table, sink_uri=t.sink or spec.sink,
                sink_mode=spec.mode, schema_hash=t.schema_hash,
                status=MaterializationStatus.SUCCESS if produced else MaterializationStatus.NO_DATA,
                rows=int(produced or 0), job_id=a.job_id,
                parser_fingerprint=spec.plugin_source_hash))
        if mats:
            self.store.record_materializations(mats, now)

    # -- start-up ------------------------------------------------------------------------
    def _plugin_path(self, plugin_id: int | None) -> str:
        if plugin_id is None:
            return ""
        if plugin_id not in self._plugin_paths:
            plugin = self.store.get_plugin(plugin_id) or {}
            self._plugin_paths[plugin_id] = str(plugin.get("path") or "")
        return self._plugin_paths[plugin_id]

    def _rec(self, row: dict[str, Any], now: float) -> st.JobRec:
        spec = job_spec_from_row(row, self._plugin_path(row.get("plugin_id")))
        raw_plan = row.get("plan_json")
        plan_json = raw_plan if isinstance(raw_plan, str) or raw_plan is None else \
            plan.plan_to_json(plan.plan_from_json(raw_plan))
        plan_json = self._plan_texts.setdefault(plan_json, plan_json) if plan_json else None
        ready_at = 0.0
        if row.get("scheduled_at"):
            try:
                ready_at = datetime.fromisoformat(
                    str(row["scheduled_at"]).replace("Z", "+00:00")).timestamp()
            except ValueError:
                ready_at = 0.0
        return st.JobRec(id=int(row["id"]), priority=int(row.get("priority") or 0), spec=spec,
                         timeout_s=row.get("timeout_s"), retry_count=int(row.get("retry_count") or 0),
                         host_kills=int(row.get("host_kills") or 0),
                         attempt=int(row.get("attempt") or 0), ready_at=ready_at,
                         plan_json=plan_json, input_file=spec.input_file)

    def reconcile(self, now: float) -> tuple[list[int], list[st.JobRec]]:
        """RUNNING rows after a restart: re-adopt those whose outputs were staged (recorded)
        before the crash as PROMOTING (the caller promotes them again: idempotent), re-queue
        the rest (their workers died with the old sentinel) without spending a retry."""
        requeued: list[int] = []
        adopted: list[st.JobRec] = []
        with self.store.transaction():
            for job_id in self.store.reconcile_running():
                row = self.store.get_job(job_id) or {}
                record = row.get("staged_json") or {}
                if record.get("staged") is not None:
                    rec = self._rec(row, now)
                    rec.status = JobStatus.PROMOTING
                    rec.worker_id = row.get("worker_id")
                    outputs = {str(k): int(v) for k, v in dict(record.get("rows") or {}).items()}
                    rec.result = {"rows": sum(outputs.values()), "outputs": outputs,
                                  "quarantine_rows": int(record.get("quarantine_rows") or 0),
                                  "duration_ms": round(float(record.get("duration_ms") or 0), 1),
                                  "source_hash": row.get("source_hash"),
                                  "staged": record["staged"]}
                    adopted.append(rec)
                else:
                    self.store.requeue_job(job_id, scheduled_at=iso_from_epoch(now),
                                           error="sentinel restarted while the job ran",
                                           reason="sentinel_restart")
                    requeued.append(job_id)
        return requeued, adopted

    def retry_candidates(self, job_ids: list[int], statuses: list[JobStatus],
                         now: float) -> st.RetryRequested:
        """The jobs a ``RetryJobs`` names (``job_ids``, else every job in ``statuses``) as
        the state machine's records; the request id is filled in by the caller."""
        if job_ids:
            rows = [(i, self.store.get_job(i)) for i in dict.fromkeys(job_ids)]
        else:
            found = self.store.list_jobs(status=statuses or [JobStatus.FAILED,
                                                             JobStatus.ABORTED], limit=100_000)
            rows = [(int(r["id"]), r) for r in reversed(found)]  # oldest first
        hashes: dict[str, str | None] = {}

        def unchanged(rec: st.JobRec) -> bool:
            path = rec.spec.plugin_path
            if path not in hashes:
                try:
                    hashes[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                except OSError:
                    hashes[path] = None
            return hashes[path] == rec.spec.plugin_source_hash

        candidates = []
        for _, row in rows:
            if row is not None:
                rec = self._rec(row, now)
                candidates.append(st.RetryCandidate(
                    rec, JobStatus(row["status"]), int(row.get("manual_retries") or 0),
                    row.get("error_message"), plugin_unchanged=unchanged(rec)))
        missing = [i for i, row in rows if row is None]
        return st.RetryRequested(candidates, missing, "", now)

    def load_queued(self, now: float) -> list[st.JobRec]:
        """Every QUEUED job as the state machine's record, oldest first (streamed)."""
        return [self._rec(r, now) for r in self.store.iter_dispatchable(JobStatus.QUEUED)]

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

    def promote(self, item: st.Promote, *, lock_timeout: float = 10.0,
                raise_locked: bool = False) -> st.PromotionFinished:
        """Promote one job's staged outputs; a failure drops them and says why.

        ``lock_timeout`` bounds the wait for a DuckDB file another process holds. With
        ``raise_locked`` that case raises :class:`SinkLockedError` instead (nothing was
        changed and the staging is kept), so the committer can retry it later.
        """
        try:
            staged = sinks.StagedJob.from_dict(item.staged)
            run_ids = None
            if item.mode != "append":
                run_ids = self._run_ids(item.submission_id, item.job_id)
            artifacts = sinks.promote(staged, mode=sinks.SinkMode.parse(item.mode),
                                      run_job_ids=run_ids, lock_timeout=lock_timeout)
            return st.PromotionFinished(item.job_id, True, [a.to_dict() for a in artifacts], None,
                                        time.time())
        except SinkLockedError as exc:
            if raise_locked:
                raise
            return self.failed(item, exc)
        except Exception as exc:
            return self.failed(item, exc)

    def promote_group(self, items: list[st.Promote]) -> list[st.PromotionFinished]:
        """Promote appends to file sinks together (one journal, one fsync per sink dir:
        :func:`sinks.promote_group`); per item, in order, how it went."""
        done: dict[int, st.PromotionFinished] = {}
        staged: list[tuple[int, sinks.StagedJob]] = []
        for i, item in enumerate(items):
            try:
                staged.append((i, sinks.StagedJob.from_dict(item.staged)))
            except Exception as exc:
                done[i] = self.failed(item, exc)
        results = sinks.promote_group([job for _, job in staged], mode=sinks.SinkMode.APPEND)
        for (i, _), got in zip(staged, results, strict=True):
            done[i] = (self.failed(items[i], got) if isinstance(got, Exception) else
                       st.PromotionFinished(items[i].job_id, True, [a.to_dict() for a in got],
                                            None, time.time()))
        return [done[i] for i in range(len(items))]

    def failed(self, item: st.Promote, exc: BaseException) -> st.PromotionFinished:
        """The job's promotion failed for good: drop its staged outputs, report the reason."""
        log.warning("promotion of job %s failed: %s", item.job_id, exc)
        try:
            sinks.discard(sinks.StagedJob.from_dict(item.staged))
        except Exception:
            log.exception("discarding staged outputs of job %s failed", item.job_id)
        return st.PromotionFinished(item.job_id, False, [], str(exc).splitlines()[0] if
                                    str(exc) else type(exc).__name__, time.time())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

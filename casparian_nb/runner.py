"""Standalone runs: ``casparian run PLUGIN INPUT...`` without a sentinel.

The same plugin hosts, lineage, staging and promotion the workers use, driven in-process: one
job per input file on up to ``parallel`` warm hosts; this process is the committer that promotes
each successful job's outputs. One bad file does not stop the others. Small files into one
sink go to the hosts in batches that share a staging and one file per output, each file
still its own job (:mod:`._run_batch`).

Each run stages under ``<home>/staging/run-<run id>/`` with an ``OWNER`` file naming this
process. A run that is killed outright (``kill -9``) leaves that directory behind; the next run
in the same home finishes any promotion it interrupted (:func:`casparian_nb.sinks.recover`,
so each job's outputs appear all together or not at all) and removes the rest
(:mod:`._run_staging`). The result types are in :mod:`._run_result`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import contracts, lineage, plan, plugins, sinks
from ._inputs import expand_inputs
from ._progress import ProgressCounts, ProgressSink, terminal_progress
from ._run_batch import Ended, plan_batches, settle
from ._run_result import FileResult, RunResult
from ._run_staging import claim_staging, remove_tree, sweep_stale_runs
from .config import Settings, load_settings
from .errors import CasparianError, PluginError, SinkModeError
from .joblogs import job_log_file, job_logs_root
from .protocol import (
    ErrorInfo,
    HostBatch,
    HostJob,
    InputDecision,
    JobSpec,
    JobStatus,
    QuarantinePolicy,
    Receipt,
    ReceiptStatus,
)
from .sinks._held import holding_connections
from .store import StateReader
from .store.ledger import LedgerRecord, RunLedger
from .worker.pool import HostPool, aborted

# The result types live in ._run_result (re-exported: they are this module's API), the
# staging ownership and the sweep of killed runs in ._run_staging.
__all__ = ["FileResult", "RunResult", "run"]


def _progress_counts(done: int, finished: int, total: int, slots: int) -> ProgressCounts:
    """``done`` of ``finished`` files completed, of ``total``, on ``slots`` hosts."""
    left = total - finished
    return ProgressCounts(done, finished - done, min(slots, left), max(0, left - slots))


def _one_line(error: ErrorInfo | None, fallback: str) -> str:
    if not error:
        return fallback
    return f"{error.ename}: {error.evalue}".strip()


def run(
    plugin: str | Path,
    inputs: str | Path | Iterable[str | Path],
    *,
    sink: str | Mapping[str, str] | None = None,
    mode: str = "append",
    parallel: int | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
    progress: bool | ProgressSink | None = None,
    timeout: float | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    quarantine: Mapping[str, Any] | QuarantinePolicy | None = None,
    force: bool = False,
) -> RunResult:
    """Run ``plugin`` over ``inputs`` (files, directories, globs) and promote the outputs.

    Returns a :class:`RunResult`; raises a :class:`~casparian_nb.errors.CasparianError` only
    for problems that stop the whole run: a bad plugin (including one that fails to import in
    the host), a bad sink, no inputs, or ``mode="error"`` finding data of another run in an
    output — then nothing of this run is written. Jobs still running are killed.

    ``sink`` is one URI, or a mapping of output names to URIs with ``"*"`` for the rest
    (``{"orders": "duckdb://db.duckdb", "*": "parquet://out"}``); a file's outputs promote
    into all their sinks or none.

    ``quarantine={"max_pct": 10, "max_rows": 1000}`` fails (and promotes nothing of) a file
    whose output sends more rows to quarantine; it overrides the plugin's ``quarantine``.

    Inputs whose every planned output this plugin already materialized (by a standalone run
    or a sentinel of this home) are skipped by the sentinel's rule (:func:`plan.decide`);
    ``force=True`` runs them anyway.
    """
    settings = settings or load_settings(home)
    started = time.perf_counter()
    plugin_path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    spec = plugins.inspect_plugin(plugin_path)
    plugins.check_trust(spec, settings.trust)
    sink_uri = sinks.SinkRouting.parse(sink or settings.effective_default_sink)
    sink_mode = sinks.SinkMode.parse(mode)
    policy = contracts.quarantine_policy(quarantine)
    specs: Sequence[str | Path] = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files = expand_inputs(specs)
    version = plan.declared_version(spec.version, spec.version_declared)
    targets = plan.output_plan(manifest=spec.manifest, default_output=spec.default_output,
                               sink_uri=str(sink_uri), sink_mode=sink_mode.value)
    # The hosts start before the inputs are hashed and decided, so their imports (~0.5 s)
    # overlap that; when every input turns out to be skipped they are stopped unused.
    pool = HostPool(max(1, min(parallel or settings.effective_slots, len(files))),
                    log_dir=settings.logs_dir, cancel_grace=settings.cancel_grace,
                    memory_limit_mb=settings.job_memory_limit_mb, name="run",
                    log_max_bytes=settings.host_log_max_mb * 1024 * 1024, warm=str(spec.path))
    try:
        ledger = RunLedger.open(settings.run_ledger)
        try:
            return _run(spec, files, ledger, targets, version, sink_uri, sink_mode, settings,
                        pool, progress=progress, timeout=timeout, on_file=on_file,
                        force=force, started=started, policy=policy)
        finally:
            ledger.close()
    finally:
        pool.close()


def _decide(files: Sequence[Path], spec: plugins.PluginSpec, ledger: RunLedger,
            targets: list[plan.OutputTarget], version: str | None, settings: Settings,
            force: bool) -> dict[Path, tuple[InputDecision, str, list[str]]]:
    """Each input's decision, source hash and materialization keys: the sentinel's rule
    over this home's standalone runs and, when there is one, its state DB."""
    key_version = plan.key_version(version, spec.source_hash)
    keyed = []
    for path in files:
        source_hash = lineage.hash_file(path)
        keyed.append((path, source_hash,
                      plan.plan_keys(targets, source_hash, spec.name, key_version)))
    recorded: dict[str, str | None] = {}
    if not force:
        every = [k for _, _, keys in keyed for k in keys]
        reader = StateReader.open_if_ready(settings.state_db)
        if reader is not None:
            with reader:
                recorded.update(reader.materialized_by(every))
        recorded.update(ledger.materialized_by(every))
    return {path: (plan.decide(keys, recorded, spec.source_hash, force=force), source_hash, keys)
            for path, source_hash, keys in keyed}


def _run(spec: plugins.PluginSpec, all_files: Sequence[Path], ledger: RunLedger,
         targets: list[plan.OutputTarget], version: str | None, sink_uri: sinks.SinkRouting,
         sink_mode: sinks.SinkMode, settings: Settings, pool: HostPool, *,
         progress: bool | ProgressSink | None, timeout: float | None,
         on_file: Callable[[FileResult], None] | None, force: bool,
         started: float, policy: QuarantinePolicy | None) -> RunResult:
    decisions = _decide(all_files, spec, ledger, targets, version, settings, force)
    files = [p for p in all_files if decisions[p][0] == InputDecision.RUN]
    skipped = tuple(str(p) for p in all_files if decisions[p][0] == InputDecision.SKIP)
    stale = tuple(str(p) for p in all_files if decisions[p][0] == InputDecision.STALE)
    if not files:
        return RunResult(uuid.uuid4().hex[:12], spec.name, spec.version, str(sink_uri),
                         sink_mode.value, (), time.perf_counter() - started, skipped, stale)
    sweep_stale_runs(settings.staging_dir)
    run_id = uuid.uuid4().hex[:12]
    staging_root = claim_staging(settings.staging_dir, run_id)
    processed_at = datetime.now(UTC).isoformat()
    log_root = str(job_logs_root(settings.home))
    jobs = [
        HostJob(job=JobSpec(
            job_id=f"run-{run_id}-{i:06d}", input_file=str(path), plugin_path=str(spec.path),
            plugin_name=spec.name, plugin_name_declared=spec.name_declared,
            plugin_source_hash=spec.source_hash, parser_version=version,
            sink=str(sink_uri), mode=sink_mode.value, processed_at=processed_at,
            quarantine=policy,
        ), attempt=1, staging_root=str(staging_root), sync_staging=False,
            log_root=log_root, redact_log=settings.tape_redact)
        for i, path in enumerate(files)
    ]
    by_input = {str(path): decision for path, decision in decisions.items()}
    size = min(pool.size, len(jobs))
    # Small files into one sink run in batches (one staging, one file per output and one
    # promotion — a DuckDB transaction — for many files); each file stays its own job.
    work = (plan_batches(jobs, size, run_id, settings.run_batch_files)
            if sink_uri.single is not None else list(jobs))
    run_job_ids = frozenset(j.job.job_id for j in jobs) | frozenset(
        w.batch_id for w in work if isinstance(w, HostBatch))
    # progress: a sink (the notebook's bar), or a terminal bar (True; None: when on a TTY)
    bar = progress if not isinstance(progress, bool | None) else (
        terminal_progress(f"run {spec.name}", progress) if jobs else None)
    results: list[FileResult] = []
    completed = 0  # of results (the progress bar counts them as each file ends)
    # Set when the whole run must stop: mode=error met another run's data, or the plugin
    # cannot even be loaded (the same for every file). Running jobs are then killed.
    stop: CasparianError | None = None

    def ended(attempt: HostJob, res: Receipt) -> Callable[..., FileResult]:
        job = attempt.job
        log = job_log_file(attempt.log_root or "", job.job_id, attempt.attempt)
        return functools.partial(FileResult, job.job_id, job.input_file,
                                 duration_ms=float(res.duration_ms or 0.0),
                                 log_path=log if os.path.exists(log) else None)

    def commit(group: list[Ended]) -> list[FileResult]:
        """The outcomes of a group of receipts, promoting the successful ones together
        (a batch's shared staging once, for all its files)."""
        nonlocal stop
        out: dict[int, FileResult] = {}
        todo: list[tuple[int, sinks.StagedJob]] = []
        distinct: list[sinks.StagedJob] = []  # what to promote: a batch's staging once
        index: dict[int, int] = {}  # id(staged) -> its place in distinct
        for i, (attempt, res, share) in enumerate(group):
            if res.status == ReceiptStatus.ABORTED:
                out[i] = ended(attempt, res)(JobStatus.ABORTED, error=res.reason or "aborted")
            elif res.status != ReceiptStatus.SUCCESS:
                if stop is None and res.error and res.error.phase == "load":
                    ename, evalue = res.error.ename, res.error.evalue
                    stop = PluginError(evalue if ename == "PluginError" else f"{ename}: {evalue}")
                out[i] = ended(attempt, res)(
                    JobStatus.FAILED, error=_one_line(res.error, "failed"),
                    traceback=(res.error.traceback or None) if res.error else None)
            else:
                staged = (share.staged if share is not None
                          else sinks.StagedJob.from_dict(res.staged or {}))
                if stop is not None:
                    sinks.discard(staged)
                    out[i] = ended(attempt, res)(JobStatus.ABORTED, error=f"run stopped: {stop}")
                else:
                    todo.append((i, staged))
                    if id(staged) not in index:
                        index[id(staged)] = len(distinct)
                        distinct.append(staged)
        # Hosts staged without fsync (sync_staging=False): the staged files become durable
        # with the group's journal, and one ledger transaction records the group.
        promoted_once = sinks.promote_group(distinct, mode=sink_mode, run_job_ids=run_job_ids,
                                            sync=True) if distinct else []
        promoted = [promoted_once[index[id(staged)]] for _, staged in todo]
        records = []
        for (i, staged), got in zip(todo, promoted, strict=True):
            attempt, res, share = group[i]
            done = ended(attempt, res)
            if isinstance(got, Exception):  # one bad promotion must not stop the others
                with contextlib.suppress(Exception):
                    sinks.discard(staged)
                if isinstance(got, SinkModeError):
                    stop = got
                out[i] = done(JobStatus.FAILED, error=f"{type(got).__name__}: {got}")
                continue
            _, source_hash, keys = by_input[attempt.job.input_file]
            records.append(LedgerRecord(keys, source_hash, spec.name, version, spec.source_hash,
                                        attempt.job.input_file, run_id))
            out[i] = done(JobStatus.COMPLETED, rows=dict(res.rows or {}),
                          quarantine_rows=int(res.quarantine_rows or 0),
                          artifacts=[a.to_dict() for a in (
                              share.artifacts(got) if share is not None else got)])
        ledger.record_many(records)
        return [out[i] for i in range(len(group))]

    # Two stages, so a host never waits on the disk: one thread per host runs jobs back to
    # back and queues each receipt; one committer thread promotes what has queued meanwhile
    # as a group (one journal, one sync of the staged files and of each sink dir, one
    # ledger transaction): the disk's cost per file shrinks as the hosts get faster.
    limit = timeout if timeout is not None else settings.job_timeout
    finished: queue.SimpleQueue[FileResult | BaseException] = queue.SimpleQueue()
    # Each item: the files of one job or one batch (a batch's files promote in one group).
    receipts: queue.SimpleQueue[list[Ended] | None] = queue.SimpleQueue()

    def committer() -> None:
        # DuckDB sinks stay open through the run (each job still its own transaction), not
        # opened and checkpointed per job; a reader elsewhere gets in every duckdb_hold_s.
        with holding_connections(max_age=settings.duckdb_hold_s) as held:
            last = False
            while not last:
                item = receipts.get()
                if item is None:
                    return
                group = list(item)
                while len(group) < _GROUP_MAX:
                    try:
                        item = receipts.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        last = True
                        break
                    group.extend(item)
                try:
                    for result in commit(group):
                        finished.put(result)
                except BaseException as exc:  # a bug, or the ledger failed: the run stops
                    finished.put(exc)
                    return
                held.release(only_old=settings.duckdb_hold_s > 0)

    def attempt(job: HostJob | HostBatch) -> None:
        try:
            if isinstance(job, HostJob):
                receipts.put([(job, pool.run(job, timeout=limit), None)])
                return
            done, again = settle(job, pool.run_batch(job, timeout=limit))
            if done:
                receipts.put(done)
            for lone in again:  # their batch's host died in another file: each alone now
                res = (pool.run(lone, timeout=limit) if stop is None
                       else aborted(lone.job.job_id, f"run stopped: {stop}"))
                receipts.put([(lone, res, None)])
        except BaseException as exc:
            finished.put(exc)

    committing = threading.Thread(target=committer, name="cf-commit", daemon=True)
    try:
        committing.start()
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="cf-run") as hosts:
            futures = [(hosts.submit(attempt, w), len(w.jobs) if isinstance(w, HostBatch) else 1)
                       for w in work]
            expected = len(jobs)
            stopped = False
            try:
                while len(results) < expected:
                    got = finished.get()
                    if isinstance(got, BaseException):
                        raise got
                    if stop is not None and not stopped:
                        stopped = True
                        # jobs not started never report; running ones are killed and do
                        expected -= sum(n for f, n in futures if f.cancel())
                        for job_id in pool.running():
                            pool.cancel(job_id, f"run stopped: {stop}")
                    results.append(got)
                    completed += got.status == JobStatus.COMPLETED
                    if bar is not None:
                        bar.update(_progress_counts(completed, len(results), len(jobs), size))
                    if on_file is not None:
                        on_file(got)
            except BaseException:
                # Ctrl-C (or a bug): kill the hosts now rather than wait for their jobs.
                for f, _ in futures:
                    f.cancel()
                pool.close()
                raise
    finally:
        if committing.is_alive():  # what has queued is promoted before recovery runs
            receipts.put(None)
            committing.join()
        if bar is not None:
            bar.finish(_progress_counts(completed, len(results), len(jobs), size))
        pool.close()
        # Hosts are gone and this process is the committer: finish (or roll back) any
        # promotion an interrupt cut short, then drop what is left of this run's staging.
        with contextlib.suppress(Exception):
            sinks.recover(staging_root)
        remove_tree(staging_root)
    if stop is not None:
        raise stop
    order = {j.job.job_id: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r.job_id])
    return RunResult(run_id, spec.name, spec.version, str(sink_uri), sink_mode.value,
                     tuple(results), time.perf_counter() - started, skipped, stale)


#: Most receipts promoted as one group (one journal, one ledger transaction).
_GROUP_MAX = 64

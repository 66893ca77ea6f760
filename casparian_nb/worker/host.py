"""The plugin host: a warm child process that runs one job at a time.

A host is started once (``python -m casparian_nb.worker.host --fd N``), imports pyarrow, pandas
and the plugin machinery up front, then serves jobs over a socket pair until its parent goes
away. Jobs arrive as :class:`~casparian_nb.protocol.HostJob` (the job's unchanged
:class:`~casparian_nb.protocol.JobSpec` plus this attempt); the host loads the plugin (cached
by source hash), hashes the input, calls ``parse``, checks and stamps lineage, and stages every
output under ``<staging_root>/<job>/``. It never writes into a sink location: promotion belongs to the
committer, so killing a host at any instant leaves nothing visible in the outputs.

Messages (msgspec JSON over :class:`multiprocessing.connection.Connection`, Structs of
:mod:`casparian_nb.protocol`):

* host → parent ``HostReady`` once imports are done;
* parent → host ``HostJob``; host → parent its ``Receipt``;
* parent → host ``HostExit``.

A host never outlives its worker, and never finishes a job nobody will receive. The race to
close: a worker dies while its host is mid-``parse`` or mid-staging. Whoever removes that
job's staging must run *after* the host has stopped writing, in a process that outlives it:
not the worker (dead), and not the host itself (a watcher thread cannot stop the main
thread's writes between its ``rmtree`` and its exit). So, on Linux, the host asks the kernel
(``PR_SET_PDEATHSIG``, :func:`~casparian_nb._proc.die_with_parent`) to SIGKILL it when its
worker exits. The kernel sends that signal while the worker is still exiting, before it is
a zombie — so by the time anything can see the worker dead (the sentinel's liveness check,
a missed heartbeat) the host runs no more code; at most a system call already under way
completes. What it had staged stays in ``staging/attempt-N/<job>``, and the sentinel, which
acts only once it has seen the worker dead, removes exactly that directory when it re-queues
the worker's jobs (``RemoveStaging``); it also sweeps the staging when it stops and when it
starts, for anything a remote worker that was only silent (not dead) wrote later.

Where there is no ``PR_SET_PDEATHSIG`` (macOS) the race is only narrowed: a watcher thread
polls for the parent every 0.2 s and, on loss, removes the current job's staging directory
and ``os._exit``s; the sentinel's removal may come first, and a write that lands after both
is left for the sentinel's next stop or start sweep. Neither path ever removes a
directory with a promotion journal (:func:`casparian_nb.sinks.discard` refuses it). The
kernel's signal follows the *thread* that started the host, so the pool starts hosts only
from threads that outlive them (the worker's main and job threads; a standalone run's,
until it closes the pool).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import NoReturn

import msgspec

# Imported at start-up on purpose: this is what makes a host "warm" (see ``_warm_up``).
# pandas too: pyarrow imports it on the first table any plugin builds (pa.table checks for a
# DataFrame), so a host that skipped it would only pay for it in its first job.
import pandas  # noqa: F401
import pyarrow  # noqa: F401

from .. import contracts, plugins, sinks
from .. import lineage as lineage_mod
from .._proc import die_with_parent, exit_with_parent, nice_own_session
from ..errors import (
    LineageError,
    PluginError,
)
from ..lineage import QUARANTINE_SUFFIX, quarantine_name
from ..protocol import (
    BatchStaged,
    HostBatch,
    HostExit,
    HostJob,
    HostReady,
    JobSpec,
    Receipt,
    ReceiptStatus,
)
from ._capture import capture_job_output
from ._hostbatch import BatchMember, BatchStaging
from ._hosterrors import classify_error, error_payload, limit_memory
from ._preview import PreviewStager, preview_receipt

__all__ = ["classify_error", "execute_batch", "execute_job", "main"]

_PLUGIN_CACHE: dict[str, plugins.LoadedPlugin] = {}
#: The staging directory of the job this host is running (None between jobs), for the
#: parent watcher to drop when the worker is lost.
_CURRENT_STAGING: str | None = None


def _load(job: JobSpec) -> plugins.LoadedPlugin:
    expected = job.plugin_source_hash
    if expected and expected in _PLUGIN_CACHE:
        return _PLUGIN_CACHE[expected]
    spec = plugins.inspect_plugin(job.plugin_path)
    if expected and spec.source_hash != expected:
        raise PluginError(
            f"{spec.path}: plugin changed on disk since it was submitted "
            f"(source hash {spec.source_hash[:12]} != {expected[:12]}); resubmit it"
        )
    loaded = plugins.load_plugin(spec)
    _PLUGIN_CACHE[spec.source_hash] = loaded
    return loaded


def execute_job(attempt: HostJob) -> Receipt:
    """Run one job attempt to staged outputs (or, in preview mode, to the outputs' first
    rows), its output captured into the attempt's log when ``attempt.log_root`` is set.
    Never raises: failures become a FAILED receipt."""
    with capture_job_output(attempt):
        return _execute(attempt)


def execute_batch(batch: HostBatch, answer: Callable[[Receipt], object]) -> BatchStaged:
    """Run a batch's members one after the other, ``answer``-ing each one's receipt as it
    ends; their rows go into the batch's shared staging (:mod:`._hostbatch`). Returns what
    was staged there. Never raises for a member's failure."""
    global _CURRENT_STAGING
    if not batch.jobs:
        return BatchStaged(batch_id=batch.batch_id)
    first = batch.jobs[0]
    shared = BatchStaging(first.staging_root, batch.batch_id, first.job.sink)
    _CURRENT_STAGING = _staging_dir(first, batch.batch_id)
    try:
        for attempt in batch.jobs:
            member = BatchMember()
            with capture_job_output(attempt):
                res = _execute(attempt, member)
            if res.status == ReceiptStatus.SUCCESS:
                if not member.outputs:  # nothing staged: a lone job's empty staging
                    res = msgspec.structs.replace(res, staged=sinks.StagedJob(
                        attempt.job.job_id, attempt.job.sink, _staging_dir(attempt)).to_dict())
                elif not shared.absorb(attempt.job.job_id, member):
                    res = _stage_alone(attempt, member, res)
            answer(res)
        staged = shared.close(sync=first.sync_staging)
    except Exception:
        # Writing the shared files failed (a full disk, say): nothing of it is kept, and
        # the committer runs the members that were in it again, one by one, each of which
        # then reports its own error.
        logging.getLogger(__name__).warning("batch %s: staging failed", batch.batch_id,
                                            exc_info=True)
        shared.discard()
        return BatchStaged(batch_id=batch.batch_id)
    except BaseException:
        shared.discard()
        raise
    return BatchStaged(batch_id=batch.batch_id, staged=staged.to_dict() if staged else None,
                       shares=shared.shares)


def _stage_alone(attempt: HostJob, member: BatchMember, res: Receipt) -> Receipt:
    """A member whose rows the batch's files cannot take (another schema), staged in its
    own directory as a lone job's would be."""
    job = attempt.job
    stager = sinks.JobStager(attempt.staging_root, job.job_id, job.sink)
    try:
        member.stage_alone(stager)
        staged = stager.close(sync=attempt.sync_staging)
    except Exception as exc:
        stager.discard()
        return Receipt(job_id=job.job_id, status=ReceiptStatus.FAILED,
                       source_hash=res.source_hash, duration_ms=res.duration_ms,
                       error=error_payload(exc, input_file=job.input_file, phase="run"))
    return msgspec.structs.replace(res, staged=staged.to_dict())


def _execute(attempt: HostJob, member: BatchMember | None = None) -> Receipt:
    started = time.perf_counter()
    job = attempt.job
    job_id = job.job_id
    input_file = job.input_file
    stager: sinks.JobStager | PreviewStager | None = None
    source_hash: str | None = None
    phase = "load"  # "load": the plugin itself is unusable, whatever the input file
    try:
        loaded = _load(job)
        phase = "run"
        source_hash = lineage_mod.hash_file(input_file)
        version = job.parser_version or loaded.spec.version
        lineage = lineage_mod.Lineage(
            source_hash=source_hash,
            job_id=job_id,
            processed_at=_job_timestamp(job),
            parser_version=version,
        )
        if member is not None:
            member.lineage = lineage
        ctx = plugins.JobContext(
            job_id=job_id,
            input_path=input_file,
            source_hash=source_hash,
            plugin_name=loaded.spec.name,
            parser_version=version,
            attempt=attempt.attempt,
            # A name taken from the file name is user data (tapes hash it): keep it out of
            # the logger's name too, so host logs and support bundles do not carry it.
            logger=logging.getLogger("casparian_nb.plugin" + (
                f".{loaded.spec.name}" if loaded.spec.name_declared else "")),
        )
        routing = sinks.SinkRouting.parse(job.sink)  # parsed once per spelling
        staging_root = attempt.staging_root
        offsets: dict[str, int] = {}
        quarantined = 0
        check = contracts.JobCheck(loaded.spec.contracts, job.quarantine or loaded.spec.quarantine)
        for out in plugins.call_parse(loaded, input_file, ctx):
            table_name = routing.sink_for(out.name).table_for(out.name, out.table)
            try:
                split = lineage_mod.split_rows(out.name, check.batch(out.name, out.data))
            except LineageError as exc:  # name the plugin that broke the rule
                raise LineageError(f"{loaded.spec.path}: {exc}") from exc
            offset = offsets.get(out.name, 0)
            offsets[out.name] = offset + out.data.num_rows
            check.count(out.name, split.data.num_rows - split.bad_rows, split.bad_rows)
            quarantined += split.bad_rows
            if member is not None:  # stamped with the rest of its batch (_hostbatch.py)
                member.add(out.name, table_name, split, offset)
                continue
            if stager is None:  # created on the first output: a job with none touches no disk
                stager = (sinks.JobStager(staging_root, job_id, routing)
                          if attempt.preview_rows is None else PreviewStager(attempt.preview_rows))
            valid, bad = lineage_mod.stamp_rows([(split, lineage, offset)])
            stager.write(out.name, table_name, valid)
            if bad is not None and bad.num_rows:
                stager.write(quarantine_name(out.name), quarantine_name(table_name), bad)
        check.finish()  # over the quarantine limit: fail, so the except below discards all
        if attempt.preview_rows is not None:
            return preview_receipt(job_id, stager, source_hash, quarantined, started)
        if member is not None:  # its rows join the batch's staging (or are staged alone)
            rows = {o: n for o, n in member.rows.items() if not o.endswith(QUARANTINE_SUFFIX)}
            return Receipt(job_id=job_id, status=ReceiptStatus.SUCCESS, source_hash=source_hash,
                           rows=rows, quarantine_rows=quarantined,
                           duration_ms=(time.perf_counter() - started) * 1000.0)
        assert not isinstance(stager, PreviewStager)
        staged = stager.close(sync=attempt.sync_staging) if stager is not None else sinks.StagedJob(
            job_id, str(routing), _staging_dir(attempt), [])
        rows = {o.output: o.rows for o in staged.outputs if not o.output.endswith("_quarantine")}
        return Receipt(job_id=job_id, status=ReceiptStatus.SUCCESS, source_hash=source_hash,
                       staged=staged.to_dict(), rows=rows, quarantine_rows=quarantined,
                       duration_ms=(time.perf_counter() - started) * 1000.0)
    except BaseException as exc:  # a plugin may raise anything, SystemExit included
        if stager is not None:
            stager.discard()
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Receipt(job_id=job_id, status=ReceiptStatus.FAILED, source_hash=source_hash,
                       error=error_payload(exc, input_file=input_file, phase=phase),
                       duration_ms=(time.perf_counter() - started) * 1000.0)


def _staging_dir(attempt: HostJob, job_id: str | None = None) -> str:
    """The job's (or ``job_id``'s) staging directory (``JobStager.staging_dir``), as text."""
    return os.path.join(os.path.abspath(attempt.staging_root),
                        sinks.job_dirname(job_id or attempt.job.job_id))


def _job_timestamp(job: JobSpec) -> datetime:
    """One ``_cf_processed_at`` per job: the submitter's timestamp when it set one."""
    if job.processed_at:
        return datetime.fromisoformat(job.processed_at.replace("Z", "+00:00")).astimezone(UTC)
    return datetime.now(UTC)


def serve(conn: Connection) -> None:
    """Answer job requests until told to exit or the parent closes the pipe."""
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(HostJob | HostBatch | HostExit)
    conn.send_bytes(encoder.encode(HostReady(pid=os.getpid())))
    while True:
        try:
            msg = decoder.decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if isinstance(msg, HostExit):
            return
        global _CURRENT_STAGING
        if isinstance(msg, HostBatch):
            try:
                last = execute_batch(msg, lambda r: conn.send_bytes(encoder.encode(r)))
                conn.send_bytes(encoder.encode(last))
            except (BrokenPipeError, OSError):
                return  # the worker is gone: _drop_current_staging runs as the host exits
            _CURRENT_STAGING = None
            continue
        _CURRENT_STAGING = _staging_dir(msg)
        try:
            result = execute_job(msg)
        except MemoryError:
            error = msgspec.structs.replace(error_payload(MemoryError()), traceback="")
            result = Receipt(job_id=msg.job.job_id, status=ReceiptStatus.FAILED, error=error)
        try:
            conn.send_bytes(encoder.encode(result))
        except (BrokenPipeError, OSError):
            return  # the worker is gone: _drop_current_staging runs as the host exits
        # Delivered: from here the staged outputs are the worker's (and the committer's).
        _CURRENT_STAGING = None


def _drop_current_staging() -> None:
    """The worker is gone: nobody will receive this job's outputs. Remove what it staged
    (never a directory with a promotion under way: ``sinks.discard`` refuses those)."""
    path = _CURRENT_STAGING
    if path is not None:
        sinks.discard(path)


def _warm_up(plugin_path: str | None) -> None:
    """Load the plugin the pool's hosts will run (a standalone run knows it) before reporting
    ready, so its imports overlap the run's planning instead of delaying its first job.

    A plugin that fails to load here is left for its first job, which reports the error.
    """
    if plugin_path is None:
        return
    try:
        spec = plugins.inspect_plugin(plugin_path)
        _PLUGIN_CACHE.setdefault(spec.source_hash, plugins.load_plugin(spec))
    except Exception:  # reported by the first job, in its receipt
        logging.getLogger(__name__).debug("warm-up load of %s failed", plugin_path,
                                          exc_info=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m casparian_nb.worker.host")
    parser.add_argument("--fd", type=int, required=True, help="socket fd shared with the parent")
    parser.add_argument("--parent", type=int, default=os.getppid())
    parser.add_argument("--memory-limit-mb", type=int, default=0)
    parser.add_argument("--warm", default=None, help="the plugin to load before the first job")
    args = parser.parse_args(argv)
    # No host outlives its worker, nor finishes work nobody will receive (module docstring).
    die_with_parent(args.parent)
    if not exit_with_parent(args.parent, before_exit=_drop_current_staging):
        return 0  # the worker died before we even started
    limit_memory(args.memory_limit_mb)
    nice_own_session()  # the worker's nice, inherited, counts for our own session too
    # Plugin logging (ctx.logger, ctx.log) goes to our stderr: while a job runs, into that
    # job attempt's own log (worker/_capture.py); between jobs, into this host's log file.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    # Plugins print; keep their output off the control pipe (stdout is the host log file).
    sys.stdin.close()
    # Line by line, so prints and log records keep their order in a job's log; set once
    # here rather than around every job (worker/_capture.py).
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    _warm_up(args.warm)
    serve(Connection(args.fd))
    return 0


def _exit_now(code: int) -> NoReturn:
    """Exit without tearing the interpreter down: with pyarrow and pandas loaded that takes
    ~80-120 ms, which a run or a worker that stops waits for (issue 18). ``atexit`` handlers
    (a plugin's among them) still run and stdio is flushed, as at a normal exit."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())

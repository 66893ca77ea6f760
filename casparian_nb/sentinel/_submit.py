"""``SubmitJobs`` and ``RegisterPlugin``: plugin checks, input hashing, incremental skips.

A submission resolves and inspects the plugin, enforces the trust policy before anything runs,
hashes every input, computes the output plan once (:mod:`casparian_nb.plan`) and skips inputs
whose every planned output is already materialized (F4). What remains is inserted as QUEUED rows
and handed to the state machine as :class:`JobRec` objects, each with its
:class:`~casparian_nb.protocol.JobSpec`: built here, once, and sent unchanged to the worker.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from .. import contracts, lineage, plan, plugins, sinks
from .._inputs import expand_inputs
from ..config import Settings
from ..errors import PluginError
from ..protocol import (
    EventName,
    InputDecision,
    JobSpec,
    PluginRegistered,
    QuarantinePolicy,
    SkippedInput,
    SubmitJobs,
)
from ..store import SKIPPED_REASON, STALE_REASON, NewJob, StateStore
from .state import JobRec, plugin_name_fields

__all__ = ["SubmitHandler", "SubmitOutcome", "job_resources", "job_spec_from_row"]


@dataclass
class SubmitOutcome:
    submission_id: str
    job_ids: list[int] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    records: list[JobRec] = field(default_factory=list)
    events: list[tuple[EventName, dict[str, Any]]] = field(default_factory=list)


def job_spec_from_row(row: dict[str, Any], plugin_path: str) -> JobSpec:
    """The :class:`JobSpec` of a job the state DB holds (a sentinel restart), made from the
    columns its submission filled in — the same fields :meth:`SubmitHandler.submit` set.

    The columns a submission's jobs share are interned: a restart with 100,000 queued jobs
    then holds each plugin name, hash and sink once, as the submission itself did.
    """
    return JobSpec(
        job_id=str(row["id"]), input_file=str(row["input_file"]), plugin_path=plugin_path,
        plugin_name=_shared(row["plugin_name"]) or "",
        plugin_name_declared=name_declared(row, plugin_path),
        plugin_source_hash=_shared(row.get("parser_fingerprint")),
        parser_version=_shared(row.get("parser_version")), sink=_shared(row.get("sink_uri")) or "",
        mode=_shared(row.get("sink_mode")) or sinks.SinkMode.APPEND.value,
        submission_id=_shared(row.get("submission_id")), timeout_s=row.get("timeout_s"),
        quarantine=_policy(row.get("quarantine_json")),
        resources=_resources(row.get("resources_json")),
    )  # fmt: skip


@lru_cache(maxsize=64)
def _policy(text: str | None) -> QuarantinePolicy | None:
    """A submission's stored quarantine limits; one object per distinct text, like
    :func:`_shared`."""
    return None if text is None else msgspec.json.decode(text, type=QuarantinePolicy)


def _shared(value: object) -> str | None:
    return None if value is None else sys.intern(str(value))


def name_declared(row: dict[str, Any], plugin_path: str) -> bool:
    """Whether a job's ``plugin_name`` is the plugin's declared ``name`` (readable on tapes)
    rather than its file stem (user data: tapes hash it).

    A submission knows (``row["plugin_name_declared"]``). A job row reloaded after a sentinel
    restart does not: the state DB has no column for it. Then a name that differs from the
    registered plugin file's stem cannot have come from it, so it was declared; a name equal
    to the stem is looked up in that file while it still holds the submitted source (same
    sha256). Without that evidence (no path, file changed or gone) the name counts as the
    file's: redacting a declared name is harmless, keeping a file name would leak it.
    """
    flag = row.get("plugin_name_declared")
    if isinstance(flag, bool):
        return flag
    if not plugin_path:
        return False
    if str(row.get("plugin_name") or "") != Path(plugin_path).stem:
        return True
    return _declared_in_file(plugin_path, row.get("parser_fingerprint"))


@lru_cache(maxsize=256)
def _declared_in_file(path: str, fingerprint: str | None) -> bool:
    # Cached: a restart rebuilds the spec of every queued job (up to 100,000 of one plugin).
    if not fingerprint:
        return False
    try:
        spec = plugins.inspect_plugin(path)
    except Exception:  # unreadable, gone, no longer a valid plugin: no evidence either way
        return False
    return spec.source_hash == fingerprint and spec.name_declared


@lru_cache(maxsize=64)
def _resources(text: str | None) -> dict[str, float] | None:
    """A job's stored resource hints; one dict per distinct text (never mutated)."""
    return None if text is None else msgspec.json.decode(text, type=dict[str, float])


def _expand(specs: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The input files of a submission, as :func:`expand_inputs` finds them, and the sizes
    learnt on the way.

    What the CLI and the notebook send — absolute, normalised paths of existing files — costs
    one ``stat`` each (100,000 files in a submit); anything else (directories, globs, relative
    or odd paths, missing files) goes through :func:`expand_inputs` and its error messages.
    """
    out: list[str] = []
    sizes: dict[str, int] = {}
    for spec in specs:
        text = os.fspath(spec)
        if not text.startswith("/") or glob.has_magic(text) or os.path.normpath(text) != text:
            return [str(p) for p in expand_inputs(specs)], {}
        try:
            st = os.stat(text)
        except OSError:
            return [str(p) for p in expand_inputs(specs)], {}
        if not stat.S_ISREG(st.st_mode):
            return [str(p) for p in expand_inputs(specs)], {}
        if text not in sizes:
            sizes[text] = st.st_size
            out.append(text)
    return out, sizes


#: Hash small inputs with a small read buffer: allocating hash_file's default 1 MiB buffer
#: is most of the cost of hashing a 1 KB file (~30 us of ~40; 100,000 of them per submit).
_SMALL = 1 << 20


def _hash(path: str, size: int | None) -> str:
    if size is not None and size < _SMALL:
        return lineage.hash_file(path, chunk=1 << 16)
    return lineage.hash_file(path)


def job_resources(plugin: dict[str, float] | None,
                  submitted: dict[str, float] | None) -> dict[str, float] | None:
    """What each job of a submission needs: the plugin's ``resources``, updated with the
    submission's (checked: a one-line ConfigError for a bad one); None for none."""
    merged = {**(plugin or {}), **(plugins.check_resources(submitted) if submitted else {})}
    return merged or None


class SubmitHandler:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def _plugin(self, ref: str) -> tuple[plugins.PluginSpec, str, int]:
        # Clients resolve a user's path locally and send it absolute; anything else that comes
        # over the wire is a plugin *name* and must stay under <home>/plugins (F12).
        path = plugins.resolve_plugin_path(ref, self.settings.plugins_dir,
                                           named_only=not Path(ref).is_absolute())
        spec = plugins.inspect_plugin(path)
        trust = plugins.check_trust(spec, self.settings.trust)
        plugin_id = self.store.register_plugin(
            spec.name, spec.version, spec.source_hash, source=spec.source, path=str(spec.path),
            trust_status=trust, manifest=spec.manifest, default_output=spec.default_output)
        return spec, trust, plugin_id

    def register(self, ref: str) -> PluginRegistered:
        spec, trust, plugin_id = self._plugin(ref)
        return PluginRegistered(plugin_id=plugin_id, name=spec.name, version=spec.version,
                                source_hash=spec.source_hash, trust=trust)

    def submit(self, request: SubmitJobs, now: float) -> SubmitOutcome:
        spec, _trust, plugin_id = self._plugin(request.plugin)
        # One URI, or a routing of outputs to sinks (its canonical text travels in JobSpec.sink
        # and the sink_uri column); output_plan refuses a mapping that does not fit the plugin.
        sink = sinks.SinkRouting.parse(request.sink or self.settings.effective_default_sink)
        mode = sinks.SinkMode.parse(request.mode or sinks.SinkMode.APPEND)
        files, sizes = _expand(request.inputs)
        if not files:
            raise PluginError("no input files given")
        out = SubmitOutcome(request.submission_id or uuid.uuid4().hex[:16])
        targets = plan.output_plan(manifest=spec.manifest, default_output=spec.default_output,
                                   sink_uri=str(sink), sink_mode=mode.value)
        plan_json = plan.plan_to_json(targets)
        force = request.force
        timeout = request.timeout
        # checked here too: a client other than ours may send any numbers
        policy = contracts.quarantine_policy(
            None if request.quarantine is None else msgspec.structs.asdict(request.quarantine))
        policy_json = msgspec.json.encode(policy).decode() if policy is not None else None
        resources = job_resources(spec.resources, request.resources)
        resources_json = msgspec.json.encode(resources).decode() if resources else None
        priority = request.priority

        version = plan.declared_version(spec.version, spec.version_declared)
        key_version = plan.key_version(version, spec.source_hash)
        todo: list[NewJob] = []
        skip: list[NewJob] = []
        stale: list[NewJob] = []
        hashes: list[tuple[NewJob, list[str]]] = []
        sink_uri, timeout_s = str(sink), float(timeout) if timeout else None
        for path in files:
            source_hash = _hash(path, sizes.get(path))
            job = NewJob(plugin_name=spec.name, input_file=path,
                         submission_id=out.submission_id, plugin_id=plugin_id,
                         parser_version=version, parser_fingerprint=spec.source_hash,
                         source_hash=source_hash, sink_uri=sink_uri, sink_mode=mode.value,
                         plan_json=plan_json, priority=priority, timeout_s=timeout_s,
                         quarantine_json=policy_json, resources_json=resources_json)
            hashes.append((job, plan.plan_keys(targets, source_hash, spec.name, key_version)))
        recorded: dict[str, str | None] = {}
        if not force:
            recorded = self.store.materialized_by(k for _, keys in hashes for k in keys)
        for job, keys in hashes:
            decision = plan.decide(keys, recorded, spec.source_hash, force=force)
            if decision == InputDecision.RUN:
                todo.append(job)
                continue
            (stale if decision == InputDecision.STALE else skip).append(job)

        with self.store.transaction():
            ids = self.store.insert_jobs(todo) if todo else []
            skipped_ids = self.store.insert_skipped(skip) if skip else []
            stale_ids = self.store.insert_skipped(stale, reason=STALE_REASON) if stale else []
        name_fields: dict[str, Any] = {}
        for job_id, job in zip(ids, todo, strict=True):
            job_spec = JobSpec(
                job_id=str(job_id), input_file=job.input_file, plugin_path=str(spec.path),
                plugin_name=spec.name, plugin_name_declared=spec.name_declared,
                plugin_source_hash=spec.source_hash, parser_version=version,
                sink=sink_uri, mode=mode.value, submission_id=out.submission_id,
                timeout_s=timeout_s, quarantine=policy, resources=resources,
            )  # fmt: skip
            name_fields = name_fields or plugin_name_fields(job_spec)
            out.records.append(JobRec(id=job_id, priority=priority, spec=job_spec,
                                      timeout_s=timeout_s, plan_json=plan_json,
                                      input_file=job.input_file))
            out.events.append((EventName.JOB_QUEUED, {
                "job_id": job_id, **name_fields, "plugin_version": version,
                "input_file": job.input_file, "priority": priority, "sink": job.sink_uri,
                **({"forced": True} if force else {})}))
        for job_id, job, is_stale in [*((i, j, False) for i, j in zip(skipped_ids, skip, strict=True)),
                                      *((i, j, True) for i, j in zip(stale_ids, stale, strict=True))]:
            reason = STALE_REASON if is_stale else SKIPPED_REASON
            out.skipped.append(SkippedInput(job_id=job_id, input_file=job.input_file,
                                            reason=reason, stale=is_stale))
            out.events.append((EventName.JOB_SKIPPED, {"job_id": job_id, "input_file": job.input_file,
                                                       "reason": reason,
                                                       **({"stale": True} if is_stale else {})}))
        out.job_ids = ids
        return out

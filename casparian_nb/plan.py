"""Output plans and materialization keys: the ONE place incremental keys are computed (F4).

The original computed keys twice (CLI enqueue and sentinel conclude) from separately resolved
sink configs, with URIs differing by a trailing slash and schema hashes from two different
functions, so the two sides disagreed and files were reprocessed forever (§13.12). Here:

1. At submit, :func:`output_plan` resolves the plugin's manifest and the sink into a list of
   :class:`OutputTarget` (one per expected output), stored with each job as ``plan_json``.
2. The submit-time skip check and the post-success recording both call :func:`plan_keys` on
   that same stored plan, so they cannot disagree.

Keys are blake3 hex digests over their parts, each part followed by the byte 0x1F (as in the
original)::

    schema_hash       = blake3(canonical JSON of the output's manifest "columns")   ("" if none)
    target_key        = H(output, canonical sink URI, mode, table, schema_hash)
    materialization_key = H(source_hash, plugin_name, key_version, target_key)

``key_version`` is the declared ``version``, or ``source:<plugin source hash>`` for a plugin
that declares none (F15): editing an unversioned parser re-runs its files. A versioned one is
trusted to bump its version; an edit under the same version is reported as *stale*
(:func:`decide`), and ``force`` re-runs.

Changing the plugin version, the sink URI, the mode or an output's declared schema therefore
changes the keys and re-runs the files; spelling the same sink differently does not.

With a sink mapping (:class:`~casparian_nb.sinks.SinkRouting`) each declared output's target
is keyed by *its own* sink, so moving one output to another sink re-runs the files for that
output's sake and leaves a single-sink job's keys what they were. The one target of a
plugin without a manifest is keyed by the routing's canonical text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from blake3 import blake3

from .errors import OutputNameError
from .protocol import InputDecision

__all__ = [
    "ALL_OUTPUTS",
    "OutputTarget",
    "canonical_sink_uri",
    "decide",
    "declared_version",
    "key_version",
    "materialization_key",
    "output_plan",
    "plan_from_json",
    "plan_keys",
    "plan_to_json",
    "schema_hash",
    "stale_warning",
]

#: Output name of the single target of a plugin without a manifest: "whatever it produced".
ALL_OUTPUTS = "*"

_SEP = b"\x1f"
_OUTPUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class OutputTarget:
    """One expected output of a job, resolved against its sink."""

    #: Output name from the manifest, or :data:`ALL_OUTPUTS` without a manifest.
    output: str
    #: Table the output lands in (the manifest's ``table``, the sink's ``?table=``, or the name).
    table: str
    #: blake3 of the declared columns' canonical JSON; "" when none are declared.
    schema_hash: str
    #: Identity of (output, sink, mode, table, schema): part of every materialization key.
    target_key: str
    #: The output's own canonical sink (a routing's text for :data:`ALL_OUTPUTS`).
    sink: str = ""


def _digest(*parts: str) -> str:
    h = blake3()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(_SEP)
    return h.hexdigest()


def canonical_sink_uri(sink_uri: str, *, base: str | os.PathLike[str] | None = None) -> str:
    """The one spelling of a sink (absolute path, lower-case scheme, no trailing slash).

    Relative paths resolve against ``base`` (default: the current directory), so callers
    that accept a user's relative URI should canonicalise it where it was typed.
    """
    # Imported here so that importing the plan module stays cheap for plugin hosts.
    from .sinks.uri import parse_sink_uri

    return str(parse_sink_uri(sink_uri, base=base))


def _canonical_mode(sink_mode: Any) -> str:
    from .sinks.uri import SinkMode

    return SinkMode.parse(sink_mode).value


def schema_hash(columns: Any) -> str:
    """blake3 hex of the canonical JSON (sorted keys, no spaces) of declared ``columns``;
    "" for none. Column order is kept: it is part of the schema."""
    if not columns:
        return ""
    text = json.dumps(columns, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return blake3(text.encode("utf-8")).hexdigest()


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _OUTPUT_NAME.match(name):
        raise OutputNameError(f"{what} {name!r} is not a valid output name ([a-z][a-z0-9_]*)")
    return name


def output_plan(
    *,
    manifest: Mapping[str, Any] | None,
    default_output: str,
    sink_uri: str,
    sink_mode: str,
    base: str | os.PathLike[str] | None = None,
) -> list[OutputTarget]:
    """Resolve a plugin's expected outputs against a sink into targets, sorted by output.

    ``manifest`` is the plugin's literal ``outputs`` dict (``{name: {"columns": [...],
    "table"?: str}}``). With a manifest: one target per declared output (quarantine outputs
    are never targets), each against its own sink. Without one (None or empty): a single
    :data:`ALL_OUTPUTS` target whose table is where a bare table lands (``default_output``)
    and whose schema hash is "". ``sink_uri`` is a URI or a routing's canonical text; a
    mapping that names an undeclared output, or leaves a declared one without a sink, raises
    :class:`~casparian_nb.errors.SinkRoutingError`.
    """
    from .sinks.routing import SinkRouting

    routing = SinkRouting.parse(sink_uri, base=base)
    mode = _canonical_mode(sink_mode)
    _check_name(default_output, "default output")

    specs: list[tuple[str, str, str, str]] = []  # (output, table, schema_hash, sink)
    if not manifest:
        sink = routing.route(default_output)
        bare = sink.table_for(default_output) if sink is not None else default_output
        specs.append((ALL_OUTPUTS, bare, "", str(routing)))
    else:
        for name in sorted(manifest):
            _check_name(name, "manifest output")
        routing.check_outputs(list(manifest))
        for name in sorted(manifest):
            spec = manifest[name]
            spec = spec if isinstance(spec, Mapping) else {}
            table = spec.get("table")
            if table is not None and not isinstance(table, str):
                raise OutputNameError(f"manifest output {name!r}: table must be a string")
            sink = routing.sink_for(name)
            specs.append((name, sink.table_for(name, table), schema_hash(spec.get("columns")),
                          str(sink)))
    return [
        OutputTarget(output, table, shash, _digest(output, uri, mode, table, shash), uri)
        for output, table, shash, uri in specs
    ]


def materialization_key(
    source_hash: str, plugin_name: str, parser_version: str | None, target_key: str
) -> str:
    """Key of "this input, through this plugin version, landed in this target"."""
    return _digest(source_hash, plugin_name, parser_version or "", target_key)


def plan_keys(
    plan: Iterable[OutputTarget],
    source_hash: str,
    plugin_name: str,
    parser_version: str | None,
) -> list[str]:
    """Materialization keys of every target of ``plan`` for one input file, in plan order.

    An input is skipped only when all of them are already recorded.
    """
    return [
        materialization_key(source_hash, plugin_name, parser_version, t.target_key) for t in plan
    ]


def plan_to_json(plan: Iterable[OutputTarget]) -> str:
    """Compact JSON list of the targets (stored in ``cf_processing_queue.plan_json``)."""
    return json.dumps([asdict(t) for t in plan], separators=(",", ":"))


def plan_from_json(text: str | list[Any] | None) -> list[OutputTarget]:
    """Inverse of :func:`plan_to_json`; also takes the already-decoded list (as job dicts
    from the store carry it) and None (no plan: [])."""
    if text is None or text == "":
        return []
    items = json.loads(text) if isinstance(text, str) else text
    if not isinstance(items, list):
        raise ValueError(f"output plan must be a JSON list, got {type(items).__name__}")
    plan = []
    for item in items:
        try:
            plan.append(OutputTarget(
                output=str(item["output"]), table=str(item["table"]),
                schema_hash=str(item["schema_hash"]), target_key=str(item["target_key"]),
                sink=str(item.get("sink") or ""),
            ))  # fmt: skip
        except (KeyError, TypeError):
            raise ValueError(f"malformed output plan entry {item!r}") from None
    return plan


def declared_version(version: str, version_declared: bool) -> str | None:
    """The version a job records: the plugin's declared ``version``, or None without one.

    A job without a declared version is keyed by its source instead (:func:`key_version`),
    so an edited parser is never skipped as "already materialized" (F15).
    """
    return version if version_declared else None


def key_version(parser_version: str | None, parser_fingerprint: str | None) -> str:
    """The version part of a materialization key: the declared version, else the plugin
    source's hash. Submission, completion and standalone runs all key through this."""
    if parser_version:
        return parser_version
    return f"source:{parser_fingerprint or ''}"


def decide(
    keys: Sequence[str],
    recorded: Mapping[str, str | None],
    parser_fingerprint: str | None,
    *,
    force: bool = False,
) -> InputDecision:
    """The one skip rule (sentinel submissions and standalone runs): what to do with an
    input whose planned materialization keys are ``keys``.

    ``recorded`` maps the keys already materialized to the source hash of the plugin that
    materialized them (None when unknown). RUN unless every key is recorded (or ``force``);
    then STALE when any of them was made by a different source of the same version, else SKIP.
    """
    if force or not keys or any(k not in recorded for k in keys):
        return InputDecision.RUN
    for k in keys:
        made_by = recorded[k]
        if made_by is not None and parser_fingerprint and made_by != parser_fingerprint:
            return InputDecision.STALE
    return InputDecision.SKIP


def stale_warning(count: int, plugin_name: str, version: str | None, *, flag: str) -> str:
    """The one warning line for inputs skipped as stale; ``flag`` is how to force
    (``--force`` on the CLI, ``force=True`` in Python)."""
    files = "1 file was" if count == 1 else f"{count} files were"
    return (f"{files} processed by {plugin_name} {version or ''} with a different source; "
            f"use {flag} to re-run").replace("  ", " ")

"""The plugin API (what a user writes) and how the host inspects, trusts, loads and calls it.

A plugin is one ``.py`` file with a module-level ``parse(path, ctx=None)`` (DESIGN §3.1)::

    name = "orders"; version = "1.0.0"; TOPIC = "orders"
    outputs = {"orders": {"columns": [{"name": "id", "type": "int64"}]}}
    def parse(path, ctx=None):
        return df                    # or [Output(...), ...], None, or ``yield`` batches

Pipeline used by the host: :func:`resolve_plugin_path` (F12) → :func:`inspect_plugin` (static,
nothing executed) → :func:`check_trust` (F13) → :func:`load_plugin` → :func:`call_parse`, which
yields :class:`Output` objects whose ``data`` is always a ``pyarrow.Table``.

The security rules — path confinement (F12) and signatures/trust policy (F13) — live in
:mod:`casparian_nb._signing` and are re-exported here. pyarrow and cryptography are imported
lazily so that the sentinel and CLI, which only resolve and inspect plugins, do not pay for them.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import hashlib
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import contracts
from ._signing import (
    check_trust,
    generate_signing_key,
    resolve_plugin_path,
    sign_plugin,
    verify_signature,
)
from .errors import (
    CasparianError,
    ConfigError,
    OutputNameError,
    PermanentError,
    PluginError,
    PluginNotFoundError,
    PluginReturnError,
    TransientError,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import TrustSettings
    from .protocol import OutputContract, QuarantinePolicy

__all__ = [
    "OUTPUT_NAME_RE", "JobContext", "LoadedPlugin", "Output", "PluginSpec", "call_parse",
    "check_job_trust", "check_resources", "check_trust", "generate_signing_key", "inspect_plugin", "load_plugin",
    "resolve_plugin_path", "sign_plugin", "to_arrow", "verify_signature",
]

#: Output (and ``Output.table``) names: a lowercase letter, then lowercase letters/digits/_.
OUTPUT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_RULE = "[a-z][a-z0-9_]* (a lowercase letter, then lowercase letters, digits or '_')"
_IDENT = re.compile(r"[^0-9A-Za-z_]")  # module names stay plain ASCII identifiers
_SHAPES = "return a table, a list of Output, None, or yield Output batches"


def _one_line(text: object) -> str:
    """Collapse whitespace: every error message this module raises is a single line."""
    return " ".join(str(text).split())


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not OUTPUT_NAME_RE.fullmatch(value):
        raise OutputNameError(f"{what} {value!r} is invalid: must match {_RULE}")


@dataclass(frozen=True)
class Output:
    """One named output of ``parse()``: ``Output("orders", df, table="orders_v2")``.

    ``data`` is a pandas/polars DataFrame or pyarrow Table/RecordBatch; ``table`` optionally
    overrides the destination table name (DuckDB sinks). Names follow :data:`OUTPUT_NAME_RE`.
    """

    name: str
    data: Any
    table: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "output name")
        if self.table is not None:
            _check_name(self.table, f"table name of output '{self.name}'")
        if self.data is None:
            raise PluginError(f"output '{self.name}': data is None; pass a table")


@dataclass(frozen=True)
class PluginSpec:
    """What :func:`inspect_plugin` learns from a plugin file without executing it."""

    path: Path                          #: resolved path of the ``.py`` file
    name: str                           #: module constant ``name``, else the file stem
    version: str                        #: module constant ``version``, else "0.0.0"
    default_output: str                 #: output of a bare table: TOPIC, else name, else "output"
    manifest: dict[str, dict[str, Any]] | None  #: literal ``outputs``/``OUTPUTS``, if any
    source: str                         #: UTF-8 source text (``source.encode()`` = file bytes)
    source_hash: str                    #: sha256 hex of the source bytes
    takes_ctx: bool                     #: parse() accepts a second positional argument
    #: ``name`` came from a ``name = "..."`` constant. When False it is the file stem: user
    #: data that tape redaction hashes, unlike a name the author chose.
    name_declared: bool
    #: The schema contract of each declared output (:mod:`casparian_nb.contracts`); None
    #: without a manifest (nothing is checked).
    contracts: dict[str, OutputContract] | None = None
    #: The plugin's ``quarantine = {"max_pct": .., "max_rows": ..}`` limits, if it sets them.
    quarantine: QuarantinePolicy | None = None
    #: ``version`` came from a ``version = "..."`` constant. Without one, incremental keys
    #: use the source hash instead (:func:`casparian_nb.plan.declared_version`, F15).
    version_declared: bool = False
    #: The plugin's ``resources = {"GPU": 1}``: what one job needs on a Dask worker
    #: (``Client.submit(resources=)``); None when it sets none.
    resources: dict[str, float] | None = None


# -- static inspection ----------------------------------------------------------------------
def _read_source(path: Path) -> tuple[bytes, str]:
    if path.suffix != ".py":
        raise PluginError(f"{path}: not a .py file")
    if not path.is_file():
        if not path.exists():
            raise PluginNotFoundError(f"plugin file not found: {path}")
        raise PluginError(f"{path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PluginError(f"{path}: cannot read: {_one_line(exc.strerror or exc)}") from exc
    try:
        # Strict UTF-8 makes ``source.encode()`` byte-identical to the file, so hashes and
        # signatures can be checked from the spec alone.
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PluginError(f"{path}: source is not UTF-8 (byte {exc.start})") from exc


def _literal(path: Path, node: ast.AST, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise PluginError(
            f"{path}: line {getattr(node, 'lineno', '?')}: {what} must be a literal "
            "(it is read without running the plugin)"
        ) from exc


def _metadata(tree: ast.Module) -> dict[str, ast.expr]:
    """Last module-level assignment of each metadata constant (Python's own semantics)."""
    wanted = {"name", "version", "TOPIC", "outputs", "OUTPUTS", "quarantine", "resources"}
    found: dict[str, ast.expr] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        for t in targets:
            if isinstance(t, ast.Name) and t.id in wanted:
                found[t.id] = value
    return found


def _manifest(path: Path, node: ast.expr) -> dict[str, dict[str, Any]]:
    value = _literal(path, node, "outputs")
    line = node.lineno
    if not isinstance(value, dict):
        raise PluginError(f"{path}: line {line}: outputs must be a dict of output name -> spec")
    for key, spec in value.items():
        try:
            _check_name(key, "output name")
        except OutputNameError as exc:
            raise OutputNameError(f"{path}: line {line}: outputs: {exc}") from None
        if not isinstance(spec, dict):
            raise PluginError(f"{path}: line {line}: outputs[{key!r}] must be a dict")
        columns = spec.get("columns")
        names = [c.get("name") for c in columns if isinstance(c, dict)] \
            if isinstance(columns, list) else []
        # The reserved lineage namespace (F7), refused before the plugin ever runs.
        reserved = [n for n in names if isinstance(n, str) and n.startswith("_cf_")
                    and n != "_cf_row_error"]
        if reserved:
            raise PluginError(f"{path}: line {line}: outputs[{key!r}] declares column "
                              f"{reserved[0]!r}: columns starting with _cf_ are reserved for "
                              "lineage (only _cf_row_error may be emitted); rename it")
    return value


def check_resources(value: object) -> dict[str, float]:
    """``{"GPU": 1, "MEMORY": 8e9}``: resource names (non-empty text) to positive amounts;
    a one-line ConfigError otherwise."""
    if not isinstance(value, dict):
        raise ConfigError("resources must be a dict of resource name -> amount, "
                         "e.g. {'GPU': 1}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise ConfigError(f"resources: {name!r} is not a resource name")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not amount > 0:
            raise ConfigError(f"resources: {name}: the amount must be a positive number, "
                             f"not {amount!r}")
        out[name] = float(amount)
    return out


def _check_parse(path: Path, tree: ast.Module) -> bool:
    """Validate the module-level ``parse`` signature; return whether it takes ``ctx``."""
    defs = [s for s in tree.body
            if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name == "parse"]
    if not defs:
        raise PluginError(f"{path}: no module-level parse(path, ctx=None) function")
    fn = defs[-1]
    where = f"{path}: line {fn.lineno}: parse()"
    if isinstance(fn, ast.AsyncFunctionDef):
        raise PluginError(f"{where} must be a plain function, not async")
    a = fn.args
    positional = len(a.posonlyargs) + len(a.args)
    required = positional - len(a.defaults)
    if positional == 0 and a.vararg is None:
        raise PluginError(f"{where} takes no parameters; it must accept the input path")
    if required > 2:
        raise PluginError(f"{where} requires {required} arguments; use parse(path, ctx=None)")
    missing = [arg.arg for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None]
    if missing:
        raise PluginError(f"{where} has required keyword-only parameter(s) {', '.join(missing)}")
    return positional >= 2 or a.vararg is not None


def inspect_plugin(path: str | os.PathLike[str]) -> PluginSpec:
    """Read a plugin file statically (``ast``; nothing is executed) into a :class:`PluginSpec`.

    Raises a one-line :class:`PluginError` naming the file for a missing/non-``.py`` file, a
    syntax error (with its line), a missing or unusable ``parse``, or non-literal metadata;
    :class:`OutputNameError` for a bad output name in ``outputs`` or the default output.
    """
    p = Path(path).expanduser().resolve()
    raw, source = _read_source(p)
    try:
        tree = ast.parse(raw, filename=str(p))
    except SyntaxError as exc:
        raise PluginError(f"{p}: line {exc.lineno}: syntax error: {_one_line(exc.msg)}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. NUL bytes, deep nesting
        raise PluginError(f"{p}: cannot parse: {_one_line(exc)}") from exc
    takes_ctx = _check_parse(p, tree)
    meta = _metadata(tree)
    consts: dict[str, str] = {}
    for key in ("name", "version", "TOPIC"):
        if key in meta:
            value = _literal(p, meta[key], key)
            if not isinstance(value, str) or not value.strip() or not value.isprintable():
                raise PluginError(f"{p}: line {meta[key].lineno}: {key} must be a non-empty, "
                                  "single-line str")
            consts[key] = value
    if "outputs" in meta and "OUTPUTS" in meta:
        raise PluginError(f"{p}: defines both outputs and OUTPUTS; keep one")
    node = meta.get("outputs", meta.get("OUTPUTS"))
    manifest = _manifest(p, node) if node is not None else None
    declared: dict[str, OutputContract] | None = None
    quarantine: QuarantinePolicy | None = None
    policy = _literal(p, meta["quarantine"], "quarantine") if "quarantine" in meta else None
    try:
        if node is not None and manifest is not None:
            declared = contracts.parse_manifest(manifest)
        if "quarantine" in meta:
            node = meta["quarantine"]
            quarantine = contracts.quarantine_policy(policy)
    except PluginError as exc:
        raise PluginError(f"{p}: line {getattr(node, 'lineno', '?')}: {exc}") from None
    resources: dict[str, float] | None = None
    if "resources" in meta:
        try:
            resources = check_resources(_literal(p, meta["resources"], "resources"))
        except ConfigError as exc:
            raise PluginError(f"{p}: line {meta['resources'].lineno}: {exc}") from None
    default = consts.get("TOPIC", consts.get("name", "output"))
    if not OUTPUT_NAME_RE.fullmatch(default):
        source_of = "TOPIC" if "TOPIC" in consts else "name"
        raise OutputNameError(
            f"{p}: default output name {default!r} (from {source_of}) is invalid: must match "
            f"{_RULE}; set TOPIC to a valid output name"
        )
    return PluginSpec(
        path=p, name=consts.get("name", p.stem), version=consts.get("version", "0.0.0"),
        default_output=default, manifest=manifest, source=source,
        source_hash=hashlib.sha256(raw).hexdigest(), takes_ctx=takes_ctx,
        name_declared="name" in consts, version_declared="version" in consts,
        contracts=declared, quarantine=quarantine, resources=resources,
    )


# -- run time -------------------------------------------------------------------------------
# Sentinel default (typed as a Logger, unlike None): replaced per plugin in __post_init__.
# Made directly, not by getLogger, so no logger a caller passes in can be mistaken for it.
_UNSET_LOGGER = logging.Logger("casparian_nb.plugin.<unset>")


@dataclass
class JobContext:
    """Passed as ``ctx`` to ``parse(path, ctx)``. Plugins may read every field and log via
    ``ctx.log(...)`` or ``ctx.logger``; they must not mutate it (the host owns job identity and lineage).

    ``source_hash`` is the hash of the input file's bytes (same as the ``_cf_source_hash``
    lineage column); ``attempt`` counts from 1 and grows on transient retries.
    """

    job_id: str
    input_path: str
    source_hash: str
    plugin_name: str
    parser_version: str
    attempt: int = 1
    logger: logging.Logger = _UNSET_LOGGER

    def __post_init__(self) -> None:
        if self.logger is _UNSET_LOGGER:
            self.logger = logging.getLogger(f"casparian_nb.plugin.{self.plugin_name}")

    def log(self, message: object, *args: object) -> None:
        """Write one line to this job attempt's log (``ctx.logger.info``; see
        ``ctl.logs(job_id)`` / ``casparian job logs``)."""
        self.logger.info(str(message), *args)


@dataclass
class LoadedPlugin:
    """A plugin executed in its own fresh module; ``parse`` is its module-level function."""

    spec: PluginSpec
    parse: Callable[..., Any]
    module: types.ModuleType


def load_plugin(spec: PluginSpec) -> LoadedPlugin:
    """Execute the plugin's source in a fresh module and return its ``parse``.

    The bytes executed are re-read from ``spec.path`` and must still hash to
    ``spec.source_hash`` (what was inspected and trust-checked is what runs). The module is
    registered in ``sys.modules`` as ``casparian_plugin_<name>_<hash8>`` so dataclasses and
    pickling work; a failing import is removed again. Exceptions at import time become a
    :class:`PluginError` ("import failed: ..."), except ``PermanentError``/``TransientError``,
    which propagate so a plugin can still choose its retry behaviour.
    """
    path = spec.path
    raw, _ = _read_source(path)
    if hashlib.sha256(raw).hexdigest() != spec.source_hash:
        raise PluginError(f"{path}: changed on disk since inspection; inspect it again")
    mod_name = f"casparian_plugin_{_IDENT.sub('_', spec.name)}_{spec.source_hash[:8]}"
    module = types.ModuleType(mod_name)
    module.__file__ = str(path)
    previous = sys.modules.get(mod_name)
    sys.modules[mod_name] = module
    try:
        exec(compile(raw, str(path), "exec", dont_inherit=True), module.__dict__)
    except BaseException as exc:
        _forget(mod_name, previous)  # a half-executed module must not linger in sys.modules
        if isinstance(exc, PermanentError | TransientError) or not isinstance(exc, Exception):
            raise
        raise PluginError(f"{path}: import failed: {type(exc).__name__}: {_one_line(exc)}"
                          ) from exc
    parse = module.__dict__.get("parse")
    if not callable(parse):
        _forget(mod_name, previous)
        raise PluginError(f"{path}: parse is not callable after import")
    return LoadedPlugin(spec=spec, parse=parse, module=module)


def _forget(name: str, previous: types.ModuleType | None) -> None:
    if previous is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = previous


def _is_table_like(obj: object) -> bool:
    """Cheap duck-typed check; pandas/pyarrow are only consulted if already imported (an
    object of theirs implies they are), so a plugin host never imports them for nothing."""
    if hasattr(obj, "__arrow_c_stream__") or callable(getattr(obj, "to_arrow", None)):
        return True
    pa, pd = sys.modules.get("pyarrow"), sys.modules.get("pandas")
    if pa is not None and isinstance(obj, pa.Table | pa.RecordBatch):
        return True
    return pd is not None and isinstance(obj, pd.DataFrame)


def to_arrow(data: Any, *, output: str) -> pa.Table:
    """Convert a table-like to a ``pyarrow.Table``: pyarrow Table/RecordBatch, pandas
    DataFrame (index dropped), polars DataFrame (or anything with ``to_arrow()``), or any
    object with ``__arrow_c_stream__``. Anything else raises :class:`PluginReturnError`."""
    import pyarrow as pa

    try:
        if isinstance(data, pa.Table):
            return data
        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if "pandas" in sys.modules:
            import pandas as pd

            if isinstance(data, pd.DataFrame):
                return pa.Table.from_pandas(data, preserve_index=False)
        if callable(getattr(data, "to_arrow", None)):  # polars, and similar frames
            converted = data.to_arrow()
            if isinstance(converted, pa.RecordBatch):
                converted = pa.Table.from_batches([converted])
            if isinstance(converted, pa.Table):
                return converted
        if hasattr(data, "__arrow_c_stream__"):
            return pa.table(data)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise PluginReturnError(f"output '{output}': cannot convert {_type_name(data)} to "
                                f"Arrow: {type(exc).__name__}: {_one_line(exc)}") from exc
    raise PluginReturnError(f"output '{output}': expected a pandas/polars DataFrame or pyarrow "
                            f"Table, got {_type_name(data)}")


def _type_name(obj: object) -> str:
    """``DataFrame``, ``dict``, or ``list[DataFrame]`` / ``list[Output | str]`` for sequences."""
    name = type(obj).__qualname__
    if isinstance(obj, list | tuple) and obj:
        inner = sorted({type(x).__qualname__ for x in obj})
        name += f"[{' | '.join(inner)}]"
    return name


def _as_output(item: Any, default: str, where: Path, verb: str) -> Output:
    """One parse() result item as an Output with pyarrow data; errors name the plugin file."""
    try:
        if isinstance(item, Output):
            return dataclasses.replace(item, data=to_arrow(item.data, output=item.name))
        if _is_table_like(item):
            return Output(default, to_arrow(item, output=default))
    except PluginReturnError as exc:
        raise PluginReturnError(f"{where}: {exc}") from exc
    raise PluginReturnError(f"{where}: parse() {verb} {_type_name(item)}; {_SHAPES}")


def _stream(items: Iterable[Any], default: str, where: Path) -> Iterator[Output]:
    # Pull one item at a time so a generator plugin streams in bounded memory.
    for item in items:
        yield _as_output(item, default, where, "yielded")


def call_parse(plugin: LoadedPlugin, input_path: str, ctx: JobContext) -> Iterator[Output]:
    """Call ``parse`` now and return an iterator of :class:`Output` with pyarrow data.

    Accepted results: a table-like (one output named ``spec.default_output``), an ``Output``,
    a list/tuple of ``Output`` (possibly empty), ``None`` (no outputs), a
    ``pyarrow.RecordBatchReader`` (streamed batch by batch), or a generator/iterator of
    ``Output`` or table-likes, consumed lazily. Anything else raises
    :class:`PluginReturnError` naming the type. Exceptions from the plugin propagate unchanged
    (from this call, or while iterating a generator) so the host can classify them.
    """
    spec = plugin.spec
    result = plugin.parse(input_path, ctx) if spec.takes_ctx else plugin.parse(input_path)
    default, where = spec.default_output, spec.path
    pa = sys.modules.get("pyarrow")
    if result is None:
        return iter(())
    if isinstance(result, list | tuple) and all(isinstance(x, Output) for x in result):
        return _stream(result, default, where)
    if pa is not None and isinstance(result, pa.RecordBatchReader):
        return _stream(result, default, where)
    if isinstance(result, Output) or _is_table_like(result):
        return iter((_as_output(result, default, where, "returned"),))
    if isinstance(result, collections.abc.Iterator):
        return _stream(result, default, where)
    raise PluginReturnError(f"{where}: parse() returned {_type_name(result)}; {_SHAPES}")


def check_job_trust(plugin_path: str, source_hash: str | None, trust: TrustSettings,
                    trusted: dict[str, str]) -> None:
    """What a process that runs a dispatched job checks first (F13): the plugin file passes
    the trust policy and still has the source hash it was submitted with. ``trusted`` caches
    the verdict per source hash, so a plugin is inspected once per process."""
    key = source_hash or ""
    if key and key in trusted:
        return
    spec = inspect_plugin(plugin_path)
    trusted[spec.source_hash] = check_trust(spec, trust)
    if key and spec.source_hash != key:
        raise CasparianError(f"{spec.path}: plugin changed on disk since it was submitted")


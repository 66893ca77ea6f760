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
The static inspection (:class:`PluginSpec`, :func:`inspect_plugin`) is :mod:`._plugin_spec`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import logging
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._plugin_spec import (
    OUTPUT_NAME_RE,
    PluginSpec,
    check_name,
    check_resources,
    inspect_plugin,
    one_line,
    read_source,
)
from ._signing import (
    check_trust,
    generate_signing_key,
    resolve_plugin_path,
    sign_plugin,
    verify_signature,
)
from .errors import (
    CasparianError,
    PermanentError,
    PluginError,
    PluginReturnError,
    TransientError,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import TrustSettings

__all__ = [
    "OUTPUT_NAME_RE", "JobContext", "LoadedPlugin", "Output", "PluginSpec", "call_parse",
    "check_job_trust", "check_resources", "check_trust", "generate_signing_key", "inspect_plugin", "load_plugin",
    "resolve_plugin_path", "sign_plugin", "to_arrow", "verify_signature",
]

_IDENT = re.compile(r"[^0-9A-Za-z_]")  # module names stay plain ASCII identifiers
_SHAPES = "return a table, a list of Output, None, or yield Output batches"


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
        check_name(self.name, "output name")
        if self.table is not None:
            check_name(self.table, f"table name of output '{self.name}'")
        if self.data is None:
            raise PluginError(f"output '{self.name}': data is None; pass a table")


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
    raw, _ = read_source(path)
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
        raise PluginError(f"{path}: import failed: {type(exc).__name__}: {one_line(exc)}"
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
                                f"Arrow: {type(exc).__name__}: {one_line(exc)}") from exc
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


"""What a plugin file is, read statically: :func:`inspect_plugin` parses its source with
``ast`` (nothing is executed) into a :class:`PluginSpec` — its name, version, default output,
``outputs`` manifest and schema contracts, quarantine limits and resources — and refuses a
file it cannot use with one line naming the file (and the line).

The sentinel and the CLI only inspect plugins, so this imports nothing heavy. The public
names are re-exported by :mod:`casparian_nb.plugins`.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import contracts
from .errors import ConfigError, OutputNameError, PluginError, PluginNotFoundError

if TYPE_CHECKING:
    from .protocol import OutputContract, QuarantinePolicy

__all__ = ["OUTPUT_NAME_RE", "PluginSpec", "check_name", "check_resources", "inspect_plugin",
           "one_line", "read_source"]

#: Output (and ``Output.table``) names: a lowercase letter, then lowercase letters/digits/_.
OUTPUT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_RULE = "[a-z][a-z0-9_]* (a lowercase letter, then lowercase letters, digits or '_')"


def one_line(text: object) -> str:
    """Collapse whitespace: every error message this module raises is a single line."""
    return " ".join(str(text).split())


def check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not OUTPUT_NAME_RE.fullmatch(value):
        raise OutputNameError(f"{what} {value!r} is invalid: must match {_RULE}")


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



def read_source(path: Path) -> tuple[bytes, str]:
    if path.suffix != ".py":
        raise PluginError(f"{path}: not a .py file")
    if not path.is_file():
        if not path.exists():
            raise PluginNotFoundError(f"plugin file not found: {path}")
        raise PluginError(f"{path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PluginError(f"{path}: cannot read: {one_line(exc.strerror or exc)}") from exc
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
            check_name(key, "output name")
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
    raw, source = read_source(p)
    try:
        tree = ast.parse(raw, filename=str(p))
    except SyntaxError as exc:
        raise PluginError(f"{p}: line {exc.lineno}: syntax error: {one_line(exc.msg)}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. NUL bytes, deep nesting
        raise PluginError(f"{p}: cannot parse: {one_line(exc)}") from exc
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

"""The declared types of a schema contract: the manifest's grammar, canonical spellings, and
their pyarrow types (pyarrow is imported only by :func:`arrow_type`)."""


from __future__ import annotations

import functools
import math
import re
import zoneinfo
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PluginError
from ..protocol import ColumnContract, OutputContract, QuarantinePolicy

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "HELPER_COLUMNS", "arrow_schema", "arrow_type", "manifest_for", "parse_manifest",
    "parse_type", "quarantine_policy",
]

#: Columns a plugin may emit beside its declared ones (quarantine marker, source row number).
HELPER_COLUMNS = ("_cf_row_error", "__cf_row_id")
_ROW_ERROR = "_cf_row_error"

_ALIASES = {
    "null": "null", "bool": "bool", "boolean": "bool",
    "int": "int64", "integer": "int64", "bigint": "int64",
    **{f"int{n}": f"int{n}" for n in (8, 16, 32, 64)},
    **{f"uint{n}": f"uint{n}" for n in (8, 16, 32, 64)},
    "float32": "float32", "float": "float64", "float64": "float64", "double": "float64",
    "string": "string", "utf8": "string", "text": "string", "str": "string",
    "binary": "binary", "bytes": "binary", "date": "date", "time": "time",
    "duration": "duration", "interval": "duration", "timestamp": "timestamp",
    "datetime": "timestamp",
}
_COLUMN_KEYS = {"name", "type", "nullable", "required", "description"}
_WORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_INT = re.compile(r"\s*(\d+)")


# -- the manifest -----------------------------------------------------------------------------
class _TypeText:
    """A small recursive-descent reader of the type grammar (``list<struct<a: int64>>``)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, why: str) -> PluginError:
        return PluginError(f"type {self.text!r}: {why}")

    def peek(self, char: str) -> bool:
        rest = self.text[self.pos:].lstrip()
        return rest.startswith(char)

    def take(self, char: str) -> None:
        if not self.peek(char):
            raise self.fail(f"expected {char!r} at position {self.pos}")
        self.pos = self.text.index(char, self.pos) + 1

    def word(self, pattern: re.Pattern[str] = _WORD) -> str:
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise self.fail(f"expected a name at position {self.pos}")
        self.pos = m.end()
        return m.group(1)

    def whole(self) -> str:
        canonical = self.type()
        if self.text[self.pos:].strip():
            raise self.fail(f"unexpected {self.text[self.pos:].strip()!r}")
        return canonical

    def type(self) -> str:
        word = self.word().lower()
        if word in ("list", "array"):
            self.take("<")
            item = self.type()
            self.take(">")
            return f"list<{item}>"
        if word == "struct":
            self.take("<")
            fields: list[str] = []
            while True:
                name = self.word()
                self.take(":")
                fields.append(f"{name}: {self.type()}")
                if not self.peek(","):
                    break
                self.take(",")
            self.take(">")
            return f"struct<{', '.join(fields)}>"
        if word in ("decimal", "numeric"):
            precision, scale = 38, 0
            if self.peek("("):
                self.take("(")
                precision = int(self.word(_INT))
                if self.peek(","):
                    self.take(",")
                    scale = int(self.word(_INT))
                self.take(")")
            return _decimal(precision, scale)
        if word in ("timestamp_tz", "timestamptz"):
            zone = "UTC"
            if self.peek("("):
                self.take("(")
                end = self.text.find(")", self.pos)
                if end < 0:
                    raise self.fail("expected ')'")
                zone, self.pos = self.text[self.pos:end].strip(), end + 1
            return _timestamp_tz(zone)
        if word not in _ALIASES:
            raise self.fail(f"unknown type {word!r}; known: {', '.join(sorted(set(_ALIASES)))}, "
                            "decimal(p,s), timestamp_tz(zone), list<T>, struct<name: T, ...>")
        return _ALIASES[word]


def _decimal(precision: int, scale: int) -> str:
    if not 1 <= precision <= 38 or not 0 <= scale <= precision:
        raise PluginError(f"decimal({precision},{scale}): precision must be 1-38 and scale "
                          "0-precision")
    return f"decimal({precision},{scale})"


def _timestamp_tz(zone: str) -> str:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise PluginError(f"timestamp_tz: unknown time zone {zone!r}") from exc
    return f"timestamp_tz({zone})"


def parse_type(spec: object) -> str:
    """The canonical spelling of a declared type (a string of the grammar, or the original's
    ``{"kind": ...}`` object); raises a one-line :class:`PluginError` naming what is wrong."""
    if isinstance(spec, str):
        return _TypeText(spec).whole()
    if isinstance(spec, Mapping):
        kind = str(spec.get("kind", "")).lower()
        if kind == "decimal":
            return _decimal(int(spec.get("precision", 38)), int(spec.get("scale", 0)))
        if kind == "timestamp_tz":
            return _timestamp_tz(str(spec.get("tz", "UTC")))
        if kind == "list":
            return f"list<{parse_type(spec.get('item'))}>"
        if kind == "struct":
            fields = spec.get("fields")
            if not isinstance(fields, list) or not fields:
                raise PluginError("struct type needs a non-empty 'fields' list")
            return "struct<" + ", ".join(
                f"{f['name']}: {parse_type(f.get('type'))}" for f in fields) + ">"
        return parse_type(kind) if kind else _bad_type(spec)
    return _bad_type(spec)


def _bad_type(spec: object) -> str:
    raise PluginError(f"type {spec!r} is not a type name or a {{'kind': ...}} object")


def _column(output: str, raw: object, index: int) -> ColumnContract:
    where = f"outputs[{output!r}] column {index + 1}"
    if not isinstance(raw, Mapping):
        raise PluginError(f"{where}: must be a dict with 'name' and 'type'")
    unknown = sorted(set(raw) - _COLUMN_KEYS)
    if unknown:
        raise PluginError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(_COLUMN_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where}: 'name' must be a non-empty string")
    if "type" not in raw:
        raise PluginError(f"{where} ({name!r}): 'type' is missing")
    try:
        canonical = parse_type(raw["type"])
    except PluginError as exc:
        raise PluginError(f"{where} ({name!r}): {exc}") from None
    nullable, required = raw.get("nullable", True), raw.get("required", True)
    if not isinstance(nullable, bool) or not isinstance(required, bool):
        raise PluginError(f"{where} ({name!r}): 'nullable' and 'required' must be True/False")
    if not required and not nullable:
        raise PluginError(f"{where} ({name!r}): an optional column (required=False) must be "
                          "nullable: it is all null when missing")
    return ColumnContract(name=name, type=canonical, nullable=nullable, required=required)


def parse_manifest(manifest: Mapping[str, Any]) -> dict[str, OutputContract]:
    """The contracts of a plugin's literal ``outputs``, one per output (an output without
    ``columns``, or with an empty list, declares its name only: its contract checks nothing).
    Raises :class:`PluginError` for an unknown type, a duplicate or empty column name."""
    contracts: dict[str, OutputContract] = {}
    for output, spec in manifest.items():
        raw = spec.get("columns") if isinstance(spec, Mapping) else None
        if not raw:  # no (or empty) columns: the output's name only
            contracts[output] = OutputContract(output=output, columns=[])
            continue
        if not isinstance(raw, list):
            raise PluginError(f"outputs[{output!r}]: 'columns' must be a list of column dicts")
        columns = [_column(output, c, i) for i, c in enumerate(raw)]
        seen: set[str] = set()
        for c in columns:
            if c.name in seen:
                raise PluginError(f"outputs[{output!r}]: column {c.name!r} is declared twice")
            seen.add(c.name)
        contracts[output] = OutputContract(output=output, columns=columns)
    return contracts


def manifest_for(contracts: Mapping[str, OutputContract]) -> dict[str, Any]:
    """The literal ``outputs`` manifest of ``contracts`` (what ``plugin schema`` prints)."""
    out: dict[str, Any] = {}
    for name, contract in contracts.items():
        if not contract.columns:
            out[name] = {}
            continue
        cols = []
        for c in contract.columns:
            col: dict[str, Any] = {"name": c.name, "type": c.type}
            if not c.nullable:
                col["nullable"] = False
            if not c.required:
                col["required"] = False
            cols.append(col)
        out[name] = {"columns": cols}
    return out


# -- arrow types -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def arrow_type(canonical: str) -> pa.DataType:
    """The pyarrow type of a canonical type spelling (timestamps in microseconds)."""
    import pyarrow as pa

    simple = {
        "null": pa.null(), "bool": pa.bool_(), "float32": pa.float32(),
        "float64": pa.float64(), "string": pa.string(), "binary": pa.binary(),
        "date": pa.date32(), "time": pa.time64("us"), "duration": pa.duration("us"),
        "timestamp": pa.timestamp("us"),
        **{f"int{n}": getattr(pa, f"int{n}")() for n in (8, 16, 32, 64)},
        **{f"uint{n}": getattr(pa, f"uint{n}")() for n in (8, 16, 32, 64)},
    }
    if canonical in simple:
        return simple[canonical]
    text = _TypeText(canonical)
    word = text.word()
    if word == "list":
        return pa.list_(arrow_type(canonical[len("list<"):-1]))
    if word == "decimal":
        p, s = canonical[len("decimal("):-1].split(",")
        return pa.decimal128(int(p), int(s))
    if word == "timestamp_tz":
        return pa.timestamp("us", tz=canonical[len("timestamp_tz("):-1])
    if word == "struct":
        return pa.struct([pa.field(n, arrow_type(t)) for n, t in _struct_fields(canonical)])
    raise PluginError(f"type {canonical!r} is not canonical; use parse_type first")


def _struct_fields(canonical: str) -> list[tuple[str, str]]:
    """Split ``struct<a: T, b: U>`` at top-level commas."""
    body, depth, start, parts = canonical[len("struct<"):-1], 0, 0, []
    for i, ch in enumerate(body):
        depth += (ch in "<(" and 1) or (-1 if ch in ">)" else 0)
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [(p.split(":", 1)[0].strip(), p.split(":", 1)[1].strip()) for p in parts]


def arrow_schema(contract: OutputContract) -> pa.Schema:
    """The pyarrow schema a batch of ``contract``'s output has after :func:`enforce`."""
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=c.nullable)
                      for c in contract.columns])


def quarantine_policy(value: object) -> QuarantinePolicy | None:
    """A :class:`QuarantinePolicy` from ``{"max_pct": 10, "max_rows": 1000}`` (either key may
    be left out; None or ``{}``: no limit). Raises a one-line :class:`PluginError`."""
    if value is None or isinstance(value, QuarantinePolicy):
        return value
    if not isinstance(value, Mapping):
        raise PluginError(f"quarantine must be a dict like {{'max_pct': 10, 'max_rows': 1000}}, "
                          f"not {type(value).__name__}")
    unknown = sorted(set(value) - {"max_pct", "max_rows"})
    if unknown:
        raise PluginError(f"quarantine: unknown key(s) {', '.join(map(repr, unknown))}; "
                          "allowed: max_pct, max_rows")
    pct, rows = value.get("max_pct"), value.get("max_rows")
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, int | float)
                            or not math.isfinite(pct) or not 0 <= pct <= 100):
        raise PluginError(f"quarantine: max_pct must be a number from 0 to 100, not {pct!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise PluginError(f"quarantine: max_rows must be a whole number >= 0, not {rows!r}")
    if pct is None and rows is None:
        return None
    return QuarantinePolicy(max_pct=None if pct is None else float(pct), max_rows=rows)

"""The vectorised batch check behind :func:`casparian_nb.contracts.enforce`.

Cost on the happy path (types already as declared): one type comparison and one cached
``null_count`` per column, then a zero-copy table rebuild. Only a column whose type differs is
cast; only a cast that fails as a whole is bisected to find its bad rows (``O(k log n)`` casts
of shrinking slices for ``k`` bad values), so a clean batch never pays for the error path.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaContractError
from ..protocol import OutputContract
from ._types import HELPER_COLUMNS, arrow_type

__all__ = ["describe_type", "enforce_batch"]

_ROW_ERROR, _ROW_ID = HELPER_COLUMNS
_NO_ERROR = pa.scalar(None, pa.string())
#: Below this many rows a failing slice is cast value by value instead of bisected further.
_LEAF = 16
#: Longest value quoted in a row error.
_QUOTE = 40

# Which families may be cast into which (arrow must support the cast too). Everything else
# (int into timestamp, string into list, ...) is a shape problem, not a row problem.
_INTO: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "float", "decimal", "string"}),
    "float": frozenset({"int", "float", "decimal", "string"}),
    "decimal": frozenset({"int", "float", "decimal", "string"}),
    "string": frozenset({"int", "float", "decimal", "string", "bool", "date", "timestamp",
                         "binary"}),
    "binary": frozenset({"binary", "string"}),
    "bool": frozenset({"bool", "string"}),
    "date": frozenset({"date", "timestamp", "string"}),
    "timestamp": frozenset({"timestamp", "date", "string"}),
    "time": frozenset({"time"}),
    "duration": frozenset({"duration"}),
    "list": frozenset({"list"}),
    "struct": frozenset({"struct"}),
}


def _family(t: pa.DataType) -> str:
    checks = (
        ("null", pa.types.is_null), ("bool", pa.types.is_boolean),
        ("int", pa.types.is_integer), ("float", pa.types.is_floating),
        ("decimal", pa.types.is_decimal), ("string", pa.types.is_string),
        ("string", pa.types.is_large_string), ("string", pa.types.is_string_view),
        ("binary", pa.types.is_binary), ("binary", pa.types.is_large_binary),
        ("binary", pa.types.is_fixed_size_binary), ("date", pa.types.is_date),
        ("timestamp", pa.types.is_timestamp), ("time", pa.types.is_time),
        ("duration", pa.types.is_duration), ("list", pa.types.is_list),
        ("list", pa.types.is_large_list), ("struct", pa.types.is_struct),
    )
    return next((name for name, test in checks if test(t)), str(t))


@functools.lru_cache(maxsize=1024)
def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    family = _family(source)
    if family != "null" and _family(target) not in _INTO.get(family, frozenset()):
        return False
    try:
        pa.array([], source).cast(target)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def describe_type(t: pa.DataType) -> str:
    """An arrow type in the manifest's vocabulary (what ``--infer`` prints)."""
    if pa.types.is_dictionary(t):
        return describe_type(t.value_type)
    family = _family(t)
    if family == "timestamp":
        return f"timestamp_tz({t.tz})" if t.tz else "timestamp"
    if family == "decimal":
        return f"decimal({t.precision},{t.scale})"
    if family == "list":
        return f"list<{describe_type(t.value_type)}>"
    if family == "struct":
        return "struct<" + ", ".join(f"{f.name}: {describe_type(f.type)}" for f in t) + ">"
    if family == "float":
        return {"halffloat": "float16", "float": "float32", "double": "float64"}[str(t)]
    return {"bool": "bool", "string": "string", "binary": "binary", "date": "date",
            "time": "time", "duration": "duration", "null": "null"}.get(family, str(t))


def _quoted(values: pa.Array) -> pa.Array | None:
    """The values as short quoted text for row errors, or None when they have no text form."""
    try:
        text = values.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    text = pc.utf8_slice_codeunits(text, 0, _QUOTE)
    return pc.binary_join_element_wise("'", text, "'", "")


def _bad_positions(values: pa.Array, target: pa.DataType, offset: int, out: list[int]) -> None:
    """Positions (``offset``-based) of the values of ``values`` that do not cast."""
    try:
        values.cast(target)
        return
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if len(values) <= _LEAF:
        for i in range(len(values)):
            try:
                values.slice(i, 1).cast(target)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                out.append(offset + i)
        return
    half = len(values) // 2
    _bad_positions(values.slice(0, half), target, offset, out)
    _bad_positions(values.slice(half), target, offset + half, out)


def _lossy_dates(source: pa.Array | pa.ChunkedArray, cast: Any) -> Any:
    """Timestamps whose time of day a cast to date dropped (arrow truncates silently)."""
    return pc.fill_null(pc.not_equal(cast.cast(source.type), source), False)


def _cast(name: str, type_text: str, column: pa.ChunkedArray,
          target: pa.DataType) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """Cast ``column`` to ``target``; values that do not cast losslessly become null and
    get a row error. Returns ``(cast column, row errors or None)``."""
    try:
        cast = column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        cast = None
    if cast is not None:
        if not (pa.types.is_timestamp(column.type) and pa.types.is_date(target)):
            return cast, None
        bad_mask = _lossy_dates(column, cast)
        if not pc.any(bad_mask).as_py():
            return cast, None
        values = column.combine_chunks()
        bad = pa.array(bad_mask.combine_chunks() if isinstance(bad_mask, pa.ChunkedArray)
                       else bad_mask)
    else:
        values = column.combine_chunks()
        positions: list[int] = []
        _bad_positions(values, target, 0, positions)
        bad = pc.is_in(pa.array(range(len(values)), pa.int64()), pa.array(positions, pa.int64()))
    fixed = pc.if_else(bad, pa.scalar(None, values.type), values).cast(target)
    quoted = _quoted(values)
    prefix = f"schema: {name}: "
    if quoted is None:
        message: Any = pa.scalar(f"{prefix}value does not fit {type_text} losslessly")
    else:
        message = pc.binary_join_element_wise(
            prefix, quoted, f" does not fit {type_text} losslessly", "")
    errors = pc.if_else(bad, message, _NO_ERROR)
    return pa.chunked_array([fixed]), pa.chunked_array([errors])


def enforce_batch(contract: OutputContract, table: pa.Table) -> pa.Table:
    """See :func:`casparian_nb.contracts.enforce`."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not contract.columns:
        return table
    names = table.schema.names
    declared = {c.name for c in contract.columns}
    problems: list[str] = []
    dupes = sorted({n for n in names if names.count(n) > 1})
    problems += [f"column {n!r} appears {names.count(n)} times" for n in dupes]
    problems += [f"missing column {c.name!r} ({c.type})" for c in contract.columns
                 if c.required and c.name not in names]
    n_rows = table.num_rows
    columns: list[pa.ChunkedArray | pa.Array] = []
    errors: list[Any] = []
    for c in contract.columns:
        target = arrow_type(c.type)
        if c.name not in names or c.name in dupes:
            columns.append(pa.nulls(n_rows, target))
            continue
        column = table.column(c.name)
        if pa.types.is_dictionary(column.type):  # pandas categoricals: decode, then compare
            column = column.cast(column.type.value_type)
        if column.type != target:
            if not _castable(column.type, target):
                problems.append(f"column {c.name!r}: expected {c.type}, got "
                                f"{describe_type(column.type)} (no lossless cast)")
                continue
            column, cast_errors = _cast(c.name, c.type, column, target)
            if cast_errors is not None:
                errors.append(cast_errors)
        if not c.nullable and column.null_count:
            errors.append(pa.chunked_array(pc.if_else(
                pc.is_null(column), pa.scalar(f"schema: {c.name}: null not allowed"),
                _NO_ERROR)))
        columns.append(column)
    # Reserved lineage names are lineage's to refuse, with its own message (F7).
    reserved = [n for n in names if n.startswith("_cf_") and n not in HELPER_COLUMNS]
    extra = [n for n in names
             if n not in declared and n not in HELPER_COLUMNS and n not in reserved]
    problems += [f"extra column {n!r} ({describe_type(table.column(n).type)})" for n in extra]
    if problems:
        raise SchemaContractError(
            f"output {contract.output!r} does not match its declared schema: "
            + "; ".join(problems))
    out_names = [c.name for c in contract.columns]
    for n in reserved:
        columns.append(table.column(n))
        out_names.append(n)
    if _ROW_ID in names:
        columns.append(table.column(_ROW_ID))
        out_names.append(_ROW_ID)
    row_error = _row_errors(table, errors) if errors or _ROW_ERROR in names else None
    if row_error is not None:
        columns.append(row_error)
        out_names.append(_ROW_ERROR)
    return pa.Table.from_arrays(columns, names=out_names)


def _row_errors(table: pa.Table, errors: list[Any]) -> Any:
    """The plugin's own ``_cf_row_error`` (kept first) merged with the contract's."""
    if _ROW_ERROR in table.schema.names:
        own = table.column(_ROW_ERROR)
        if not errors:
            return own
        try:
            own = own.cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            return own  # not text: lineage refuses it with its own message
        # An empty message means "valid" (lineage's rule): do not let it hide ours.
        own = pc.if_else(pc.equal(own, ""), _NO_ERROR, own)
        errors = [own, *errors]
    merged = errors[0] if len(errors) == 1 else pc.coalesce(*errors)
    return merged

"""Keeping every batch of one output on the schema its first batch fixed.

A staged file has exactly one schema, but generator plugins build each batch separately, so
the same column can come back as int32 in one batch and int64 in the next, as ``null`` when a
batch happens to be all-missing, or as large_string after a polars conversion. Lossless
differences are cast away; anything else fails with the output and columns named.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.types as pat

from ..errors import SinkError

__all__ = ["conform"]


def conform(output: str, target: pa.Schema, table: pa.Table) -> pa.Table:
    """``table`` on ``target``'s schema, or :class:`SinkError` naming what differs."""
    if table.schema.equals(target, check_metadata=False):
        return table.replace_schema_metadata(target.metadata)
    names, wanted = table.schema.names, target.names
    if len(set(names)) != len(names) or set(names) != set(wanted):
        missing = [n for n in wanted if n not in names]
        extra = [n for n in names if n not in wanted]
        dupes = sorted({n for n in names if names.count(n) > 1})
        parts = [
            f"{label} {', '.join(map(repr, cols))}"
            for label, cols in (("missing", missing), ("extra", extra), ("duplicated", dupes))
            if cols
        ]
        raise SinkError(
            f"output {output!r}: a batch has different columns than the first batch "
            f"({'; '.join(parts)}); every batch of an output must have the same columns"
        )
    arrays: list[pa.ChunkedArray] = []
    problems: list[str] = []
    for fld in target:
        col = table.column(fld.name)
        if col.type != fld.type:
            if not _castable(col.type, fld.type):
                problems.append(_describe(fld, col.type))
                continue
            try:
                col = col.cast(fld.type)  # safe cast: overflow or truncation raises
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                problems.append(f"{fld.name!r} ({col.type} does not fit {fld.type}: {exc})")
                continue
        if not fld.nullable and col.null_count:
            problems.append(f"{fld.name!r} (nulls in a column the first batch declared not null)")
            continue
        arrays.append(col)
    if problems:
        raise SinkError(
            f"output {output!r}: a batch's column types differ from the first batch's: "
            f"{'; '.join(problems)}"
        )
    return pa.Table.from_arrays(arrays, schema=target)


def _describe(fld: pa.Field, got: pa.DataType) -> str:
    if pat.is_null(fld.type):
        return (
            f"{fld.name!r} (was all-null — type null — in the first batch, now {got}; "
            "give the column an explicit type in the first batch)"
        )
    return f"{fld.name!r} (first batch {fld.type}, this batch {got})"


_Pred = Callable[[pa.DataType], bool]
_FAMILIES: tuple[tuple[_Pred, ...], ...] = (
    (pat.is_string, pat.is_large_string, pat.is_string_view),
    (pat.is_binary, pat.is_large_binary, pat.is_binary_view),
)


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """True when every value of ``src`` has a faithful ``dst`` counterpart."""
    if pat.is_null(src):
        return True
    if pat.is_dictionary(src):
        return _castable(src.value_type, dst)
    if pat.is_dictionary(dst):
        return _castable(src, dst.value_type)
    if pat.is_integer(src) and pat.is_integer(dst):
        if pat.is_signed_integer(src) == pat.is_signed_integer(dst):
            return bool(src.bit_width <= dst.bit_width)
        return bool(pat.is_unsigned_integer(src) and src.bit_width < dst.bit_width)
    if pat.is_integer(src) and pat.is_floating(dst):
        return bool(dst.bit_width == 64)  # the safe cast still rejects ints beyond 2**53
    if pat.is_floating(src) and pat.is_floating(dst):
        return bool(src.bit_width <= dst.bit_width)
    if pat.is_timestamp(src) and pat.is_timestamp(dst):
        return bool(src.tz == dst.tz)  # unit changes are checked for truncation by the cast
    return any(any(p(src) for p in family) and any(p(dst) for p in family) for family in _FAMILIES)

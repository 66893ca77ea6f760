"""Per-row lineage, the reserved ``_cf_`` namespace and the quarantine split.

Every valid output row leaves a job with four lineage columns appended at the end::

    _cf_source_hash     string   blake3 hex of the input file's bytes
    _cf_job_id          string   the job that produced the row
    _cf_processed_at    timestamp[us, tz=UTC]   one instant per job (not per batch)
    _cf_parser_version  string   the plugin's version

The three string columns are per-job constants, so they are dictionary-encoded (one value,
all-zero int32 indices): building and writing them then costs a few percent of a plain
``pq.write_table`` instead of doubling it (see notes/performance.md). Their logical type is
string — DuckDB reads them as VARCHAR; pyarrow and pandas see dictionary / category. Rows of
several jobs stamped together (:func:`stamp_rows`, a standalone run's batch of small files)
keep each distinct value once in the dictionary, and their indices say whose row is whose.

:func:`prepare_output` is :func:`split_rows` (the checks and the bad-row mask) followed by
:func:`stamp_rows`. Rows whose ``_cf_row_error`` is non-null and non-empty go to the quarantine table of the
output, which keeps the data columns and adds ``_cf_row_error``, ``_cf_source_row`` and the
same lineage. ``prepare_output`` is a pure function: the same table and the same
:class:`Lineage` always give identical outputs (F7).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import LineageError

try:  # blake3 is a declared dependency; sha256 keeps hash_file usable if its wheel is absent.
    from blake3 import blake3 as _hasher_factory
except ImportError:  # pragma: no cover - exercised only on platforms without the wheel
    from hashlib import sha256 as _hasher_factory  # type: ignore[assignment]

__all__ = [
    "LINEAGE_COLUMNS",
    "QUARANTINE_SUFFIX",
    "RESERVED_PREFIX",
    "ROW_ERROR",
    "ROW_ID",
    "SOURCE_ROW",
    "Lineage",
    "RowSplit",
    "check_reserved",
    "hash_file",
    "lineage_fields",
    "prepare_output",
    "quarantine_name",
    "split_rows",
    "stamp_rows",
]

LINEAGE_COLUMNS = ("_cf_source_hash", "_cf_job_id", "_cf_processed_at", "_cf_parser_version")
ROW_ERROR = "_cf_row_error"
ROW_ID = "__cf_row_id"
SOURCE_ROW = "_cf_source_row"
RESERVED_PREFIX = "_cf_"
QUARANTINE_SUFFIX = "_quarantine"

_DICT_STRING = pa.dictionary(pa.int32(), pa.string())
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def hash_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in ``chunk``-byte pieces (1 MiB by default).

    The digest is blake3 (64 hex chars, ~3 GB/s). Only if the ``blake3`` package cannot be
    imported does it fall back to ``hashlib.sha256`` — also 64 hex chars and not prefixed, so
    the two are not distinguishable by looking; blake3 is a hard dependency for that reason.
    """
    hasher = _hasher_factory()
    with open(path, "rb", buffering=0) as fh:
        # Small files are the common case: size the buffer to the file, not to 1 MiB
        # (allocating 1 MiB per call was two thirds of the cost of hashing a tiny file).
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(max(1, min(chunk, size + 1)))
        view = memoryview(buf)
        # readinto a reused buffer: no per-chunk allocation on multi-GB inputs.
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


@dataclass(frozen=True)
class Lineage:
    """The per-job lineage values stamped on every row a job writes.

    ``processed_at`` is taken once per job by the caller, so every batch and every output of
    the job carries the same instant; a naive datetime is refused, an aware one is stored in UTC.
    """

    source_hash: str
    job_id: str
    processed_at: datetime
    parser_version: str

    def __post_init__(self) -> None:
        for name in ("source_hash", "job_id", "parser_version"):
            if not isinstance(getattr(self, name), str):
                raise LineageError(f"Lineage.{name} must be a string")
        if not self.job_id:
            raise LineageError("Lineage.job_id must not be empty")
        ts = self.processed_at
        if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
            raise LineageError("Lineage.processed_at must be a timezone-aware datetime")
        object.__setattr__(self, "processed_at", ts.astimezone(UTC))

    @classmethod
    def now(cls, source_hash: str, job_id: str, parser_version: str) -> Lineage:
        """Lineage stamped with the current UTC time (call once per job)."""
        return cls(source_hash, job_id, datetime.now(UTC), parser_version)


def lineage_fields() -> list[pa.Field]:
    """The Arrow fields ``prepare_output`` appends, in order."""
    return list(_LINEAGE_FIELDS)


def quarantine_name(name: str) -> str:
    """The quarantine output (or table) that goes with ``name``: ``<name>_quarantine``."""
    return name + QUARANTINE_SUFFIX


def check_reserved(output: str, schema: pa.Schema) -> None:
    """Refuse columns in the reserved ``_cf_`` namespace (F7).

    Lineage is always the system's: a plugin may emit ``_cf_row_error`` (quarantine marker)
    and ``__cf_row_id`` (its own source row number), but no other ``_cf_*`` column — not one,
    not some, and not all four lineage columns either (the original accepted a full set from
    the plugin; here that would let a plugin forge provenance). Raises :class:`LineageError`
    naming the output and the offending columns.
    """
    reserved = [n for n in schema.names if n.startswith(RESERVED_PREFIX) and n != ROW_ERROR]
    if not reserved:
        return
    cols = ", ".join(repr(n) for n in reserved)
    noun, verb = ("column", "is") if len(reserved) == 1 else ("columns", "are")
    message = (
        f"output {output!r}: {noun} {cols} {verb} reserved for lineage (columns starting "
        "with _cf_ are reserved; only _cf_row_error may be emitted)"
    )
    supplied = {n for n in reserved if n in LINEAGE_COLUMNS}
    if 0 < len(supplied) < len(LINEAGE_COLUMNS):
        message += (
            f"; this is a partial lineage set ({len(supplied)} of {len(LINEAGE_COLUMNS)} "
            "lineage columns) — casparian adds lineage itself, drop these columns"
        )
    elif supplied:
        message += "; plugins cannot supply lineage — casparian adds all four columns itself"
    raise LineageError(message)


class RowSplit(NamedTuple):
    """One batch of an output, checked and split but not yet stamped (:func:`split_rows`)."""

    #: The data columns (``_cf_row_error`` and ``__cf_row_id`` dropped).
    data: pa.Table
    #: ``_cf_row_error`` as strings, when the batch has one.
    errors: pa.ChunkedArray | None
    #: ``__cf_row_id`` as int64, when the batch has one.
    row_ids: pa.ChunkedArray | None
    #: True for the bad rows; None when no row is bad.
    bad: pa.ChunkedArray | None
    bad_rows: int


def prepare_output(
    output: str, table: pa.Table, lineage: Lineage, *, row_offset: int = 0
) -> tuple[pa.Table, pa.Table | None]:
    """Check, split and stamp one batch of an output.

    Returns ``(valid, quarantine)``. ``valid`` holds the rows without a row error, minus the
    helper columns ``_cf_row_error`` / ``__cf_row_id``, plus the lineage columns at the end;
    its schema depends only on the data columns, so batches with and without ``_cf_row_error``
    agree. ``quarantine`` (None when no row is bad) holds the bad rows' data columns, then
    ``_cf_row_error`` (string), ``_cf_source_row`` (int64) and the lineage columns.
    ``_cf_source_row`` is ``__cf_row_id`` when the plugin gave one, else the 1-based position
    of the row in the output stream: ``row_offset`` + index in this batch + 1 — pass the
    number of rows of this output already seen so generator batches keep counting.
    """
    return stamp_rows([(split_rows(output, table), lineage, row_offset)])


def split_rows(output: str, table: pa.Table) -> RowSplit:
    """The checks and the bad-row mask of one batch (the first half of
    :func:`prepare_output`); raises :class:`LineageError` for a batch that breaks the rules."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise LineageError(
            f"output {output!r}: expected a pyarrow Table, got {type(table).__name__}"
        )
    check_reserved(output, table.schema)
    names = table.schema.names
    errors = _row_error_column(output, table) if ROW_ERROR in names else None
    row_ids = _row_id_column(output, table) if ROW_ID in names else None
    data = table.drop_columns([n for n in (ROW_ERROR, ROW_ID) if n in names])
    if errors is None or errors.null_count == len(errors):
        return RowSplit(data, None, None, None, 0)
    # Non-null and non-empty; a null error means "valid" (False and null is False).
    bad = pc.and_kleene(pc.is_valid(errors), pc.not_equal(errors, ""))
    count = pc.sum(bad).as_py() or 0
    if not count:
        return RowSplit(data, None, None, None, 0)
    return RowSplit(data, errors, row_ids, bad, int(count))


def stamp_rows(
    parts: Sequence[tuple[RowSplit, Lineage, int]],
) -> tuple[pa.Table, pa.Table | None]:
    """The second half of :func:`prepare_output`, for one or several split batches of one
    output, each with its lineage and ``row_offset``: their valid rows and their bad rows
    (None when there are none), stamped, in order — several jobs' batches (a standalone
    run's batch of small files) cost one filter and one stamp instead of one each."""
    if len(parts) == 1:
        return _stamp_one(*parts[0])
    splits = [p[0] for p in parts]
    data = pa.concat_tables([s.data for s in splits])
    members = np.repeat(np.arange(len(parts), dtype=np.int32), [s.data.num_rows for s in splits])
    lineages = [p[1] for p in parts]
    if not any(s.bad is not None for s in splits):
        return _stamp(data, lineages, members), None

    def chunks(pick: Callable[[RowSplit], pa.ChunkedArray | None],
               fill: Callable[[int], pa.Array]) -> pa.ChunkedArray:
        out: list[pa.Array] = []
        for s in splits:
            col = pick(s)
            out.extend(col.chunks if col is not None else [fill(s.data.num_rows)])
        return pa.chunked_array(out, type=fill(0).type)

    bad_mask = chunks(lambda s: s.bad, lambda n: pa.array(np.zeros(n, dtype=bool)))
    is_bad = bad_mask.to_numpy()  # no nulls: and_kleene of is_valid is never null
    valid = _stamp(data.filter(pc.invert(bad_mask)), lineages, members[~is_bad])
    owner = members[is_bad]
    starts = np.cumsum([0] + [s.data.num_rows for s in splits[:-1]], dtype=np.int64)
    offsets = np.array([p[2] for p in parts], dtype=np.int64)
    source_row: pa.Array | pa.ChunkedArray = pa.array(
        np.flatnonzero(is_bad) - starts[owner] + offsets[owner] + 1)
    if any(s.row_ids is not None for s in splits):
        row_ids = chunks(lambda s: s.row_ids, lambda n: pa.nulls(n, pa.int64()))
        source_row = pc.coalesce(row_ids.filter(bad_mask), source_row)
    errors = chunks(lambda s: s.errors, lambda n: pa.nulls(n, pa.string()))
    bad = data.filter(bad_mask)
    bad = bad.append_column(pa.field(ROW_ERROR, pa.string()), errors.filter(bad_mask))
    bad = bad.append_column(pa.field(SOURCE_ROW, pa.int64()), source_row)
    return valid, _stamp(bad, lineages, owner)


def _stamp_one(split: RowSplit, lineage: Lineage,
               row_offset: int) -> tuple[pa.Table, pa.Table | None]:
    """:func:`stamp_rows` for one batch of one job (a job's usual case: no numpy)."""
    data, errors, row_ids, bad_mask, _ = split
    if bad_mask is None or errors is None:
        return _stamp(data, [lineage]), None
    valid = _stamp(data.filter(pc.invert(bad_mask)), [lineage])
    positions = pc.indices_nonzero(bad_mask).cast(pa.int64())
    source_row = pc.add(positions, pa.scalar(row_offset + 1, pa.int64()))
    if row_ids is not None:
        source_row = pc.coalesce(row_ids.filter(bad_mask), source_row)
    bad = data.filter(bad_mask)
    bad = bad.append_column(pa.field(ROW_ERROR, pa.string()), errors.filter(bad_mask))
    bad = bad.append_column(pa.field(SOURCE_ROW, pa.int64()), source_row)
    return valid, _stamp(bad, [lineage])


def _row_error_column(output: str, table: pa.Table) -> pa.ChunkedArray:
    col = table.column(ROW_ERROR)
    typ = col.type
    if pa.types.is_dictionary(typ) and any(f(typ.value_type) for f in _TEXT_TYPES):
        return col.cast(pa.string())
    if pa.types.is_null(typ) or any(f(typ) for f in _TEXT_TYPES):
        return col.cast(pa.string())
    raise LineageError(
        f"output {output!r}: column {ROW_ERROR!r} must hold text (the error message, or "
        f"null/empty for a valid row), got {typ}"
    )


def _row_id_column(output: str, table: pa.Table) -> pa.ChunkedArray:
    col = table.column(ROW_ID)
    if not (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise LineageError(
            f"output {output!r}: column {ROW_ID!r} must hold integer source row numbers, "
            f"got {col.type}"
        )
    try:
        return col.cast(pa.int64())
    except pa.ArrowInvalid as exc:  # uint64 above int64 range
        raise LineageError(f"output {output!r}: column {ROW_ID!r}: {exc}") from None


_LINEAGE_FIELDS = (
    pa.field(LINEAGE_COLUMNS[0], _DICT_STRING, nullable=False),
    pa.field(LINEAGE_COLUMNS[1], _DICT_STRING, nullable=False),
    pa.field(LINEAGE_COLUMNS[2], _TIMESTAMP, nullable=False),
    pa.field(LINEAGE_COLUMNS[3], _DICT_STRING, nullable=False),
)


def _stamp(table: pa.Table, lineages: Sequence[Lineage],
           members: np.ndarray[Any, np.dtype[np.int32]] | None = None) -> pa.Table:
    """Append the four lineage columns, encoded as constants (no per-row values built);
    with several ``lineages``, ``members`` gives each row's (index into them)."""
    if members is not None and len(lineages) > 1:
        return _stamp_many(table, lineages, members)
    n = table.num_rows
    source_hash, job_id, processed_at, parser_version = _constants(lineages[0])
    # A zero-filled buffer is all-zero int32 indices: one calloc, shared by the three columns.
    zeros = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(bytes(4 * n))])
    values: list[Any] = [
        pa.DictionaryArray.from_arrays(zeros, source_hash),
        pa.DictionaryArray.from_arrays(zeros, job_id),
        pa.repeat(processed_at, n),
        pa.DictionaryArray.from_arrays(zeros, parser_version),
    ]
    # One new table, not four appends each building a table and a schema.
    schema = pa.schema([*table.schema, *_LINEAGE_FIELDS], metadata=table.schema.metadata)
    return pa.Table.from_arrays([*table.columns, *values], schema=schema)


def _stamp_many(table: pa.Table, lineages: Sequence[Lineage],
                members: np.ndarray[Any, np.dtype[np.int32]]) -> pa.Table:
    """:func:`_stamp` for rows of several jobs: each string column's dictionary holds each
    distinct value once, its indices say whose row it is."""

    def encoded(values: list[str]) -> pa.DictionaryArray:
        codes: dict[str, int] = {}
        per_member = np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(per_member[members]),
                                              pa.array(list(codes), pa.string()))

    stamps = pa.array([lin.processed_at for lin in lineages], _TIMESTAMP)
    values: list[Any] = [
        encoded([lin.source_hash for lin in lineages]),
        encoded([lin.job_id for lin in lineages]),
        stamps.take(pa.array(members)),
        encoded([lin.parser_version for lin in lineages]),
    ]
    schema = pa.schema([*table.schema, *_LINEAGE_FIELDS], metadata=table.schema.metadata)
    return pa.Table.from_arrays([*table.columns, *values], schema=schema)


_CONSTANTS: dict[Lineage, tuple[pa.Array, pa.Array, pa.Scalar, pa.Array]] = {}


def _constants(lineage: Lineage) -> tuple[pa.Array, pa.Array, pa.Scalar, pa.Array]:
    """The Arrow values of ``lineage``, built once per job rather than per batch and output
    (a plugin host keeps only its latest job's: jobs run one at a time)."""
    found = _CONSTANTS.get(lineage)
    if found is None:
        _CONSTANTS.clear()
        found = _CONSTANTS[lineage] = (
            pa.array([lineage.source_hash], pa.string()),
            pa.array([lineage.job_id], pa.string()),
            pa.scalar(lineage.processed_at, _TIMESTAMP),
            pa.array([lineage.parser_version], pa.string()),
        )
    return found

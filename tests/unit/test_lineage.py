"""lineage.py: file hashing, the reserved _cf_ namespace (F7), quarantine split, lineage values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from blake3 import blake3

from casparian_nb.errors import LineageError
from casparian_nb.lineage import (
    LINEAGE_COLUMNS,
    ROW_ERROR,
    ROW_ID,
    SOURCE_ROW,
    Lineage,
    check_reserved,
    hash_file,
    lineage_fields,
    prepare_output,
    quarantine_name,
    split_rows,
    stamp_rows,
)

TS = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(name="lin")
def _lin() -> Lineage:
    return Lineage(source_hash="ab" * 32, job_id="42", processed_at=TS, parser_version="1.2.0")


# -- hash_file ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_hash_file_is_blake3_of_the_bytes_across_chunk_boundaries(tmp_path, size):
    """Streaming in chunks gives the same digest as hashing the whole content."""
    data = bytes(range(256)) * (size // 256 + 1)
    path = tmp_path / "f.bin"
    path.write_bytes(data[:size])
    assert hash_file(path, chunk=4096) == blake3(data[:size]).hexdigest()
    assert hash_file(str(path)) == blake3(data[:size]).hexdigest()


# -- Lineage ---------------------------------------------------------------------------------


def test_lineage_refuses_naive_datetime():
    with pytest.raises(LineageError, match="timezone-aware"):
        Lineage("h", "1", datetime(2024, 1, 1), "1.0")


def test_lineage_stores_processed_at_in_utc():
    plus2 = timezone(timedelta(hours=2))
    lin = Lineage("h", "1", datetime(2024, 1, 1, 14, 0, tzinfo=plus2), "1.0")
    assert lin.processed_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert lin.processed_at.utcoffset() == timedelta(0)


def test_lineage_refuses_empty_job_id():
    with pytest.raises(LineageError, match="job_id"):
        Lineage("h", "", TS, "1.0")


def test_lineage_now_is_utc_and_frozen():
    lin = Lineage.now("h", "7", "1.0")
    assert lin.processed_at.tzinfo is not None and lin.processed_at.utcoffset() == timedelta(0)
    with pytest.raises(AttributeError):
        lin.job_id = "8"  # type: ignore[misc]


# -- check_reserved (F7) ----------------------------------------------------------------------


def _schema(*names: str) -> pa.Schema:
    return pa.schema([(n, pa.int64()) for n in names])


def test_reserved_single_lineage_column_is_named_with_output():
    with pytest.raises(LineageError) as info:
        check_reserved("orders", _schema("id", "_cf_job_id"))
    msg = str(info.value)
    assert msg.startswith(
        "output 'orders': column '_cf_job_id' is reserved for lineage (columns starting with "
        "_cf_ are reserved; only _cf_row_error may be emitted)"
    )
    assert "partial lineage set (1 of 4" in msg
    assert "\n" not in msg


def test_reserved_partial_lineage_set_is_called_partial():
    with pytest.raises(LineageError, match=r"partial lineage set \(2 of 4") as info:
        check_reserved("orders", _schema("_cf_source_hash", "_cf_processed_at", "x"))
    assert "'_cf_source_hash', '_cf_processed_at'" in str(info.value)


def test_reserved_full_lineage_set_is_refused_too():
    """Plugins cannot supply lineage at all (the original accepted all four)."""
    with pytest.raises(LineageError, match="plugins cannot supply lineage") as info:
        check_reserved("orders", _schema("id", *LINEAGE_COLUMNS))
    assert "partial" not in str(info.value)


@pytest.mark.parametrize("col", ["_cf_foo", "_cf_source_row", "_cf_", "_cf_ROW_ERROR"])
def test_reserved_other_cf_columns_are_refused(col):
    with pytest.raises(LineageError, match=f"output 'o': column '{col}' is reserved") as info:
        check_reserved("o", _schema("a", col))
    assert "partial" not in str(info.value)


def test_reserved_allows_row_error_row_id_and_lookalikes():
    check_reserved("o", _schema(ROW_ERROR, ROW_ID, "cf_job_id", "x_cf_y", "_CF_upper"))


def test_prepare_output_applies_the_reserved_check(lin):
    with pytest.raises(LineageError, match="output 'orders'"):
        prepare_output("orders", pa.table({"_cf_parser_version": ["x"]}), lin)


# -- prepare_output: lineage -----------------------------------------------------------------


def test_lineage_columns_appended_at_end_with_types(lin):
    valid, quarantine = prepare_output("o", pa.table({"a": [1, 2], "b": ["x", "y"]}), lin)
    assert quarantine is None
    assert valid.column_names == ["a", "b", *LINEAGE_COLUMNS]
    assert valid.schema.field("_cf_processed_at").type == pa.timestamp("us", tz="UTC")
    for name in ("_cf_source_hash", "_cf_job_id", "_cf_parser_version"):
        typ = valid.schema.field(name).type
        assert pa.types.is_dictionary(typ) and typ.value_type == pa.string()
        assert typ.index_type == pa.int32()
    assert valid.column("_cf_source_hash").to_pylist() == ["ab" * 32] * 2
    assert valid.column("_cf_job_id").to_pylist() == ["42", "42"]
    assert valid.column("_cf_parser_version").to_pylist() == ["1.2.0", "1.2.0"]
    assert valid.column("_cf_processed_at").to_pylist() == [TS, TS]
    assert [f.name for f in lineage_fields()] == list(LINEAGE_COLUMNS)


def test_lineage_constants_are_dictionary_encoded_with_one_value(lin):
    valid, _ = prepare_output("o", pa.table({"a": list(range(1000))}), lin)
    chunk = valid.column("_cf_job_id").chunk(0)
    assert len(chunk.dictionary) == 1 and chunk.indices.to_pylist() == [0] * 1000


def test_one_processed_at_per_job_across_batches_and_outputs(lin):
    """The timestamp comes from Lineage, never from the clock at batch time (§13.5)."""
    stamps = set()
    for i, out in enumerate(["a", "b", "a"]):
        valid, _ = prepare_output(out, pa.table({"x": [i, i + 1]}), lin, row_offset=i * 2)
        stamps.update(valid.column("_cf_processed_at").to_pylist())
    assert stamps == {TS}


def test_prepare_output_is_deterministic(lin):
    table = pa.table({"a": [1, 2, 3], ROW_ERROR: [None, "bad", ""], ROW_ID: [10, 11, 12]})
    first = prepare_output("o", table, lin, row_offset=5)
    again = prepare_output("o", table, Lineage(lin.source_hash, "42", TS, "1.2.0"), row_offset=5)
    assert first[0].equals(again[0]) and first[1] is not None and first[1].equals(again[1])


def test_empty_table_gets_lineage_schema(lin):
    valid, quarantine = prepare_output("o", pa.table({"a": pa.array([], pa.int64())}), lin)
    assert valid.num_rows == 0 and quarantine is None
    assert valid.column_names == ["a", *LINEAGE_COLUMNS]


def test_record_batch_and_chunked_input(lin):
    batch = pa.record_batch({"a": [1, 2]})
    valid, _ = prepare_output("o", batch, lin)  # type: ignore[arg-type]
    assert valid.column("a").to_pylist() == [1, 2]
    parts = [pa.table({"a": [1], ROW_ERROR: ["e"]}), pa.table({"a": [2, 3], ROW_ERROR: ["", None]})]
    chunked = pa.concat_tables(parts)
    valid, quarantine = prepare_output("o", chunked, lin)
    assert valid.column("a").to_pylist() == [2, 3]
    assert quarantine is not None and quarantine.column(SOURCE_ROW).to_pylist() == [1]


# -- prepare_output: quarantine and schema normalisation --------------------------------------


def test_quarantine_split_and_helper_columns_dropped(lin):
    table = pa.table({"a": [1, 2, 3, 4], ROW_ERROR: [None, "bad date", "", "neg"]})
    valid, quarantine = prepare_output("orders", table, lin)
    assert valid.column_names == ["a", *LINEAGE_COLUMNS]
    assert valid.column("a").to_pylist() == [1, 3]  # null and "" both mean valid
    assert quarantine is not None
    assert quarantine.column_names == ["a", ROW_ERROR, SOURCE_ROW, *LINEAGE_COLUMNS]
    assert quarantine.column("a").to_pylist() == [2, 4]
    assert quarantine.column(ROW_ERROR).to_pylist() == ["bad date", "neg"]
    assert quarantine.schema.field(ROW_ERROR).type == pa.string()
    assert quarantine.schema.field(SOURCE_ROW).type == pa.int64()
    assert quarantine.column(SOURCE_ROW).to_pylist() == [2, 4]  # 1-based positions
    assert quarantine.column("_cf_job_id").to_pylist() == ["42", "42"]
    assert quarantine_name("orders") == "orders_quarantine"


def test_source_row_prefers_row_id_and_falls_back_per_row(lin):
    table = pa.table(
        {
            "a": [1, 2, 3],
            ROW_ERROR: ["x", "y", None],
            ROW_ID: pa.array([100, None, 102], pa.uint32()),
        }
    )
    valid, quarantine = prepare_output("o", table, lin, row_offset=50)
    assert ROW_ID not in valid.column_names
    assert quarantine is not None and ROW_ID not in quarantine.column_names
    # row 1 has its id (100); row 2 has a null id, so its stream position: 50 + 1 + 1.
    assert quarantine.column(SOURCE_ROW).to_pylist() == [100, 52]


def test_generator_batches_keep_counting_source_rows(lin):
    """row_offset makes the fallback row number continue across batches of one output."""
    seen = 0
    rows = []
    for batch in ([None, "e1", None], ["e2", None], [None, None, "e3"]):
        table = pa.table({"v": list(range(len(batch))), ROW_ERROR: batch})
        _, quarantine = prepare_output("o", table, lin, row_offset=seen)
        seen += table.num_rows
        if quarantine is not None:
            rows += quarantine.column(SOURCE_ROW).to_pylist()
    assert rows == [2, 4, 8]


def test_valid_schema_is_the_same_with_and_without_row_error(lin):
    """§13.6: a batch carrying _cf_row_error must not change the valid schema."""
    plain, _ = prepare_output("o", pa.table({"a": [1]}), lin)
    with_err, _ = prepare_output("o", pa.table({"a": [2, 3], ROW_ERROR: [None, "x"]}), lin)
    all_null, _ = prepare_output("o", pa.table({"a": [4], ROW_ERROR: pa.nulls(1)}), lin)
    with_id, _ = prepare_output("o", pa.table({"a": [5], ROW_ID: [1]}), lin)
    for other in (with_err, all_null, with_id):
        assert other.schema == plain.schema


@pytest.mark.parametrize(
    "err",
    [
        pa.array(["bad", None], pa.large_string()),
        pa.array(["bad", None]).dictionary_encode(),
        pa.array(["bad", None], pa.string_view()),
    ],
)
def test_row_error_text_types_are_normalised_to_string(lin, err):
    _, quarantine = prepare_output("o", pa.table({"a": [1, 2], ROW_ERROR: err}), lin)
    assert quarantine is not None
    assert quarantine.schema.field(ROW_ERROR).type == pa.string()
    assert quarantine.column(ROW_ERROR).to_pylist() == ["bad"]


def test_row_error_must_be_text(lin):
    with pytest.raises(LineageError, match="output 'o': column '_cf_row_error' must hold text"):
        prepare_output("o", pa.table({"a": [1], ROW_ERROR: [True]}), lin)


def test_row_id_must_be_integer(lin):
    with pytest.raises(LineageError, match="'__cf_row_id' must hold integer"):
        prepare_output("o", pa.table({"a": [1], ROW_ERROR: ["x"], ROW_ID: ["1"]}), lin)


def test_all_rows_bad_gives_empty_valid_table(lin):
    valid, quarantine = prepare_output("o", pa.table({"a": [1, 2], ROW_ERROR: ["x", "y"]}), lin)
    assert valid.num_rows == 0 and valid.column_names == ["a", *LINEAGE_COLUMNS]
    assert quarantine is not None and quarantine.num_rows == 2


# -- several jobs' batches stamped at once (a standalone run's batch of small files) -------

def _plain(table: pa.Table) -> list[dict[str, object]]:
    """Rows with dictionary columns decoded, for comparing tables encoded differently."""
    return table.to_pylist()


def test_stamp_rows_of_several_jobs_equals_each_job_stamped_alone():
    when = datetime(2026, 12, 8, tzinfo=UTC)
    lineages = [Lineage(f"hash{i % 2}", f"job-{i}", when + timedelta(seconds=i), "1.0")
                for i in range(4)]
    tables = [
        pa.table({"x": [1, 2, 3], ROW_ERROR: [None, "bad", ""]}),
        pa.table({"x": [4, 5]}),  # no bad row, no error column
        pa.table({"x": [6, 7, 8], ROW_ERROR: ["e1", None, "e3"], ROW_ID: [None, 70, 80]}),
        pa.table({"x": [9], ROW_ERROR: [None]}),
    ]
    offsets = [0, 10, 100, 5]
    splits = [split_rows("out", t) for t in tables]
    assert [s.bad_rows for s in splits] == [1, 0, 2, 0]
    valid, bad = stamp_rows(list(zip(splits, lineages, offsets, strict=True)))
    alone = [prepare_output("out", t, lin, row_offset=o)
             for t, lin, o in zip(tables, lineages, offsets, strict=True)]
    assert _plain(valid) == [r for v, _ in alone for r in _plain(v)]
    assert bad is not None
    assert _plain(bad) == [r for _, b in alone if b is not None for r in _plain(b)]
    # _cf_source_row: the row id when given, else the position in its own file + offset
    assert bad.column(SOURCE_ROW).to_pylist() == [2, 101, 80]
    assert valid.schema == alone[0][0].schema  # the same columns and types as a lone job's


def test_stamp_rows_without_bad_rows_and_with_one_part():
    lin = Lineage("h", "job-a", datetime(2026, 1, 1, tzinfo=UTC), "2")
    other = Lineage("h", "job-b", datetime(2026, 1, 1, tzinfo=UTC), "2")
    split = split_rows("out", pa.table({"x": [1, 2]}))
    valid, bad = stamp_rows([(split, lin, 0), (split, other, 0)])
    assert bad is None
    assert valid.column("_cf_job_id").to_pylist() == ["job-a", "job-a", "job-b", "job-b"]
    # one distinct source hash and version: one dictionary value each
    assert len(valid.column("_cf_source_hash").combine_chunks().dictionary) == 1
    assert stamp_rows([(split, lin, 0)])[0].equals(prepare_output("out", split.data, lin)[0])

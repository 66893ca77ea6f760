"""Schema contracts (casparian_nb.contracts): the manifest grammar, every kind of violation,
the lossless casts, and the quarantine policy arithmetic. Real pyarrow tables, no mocks."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pyarrow as pa
import pytest

from casparian_nb import contracts
from casparian_nb.errors import PluginError, QuarantineLimitError, SchemaContractError
from casparian_nb.protocol import QuarantinePolicy


def contract(*columns: dict[str, object], output: str = "orders") -> contracts.OutputContract:
    return contracts.parse_manifest({output: {"columns": list(columns)}})[output]


def errors_of(table: pa.Table) -> list[str | None]:
    return table.column("_cf_row_error").to_pylist()


# -- the manifest ---------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "canonical"), [
    ("int64", "int64"), ("INTEGER", "int64"), ("int", "int64"), ("double", "float64"),
    ("text", "string"), ("boolean", "bool"), ("datetime", "timestamp"),
    ("decimal(12, 2)", "decimal(12,2)"), ("timestamp_tz", "timestamp_tz(UTC)"),
    ("timestamp_tz(Europe/Paris)", "timestamp_tz(Europe/Paris)"),
    ("list<int>", "list<int64>"), ("list<list<string>>", "list<list<string>>"),
    ("struct<a: int, b: list<string>>", "struct<a: int64, b: list<string>>"),
    ({"kind": "decimal", "precision": 10, "scale": 3}, "decimal(10,3)"),
    ({"kind": "list", "item": "date"}, "list<date>"),
    ({"kind": "struct", "fields": [{"name": "x", "type": "float"}]}, "struct<x: float64>"),
    ({"kind": "timestamp_tz", "tz": "Asia/Tokyo"}, "timestamp_tz(Asia/Tokyo)"),
])
def test_types_parse_to_one_canonical_spelling(spec: object, canonical: str) -> None:
    assert contracts.parse_type(spec) == canonical
    contracts.arrow_type(canonical)  # every canonical spelling has an arrow type


def test_arrow_types_of_the_vocabulary() -> None:
    c = contract({"name": "a", "type": "decimal(5,1)"}, {"name": "b", "type": "timestamp_tz"},
                 {"name": "c", "type": "struct<x: int64, y: list<string>>"},
                 {"name": "d", "type": "int64", "nullable": False})
    assert contracts.arrow_schema(c) == pa.schema([
        pa.field("a", pa.decimal128(5, 1)), pa.field("b", pa.timestamp("us", tz="UTC")),
        pa.field("c", pa.struct([("x", pa.int64()), ("y", pa.list_(pa.string()))])),
        pa.field("d", pa.int64(), nullable=False)])


@pytest.mark.parametrize(("columns", "message"), [
    ([{"name": "a", "type": "int65"}], "unknown type 'int65'"),
    ([{"name": "a", "type": "decimal(40,2)"}], "precision must be 1-38"),
    ([{"name": "a", "type": "list<int64"}], "expected '>'"),
    ([{"name": "a", "type": "timestamp_tz(Mars/Olympus)"}], "unknown time zone"),
    ([{"name": "a"}], "'type' is missing"),
    ([{"name": "a", "type": "int64"}, {"name": "a", "type": "string"}], "declared twice"),
    ([{"name": "a", "type": "int64", "nulable": False}], "unknown key(s) 'nulable'"),
    ([{"name": "a", "type": "int64", "nullable": False, "required": False}], "must be nullable"),
])
def test_bad_manifests_are_refused_in_one_line(columns: list[object], message: str) -> None:
    with pytest.raises(PluginError, match=None) as info:
        contracts.parse_manifest({"orders": {"columns": columns}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_manifest_round_trips_through_manifest_for() -> None:
    manifest = {"orders": {"columns": [
        {"name": "id", "type": "int64", "nullable": False},
        {"name": "note", "type": "string", "required": False}]}, "errors": {}}
    parsed = contracts.parse_manifest(manifest)
    assert contracts.manifest_for(parsed) == manifest
    assert contracts.parse_manifest(contracts.manifest_for(parsed)) == parsed


# -- row problems -> quarantine ---------------------------------------------------------------

def test_a_clean_batch_passes_unchanged_in_declared_order() -> None:
    c = contract({"name": "id", "type": "int64"}, {"name": "name", "type": "string"})
    table = pa.table({"name": ["a", "b"], "id": pa.array([1, 2], pa.int64())})
    out = contracts.enforce(c, table)
    assert out.schema.names == ["id", "name"] and out.column("id").to_pylist() == [1, 2]
    assert "_cf_row_error" not in out.schema.names


def test_lossless_differences_are_cast() -> None:
    c = contract({"name": "id", "type": "int64"}, {"name": "missing", "type": "string"},
                 {"name": "at", "type": "timestamp"}, {"name": "cat", "type": "string"},
                 {"name": "big", "type": "string"})
    table = pa.table({
        "id": pa.array([1, 2], pa.int32()),
        "missing": pa.nulls(2),                                     # null-typed, all missing
        "at": pa.array([0, 1], pa.timestamp("s")),
        "cat": pa.array(["x", "y"]).dictionary_encode(),
        "big": pa.array(["p", "q"], pa.large_string()),
    })
    out = contracts.enforce(c, table)
    assert out.schema == contracts.arrow_schema(c)
    assert out.column("at").to_pylist()[1] == dt.datetime(1970, 1, 1, 0, 0, 1)
    assert "_cf_row_error" not in out.schema.names


def test_a_null_in_a_non_nullable_column_quarantines_that_row() -> None:
    c = contract({"name": "id", "type": "int64", "nullable": False})
    out = contracts.enforce(c, pa.table({"id": pa.array([1, None, 3], pa.int64())}))
    assert errors_of(out) == [None, "schema: id: null not allowed", None]


@pytest.mark.parametrize(("values", "declared", "bad"), [
    (pa.array(["1", "x", "3"]), "int64", "'x'"),
    (pa.array([1.0, 1.5, 2.0]), "int64", "'1.5'"),
    (pa.array([1, 300, 2], pa.int64()), "int8", "'300'"),
    (pa.array([1, 2**53 + 1, 2], pa.int64()), "float64", "'9007199254740993'"),
    (pa.array(["1.25", "2.125", "3"]), "decimal(10,2)", "'2.125'"),
    (pa.array(["2024-01-01", "yesterday", "2024-01-03"]), "date", "'yesterday'"),
    (pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2, 13), dt.datetime(2024, 1, 3)]),
     "date", "'2024-01-02 13:00:00"),
])
def test_a_value_that_does_not_cast_losslessly_quarantines_its_row(
        values: pa.Array, declared: str, bad: str) -> None:
    c = contract({"name": "v", "type": declared})
    out = contracts.enforce(c, pa.table({"v": values}))
    errs = errors_of(out)
    assert errs[0] is None and errs[2] is None
    assert errs[1] is not None and errs[1].startswith(f"schema: v: {bad}")
    assert errs[1].endswith(f"does not fit {declared} losslessly")
    assert out.column("v").type == contracts.arrow_type(declared)
    assert out.column("v").to_pylist()[1] is None  # the bad value never reaches the output


def test_bad_rows_are_found_among_many() -> None:
    values = [str(i) for i in range(10_000)]
    for i in (0, 17, 4_999, 9_999):
        values[i] = f"bad{i}"
    out = contracts.enforce(contract({"name": "v", "type": "int64"}), pa.table({"v": values}))
    errs = errors_of(out)
    assert [i for i, e in enumerate(errs) if e] == [0, 17, 4_999, 9_999]
    assert out.column("v").to_pylist()[18] == 18


def test_the_plugins_own_row_error_comes_first() -> None:
    c = contract({"name": "id", "type": "int64", "nullable": False})
    table = pa.table({"id": pa.array([None, None, 3], pa.int64()),
                      "_cf_row_error": pa.array(["parser: broken line", "", None])})
    assert errors_of(contracts.enforce(c, table)) == [
        "parser: broken line", "schema: id: null not allowed", None]


def test_helper_columns_pass_through() -> None:
    c = contract({"name": "id", "type": "int64"})
    table = pa.table({"__cf_row_id": pa.array([7], pa.int64()), "id": pa.array([1], pa.int64())})
    out = contracts.enforce(c, table)
    assert out.schema.names == ["id", "__cf_row_id"]


def test_an_optional_column_may_be_missing() -> None:
    c = contract({"name": "id", "type": "int64"},
                 {"name": "note", "type": "string", "required": False})
    out = contracts.enforce(c, pa.table({"id": pa.array([1, 2], pa.int64())}))
    assert out.column("note").to_pylist() == [None, None]


# -- shape problems -> permanent failure ------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    (pa.table({"id": pa.array([1], pa.int64())}), "missing column 'amount' (decimal(10,2))"),
    (pa.table({"id": pa.array([1], pa.int64()), "amount": pa.array([Decimal("1.00")]),
               "surprise": ["x"]}), "extra column 'surprise' (string)"),
    (pa.table({"id": pa.array([[1]]), "amount": pa.array([Decimal("1.00")])}),
     "column 'id': expected int64, got list<int64> (no lossless cast)"),
    (pa.table({"id": pa.array([dt.datetime(2024, 1, 1)]), "amount": ["1"]}),
     "column 'id': expected int64, got timestamp (no lossless cast)"),
])
def test_shape_problems_fail_naming_output_column_expected_and_actual(
        table: pa.Table, message: str) -> None:
    c = contract({"name": "id", "type": "int64"}, {"name": "amount", "type": "decimal(10,2)"})
    with pytest.raises(SchemaContractError) as info:
        contracts.enforce(c, table)
    text = str(info.value)
    assert text.startswith("output 'orders' does not match its declared schema: ")
    assert message in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_every_shape_problem_is_named_at_once() -> None:
    c = contract({"name": "id", "type": "int64"}, {"name": "amount", "type": "float64"})
    with pytest.raises(SchemaContractError) as info:
        contracts.enforce(c, pa.table({"id": pa.array([[1]]), "x": [1]}))
    text = str(info.value)
    assert "missing column 'amount'" in text and "extra column 'x'" in text
    assert "column 'id': expected int64" in text


def test_an_undeclared_output_fails_and_no_manifest_checks_nothing() -> None:
    declared = contracts.parse_manifest({"orders": {"columns": [{"name": "id",
                                                                 "type": "int64"}]}})
    table = pa.table({"anything": [1]})
    with pytest.raises(SchemaContractError, match="output 'refunds' is not declared"):
        contracts.check_output(declared, "refunds", table)
    assert contracts.check_output(None, "refunds", table) is table


# -- quarantine policy ----------------------------------------------------------------------

def test_quarantine_policy_parses_and_refuses_nonsense() -> None:
    assert contracts.quarantine_policy({"max_pct": 10, "max_rows": 1000}) == \
        QuarantinePolicy(max_pct=10.0, max_rows=1000)
    assert contracts.quarantine_policy({}) is None and contracts.quarantine_policy(None) is None
    for bad in ({"max_pct": 101}, {"max_pct": float("nan")}, {"max_rows": -1},
                {"max_rows": 1.5}, {"max_pct": True}, {"pct": 1}, [10]):
        with pytest.raises(PluginError):
            contracts.quarantine_policy(bad)


def test_quarantine_limits() -> None:
    policy = QuarantinePolicy(max_pct=10.0)
    contracts.check_quarantine(policy, "orders", 100, 10)  # at the limit: fine
    with pytest.raises(QuarantineLimitError) as info:
        contracts.check_quarantine(policy, "orders", 100, 37)
    assert str(info.value) == ("quarantine limit exceeded: 37% > 10% "
                               "(output 'orders': 37 of 100 rows quarantined)")
    check = contracts.JobCheck(None, QuarantinePolicy(max_rows=5))
    check.count("orders", 100, 5)
    with pytest.raises(QuarantineLimitError, match=r"^quarantine limit exceeded: 6 rows > 5 "):
        check.count("orders", 10, 1)  # fails as soon as the limit is passed


def test_a_clean_batch_costs_little() -> None:
    c = contract(*({"name": f"c{i}", "type": "int64", "nullable": False} for i in range(20)))
    table = pa.table({f"c{i}": pa.array(range(200), pa.int64()) for i in range(20)})
    contracts.enforce(c, table)
    start = time.perf_counter()
    for _ in range(200):
        contracts.enforce(c, table)
    per_batch = (time.perf_counter() - start) / 200
    assert per_batch < 0.002, f"{per_batch * 1e6:.0f} µs per clean 20-column batch"

"""Output plans and materialization keys (F4): one function, stable keys, each input counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from blake3 import blake3

from casparian_nb.errors import OutputNameError, SinkError
from casparian_nb.plan import (
    ALL_OUTPUTS,
    OutputTarget,
    canonical_sink_uri,
    materialization_key,
    output_plan,
    plan_from_json,
    plan_keys,
    plan_to_json,
    schema_hash,
)

COLS = [{"name": "id", "type": "int64", "nullable": False}, {"name": "amount", "type": "float64"}]
MANIFEST = {"orders": {"columns": COLS}, "errors": {"columns": [{"name": "msg", "type": "string"}]}}


def plan(**overrides: object) -> list[OutputTarget]:
    args: dict[str, object] = {
        "manifest": MANIFEST,
        "default_output": "orders",
        "sink_uri": "parquet:///data/out",
        "sink_mode": "append",
    }
    args.update(overrides)
    return output_plan(**args)  # type: ignore[arg-type]


def keys(p: list[OutputTarget], version: str = "1.0.0") -> list[str]:
    return plan_keys(p, "srchash", "orders_parser", version)


def test_identical_inputs_give_identical_plans_and_keys() -> None:
    assert plan() == plan()
    assert keys(plan()) == keys(plan())
    assert len(set(keys(plan()))) == 2


def test_one_target_per_manifest_output_sorted_and_no_quarantine_target() -> None:
    p = plan()
    assert [t.output for t in p] == ["errors", "orders"]
    assert [t.table for t in p] == ["errors", "orders"]
    assert all(not t.output.endswith("_quarantine") for t in p)
    assert p[1].schema_hash == schema_hash(COLS) != ""


def test_without_manifest_a_single_all_outputs_target() -> None:
    manifests: list[dict[str, object] | None] = [None, {}]
    for manifest in manifests:
        (target,) = plan(manifest=manifest)
        assert target.output == ALL_OUTPUTS
        assert target.schema_hash == ""
        assert target.table == "orders"  # where a bare table lands


def test_manifest_table_and_duckdb_table_param() -> None:
    p = plan(manifest={"orders": {"columns": COLS, "table": "order_rows"}})
    assert p[0].table == "order_rows"
    p = plan(sink_uri="duckdb:///data/x.duckdb?table=t", manifest={"orders": {}})
    assert p[0].table == "t"


def test_parser_version_changes_materialization_keys_not_targets() -> None:
    assert keys(plan(), "1.0.0") != keys(plan(), "1.0.1")
    assert all(a != b for a, b in zip(keys(plan(), "1.0.0"), keys(plan(), "2"), strict=True))


def test_sink_change_changes_every_key() -> None:
    a, b = plan(), plan(sink_uri="parquet:///data/elsewhere")
    assert all(x.target_key != y.target_key for x, y in zip(a, b, strict=True))
    assert set(keys(a)).isdisjoint(keys(b))
    c = plan(sink_uri="csv:///data/out")
    assert set(keys(a)).isdisjoint(keys(c))


def test_mode_change_changes_every_key() -> None:
    modes = ["append", "replace", "error"]
    all_keys = [set(keys(plan(sink_mode=m))) for m in modes]
    assert len(set().union(*all_keys)) == 6


def test_schema_change_changes_only_that_outputs_key() -> None:
    changed = {**MANIFEST, "orders": {"columns": [*COLS, {"name": "note", "type": "string"}]}}
    a, b = plan(), plan(manifest=changed)
    assert a[0] == b[0]  # errors: untouched
    assert a[1].target_key != b[1].target_key and a[1].schema_hash != b[1].schema_hash


def test_table_change_changes_key() -> None:
    a = plan(manifest={"orders": {"columns": COLS}})
    b = plan(manifest={"orders": {"columns": COLS, "table": "other"}})
    assert a[0].target_key != b[0].target_key


def test_schema_hash_canonical_json() -> None:
    reordered_keys = [
        {"type": "int64", "nullable": False, "name": "id"},
        {"type": "float64", "name": "amount"},
    ]
    assert schema_hash(COLS) == schema_hash(reordered_keys)
    assert schema_hash(COLS) != schema_hash(list(reversed(COLS)))  # column order matters
    assert schema_hash(None) == schema_hash([]) == ""


def test_sink_spelling_does_not_change_keys(tmp_path: Path) -> None:
    out = tmp_path / "output"
    spellings = [
        f"parquet://{out}",
        f"parquet://{out}/",
        f"PARQUET://{out}//",
        f"parquet://{tmp_path}/./x/../output",
    ]
    plans = [plan(sink_uri=s) for s in spellings]
    plans.append(plan(sink_uri="parquet://output/", base=tmp_path))
    plans.append(plan(sink_uri="parquet://output", sink_mode="APPEND", base=tmp_path))
    assert all(p == plans[0] for p in plans)
    assert canonical_sink_uri("parquet://output/", base=tmp_path) == f"parquet://{out}"


def test_key_formula_is_pinned() -> None:
    """The documented formula: blake3 over each part followed by 0x1F (as in the original)."""

    def h(*parts: str) -> str:
        return blake3(b"".join(p.encode() + b"\x1f" for p in parts)).hexdigest()

    (target,) = plan(manifest={"orders": {"columns": COLS}})
    assert target.target_key == h(
        "orders", "parquet:///data/out", "append", "orders", schema_hash(COLS)
    )
    assert materialization_key("s", "p", "1", target.target_key) == h(
        "s", "p", "1", target.target_key
    )
    assert materialization_key("s", "p", None, "t") == h("s", "p", "", "t")


def test_plan_json_round_trip() -> None:
    p = plan()
    text = plan_to_json(p)
    assert plan_from_json(text) == p
    import json

    assert plan_from_json(json.loads(text)) == p  # as job dicts from the store carry it
    assert plan_from_json(None) == [] and plan_from_json("") == []
    with pytest.raises(ValueError):
        plan_from_json('{"output": "x"}')
    with pytest.raises(ValueError):
        plan_from_json('[{"output": "x"}]')


def test_invalid_names_and_modes_are_refused() -> None:
    with pytest.raises(OutputNameError):
        plan(manifest={"Bad-Name": {}})
    with pytest.raises(OutputNameError):
        plan(manifest=None, default_output="1x")
    with pytest.raises(SinkError):
        plan(sink_mode="upsert")
    with pytest.raises(SinkError):
        plan(sink_uri="s3://bucket/x")


# -- staleness and the one skip rule (F15) ------------------------------------------------

def test_key_version_uses_the_source_hash_without_a_declared_version() -> None:
    from casparian_nb.plan import declared_version, key_version

    assert declared_version("0.0.0", False) is None
    assert declared_version("1.2.0", True) == "1.2.0"
    assert key_version("1.2.0", "abc") == "1.2.0"  # a declared version is trusted
    assert key_version(None, "abc") == "source:abc" != key_version(None, "abd")


def test_decide_run_skip_stale_and_force() -> None:
    from casparian_nb.plan import decide
    from casparian_nb.protocol import InputDecision

    keys = ["k1", "k2"]
    assert decide(keys, {"k1": "s1"}, "s1") == InputDecision.RUN  # k2 missing
    assert decide(keys, {"k1": "s1", "k2": "s1"}, "s1") == InputDecision.SKIP
    assert decide(keys, {"k1": "s1", "k2": "s0"}, "s1") == InputDecision.STALE
    assert decide(keys, {"k1": None, "k2": None}, "s1") == InputDecision.SKIP  # job row gone
    assert decide(keys, {"k1": "s0", "k2": "s0"}, "s1", force=True) == InputDecision.RUN
    assert decide([], {}, "s1") == InputDecision.RUN


def test_stale_warning_is_one_line() -> None:
    from casparian_nb.plan import stale_warning

    assert stale_warning(3, "orders", "1.0.0", flag="--force") == (
        "3 files were processed by orders 1.0.0 with a different source; use --force to re-run")
    assert stale_warning(1, "orders", None, flag="force=True").startswith("1 file was processed")

"""The JobSpec: built once at submission and dispatched unchanged; and whether a job's plugin
name was declared (readable on tapes) or is the plugin file's stem (hashed on tapes) — at
submission, and for a job reloaded from the state DB after a restart, which has no column for
it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from casparian_nb.config import Settings
from casparian_nb.protocol import Codec, Dispatch, EventName, JobSpec, SubmitJobs
from casparian_nb.sentinel import _submit
from casparian_nb.sentinel._persist import Persister
from casparian_nb.sentinel._submit import SubmitHandler, job_spec_from_row, name_declared
from casparian_nb.sentinel.state import (
    JobsQueued,
    Send,
    SentinelState,
    WorkerJoined,
    plugin_name_fields,
)
from casparian_nb.store import StateStore
from tests.conftest import FIXTURE_PLUGIN, make_inputs

NAMELESS = "def parse(path):\n    return None\n"
NAMED = 'name = "orders"\ndef parse(path):\n    return None\n'


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _submit._declared_in_file.cache_clear()


def _plugin(tmp_path: Path, filename: str, source: str) -> tuple[str, str]:
    """(path, sha256 fingerprint) of a plugin file."""
    from casparian_nb.plugins import inspect_plugin

    path = tmp_path / filename
    path.write_text(source)
    return str(path), inspect_plugin(path).source_hash


def test_a_submission_says_and_that_wins(tmp_path: Path) -> None:
    path, fp = _plugin(tmp_path, "orders.py", NAMELESS)
    row: dict[str, Any] = {"plugin_name": "orders", "parser_fingerprint": fp}
    assert name_declared({**row, "plugin_name_declared": True}, path) is True
    assert name_declared({**row, "plugin_name_declared": False}, "/elsewhere/x.py") is False


def test_a_reloaded_row_with_a_name_unlike_the_stem_was_declared(tmp_path: Path) -> None:
    # An undeclared name is always the stem, so a different name cannot be the file's.
    assert name_declared({"plugin_name": "orders"}, str(tmp_path / "gone_acme.py")) is True


def test_a_reloaded_row_named_like_the_stem_asks_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    named, named_fp = _plugin(tmp_path / "a", "orders.py", NAMED)
    nameless, nameless_fp = _plugin(tmp_path, "orders.py", NAMELESS)
    assert name_declared({"plugin_name": "orders", "parser_fingerprint": named_fp}, named)
    assert not name_declared({"plugin_name": "orders", "parser_fingerprint": nameless_fp},
                             nameless)


@pytest.mark.parametrize("case", ["changed", "gone", "no_fingerprint", "no_path", "invalid"])
def test_without_evidence_the_name_counts_as_the_files(tmp_path: Path, case: str) -> None:
    """Unknown ⇒ redacted: hashing a declared name is harmless, keeping a file name leaks."""
    path, fp = _plugin(tmp_path, "orders.py", NAMED)
    row: dict[str, Any] = {"plugin_name": "orders", "parser_fingerprint": fp}
    if case == "changed":
        Path(path).write_text(NAMED + "# edited\n")
    elif case == "gone":
        Path(path).unlink()
    elif case == "no_fingerprint":
        row["parser_fingerprint"] = None
    elif case == "no_path":
        path = ""
    else:
        Path(path).write_text("def parse(:\n")
    assert name_declared(row, path) is False


def test_job_spec_carries_the_flag(tmp_path: Path) -> None:
    path, fp = _plugin(tmp_path, "acme_orders.py", NAMELESS)
    spec = job_spec_from_row({"id": 3, "input_file": "/in/a.csv", "plugin_name": "acme_orders",
                              "parser_fingerprint": fp, "sink_uri": "parquet:///o"}, path)
    assert (spec.job_id, spec.plugin_name_declared, spec.mode) == ("3", False, "append")
    assert plugin_name_fields(spec) == {"plugin_name": "acme_orders",
                                        "plugin_name_source": "file"}


@pytest.mark.parametrize(("filename", "source", "declared"), [
    ("acme_orders.py", NAMELESS, False),            # the stem: hashed on tapes
    ("orders.py", NAMED, True),                     # declared, equal to the stem
    ("fixture_plugin_copy.py", None, True),         # declared, unlike the stem
])
def test_the_flag_survives_a_sentinel_restart(settings: Settings, tmp_path: Path,
                                              filename: str, source: str | None,
                                              declared: bool) -> None:
    plugin = tmp_path / filename
    if source is None:
        shutil.copy(FIXTURE_PLUGIN, plugin)
    else:
        plugin.write_text(source)
    inputs = make_inputs(tmp_path / "data", 2)
    store = StateStore.open(settings.state_db)
    try:
        out = SubmitHandler(store, settings).submit(
            SubmitJobs(plugin=str(plugin), inputs=[str(p) for p in inputs]), now=0.0)
        assert [r.spec.plugin_name_declared for r in out.records] == [declared] * 2
        queued = [data for name, data in out.events if name == EventName.JOB_QUEUED]
        assert [("plugin_name_source" in q) for q in queued] == [not declared] * 2
        # A restarted sentinel rebuilds every queued job's spec from its DB row.
        _submit._declared_in_file.cache_clear()
        reloaded = Persister(store, settings).load_queued(now=1.0)
        assert [r.id for r in reloaded] == out.job_ids
        assert [r.spec.plugin_name_declared for r in reloaded] == [declared] * 2
    finally:
        store.close()


def test_the_spec_built_at_submission_is_the_one_dispatched(settings: Settings,
                                                            tmp_path: Path) -> None:
    """No key renamed or rebuilt on the way: the worker gets the very JobSpec the submission
    made (the Dispatch adds only the attempt and timeout), it survives the wire and the
    state DB's JSON unchanged, and a restarted sentinel reloads an equal one."""
    inputs = make_inputs(tmp_path / "data", 2)
    store = StateStore.open(settings.state_db)
    try:
        out = SubmitHandler(store, settings).submit(SubmitJobs(
            plugin=str(FIXTURE_PLUGIN), inputs=[str(p) for p in inputs], timeout=30.0,
            submission_id="sub-1"), now=0.0)
        specs = [r.spec for r in out.records]
        assert [s.job_id for s in specs] == [str(i) for i in out.job_ids]
        assert [s.input_file for s in specs] == [str(p) for p in inputs]
        assert {(s.submission_id, s.timeout_s, s.mode) for s in specs} == {("sub-1", 30.0,
                                                                            "append")}
        machine = SentinelState()
        machine.handle(JobsQueued(out.records, 0.0))
        actions = machine.handle(WorkerJoined("w", b"w", 2, 1, 0.0))
        sent = [a.message for a in actions if isinstance(a, Send)]
        assert [type(m) for m in sent] == [Dispatch, Dispatch]
        assert [m.job for m in sent if isinstance(m, Dispatch)] == specs
        assert all(m.job is s for m, s in zip(sent, specs, strict=True)
                   if isinstance(m, Dispatch))
        assert [m.attempt for m in sent if isinstance(m, Dispatch)] == [1, 1]
        codec = Codec(b"k" * 32)
        for message in sent:
            assert codec.decode(codec.encode(message))[1].payload == message
        for spec in specs:  # what the state DB keeps (msgspec JSON) reads back the same
            assert msgspec.json.decode(msgspec.json.encode(spec), type=JobSpec) == spec
        reloaded = Persister(store, settings).load_queued(now=1.0)
        assert [r.spec for r in reloaded] == specs
    finally:
        store.close()

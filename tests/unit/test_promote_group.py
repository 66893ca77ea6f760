"""Group promotion (``sinks.promote_group``): many staged jobs through one journal, each job
still all-or-nothing, one bad job failing alone, and a crash finished by ``recover``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import casparian_nb.sinks._journal as journal_mod
import casparian_nb.sinks.promotion as promote_mod
from casparian_nb.errors import SinkError
from casparian_nb.sinks import SinkMode, output_filename, promote_group, recover
from casparian_nb.sinks.staging import JOURNAL
from tests.unit.test_sinks import hidden, job_rows, rows, sink_for, stage, visible


def _jobs(tmp_path: Path, n: int, uri: str) -> list:
    return [stage(tmp_path / "stg", f"j{i}", uri, {"orders": rows(3, bad=(1,), start=10 * i)})
            for i in range(n)]


def _place_fails_once(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """``_journal.place`` raises a passing OSError on its ``at_call``-th call only."""
    real, calls = journal_mod.place, []

    def flaky(tmp: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == at_call:
            raise OSError("disk hiccup")
        real(tmp, dst)

    monkeypatch.setattr(journal_mod, "place", flaky)


def _journals_written(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    written: list[dict] = []
    real = promote_mod.write_json_atomic

    def spy(path: Path, data: dict, **kw: object) -> None:
        if data.get("state") == "started":
            written.append(json.loads(json.dumps(data)))
        real(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(promote_mod, "write_json_atomic", spy)
    return written


@pytest.mark.parametrize("sync", [False, True])
def test_a_group_promotes_every_job_through_one_journal(tmp_path, monkeypatch, sync):
    uri = sink_for(tmp_path, "parquet")
    jobs = _jobs(tmp_path, 5, uri)
    journals = _journals_written(monkeypatch)
    results = promote_group(jobs, mode=SinkMode.APPEND, sync=sync)
    assert [sorted(a.output for a in r) for r in results] == [["orders", "orders_quarantine"]] * 5
    assert len(journals) == 1 and journals[0]["job_ids"] == [f"j{i}" for i in range(5)]
    assert len(journals[0]["moves"]) == 10
    sinkdir = tmp_path / "sink"
    assert len(visible(sinkdir)) == 10 and hidden(sinkdir) == []
    assert job_rows(uri, "orders") == {f"j{i}": 2 for i in range(5)}
    assert not any(Path(j.staging_dir).exists() for j in jobs)


def test_a_job_that_cannot_promote_fails_alone(tmp_path):
    """F0: the one whose final name is taken fails; the rest of the group is promoted."""
    uri = sink_for(tmp_path, "parquet")
    jobs = _jobs(tmp_path, 3, uri)
    sinkdir = tmp_path / "sink"
    sinkdir.mkdir()
    taken = sinkdir / output_filename("orders", "j1", "parquet")
    taken.write_bytes(b"someone else's")
    results = promote_group(jobs)
    assert isinstance(results[1], SinkError) and "never overwritten" in str(results[1])
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert taken.read_bytes() == b"someone else's"
    assert all(Path(o.path).exists() for o in jobs[1].outputs)  # left for the caller
    counts = job_rows(uri, "orders_quarantine")
    assert counts == {"j0": 1, "j2": 1}


def test_a_group_rolled_back_is_retried_job_by_job(tmp_path, monkeypatch):
    """A failure before any final is visible rolls the group's journal back; each job is
    then promoted on its own, so a passing fault costs nothing."""
    uri = sink_for(tmp_path, "parquet")
    jobs = _jobs(tmp_path, 3, uri)
    _place_fails_once(monkeypatch, 1)
    results = promote_group(jobs)
    assert not any(isinstance(r, Exception) for r in results)
    assert job_rows(uri, "orders") == {"j0": 2, "j1": 2, "j2": 2}
    assert hidden(tmp_path / "sink") == []


def test_a_group_cut_short_after_its_first_final_is_rolled_forward(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "parquet")
    jobs = _jobs(tmp_path, 3, uri)
    _place_fails_once(monkeypatch, 3)
    results = promote_group(jobs)
    assert not any(isinstance(r, Exception) for r in results)
    assert job_rows(uri, "orders") == {"j0": 2, "j1": 2, "j2": 2}


def test_a_crash_during_a_group_is_finished_by_recover(tmp_path, monkeypatch):
    """The process dies after the journal and some moves: recover() places every job's
    outputs (all of them, once), from the journal in the first job's staging dir."""
    uri = sink_for(tmp_path, "parquet")
    jobs = _jobs(tmp_path, 4, uri)
    real, calls = journal_mod.move_to_tmp, []

    class Crash(BaseException):
        pass

    def crash(src: Path, tmp: Path) -> None:
        calls.append(src)
        if len(calls) == 5:
            raise Crash
        real(src, tmp)

    monkeypatch.setattr(promote_mod, "move_to_tmp", crash)
    monkeypatch.setattr(promote_mod, "rollback", lambda *a: None)  # a crash rolls nothing back
    with pytest.raises(Crash):
        promote_group(jobs)
    assert (Path(jobs[0].staging_dir) / JOURNAL).exists()
    assert visible(tmp_path / "sink") == []  # nothing visible before recovery
    monkeypatch.undo()
    touched = recover(tmp_path / "stg")
    assert touched == ["j0"]
    assert job_rows(uri, "orders") == {f"j{i}": 2 for i in range(4)}
    assert hidden(tmp_path / "sink") == []
    # The other jobs' staging lost its files to the journal; promoting them again (a
    # sentinel re-adopting them after a restart) finds their finals and changes nothing.
    again = promote_group(jobs[1:])
    assert [sorted(a.output for a in r) for r in again] == [["orders", "orders_quarantine"]] * 3
    assert len(os.listdir(tmp_path / "sink")) == 8


def test_other_modes_and_duckdb_promote_one_by_one(tmp_path, monkeypatch):
    uri = sink_for(tmp_path, "duckdb")
    jobs = _jobs(tmp_path, 3, uri)
    journals = _journals_written(monkeypatch)
    results = promote_group(jobs, mode="append", sync=True)
    assert not any(isinstance(r, Exception) for r in results) and journals == []
    assert job_rows(uri, "orders") == {"j0": 2, "j1": 2, "j2": 2}
    replace = _jobs(tmp_path / "r", 2, sink_for(tmp_path / "r", "parquet"))
    results = promote_group(replace, mode="replace", run_job_ids=["j0", "j1"])
    assert not any(isinstance(r, Exception) for r in results)
    assert all("job_ids" not in j for j in journals)

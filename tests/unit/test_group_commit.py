"""GroupCommit (casparian_nb/_group.py) and fsync_files (sinks/_fs.py), with real threads and
real files."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from casparian_nb._group import GroupCommit
from casparian_nb.sinks._fs import fsync_files


def test_every_item_is_committed_before_its_submitter_returns() -> None:
    committed: set[int] = set()
    groups: list[int] = []
    lock = threading.Lock()

    def commit(items: list[int]) -> None:
        time.sleep(0.002)  # a disk's worth of latency, so submitters pile up behind it
        with lock:
            committed.update(items)
            groups.append(len(items))

    group: GroupCommit[int] = GroupCommit(commit)

    def submit(i: int) -> None:
        group.submit([i, -i - 1])
        with lock:
            assert i in committed and -i - 1 in committed

    with ThreadPoolExecutor(12) as ex:
        list(ex.map(submit, range(300)))
    assert sum(groups) == 600
    assert len(groups) < 300, "submitters that wait together are committed together"


def test_a_failed_commit_raises_in_every_submitter_of_its_group_and_not_later_ones() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def commit(items: list[str]) -> None:
        calls.append(items)
        if items == ["first"]:
            release.wait(5)  # hold the first group while the others queue up behind it
            return
        if "bad" in items:
            raise OSError("disk full")

    group: GroupCommit[str] = GroupCommit(commit)
    with ThreadPoolExecutor(4) as ex:
        first = ex.submit(group.submit, ["first"])
        while not calls:
            time.sleep(0.001)
        bad = ex.submit(group.submit, ["bad"])
        other = ex.submit(group.submit, ["other"])
        deadline = time.monotonic() + 5
        while len(group._waiting) < 2:  # both are waiting for the first group
            assert time.monotonic() < deadline
            time.sleep(0.001)
        release.set()
        first.result(5)
        with pytest.raises(OSError, match="disk full"):
            bad.result(5)
        with pytest.raises(OSError, match="disk full"):
            other.result(5)  # same group as "bad": not committed either
    group.submit(["later"])  # a later group is unaffected
    assert calls[-1] == ["later"]


def test_fsync_files_flushes_many_files_and_reports_a_missing_one(tmp_path: Path) -> None:
    paths = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x" * 1000)
        paths.append(p)
    fsync_files(paths)  # one syncfs on Linux; must not raise
    fsync_files(paths[:1])
    with pytest.raises(FileNotFoundError):
        fsync_files([*paths, tmp_path / "missing"])

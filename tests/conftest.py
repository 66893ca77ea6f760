"""Shared fixtures: a tmp home, the fixture plugin, and a real sentinel + workers.

Everything a test starts is stopped by PID at teardown, and the ``cluster`` fixture fails the
test if any process it started (sentinel, workers, their plugin hosts) is still alive after.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from casparian_nb.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PLUGIN = ROOT / "tests" / "fixtures" / "plugins" / "fixture_plugin.py"


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(home)


@pytest.fixture
def fixture_plugin(home: Path) -> Path:
    """A copy of the fixture plugin (tests may edit it freely)."""
    dst = home.parent / "fixture_plugin.py"
    shutil.copy(FIXTURE_PLUGIN, dst)
    return dst


def make_inputs(directory: Path, n: int, *, mode: str | None = None, prefix: str = "in") -> list[Path]:
    """``n`` small input files; a first line ``mode=<m>`` selects the fixture plugin's mode."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = directory / f"{prefix}_{i:04d}.txt"
        p.write_text((f"mode={mode}\n" if mode else "") + f"file {i}\n")
        out.append(p)
    return out


def descendants(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            found += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return found


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie. A process that exits between the two questions is
    not running (``pid_exists`` then ``Process(pid)`` alone races with its exit)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_no_leaks(pids: list[int], timeout: float = 10.0) -> None:
    def gone() -> bool:
        return not [p for p in pids if running(p)]
    wait_until(gone, timeout, message=f"processes {pids} to exit")


@pytest.fixture
def cluster_factory(settings: Settings) -> Iterator[Callable[..., Any]]:
    """Start real sentinel + worker processes in the tmp home; stop them and check for leaks."""
    from casparian_nb.launcher import LocalCluster

    started: list[LocalCluster] = []
    tracked: set[int] = set()

    def make(workers: int = 2, slots: int | None = 1, **overrides: Any) -> LocalCluster:
        s = settings.with_overrides(**overrides) if overrides else settings
        c = LocalCluster(s, workers=workers, slots=slots)
        started.append(c)
        c.start()
        tracked.update(c.pids)
        tracked.update(descendants(c.pids))
        return c

    yield make
    for c in started:
        tracked.update(descendants(c.pids))
        c.stop()
    assert_no_leaks(sorted(tracked))


@pytest.fixture
def cluster(cluster_factory: Callable[..., Any]) -> Any:
    return cluster_factory()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("CASPARIAN_", "CF_FIXTURE_")):
            monkeypatch.delenv(key)

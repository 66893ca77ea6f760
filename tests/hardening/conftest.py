"""Fixtures of the hardening suite, and the results table at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from tests.hardening.harness import RESULTS, RESULTS_FILE, TRIALS, ProcessTracker, format_table


@pytest.fixture
def tracker() -> Iterator[ProcessTracker]:
    """Samples every process the test starts (see ProcessTracker)."""
    t = ProcessTracker()
    yield t
    t.close()


@pytest.fixture
def hcluster(settings: Settings, tracker: ProcessTracker) -> Iterator[Callable[..., LocalCluster]]:
    """Start real sentinel + workers in the tmp home (again on the same home after a crash);
    at teardown stop them all and fail if any process the test started is still alive."""
    started: list[LocalCluster] = []

    def make(workers: int = 2, slots: int | None = 1, **overrides: Any) -> LocalCluster:
        s = settings.with_overrides(**overrides) if overrides else settings
        c = LocalCluster(s, workers=workers, slots=slots)
        started.append(c)
        c.start()
        tracker.sample()
        return c

    yield make
    for c in started:
        c.stop()
    left = tracker.leftovers()
    assert not left, f"processes outlived the test: {left}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    table = format_table(RESULTS)
    if table and not RESULTS_FILE:  # (benchmarks/hardening_report.py prints it itself)
        terminalreporter.section(f"hardening results ({TRIALS} trial(s) per fault scenario)")
        terminalreporter.write_line(table)

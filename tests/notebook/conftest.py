"""Fixtures of the notebook tests.

Widget helpers live in ``nb_harness``; process helpers are the shared ones of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import comm
import pytest

from tests.conftest import FIXTURE_PLUGIN, assert_no_leaks, descendants
from tests.notebook.nb_harness import RecordingComm


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingComm]]:
    """Every comm a widget opens during the test, recording its messages."""
    created: list[RecordingComm] = []

    def create_comm(**kwargs: Any) -> RecordingComm:
        c = RecordingComm(**kwargs)
        created.append(c)
        return c

    monkeypatch.setattr(comm, "create_comm", create_comm)
    yield created


@pytest.fixture
def fixture_plugin_path() -> Path:
    """The test fixture plugin (read-only use)."""
    return FIXTURE_PLUGIN


@pytest.fixture
def controllers(home: Path) -> Iterator[Callable[..., Any]]:
    """``cf.start(home=tmp home, ...)`` with real processes; every controller is stopped at
    teardown and the test fails if a process it started (or a plugin host) outlives it."""
    import casparian_nb as cf

    started: list[Any] = []
    tracked: set[int] = set()

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("workers", 1)
        kwargs.setdefault("slots", 1)
        ctl = cf.start(home=home, **kwargs)
        started.append(ctl)
        if ctl.cluster is not None:
            tracked.update(ctl.cluster.pids)
        return ctl

    yield make
    for ctl in started:
        if ctl.cluster is not None:
            tracked.update(descendants(ctl.cluster.pids))
        ctl.stop()
    assert_no_leaks(sorted(tracked))

"""jupyter-server's pytest fixtures (``jp_fetch``, ``jp_serverapp``, ``jp_root_dir``) with
the casparian server extension enabled, and the default home inside the test's tmp folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and the async-test hooks)


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"casparian_nb.serverext": True}}}


@pytest.fixture(autouse=True)
def default_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's default home: empty, outside the root, never the user's real one."""
    h = tmp_path / "default_home"
    monkeypatch.setenv("CASPARIAN_HOME", str(h))
    return h

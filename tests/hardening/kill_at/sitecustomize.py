"""Fault injection for the promotion-window tests: SIGKILL the sentinel at one exact point.

Put this directory first on ``PYTHONPATH`` of a sentinel and set

* ``CF_FIXTURE_KILL_AT`` — where (see ``POINTS``);
* ``CF_FIXTURE_KILL_MARKER`` — a file created (exclusively) just before the kill: the kill
  happens once per marker, and the test knows it really landed there.

Only the sentinel is armed: the patches are applied when ``casparian_nb.sentinel.server`` is
imported, which no other process does. Nothing here exists in the production modules; the
wrappers call the real functions.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_AT = os.environ.get("CF_FIXTURE_KILL_AT", "")
_MARKER = os.environ.get("CF_FIXTURE_KILL_MARKER", "")
_TARGET = "casparian_nb.sentinel.server"


def _kill_once() -> None:
    try:
        fd = os.open(_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.write(fd, _AT.encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _loop_after_staged_recorded(server: ModuleType) -> None:
    """The loop thread, right after the transaction that records a receipt's staged outputs
    commits — before the Promote reaches the committer."""
    from casparian_nb.sentinel import state as st

    original = server.Sentinel._persist_all

    def _persist_all(self: Any, persists: list[Any]) -> None:
        original(self, persists)
        if any(isinstance(a, st.RecordStaged) for a in persists):
            _kill_once()

    server.Sentinel._persist_all = _persist_all


def _committer_before_placing(server: ModuleType) -> None:
    """The committer thread mid-promotion: journal written, outputs moved next to their final
    names (``.<name>.cf-tmp``), none placed yet."""
    from casparian_nb.sinks import _journal

    original = _journal.place

    def place(tmp: Any, dst: Any) -> None:
        _kill_once()
        original(tmp, dst)

    _journal.place = place


def _committer_after_promoting(server: ModuleType) -> None:
    """The committer thread right after a promotion finished — before its result reaches the
    loop (nothing of it is in the state DB)."""
    import casparian_nb.sinks as sinks

    original = sinks.promote

    def promote(*args: Any, **kwargs: Any) -> Any:
        artifacts = original(*args, **kwargs)
        _kill_once()
        return artifacts

    sinks.promote = promote


def _loop_recording_completion(server: ModuleType) -> None:
    """The loop thread inside the transaction that records a finished promotion: the outputs
    are in the sink, the job's completion is not committed."""
    from casparian_nb.store import BatchingStateStore

    original = BatchingStateStore.complete_job

    def complete_job(self: Any, *args: Any, **kwargs: Any) -> Any:
        _kill_once()
        return original(self, *args, **kwargs)

    BatchingStateStore.complete_job = complete_job  # type: ignore[method-assign]


POINTS = {
    "sentinel-after-staged": _loop_after_staged_recorded,
    "committer-mid-promotion": _committer_before_placing,
    "committer-after-promotion": _committer_after_promoting,
    "sentinel-recording-completion": _loop_recording_completion,
}


class _ArmOnImport(importlib.abc.MetaPathFinder):
    """Patches the sentinel once its server module has been executed."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_arm(module: ModuleType) -> None:
            exec_module(module)
            POINTS[_AT](module)

        loader.exec_module = exec_and_arm  # type: ignore[method-assign]
        return spec


if _AT in POINTS and _MARKER:
    sys.meta_path.insert(0, _ArmOnImport())

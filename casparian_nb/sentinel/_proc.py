"""Process liveness, shared by the sentinel (are my workers alive?) and the workers (is my
sentinel alive?). A zombie counts as dead: a parent that has not reaped a killed child yet
must not keep its peers waiting."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import psutil

__all__ = ["pid_alive", "profiled"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such pid (or not a pid at all)
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


@contextlib.contextmanager
def profiled(name: str) -> Iterator[None]:
    """Development aid: with ``CASPARIAN_PROFILE_DIR`` set, cProfile this thread and every
    thread started inside, one ``<name>-<pid>[-<thread>].prof`` file each (written at exit)."""
    profile_dir = os.environ.get("CASPARIAN_PROFILE_DIR")
    if not profile_dir:
        yield
        return
    import atexit
    import cProfile
    import sys

    def start(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile()
        path = os.path.join(profile_dir, f"{name}-{os.getpid()}-"
                                         f"{threading.current_thread().name}.prof")

        def dump() -> None:
            prof.create_stats()
            prof.dump_stats(path)

        atexit.register(dump)
        prof.enable()

    threading.setprofile(start)
    main = cProfile.Profile()
    main.enable()
    try:
        yield
    finally:
        main.disable()
        main.dump_stats(os.path.join(profile_dir, f"{name}-{os.getpid()}.prof"))

"""Process liveness, shared by the sentinel (are my workers alive?) and the workers (is my
sentinel alive?). A zombie counts as dead: a parent that has not reaped a killed child yet
must not keep its peers waiting."""

from __future__ import annotations

import os

import psutil

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True

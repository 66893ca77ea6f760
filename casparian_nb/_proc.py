"""Process lifetimes, shared by every process role (sentinel, worker, plugin host, CLI).

* :func:`pid_alive`: the sentinel asks whether its local workers live, a worker whether its
  sentinel does. A zombie counts as dead: a parent that has not reaped a killed child yet
  must not keep its peers waiting.
* :func:`exit_with_parent`: the one way a process dies when the process that started it is
  gone (a plugin host when its worker is killed; a sentinel or worker when the notebook kernel
  that started it is killed and runs no ``atexit``).
* :func:`die_with_parent`: on Linux, have the kernel SIGKILL this process the instant its
  parent exits (``PR_SET_PDEATHSIG``) — for a plugin host, whose work is worthless once
  its worker is gone and which must not write another byte of staging after that.
* :func:`lower_priority` / :func:`nice_own_session`: batch processes (workers, plugin hosts)
  yield the CPU to interactive ones (a notebook kernel), also under Linux autogroup
  scheduling, where a process's nice counts only inside its session.
* :func:`profiled`: a development aid (``CASPARIAN_PROFILE_DIR``).

This module sits at the bottom of the layers (next to ``config``): it imports nothing of
casparian_nb, so the worker and the sentinel can both use it without importing each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

__all__ = ["ORPHANED_EXIT", "OWNER_PID_ENV", "describe_exit", "die_with_parent", "exit_with_owner",
           "exit_with_parent", "lower_priority", "nice_own_session", "pid_alive", "profiled",
           "signal_name"]

#: Set by ``cf.start()`` for the sentinel and workers it launches: the kernel's pid.
OWNER_PID_ENV = "CASPARIAN_OWNER_PID"
#: Exit status of a process that left because its parent did.
ORPHANED_EXIT = 70
_POLL = 0.2
#: ``prctl(2)`` option: the signal this process gets when its parent exits (Linux).
_PR_SET_PDEATHSIG = 1
#: Linux autogroup of this process's session (``sched(7)``); absent without autogroup.
_AUTOGROUP = "/proc/self/autogroup"


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


def lower_priority(increment: int) -> None:
    """Raise this process's nice value by ``increment`` (children inherit it), and its own
    session's with it (:func:`nice_own_session`). Raises ``OSError`` when not permitted."""
    os.nice(increment)
    nice_own_session()


def nice_own_session() -> None:
    """Give this process's autogroup the process's nice value, when the process leads its own
    session (started with ``start_new_session``).

    With autogroup scheduling (the default on desktop and many server kernels) the CPU is
    shared fairly between *sessions* first, and a process's nice counts only against the
    others of its session: a niced plugin host in a session of its own would still take as
    much CPU as the notebook kernel. A process that shares its session (run from a shell)
    leaves the session's priority alone; best effort, silent where unsupported.
    """
    try:
        if os.getsid(0) != os.getpid():
            return
        nice = os.nice(0)
        if nice <= 0:
            return
        with open(_AUTOGROUP, "w") as group:
            group.write(str(nice))
    except OSError:
        pass


def signal_name(signum: int) -> str:
    """``"SIGKILL"`` for 9; ``"signal 64"`` for a number with no name here."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int | None) -> str:
    """How a child process ended, from its ``Popen.returncode`` (negative: the signal):
    ``"was killed by SIGKILL"``, ``"exited with code 1"``."""
    if returncode is None:
        return "ended with an unknown status"
    if returncode < 0:
        return f"was killed by {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def exit_with_parent(parent_pid: int, *, grace: float | None = None,
                     before_exit: Callable[[], object] | None = None) -> bool:
    """Leave when ``parent_pid`` stops being this process's parent (it died; we were
    re-parented). Polls from a daemon thread, so it works on every POSIX system and for a
    parent killed with SIGKILL.

    ``grace=None``: ``os._exit`` at once (a plugin host), after ``before_exit`` (the host
    drops what it staged; errors there are ignored: the exit must happen).
    Otherwise SIGTERM to this process first, which runs its graceful stop, and ``os._exit``
    only if that has not finished within ``grace`` seconds.

    Returns False, watching nothing, when ``parent_pid`` is not the parent (already gone).
    """
    if parent_pid != os.getppid():
        return False

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_POLL)
        if grace is not None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace)
        elif before_exit is not None:
            with contextlib.suppress(BaseException):
                before_exit()
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="casparian-parent-watch", daemon=True).start()
    return True


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process as soon as ``parent_pid`` (our parent) exits.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); returns False elsewhere, when the call fails,
    or when the parent is already gone (then the caller should exit). The kernel sends the
    signal while the parent is still exiting — before it becomes a zombie that anyone could
    see as dead — so nothing that notices the parent's death can observe this process still
    running user code afterwards.

    The signal follows the parent *thread* that forked us, not the process: a parent must
    start such children from threads that live as long as it wants the children to.
    """
    if not sys.platform.startswith("linux") or parent_pid != os.getppid():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    # The parent may have died between our fork and the prctl: then no signal will come.
    return os.getppid() == parent_pid


def exit_with_owner(*, grace: float = 30.0) -> bool:
    """:func:`exit_with_parent` for a process started with ``$CASPARIAN_OWNER_PID`` naming its
    parent (``cf.start()`` sets it to the kernel's pid). The variable is removed so that
    grandchildren (plugin hosts) do not inherit it: they watch their own parent."""
    raw = os.environ.pop(OWNER_PID_ENV, "")
    return raw.isdigit() and exit_with_parent(int(raw), grace=grace)


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

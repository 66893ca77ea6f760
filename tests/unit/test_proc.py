"""casparian_nb._proc: liveness and the one way a process dies with its parent. Real
processes: a parent that starts a child and is then killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from casparian_nb._proc import OWNER_PID_ENV, die_with_parent, exit_with_parent, pid_alive
from tests.conftest import running, wait_until

ROOT = Path(__file__).resolve().parents[2]

#: The parent: starts CHILD (argv[1] is its code), prints the child's pid, sleeps.
PARENT = textwrap.dedent(f"""
    import os, subprocess, sys, time
    env = dict(os.environ)
    if sys.argv[2] == "owner":
        env[{OWNER_PID_ENV!r}] = str(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _orphan(child: str, mode: str, tmp_path: Path) -> int:
    """Run ``child`` under a parent, kill the parent with SIGKILL once the child is ready
    (it creates ``ready``), return the child's pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMP_DIR": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child, mode],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        wait_until(lambda: (tmp_path / "ready").exists(), 30, message="the child to watch")
        assert running(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    return pid


def _reap(pid: int) -> None:
    """Leave nothing behind when the test fails."""
    if running(pid):
        os.kill(pid, signal.SIGKILL)


def _assert_exits(pid: int, message: str) -> None:
    """``pid`` ends within 5 s; killed in any case, so a failing test leaves nothing behind."""
    try:
        wait_until(lambda: not running(pid), 5, message=message)
    finally:
        _reap(pid)


def test_a_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    child = textwrap.dedent("""
        import os, pathlib, time
        from casparian_nb._proc import exit_with_parent
        assert exit_with_parent(os.getppid())
        pathlib.Path(os.environ["TMP_DIR"], "ready").touch()
        time.sleep(120)
    """)
    pid = _orphan(child, "plain", tmp_path)
    _assert_exits(pid, "the orphaned child to exit")


def test_before_exit_runs_when_the_parent_is_gone(tmp_path: Path) -> None:
    """A plugin host drops its current job's staging this way where the kernel cannot kill
    it with its worker."""
    child = textwrap.dedent("""
        import os, pathlib, time
        from casparian_nb._proc import exit_with_parent
        out = pathlib.Path(os.environ["TMP_DIR"])
        assert exit_with_parent(os.getppid(), before_exit=(out / "dropped").touch)
        (out / "ready").touch()
        time.sleep(120)
    """)
    pid = _orphan(child, "plain", tmp_path)
    _assert_exits(pid, "the orphaned child to exit")
    assert (tmp_path / "dropped").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_kernel_kills_a_child_that_dies_with_its_parent(tmp_path: Path) -> None:
    """No watcher thread here: only the kernel can end this child when its parent dies."""
    child = textwrap.dedent("""
        import os, pathlib, time
        from casparian_nb._proc import die_with_parent
        assert die_with_parent(os.getppid())
        pathlib.Path(os.environ["TMP_DIR"], "ready").touch()
        time.sleep(120)
    """)
    pid = _orphan(child, "plain", tmp_path)
    _assert_exits(pid, "the kernel to kill the child")


def test_an_owned_process_stops_gracefully_when_its_owner_is_killed(tmp_path: Path) -> None:
    """``exit_with_owner``: SIGTERM first (the process's own graceful stop runs), and the
    variable is not passed on to grandchildren."""
    child = textwrap.dedent("""
        import os, pathlib, signal, sys, time
        from casparian_nb._proc import OWNER_PID_ENV, exit_with_owner
        out = pathlib.Path(os.environ["TMP_DIR"])
        def stop(signum, frame):
            (out / "graceful").touch()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        assert exit_with_owner(grace=30)
        assert OWNER_PID_ENV not in os.environ
        (out / "ready").touch()
        time.sleep(120)
    """)
    pid = _orphan(child, "owner", tmp_path)
    _assert_exits(pid, "the owned process to stop")
    assert (tmp_path / "graceful").exists()


def test_nothing_is_watched_for_a_process_that_is_not_the_parent() -> None:
    assert exit_with_parent(os.getpid()) is False  # we are not our own parent
    assert die_with_parent(os.getpid()) is False


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive(2**40)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: a zombie, which counts as dead.
    wait_until(lambda: not pid_alive(done.pid), 10, message="the zombie to count as dead")
    assert psutil.Process(done.pid).status() == psutil.STATUS_ZOMBIE
    done.wait()

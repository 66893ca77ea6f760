"""Run a command so that every process it leaves behind can be found, even orphans.

``python tests/notebook/reaper.py --grace S -- CMD ...`` makes itself a child subreaper
(Linux ``PR_SET_CHILD_SUBREAPER``), runs CMD, and when CMD exits lists every process still
below it. A sentinel started by a notebook kernel lives in its own session; once nbval kills the
kernel, such a process is re-parented to the nearest subreaper — this one — instead of init,
so nothing escapes the count. It then waits up to ``--grace`` seconds for them to exit on their
own, kills what is left, and prints one JSON line (prefixed ``REAPER``)::

    {"returncode": 0, "left_at_exit": [...], "gone_within_grace": [...], "killed": [...],
     "seconds": 12.3}

each process as ``{"pid", "cmdline"}``. :func:`run_reaped` runs it and parses that line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

PR_SET_CHILD_SUBREAPER = 36
MARKER = "REAPER "


def _describe(p: psutil.Process) -> dict[str, Any]:
    try:
        return {"pid": p.pid, "cmdline": " ".join(p.cmdline())[:300]}
    except psutil.Error:
        return {"pid": p.pid, "cmdline": "?"}


def _alive(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _below_me() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    started = time.monotonic()
    code = subprocess.call(cmd)
    seconds = time.monotonic() - started
    left = _alive(_below_me())
    at_exit = [_describe(p) for p in left]
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline:
        # Orphans keep arriving while the leftovers stop (their own children re-parent here).
        left = _alive(left + [p for p in _below_me() if p not in left])
        if not left:
            break
        time.sleep(0.1)
    gone = [d for d in at_exit if d["pid"] not in {p.pid for p in left}]
    killed = [_describe(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(_below_me(), timeout=5)  # reap every zombie re-parented to us
    report = {"returncode": code, "left_at_exit": at_exit, "gone_within_grace": gone,
              "killed": killed, "seconds": round(seconds, 2)}
    sys.stdout.flush()
    print(MARKER + json.dumps(report), flush=True)
    return 0


def run_reaped(cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
               grace: float = 20.0, timeout: float = 600.0,
               python: str = sys.executable) -> tuple[dict[str, Any], str]:
    """Run ``cmd`` under the reaper; its report and the combined output of ``cmd``."""
    # Run by path, not ``-m``: nothing is added to the environment ``cmd`` inherits.
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--grace", str(grace), "--",
                           *cmd], cwd=cwd, env=dict(os.environ if env is None else env),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    reports = [ln for ln in lines if ln.startswith(MARKER)]
    if proc.returncode != 0 or not reports:
        raise AssertionError(f"the reaper failed (exit {proc.returncode}):\n{proc.stdout[-5000:]}")
    output = "\n".join(ln for ln in lines if not ln.startswith(MARKER))
    return json.loads(reports[-1][len(MARKER):]), output


if __name__ == "__main__":
    sys.exit(main())

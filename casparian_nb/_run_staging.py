"""Who owns a standalone run's staging, and the sweep of runs that were killed.

Each run stages under ``<home>/staging/run-<run id>/`` with an ``OWNER`` file naming its
process (pid and start time). A run killed outright (``kill -9``) leaves that directory
behind; :func:`sweep_stale_runs`, called by the next run in the same home, finishes any
promotion it interrupted (:func:`casparian_nb.sinks.recover`) and removes the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil

from . import sinks
from .sinks.staging import JOURNAL

__all__ = ["claim_staging", "remove_tree", "sweep_stale_runs"]

_OWNER = "OWNER"


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "create_time": psutil.Process().create_time()}


def claim_staging(staging_dir: Path, run_id: str) -> Path:
    """Create ``<staging>/run-<id>/`` with an ``OWNER`` file, atomically (never seen empty)."""
    staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = staging_dir / f".run-{run_id}"
    tmp.mkdir(mode=0o700)
    (tmp / _OWNER).write_text(json.dumps(_me()), encoding="utf-8")
    final = staging_dir / f"run-{run_id}"
    os.rename(tmp, final)
    return final


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / _OWNER).read_text(encoding="utf-8"))
        proc = psutil.Process(int(owner["pid"]))
        return bool(abs(proc.create_time() - float(owner["create_time"])) < 1.0)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False


def sweep_stale_runs(staging_dir: Path, *, tmp_age: float = 60.0) -> list[str]:
    """Clean up after standalone runs that were killed: finish their interrupted promotions
    (all of a job's outputs appear, or none) and remove their staging. Returns the run dirs
    removed. Runs whose owner process is alive are left alone."""
    removed: list[str] = []
    if not staging_dir.is_dir():
        return removed
    now = time.time()
    for entry in sorted(staging_dir.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".run-"):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > tmp_age:
                    remove_tree(entry)
            continue
        if not entry.name.startswith("run-") or _owner_alive(entry):
            continue
        try:
            sinks.recover(entry)
        except Exception:  # a broken journal must not block new runs; keep it for a human
            continue
        if not any((d / JOURNAL).exists() for d in entry.iterdir() if d.is_dir()):
            remove_tree(entry)
            removed.append(entry.name)
    return removed


def remove_tree(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)

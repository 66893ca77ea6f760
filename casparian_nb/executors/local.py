"""The processes an executor needs beside the sentinel.

``local``: ``workers`` worker processes (``casparian worker``), each with its own warm plugin
hosts. ``dask``: one bridge process (``python -m casparian_nb.executors.dask``) that presents
the Dask cluster's workers to the sentinel; its workers are the cluster's, not ours.
"""

from __future__ import annotations

from typing import NamedTuple

from ..config import Settings

__all__ = ["ExecutorProcess", "processes"]


class ExecutorProcess(NamedTuple):
    """One process to start: ``python -m <module> [--home H] <args>``, output to ``log_name``."""

    module: str
    args: list[str]
    log_name: str


def processes(settings: Settings, *, workers: int, slots: int | None,
              first: int = 0) -> list[ExecutorProcess]:
    """What to start for ``settings.executor``: local workers numbered from ``first``, or the
    dask bridge (``workers`` and ``slots`` are then the Dask cluster's business)."""
    if settings.executor == "dask":
        from .dask import BRIDGE_MODULE, validate_settings

        validate_settings(settings)
        return [ExecutorProcess(BRIDGE_MODULE, [], "dask-bridge.out")]
    args = ["worker"] + (["--slots", str(slots)] if slots else [])
    return [ExecutorProcess("casparian_nb", ["--home", str(settings.home), *args],
                            f"worker-{first + i}.out") for i in range(workers)]

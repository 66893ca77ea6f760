"""The ``dask`` executor: jobs run on an existing Dask cluster, the sentinel stays in charge.

``casparian start --executor dask --scheduler tcp://HOST:PORT`` (or ``--scheduler-file``),
``cf.start(executor="dask", scheduler=...)`` or ``cf.start(executor=client)`` start the
sentinel plus one *bridge* process (``python -m casparian_nb.executors.dask``) in place of
the local workers. The bridge holds a ``distributed.Client`` and presents each Dask worker to
the sentinel as one worker over the ordinary worker protocol (see :mod:`._dask_bridge`), so
the durable queue, the single committer, atomic promotion and the tape are unchanged.

This module imports ``distributed`` only when asked to, so the rest of casparian_nb works
without the ``casparian_nb[dask]`` extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from ._dask_names import BRIDGE_FILE, require_distributed

__all__ = ["BRIDGE_MODULE", "bridge_info", "require_distributed", "scheduler_of",
           "validate_settings"]

#: What the launcher runs (``python -m``) in place of worker processes.
BRIDGE_MODULE = "casparian_nb.executors.dask"
def scheduler_of(executor: object) -> str:
    """The scheduler address of a ``distributed.Client`` (``cf.start(executor=client)``)."""
    scheduler = getattr(executor, "scheduler", None)
    address = getattr(scheduler, "address", None)
    if not isinstance(address, str) or not address:
        raise ConfigError(f"executor: expected 'local', 'dask' or a distributed.Client, "
                          f"got {type(executor).__name__}")
    return address


def validate_settings(settings: Settings) -> None:
    """Refuse a dask executor without a scheduler, or without ``distributed``, in one line."""
    if not settings.scheduler and not settings.scheduler_file:
        raise ConfigError("the dask executor needs a scheduler: --scheduler tcp://HOST:PORT "
                          "or --scheduler-file FILE (settings scheduler / scheduler_file)")
    if settings.scheduler_file and not Path(settings.scheduler_file).is_file():
        raise ConfigError(f"scheduler_file: {settings.scheduler_file} does not exist")
    require_distributed()


def bridge_info(settings: Settings) -> dict[str, Any] | None:
    """What the running bridge of ``settings.home`` reported (``scheduler``, ``dashboard``,
    ``pid``), or None when there is none."""
    try:
        data = json.loads((settings.home / BRIDGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


if __name__ == "__main__":
    from ._dask_bridge import main

    sys.exit(main())

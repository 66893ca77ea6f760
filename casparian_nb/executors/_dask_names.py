"""What the dask executor's modules share and can import without ``distributed``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["BRIDGE_FILE", "require_distributed"]

#: Where the bridge writes what it is connected to (scheduler, dashboard), under the home.
BRIDGE_FILE = "dask-bridge.json"


def require_distributed() -> Any:
    """The ``distributed`` module, or a one-line ConfigError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError("the dask executor needs dask[distributed]: "
                          "pip install 'casparian_nb[dask]'") from None
    return distributed

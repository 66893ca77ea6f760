"""The jupyter-server extension behind the JupyterLab extension ``casparian-nb``.

Enabled by ``etc/jupyter/jupyter_server_config.d/casparian_nb.json`` (installed by the wheel),
or by hand: ``jupyter server extension enable casparian_nb.serverext``. It serves the JSON API
of :mod:`.handlers` under ``/casparian/api/``: `.tape` files read with the same code as
``cf.explain``/``cf.timeline``, and the sentinels of the homes visible to the server, reached
through the signed control API.

Settings (``jupyter_server_config.py``)::

    c.CasparianServer.extra_homes = ["/data/casparian_home"]   # shown besides the found ones
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlets import List, Unicode
from traitlets.config import Configurable

from ._sentinels import ServerSentinels
from .handlers import setup_handlers

__all__ = ["CasparianServer"]


class CasparianServer(Configurable):
    """Configuration of the server extension."""

    extra_homes = List(Unicode(), default_value=[],
                       help="Sentinel homes to list besides the default home and the homes "
                            "(folders with a sentinel.json) found under the root folder.",
                       ).tag(config=True)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "casparian_nb.serverext"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    config = CasparianServer(parent=server_app)
    sentinels = ServerSentinels(Path(server_app.root_dir), config.extra_homes)
    setup_handlers(server_app.web_app, sentinels)
    server_app.log.info("casparian_nb server extension: /casparian/api/ (root %s)",
                        server_app.root_dir)

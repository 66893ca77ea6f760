"""What every part of :class:`~casparian_nb.notebook.controller.Controller` shares: its
connection, session tape and event pump (set up by ``Controller.__init__``), and the check
that the sentinel is still there before a call that needs it.

The controller is assembled from cohesive mixins over this base — :mod:`._commands` (the
control API's mutations), :mod:`._reads` (the read-only state DB and the outputs) and
:mod:`._wait` (blocking until jobs finish) — so each part declares here what it uses of the
others instead of importing the whole controller.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from ..client import ConnectionInfo, ControlClient, connection_is_live
from ..config import Settings
from ..errors import SentinelError, SentinelGoneError
from ..launcher import LocalCluster
from ._events import EventPump
from ._session import SessionTape
from ._state import JobRows
from .catalog import OutputCatalog

__all__ = ["ControllerBase"]


class ControllerBase:
    """The state a controller's parts share (assigned by ``Controller.__init__``)."""

    settings: Settings
    info: ConnectionInfo
    cluster: LocalCluster | None
    keep_alive: bool
    client: ControlClient
    session: SessionTape
    events: EventPump
    #: The sentinel's reply to the last submit (``job_ids``, ``skipped``, ``submission_id``).
    last_submission: dict[str, Any] | None
    _catalog: OutputCatalog | None
    _reader: Any
    _rows: JobRows
    _widgets: weakref.WeakSet[Any]
    _submitted: list[int]
    _stopped: bool
    _event_floor: int

    @property
    def home(self) -> Path:
        return self.settings.home

    def _check(self) -> None:
        """Refuse a call that needs the sentinel once this controller is stopped, or once its
        sentinel is gone: a request would only time out, and a wait would never end."""
        if self._stopped:
            raise SentinelError("this controller is stopped; cf.start() or cf.attach() again")
        gone = self._sentinel_gone()
        if gone is not None:
            raise SentinelGoneError(
                f"the sentinel of {self.home} is gone: {gone}. Jobs not finished stay in the "
                "state DB for the next sentinel (ctl.jobs() still reads them); ctl.stop(), "
                "then cf.start() again")

    def _sentinel_gone(self) -> str | None:
        """How the sentinel ended (``"sentinel pid 12 was killed by SIGKILL"``), or None while
        it runs. Only for a sentinel started here is the signal known."""
        if self.cluster is not None:
            if self.cluster.alive():
                return None
            return self.cluster.sentinel_ended() or f"sentinel pid {self.info.pid} exited"
        if connection_is_live(self.info):
            return None
        return f"sentinel pid {self.info.pid} is no longer running"

    def _published_seq(self, timeout: float | None = None) -> int | None:
        """The ``seq`` of the sentinel's last published event (None: no answer)."""
        try:
            return int(self.client.ping(timeout=timeout).get("event_seq") or 0)
        except Exception:
            return None

    def _pump_widgets(self, final: bool = False) -> None:
        """Let open queue widgets catch up while a blocking call holds the kernel's thread."""
        for w in list(self._widgets):
            if final:
                w.sync()
            else:
                w.pump()

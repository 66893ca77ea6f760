"""The kernel-side controller: start or attach to a sentinel, submit, watch, cancel, query.

>>> import casparian_nb as cf
>>> ctl = cf.start(workers=2)                       # doctest: +SKIP
>>> ids = ctl.submit("plugins/orders.py", "data/*.csv")
>>> ctl.queue()                                     # live table with cancel buttons
>>> ctl.wait(ids); ctl.sql("select count(*) from orders")
>>> ctl.stop()

Mutations go through the sentinel's control API; reads (``jobs``, ``job``, ``stats``, ``wait``'s
checks) use a read-only connection to the state DB, so they never block the sentinel (F5).
Live updates come from the event stream (:mod:`._events`). Every user action is a
``ui_command`` on the session tape ``<home>/tapes/session-<time>-<pid>.tape``, answered by a
``CommandSucceeded``/``CommandFailed`` response, and the sentinel's events are relayed into
the same tape.

Once the sentinel is gone (killed, crashed), every call that needs it — ``submit``,
``cancel``, ``wait`` (within a second), ``queue`` — raises :class:`SentinelGoneError` naming
its pid and, for a sentinel started here, the signal; the reads keep working.

Lifecycle: ``start()`` launches a sentinel and workers as child processes (or attaches when
one already serves the home) and stops them on ``ctl.stop()``, at interpreter exit and on
kernel shutdown (``atexit``) — unless ``keep_alive=True``. ``attach()`` reconnects through
``sentinel.json``, e.g. after a kernel restart, and ``stop()`` then leaves the sentinel running.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._extras import import_with_extra
from ..client import ConnectionInfo, ControlClient, connection_is_live, read_connection_file
from ..config import Settings, load_settings
from ..errors import SentinelError
from ..executors.dask import bridge_info, scheduler_of
from ..launcher import LocalCluster
from ..previews import Preview
from ..previews import preview as run_preview
from ._commands import Commands
from ._events import EventPump
from ._reads import Reads
from ._session import SessionTape
from ._state import JobRows
from .catalog import OutputCatalog

log = logging.getLogger("casparian_nb.notebook")

__all__ = ["Controller", "attach", "current_controller", "preview", "start"]

_LIVE: weakref.WeakSet[Controller] = weakref.WeakSet()
_CURRENT: list[Controller] = []  # the most recent live controller last


def current_controller() -> Controller | None:
    """The most recently started or attached controller that is not stopped."""
    while _CURRENT and _CURRENT[-1].stopped:
        _CURRENT.pop()
    return _CURRENT[-1] if _CURRENT else None


def start(workers: int = 2, home: str | os.PathLike[str] | None = None, *,
          slots: int | None = None, timeout: float = 60.0, keep_alive: bool = False,
          executor: Any = None, **settings: Any) -> Controller:
    """Start a sentinel and ``workers`` workers for ``home`` (default ``$CASPARIAN_HOME`` or
    ``~/.casparian_flow``) and connect to it; attach instead if one already serves that home.

    ``settings`` override :class:`~casparian_nb.config.Settings` fields for this session and
    its processes (e.g. ``job_timeout="10m"``). Waits at most ``timeout`` seconds for the
    sentinel to answer and the workers to join, then fails with the reason and the log path.

    ``executor="dask"`` with ``scheduler="tcp://HOST:PORT"`` (or ``scheduler_file=``), or
    ``executor=client`` with a ``distributed.Client``, runs the jobs on that Dask cluster
    instead of local workers (``workers`` and ``slots`` are then ignored; see
    docs/scale-out.md).
    """
    if executor is not None and not isinstance(executor, str):  # a distributed.Client
        settings.update(executor="dask", scheduler=scheduler_of(executor), scheduler_file="")
    elif executor is not None:
        settings["executor"] = executor
    s = load_settings(home, **settings)
    try:
        existing: ConnectionInfo | None = read_connection_file(s.home)
    except SentinelError:
        existing = None
    if existing is not None and connection_is_live(existing):
        ctl = Controller(s, existing, cluster=None, command="Attach")
        print(f"casparian: attached to the running sentinel (pid {existing.pid}) of {s.home}; "
              "it was not started here, so ctl.stop() leaves it running")
        return ctl
    # A killed kernel runs no atexit: unless kept alive, the processes watch it themselves.
    cluster = LocalCluster(s, workers=workers, slots=slots,
                           owner_pid=None if keep_alive else os.getpid())
    try:
        info = cluster.start(timeout=timeout)
        return Controller(s, info, cluster=cluster, command="Start", keep_alive=keep_alive,
                          start_args={"workers": workers})
    except BaseException:  # interrupted or failed half-way: leave no process behind
        cluster.stop()
        raise


def preview(plugin: Any, path: str | os.PathLike[str], rows: int = 20,
            timeout: float | None = None, *, home: str | os.PathLike[str] | None = None,
            sink: str | None = None) -> Preview:
    """Dry-run ``plugin`` on one file in a plugin host: the first ``rows`` rows of each
    output, schemas, row counts, would-be quarantined rows, captured output and the remote
    traceback if it raised — nothing is written (:mod:`casparian_nb.previews`).

    ``plugin`` is a plugin file, a module, or a function defined in a notebook cell. With a
    live controller (``cf.start``/``cf.attach``) for the same home, the run is recorded on
    its session tape.
    """
    ctl = current_controller()
    if ctl is not None and (home is None or Path(home).expanduser().resolve() == ctl.home.resolve()):
        return ctl.preview(plugin, path, rows, timeout, sink=sink)
    return run_preview(plugin, path, rows, timeout, home=home, sink=sink)


def attach(home: str | os.PathLike[str] | None = None, *, timeout: float = 5.0) -> Controller:
    """Connect to the sentinel already serving ``home`` (through its ``sentinel.json``)."""
    s = load_settings(home)
    info = read_connection_file(s.home)
    if not connection_is_live(info):
        raise SentinelError(f"the sentinel recorded in {s.connection_file} (pid {info.pid}) is "
                            "not running; start one with cf.start()")
    with ControlClient(info, timeout=timeout) as probe:
        probe.ping()
    return Controller(s, info, cluster=None, command="Attach")


class Controller(Commands, Reads):
    """A connection to one sentinel, from a notebook kernel (see the module docstring).

    Its parts are mixins over :class:`~._base.ControllerBase`, each one side of the API:
    :class:`~._commands.Commands` (submit, cancel, retry, compact — requests to the
    sentinel), :class:`~._wait.Waiting` (wait, catch_up), :class:`~._reads.Reads` (jobs,
    job, logs, stats, sql, preview — no sentinel needed); this class adds the lifecycle and
    the views (queue, timeline).
    """

    def __init__(self, settings: Settings, info: ConnectionInfo, *,
                 cluster: LocalCluster | None = None, command: str = "Attach",
                 keep_alive: bool = False, start_args: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self.info = info
        self.cluster = cluster
        self.keep_alive = keep_alive
        self.client = ControlClient(info, timeout=settings.request_timeout)
        self.session = SessionTape.open(settings)
        self._catalog: OutputCatalog | None = None
        self._reader: Any = None
        self._rows = JobRows(settings.state_db)
        self._widgets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._submitted: list[int] = []
        #: The sentinel's reply to the last submit (``job_ids``, ``skipped``, ``submission_id``).
        self.last_submission: dict[str, Any] | None = None
        self._stopped = False
        self._lock = threading.Lock()
        with self.session.command(command, {"home": str(settings.home), **(start_args or {})}) as r:
            self.events = EventPump(info, self.session.tape)
            self.events.start()
            # events up to this seq may predate the subscription: never waited for
            self._event_floor = self._published_seq() or 0
            r.update(pid=info.pid)
        _LIVE.add(self)
        _CURRENT.append(self)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def tape_path(self) -> Path:
        """The session tape of this controller."""
        return self.session.path

    # -- views -----------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[Any]], None]) -> Callable[[], None]:
        """Receive the sentinel's events in batches (on the event thread)."""
        return self.events.subscribe(callback)

    def queue(self, **kwargs: Any) -> Any:
        """The live job-queue widget: one table for every job, with cancel and retry buttons;
        a clicked row expands to its error, traceback, attempts and the end of its log."""
        widgets = import_with_extra("casparian_nb.notebook.queue_widget", "ctl.queue()")
        self._check()
        kwargs.setdefault("log_tail", lambda job_id: self.logs(job_id).tail(40))
        widget = widgets.QueueWidget(self, **kwargs)
        self._widgets.add(widget)
        return widget

    def timeline(self, **kwargs: Any) -> Any:
        """The timeline of this session's tape, followed while it grows (``cf.timeline(ctl)``)."""
        timeline = import_with_extra("casparian_nb.notebook.timeline", "ctl.timeline()")
        return timeline.timeline(self, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------
    def _drain_events(self, timeout: float = 2.0) -> None:
        """Let the event thread relay what the sentinel has published so far, so the session
        tape ends with the last job events, not wherever the thread happened to be."""
        try:
            seq = int(self.client.ping(timeout=timeout).get("event_seq") or 0)
        except Exception:  # the sentinel is gone: nothing more will come
            return
        if seq and not self.events.wait_seq(seq, timeout):
            log.info("session tape: events up to seq %d not all received before stop", seq)

    def stop(self) -> None:
        """Disconnect; stop the sentinel and workers if this controller started them."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        started = self.cluster is not None
        with self.session.command("Stop", {"stop_processes": started}, raise_=False):
            for w in list(self._widgets):
                w.close()
            self._drain_events()
            self.events.stop()
            self.client.close()
            if self.cluster is not None:
                self.cluster.stop()
        for closeable in (self._catalog, self._reader, self._rows):
            if closeable is not None:
                closeable.close()
        self.session.close()
        _LIVE.discard(self)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the cluster the jobs run on (dask executor), else None."""
        info = bridge_info(self.settings)
        link = info.get("dashboard") if info else None
        return link if isinstance(link, str) and link else None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"sentinel pid {self.info.pid}"
        own = " (started here)" if self.cluster is not None else ""
        dash = self.dashboard_link
        dask = f" dask dashboard {dash}" if dash and not self._stopped else ""
        return f"<Controller {str(self.home)!r} {state}{own}{dask}>"

    def _repr_html_(self) -> str:
        from ._reprs import esc, kv_table

        rows = [("home", esc(self.home)), ("sentinel", esc(f"pid {self.info.pid}")),
                ("started here", "yes" if self.cluster is not None else "no (attached)"),
                ("session tape", esc(self.session.path.name)),
                ("state", "stopped" if self._stopped else "connected")]
        dash = self.dashboard_link
        if dash and not self._stopped:
            rows.append(("dask dashboard",
                         f'<a href="{esc(dash)}" target="_blank">{esc(dash)}</a>'))
        return kv_table(rows, "casparian controller")


def _stop_all_at_exit() -> None:
    for ctl in list(_LIVE):
        if ctl.keep_alive and ctl.cluster is not None:
            ctl.cluster = None  # leave the processes for a later cf.attach()
        try:
            ctl.stop()
        except Exception:  # exit path: one failure must not keep the others running
            continue


atexit.register(_stop_all_at_exit)

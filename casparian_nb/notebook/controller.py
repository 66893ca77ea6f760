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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..client import ConnectionInfo, ControlClient, connection_is_live, read_connection_file
from ..config import Settings, load_settings
from ..errors import SentinelError, SentinelGoneError
from ..executors.dask import bridge_info, scheduler_of
from ..launcher import LocalCluster
from ..protocol import JobStatus
from ._events import EventPump
from ._models import Job, QueueStats
from ._session import SessionTape
from ._state import JobRows
from ._wait import wait_for
from .catalog import OutputCatalog

log = logging.getLogger("casparian_nb.notebook")

__all__ = ["Controller", "attach", "current_controller", "start"]

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


class Controller:
    """A connection to one sentinel, from a notebook kernel (see the module docstring)."""

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
            r.update(pid=info.pid)
        _LIVE.add(self)
        _CURRENT.append(self)

    # -- properties ----------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def tape_path(self) -> Path:
        """The session tape of this controller."""
        return self.session.path

    @property
    def catalog(self) -> OutputCatalog:
        """The DuckDB catalog behind :meth:`sql` (and ``%%cql``)."""
        if self._catalog is None:
            self._catalog = OutputCatalog(self.settings, tapes=[self.session.path])
        return self._catalog

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

    def _state(self) -> Any:
        """The read-only state DB reader (opened on first use)."""
        if self._reader is None:
            from ..store import StateReader

            self._reader = StateReader.open(self.settings.state_db)
        return self._reader

    # -- mutations (control API) --------------------------------------------------------------
    def submit(self, plugin: str | os.PathLike[str],
               inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
               sink: str | None = None, mode: str = "append", priority: int = 0,
               timeout: float | None = None, force: bool = False) -> list[int]:
        """Queue one job per input file; returns the new job ids.

        ``inputs``: files, directories (every non-hidden file below) or globs. Files whose
        outputs this plugin version already materialized are skipped (``force=True`` runs
        them anyway); ``last_submission`` says which.
        """
        from .. import plugins
        from .._inputs import expand_inputs

        self._check()
        specs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        payload = {"plugin": os.fspath(plugin), "inputs": [os.fspath(i) for i in specs],
                   "sink": sink, "mode": mode, "priority": priority, "force": force}
        with self.session.command("Submit", payload) as r:
            path = plugins.resolve_plugin_path(plugin, self.settings.plugins_dir)
            files = [str(p) for p in expand_inputs(specs)]
            reply = self.client.submit(path, files, sink=sink, mode=mode, priority=priority,
                                       timeout=timeout, force=force)
            ids = [int(j) for j in reply["job_ids"]]
            self.events.link(ids, r.correlation_id, r.event_id)
            r.update(job_ids=ids, count=len(ids))
        self._submitted.extend(ids)
        self.last_submission = reply
        if reply.get("skipped"):
            print(f"casparian: {len(reply['skipped'])} file(s) skipped, already materialized by "
                  "this plugin version (submit(..., force=True) re-runs them)")
        return ids

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel one job: a queued job is aborted at once; a running one shows
        ``cancel_requested`` until its worker confirms ABORTED. The sentinel's answer."""
        self._check()
        with self.session.command("Cancel", {"job_id": int(job_id)}) as r:
            self.events.link([job_id], r.correlation_id, r.event_id)
            reply = self.client.cancel_job(int(job_id))
            r.update(job_ids=[int(job_id)], state=reply.get("state"))
        return reply

    def cancel_all_queued(self) -> dict[str, Any]:
        """Cancel every job still QUEUED (running jobs keep running)."""
        self._check()
        with self.session.command("Cancel", {"status": JobStatus.QUEUED}) as r:
            reply = self.client.cancel_jobs(status=JobStatus.QUEUED)
            r.update(count=len(reply.get("results") or {}))
        return reply

    # -- reads (state DB, read-only) -----------------------------------------------------------
    def jobs(self, status: str | Sequence[str] | None = None, limit: int = 1000,
             offset: int = 0) -> pd.DataFrame:
        """Jobs newest first as a DataFrame (``status`` column upper case; times as UTC)."""
        from ..store import job_to_info

        rows = [job_to_info(j) for j in self._state().list_jobs(status, limit, offset)]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=["id", "status", "plugin_name", "input_file", "rows"])
        for col in [c for c in df.columns if c.endswith("_at")]:
            df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
        if "claimed_at" in df and "ended_at" in df:
            df["duration_s"] = (df["ended_at"] - df["claimed_at"]).dt.total_seconds()
        return df.set_index("id", drop=False).rename_axis(None)

    def job(self, job_id: int) -> Job:
        """One job with every column; a failed job's ``.error`` carries the remote traceback
        (``job.raise_for_status()`` raises it)."""
        row = self._state().get_job(int(job_id))
        if row is None:
            raise LookupError(f"job {job_id} does not exist in {self.settings.state_db}")
        return Job.from_row(row)

    def stats(self) -> QueueStats:
        """Jobs per status (plus ``cancel_requested`` and ``total``)."""
        return QueueStats.from_counts(self._state().queue_stats())

    def job_snapshot(self, ids: Sequence[int] | None = None,
                     limit: int = 20_000) -> list[dict[str, Any]]:
        """Job dicts for the queue widget (its columns only): the newest ``limit`` jobs, or
        these ids."""
        if ids is None:
            return self._rows.newest(limit)
        return self._rows.by_ids(ids)

    def wait(self, ids: int | Iterable[int] | None = None, timeout: float | None = None, *,
             cancel_on_interrupt: bool = False, poll: float = 0.25) -> Any:
        """Block until the jobs (default: every job submitted here) finish; a WaitResult.

        Interruptible: "interrupt kernel" / Ctrl-C stops waiting (the jobs keep running) and
        the message says how to cancel them; with ``cancel_on_interrupt=True`` the pending
        jobs are cancelled first. ``timeout`` raises :class:`WaitTimeoutError`.
        """
        self._check()
        wanted = list(self._submitted) if ids is None else (
            [int(ids)] if isinstance(ids, int) else [int(i) for i in ids])
        with self.session.command("Wait", {"job_ids": wanted[:1000], "count": len(wanted)}) as r:
            result = wait_for(self, wanted, timeout, cancel_on_interrupt, poll)
            r.update(count=len(result.statuses), failed_job_ids=result.failed,
                     aborted_job_ids=sorted(j for j, s in result.statuses.items()
                                            if s == JobStatus.ABORTED))
        return result

    def _pump_widgets(self, final: bool = False) -> None:
        """Let open queue widgets catch up while a blocking call holds the kernel's thread."""
        for w in list(self._widgets):
            if final:
                w.sync()
            else:
                w.pump()

    # -- views -----------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[Any]], None]) -> Callable[[], None]:
        """Receive the sentinel's events in batches (on the event thread)."""
        return self.events.subscribe(callback)

    def queue(self, **kwargs: Any) -> Any:
        """The live job-queue widget (one table for every job, with cancel buttons)."""
        from .queue_widget import QueueWidget

        self._check()
        widget = QueueWidget(self, **kwargs)
        self._widgets.add(widget)
        return widget

    def timeline(self, **kwargs: Any) -> Any:
        """The timeline of this session's tape (``reload`` in the widget re-reads it)."""
        from .timeline import TimelineWidget

        return TimelineWidget(self.session.path, title=f"session {self.session.path.name}",
                              **kwargs)

    def sql(self, query: str) -> pd.DataFrame:
        """Run SQL over the outputs plus ``jobs``, ``materializations``, ``tape_events``."""
        with self.session.command("Query", {"sql": query}) as r:
            df = self.catalog.sql(query)
            r.update(rows=len(df))
        return df

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

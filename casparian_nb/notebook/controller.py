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
import dataclasses
import logging
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from .._cellplugin import is_source_plugin, write_plugin_source
from .._extras import import_with_extra
from ..client import ConnectionInfo, ControlClient, connection_is_live, read_connection_file
from ..config import Settings, load_settings
from ..errors import SentinelError, SentinelGoneError
from ..executors.dask import bridge_info, scheduler_of
from ..joblogs import JobLog, read_job_log
from ..launcher import LocalCluster
from ..plan import stale_warning
from ..previews import Preview
from ..previews import preview as run_preview
from ..protocol import JobStatus, QuarantinePolicy
from ._compaction import Compaction
from ._events import EventPump
from ._models import Job, QueueStats
from ._session import SessionTape
from ._state import JobRows
from ._wait import wait_for
from .catalog import OutputCatalog, ResultFormat, SqlParams

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
            # events up to this seq may predate the subscription: never waited for
            self._event_floor = self._published_seq() or 0
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
    def submit(self, plugin: str | os.PathLike[str] | Callable[..., Any] | types.ModuleType,
               inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
               sink: str | Mapping[str, str] | None = None, mode: str = "append",
               priority: int = 0, timeout: float | None = None, force: bool = False,
               wait: bool = False, progress: bool | None = None,
               quarantine: Mapping[str, Any] | QuarantinePolicy | None = None,
               resources: dict[str, float] | None = None) -> list[int]:
        """Queue one job per input file; returns the new job ids.

        ``plugin``: a plugin file (path, or name under ``<home>/plugins``), or a module or
        ``parse``-like function defined in the notebook, written to
        ``<home>/plugins/cell/<name>-<hash>.py`` first (:mod:`casparian_nb._cellplugin`).

        ``inputs``: files, directories (every non-hidden file below) or globs. Files whose
        outputs this plugin version already materialized are skipped (``force=True`` runs
        them anyway); ``last_submission`` says which. ``wait=True`` then blocks until they
        finish (:meth:`wait`, with its progress bar unless ``progress=False``).

        ``sink``: one URI, or a mapping of output names to URIs with ``"*"`` for the rest
        (``{"orders": "duckdb://db.duckdb", "*": "parquet://out"}``); each job's outputs
        promote into all their sinks or none.

        ``quarantine={"max_pct": 10, "max_rows": 1000}`` fails (and promotes nothing of) a
        job whose output sends more rows to quarantine; it overrides the plugin's
        ``quarantine``, and a restarted sentinel keeps it.

        ``resources``: what each job needs on a Dask worker, e.g. ``{"GPU": 1}`` (on top of
        the plugin's own ``resources``); the dask executor runs it only on a worker that
        offers them (``dask worker --resources "GPU=1"``), the local executor ignores them.
        """
        from .. import plugins
        from .._inputs import expand_inputs
        from ..contracts import quarantine_policy
        from ..sinks import SinkRouting

        self._check()
        policy = quarantine_policy(quarantine)
        if isinstance(sink, Mapping):  # resolved here, where its relative paths were typed
            sink = str(SinkRouting.parse(sink))
        if is_source_plugin(plugin):  # a notebook function: shipped as a plugin file
            plugin = write_plugin_source(plugin, self.settings.plugins_dir / "cell")
        if not isinstance(plugin, str | os.PathLike):
            raise TypeError(f"plugin must be a path, a module or a function, not "
                            f"{type(plugin).__name__}")
        specs = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        payload = {"plugin": os.fspath(plugin), "inputs": [os.fspath(i) for i in specs],
                   "sink": sink, "mode": mode, "priority": priority, "force": force,
                   **({"quarantine": msgspec.structs.asdict(policy)} if policy else {}),
                   **({"resources": resources} if resources else {})}
        with self.session.command("Submit", payload) as r:
            path = plugins.resolve_plugin_path(plugin, self.settings.plugins_dir)
            files = [str(p) for p in expand_inputs(specs)]
            # The submission id is this command's correlation id: the sentinel's tape then
            # links every event of these jobs to the Submit on this session tape.
            reply = self.client.submit(path, files, sink=sink, mode=mode, priority=priority,
                                       timeout=timeout, force=force,
                                       submission_id=r.correlation_id, quarantine=policy,
                                       resources=resources)
            ids = [int(j) for j in reply["job_ids"]]
            self.events.link(ids, r.correlation_id, r.event_id)
            r.update(job_ids=ids, count=len(ids))
        self._submitted.extend(ids)
        self.last_submission = reply
        stale = self.last_stale
        fresh = len(reply.get("skipped") or []) - len(stale)
        if fresh:
            print(f"casparian: {fresh} file(s) skipped, already materialized by "
                  "this plugin version (submit(..., force=True) re-runs them)")
        if stale:
            spec = plugins.inspect_plugin(path)
            print("casparian: warning: " + stale_warning(len(stale), spec.name, spec.version,
                                                        flag="force=True"))
        if wait and ids:
            self.wait(ids, progress=progress)
        return ids

    @property
    def last_stale(self) -> list[int]:
        """Ids of the SKIPPED jobs of the last :meth:`submit` whose outputs were made by the
        same plugin version with a different source (F15); ``force=True`` re-runs them."""
        reply = self.last_submission or {}
        return [int(s["job_id"]) for s in reply.get("skipped") or [] if s.get("stale")]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel one job: a queued job is aborted at once; a running one shows
        ``cancel_requested`` until its worker confirms ABORTED. The sentinel's answer."""
        self._check()
        with self.session.command("Cancel", {"job_id": int(job_id)}) as r:
            self.events.link([job_id], r.correlation_id, r.event_id)
            reply = self.client.cancel_job(int(job_id))
            r.update(job_ids=[int(job_id)], state=reply.get("state"))
        return reply

    def retry(self, ids: int | Iterable[int] | None = None,
              status: str | Sequence[str] = (JobStatus.FAILED, JobStatus.ABORTED),
              ) -> dict[str, Any]:
        """Re-queue FAILED/ABORTED jobs as new attempts: the jobs ``ids``, else every job in
        ``status``. Each keeps its attempt history (``ctl.job(id).attempts``); a job may be
        retried ``manual_retry_limit`` times (settings). The sentinel's answer:
        ``{"job_ids": [...], "attempts": {id: attempt}, "refused": {id: reason}}``."""
        self._check()
        wanted = None if ids is None else [int(ids)] if isinstance(ids, int) else \
            [int(i) for i in ids]
        statuses = [str(status)] if isinstance(status, str) else [str(s) for s in status]
        payload: dict[str, Any] = ({"job_ids": wanted} if wanted is not None
                                   else {"status": statuses})
        with self.session.command("Retry", payload) as r:
            if wanted:
                self.events.link(wanted, r.correlation_id, r.event_id)
            reply = self.client.retry_jobs(wanted or (), statuses=() if wanted else statuses)
            queued = [int(i) for i in reply["job_ids"]]
            self.events.link(queued, r.correlation_id, r.event_id)
            # wait() must not take their earlier end for this attempt's (the state DB
            # check still sees this attempt end, even if its event came before this line).
            self.events.forget_finished(queued)
            r.update(job_ids=queued, count=len(queued))
        self._submitted.extend(i for i in queued if i not in self._submitted)
        for job_id, why in (reply.get("refused") or {}).items():
            print(f"casparian: job {job_id} not retried: {why}")
        return reply

    def cancel_all_queued(self) -> dict[str, Any]:
        """Cancel every job still QUEUED (running jobs keep running)."""
        self._check()
        with self.session.command("Cancel", {"status": JobStatus.QUEUED}) as r:
            reply = self.client.cancel_jobs(status=JobStatus.QUEUED)
            r.update(count=len(reply.get("results") or {}))
        return reply

    def compact(self, sink: str, output: str | None = None,
                target_size: int | str = "128MB") -> Compaction:
        """Merge the small promoted files of a ``parquet://`` sink (``output``, or every
        output) into files of about ``target_size``. The sentinel does it, taking turns with
        its promotions, so it is safe while jobs run; queries (``ctl.sql``) never see a row
        twice or miss one; the jobs' artifacts then name the merged files."""
        from ..sinks.compaction import check_compactable

        self._check()
        parsed, size = check_compactable(sink, output, target_size)
        payload = {"sink": str(parsed), "output": output, "target_size": size}
        with self.session.command("Compact", payload) as r:
            result = Compaction.from_reply(self.client.compact(str(parsed), output,
                                                               target_size=size))
            r.update(files_before=result.files_before, files_after=result.files_after,
                     rows=result.rows)
        return result

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
        """One job with every column and its attempt history (``.attempts``); a failed
        job's ``.error`` carries the remote traceback (``job.raise_for_status()`` raises it)."""
        reader = self._state()
        row = reader.get_job(int(job_id))
        if row is None:
            raise LookupError(f"job {job_id} does not exist in {self.settings.state_db}")
        # Every attempt (status, error, worker, times), oldest first: ``job.attempts``.
        row["attempts"] = reader.attempts(int(job_id))
        return Job.from_row(row)

    def logs(self, job_id: int, attempt: int | None = None) -> JobLog:
        """What job ``job_id``'s plugin printed and logged in ``attempt`` (default: its
        latest attempt with output): stdout, stderr, ``logging`` and ``ctx.log`` lines, the
        head and tail of a long log. Renders as a ``<pre>`` block; ``.tail(n)`` for the end."""
        return read_job_log(self.settings.home, int(job_id), attempt)

    def preview(self, plugin: Any, path: str | os.PathLike[str], rows: int = 20,
                timeout: float | None = None, *, sink: str | None = None) -> Preview:
        """:func:`casparian_nb.preview` with this home's settings, recorded on the session
        tape (``Preview`` command and its response). Needs no sentinel; writes nothing."""
        shown = plugin if isinstance(plugin, str | os.PathLike) else getattr(
            plugin, "__name__", type(plugin).__name__)
        payload = {"plugin": os.fspath(shown) if not isinstance(shown, str) else shown,
                   "input": os.fspath(path), "rows": rows}
        with self.session.command("Preview", payload) as r:
            result = run_preview(plugin, path, rows, timeout, settings=self.settings, sink=sink)
            r.update(status="success" if result.ok else "failed", rows=result.row_counts,
                     quarantine_rows=sum(d.quarantine_rows for d in result.details.values()),
                     **({"error": f"{result.error.ename}: {result.error.evalue}"}
                        if result.error is not None else {}))
        return result

    def stats(self) -> QueueStats:
        """Jobs per status (plus ``cancel_requested`` and ``total``)."""
        stats = QueueStats.from_counts(self._state().queue_stats())
        return dataclasses.replace(stats, history=lambda: self.jobs(limit=1_000_000))

    def job_snapshot(self, ids: Sequence[int] | None = None,
                     limit: int = 20_000) -> list[dict[str, Any]]:
        """Job dicts for the queue widget (its columns only): the newest ``limit`` jobs, or
        these ids."""
        if ids is None:
            return self._rows.newest(limit)
        return self._rows.by_ids(ids)

    def wait(self, ids: int | Iterable[int] | None = None, timeout: float | None = None, *,
             cancel_on_interrupt: bool = False, poll: float = 0.25,
             progress: bool | None = None) -> Any:
        """Block until the jobs (default: every job submitted here) finish; a WaitResult.

        Interruptible: "interrupt kernel" / Ctrl-C stops waiting (the jobs keep running) and
        the message says how to cancel them; with ``cancel_on_interrupt=True`` the pending
        jobs are cancelled first. ``timeout`` raises :class:`WaitTimeoutError`. While it
        blocks a progress bar shows (a widget in a notebook, stderr on a terminal) ending
        with the final counts; ``progress=False`` turns it off.
        """
        self._check()
        wanted = list(self._submitted) if ids is None else (
            [int(ids)] if isinstance(ids, int) else [int(i) for i in ids])
        with self.session.command("Wait", {"job_ids": wanted[:1000], "count": len(wanted)}) as r:
            bar = None
            if wanted and progress is not False:
                from .progress import progress_for

                bar = progress_for(f"waiting for {len(wanted)} job(s)", progress)
            result = wait_for(self, wanted, timeout, cancel_on_interrupt, poll, progress=bar)
            r.update(count=len(result.statuses), failed_job_ids=result.failed,
                     aborted_job_ids=sorted(j for j, s in result.statuses.items()
                                            if s == JobStatus.ABORTED))
        return result

    def event_gaps(self) -> int:
        """How often the sentinel's event stream skipped events so far (see
        ``EventPump.gaps``): the queue widget re-reads the state DB only when this grew."""
        return self.events.gaps

    def catch_up(self, timeout: float = 1.0) -> bool:
        """Wait until every event the sentinel has published so far has reached the widgets;
        False when that cannot be told (the sentinel does not answer) or took too long."""
        seq = self._published_seq(timeout)
        if seq is None:  # gone or busy: the caller re-reads the state DB instead
            return False
        return seq <= self._event_floor or self.events.wait_seq(seq, timeout)

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

    def sql(self, query: str, params: SqlParams = None, *, as_: ResultFormat = "pandas") -> Any:
        """Run SQL over the outputs plus ``jobs``, ``materializations``, ``tape_events``.

        Returns a pandas DataFrame (``as_="arrow"``: a pyarrow Table). ``params`` binds
        DuckDB parameters (``$name`` from a mapping, ``?`` from a sequence)."""
        with self.session.command("Query", {"sql": query}) as r:
            result = self.catalog.sql(query, params, as_=as_)
            r.update(rows=len(result))
        return result

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

"""The processes: ``casparian sentinel`` and ``casparian worker`` (one each, in the
foreground; what :class:`~casparian_nb.launcher.LocalCluster` starts) and ``casparian start``
(a sentinel and its workers in the foreground until Ctrl-C)."""

from __future__ import annotations

import signal
import sys
import time

import click

from ._app import EXIT_FAILED, EXIT_OK, App, recorded

__all__ = ["sentinel", "start", "stop", "worker"]


@click.command()
@recorded("Sentinel")
def sentinel(app: App) -> int:
    """Run the sentinel of the home in the foreground.

    Example: casparian --home ./home sentinel
    """
    from ..sentinel.server import run_sentinel

    return run_sentinel(app.settings)


@click.command()
@click.option("--slots", type=int, default=None, metavar="N",
              help="Plugin hosts, i.e. jobs run at once (default: one per core).")
@click.option("--worker-id", default=None, metavar="ID",
              help="Name the worker reports to the sentinel (default: a random one).")
@recorded("Worker")
def worker(app: App, slots: int | None, worker_id: str | None) -> int:
    """Run one worker of the home's sentinel in the foreground.

    Example: casparian --home ./home worker --slots 4
    """
    from ..worker.supervisor import run_worker

    return run_worker(app.settings, slots=slots, worker_id=worker_id)


@click.command(short_help="Run a sentinel and workers in the foreground; Ctrl-C stops all.")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers to start.")
@click.option("--slots", type=int, default=None, metavar="N",
              help="Plugin hosts per worker (default: one per core).")
@click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
              help="Where jobs run: local worker processes, or a Dask cluster "
                   "(default: the setting `executor`, else local).")
@click.option("--scheduler", default=None, metavar="ADDR",
              help="The Dask scheduler, e.g. tcp://HOST:8786 (with --executor dask).")
@click.option("--scheduler-file", default=None, metavar="FILE",
              help="A Dask scheduler file, in place of --scheduler.")
@recorded("Start")
def start(app: App, workers: int, slots: int | None, executor: str | None,
          scheduler: str | None, scheduler_file: str | None) -> int:
    """Run a sentinel and its workers in the foreground; Ctrl-C (or SIGTERM) stops them all,
    workers first. Exits 1, naming the sentinel's pid and signal, when the sentinel dies on
    its own (its workers are stopped all the same). With ``--executor dask`` the jobs run on
    the Dask cluster at ``--scheduler`` (docs/scale-out.md).

    Example: casparian start --workers 2  (or --executor dask --scheduler tcp://HOST:8786)
    """
    from ..launcher import LocalCluster

    settings = app.settings
    changes = {k: v for k, v in (("executor", executor), ("scheduler", scheduler),
                                 ("scheduler_file", scheduler_file)) if v is not None}
    if (scheduler or scheduler_file) and "executor" not in changes:
        changes["executor"] = "dask"
    settings = settings.with_overrides(**changes)
    cluster = LocalCluster(settings, workers=workers, slots=slots)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Installed, not inherited: `casparian start &` in a shell starts with SIGINT ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    info = cluster.start()
    if cluster.dask:
        where = (f"the Dask cluster at {settings.scheduler or settings.scheduler_file}")
    else:
        where = f"{workers} worker(s)"
    print(f"casparian: sentinel pid {info.pid} serving {settings.home} "
          f"(control {info.control}); {where}. Ctrl-C stops all.", flush=True)
    try:
        while not stopping and cluster.alive():
            time.sleep(0.1)
        # The sentinel died under us (kill -9, the OOM killer, a crash): say so and exit 1,
        # so that a supervisor (systemd, a CI script) does not take it for a clean stop.
        ended = None if stopping else cluster.sentinel_ended()
    finally:
        cluster.stop()
    if ended is not None:
        print(f"casparian: {ended}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print("casparian: stopped", flush=True)
    return EXIT_OK


@click.command(short_help="Stop the home's running sentinel and its workers cleanly.")
@click.option("--timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the sentinel to exit.")
@recorded("Stop", creates_home=False)
def stop(app: App, timeout: float) -> int:
    """Stop the sentinel serving the home (``casparian --home DIR stop``): it stops its
    workers (a running job is aborted, nothing of it promoted), writes TapeStopped, and
    exits; a ``casparian start`` in the foreground then exits 0.

    Example: casparian --home ./demo_home stop
    """
    from .._proc import pid_alive
    from .jobs import _live_client, no_sentinel

    settings = app.settings
    client = _live_client(settings)
    if client is None:
        raise no_sentinel(settings)
    pid = client.info.pid
    with client:
        client.shutdown()
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print(f"casparian: sentinel pid {pid} did not exit within {timeout:g} s",
                  file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.05)
    print(f"casparian: sentinel pid {pid} of {settings.home} stopped")
    app.response = {"pid": pid}
    return EXIT_OK

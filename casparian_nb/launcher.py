"""Start and stop a local sentinel and its workers as child processes.

Used by ``casparian start``, ``casparian demo`` and ``casparian_nb.start()``: the same object
behind the CLI and the notebook API. Every wait is bounded and fails with a one-line reason
that points at the log file.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

from ._proc import OWNER_PID_ENV, describe_exit
from .client import ConnectionInfo, ControlClient, connection_is_live, read_connection_file
from .config import Settings
from .errors import CasparianError, SentinelError
from .executors import processes

__all__ = ["LocalCluster", "settings_env"]


def settings_env(settings: Settings) -> dict[str, str]:
    """``CASPARIAN_*`` variables that make a child process load exactly ``settings`` (keyword
    overrides given to this process included; the trust keys come from the home's config)."""
    env: dict[str, str] = {"CASPARIAN_HOME": str(settings.home)}
    for f in dataclasses.fields(settings):
        if f.name in ("home", "trust"):
            continue
        value = getattr(settings, f.name)
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        env[f"CASPARIAN_{f.name.upper()}"] = text
    env["CASPARIAN_ALLOW_UNSIGNED_PYTHON"] = \
        "true" if settings.trust.allow_unsigned_python else "false"
    return env


class LocalCluster:
    """A sentinel plus ``workers`` worker processes serving ``settings.home``."""

    def __init__(self, settings: Settings, *, workers: int | None = None,
                 slots: int | None = None, owner_pid: int | None = None) -> None:
        """``owner_pid``: a process (a notebook kernel) whose death, even by SIGKILL, stops
        the sentinel and workers (they watch it; see :func:`casparian_nb._proc.exit_with_owner`)."""
        self.settings = settings
        self.owner_pid = owner_pid
        self.n_workers = settings.workers if workers is None else workers
        self.slots = slots
        self.sentinel: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.info: ConnectionInfo | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.owner_pid is not None:
            env[OWNER_PID_ENV] = str(self.owner_pid)
        return env

    def _spawn(self, args: list[str], log_name: str,
               module: str | None = None) -> subprocess.Popen[bytes]:
        log_path = self.settings.logs_dir / log_name
        argv = ([sys.executable, "-m", module, *args] if module else
                [sys.executable, "-m", "casparian_nb", "--home", str(self.settings.home), *args])
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True,  # Ctrl-C goes to us; we stop the children in order
            )

    def start(self, timeout: float = 60.0) -> ConnectionInfo:
        """Start the sentinel, wait until it answers, start the workers, wait until they join."""
        try:
            existing = read_connection_file(self.settings.home)
        except SentinelError:
            existing = None
        if existing is not None and connection_is_live(existing):
            raise SentinelError(f"a sentinel (pid {existing.pid}) already serves "
                                f"{self.settings.home}; attach to it instead")
        # What the executor needs (the dask one: a scheduler and the extra), refused in
        # one line before anything starts.
        spawns = processes(self.settings, workers=self.n_workers, slots=self.slots)
        deadline = time.monotonic() + timeout
        self.sentinel = self._spawn(["sentinel"], "sentinel.out")
        info = self._wait_for_sentinel(deadline)
        self.info = info
        for p in spawns:
            self.workers.append(self._spawn(p.args, p.log_name, p.module))
        # A dask bridge is ready once it has seated at least one of the cluster's workers.
        self._wait_for_workers(1 if self.dask else len(self.workers), deadline, timeout)
        return info

    @property
    def dask(self) -> bool:
        """Whether jobs run on a Dask cluster (through a bridge process) instead of local
        workers."""
        return self.settings.executor == "dask"

    def _spawn_worker(self, slots: int | None) -> None:
        (p,) = processes(self.settings, workers=1, slots=slots, first=len(self.workers))
        self.workers.append(self._spawn(p.args, p.log_name, p.module))

    def _wait_for_workers(self, n: int, deadline: float, timeout: float) -> None:
        assert self.info is not None
        with ControlClient(self.info, timeout=5.0) as client:
            while True:
                joined = len(client.list_workers())
                if joined >= n:
                    return
                dead = [w.pid for w in self.workers if w.poll() is not None]
                if dead and self.dask:
                    self.stop()
                    raise CasparianError(self._failure("the dask bridge exited during "
                                                       "start-up", ("dask-bridge.out",)))
                if dead:
                    self.stop()
                    raise CasparianError(f"worker process(es) {dead} exited during start-up; "
                                         f"see {self.settings.logs_dir}/worker-*.out")
                if time.monotonic() > deadline:
                    self.stop()
                    raise CasparianError(f"only {joined} of {n} workers joined "
                                         f"within {timeout:.0f}s; see {self.settings.logs_dir}")
                time.sleep(0.05)

    def add_worker(self, *, slots: int | None = None, timeout: float = 60.0) -> int:
        """Start one more worker and wait until it joined; its pid."""
        if self.info is None:
            raise CasparianError("start the cluster first")
        if self.dask:
            raise CasparianError("with the dask executor, add workers to the Dask cluster")
        with ControlClient(self.info, timeout=5.0) as client:
            before = len(client.list_workers())
        self._spawn_worker(slots or self.slots)
        self._wait_for_workers(before + 1, time.monotonic() + timeout, timeout)
        return self.workers[-1].pid

    def _wait_for_sentinel(self, deadline: float) -> ConnectionInfo:
        assert self.sentinel is not None
        while True:
            code = self.sentinel.poll()
            if code is not None:
                raise SentinelError(self._failure(f"sentinel exited with code {code}"))
            try:
                info = read_connection_file(self.settings.home)
                if info.pid == self.sentinel.pid:
                    with ControlClient(info, timeout=2.0) as client:
                        client.ping()
                    return info
            except SentinelError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SentinelError(self._failure("sentinel did not start in time"))
            time.sleep(0.05)

    def _failure(self, what: str,
                 logs: tuple[str, ...] = ("sentinel.out", "sentinel.log")) -> str:
        # sentinel.out holds what the process printed (a `casparian: error: ...` line, a
        # traceback); its log lines go to sentinel.log only, so look there when .out is empty.
        for name in logs:
            log = self.settings.logs_dir / name
            try:
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            except OSError:
                continue
            if lines:  # the last line is already one line: keep its advice
                return f"{what}: {lines[-1]} (log: {log})"
        return f"{what} (log: {self.settings.logs_dir / logs[0]})"

    @property
    def pids(self) -> list[int]:
        procs = ([self.sentinel] if self.sentinel else []) + self.workers
        return [p.pid for p in procs]

    def alive(self) -> bool:
        return self.sentinel is not None and self.sentinel.poll() is None

    def sentinel_ended(self) -> str | None:
        """How the sentinel ended when it did so without :meth:`stop` — ``"sentinel pid 12
        was killed by SIGKILL"``, ``"... exited with code 1"`` — or None while it runs (or
        when it exited 0: a Shutdown request). Reaps it."""
        if self.sentinel is None:
            return None
        code = self.sentinel.poll()
        if not code:
            return None
        return f"sentinel pid {self.sentinel.pid} {describe_exit(code)}"

    def stop(self, timeout: float = 10.0) -> None:
        """Workers first (their running jobs are aborted), then the sentinel."""
        for w in self.workers:
            _signal(w, signal.SIGTERM)
        _wait_all(self.workers, timeout)
        if self.sentinel is not None:
            _signal(self.sentinel, signal.SIGTERM)
            _wait_all([self.sentinel], timeout)
        self.workers = []

    def wait(self) -> None:
        """Block until the sentinel exits (``casparian start`` in the foreground)."""
        if self.sentinel is not None:
            self.sentinel.wait()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


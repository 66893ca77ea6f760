"""What every ``casparian`` command shares: the global options, the settings, the ``--tape``
recording of the command, and the one-line error convention.

A command is a click command decorated with :func:`recorded`: it receives the :class:`App`
first, returns its exit code and may set :attr:`App.response` (what its tape records on
success). Errors are reported here, once, for every command:

* a :class:`~casparian_nb.errors.CasparianError` → ``casparian: error: <one line>``, exit 2
  when the user asked for something that cannot be done as asked (a bad argument, plugin,
  sink or config: :data:`USAGE_ERRORS`), exit 1 when it could not be done now (no sentinel,
  no state DB yet, a job that failed); ``-v`` shows the traceback instead;
* Ctrl-C (or SIGTERM during ``run``) → ``casparian: interrupted``, exit 130.

A command that writes nothing in the home itself (``recorded(..., creates_home=False)``:
``jobs``, ``job show``, ``tape ...``, and those that only talk to the sentinel — ``submit``,
``job cancel``, ``stop``) loads the settings without creating the home: looking, or asking a
sentinel that is not there, must not leave a directory behind.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from ..config import Settings, load_settings
from ..errors import (
    CasparianError,
    ConfigError,
    PluginError,
    SinkModeError,
    SinkRoutingError,
    SinkURIError,
    TapeError,
)

if TYPE_CHECKING:
    from ..protocol import QuarantinePolicy
    from ..tape import TapeWriter

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "SINK_MODES",
           "USAGE_ERRORS", "App", "exit_status", "quarantine_from_options", "quarantine_options",
           "recorded", "sink_options", "stdout_gone"]

#: 0 success; 1 a failure: the request was well formed but could not be done or something it
#: did failed (no sentinel running, a job, a validation; for ``start``: its sentinel died on
#: its own — killed by a signal or a non-zero exit — named on one line; 1 rather than
#: 128 + signal, which would say ``start`` itself was killed); 2 a usage error (bad option or
#: argument, missing or refused plugin, bad sink), with a one-line reason; 130 interrupted;
#: 141 stdout closed early (``casparian jobs | head -1``), silently, as Unix tools do.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

#: Errors that mean "not like that": the command line (or the plugin, input, sink, config or
#: output path it names) is what must change. Every other CasparianError is a failure of a
#: well-formed request (no sentinel, a state DB of another version, a job that failed).
USAGE_ERRORS: tuple[type[CasparianError], ...] = (ConfigError, PluginError, SinkURIError,
                                                  SinkModeError, SinkRoutingError, TapeError)


def exit_status(exc: CasparianError) -> int:
    """The exit status for ``exc``, by its type: 2 for a usage error, else 1."""
    # Imported here: both modules are only needed once a command has failed.
    from .._inputs import InputError
    from ..bundle import BundleError

    usage = (*USAGE_ERRORS, InputError, BundleError)
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILED


#: Parameters a command's tape event records (when given); the tape redacts them by field.
_TAPE_FIELDS = ("plugin", "inputs", "sink", "mode", "status", "limit", "job_id", "workers",
                "file", "rows", "target_size")

#: ``--mode`` choices: the values of :class:`casparian_nb.sinks.SinkMode`, spelled here because
#: importing ``sinks`` loads pyarrow, too slow for every ``casparian jobs`` (a unit test keeps
#: the two equal).
SINK_MODES = ("append", "replace", "error")

P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])


def sink_options(fn: F) -> F:
    """``--sink [NAME=]URI`` (repeatable) and ``--mode M``, as ``run`` and ``submit`` both
    take them; the command turns the ``--sink`` values into one routing
    (:func:`casparian_nb.sinks.routing_from_args`)."""
    fn = click.option("--mode", type=click.Choice(SINK_MODES), default="append",
                      show_default=True,
                      help="What to do with data of other runs already in an output.")(fn)
    return click.option("--sink", multiple=True, metavar="[NAME=]URI",
                        help="parquet://DIR, csv://DIR or duckdb://FILE (default: the home's "
                             "output); NAME=URI sends output NAME there, repeat for each, a "
                             "bare URI takes the rest.")(fn)


def quarantine_options(fn: F) -> F:
    """``--max-quarantine-pct`` and ``--max-quarantine-rows``, as ``run`` and ``submit`` both
    take them; :func:`quarantine_from_options` makes the policy."""
    fn = click.option("--max-quarantine-rows", type=int, default=None, metavar="N",
                      help="Fail a job if more than N rows of an output go to quarantine.")(fn)
    return click.option("--max-quarantine-pct", type=float, default=None, metavar="PCT",
                        help="Fail a job (promote none of it) if more than PCT%% of an "
                             "output's rows go to quarantine (overrides the plugin's "
                             "quarantine policy).")(fn)


def quarantine_from_options(max_pct: float | None, max_rows: int | None
                            ) -> QuarantinePolicy | None:  # fmt: skip
    """The policy of ``--max-quarantine-pct/-rows``; a bad value is a usage error (exit 2)."""
    from ..contracts import quarantine_policy

    limits = {"max_pct": max_pct, "max_rows": max_rows}
    try:
        return quarantine_policy({k: v for k, v in limits.items() if v is not None})
    except PluginError as exc:
        raise click.UsageError(str(exc).replace("quarantine: max_pct", "--max-quarantine-pct")
                               .replace("quarantine: max_rows", "--max-quarantine-rows")) from None


@dataclass
class App:
    """The global options of one ``casparian`` invocation and what its command recorded."""

    home: str | None = None
    tape_path: Path | None = None
    verbose: bool = False
    #: False for a read-only command: the settings are loaded without creating the home.
    create_home: bool = True
    #: Set by the running command: the payload of its ``CommandSucceeded`` tape event.
    response: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _tape: TapeWriter | None = None
    _command: tuple[str, str] | None = None  # (event id, correlation id) on the tape

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home, create=self.create_home)
        return self._settings

    def begin(self, name: str, params: dict[str, Any]) -> None:
        """Load the settings and, with ``--tape``, record the command ``name``."""
        settings = self.settings
        if self.tape_path is None:
            return
        from ..tape import TapeWriter

        self._tape = TapeWriter(self.tape_path, producer="cli", redact=settings.tape_redact)
        payload = {key: list(value) if isinstance(value, tuple) else value
                   for key, value in params.items()
                   if key in _TAPE_FIELDS and value is not None}
        self._command = self._tape.command(name, payload)

    @property
    def correlation_id(self) -> str | None:
        """The recorded command's correlation id (``--tape``), else None."""
        return self._command[1] if self._command is not None else None

    def finish(self, code: int) -> None:
        if self._tape is not None and self._command is not None:
            cmd_id, corr = self._command
            if code == EXIT_OK:
                self._tape.succeeded(cmd_id, corr, self.response)
            else:
                self._tape.failed(cmd_id, corr, f"exit code {code}")

    def fail(self, message: str) -> None:
        if self._tape is not None and self._command is not None:
            self._tape.failed(*self._command, message)

    def close(self) -> None:
        if self._tape is not None:
            self._tape.close()
            self._tape = None


def stdout_gone() -> int:
    """Stdout's reader has gone: point stdout at /dev/null (so the interpreter's flush at
    exit raises nothing) and end as a process killed by SIGPIPE reports, quietly (141)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def recorded(name: str, *, creates_home: bool = True
             ) -> Callable[[Callable[Concatenate[App, P], int]], Callable[P, int]]:
    """Make ``fn(app, **params) -> exit code`` a command body recorded on ``--tape`` as
    ``name`` (one of the tape envelope's CLI command names), with the shared error handling.
    With ``creates_home=False`` the command never creates the home."""

    def decorate(fn: Callable[Concatenate[App, P], int]) -> Callable[P, int]:
        @functools.wraps(fn)
        def invoke(*args: P.args, **params: P.kwargs) -> int:
            app = click.get_current_context().find_object(App)
            assert app is not None, "casparian commands run under the root group"
            app.create_home = creates_home
            try:
                app.begin(name, params)
                code = fn(app, *args, **params)
                app.finish(code)
                return code
            except BrokenPipeError:  # `casparian jobs | head -1`: the reader left
                app.fail("stdout closed")
                return stdout_gone()
            except KeyboardInterrupt:
                print("casparian: interrupted", file=sys.stderr)
                app.fail("interrupted")
                return EXIT_INTERRUPTED
            except CasparianError as exc:
                if app.verbose:
                    raise
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"casparian: error: {message}", file=sys.stderr)
                app.fail(message)
                return exit_status(exc)

        return invoke

    return decorate

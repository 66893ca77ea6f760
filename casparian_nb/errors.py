"""The one error hierarchy of casparian_nb.

Every error the package raises on purpose derives from :class:`CasparianError`. Specific
errors also subclass the builtin they resemble, so ``except ValueError`` keeps working::

    CasparianError
    ├── ConfigError (ValueError)            bad config.toml / CASPARIAN_* value
    ├── PluginError (ValueError)            a plugin that cannot run (syntax, no parse, ...)
    │   ├── PluginReturnError (TypeError)   parse() returned something that is not a table
    │   ├── OutputNameError                 an output name breaking [a-z][a-z0-9_]*
    │   ├── PluginPathError (PermissionError)   path traversal / symlink escape (F12)
    │   └── TrustError (PermissionError)    trust policy refused the plugin (F13)
    ├── LineageError (ValueError)           reserved _cf_ columns misused (F7)
    ├── SinkError (OSError)                 sink cannot be written
    │   ├── SinkURIError (ValueError)       malformed sink URI
    │   ├── SinkModeError (FileExistsError) mode=error and the output exists (F3)
    │   └── SinkLockedError                 a DuckDB file held by another process
    ├── SinkRoutingError (ValueError)       a sink= mapping names an unknown or unrouted output
    ├── PermanentError                      raised by plugins: fail now, no retry
    │   ├── SchemaContractError (ValueError)  a batch breaks its declared schema (F16)
    │   └── QuarantineLimitError (ValueError) more quarantined rows than the policy allows
    ├── TransientError                      raised by plugins: retry with backoff
    ├── JobError (RuntimeError)             a job ended badly
    │   ├── RemoteJobError                  a plugin raised; carries the remote traceback
    │   ├── JobTimeoutError (TimeoutError)  per-job timeout
    │   └── JobCancelledError               cancelled by the user
    ├── ProtocolError (ValueError)          malformed wire message
    │   └── AuthenticationError (PermissionError)  bad or missing signature (F14)
    ├── SentinelError (ConnectionError)     no sentinel / cannot reach it
    │   ├── ControlTimeoutError (TimeoutError)
    │   └── SentinelGoneError               the sentinel a controller uses died
    ├── SharedStorageError (OSError)        Dask workers do not see the home's staging
    ├── StoreError (RuntimeError)           state database problems
    │   └── SchemaVersionError              state DB schema mismatch (F11)
    └── TapeError (ValueError)              unreadable tape
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "CasparianError",
    "CompactionBusyError",
    "CompactionError",
    "CompactionSizeError",
    "ConfigError",
    "ControlTimeoutError",
    "JobCancelledError",
    "JobError",
    "JobLogNotFoundError",
    "JobTimeoutError",
    "LineageError",
    "MissingExtraError",
    "OutputNameError",
    "PermanentError",
    "PluginError",
    "PluginNotFoundError",
    "PluginPathError",
    "PluginReturnError",
    "ProtocolError",
    "QuarantineLimitError",
    "RemoteJobError",
    "SchemaContractError",
    "SchemaVersionError",
    "SentinelError",
    "SentinelGoneError",
    "SharedStorageError",
    "SinkError",
    "SinkLockedError",
    "SinkModeError",
    "SinkRoutingError",
    "SinkURIError",
    "StoreError",
    "TapeError",
    "TransientError",
    "TrustError",
]


class CasparianError(Exception):
    """Base class of every error casparian_nb raises on purpose."""


class ConfigError(CasparianError, ValueError):
    """A setting in config.toml or a ``CASPARIAN_*`` variable is invalid."""


class PluginError(CasparianError, ValueError):
    """A plugin cannot be loaded or run (syntax error, no ``parse``, ...)."""


class PluginReturnError(PluginError, TypeError):
    """``parse()`` returned something that is not a table, a list of Output or None."""


class OutputNameError(PluginError):
    """An output name does not match ``[a-z][a-z0-9_]*``."""


class PluginNotFoundError(PluginError, FileNotFoundError):
    """No plugin file (or named plugin) where the reference points."""


class PluginPathError(PluginError, PermissionError):
    """A plugin path escapes its directory (F12)."""


class TrustError(PluginError, PermissionError):
    """The trust policy refuses to run this plugin (F13)."""


class LineageError(CasparianError, ValueError):
    """A plugin emitted reserved ``_cf_`` columns (F7)."""


class SinkError(CasparianError, OSError):
    """An output sink cannot be written."""


class SinkURIError(SinkError, ValueError):
    """A sink URI is malformed."""


class SinkModeError(SinkError, FileExistsError):
    """``mode=error`` and the output already holds data (F3)."""


class SinkLockedError(SinkError):
    """A DuckDB sink file is held by another process."""


class SinkRoutingError(CasparianError, ValueError):
    """A ``sink=`` mapping names an output the plugin does not declare, or an output has no
    route and there is no ``"*"`` (not an I/O error: a retry cannot fix it)."""


class CompactionError(SinkError):
    """A compaction could not run now (another one runs, readers hold the output); nothing
    changed."""


class CompactionBusyError(CompactionError, BlockingIOError):
    """Readers hold the output a compaction wants to swap (it tries again, then gives up)."""


class CompactionSizeError(SinkURIError):
    """A compaction target size that does not parse (a usage error, like a bad sink URI)."""


class MissingExtraError(CasparianError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class PermanentError(CasparianError):
    """Raise from a plugin to fail the job at once, without retries."""


class TransientError(CasparianError):
    """Raise from a plugin to have the job retried with backoff."""


class SchemaContractError(PermanentError, ValueError):
    """A batch does not have the shape its output's declared schema promises (a missing,
    extra or uncastable column, an undeclared output): the job fails, nothing is written."""


class QuarantineLimitError(PermanentError, ValueError):
    """More rows went to quarantine than the job's quarantine policy allows."""


class JobError(CasparianError, RuntimeError):
    """A job ended in failure."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class RemoteJobError(JobError):
    """A plugin raised inside a plugin host; carries the remote traceback.

    In IPython/Jupyter the remote traceback is what gets shown (``_render_traceback_``).
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: str = "",
        *,
        job_id: str | None = None,
        input_file: str | None = None,
    ) -> None:
        super().__init__(f"{ename}: {evalue}", job_id=job_id)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.input_file = input_file

    @classmethod
    def from_payload(cls, payload: dict[str, Any], *, job_id: str | None = None) -> RemoteJobError:
        return cls(
            str(payload.get("ename", "Error")),
            str(payload.get("evalue", payload.get("message", ""))),
            str(payload.get("traceback", "")),
            job_id=job_id,
            input_file=payload.get("input_file"),
        )

    def _render_traceback_(self) -> list[str]:
        head = f"RemoteJobError: job {self.job_id}" + (
            f" on {self.input_file}" if self.input_file else ""
        )
        body = self.traceback.rstrip("\n").splitlines() or [f"{self.ename}: {self.evalue}"]
        return [head, *body]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_remote,
            (self.ename, self.evalue, self.traceback, self.job_id, self.input_file),
        )


def _rebuild_remote(
    ename: str, evalue: str, tb: str, job_id: str | None, input_file: str | None
) -> RemoteJobError:
    return RemoteJobError(ename, evalue, tb, job_id=job_id, input_file=input_file)


class JobTimeoutError(JobError, TimeoutError):
    """A job ran past its timeout and was killed."""


class JobCancelledError(JobError):
    """A job was cancelled by the user."""


class ProtocolError(CasparianError, ValueError):
    """A wire message is malformed, too large or of an unknown type."""


class AuthenticationError(ProtocolError, PermissionError):
    """A wire message has a missing or wrong signature (F14)."""


class SentinelError(CasparianError, ConnectionError):
    """No sentinel serves this home, or it cannot be reached."""


class ControlTimeoutError(SentinelError, TimeoutError):
    """A control request got no reply in time."""


class SentinelGoneError(SentinelError):
    """The sentinel a notebook controller started or attached to is no longer running (it was
    killed, or it crashed): its requests would only time out and its jobs would never finish."""


class SharedStorageError(CasparianError, OSError):
    """A remote executor's workers do not see the home's staging directory, so nothing they
    stage could ever be promoted (the dask executor checks this at start)."""


class StoreError(CasparianError, RuntimeError):
    """The state database cannot be used."""


class SchemaVersionError(StoreError):
    """The state database has a schema version this build cannot use (F11)."""


class TapeError(CasparianError, ValueError):
    """A tape cannot be read."""


class PathOutsideRootError(CasparianError, PermissionError):
    """A path given to the Jupyter server extension leaves the server's root folder."""


class JobLogNotFoundError(CasparianError, FileNotFoundError):
    """A job attempt asked for has no captured log (it wrote nothing, or never ran)."""

"""What a plugin host says about an error: its kind (retry or not) and its wire form, with
the traceback from the plugin's first frame (:mod:`casparian_nb.worker.host`)."""

from __future__ import annotations

import os
import resource
import traceback
from types import TracebackType

from ..errors import (
    LineageError,
    PermanentError,
    PluginError,
    SinkError,
    TransientError,
)
from ..protocol import ErrorInfo, ErrorKind

__all__ = ["classify_error", "error_payload", "limit_memory"]

_MAX_TRACEBACK = 16_000
#: The address-space limit this host runs under (0: none), for out-of-memory messages.
_MEMORY_LIMIT_MB = 0


def classify_error(exc: BaseException) -> ErrorKind:
    """Transient (retry with backoff) or permanent (fail now).

    Plugins choose with :class:`TransientError` / :class:`PermanentError`. Anything else a
    parser raises is a bug or bad input that a retry will not fix, so it is permanent; sink
    I/O errors (a full disk, a locked file) are transient.
    """
    if isinstance(exc, TransientError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, PermanentError | PluginError | LineageError):
        return ErrorKind.PERMANENT
    if isinstance(exc, SinkError | OSError) and not isinstance(exc, FileNotFoundError):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def error_payload(exc: BaseException, *, input_file: str | None = None,
                  phase: str | None = None) -> ErrorInfo:  # fmt: skip
    """The wire form of an error: ename, evalue, traceback (size-capped), kind."""
    tb = "".join(traceback.format_exception(type(exc), exc, _from_plugin(exc.__traceback__)))
    if len(tb) > _MAX_TRACEBACK:
        tb = tb[: _MAX_TRACEBACK // 2] + "\n... (traceback truncated) ...\n" + tb[-_MAX_TRACEBACK // 2 :]
    evalue = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, MemoryError):  # bare MemoryError() says nothing: say what happened
        limit = (f"its memory limit of {_MEMORY_LIMIT_MB} MiB (job_memory_limit_mb)"
                 if _MEMORY_LIMIT_MB else "the memory available")
        evalue = f"out of memory: the job exceeded {limit}" + (f" ({evalue})" if evalue else "")
    return ErrorInfo(ename=type(exc).__name__, evalue=evalue, traceback=tb,
                     kind=classify_error(exc), input_file=input_file, phase=phase)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _from_plugin(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame outside casparian_nb (the plugin's code), so a
    remote traceback starts where the user's code does; all of it when no frame is."""
    t = tb
    while t is not None and t.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        t = t.tb_next
    return t if t is not None else tb


def limit_memory(megabytes: int) -> None:
    """Run this host under an address-space limit of ``megabytes`` MiB (0: none)."""
    global _MEMORY_LIMIT_MB
    if megabytes > 0:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _MEMORY_LIMIT_MB = megabytes

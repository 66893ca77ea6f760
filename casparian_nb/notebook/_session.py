"""The controller's session tape.

Every user action becomes ``ui_command`` + ``CommandSucceeded``/``CommandFailed`` (linked by
``correlation_id`` and ``parent_id``) through :meth:`SessionTape.command`::

    with session.command("Submit", {"plugin": path}) as r:
        ids = client.submit(...)
        r.update(job_ids=ids)          # becomes the response payload

An exception (or an interrupt) inside the block records ``CommandFailed`` and propagates.
A tape that cannot be opened (read-only home) never stops the notebook: commands then run
unrecorded, and ``SessionTape.problem`` says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import CasparianError
from ..tape import TapeWriter, new_correlation_id

__all__ = ["CommandRecord", "SessionTape"]

log = logging.getLogger("casparian_nb.notebook")


class CommandRecord:
    """The open command: its ids, and the response payload being built."""

    def __init__(self, event_id: str, correlation_id: str) -> None:
        self.event_id = event_id
        self.correlation_id = correlation_id
        self.response: dict[str, Any] = {}

    def update(self, **fields: Any) -> None:
        """Add fields to the ``CommandSucceeded`` payload."""
        self.response.update(fields)


class SessionTape:
    """``<home>/tapes/session-<UTC time>-<pid>.tape``, written by one controller."""

    def __init__(self, path: Path, tape: TapeWriter | None, problem: str | None = None) -> None:
        self.path = path
        self.tape = tape
        self.problem = problem

    @classmethod
    def open(cls, settings: Settings) -> SessionTape:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = settings.tapes_dir / f"session-{stamp}-{os.getpid()}.tape"
        n = 1
        while path.exists():  # two controllers in one second: never truncate the other's tape
            n += 1
            path = settings.tapes_dir / f"session-{stamp}-{os.getpid()}-{n}.tape"
        try:
            settings.tapes_dir.mkdir(parents=True, exist_ok=True)
            tape = TapeWriter(path, producer="notebook", redact=settings.tape_redact)
        except (OSError, CasparianError) as exc:
            log.warning("session tape disabled: %s", exc)
            return cls(path, None, str(exc))
        return cls(path, tape)

    @contextlib.contextmanager
    def command(self, name: str, payload: Mapping[str, Any] | None = None, *,
                raise_: bool = True) -> Iterator[CommandRecord]:
        """Record a ``ui_command`` and, when the block ends, its response."""
        tape = self.tape if self.tape is not None and not self.tape.closed else None
        if tape is None:
            yield CommandRecord("", new_correlation_id())
            return
        event_id, corr = tape.command(name, dict(payload or {}))
        record = CommandRecord(event_id, corr)
        try:
            yield record
        except KeyboardInterrupt:
            tape.failed(event_id, corr, "interrupted")
            raise
        except BaseException as exc:
            tape.failed(event_id, corr, exc)
            if raise_:
                raise
            log.exception("%s failed", name)
        else:
            tape.succeeded(event_id, corr, record.response)

    def close(self) -> None:
        if self.tape is not None:
            self.tape.close()

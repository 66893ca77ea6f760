"""A plugin host's log file with a size cap (``Settings.host_log_max_mb``).

A host's stdout and stderr are one pipe; a thread in the parent (the worker, or ``casparian
run``) copies it into ``<name>.log``. While a job runs, its output goes to the job's own log
instead (:mod:`casparian_nb.worker._capture`): this file keeps what a host writes between jobs
(start-up, crashes, and jobs run without a ``log_root``). That file holds at most half the cap: when it is full it
becomes ``<name>.log.1`` — replacing the previous ``.1``, whose bytes are then dropped for
good — and a new ``<name>.log`` starts with a line saying so and how many bytes were dropped
in all. So the two files never hold more than the cap together, and what the host printed
last (the job that is failing now, a crash's last words) is always on disk.

The reader is in the parent, not in the host, so a host killed by SIGKILL or ``os._exit``
loses nothing it wrote; and a plugin that floods is slowed to the speed of the disk by the
pipe, never failed. When the log cannot be written (a full disk) the reader keeps draining
and counts the bytes as dropped: a blocked pipe would hang the plugin.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["CappedLog"]

_CHUNK = 64 * 1024
#: Smallest file size before rotating (a rotation header must always fit).
_MIN_PART = 4096


class CappedLog:
    """Writes bytes to ``path``, rotating to ``path.1`` so both stay within ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.max_bytes = max_bytes
        self.part = max(_MIN_PART, max_bytes // 2)
        #: Bytes rotated away for good, or lost to write errors.
        self.dropped = 0
        self._fh: BinaryIO | None = None
        self._size = 0
        self._thread: threading.Thread | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fh = open(self.path, "ab", buffering=0)  # closed by close() / _rotate()
            self._size = os.fstat(self._fh.fileno()).st_size
        except OSError:
            self._fh = None

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating as often as needed; never raises."""
        while data:
            room = self.part - self._size
            if room <= 0:
                self._rotate()
                continue
            if len(data) <= room:
                self._put(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1 or room  # keep lines whole where they fit
            self._put(data[:cut])
            data = data[cut:]
            self._rotate()

    def _put(self, data: bytes) -> None:
        self._size += len(data)  # counted even when lost, so a failing disk still rotates
        if self._fh is None:
            self.dropped += len(data)
            return
        try:
            self._fh.write(data)
        except OSError:
            self.dropped += len(data)

    def _rotate(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
        with contextlib.suppress(OSError):
            self.dropped += self.rotated.stat().st_size
        with contextlib.suppress(OSError):
            os.replace(self.path, self.rotated)
        self._open()
        self._size = 0
        note = f"older output is in {self.rotated.name}"
        if self.dropped:
            note += f"; {self.dropped} bytes older than that were dropped"
        self._put(f"[casparian: this log was rotated (host_log_max_mb): {note}]\n".encode())

    # -- draining a pipe ------------------------------------------------------------------
    def start(self, fd: int, name: str) -> None:
        """Copy what arrives on ``fd`` (the read end of the host's stdout pipe) until EOF,
        in a daemon thread; ``fd`` and the file are closed at the end."""
        self._thread = threading.Thread(target=self._pump, args=(fd,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, fd: int) -> None:
        try:
            while True:
                try:
                    chunk = os.read(fd, _CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                self.write(chunk)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            self.close()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the pipe to be drained (after the host exited)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

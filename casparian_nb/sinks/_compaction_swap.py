"""Compaction's crash-safe swap (steps 3-4 of :mod:`.compaction`) and the locks around it:
the directory's reader lock (shared for readers, :func:`read_lock`; exclusive for the swap),
the run lock that lets one compaction at a time into a directory, the journals a crash
leaves (:func:`recover_compactions` rolls them forward or drops them) and the leftovers
readers must skip until then (:func:`hidden_files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CompactionBusyError, CompactionError
from ._fs import fsync_dir, read_json

__all__ = ["LOCK_NAME", "RUN_LOCK_NAME", "TMP_SUFFIX", "direct", "flock", "hidden_files",
           "leftovers", "read_lock", "recover_compactions", "swap", "swap_retrying"]

LOCK_NAME = ".cf-compact.lock"
RUN_LOCK_NAME = ".cf-compact.run.lock"
_JOURNAL = re.compile(r"^\.cf-compact-([0-9a-f]{32})\.json$")
TMP_SUFFIX = ".cf-compact-tmp"

T = TypeVar("T")


# -- locks ------------------------------------------------------------------------------
def flock(path: Path, mode: int, timeout: float, what: str,
          busy: type[CompactionError] = CompactionError) -> int:
    """Open (creating) ``path`` and take ``mode``; poll up to ``timeout`` seconds, then
    raise ``busy(what)``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # someone else's file: flock works
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise busy(what) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def read_lock(dirs: Iterable[Path], timeout: float = 30.0) -> Iterator[None]:
    """Hold the shared reader lock of every sink directory in ``dirs`` (those that exist).

    A reader that lists a directory and reads its files inside this block never sees a
    compaction's swap half done. A directory where the lock file cannot be created (read
    only) is read without it."""
    fds: list[int] = []
    try:
        for d in sorted(set(dirs)):
            if not d.is_dir():
                continue
            try:
                fds.append(flock(d / LOCK_NAME, fcntl.LOCK_SH, timeout,
                                 f"{d}: a compaction holds its swap lock for over {timeout}s"))
            except CompactionError:
                raise
            except OSError:
                continue  # no lock file and none can be made (read-only): nothing compacts
        yield
    finally:
        for fd in fds:
            os.close(fd)


def hidden_files(directory: Path) -> set[str]:
    """Names in ``directory`` a reader must skip: the leftovers of a compaction that died
    after its merged file appeared (their rows are in it). Call under :func:`read_lock`."""
    hidden: set[str] = set()
    try:
        names = [n for n in os.listdir(directory) if _JOURNAL.match(n)]
    except OSError:
        return hidden
    for name in names:
        with contextlib.suppress(OSError, ValueError, KeyError):
            j = read_json(directory / name)
            if (directory / j["dst"]).exists():
                hidden.update(j["sources"])
    return hidden


# -- swap -------------------------------------------------------------------------------
def swap(directory: Path, journal: dict[str, Any], *, lock_timeout: float = 30.0) -> bool:
    """Step 3-4 for one journal: True if the merged file replaced its sources, False if it
    was dropped (a source vanished: a replace-mode promotion removed it meanwhile).
    :class:`CompactionBusyError` if readers hold the directory for ``lock_timeout``."""
    fd = flock(directory / LOCK_NAME, fcntl.LOCK_EX, lock_timeout,
               f"{directory}: readers kept the output busy for {lock_timeout}s; "
               "compaction stopped (nothing changed), run it again", CompactionBusyError)
    try:
        return _swap_locked(directory, journal)
    finally:
        os.close(fd)


def _swap_locked(directory: Path, j: dict[str, Any]) -> bool:
    tmp, dst = directory / j["tmp"], directory / j["dst"]
    sources = [directory / n for n in j["sources"]]
    jpath = directory / f".cf-compact-{j['id']}.json"
    if not dst.exists():
        if not tmp.exists() or not all(p.exists() for p in sources):
            # Not linked yet and something changed under us: the merge is void.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            jpath.unlink()
            return False
        os.link(tmp, dst)  # fails if dst exists: never overwrite (F0)
        fsync_dir(directory)
    for p in sources:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(directory)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    jpath.unlink()
    return True


def recover_compactions(directory: Path, *, lock_timeout: float = 30.0,
                        swap_with: Callable[[Callable[[], bool]], bool] | None = None
                        ) -> list[str]:
    """Finish (or drop) the compactions a crash interrupted in ``directory``; remove orphan
    tmp files. Only call while holding the directory's run lock. Returns journal ids.
    ``swap_with`` as in :func:`compact`."""
    done: list[str] = []
    if not directory.is_dir():
        return done
    named: set[str] = set()
    for name in sorted(os.listdir(directory)):
        m = _JOURNAL.match(name)
        if not m:
            continue
        try:
            j = read_json(directory / name)
        except (OSError, ValueError):
            (directory / name).unlink()  # torn journal: written atomically, so never happens
            continue
        named.add(j["tmp"])
        swap_retrying(directory, j, swap_with or direct, lock_timeout)
        done.append(m.group(1))
    for name in os.listdir(directory):
        orphan = name.startswith(".") and name.endswith(TMP_SUFFIX) and name not in named
        unpublished = name.startswith(".cf-compact-") and name.endswith(".json.tmp")
        if orphan or unpublished:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
    return done


def leftovers(directory: Path) -> bool:
    """Whether an interrupted compaction left anything in ``directory``."""
    return any(n.startswith(".cf-compact-") or n.endswith(TMP_SUFFIX)
               for n in os.listdir(directory))


def direct(fn: Callable[[], T]) -> T:
    """Run ``fn`` here (no sentinel's committer to take turns with)."""
    return fn()


def swap_retrying(directory: Path, j: dict[str, Any],
                  swap_with: Callable[[Callable[[], bool]], bool], timeout: float) -> bool:
    """Try the swap without waiting (the committer must never wait for a notebook's query)
    until readers let it through, for ``timeout`` seconds; then drop the merge and raise."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            return swap_with(functools.partial(swap, directory, j, lock_timeout=0.0))
        except CompactionBusyError:
            if time.monotonic() >= deadline:
                if not (directory / j["dst"]).exists():
                    # Never linked: drop it (after a link, the journal must stay: it tells
                    # readers which leftovers to skip until a later compaction finishes).
                    with contextlib.suppress(FileNotFoundError):
                        (directory / j["tmp"]).unlink()
                    (directory / f".cf-compact-{j['id']}.json").unlink()
                raise CompactionBusyError(
                    f"{directory}: readers kept the output busy for {timeout}s; compaction "
                    "stopped (nothing changed), run it again") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

"""Small durability helpers shared by staging and promotion (POSIX)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["fsync_dir", "fsync_file", "fsync_files", "read_json", "remove_tree", "sync_paths",
           "write_json_atomic"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's data to disk (a read-only fd is enough for fsync on POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return syncfs


_syncfs = _load_syncfs()


def fsync_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Flush many closed files' data to disk at once.

    On Linux, one ``syncfs(2)`` per filesystem: a single journal commit covers every file
    (measured on ext4: 33 ms for 200 freshly written small files, against 1.3 ms for each
    ``fsync``). Elsewhere, and for a single file, an ``fsync`` per file.
    """
    files = list(paths)
    if _syncfs is None or len(files) < 2:
        for path in files:
            fsync_file(path)
        return
    _syncfs_devices(files)


def _syncfs_devices(paths: list[str | os.PathLike[str]]) -> None:
    """One ``syncfs`` per filesystem holding any of ``paths``."""
    assert _syncfs is not None
    devices: dict[int, str | os.PathLike[str]] = {}
    for path in paths:
        devices.setdefault(os.stat(path).st_dev, path)
    for path in devices.values():
        fd = os.open(path, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
        finally:
            os.close(fd)


def sync_paths(files: Iterable[str | os.PathLike[str]],
               dirs: Iterable[str | os.PathLike[str]]) -> None:
    """Make ``files`` and the entries of ``dirs`` durable: on Linux one ``syncfs`` per
    filesystem covers both (it commits the file system's journal, renames included); else
    an ``fsync`` per file and per directory."""
    files, dirs = list(files), list(dirs)
    if _syncfs is not None and len(files) + len(dirs) >= 2:
        _syncfs_devices([*files, *dirs])
        return
    for path in files:
        fsync_file(path)
    for path in dirs:
        fsync_dir(path)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames, links and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_journal_encoder = msgspec.json.Encoder(order="sorted")


def write_json_atomic(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    """Write JSON so that ``path`` holds either the old content or the complete new one.

    ``durable=False`` skips the two fsyncs: the new content survives a process crash but a
    power cut may bring the old one back (for a state whose loss recovery redoes anyway).
    """
    tmp = path.with_name(path.name + ".tmp")
    # msgspec, not json.dump: with an indent, json encodes in pure Python (a promotion
    # writes its journal twice, and this showed in a small file's promotion profile)
    text = msgspec.json.format(_journal_encoder.encode(data), indent=1)
    with open(tmp, "wb") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a directory tree; a missing tree is not an error."""
    try:
        os.rmdir(path)  # the usual case, a promoted job's emptied staging dir: one call
        return
    except FileNotFoundError:
        return
    except OSError:  # not empty (or not a directory): the whole walk
        pass
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)

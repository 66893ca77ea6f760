"""Small durability helpers shared by staging and promotion (POSIX)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "fsync_file", "read_json", "remove_tree", "write_json_atomic"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's data to disk (a read-only fd is enough for fsync on POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames, links and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    """Write JSON so that ``path`` holds either the old content or the complete new one.

    ``durable=False`` skips the two fsyncs: the new content survives a process crash but a
    power cut may bring the old one back (for a state whose loss recovery redoes anyway).
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
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
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)

"""Paths the browser names, confined to the Jupyter server's root folder.

The browser sends paths relative to the root (as the file browser shows them). Anything that
resolves outside it — ``..`` segments, an absolute path elsewhere, a symlink pointing out — is
refused with a one-line reason, before any file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import PathOutsideRootError

__all__ = ["confined", "relative_to_root"]


def confined(root_dir: str | os.PathLike[str], path: str) -> Path:
    """The real path of ``path`` (relative to ``root_dir``, or absolute inside it).

    Raises :class:`PathOutsideRootError` when it leaves the root (``..``, an absolute path
    elsewhere, a symlink escape); the file need not exist.
    """
    root = Path(root_dir).resolve()
    if "\x00" in path:
        raise PathOutsideRootError("refused: the path contains a NUL byte")
    parts = PurePosixPath(path.replace("\\", "/"))
    if ".." in parts.parts:
        raise PathOutsideRootError(f"refused: {path!r} contains '..'")
    candidate = Path(parts) if parts.is_absolute() else root / parts
    real = candidate.resolve()  # follows symlinks: an escaping link is caught below
    if real != root and root not in real.parents:
        raise PathOutsideRootError(f"refused: {path!r} is outside the server's root folder")
    return real


def relative_to_root(root_dir: str | os.PathLike[str], path: Path) -> str | None:
    """``path`` as the file browser names it (POSIX, relative to the root), or None when it
    is not under the root (e.g. the default home in the user's home folder)."""
    root = Path(root_dir).resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None

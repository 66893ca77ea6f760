"""Turn user input specs (files, directories, globs) into a sorted list of files."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import CasparianError

__all__ = ["InputError", "expand_inputs"]


class InputError(CasparianError, FileNotFoundError):
    """An input spec matched no file."""


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden directories (.git, .ipynb_checkpoints, staging temps) are not inputs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


def expand_inputs(specs: Iterable[str | os.PathLike[str]], *, base: Path | None = None) -> list[Path]:
    """Files named directly, every non-hidden file under a directory (recursive), or glob
    matches (``**`` recursive). Results are absolute, de-duplicated, in a stable order.

    Raises :class:`InputError` naming every spec that matched nothing.
    """
    base = base or Path.cwd()
    out: list[Path] = []
    seen: set[Path] = set()
    missing: list[str] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = base / path
        try:  # one stat: a run over 10,000 named files stats each of them once
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            mode = 0
        if stat.S_ISDIR(mode):
            matches = _walk(path)
        elif stat.S_ISREG(mode):
            matches = [path]
        elif glob.has_magic(text):
            matches = []
            for hit in sorted(glob.glob(str(path), recursive=True)):
                p = Path(hit)
                matches.extend(_walk(p) if p.is_dir() else [p] if p.is_file() else [])
        else:
            matches = []
        if not matches:
            missing.append(text)
        for match in matches:
            found = match.absolute()
            if found not in seen:
                seen.add(found)
                out.append(found)
    if missing:
        raise InputError("no input files match: " + ", ".join(repr(m) for m in missing))
    return out

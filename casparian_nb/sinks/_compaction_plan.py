"""Compaction's plan: which small files of which output merge into which file (merge groups
packed up to a target size, in promotion order), and the checks of a compaction request
(a ``parquet://`` sink, an output name, a size such as ``"128MB"``). No side effects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompactionSizeError, SinkURIError
from .uri import SinkURI, parse_sink_uri

__all__ = ["MergeGroup", "check_compactable", "parse_size", "plan"]

_FILE = re.compile(r"^([a-z][a-z0-9_]*)_[0-9a-f]{16}\.parquet$")
_OUTPUT = re.compile(r"^[a-z][a-z0-9_]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from ``"128MB"``, ``"1.5G"``, ``"64MiB"``, ``"4096"`` (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise CompactionSizeError(f"invalid size {text!r}; expected e.g. 128MB, 1GB, 4096")
        unit = (m.group(2) or "").lower()[:1]
        size = int(float(m.group(1)) * _UNITS[unit])
    if size < 1024:
        raise CompactionSizeError(f"target size {text!r} is too small (at least 1KB)")
    return size


@dataclass
class MergeGroup:
    """Small files of one output that become one merged file."""

    output: str
    sources: list[Path]
    bytes: int


def _sink_dir(sink: str | SinkURI) -> SinkURI:
    s = parse_sink_uri(sink)
    if s.kind != "parquet":
        raise SinkURIError(f"compaction is for parquet:// sinks; {s} is a {s.kind} sink")
    return s


def check_compactable(sink: str | SinkURI, output: str | None,
                      target_size: int | str) -> tuple[SinkURI, int]:
    """The parsed sink and target size, or a one-line :class:`SinkURIError` (a usage error:
    not a ``parquet://`` sink, a bad output name or size)."""
    s = _sink_dir(sink)
    if output is not None and not _OUTPUT.match(output):
        raise SinkURIError(f"invalid output name {output!r}: expected [a-z][a-z0-9_]*")
    return s, parse_size(target_size)


def plan(directory: Path, output: str | None, target_size: int) -> list[MergeGroup]:
    """The merge groups of ``directory``: per output, its files under ``target_size`` in
    promotion (mtime) order, packed up to ``target_size``; groups of one file are dropped."""
    files: dict[str, list[tuple[float, str, int]]] = {}
    with os.scandir(directory) as it:
        for entry in it:
            m = _FILE.match(entry.name)
            if not m or (output is not None and m.group(1) != output):
                continue
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and st.st_size < target_size:
                files.setdefault(m.group(1), []).append((st.st_mtime, entry.name, st.st_size))
    groups: list[MergeGroup] = []
    for name, found in sorted(files.items()):
        current: list[tuple[float, str, int]] = []
        size = 0
        for item in sorted(found):
            if current and size + item[2] > target_size:
                groups.append(MergeGroup(name, [directory / n for _, n, _ in current], size))
                current, size = [], 0
            current.append(item)
            size += item[2]
        groups.append(MergeGroup(name, [directory / n for _, n, _ in current], size))
    return [g for g in groups if len(g.sources) > 1]

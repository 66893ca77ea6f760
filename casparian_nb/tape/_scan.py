"""Explain's pass over a tape: the blocks :func:`.reader.read_blocks` yields, into an
``Explanation``.

Blocks of whole lines are decoded by msgspec at once (``_fast_block``); a block that does
not decode cleanly is parsed again line by line with ``json`` (``_line_block``), which skips
bad lines by number and holds the last bad line back: only a bad *last* line is a
truncation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from ..errors import TapeError
from ._decode import decode_block
from .reader import LINES, read_blocks, split_lines

if TYPE_CHECKING:
    from .explain import Explanation

__all__ = ["MAX_SKIPPED", "Cursor", "apply_block", "finish", "scan", "settle"]

MAX_SKIPPED = 100  # skipped line numbers kept (all are counted)



class Cursor:
    """Where the scan is: line number, the last event's (timestamp, schema_version), and a
    bad line held back until we know whether it is the last one (then: truncation)."""

    __slots__ = ("last", "number", "pending_bad")

    def __init__(self) -> None:
        self.number = 0
        self.last: tuple[Any, Any] | None = None
        self.pending_bad: tuple[int, bool] | None = None  # (line, ends with a newline)


def scan(ex: Explanation, cur: Cursor, fh: IO[bytes]) -> None:
    """Apply every line of ``fh`` to ``ex``."""
    for data, cut, kind in read_blocks(fh):
        apply_block(ex, cur, data, cut, kind)


def apply_block(ex: Explanation, cur: Cursor, data: bytes, cut: int, kind: int) -> None:
    """Apply ``data[:cut]`` (whole lines, or a last line without its newline)."""
    if kind == LINES or not _fast_block(ex, cur, data, cut):
        _line_block(ex, cur, data[:cut] if cut < len(data) else data)


def _fast_block(ex: Explanation, cur: Cursor, data: bytes, cut: int) -> bool:
    """Apply ``data[:cut]``, whole lines, decoded by msgspec; False (nothing applied) when it
    does not decode cleanly, so the caller parses it line by line instead."""
    try:
        events = decode_block(memoryview(data)[:cut])
    except (msgspec.MsgspecError, ValueError):  # ValueError: bytes that are not UTF-8
        return False
    lines = data.count(b"\n", 0, cut)
    if len(events) != lines + (data[cut - 1 : cut] != b"\n"):
        # msgspec reads a stream of values: a line with two ('{..}{..}') or a value over
        # two lines decodes, where json reads bad lines. Where the counts differ (those, or
        # blank lines) the line-by-line path decides, so the answer does not depend on which
        # block a line falls in. (Two such anomalies whose counts cancel out in one block
        # would still be read as msgspec reads them; no writer produces either.)
        return False
    if cur.pending_bad is not None:  # a bad line that turned out not to be the last
        _skip(ex, cur.pending_bad[0])
        cur.pending_bad = None
    skipped = ex.reducer.apply_envelopes(events, ex._envelope)
    if skipped < len(events):
        envelopes = [e for e in events if e.event_name is not None] if skipped else events
        if ex.event_count == 0:
            ex.started_at = envelopes[0].timestamp
        ex.event_count += len(envelopes)
        cur.last = (envelopes[-1].timestamp, envelopes[-1].schema_version)
    if skipped:
        indices = [i for i, e in enumerate(events) if e.event_name is None]
        for number in _line_numbers(data[:cut], indices):
            _skip(ex, cur.number + number)
    cur.number += lines
    return True


def _line_numbers(block: bytes, indices: list[int]) -> Iterator[int]:
    """1-based lines (within ``block``) of the listed non-blank lines, by index (as msgspec
    counts them: blank = JSON whitespace only)."""
    wanted = iter(indices)
    target = next(wanted, None)
    seen = -1
    for n, line in enumerate(block.split(b"\n"), 1):
        if target is None:
            return
        if line.strip(b" \t\r"):
            seen += 1
            if seen == target:
                yield n
                target = next(wanted, None)


def _line_block(ex: Explanation, cur: Cursor, block: bytes) -> None:
    """Apply lines one by one with ``json`` (lenient: bad lines skipped, by number)."""
    loads = json.loads
    for raw in split_lines(block):
        cur.number += 1
        if cur.pending_bad is not None:
            _skip(ex, cur.pending_bad[0])
            cur.pending_bad = None
        text = raw.decode("utf-8", "surrogateescape")
        if not text.strip():
            continue
        try:
            obj = loads(text)
        except ValueError:
            cur.pending_bad = (cur.number, text.endswith("\n"))
            continue
        if not isinstance(obj, dict) or not ex._apply(obj):
            _skip(ex, cur.number)
            continue
        if ex.event_count == 0:
            ex.started_at = obj.get("timestamp")
        ex.event_count += 1
        cur.last = (obj.get("timestamp"), obj.get("schema_version"))


def settle(ex: Explanation, cur: Cursor) -> None:
    """The scan is over: a bad last line is a truncation (no newline) or skipped."""
    if cur.pending_bad is not None:
        if cur.pending_bad[1]:
            _skip(ex, cur.pending_bad[0])
        else:
            ex.truncated = cur.pending_bad[0]
        cur.pending_bad = None


def finish(ex: Explanation, path: Path, lines: int) -> None:
    """:class:`TapeError` when ``lines`` lines held no event at all."""
    if lines and ex.event_count == 0 and ex.skipped_count:
        raise TapeError(f"{path} is not a tape: no line parses as an event")


def _skip(ex: Explanation, number: int) -> None:
    ex.skipped_count += 1
    if len(ex.skipped_lines) < MAX_SKIPPED:
        ex.skipped_lines.append(number)

"""Reading a tape: the one read path of explain, validate, replay and the timeline.

The file is read in blocks of whole lines (:func:`read_blocks`), and a block splits into
lines at ``b"\n"`` only (:func:`split_lines`), so every reader numbers lines alike. Explain
and validate decode a whole block with msgspec and fall back to :func:`parse_line` (``json``,
line by line) only to locate and name the damage; replay and the timeline stream
:class:`TapeEvent` objects (:class:`TapeReader`) built from the same lines.

A tape cut off by a crash ends in at most one partial line with no trailing newline. Both
readers report that as *truncation* (``RawLine.truncated`` / ``TapeReader.truncated``)
instead of failing: every complete event before it stays readable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import TapeError
from .envelope import TapeEvent, envelope_problem

__all__ = ["FAST", "LINES", "RawLine", "TapeReader", "iter_raw", "open_tape", "parse_line",
           "read_blocks", "read_tape", "split_lines"]

# Blocks of whole lines decoded at once; big enough to amortise the per-call cost, small
# enough that one block's decoded events stay a few MB.
_BLOCK = 1 << 22
FAST, LINES = 0, 1  # how a block is to be read: decoded whole (falling back), or line by line


@dataclass(slots=True)
class RawLine:
    """One non-blank physical line: its number, the parsed JSON or why it did not parse."""

    line: int
    obj: Any = None
    error: str | None = None
    #: The last line of the file, without a newline, that does not parse: a cut-off write.
    truncated: bool = False


def open_tape(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a tape for reading; :class:`TapeError` with a one-line reason when impossible."""
    p = Path(path)
    try:
        if p.is_dir():
            raise TapeError(f"{p} is a directory, not a tape file")
        return p.open("rb")
    except TapeError:
        raise
    except OSError as exc:
        raise TapeError(f"cannot read tape {p}: {exc.strerror or exc}") from exc


def iter_raw(path: str | os.PathLike[str]) -> Iterator[RawLine]:
    """Every non-blank line of the tape, parsed as JSON, in file order (streaming).

    Opening happens now, so a missing file fails here rather than on the first ``next``.
    """
    return _iter_lines(open_tape(path))


def _iter_lines(fh: IO[bytes]) -> Iterator[RawLine]:
    with fh:
        pending: tuple[int, bytes] | None = None
        number = 0
        # Look one line ahead: only the final line can be "truncated".
        for data, cut, _ in read_blocks(fh):
            for raw in split_lines(data[:cut] if cut < len(data) else data):
                number += 1
                if pending is not None:
                    yield parse_line(*pending, last=False)
                    pending = None
                if raw.strip():
                    pending = (number, raw)
        if pending is not None:
            yield parse_line(*pending, last=True)


def read_blocks(fh: IO[bytes], start: int = 0) -> Iterator[tuple[bytes, int, int]]:
    """``(data, cut, kind)`` for the blocks of whole lines of ``fh``, from byte ``start``
    (a line's start; a growing tape is read on from where the last read stopped):
    ``data[:cut]`` is the block; a line longer than a block comes whole; the file's last line
    without its newline comes alone, as ``LINES``."""
    fh.seek(start)
    while True:
        data = fh.read(_BLOCK)
        if not data:
            break
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) == _BLOCK:  # a line longer than a block
            data += fh.readline()
            cut = len(data) if data.endswith(b"\n") else 0
        kind = FAST
        if cut == 0:  # the last line, without a newline
            kind, cut = LINES, len(data)
        elif cut < len(data):  # the partial line starts the next block
            fh.seek(cut - len(data), os.SEEK_CUR)
        yield data, cut, kind


def split_lines(block: bytes) -> list[bytes]:
    """Lines ending at each b"\\n" (kept), as msgspec and a tape reader count them: a bare
    b"\\r" is whitespace inside a line, not a line break (``bytes.splitlines`` differs)."""
    parts = block.split(b"\n")
    last = parts.pop()
    out = [part + b"\n" for part in parts]
    if last:
        out.append(last)
    return out


def parse_line(number: int, raw: bytes, *, last: bool) -> RawLine:
    """One line as ``json`` parses it; ``last``: the file's final line (truncation)."""
    try:
        return RawLine(number, json.loads(raw))
    except UnicodeDecodeError as exc:
        error = f"not UTF-8: {exc.reason} at byte {exc.start}"
    except ValueError as exc:
        error = str(exc)
    truncated = last and not raw.endswith(b"\n")
    return RawLine(number, None, error, truncated)


class TapeReader:
    """Iterator of :class:`TapeEvent` over one tape.

    ``strict=True`` (default) raises :class:`TapeError` naming the line of the first complete
    line that is not a valid envelope; ``strict=False`` skips such lines and lists them in
    ``skipped``. A truncated last line never raises: iteration ends and ``truncated`` holds
    its line number.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        self.truncated: int | None = None
        self.skipped: list[tuple[int, str]] = []
        self._lines = iter_raw(self.path)

    def __iter__(self) -> TapeReader:
        return self

    def __next__(self) -> TapeEvent:
        for raw in self._lines:
            if raw.truncated:
                self.truncated = raw.line
                continue
            if raw.error is None:
                problem = envelope_problem(raw.obj)
                if problem is None:
                    return _event(raw.obj, raw.line)
                message = problem[1]
            else:
                message = f"parse error: {raw.error}"
            if self.strict:
                raise TapeError(f"{self.path}: line {raw.line}: {message}")
            self.skipped.append((raw.line, message))
        raise StopIteration

    def close(self) -> None:
        """Stop reading and release the file (also done when iteration ends)."""
        close = getattr(self._lines, "close", None)
        if close is not None:
            close()


def _event(obj: dict[str, Any], line: int) -> TapeEvent:
    en = obj["event_name"]
    return TapeEvent(
        obj["schema_version"],
        obj["event_id"],
        obj["seq"],
        obj["timestamp"],
        obj.get("correlation_id"),
        obj.get("parent_id"),
        en["type"],
        en.get("name"),
        obj.get("payload"),
        line,
    )


def read_tape(path: str | os.PathLike[str], *, strict: bool = True) -> TapeReader:
    """Stream the events of a tape (see :class:`TapeReader`)::

        reader = read_tape("session.tape")
        for event in reader:
            ...
        if reader.truncated:
            print("tape was cut off at line", reader.truncated)
    """
    return TapeReader(path, strict=strict)

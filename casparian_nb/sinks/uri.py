"""Sink URIs, sink modes and output file names.

A sink is written as ``<kind>://<path>[?table=<name>]``::

    parquet://output            -> parquet:///abs/cwd/output       (a directory)
    CSV://./out/                -> csv:///abs/cwd/out               (a directory)
    duckdb://data/db.duckdb?table=orders
                                -> duckdb:///abs/cwd/data/db.duckdb?table=orders

``str(SinkURI)`` is the one canonical spelling (absolute, normalised, lower-case scheme, no
trailing slash): materialization keys, tapes and the state DB all use it, so two spellings
of the same location can never count as two sinks (the original's ``./output`` vs
``./output/`` bug). Paths are normalised lexically (no symlink resolution), so the
canonical form does not depend on what exists on disk when it is computed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl

from blake3 import blake3

from ..errors import SinkError, SinkURIError

__all__ = [
    "FILE_KINDS",
    "SinkKind",
    "SinkMode",
    "SinkURI",
    "job_hash16",
    "output_filename",
    "parse_sink_uri",
    "valid_table_name",
]

SinkKind = Literal["parquet", "csv", "duckdb"]
FILE_KINDS: frozenset[str] = frozenset({"parquet", "csv"})
_KINDS: tuple[SinkKind, ...] = ("parquet", "csv", "duckdb")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_OUTPUT = re.compile(r"^[a-z][a-z0-9_]*$")


class SinkMode(StrEnum):
    """What a promotion does with data that other runs left in the same output (F3).

    ``append`` adds this run's data next to it; ``replace`` removes it in the same atomic
    step that adds this run's data; ``error`` refuses to add to an output that holds it.
    Data written by jobs of the *current* run never counts as "other", so a multi-job run
    with ``replace`` or ``error`` keeps all of its own jobs' outputs.
    """

    APPEND = "append"
    REPLACE = "replace"
    ERROR = "error"

    @classmethod
    def parse(cls, text: str | SinkMode) -> SinkMode:
        """``SinkMode`` from ``"append"``, ``"Replace"``, ... (case-insensitive)."""
        if isinstance(text, SinkMode):
            return text
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise SinkError(
                f"invalid sink mode {text!r}; expected append, replace or error"
            ) from None


@dataclass(frozen=True)
class SinkURI:
    """A parsed sink location; ``str()`` gives its canonical URI."""

    kind: SinkKind
    path: Path
    table: str | None = None

    @property
    def is_file_sink(self) -> bool:
        """True for parquet/csv (a directory of files), False for a DuckDB database file."""
        return self.kind in FILE_KINDS

    @property
    def extension(self) -> str:
        """File extension of the outputs staged for this sink (DuckDB stages Parquet)."""
        return "csv" if self.kind == "csv" else "parquet"

    def table_for(self, output: str, table: str | None = None) -> str:
        """Table an output lands in: the plugin's ``table=``, else ``?table=``, else its name."""
        return table or self.table or output

    def __str__(self) -> str:
        # path is absolute, so this is kind:///abs/path — three slashes, one spelling.
        text = f"{self.kind}://{self.path.as_posix()}"
        return f"{text}?table={self.table}" if self.table else text


def valid_table_name(name: str) -> bool:
    """True for a plain SQL identifier (letters, digits, ``_``; at most 63 characters)."""
    return bool(_TABLE.match(name))


def parse_sink_uri(uri: str | SinkURI, *, base: str | os.PathLike[str] | None = None) -> SinkURI:
    """Parse ``parquet://DIR``, ``csv://DIR`` or ``duckdb://FILE[?table=T]``.

    Relative paths are resolved against ``base`` (default: the current directory) and ``~``
    is expanded. Raises :class:`SinkURIError` with one line naming the URI and the problem.
    """
    if isinstance(uri, SinkURI):
        return uri
    if not isinstance(uri, str):
        raise SinkURIError(f"sink URI must be a string, got {type(uri).__name__}")
    # A relative path means something else after a chdir or with another base, so both go
    # into the cache key; "~" (whose meaning is $HOME's) is not cached at all.
    base_text = None if base is None else os.fspath(base)
    if "~" in uri or (base_text is not None and "~" in base_text):
        return _parse_cached.__wrapped__(uri, base_text, working_dir())
    return _parse_cached(uri, base_text, working_dir())


def working_dir() -> str:
    """The current directory, or "" when it was removed (only a relative path needs it)."""
    try:
        return os.getcwd()
    except OSError:
        return ""


@lru_cache(maxsize=1024)
def _parse_cached(uri: str, base: str | None, cwd: str) -> SinkURI:
    """:func:`parse_sink_uri`, once per spelling: a committer parses the same canonical URI
    for every job it promotes (issue 18; a SinkURI is immutable, so sharing one is safe)."""
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise SinkURIError(
            f"sink URI {uri!r} has no '://'; expected e.g. parquet://DIR, csv://DIR or "
            "duckdb://FILE"
        )
    kind = scheme.strip().lower()
    if kind not in _KINDS:
        raise SinkURIError(
            f"sink URI {uri!r}: unknown scheme {scheme!r}; expected parquet, csv or duckdb"
        )
    raw_path, _, query = rest.partition("?")
    if not raw_path.strip():
        raise SinkURIError(f"sink URI {uri!r}: empty path")
    table = _parse_query(uri, kind, query)
    path = Path(raw_path).expanduser()
    if not path.is_absolute():
        path = Path(base).expanduser() / path if base is not None else Path(cwd or Path.cwd()) / path
    path = Path(os.path.normpath(os.path.abspath(path)))
    if kind == "duckdb" and raw_path.endswith("/"):
        raise SinkURIError(
            f"sink URI {uri!r}: a duckdb sink names a database file, not a directory"
        )
    return SinkURI(kind, path, table)


def _parse_query(uri: str, kind: str, query: str) -> str | None:
    if not query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SinkURIError(f"sink URI {uri!r}: malformed query {query!r}") from None
    table: str | None = None
    for key, value in pairs:
        if key != "table" or kind != "duckdb":
            hint = "only duckdb sinks take ?table=" if key == "table" else "known keys: table"
            raise SinkURIError(f"sink URI {uri!r}: unknown query key {key!r} ({hint})")
        if table is not None:
            raise SinkURIError(f"sink URI {uri!r}: 'table' given more than once")
        if not valid_table_name(value):
            raise SinkURIError(
                f"sink URI {uri!r}: bad table name {value!r} (letters, digits and _, "
                "not starting with a digit, at most 63 characters)"
            )
        table = value
    return table


@lru_cache(maxsize=65536)
def job_hash16(job_id: str) -> str:
    """First 16 hex chars of blake3(job_id): the per-job part of output file names.

    Always blake3 (never a fallback), so file names stay stable across installs; cached
    because ``error``/``replace`` promotions hash every job id of the run.
    """
    return blake3(job_id.encode("utf-8")).hexdigest()[:16]


def output_filename(output: str, job_id: str, ext: str) -> str:
    """``<output>_<16 hex of blake3(job_id)>.<ext>`` — unique per (output, job) (F0)."""
    if not _OUTPUT.match(output):
        raise SinkError(f"invalid output name {output!r}: expected [a-z][a-z0-9_]*")
    return f"{output}_{job_hash16(job_id)}.{ext.lstrip('.')}"

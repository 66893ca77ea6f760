"""Compaction: merge the small promoted Parquet files of an output into files of about
``target_size``, without a reader of the output ever seeing a row twice or missing one.

One merge group (the small files ``S`` of one output, packed up to ``target_size``) goes::

    1. merge    S -> <sinkdir>/.<M>.cf-compact-tmp, fsync (a dot-file: no glob matches it)
    2. journal  <sinkdir>/.cf-compact-<id>.json, state "merged": M, S (fsynced)
    3. swap     under the directory's EXCLUSIVE reader lock (<sinkdir>/.cf-compact.lock):
                check every file of S is still there, link(tmp, M), fsync dir,
                unlink every file of S, fsync dir
    4. done     journal and tmp removed

``M`` is ``<output>_<16 hex>.parquet`` like any promoted file (the hash of a compaction id),
so the catalog's glob picks it up; ``M`` keeps every column of ``S`` (lineage included; the
schemas are unified as the catalog's ``union_by_name`` would, missing columns become nulls).

Readers: a glob over a directory is not atomic against several links and unlinks, so
readers that must be exact (the notebook's catalog, :func:`read_lock`) hold the *shared*
lock while they list and read the directory: a swap happens entirely between two queries.
What a reader holding the lock can find, and what it reads:

* no journal, or a journal whose ``M`` does not exist yet: the files as they are (S, or
  M after a finished swap) — each row once;
* a journal whose ``M`` exists (a compaction died inside its swap, after the link): ``M``
  plus what is left of ``S`` — :func:`hidden_files` names the rest of ``S`` so the reader
  skips it. Each row once, until the next compaction of the directory rolls it forward.

A crash before step 2 leaves an orphan tmp (invisible; removed by the next compaction); after
step 2 and before the link, the next compaction rolls forward (the tmp is complete and
durable) if every file of ``S`` is still there, else drops the tmp; after the link it rolls
forward. Only one compaction runs per directory at a time (``.cf-compact.run.lock``).

Promotions: append-mode promotions only add files with new names, and ``S`` is fixed when
compaction starts, so files that appear during it are never touched. A replace-mode
promotion deletes other runs' files: the sentinel runs every swap on its committer thread,
between two promotions (see ``swap_with`` in :func:`compact`); without a sentinel, do not
compact while a ``replace`` run writes the same output.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CompactionBusyError, CompactionError, CompactionSizeError, SinkURIError
from ._fs import fsync_dir, fsync_file, read_json, write_json_atomic
from .uri import SinkURI, output_filename, parse_sink_uri

__all__ = ["DEFAULT_TARGET_SIZE", "CompactionResult", "MergeGroup", "OutputCompaction",
           "check_compactable", "compact", "hidden_files", "parse_size", "read_lock",
           "recover_compactions"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_SIZE = 128 * 1024 * 1024
LOCK_NAME = ".cf-compact.lock"
RUN_LOCK_NAME = ".cf-compact.run.lock"
_JOURNAL = re.compile(r"^\.cf-compact-([0-9a-f]{32})\.json$")
_TMP_SUFFIX = ".cf-compact-tmp"
_FILE = re.compile(r"^([a-z][a-z0-9_]*)_[0-9a-f]{16}\.parquet$")
_OUTPUT = re.compile(r"^[a-z][a-z0-9_]*$")
#: Rows per row group of a merged file (DuckDB's own default row group size).
ROW_GROUP_ROWS = 122_880
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

T = TypeVar("T")


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


@dataclass
class OutputCompaction:
    """What compaction did to one output."""

    output: str
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    #: merged file -> the files it replaced (names inside the sink directory).
    merged: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "files_before": self.files_before,
                "files_after": self.files_after, "rows": self.rows,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "merged": {k: list(v) for k, v in self.merged.items()}}


@dataclass
class CompactionResult:
    """What :func:`compact` did to a sink: per output, files and bytes before and after."""

    sink: str
    target_size: int
    outputs: list[OutputCompaction] = field(default_factory=list)

    @property
    def files_before(self) -> int:
        return sum(o.files_before for o in self.outputs)

    @property
    def files_after(self) -> int:
        return sum(o.files_after for o in self.outputs)

    @property
    def rows(self) -> int:
        """Rows moved into merged files."""
        return sum(o.rows for o in self.outputs)

    @property
    def bytes_before(self) -> int:
        return sum(o.bytes_before for o in self.outputs)

    @property
    def bytes_after(self) -> int:
        return sum(o.bytes_after for o in self.outputs)

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> CompactionResult:
        """From a ``Compacted`` reply of the sentinel (or the CLI's equivalent dict)."""
        keys = ("output", "files_before", "files_after", "rows", "bytes_before", "bytes_after")
        outs = [OutputCompaction(**{k: o[k] for k in keys}) for o in reply.get("outputs") or []]
        return cls(str(reply["sink"]), int(reply["target_size"]), outs)

    def uri_moves(self) -> dict[str, str]:
        """``file://`` URI of every replaced file -> that of the file now holding its rows."""
        base = parse_sink_uri(self.sink).path
        return {f"file://{base / old}": f"file://{base / new}"
                for o in self.outputs for new, olds in o.merged.items() for old in olds}

    def to_dict(self) -> dict[str, Any]:
        return {"sink": self.sink, "target_size": self.target_size,
                "files_before": self.files_before, "files_after": self.files_after,
                "rows": self.rows, "outputs": [o.to_dict() for o in self.outputs]}


# -- locks ------------------------------------------------------------------------------
def _flock(path: Path, mode: int, timeout: float, what: str,
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
                fds.append(_flock(d / LOCK_NAME, fcntl.LOCK_SH, timeout,
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


# -- planning ---------------------------------------------------------------------------
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


# -- merge ------------------------------------------------------------------------------
def _unified_schema(output: str, sources: list[Path]) -> pa.Schema:
    schemas = [pq.read_schema(p) for p in sources]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompactionError(f"the files of output {output!r} have columns of types that "
                              f"cannot be merged ({first}); nothing of it was changed") from exc


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def merge(group: MergeGroup) -> dict[str, Any]:
    """Steps 1-2: write the merged tmp file and its journal (both durable); the journal."""
    directory = group.sources[0].parent
    cid = uuid.uuid4().hex
    dst = output_filename(group.output, f"compaction:{cid}", "parquet")
    tmp = directory / f".{dst}{_TMP_SUFFIX}"
    schema = _unified_schema(group.output, group.sources)
    rows = 0
    buffered: list[pa.Table] = []
    pending = 0
    try:
        with pq.ParquetWriter(str(tmp), schema, compression="snappy") as writer:
            for src in group.sources:
                t = _conform(pq.read_table(src), schema)
                rows += t.num_rows
                buffered.append(t)
                pending += t.num_rows
                if pending >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP_ROWS)
                    buffered, pending = [], 0
            if buffered:
                writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP_ROWS)
        fsync_file(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    journal = {"id": cid, "output": group.output, "state": "merged", "tmp": tmp.name,
               "dst": dst, "sources": [p.name for p in group.sources], "rows": rows,
               "bytes_before": group.bytes, "bytes_after": tmp.stat().st_size}
    write_json_atomic(directory / f".cf-compact-{cid}.json", journal)
    return journal


# -- swap -------------------------------------------------------------------------------
def swap(directory: Path, journal: dict[str, Any], *, lock_timeout: float = 30.0) -> bool:
    """Step 3-4 for one journal: True if the merged file replaced its sources, False if it
    was dropped (a source vanished: a replace-mode promotion removed it meanwhile).
    :class:`CompactionBusyError` if readers hold the directory for ``lock_timeout``."""
    fd = _flock(directory / LOCK_NAME, fcntl.LOCK_EX, lock_timeout,
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
        _swap_retrying(directory, j, swap_with or _direct, lock_timeout)
        done.append(m.group(1))
    for name in os.listdir(directory):
        orphan = name.startswith(".") and name.endswith(_TMP_SUFFIX) and name not in named
        unpublished = name.startswith(".cf-compact-") and name.endswith(".json.tmp")
        if orphan or unpublished:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
    return done


def _leftovers(directory: Path) -> bool:
    """Whether an interrupted compaction left anything in ``directory``."""
    return any(n.startswith(".cf-compact-") or n.endswith(_TMP_SUFFIX)
               for n in os.listdir(directory))


def _direct(fn: Callable[[], T]) -> T:
    return fn()


def _swap_retrying(directory: Path, j: dict[str, Any],
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


def compact(sink: str | SinkURI, output: str | None = None, *,
            target_size: int | str = DEFAULT_TARGET_SIZE,
            swap_with: Callable[[Callable[[], bool]], bool] = _direct,
            lock_timeout: float = 30.0) -> CompactionResult:
    """Merge the small files of ``output`` (default: every output) of a ``parquet://`` sink.

    ``swap_with(fn)`` runs each swap (the sentinel passes its committer, so swaps and
    promotions take turns); merging happens in the calling thread. Raises
    :class:`~casparian_nb.errors.CompactionError` when another compaction of the directory
    runs or readers hold it too long, ``SinkURIError`` for a sink that is not Parquet.
    """
    s, size = check_compactable(sink, output, target_size)
    result = CompactionResult(str(s), size)
    if not s.path.is_dir() or not (_leftovers(s.path) or plan(s.path, output, size)):
        return result  # nothing to do: leave no lock file behind in a directory
    run_fd = _flock(s.path / RUN_LOCK_NAME, fcntl.LOCK_EX, 0.0,
                    f"a compaction of {s.path} is already running")
    try:
        recover_compactions(s.path, lock_timeout=lock_timeout, swap_with=swap_with)
        by_output: dict[str, OutputCompaction] = {}
        for group in plan(s.path, output, size):
            try:
                j = merge(group)
            except FileNotFoundError as exc:  # a replace-mode promotion removed a source
                log.warning("compaction of %s: %s; group skipped", group.output, exc)
                continue
            if not _swap_retrying(s.path, j, swap_with, lock_timeout):
                log.warning("compaction of %s: sources changed meanwhile, group skipped",
                            group.output)
                continue
            oc = by_output.setdefault(group.output, OutputCompaction(group.output, 0, 0, 0, 0, 0))
            oc.files_before += len(j["sources"])
            oc.files_after += 1
            oc.rows += int(j["rows"])
            oc.bytes_before += int(j["bytes_before"])
            oc.bytes_after += int(j["bytes_after"])
            oc.merged[j["dst"]] = list(j["sources"])
        result.outputs = [by_output[k] for k in sorted(by_output)]
    finally:
        os.close(run_fd)
    return result

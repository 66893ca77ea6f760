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
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CompactionError
from ._compaction_plan import MergeGroup, check_compactable, parse_size, plan
from ._compaction_swap import LOCK_NAME as LOCK_NAME
from ._compaction_swap import (
    RUN_LOCK_NAME,
    TMP_SUFFIX,
    direct,
    flock,
    hidden_files,
    leftovers,
    read_lock,
    recover_compactions,
    swap_retrying,
)
from ._compaction_swap import swap as swap
from ._fs import fsync_file, write_json_atomic
from .uri import SinkURI, output_filename, parse_sink_uri

# The plan is in ._compaction_plan, the swap and its locks in ._compaction_swap; what this
# module offered before the split (plan, swap, LOCK_NAME, ...) is still importable here.
__all__ = ["DEFAULT_TARGET_SIZE", "CompactionResult", "MergeGroup", "OutputCompaction",
           "check_compactable", "compact", "hidden_files", "parse_size", "read_lock",
           "recover_compactions"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_SIZE = 128 * 1024 * 1024
#: Rows per row group of a merged file (DuckDB's own default row group size).
ROW_GROUP_ROWS = 122_880


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
    tmp = directory / f".{dst}{TMP_SUFFIX}"
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



def compact(sink: str | SinkURI, output: str | None = None, *,
            target_size: int | str = DEFAULT_TARGET_SIZE,
            swap_with: Callable[[Callable[[], bool]], bool] = direct,
            lock_timeout: float = 30.0) -> CompactionResult:
    """Merge the small files of ``output`` (default: every output) of a ``parquet://`` sink.

    ``swap_with(fn)`` runs each swap (the sentinel passes its committer, so swaps and
    promotions take turns); merging happens in the calling thread. Raises
    :class:`~casparian_nb.errors.CompactionError` when another compaction of the directory
    runs or readers hold it too long, ``SinkURIError`` for a sink that is not Parquet.
    """
    s, size = check_compactable(sink, output, target_size)
    result = CompactionResult(str(s), size)
    if not s.path.is_dir() or not (leftovers(s.path) or plan(s.path, output, size)):
        return result  # nothing to do: leave no lock file behind in a directory
    run_fd = flock(s.path / RUN_LOCK_NAME, fcntl.LOCK_EX, 0.0,
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
            if not swap_retrying(s.path, j, swap_with, lock_timeout):
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

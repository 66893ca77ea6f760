"""Staging: a job's outputs are written under ``<staging_root>/<job dir>/`` and nowhere else.

The plugin host streams every batch of every output into one open writer per output
(Parquet for parquet and duckdb sinks — DuckDB loads the staged Parquet at promotion — and
CSV for csv sinks). Killing the host at any point leaves debris only in its own staging
directory; nothing reaches a sink until :func:`~casparian_nb.sinks.promote` runs in the
committer. ``close()`` returns a :class:`StagedJob`, plain JSON that travels to the committer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import OutputNameError, SinkError
from ._fs import fsync_dir, fsync_file, fsync_files, remove_tree, sync_paths
from ._schema import conform
from ._writer import FLUSH_ROWS, OutputWriter, schema_facts
from .routing import SinkRouting
from .uri import SinkURI, job_hash16, parse_sink_uri, valid_table_name

__all__ = ["ATTEMPT_PREFIX", "FLUSH_ROWS", "JOURNAL", "Artifact", "JobStager", "StagedJob",
           "StagedOutput", "attempt_root", "discard", "job_dirname", "make_durable",
           "sync_staged"]

#: A worker stages attempt N of every job under ``<staging>/attempt-N/`` (:func:`attempt_root`).
ATTEMPT_PREFIX = "attempt-"
#: Promotion journal inside a job's staging dir; its presence means "promotion under way".
JOURNAL = "PROMOTING.json"
_OUTPUT = re.compile(r"^[a-z][a-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Artifact:
    """What a staged output became once promoted: where its rows now live.

    ``sink`` names the output's sink when the job's outputs went to several (else the job's
    one sink is its ``sink_uri``)."""

    output: str
    table: str
    rows: int
    uri: str
    sink: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"output": self.output, "table": self.table, "rows": self.rows,
                                "uri": self.uri}
        if self.sink:
            data["sink"] = self.sink
        return data


@dataclass
class StagedOutput:
    """One staged output file: which output/table it feeds, its rows and its schema.

    ``sink`` is the output's own canonical sink URI when the job routes outputs to several
    sinks; "" when it goes to the job's one sink (``StagedJob.sink``).
    """

    output: str
    table: str
    rows: int
    path: str
    schema: list[list[str]] = field(default_factory=list)
    sink: str = ""

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies the schema, ~1 ms a job (issue 18).
        data = {"output": self.output, "table": self.table, "rows": self.rows,
                "path": self.path, "schema": [list(pair) for pair in self.schema]}
        if self.sink:
            data["sink"] = self.sink
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagedOutput:
        try:
            return cls(
                output=str(data["output"]),
                table=str(data["table"]),
                rows=int(data["rows"]),
                path=str(data["path"]),
                schema=[[str(n), str(t)] for n, t in data.get("schema", [])],
                sink=str(data.get("sink") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SinkError(f"malformed staged output {data!r}: {exc}") from None


@dataclass
class StagedJob:
    """What a finished plugin host hands to the committer (JSON-safe via ``to_dict``).

    ``sink`` is the job's routing as text (:class:`~.routing.SinkRouting`: one URI, or the
    JSON of a mapping); each output's own sink is :meth:`sink_of`. ``members`` are the jobs
    whose rows a batch's staging holds (its ``job_id`` is then the batch's); empty for a
    job's own staging.
    """

    job_id: str
    sink: str
    staging_dir: str
    outputs: list[StagedOutput] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    @property
    def row_job_ids(self) -> list[str]:
        """The ``_cf_job_id`` values its rows carry."""
        return self.members or [self.job_id]

    @property
    def rows(self) -> dict[str, int]:
        """Rows staged per output name."""
        return {o.output: o.rows for o in self.outputs}

    def sink_of(self, output: StagedOutput) -> SinkURI:
        """The sink ``output`` promotes into."""
        return parse_sink_uri(output.sink or self.sink)

    def by_sink(self) -> dict[SinkURI, list[StagedOutput]]:
        """The staged outputs grouped by their sink, in order of first appearance."""
        if not any(o.sink for o in self.outputs):  # one sink: parse it once
            return {parse_sink_uri(self.sink): list(self.outputs)} if self.outputs else {}
        groups: dict[SinkURI, list[StagedOutput]] = {}
        for o in self.outputs:
            groups.setdefault(self.sink_of(o), []).append(o)
        return groups

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "sink": self.sink,
            "staging_dir": self.staging_dir,
            "outputs": [o.to_dict() for o in self.outputs],
        }
        if self.members:
            data["members"] = list(self.members)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagedJob:
        try:
            return cls(
                job_id=str(data["job_id"]),
                sink=str(data["sink"]),
                staging_dir=str(data["staging_dir"]),
                outputs=[StagedOutput.from_dict(o) for o in data.get("outputs", [])],
                members=[str(m) for m in data.get("members") or []],
            )
        except (KeyError, TypeError) as exc:
            raise SinkError(f"malformed staged job: {exc}") from None


def job_dirname(job_id: str) -> str:
    """A filesystem-safe, collision-free directory name for a job id."""
    return f"{_UNSAFE.sub('_', job_id)[:48]}-{job_hash16(job_id)}"


def attempt_root(staging: str | Path, attempt: int) -> Path:
    """Where a worker stages attempt ``attempt`` of its jobs: ``<staging>/attempt-N``.

    Each attempt has its own directory, so a straggler from a lost attempt can never touch
    the files of the attempt that replaced it; the job's own directory inside it is
    :func:`job_dirname`. The sentinel uses the same name to remove a lost attempt's staging.
    """
    return Path(staging) / f"{ATTEMPT_PREFIX}{attempt}"


class JobStager:
    """Streams one job's output batches into its private staging directory.

    ``write`` may be called many times per output (generator plugins); the first batch of an
    output fixes its schema and later batches are cast to it when that is lossless.
    """

    def __init__(self, staging_root: str | Path, job_id: str,
                 sink: SinkRouting | SinkURI | str) -> None:
        self.job_id = job_id
        self.routing = SinkRouting.parse(sink)
        #: The job's one sink, or None when its outputs are routed to several.
        self.sink = self.routing.single
        self.staging_dir = Path(staging_root).absolute() / job_dirname(job_id)
        self._dir = str(self.staging_dir)
        self._make_dir()
        self._writers: dict[str, OutputWriter] = {}
        self._closed: StagedJob | None = None

    def _make_dir(self) -> None:
        """Create the job's staging directory, empty. The usual case — no directory yet —
        is one ``mkdir``; only an existing one is looked into."""
        try:
            os.mkdir(self._dir, 0o700)
            return
        except FileNotFoundError:  # the attempt's directory is not there yet
            os.makedirs(os.path.dirname(self._dir), exist_ok=True)
        except FileExistsError:
            if os.path.lexists(os.path.join(self._dir, JOURNAL)):
                raise SinkError(
                    f"job {self.job_id!r} has an unfinished promotion in {self._dir}; "
                    "run casparian_nb.sinks.recover() before staging it again"
                ) from None
            # Leftovers of an earlier attempt of this job (killed host) are stale: start clean.
            remove_tree(self._dir)
        os.mkdir(self._dir, 0o700)

    def write(self, output: str, table_name: str, batch: pa.Table | pa.RecordBatch) -> None:
        """Append ``batch`` to ``output`` (destined for ``table_name`` in a DuckDB sink)."""
        if self._closed is not None:
            raise SinkError(f"job {self.job_id!r}: staging is closed; cannot write {output!r}")
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        writer = self._writers.get(output)
        if writer is None:
            writer = self._open(output, table_name, batch.schema)
        elif writer.table != table_name:
            raise SinkError(
                f"output {output!r}: batches name different tables "
                f"({writer.table!r} and {table_name!r})"
            )
        writer.write(conform(output, writer.schema, batch))

    def _open(self, output: str, table_name: str, schema: pa.Schema) -> OutputWriter:
        if not _OUTPUT.match(output):
            raise OutputNameError(f"invalid output name {output!r}: expected [a-z][a-z0-9_]*")
        if not valid_table_name(table_name):
            raise SinkError(f"output {output!r}: invalid table name {table_name!r}")
        sink = self.routing.sink_for(output)  # an unrouted output fails the job here
        if sink.kind == "duckdb":
            for other in self._writers.values():
                if (other.table == table_name and other.sink is not None
                        and other.sink.kind == "duckdb" and other.sink.path == sink.path):
                    raise SinkError(
                        f"outputs {other.output!r} and {output!r} both target table "
                        f"{table_name!r} in {sink}; give one of them another table="
                    )
        # pandas' per-frame metadata (index ranges, ...) describes one batch, not the file.
        metadata = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"}
        schema = schema.with_metadata(metadata or None)
        path = f"{self._dir}{os.sep}{output}.{sink.extension}"
        try:
            writer = OutputWriter(output, table_name, path, sink.kind, schema)
        except (pa.ArrowException, OSError) as exc:
            raise SinkError(f"output {output!r}: cannot stage to {path}: {exc}") from exc
        writer.sink = sink
        self._writers[output] = writer
        return writer

    def close(self, *, sync: bool = True) -> StagedJob:
        """Finish every staged file, make it durable and describe the result.

        ``sync=False`` leaves durability to whoever promotes it, who must call
        :func:`sync_staged` before its journal (the runner does, from threads that overlap
        the fsyncs, so a plugin host goes on to its next file instead of waiting on the disk).
        """
        if self._closed is not None:
            return self._closed
        outputs = []
        for w in self._writers.values():
            w.close()
            if sync:
                fsync_file(w.path)
            outputs.append(
                StagedOutput(
                    output=w.output,
                    table=w.table,
                    rows=w.rows,
                    path=w.path,
                    schema=[list(pair) for pair in schema_facts(w.schema).described],
                    sink="" if self.sink is not None else str(w.sink),
                )
            )
        if sync:
            fsync_dir(self.staging_dir)
        self._closed = StagedJob(self.job_id, str(self.routing), self._dir, outputs)
        return self._closed

    def discard(self) -> None:
        """Drop everything staged for this job (cancel, failure, kill of the plugin)."""
        for w in self._writers.values():
            w.abandon()
        self._writers.clear()
        remove_tree(self.staging_dir)

    def __enter__(self) -> JobStager:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()


def make_durable(*staged: StagedJob) -> None:
    """What ``close(sync=True)`` does for one job, for several jobs staged with
    ``close(sync=False)`` at once: their files and directory entries reach the disk (on
    Linux one ``syncfs`` per file system, however many jobs)."""
    files = [out.path for job in staged for out in job.outputs]
    if files:
        sync_paths(files, {job.staging_dir for job in staged if job.outputs})


def sync_staged(*staged: StagedJob, journal: str | Path | None = None) -> None:
    """Make the files of jobs staged with ``close(sync=False)`` durable, for a promotion to
    a file sink (fsync reaches the data whichever process wrote it); several jobs at once
    cost about one (:func:`fsync_files`). Without ``journal`` their directory entries
    become durable with the promotion journal, which is then written and fsynced in the
    same directory before anything moves; with it (a journal already written, not yet
    durable) the files, the jobs' directories and the journal become durable together."""
    files = [out.path for job in staged for out in job.outputs]
    if journal is None:
        fsync_files(files)
        return
    sync_paths([*files, journal], {job.staging_dir for job in staged})


def discard(staged_or_dir: StagedJob | JobStager | str | Path) -> None:
    """Remove a job's staging directory, unless a promotion of it is under way."""
    if isinstance(staged_or_dir, JobStager):
        staged_or_dir.discard()
        return
    path = Path(
        staged_or_dir.staging_dir if isinstance(staged_or_dir, StagedJob) else staged_or_dir
    )
    if (path / JOURNAL).exists():
        raise SinkError(
            f"{path} is being promoted (journal present); run casparian_nb.sinks.recover() "
            "instead of discarding it"
        )
    remove_tree(path)

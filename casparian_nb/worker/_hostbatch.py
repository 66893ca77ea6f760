"""A plugin host's side of a :class:`~casparian_nb.protocol.HostBatch`: several small jobs whose
outputs share one staging directory and one file per output.

Per small file, what a job costs beyond its parse is mostly fixed: a staging directory, a
file per output (created, Parquet-encoded with its own footer, later moved and synced) and a
promotion. A batch pays those once for all its members (issue 18), and its files hold one
row group of many members' rows instead of many tiny files for DuckDB to open.

Each member's batches are checked and split (:func:`~casparian_nb.lineage.split_rows`) and
held in a :class:`BatchMember` until its parse, contracts and quarantine limit have all
passed; only then does :meth:`BatchStaging.absorb` take them, so a member that fails
half-way leaves no row behind. When the batch closes, each output's rows of all members are
stamped and split once (:func:`~casparian_nb.lineage.stamp_rows`) and written. A member whose
tables do not fit the shared files' schemas (a plugin without a manifest whose column types
vary by file) is refused, and the host stages it alone.
"""

from __future__ import annotations

import pyarrow as pa

from .. import sinks
from ..errors import SinkError
from ..lineage import Lineage, RowSplit, quarantine_name, stamp_rows
from ..sinks._schema import conform

__all__ = ["BatchMember", "BatchStaging"]


class BatchMember:
    """One member's output batches, checked and split but not stamped, in memory until the
    member has succeeded (:func:`casparian_nb.lineage.split_rows`)."""

    def __init__(self) -> None:
        #: Set by the host once it has the member's lineage.
        self.lineage: Lineage | None = None
        #: output -> (table name, [(split batch, its row offset in the output)])
        self.outputs: dict[str, tuple[str, list[tuple[RowSplit, int]]]] = {}

    def add(self, output: str, table_name: str, split: RowSplit, row_offset: int) -> None:
        known = self.outputs.get(output)
        if known is None:
            self.outputs[output] = (table_name, [(split, row_offset)])
        elif known[0] != table_name:
            raise SinkError(f"output {output!r}: batches name different tables "
                            f"({known[0]!r} and {table_name!r})")
        else:
            known[1].append((split, row_offset))

    @property
    def rows(self) -> dict[str, int]:
        """Rows per staged output: valid ones, and bad ones under the quarantine output."""
        rows: dict[str, int] = {}
        for name, (_, splits) in self.outputs.items():
            bad = sum(s.bad_rows for s, _ in splits)
            rows[name] = sum(s.data.num_rows for s, _ in splits) - bad
            if bad:
                rows[quarantine_name(name)] = bad
        return rows

    def stage_alone(self, stager: sinks.JobStager) -> None:
        """Stamp and write this member's rows into a stager of its own."""
        assert self.lineage is not None
        for output, (table_name, splits) in self.outputs.items():
            for split, offset in splits:
                valid, bad = stamp_rows([(split, self.lineage, offset)])
                stager.write(output, table_name, valid)
                if bad is not None and bad.num_rows:
                    stager.write(quarantine_name(output), quarantine_name(table_name), bad)


class BatchStaging:
    """The shared staging of one batch: its members' rows, stamped and split once per
    output when the batch closes, into a :class:`~casparian_nb.sinks.JobStager` whose job
    id is the batch's."""

    def __init__(self, staging_root: str, batch_id: str, sink: str) -> None:
        self._root, self.batch_id, self._sink = staging_root, batch_id, sink
        self._stager: sinks.JobStager | None = None
        #: output -> (table name, data schema, [(split, lineage, row offset)])
        self._outputs: dict[str, tuple[str, pa.Schema, list[tuple[RowSplit, Lineage, int]]]] = {}
        self.shares: dict[str, dict[str, int]] = {}

    def absorb(self, job_id: str, member: BatchMember) -> bool:
        """Take ``member``'s rows; False (nothing taken) when they do not fit the batch's
        (another schema, or another table for an output), so it must be staged alone."""
        assert member.lineage is not None
        fitted: list[tuple[str, str, pa.Schema, RowSplit, int]] = []
        try:
            for output, (table_name, splits) in member.outputs.items():
                known = self._outputs.get(output)
                for split, offset in splits:
                    if known is None:
                        known = (table_name, split.data.schema, [])
                    elif known[0] != table_name:
                        return False
                    else:
                        split = split._replace(data=conform(output, known[1], split.data))
                    fitted.append((output, table_name, known[1], split, offset))
        except SinkError:
            return False
        for output, table_name, schema, split, offset in fitted:
            self._outputs.setdefault(output, (table_name, schema, []))[2].append(
                (split, member.lineage, offset))
        self.shares[job_id] = member.rows
        return True

    def close(self, *, sync: bool) -> sinks.StagedJob | None:
        """Stamp and write every output, finish the files (``sync``: as
        ``HostJob.sync_staging`` says); None when no member brought rows."""
        if not self._outputs:
            return None
        self._stager = sinks.JobStager(self._root, self.batch_id, self._sink)
        for output, (table_name, _, parts) in self._outputs.items():
            valid, bad = stamp_rows(parts)
            self._stager.write(output, table_name, valid)
            if bad is not None and bad.num_rows:
                self._stager.write(quarantine_name(output), quarantine_name(table_name), bad)
        self._outputs.clear()
        staged = self._stager.close(sync=sync)
        staged.members = list(self.shares)
        return staged

    def discard(self) -> None:
        self._outputs.clear()
        if self._stager is not None:
            self._stager.discard()

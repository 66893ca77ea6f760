"""The plugin host's preview mode (:func:`casparian_nb.preview`): in place of the stager.

A preview runs the job exactly as the host runs any job — same load, lineage and
quarantine split — but :class:`PreviewStager` keeps only the first ``rows`` rows of each
output (and of its would-be quarantine) and counts the rest: nothing is written anywhere.
"""

from __future__ import annotations

import base64
import time

import pyarrow as pa

from ..protocol import PreviewData, PreviewOutput, Receipt, ReceiptStatus

__all__ = ["PreviewStager", "preview_receipt"]

_QUARANTINE = "_quarantine"


def _ipc(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


class _Kept:
    """The first ``limit`` rows of a stream of tables, and how many rows it had."""

    def __init__(self, table_name: str, limit: int) -> None:
        self.table_name, self.limit = table_name, limit
        self.rows = 0
        self.parts: list[pa.Table] = []
        self.schema: pa.Schema | None = None

    def add(self, table: pa.Table) -> None:
        room = self.limit - sum(p.num_rows for p in self.parts)
        if self.schema is None or (room > 0 and table.num_rows):
            self.parts.append(table.slice(0, max(room, 0)))
        self.schema = self.schema or table.schema
        self.rows += table.num_rows

    def ipc(self) -> str:
        head = pa.concat_tables(self.parts, promote_options="permissive")
        return _ipc(head.slice(0, self.limit))


class PreviewStager:
    """Stands in for :class:`~casparian_nb.sinks.JobStager`: keeps heads, writes nothing."""

    def __init__(self, rows: int) -> None:
        self.limit = max(0, int(rows))
        self.valid: dict[str, _Kept] = {}
        self.bad: dict[str, _Kept] = {}

    def write(self, output: str, table_name: str, table: pa.Table) -> None:
        base = output.removesuffix(_QUARANTINE)
        # The host writes an output's valid rows first, then its quarantine as
        # "<output>_quarantine": only then is a name with that suffix a quarantine.
        into = self.bad if output.endswith(_QUARANTINE) and base in self.valid else self.valid
        key = base if into is self.bad else output
        into.setdefault(key, _Kept(table_name, self.limit)).add(table)

    def discard(self) -> None:
        """Nothing was staged: nothing to remove."""

    def result(self) -> PreviewData:
        outputs = []
        for name, kept in self.valid.items():
            bad = self.bad.get(name)
            outputs.append(PreviewOutput(
                name=name, table=kept.table_name, rows=kept.rows, head=kept.ipc(),
                quarantine_rows=bad.rows if bad else 0, quarantine=bad.ipc() if bad else None))
        return PreviewData(outputs=outputs)


def preview_receipt(job_id: str, stager: object, source_hash: str | None, quarantined: int,
                    started: float) -> Receipt:  # fmt: skip
    """The SUCCESS receipt of a preview run (``stager`` None: the plugin returned nothing)."""
    data = stager.result() if isinstance(stager, PreviewStager) else PreviewData(outputs=[])
    return Receipt(job_id=job_id, status=ReceiptStatus.SUCCESS, source_hash=source_hash,
                   rows={o.name: o.rows for o in data.outputs}, quarantine_rows=quarantined,
                   preview=data, duration_ms=(time.perf_counter() - started) * 1000.0)

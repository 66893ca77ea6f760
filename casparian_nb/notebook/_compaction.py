"""``ctl.compact()``'s result: what a compaction did to a sink, per output, with an HTML repr."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..sinks.compaction import CompactionResult, OutputCompaction
from ._reprs import esc, kv_table

__all__ = ["Compaction", "CompactionOutput"]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


#: One output's part of a :class:`Compaction` (``merged`` is empty in a sentinel's reply).
CompactionOutput = OutputCompaction


@dataclass
class Compaction(CompactionResult):
    """The result of :meth:`Controller.compact` (and of ``casparian compact --json``): the
    sink's :class:`~casparian_nb.sinks.CompactionResult`, with an HTML repr."""

    #: Jobs whose recorded artifacts now name a merged file.
    jobs_repointed: int = 0

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Compaction:
        """From the sentinel's ``Compacted`` reply (or the standalone CLI's equivalent)."""
        base = CompactionResult.from_reply(reply)
        return cls(base.sink, base.target_size, base.outputs,
                   int(reply.get("jobs_repointed") or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"sink": self.sink, "target_size": self.target_size,
                "files_before": self.files_before, "files_after": self.files_after,
                "rows": self.rows, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "jobs_repointed": self.jobs_repointed,
                "outputs": [{k: v for k, v in o.to_dict().items() if k != "merged"}
                            for o in self.outputs]}

    def summary(self) -> str:
        """One line: ``12 files -> 1 (2,280 rows, 18.4 KB -> 7.9 KB) in parquet:///out``."""
        if not self.outputs:
            return f"nothing to compact in {self.sink}"
        return (f"{self.files_before} files -> {self.files_after} ({self.rows:,} rows, "
                f"{_size(self.bytes_before)} -> {_size(self.bytes_after)}) in {self.sink}")

    def __repr__(self) -> str:
        lines = [f"<Compaction {self.summary()}>"]
        lines += [f"  {o.output}: {o.files_before} files -> {o.files_after}, {o.rows:,} rows"
                  for o in self.outputs]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [("sink", esc(self.sink)), ("target size", esc(_size(self.target_size))),
                ("files", f"{self.files_before} → {self.files_after}"),
                ("rows moved", f"{self.rows:,}"),
                ("bytes", f"{esc(_size(self.bytes_before))} → {esc(_size(self.bytes_after))}"),
                ("jobs repointed", str(self.jobs_repointed))]
        rows += [(f"output {o.output}", f"{o.files_before} files → {o.files_after}, "
                  f"{o.rows:,} rows") for o in self.outputs]
        if not self.outputs:
            rows.append(("", "nothing to compact: no output has two files under the target"))
        return kv_table(rows, "Compaction")

"""Schema contracts: a plugin's declared ``outputs`` manifest, enforced on every batch (F16).

A plugin that declares ``outputs`` promises the columns of each output::

    outputs = {"orders": {"columns": [
        {"name": "id", "type": "int64", "nullable": False},
        {"name": "amount", "type": "decimal(12,2)"},
        {"name": "tags", "type": "list<string>"},
        {"name": "placed", "type": "timestamp_tz(Europe/Paris)", "required": False},
    ]}}

:func:`parse_manifest` turns that literal into :class:`~casparian_nb.protocol.OutputContract`
records (pure Python: the sentinel and CLI validate a manifest without pyarrow). The plugin host
calls :func:`enforce` on each batch before lineage and staging:

* lossless differences are cast: int32 → int64, ``null``-typed all-missing columns, large
  strings, dictionary-encoded strings, second → microsecond timestamps, column order;
* row problems — a null in a non-nullable column, a value that does not cast losslessly
  ("abc" into int64, 1.5 into int64, 300 into int8) — mark those rows with
  ``_cf_row_error = "schema: <column>: <reason>"`` so they go to quarantine, never to the output;
* shape problems — a missing required column, an extra column, a type with no cast at all
  (list into int64), an undeclared output — raise :class:`~casparian_nb.errors.SchemaContractError`
  (permanent) naming the output, every offending column, expected and actual type.

Type vocabulary (the original system's, §1.3): ``null``, ``bool``/``boolean``,
``int8..int64``/``uint8..uint64``/``int``/``integer``, ``float32``, ``float64``/``float``/
``double``, ``string``/``utf8``/``text``, ``binary``/``bytes``, ``date``, ``time``,
``duration``/``interval``, ``timestamp``/``datetime`` (microseconds, naive),
``timestamp_tz`` / ``timestamp_tz(<IANA zone>)`` (default UTC), ``decimal(p,s)``,
``list<T>``, ``struct<name: T, ...>``, and the original's object forms
(``{"kind": "decimal", "precision": 12, "scale": 2}``, ``{"kind": "list", "item": ...}``, ...).
Nested fields' nullability is not checked (the cast decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import QuarantineLimitError, SchemaContractError
from ..protocol import OutputContract, QuarantinePolicy
from ._types import (
    HELPER_COLUMNS,
    arrow_schema,
    arrow_type,
    manifest_for,
    parse_manifest,
    parse_type,
    quarantine_policy,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "HELPER_COLUMNS", "JobCheck", "arrow_schema", "arrow_type", "check_output", "check_quarantine",
    "describe", "enforce",
    "manifest_for", "parse_manifest", "parse_type", "quarantine_policy",
]


def describe(arrow: pa.DataType) -> str:
    """An arrow type in the manifest's words where there are some (``--infer``)."""
    from ._check import describe_type

    return describe_type(arrow)


def enforce(contract: OutputContract, table: pa.Table) -> pa.Table:
    """Check one batch against its output's contract (see the module docstring).

    Returns the batch with the declared columns, in declared order and types, plus the helper
    columns it had; rows that break the contract carry ``_cf_row_error`` (a plugin's own
    message is kept when it set one). Raises :class:`SchemaContractError` for shape problems.
    """
    from ._check import enforce_batch

    return enforce_batch(contract, table)

def check_output(contracts: Mapping[str, OutputContract] | None, output: str,
                 table: pa.Table) -> pa.Table:
    """:func:`enforce` the contract of ``output`` if the plugin declared one. With a manifest,
    an output it does not name is a shape problem; without one (None) nothing is checked."""
    if contracts is None:
        return table
    contract = contracts.get(output)
    if contract is None:
        declared = ", ".join(sorted(contracts)) or "none"
        raise SchemaContractError(f"output {output!r} is not declared in the plugin's outputs "
                                  f"(declared: {declared}); declare it or stop producing it "
                                  "(a bare table goes to the output named by TOPIC, else name)")
    return enforce(contract, table)


def check_quarantine(policy: QuarantinePolicy | None, output: str, rows: int,
                     quarantined: int) -> None:
    """Raise :class:`QuarantineLimitError` when ``quarantined`` of an output's ``rows`` (valid
    plus quarantined) exceed ``policy``: "quarantine limit exceeded: 37% > 10% (...)"."""
    if policy is None or not quarantined:
        return
    share = 100.0 * quarantined / rows if rows else 0.0
    what = f"output {output!r}: {quarantined} of {rows} rows quarantined"
    if policy.max_pct is not None and share > policy.max_pct:
        raise QuarantineLimitError(f"quarantine limit exceeded: {round(share, 1):g}% > "
                                   f"{policy.max_pct:g}% ({what})")
    if policy.max_rows is not None and quarantined > policy.max_rows:
        raise QuarantineLimitError(f"quarantine limit exceeded: {quarantined} rows > "
                                   f"{policy.max_rows} ({what})")


class JobCheck:
    """What one job attempt's outputs are held to: their contracts, batch by batch, and the
    quarantine policy over each output's totals (the plugin host's one object for both)."""

    def __init__(self, contracts: Mapping[str, OutputContract] | None,
                 policy: QuarantinePolicy | None) -> None:
        self.contracts, self.policy = contracts, policy
        self._rows: dict[str, list[int]] = {}  # output -> [valid + quarantined, quarantined]

    def batch(self, output: str, table: pa.Table) -> pa.Table:
        """One batch, checked and cast (see :func:`check_output`)."""
        return check_output(self.contracts, output, table)

    def count(self, output: str, valid: int, quarantined: int) -> None:
        """Add a staged batch's rows; a ``max_rows`` limit fails as soon as it is passed."""
        totals = self._rows.setdefault(output, [0, 0])
        totals[0] += valid + quarantined
        totals[1] += quarantined
        if self.policy is not None and self.policy.max_rows is not None:
            check_quarantine(QuarantinePolicy(max_rows=self.policy.max_rows), output, *totals)

    def finish(self) -> None:
        """Every output's totals against the policy: raises :class:`QuarantineLimitError`."""
        for output, (rows, quarantined) in sorted(self._rows.items()):
            check_quarantine(self.policy, output, rows, quarantined)

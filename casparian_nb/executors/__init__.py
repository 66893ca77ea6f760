"""How the sentinel places jobs: ``local`` worker processes (the default) or a ``dask``
cluster. Either way the sentinel keeps the durable queue, is the only committer and promotes
outputs; an executor only runs plugin hosts and returns receipts.

:func:`processes` says what the launcher starts beside the sentinel for an executor.
"""

from __future__ import annotations

from .local import ExecutorProcess, processes

__all__ = ["ExecutorProcess", "processes"]

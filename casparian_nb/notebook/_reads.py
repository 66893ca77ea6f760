"""The read side of the controller: jobs, one job, its logs, queue stats and the queue
widget's rows from a read-only connection to the state DB, so they never block the sentinel
(F5) and keep working once it is gone; SQL over the outputs (``ctl.sql``) through the DuckDB
catalog; and ``preview``, a dry run that needs no sentinel and writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..joblogs import JobLog, read_job_log
from ..previews import Preview
from ..previews import preview as run_preview
from ._base import ControllerBase
from ._models import Job, QueueStats
from .catalog import OutputCatalog, ResultFormat, SqlParams

__all__ = ["Reads"]


class Reads(ControllerBase):
    """Reads of the state DB and the outputs; none of them needs the sentinel."""

    @property
    def catalog(self) -> OutputCatalog:
        """The DuckDB catalog behind :meth:`sql` (and ``%%cql``)."""
        if self._catalog is None:
            self._catalog = OutputCatalog(self.settings, tapes=[self.session.path])
        return self._catalog

    def _state(self) -> Any:
        """The read-only state DB reader (opened on first use)."""
        if self._reader is None:
            from ..store import StateReader

            self._reader = StateReader.open(self.settings.state_db)
        return self._reader

    def jobs(self, status: str | Sequence[str] | None = None, limit: int = 1000,
             offset: int = 0) -> pd.DataFrame:
        """Jobs newest first as a DataFrame (``status`` column upper case; times as UTC)."""
        from ..store import job_to_info

        rows = [job_to_info(j) for j in self._state().list_jobs(status, limit, offset)]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=["id", "status", "plugin_name", "input_file", "rows"])
        for col in [c for c in df.columns if c.endswith("_at")]:
            df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
        if "claimed_at" in df and "ended_at" in df:
            df["duration_s"] = (df["ended_at"] - df["claimed_at"]).dt.total_seconds()
        return df.set_index("id", drop=False).rename_axis(None)

    def job(self, job_id: int) -> Job:
        """One job with every column and its attempt history (``.attempts``); a failed
        job's ``.error`` carries the remote traceback (``job.raise_for_status()`` raises it)."""
        reader = self._state()
        row = reader.get_job(int(job_id))
        if row is None:
            raise LookupError(f"job {job_id} does not exist in {self.settings.state_db}")
        # Every attempt (status, error, worker, times), oldest first: ``job.attempts``.
        row["attempts"] = reader.attempts(int(job_id))
        return Job.from_row(row)

    def logs(self, job_id: int, attempt: int | None = None) -> JobLog:
        """What job ``job_id``'s plugin printed and logged in ``attempt`` (default: its
        latest attempt with output): stdout, stderr, ``logging`` and ``ctx.log`` lines, the
        head and tail of a long log. Renders as a ``<pre>`` block; ``.tail(n)`` for the end."""
        return read_job_log(self.settings.home, int(job_id), attempt)

    def preview(self, plugin: Any, path: str | os.PathLike[str], rows: int = 20,
                timeout: float | None = None, *, sink: str | None = None) -> Preview:
        """:func:`casparian_nb.preview` with this home's settings, recorded on the session
        tape (``Preview`` command and its response). Needs no sentinel; writes nothing."""
        shown = plugin if isinstance(plugin, str | os.PathLike) else getattr(
            plugin, "__name__", type(plugin).__name__)
        payload = {"plugin": os.fspath(shown) if not isinstance(shown, str) else shown,
                   "input": os.fspath(path), "rows": rows}
        with self.session.command("Preview", payload) as r:
            result = run_preview(plugin, path, rows, timeout, settings=self.settings, sink=sink)
            r.update(status="success" if result.ok else "failed", rows=result.row_counts,
                     quarantine_rows=sum(d.quarantine_rows for d in result.details.values()),
                     **({"error": f"{result.error.ename}: {result.error.evalue}"}
                        if result.error is not None else {}))
        return result

    def stats(self) -> QueueStats:
        """Jobs per status (plus ``cancel_requested`` and ``total``)."""
        stats = QueueStats.from_counts(self._state().queue_stats())
        return dataclasses.replace(stats, history=lambda: self.jobs(limit=1_000_000))

    def job_snapshot(self, ids: Sequence[int] | None = None,
                     limit: int = 20_000) -> list[dict[str, Any]]:
        """Job dicts for the queue widget (its columns only): the newest ``limit`` jobs, or
        these ids."""
        if ids is None:
            return self._rows.newest(limit)
        return self._rows.by_ids(ids)

    def sql(self, query: str, params: SqlParams = None, *, as_: ResultFormat = "pandas") -> Any:
        """Run SQL over the outputs plus ``jobs``, ``materializations``, ``tape_events``.

        Returns a pandas DataFrame (``as_="arrow"``: a pyarrow Table). ``params`` binds
        DuckDB parameters (``$name`` from a mapping, ``?`` from a sequence)."""
        with self.session.command("Query", {"sql": query}) as r:
            result = self.catalog.sql(query, params, as_=as_)
            r.update(rows=len(result))
        return result

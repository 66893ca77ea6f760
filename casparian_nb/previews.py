"""``cf.preview(plugin, path)`` / ``casparian preview``: a dry run of a plugin on one file.

The plugin runs exactly as a job would — in a plugin host process of its own
(:class:`~casparian_nb.worker.pool.HostPool`), under the home's trust policy, timeout and
memory limit, with lineage and the quarantine split — but the host runs in preview mode
(``HostJob.preview_rows``): it stages nothing and answers with the first ``rows`` rows of
each output, the full row counts and the rows a sink would quarantine. Its output (stdout,
stderr, ``logging``, ``ctx.log``) is captured as a job's is. Everything the run needs lives
in a temporary directory removed afterwards: nothing is written to a sink, the state DB, the
materialization log, and no file in the home (a session or CLI tape, when active,
records the command).

``plugin`` may be a plugin file (path or name under ``<home>/plugins``), an imported module,
or a function defined in a notebook cell (shipped as source: :mod:`casparian_nb._cellplugin`).
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from . import plugins
from ._cellplugin import is_source_plugin, write_plugin_source
from .config import Settings, load_settings
from .errors import CasparianError
from .joblogs import job_log_path, read_log_file
from .protocol import AbortCause, ErrorInfo, ErrorKind, HostJob, JobSpec, ReceiptStatus
from .worker.pool import HostPool

__all__ = ["Preview", "PreviewOutput", "preview", "resolve_preview_plugin"]

_JOB_ID = "preview"


@dataclass(frozen=True)
class PreviewOutput:
    """One output of a preview: its first rows, its Arrow schema and full row counts."""

    name: str
    table: str
    rows: int
    schema: pa.Schema
    head: pd.DataFrame
    quarantine_rows: int = 0
    quarantine: pd.DataFrame | None = None


@dataclass(frozen=True)
class Preview:
    """The result of :func:`preview`. ``outputs[name]`` is the first rows of each output as
    a DataFrame; ``details[name]`` adds the schema, row counts and quarantined rows."""

    plugin_name: str
    input_file: str
    rows_shown: int
    elapsed_s: float
    details: dict[str, PreviewOutput] = field(default_factory=dict)
    log: str = ""
    log_bytes: int = 0
    log_truncated: bool = False
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        """True when the plugin ran to the end without raising."""
        return self.error is None

    @property
    def outputs(self) -> dict[str, pd.DataFrame]:
        return {name: d.head for name, d in self.details.items()}

    @property
    def schemas(self) -> dict[str, pa.Schema]:
        return {name: d.schema for name, d in self.details.items()}

    @property
    def row_counts(self) -> dict[str, int]:
        return {name: d.rows for name, d in self.details.items()}

    @property
    def quarantine(self) -> dict[str, pd.DataFrame]:
        """The would-be quarantined rows (with ``_cf_row_error``) of each output that has any."""
        return {n: d.quarantine for n, d in self.details.items() if d.quarantine is not None}

    @property
    def traceback(self) -> str:
        return self.error.traceback if self.error is not None else ""

    def raise_for_error(self) -> Preview:
        """Raise the plugin's error (with its remote traceback) if it raised; else self."""
        if self.error is not None:
            from .errors import RemoteJobError

            raise RemoteJobError(self.error.ename, self.error.evalue, self.error.traceback,
                                 job_id=_JOB_ID, input_file=self.input_file)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The ``casparian preview --json`` document (first rows as lists of records)."""
        return {
            "plugin_name": self.plugin_name, "input_file": self.input_file, "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3), "rows_shown": self.rows_shown,
            "outputs": {n: {"table": d.table, "rows": d.rows, "schema": str(d.schema).splitlines(),
                            "head": _records(d.head), "quarantine_rows": d.quarantine_rows,
                            "quarantine": _records(d.quarantine)}
                        for n, d in self.details.items()},
            "log": self.log, "log_bytes": self.log_bytes, "log_truncated": self.log_truncated,
            "error": None if self.error is None else {
                "ename": self.error.ename, "evalue": self.error.evalue,
                "traceback": self.error.traceback, "kind": self.error.kind},
        }

    def __repr__(self) -> str:
        err = self.error
        state = "ok" if err is None else f"failed: {err.ename}: {err.evalue}"
        lines = [f"Preview of {self.plugin_name} on {Path(self.input_file).name} "
                 f"({state}, {self.elapsed_s:.2f}s)"]
        for d in self.details.values():
            q = f", {d.quarantine_rows:,} quarantined" if d.quarantine_rows else ""
            lines.append(f"  {d.name}: {d.rows:,} rows{q}; "
                         f"columns {', '.join(d.schema.names)}")
        if self.log:
            lines.append(f"  output: {self.log_bytes:,} bytes"
                         + (" (head and tail kept)" if self.log_truncated else ""))
        if self.error is not None and self.error.traceback:
            lines += ["  remote traceback:",
                      *("    " + ln for ln in self.error.traceback.rstrip().splitlines())]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        state = "ok" if self.ok else "failed"
        parts = [f"<div><b>Preview</b> of <code>{esc(self.plugin_name)}</code> on "
                 f"<code>{esc(Path(self.input_file).name)}</code>: {state} in "
                 f"{self.elapsed_s:.2f}s</div>"]
        for d in self.details.values():
            q = f", {d.quarantine_rows:,} would be quarantined" if d.quarantine_rows else ""
            shown = min(d.rows, self.rows_shown)
            parts.append(
                f"<details open><summary><b>{esc(d.name)}</b>: {d.rows:,} rows{q} "
                f"(first {shown} shown; table {esc(d.table)})</summary>"
                f"<pre style='font-size:11px'>{esc(str(d.schema))}</pre>"
                f"{d.head.to_html(max_rows=self.rows_shown, index=False, border=0)}")
            if d.quarantine is not None and d.quarantine_rows:
                parts.append(f"<div><i>quarantined rows of {esc(d.name)}</i></div>"
                             f"{d.quarantine.to_html(max_rows=self.rows_shown, index=False, border=0)}")
            parts.append("</details>")
        if self.log:
            parts.append(f"<details><summary>output ({self.log_bytes:,} bytes)</summary>"
                         f"<pre style='font-size:11px;max-height:20em;overflow:auto'>"
                         f"{esc(self.log)}</pre></details>")
        if self.error is not None:  # like IPython's error display: name, value, traceback
            parts.append(f"<div style='color:#dc2626'><b>{esc(self.error.ename)}</b>: "
                         f"{esc(self.error.evalue)} <span style='color:#6b7280'>(remote "
                         "traceback)</span></div><pre style='font-size:11px;background:#fdd;"
                         f"padding:4px 6px;white-space:pre-wrap'>"
                         f"{esc((self.error.traceback or self.error.evalue).rstrip())}</pre>")
        return f'<div class="cf-preview">{"".join(parts)}</div>'


def _records(df: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    if df is None:
        return None
    return [{k: _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _table(data: str) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(base64.b64decode(data))) as reader:
        return reader.read_all()


def resolve_preview_plugin(plugin: Any, settings: Settings, scratch: Path) -> plugins.PluginSpec:
    """The inspected, trust-checked plugin file for ``plugin`` (a path or name, a module, or
    a notebook function written under ``scratch``)."""
    if isinstance(plugin, types.ModuleType) and str(getattr(plugin, "__file__", "")).endswith(".py"):
        plugin = plugin.__file__
    if is_source_plugin(plugin):
        path = write_plugin_source(plugin, scratch)
    elif isinstance(plugin, str | os.PathLike):
        path = plugins.resolve_plugin_path(plugin, settings.plugins_dir)
    else:
        raise CasparianError(f"plugin must be a path, a module or a function, not "
                             f"{type(plugin).__name__}")
    spec = plugins.inspect_plugin(path)
    plugins.check_trust(spec, settings.trust)
    return spec


def preview(plugin: Any, path: str | os.PathLike[str], rows: int = 20,
            timeout: float | None = None, *, home: str | os.PathLike[str] | None = None,
            settings: Settings | None = None, sink: str | None = None) -> Preview:
    """Run ``plugin`` on the file ``path`` in a plugin host and return a :class:`Preview`:
    the first ``rows`` rows of each output, schemas, row counts, would-be quarantined rows,
    captured output and the remote traceback if it raised. Writes nothing.

    Raises :class:`~casparian_nb.errors.PluginError` for a plugin that cannot be inspected
    or is refused by the trust policy, :class:`FileNotFoundError` for a missing input.
    """
    settings = settings or load_settings(home, create=False)  # a preview makes no home
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="cf-preview-"))
    try:
        spec = resolve_preview_plugin(plugin, settings, scratch / "plugin")
        job = HostJob(job=JobSpec(
            job_id=_JOB_ID, input_file=str(source.resolve()), plugin_path=str(spec.path),
            plugin_name=spec.name, plugin_name_declared=spec.name_declared,
            plugin_source_hash=spec.source_hash, parser_version=spec.version,
            sink=sink or settings.effective_default_sink,
        ), attempt=1, staging_root=str(scratch / "staging"), log_root=str(scratch / "logs"),
            redact_log=False, preview_rows=rows)  # the log goes to the caller only
        with HostPool(1, log_dir=scratch, cancel_grace=settings.cancel_grace,
                      memory_limit_mb=settings.job_memory_limit_mb, name="preview") as pool:
            res = pool.run(job, timeout=timeout if timeout is not None else settings.job_timeout)
        log, total, cut = "", 0, False
        log_file = job_log_path(scratch / "logs", _JOB_ID, 1)
        if log_file.exists():
            log, total, cut = read_log_file(log_file)
        error = res.error
        if res.status == ReceiptStatus.ABORTED:
            timed_out = res.cause == AbortCause.TIMEOUT
            error = ErrorInfo(ename="JobTimeoutError" if timed_out else "JobCancelledError",
                              evalue=res.reason or "aborted", kind=ErrorKind.PERMANENT)
        details: dict[str, PreviewOutput] = {}
        for out in (res.preview.outputs if res.preview is not None else []):
            head = _table(out.head)
            bad = _table(out.quarantine) if out.quarantine else None
            details[out.name] = PreviewOutput(
                name=out.name, table=out.table, rows=int(out.rows), schema=head.schema.remove_metadata(),
                head=head.to_pandas(), quarantine_rows=int(out.quarantine_rows),
                quarantine=bad.to_pandas() if bad is not None else None)
        return Preview(plugin_name=spec.name, input_file=str(source), rows_shown=rows,
                       elapsed_s=time.perf_counter() - started, details=details, log=log,
                       log_bytes=total, log_truncated=cut, error=error)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

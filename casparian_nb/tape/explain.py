"""``tape explain``: what happened on a tape — commands, jobs, retries, errors, workers.

The JSON keeps the original's keys (``schema_version`` = the last event's, ``event_count``,
``commands`` = names in order, ``jobs[{job_id, plugin_name, status, rows, outputs, error}]``,
``materializations`` = count, ``errors``) and adds: ``started_at``/``ended_at``/``duration_s``,
``command_list`` (name, status, correlation id, error), more fields per job, ``summary``,
``retries``, ``cancels``, ``materialization_summary`` (per output), ``workers`` (busy time and
utilisation = busy / (span x slots)), ``truncated`` and ``skipped_lines``.

Explain is lenient where validate is strict: lines that do not parse are skipped and listed,
a truncated last line is noted, and every complete event is explained. It streams the file;
memory grows with jobs, workers and commands, not with events.
"""

from __future__ import annotations

import html
import importlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from ..protocol import EventName
from ._decode import Payload, to_payload
from ._scan import Cursor, finish, scan, settle
from .envelope import (
    COMMAND_PENDING,
    COMMAND_SUCCEEDED,
    COMMAND_SUCCESS,
    DOMAIN_EVENT,
    ERROR_EVENT,
    SYSTEM_RESPONSE,
    UI_COMMAND,
    finite,
    parse_timestamp,
)
from .reader import open_tape
from .reducer import ABORTED, COMPLETED, FAILED, SKIPPED, JobRecord, JobReducer

__all__ = ["Explanation", "explain_tape"]

JOB_QUEUED = EventName.JOB_QUEUED

_ENCODER = msgspec.json.Encoder()


def encode_value(value: Any) -> bytes:
    """Compact JSON of any value read from a tape: msgspec's, or, for what it refuses (a lone
    surrogate from an undecodable line), ``json``'s with ASCII escapes. NaN and the
    infinities become null either way (strict JSON has no literal for them)."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError):
        return json.dumps(finite(value), ensure_ascii=True, separators=(",", ":")).encode()


class _JobView(msgspec.Struct, gc=False):
    """A job's public fields in ``JobRecord.to_dict`` order: msgspec encodes it in C, five
    times faster than formatting ``to_dict()``."""

    job_id: Any
    plugin_name: Any
    status: Any
    rows: Any
    outputs: Any
    error: Any
    plugin_version: Any
    worker_id: Any
    duration_ms: Any
    retries: Any
    attempts: Any
    cancel_requested: Any
    error_kind: Any
    reason: Any
    quarantine_rows: Any
    input_file: Any


def encode_jobs(jobs: Iterable[JobRecord]) -> bytes:
    """The jobs' JSON objects joined by ``",\n    "`` (one per line in ``write_json``)."""
    enc, view = _ENCODER.encode, _JobView
    out = []
    for j in jobs:
        try:
            out.append(enc(view(
                j.job_id, j.plugin_name, j.status, j.rows, j.outputs, j.error,
                j.plugin_version, j.worker_id, j.duration_ms, j.retries, j.attempts,
                j.cancel_requested, j.error_kind, j.reason, j.quarantine_rows, j.input_file)))
        except (TypeError, ValueError):
            out.append(encode_value(j.to_dict()))
    return b",\n    ".join(out)


def _bytes_out(fp: IO[str]) -> tuple[Callable[[bytes], Any], Callable[[], Any]]:
    """(write, flush) of UTF-8 bytes to a text stream: straight to its byte buffer when it
    has one that takes UTF-8 (stdout, files), else decoded (``io.StringIO``)."""
    buffer = getattr(fp, "buffer", None)
    encoding = (getattr(fp, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if buffer is not None and encoding == "utf8":
        fp.flush()
        return buffer.write, buffer.flush
    return (lambda data: fp.write(data.decode("utf-8"))), fp.flush


_JOB_BATCH = 4096


def text_job_lines(j: Any) -> list[str]:
    """A job's line(s) in the text summary."""
    extra = [f"retries {j.retries}"] if j.retries else []
    if j.cancel_requested:
        extra.append("cancel requested")
    if j.worker_id:
        extra.append(f"on {j.worker_id}")
    tail = f" ({', '.join(extra)})" if extra else ""
    out = [f"  [{j.status}] {j.job_id} - {j.plugin_name or 'unknown'} {j.rows} rows{tail}"]
    if j.error:
        out.append(f"       Error: {j.error}")
    elif j.reason and j.status in (ABORTED, SKIPPED):
        out.append(f"       Reason: {j.reason}")
    return out


class Explanation:
    """The result of :func:`explain_tape`; ``to_json()`` / ``to_text()`` / ``write_json()``."""

    def __init__(self) -> None:
        self.event_count = 0
        self.schema_version: int | None = None
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.reducer = JobReducer()
        #: [name, status, correlation_id, error] per ui_command, in order
        self.commands: list[list[Any]] = []
        self.errors: list[str] = []
        self.truncated: int | None = None
        self.skipped_lines: list[int] = []
        self.skipped_count = 0
        self._by_corr: dict[str, int] = {}
        #: responses whose command was not seen (kept only by a split explain's segments)
        self.unmatched: list[tuple[str, str, bool, Any]] | None = None

    # -- facts -----------------------------------------------------------------------------
    @property
    def duration_s(self) -> float | None:
        """Seconds between the first and the last event (None without timestamps)."""
        a, b = parse_timestamp(self.started_at), parse_timestamp(self.ended_at)
        return None if a is None or b is None else round(b - a, 6)

    def summary(self) -> dict[str, int]:
        """Job counts per status plus ``total`` and ``total_rows``."""
        counts = self.reducer.counts()
        rows = sum(j.rows for j in self.reducer.jobs.values() if j.status == COMPLETED)
        return {"total": len(self.reducer.jobs), **counts, "total_rows": rows}

    def _busy(self) -> dict[str, float]:
        """Busy seconds per worker up to the tape's end (runs still open count)."""
        return self.reducer.busy_until(parse_timestamp(self.ended_at))

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: dispatches, busy seconds and utilisation over the tape's span."""
        span = self.duration_s
        busy = self._busy()
        out = []
        for wid, rec in self.reducer.workers.items():
            d = rec.to_dict()
            d["busy_s"] = round(busy[wid], 6)
            capacity = (span or 0.0) * (rec.slots or 1)
            d["utilisation"] = round(busy[wid] / capacity, 4) if capacity > 0 else None
            out.append(d)
        return out

    def plot(self) -> Any:
        """Per-worker utilisation and a histogram of job durations: an Altair chart with a
        static SVG (needs the notebook extra)."""
        # The plotting stack belongs to the notebook layer; the tape layer only hands it data.
        charts = importlib.import_module("casparian_nb.notebook.charts")
        durations = [j.duration_ms for j in self.reducer.jobs.values()
                     if isinstance(j.duration_ms, int | float)]
        return charts.explanation_chart(self.workers(), durations)

    def materialization_summary(self) -> list[dict[str, Any]]:
        return [
            {"output_name": name, "table": table, "count": agg[0], "rows": agg[1]}
            for (name, table), agg in self.reducer.materialized.items()
        ]

    def _head(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "event_count": self.event_count,
            "commands": [c[0] for c in self.commands],
        }

    def _tail(self) -> dict[str, Any]:
        r = self.reducer
        return {
            "materializations": r.materializations,
            "errors": list(self.errors),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "command_list": [
                {"name": n, "status": s, "correlation_id": c, "error": e,
                 "jobs_queued": r.queued_by.get(c, 0) if isinstance(c, str) else 0}
                for n, s, c, e in self.commands
            ],
            "summary": self.summary(),
            "retries": r.retries,
            "cancels": r.cancels,
            "materialization_summary": self.materialization_summary(),
            "workers": self.workers(),
            "truncated": self.truncated is not None,
            "truncated_line": self.truncated,
            "skipped_lines": list(self.skipped_lines),
        }

    # -- output ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The explanation as one JSON-ready dict (builds every job; see ``write_json``)."""
        jobs = [j.to_dict() for j in self.reducer.jobs.values()]
        return {**self._head(), "jobs": jobs, **self._tail()}

    def write_json(self, fp: IO[str]) -> None:
        """Stream the JSON (same data as ``to_json``), one job per line, without building
        the whole document: a 100,000-job tape stays cheap."""
        write, flush = _bytes_out(fp)

        def items(values: dict[str, Any], first: bool) -> None:
            for i, (k, v) in enumerate(values.items()):
                sep = b"" if first and i == 0 else b",\n"
                key = encode_value(k)
                if isinstance(v, list) and v and isinstance(v[0], dict):
                    rows = b",\n".join(b"    " + encode_value(x) for x in v)
                    write(sep + b"  " + key + b": [\n" + rows + b"\n  ]")
                else:
                    write(sep + b"  " + key + b": " + encode_value(v))

        write(b"{\n")
        items(self._head(), True)
        write(b',\n  "jobs": [')
        any_job = False
        for chunk in self._job_chunks():
            if chunk:
                write(b",\n    " if any_job else b"\n    ")
                write(chunk)
                any_job = True
        write(b"\n  ]" if any_job else b"]")
        items(self._tail(), False)
        write(b"\n}\n")
        flush()

    def _job_count(self) -> int:
        return len(self.reducer.jobs)

    def _job_chunks(self) -> Iterator[bytes]:
        """The jobs' JSON, in order of first appearance: chunks of ``encode_jobs``."""
        jobs = list(self.reducer.jobs.values())
        for i in range(0, len(jobs), _JOB_BATCH):
            yield encode_jobs(jobs[i : i + _JOB_BATCH])

    def _text_job_lines(self) -> Iterator[str]:
        """Each job's line(s) of the text summary, in order of first appearance."""
        for job in self.reducer.jobs.values():
            yield from text_job_lines(job)

    def to_text(self) -> str:
        """The original's ``=== Tape Summary ===`` layout, with the additions."""
        lines = ["=== Tape Summary ===", "", f"Schema Version: {self.schema_version}",
                 f"Total Events: {self.event_count}"]
        if self.started_at:
            dur = self.duration_s
            span = f" ({dur:.3f} s)" if dur is not None else ""
            lines.append(f"Time Span: {self.started_at} -> {self.ended_at}{span}")
        if self.commands:
            lines.append(f"Commands ({len(self.commands)}):")
            queued_by = self.reducer.queued_by
            lines += [f"  - {n} [{s}]" + (f" -> queued {queued_by[c]} job(s)"
                                          if isinstance(c, str) and queued_by.get(c) else "")
                      for n, s, c, _ in self.commands]
        if self._job_count():
            lines.append(f"Jobs ({self._job_count()}):")
            lines.extend(self._text_job_lines())
            s = self.summary()
            lines.append(f"  Summary: {s['completed']} completed, {s['failed']} failed, "
                         f"{s['total_rows']} total rows")
        r = self.reducer
        if r.retries or r.cancels:
            lines.append(f"Retries: {r.retries}, Cancels: {r.cancels}")
        lines.append(f"Materializations: {r.materializations}")
        if self.errors:
            lines.append(f"Errors ({len(self.errors)}):")
            lines += [f"  - {e}" for e in self.errors]
        workers = self.workers()
        if workers:
            lines.append(f"Workers ({len(workers)}):")
            for w in workers:
                util = "" if w["utilisation"] is None else f", {w['utilisation']:.1%} utilised"
                lines.append(f"  - {w['worker_id']}: {w['jobs']} jobs, busy {w['busy_s']:.3f} s"
                             f"{util}{' (' + w['status'] + ')' if w['status'] != 'active' else ''}")
        if self.truncated is not None:
            lines.append(f"Warning: line {self.truncated} is truncated (tape cut off)")
        if self.skipped_count:
            lines.append(f"Warning: {self.skipped_count} unparseable line(s) skipped")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<Explanation {self.event_count} events, {s['total']} jobs "
                f"({s['completed']} completed, {s['failed']} failed)>")

    def _repr_html_(self) -> str:
        """The summary as a small table of jobs per status, then the full text (HTML-safe);
        ``.plot()`` draws utilisation and durations."""
        s = self.summary()
        cells = "".join(f"<td style='padding:2px 8px'><b>{html.escape(str(v))}</b><br>"
                        f"<span style='color:#6b7280'>{html.escape(k)}</span></td>"
                        for k, v in s.items() if v or k == "total")
        return (f"<div class='cf-explanation'><div style='font-weight:600'>"
                f"{html.escape(repr(self))}</div><table><tr>{cells}</tr></table>"
                f"<pre style='font-size:12px'>{html.escape(self.to_text())}</pre></div>")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython shows the text summary for ``cf.explain(path)`` in a cell."""
        printer.text(repr(self) if cycle else self.to_text().rstrip("\n"))

    # -- reduction -------------------------------------------------------------------------
    def _apply(self, obj: dict[str, Any]) -> bool:
        """Apply a line parsed by ``json``; False when it is not an envelope."""
        en = obj.get("event_name")
        if not isinstance(en, dict):
            return False
        ts = obj.get("timestamp")
        self._event(en.get("type"), en.get("name"), obj.get("payload"),
                    ts if type(ts) is str else None, obj.get("correlation_id"))
        return True

    def _envelope(self, e: Any) -> None:
        """A decoded envelope that is not a domain event (``JobReducer.apply_envelopes``)."""
        ts = e.timestamp
        en = e.event_name
        self._event(en.type, en.name, e.payload, ts if type(ts) is str else None,
                    e.correlation_id)

    def _event(self, kind: Any, name: Any, payload: Any, ts: str | None, corr: Any) -> None:
        if kind == DOMAIN_EVENT:
            if self.reducer.apply(name, payload, ts) and name == JOB_QUEUED and isinstance(
                    corr, str):
                queued_by = self.reducer.queued_by
                queued_by[corr] = queued_by.get(corr, 0) + 1
        elif kind == UI_COMMAND:
            if isinstance(corr, str):
                self._by_corr[corr] = len(self.commands)
            self.commands.append([name, COMMAND_PENDING, corr, None])
        elif kind in (SYSTEM_RESPONSE, ERROR_EVENT):
            self._response(kind, str(name), to_payload(payload), corr)

    def _response(self, kind: str, name: str, p: Payload | None, corr: Any) -> None:
        error, message, status = (p.error, p.message, p.status) if p else (None, None, None)
        text = error if error is not None else message
        failed = kind == ERROR_EVENT or "Failed" in name or "Error" in name
        if failed:
            self.errors.append(f"{name}: {text}" if text is not None else name)
        if not isinstance(corr, str):
            return
        status = FAILED if failed else str(status or (
            COMMAND_SUCCESS if name == COMMAND_SUCCEEDED else name))
        idx = self._by_corr.get(corr)
        if idx is not None:
            self.settle_command(idx, status, failed, text)
        elif self.unmatched is not None:  # a segment: its command may be in an earlier one
            self.unmatched.append((corr, status, failed, text))

    def settle_command(self, index: int, status: str, failed: bool, text: Any) -> None:
        """A response to command ``index``: its status and, when it failed, its error."""
        self.commands[index][1] = status
        if failed:
            self.commands[index][3] = text


def explain_tape(path: str | os.PathLike[str]) -> Explanation:
    """Explain a tape file (streaming). :class:`TapeError` when it cannot be read at all."""
    ex = Explanation()
    cur = Cursor()
    with open_tape(path) as fh:
        scan(ex, cur, fh)
    settle(ex, cur)
    finish(ex, Path(path), cur.number)
    if cur.last is not None:
        ex.ended_at, ex.schema_version = cur.last
    return ex

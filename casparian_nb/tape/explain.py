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

import contextlib
import gc
import json
import os
from collections.abc import Iterator
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any

import msgspec

from ..errors import TapeError
from ._decode import Envelope, Payload, decode_block, to_payload
from .envelope import (
    COMMAND_SUCCEEDED,
    DOMAIN_EVENT,
    ERROR_EVENT,
    SYSTEM_RESPONSE,
    UI_COMMAND,
    parse_timestamp,
)
from .reader import open_tape
from .reducer import JobReducer

__all__ = ["Explanation", "explain_tape"]

# JSONEncoder.encode builds a C encoder per call; one prebuilt encoder (", " / ": " like
# json.dumps) costs a third per job line of a 100,000-job explanation.
_C_ENCODE = (
    c_make_encoder(None, str, encode_basestring, None, ": ", ", ", False, False, True)
    if c_make_encoder is not None
    else None
)


def _enc(value: Any) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value, 0))
    return json.dumps(value, ensure_ascii=False)


# One job's JSON object is formatted from this template: the same bytes as
# ``_enc(job.to_dict())`` (keys in ``to_dict`` order, ", " and ": " separators), about twice
# as fast. Repeating values (plugin, status, worker, outputs, ...) are encoded once.
_JOB_KEYS = ("job_id", "plugin_name", "status", "rows", "outputs", "error", "plugin_version",
             "worker_id", "duration_ms", "retries", "attempts", "cancel_requested",
             "error_kind", "reason", "quarantine_rows", "input_file")
_JOB_TEMPLATE = "{" + ", ".join(f'"{k}": %s' for k in _JOB_KEYS) + "}"
class _Memo(dict[Any, str]):
    """value -> its JSON text, filled on first use (keys of one type per memo)."""

    def __missing__(self, key: Any) -> str:
        out = self[key] = _enc(key)
        return out


class _JobEncoder:
    """``encode(job)`` == ``_enc(job.to_dict())`` for every :class:`JobRecord`.

    Fields that repeat across jobs (plugin, status, worker, counts, outputs) are encoded once
    per value; any value of an unexpected type sends the job through ``_enc(to_dict())``.
    """

    def __init__(self) -> None:
        self._str = _Memo()  # str or None
        self._int = _Memo()  # int (not bool)
        self._outs = _Memo()  # tuple of str

    def encode(self, job: Any) -> str:
        pn, st, pv, wk, ek = (job.plugin_name, job.status, job.plugin_version, job.worker_id,
                              job.error_kind)
        jid, rows, dur, retries, attempts = (job.job_id, job.rows, job.duration_ms,
                                             job.retries, job.attempts)
        error, reason, qr, inf, outputs, cancel = (job.error, job.reason, job.quarantine_rows,
                                                   job.input_file, job.outputs,
                                                   job.cancel_requested)
        t = type
        if not (t(jid) is str and t(rows) is int and t(retries) is int
                and t(attempts) is int and t(cancel) is bool
                and (t(pn) is str or pn is None) and (t(st) is str or st is None)
                and (t(pv) is str or pv is None) and (t(wk) is str or wk is None)
                and (t(ek) is str or ek is None) and (t(outputs) is list or outputs == ())):
            return _enc(job.to_dict())
        okey = tuple(outputs)
        if okey not in self._outs:
            if not all(t(o) is str for o in okey):
                return _enc(job.to_dict())
            self._outs[okey] = _enc(list(okey))
        s, i, esc = self._str, self._int, encode_basestring
        return _JOB_TEMPLATE % (
            esc(jid), s[pn], s[st], int.__repr__(rows), self._outs[okey],
            esc(error) if t(error) is str else "null" if error is None else _enc(error),
            s[pv], s[wk],
            i[dur] if t(dur) is int else "null" if dur is None else _enc(dur),
            i[retries], i[attempts], "true" if cancel else "false", s[ek],
            s[reason] if t(reason) is str or reason is None else _enc(reason),
            int.__repr__(qr) if t(qr) is int else "null" if qr is None else _enc(qr),
            esc(inf) if t(inf) is str else "null" if inf is None else _enc(inf),
        )


_MAX_SKIPPED = 100


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

    # -- facts -----------------------------------------------------------------------------
    @property
    def duration_s(self) -> float | None:
        """Seconds between the first and the last event (None without timestamps)."""
        a, b = parse_timestamp(self.started_at), parse_timestamp(self.ended_at)
        return None if a is None or b is None else round(b - a, 6)

    def summary(self) -> dict[str, int]:
        """Job counts per status plus ``total`` and ``total_rows``."""
        counts = self.reducer.counts()
        rows = sum(j.rows for j in self.reducer.jobs.values() if j.status == "completed")
        return {"total": len(self.reducer.jobs), **counts, "total_rows": rows}

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: dispatches, busy seconds and utilisation over the tape's span."""
        end = parse_timestamp(self.ended_at)
        span = self.duration_s
        busy = self.reducer.busy_until(end)
        out = []
        for wid, rec in self.reducer.workers.items():
            d = rec.to_dict()
            d["busy_s"] = round(busy[wid], 6)
            capacity = (span or 0.0) * (rec.slots or 1)
            d["utilisation"] = round(busy[wid] / capacity, 4) if capacity > 0 else None
            out.append(d)
        return out

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
                {"name": n, "status": s, "correlation_id": c, "error": e}
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
        enc = _enc

        def block(items: dict[str, Any], first: bool) -> None:
            for i, (k, v) in enumerate(items.items()):
                sep = "" if first and i == 0 else ",\n"
                if isinstance(v, list) and v and isinstance(v[0], dict):
                    rows = ",\n".join("    " + enc(x) for x in v)
                    fp.write(f'{sep}  {enc(k)}: [\n{rows}\n  ]')
                else:
                    fp.write(f"{sep}  {enc(k)}: {enc(v)}")

        fp.write("{\n")
        block(self._head(), True)
        fp.write(',\n  "jobs": [')
        any_job = False
        batch: list[str] = []
        for line in self._job_lines():
            batch.append(line)
            if len(batch) == 4096:
                fp.write((",\n    " if any_job else "\n    ") + ",\n    ".join(batch))
                any_job, batch = True, []
        if batch:
            fp.write((",\n    " if any_job else "\n    ") + ",\n    ".join(batch))
            any_job = True
        fp.write("\n  ]" if any_job else "]")
        block(self._tail(), False)
        fp.write("\n}\n")

    def _job_lines(self) -> Iterator[str]:
        """Each job's JSON object (one line), in order of first appearance."""
        return map(_JobEncoder().encode, self.reducer.jobs.values())

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
            lines += [f"  - {n} [{s}]" for n, s, _, _ in self.commands]
        jobs = self.reducer.jobs
        if jobs:
            lines.append(f"Jobs ({len(jobs)}):")
            for j in jobs.values():
                extra = [f"retries {j.retries}"] if j.retries else []
                if j.cancel_requested:
                    extra.append("cancel requested")
                if j.worker_id:
                    extra.append(f"on {j.worker_id}")
                tail = f" ({', '.join(extra)})" if extra else ""
                lines.append(f"  [{j.status}] {j.job_id} - {j.plugin_name or 'unknown'} "
                             f"{j.rows} rows{tail}")
                if j.error:
                    lines.append(f"       Error: {j.error}")
                elif j.reason and j.status in ("aborted", "skipped"):
                    lines.append(f"       Reason: {j.reason}")
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

    def _event(self, kind: Any, name: Any, payload: Any, ts: str | None, corr: Any) -> None:
        if kind == DOMAIN_EVENT:
            self.reducer.apply(name, payload, ts)
        elif kind == UI_COMMAND:
            if isinstance(corr, str):
                self._by_corr[corr] = len(self.commands)
            self.commands.append([name, "pending", corr, None])
        elif kind in (SYSTEM_RESPONSE, ERROR_EVENT):
            self._response(kind, str(name), to_payload(payload), corr)

    def _response(self, kind: str, name: str, p: Payload | None, corr: Any) -> None:
        error, message, status = (p.error, p.message, p.status) if p else (None, None, None)
        text = error if error is not None else message
        failed = kind == ERROR_EVENT or "Failed" in name or "Error" in name
        if failed:
            self.errors.append(f"{name}: {text}" if text is not None else name)
        idx = self._by_corr.get(corr) if isinstance(corr, str) else None
        if idx is not None:
            status = "failed" if failed else str(status or (
                "success" if name == COMMAND_SUCCEEDED else name))
            self.commands[idx][1] = status
            if failed:
                self.commands[idx][3] = text


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: a million payloads would trigger it over and
    over to traverse every job record, and nothing here forms a reference cycle (reference
    counting frees it all)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# Blocks of whole lines decoded at once; big enough to amortise the per-call cost, small
# enough that one block's decoded events stay a few MB.
_BLOCK = 1 << 22


class _Cursor:
    """Where the scan is: line number, the last event's (timestamp, schema_version), and a
    bad line held back until we know whether it is the last one (then: truncation)."""

    __slots__ = ("last", "number", "pending_bad")

    def __init__(self) -> None:
        self.number = 0
        self.last: tuple[Any, Any] | None = None
        self.pending_bad: tuple[int, bool] | None = None  # (line, ends with a newline)


def explain_tape(path: str | os.PathLike[str]) -> Explanation:
    """Explain a tape file (streaming). :class:`TapeError` when it cannot be read at all."""
    ex = Explanation()
    cur = _Cursor()
    with open_tape(path) as fh, no_gc():
        while True:
            data = fh.read(_BLOCK)
            if not data:
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) == _BLOCK:  # a line longer than a block
                data += fh.readline()
                cut = len(data) if data.endswith(b"\n") else 0
            if cut == 0:  # the last line, without a newline
                _line_block(ex, cur, data)
                continue
            if cut < len(data):  # the partial line starts the next block
                fh.seek(cut - len(data), os.SEEK_CUR)
            if not _fast_block(ex, cur, data, cut):
                _line_block(ex, cur, data[:cut])
    _finish(ex, Path(path), cur)
    return ex


def _fast_block(ex: Explanation, cur: _Cursor, data: bytes, cut: int) -> bool:
    """Apply ``data[:cut]``, whole lines, decoded by msgspec; False (nothing applied) when it
    does not decode cleanly, so the caller parses it line by line instead."""
    try:
        events = decode_block(memoryview(data)[:cut])
    except (msgspec.MsgspecError, ValueError):  # ValueError: bytes that are not UTF-8
        return False
    if cur.pending_bad is not None:  # a bad line that turned out not to be the last
        _skip(ex, cur.pending_bad[0])
        cur.pending_bad = None
    handlers = ex.reducer.handlers
    count = ex.event_count
    last: Envelope | None = None
    for i, e in enumerate(events):
        en = e.event_name
        if en is None:  # valid JSON, but not an envelope: skipped, by its line number
            _skip(ex, cur.number + _line_of(data[:cut], i))
            continue
        ts = e.timestamp
        if en.type == DOMAIN_EVENT:
            name = en.name
            handler = handlers.get(name) if type(name) is str else None
            if handler is not None and e.payload is not None:
                handler(e.payload, ts if type(ts) is str else None)
        else:
            ex._event(en.type, en.name, e.payload, ts if type(ts) is str else None,
                      e.correlation_id)
        if count == 0:
            ex.started_at = ts
        count += 1
        last = e
    ex.event_count = count
    if last is not None:
        cur.last = (last.timestamp, last.schema_version)
    cur.number += data.count(b"\n", 0, cut)
    return True


def _line_of(block: bytes, index: int) -> int:
    """1-based line (within ``block``) of the ``index``-th non-blank line (as msgspec
    counts them: blank = JSON whitespace only)."""
    seen = -1
    for n, line in enumerate(block.split(b"\n"), 1):
        if line.strip(b" \t\r"):
            seen += 1
            if seen == index:
                return n
    return 0


def _line_block(ex: Explanation, cur: _Cursor, block: bytes) -> None:
    """Apply lines one by one with ``json`` (lenient: bad lines skipped, by number)."""
    loads = json.loads
    for raw in block.splitlines(keepends=True):
        cur.number += 1
        if cur.pending_bad is not None:
            _skip(ex, cur.pending_bad[0])
            cur.pending_bad = None
        text = raw.decode("utf-8", "surrogateescape")
        if not text.strip():
            continue
        try:
            obj = loads(text)
        except ValueError:
            cur.pending_bad = (cur.number, text.endswith("\n"))
            continue
        if not isinstance(obj, dict) or not ex._apply(obj):
            _skip(ex, cur.number)
            continue
        if ex.event_count == 0:
            ex.started_at = obj.get("timestamp")
        ex.event_count += 1
        cur.last = (obj.get("timestamp"), obj.get("schema_version"))


def _finish(ex: Explanation, path: Path, cur: _Cursor) -> None:
    """End of the tape: a bad last line is truncation (no newline) or skipped; the last
    event gives the end time and schema version."""
    if cur.pending_bad is not None:
        if cur.pending_bad[1]:
            _skip(ex, cur.pending_bad[0])
        else:
            ex.truncated = cur.pending_bad[0]
    if cur.number and ex.event_count == 0 and ex.skipped_count:
        raise TapeError(f"{path} is not a tape: no line parses as an event")
    if cur.last is not None:
        ex.ended_at, ex.schema_version = cur.last


def _skip(ex: Explanation, number: int) -> None:
    ex.skipped_count += 1
    if len(ex.skipped_lines) < _MAX_SKIPPED:
        ex.skipped_lines.append(number)

"""explain_split: a tape cut in two, explained in two parts and merged, tells the same story.

The reference is the serial :func:`explain_tape`. Every comparison renders both (``write_json``
and ``to_text``) and demands identical output, except a worker's busy seconds and utilisation,
which a split adds up in another order (float rounding: compared with a tolerance).

Tapes come from a seeded generator of adversarial sessions: jobs in flight at the cut, jobs
re-queued long after they finished, lost workers naming jobs from before the cut / not yet
seen / duplicated / as numbers / as non-lists, retries, cancels, aborts, skips, UI commands
and responses across the cut (response first, correlation ids reused, responses without a
command, error events), non-envelope, blank, bad, non-UTF-8 and truncated lines, odd
timestamps. Small tapes are cut at every line start; big ones at many random points; with
tiny read blocks too (``_scan._BLOCK``: many blocks, lines longer than a block).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from casparian_nb.tape.cli import explain_command

from casparian_nb.errors import TapeError
from casparian_nb.tape import _scan, _split
from casparian_nb.tape._split import MergedExplanation, Segment, explain_split
from casparian_nb.tape.envelope import finite
from casparian_nb.tape.explain import Explanation, explain_tape

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BLOCK = _scan._BLOCK
BUSY_TOL, UTIL_TOL = 1e-6, 1e-4


# -- rendering and comparing ---------------------------------------------------------------
def render_json(ex: Explanation) -> str:
    buf = io.StringIO()
    ex.write_json(buf)
    return buf.getvalue()


def render(ex: Explanation, fmt: str) -> str:
    return render_json(ex) if fmt == "json" else ex.to_text()


def _close(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(abs(a - b) <= tol)


def assert_same_json(serial: str, split: str, where: str = "") -> None:
    """Identical JSON documents but for workers' busy_s / utilisation (tolerance)."""
    a, b = json.loads(serial), json.loads(split)
    wa, wb = a.pop("workers"), b.pop("workers")
    assert list(a) == list(b), where
    for key in a:
        assert a[key] == b[key], f"{where}: {key!r} differs:\n{a[key]!r}\n{b[key]!r}"
    assert [w["worker_id"] for w in wa] == [w["worker_id"] for w in wb], where
    for x, y in zip(wa, wb, strict=True):
        assert list(x) == list(y), where
        assert _close(x["busy_s"], y["busy_s"], BUSY_TOL), f"{where}: busy {x} vs {y}"
        assert _close(x["utilisation"], y["utilisation"], UTIL_TOL), f"{where}: {x} vs {y}"
        rest = ("busy_s", "utilisation")
        assert {k: v for k, v in x.items() if k not in rest} == {
            k: v for k, v in y.items() if k not in rest}, where
    # the raw text too: every line but the workers' own (one JSON object per line)
    la, lb = serial.splitlines(), split.splitlines()
    assert len(la) == len(lb), where
    for n, (x_line, y_line) in enumerate(zip(la, lb, strict=True)):
        if not (x_line.startswith('    {"worker_id":') and y_line.startswith('    {"worker_id":')):
            assert x_line == y_line, f"{where}: line {n + 1}:\n{x_line}\n{y_line}"
    if wa == wb:  # no float differed: then the documents are byte for byte the same
        assert serial == split, where


_WORKER_NUMBERS = re.compile(r"busy (-?\d+\.\d{3}) s(?:, (-?\d+\.\d)% utilised)?")


def assert_same_text(serial: str, split: str, where: str = "") -> None:
    """Identical text summaries but for the numbers on the worker lines (tolerance)."""
    la, lb = serial.split("\n"), split.split("\n")
    assert len(la) == len(lb), f"{where}:\n{serial}\n---\n{split}"
    workers: set[int] = set()
    for i, text in enumerate(la):
        m = re.fullmatch(r"Workers \((\d+)\):", text)
        if m:
            workers = set(range(i + 1, i + 1 + int(m.group(1))))  # the last such header wins
    for n, (x, y) in enumerate(zip(la, lb, strict=True)):
        if n not in workers:
            assert x == y, f"{where}: line {n + 1}:\n{x}\n{y}\n--- serial:\n{serial}"
            continue
        mx, my = list(_WORKER_NUMBERS.finditer(x)), list(_WORKER_NUMBERS.finditer(y))
        assert mx and my, (x, y)
        gx, gy = mx[-1], my[-1]
        assert x[: gx.start()] == y[: gy.start()] and x[gx.end():] == y[gy.end():], (x, y)
        assert abs(float(gx.group(1)) - float(gy.group(1))) <= 0.0011, (x, y)
        assert (gx.group(2) is None) == (gy.group(2) is None), (x, y)
        if gx.group(2) is not None:
            assert abs(float(gx.group(2)) - float(gy.group(2))) <= 0.11, (x, y)


def assert_same(serial: Explanation, split: Explanation, fmt: str, where: str = "") -> None:
    if fmt == "json":
        assert_same_json(render_json(serial), render_json(split), where)
    else:
        assert_same_text(serial.to_text(), split.to_text(), where)


def assert_same_to_json(serial: Explanation, split: Explanation, where: str = "") -> None:
    """``to_json()`` (the dict API) agrees too: jobs, and the rest within tolerance."""
    a, b = finite(serial.to_json()), finite(split.to_json())
    wa, wb = a.pop("workers"), b.pop("workers")
    assert a == b, where
    assert len(wa) == len(wb), where
    for x, y in zip(wa, wb, strict=True):
        assert _close(x.pop("busy_s"), y.pop("busy_s"), BUSY_TOL), where
        assert _close(x.pop("utilisation"), y.pop("utilisation"), UTIL_TOL), where
        assert x == y, where


def line_starts(data: bytes) -> list[int]:
    """Byte offsets of every line start but the first (the cuts explain_split can make)."""
    out, pos = [], data.find(b"\n")
    while pos != -1 and pos + 1 < len(data):
        out.append(pos + 1)
        pos = data.find(b"\n", pos + 1)
    return out


# -- the tape generator --------------------------------------------------------------------
_FF = "@@FF@@"  # replaced by a raw 0xff byte: a line that is not UTF-8
_ODD_JOBS = ["j-a", "é", ""]  # ids that are no number (the empty one too)
_WORKERS = ["w1", "w2", "w3", "w4", "w5"]
_CORRS = ["c1", "c2", "c3", "c4", "c5", "c6"]
_TERMINAL = ("completed", "failed", "aborted", "skipped")


class TapeGen:
    """An adversarial session, line by line (``bytes`` lines ending in a newline)."""

    def __init__(self, rng: random.Random, *, junk: float = 1.0, long_lines: bool = True) -> None:
        self.rng = rng
        self.junk = junk
        self.long_lines = long_lines
        self.seq = 0
        self.t = rng.uniform(0, 5)
        self.lines: list[bytes] = []
        self.status: dict[str, str] = {}  # the generator's own rough view of each job
        self.worker_of: dict[str, Any] = {}
        # workers the reducer has certainly created by now (JobStarted only names these:
        # see test_job_started_on_a_finished_boundary_job_creates_no_worker)
        self.known_workers: set[str] = set()
        self.pending_retry: list[str] = []
        self.pool: list[str] = list(_ODD_JOBS)  # job ids so far, oldest first
        self.count = 0

    def job(self) -> str:
        """A job: mostly a recent one, sometimes a new one, sometimes one from long ago."""
        rng = self.rng
        r = rng.random()
        if r < 0.2 or len(self.pool) < 6:
            self.count += 1
            self.pool.append(str(self.count))
            return self.pool[-1]
        if r < 0.88:
            return rng.choice(self.pool[-10:])
        return rng.choice(self.pool)

    def future_job(self) -> str:
        """A job not seen yet (it may appear later)."""
        return str(self.count + self.rng.randint(1, 4))

    # envelopes ---------------------------------------------------------------------------
    def timestamp(self) -> Any:
        self.t += self.rng.choice([0.0, 0.001, 0.25, 0.5, 1.0, 1.37, 3.0, 0.000001])
        r = self.rng.random()
        whole, frac = divmod(self.t, 1.0)
        base = f"2026-01-01T{int(whole) // 3600:02d}:{int(whole) // 60 % 60:02d}:" \
               f"{int(whole) % 60:02d}"
        if r < 0.82:
            return f"{base}.{int(frac * 1e6):06d}Z"
        if r < 0.86:
            return f"{base}Z"
        if r < 0.88:
            return f"{base}.{int(frac * 1e9):09d}Z"  # nanoseconds
        if r < 0.90:
            return f"{base}.{int(frac * 1e6):06d}+00:00"
        return self.rng.choice(["MISSING", None, 12345, "yesterday", "2026-01-01T00:00:01Z",
                                "2025-12-31T23:59:59.5Z", "", "2026-13-45T99:99:99Z"])

    def envelope(self, kind: str, name: Any, payload: Any, corr: Any = None) -> bytes:
        self.seq += 1
        env: dict[str, Any] = {"schema_version": self.rng.choice([1] * 12 + [2, "1", None]),
                               "seq": self.seq, "event_id": f"e{self.seq}"}
        ts = self.timestamp()
        if ts != "MISSING":
            env["timestamp"] = ts
        env["correlation_id"] = corr
        env["parent_id"] = None
        env["event_name"] = {"type": kind} if name is None else {"type": kind, "name": name}
        env["payload"] = payload
        if self.rng.random() < 0.1:  # keys in another order: still an envelope
            env = dict(reversed(list(env.items())))
        text = json.dumps(env, separators=(",", ":"), ensure_ascii=self.rng.random() < 0.5)
        raw = text.encode("utf-8")
        if _FF in text:
            raw = raw.replace(_FF.encode(), b"\xff")
        return raw + b"\n"

    def emit(self, kind: str, name: Any, payload: Any, corr: Any = None) -> None:
        self.lines.append(self.envelope(kind, name, payload, corr))

    def dom(self, name: str, **payload: Any) -> None:
        self.emit("domain_event", name, payload)

    # values ------------------------------------------------------------------------------
    def ref(self, key: str) -> Any:
        """A job id as the tape may spell it: "7", 7 or 7.0 are one job."""
        if key.isdigit():
            r = self.rng.random()
            if r < 0.25:
                return int(key)
            if r < 0.32:
                return float(key)
        return key

    def text(self, prefix: str) -> str:
        r = self.rng.random()
        if r < 0.05:
            return f"{prefix} bad {_FF} byte"
        if self.long_lines and r < 0.12:
            return prefix + ": " + "x" * self.rng.choice([100, 700, 5000])
        return self.rng.choice([f"{prefix}: boom", "é ünïcode", 'q"uote\\', "tab\there"])

    def worker(self) -> str:
        return self.rng.choice(_WORKERS)

    def maybe(self, p: float, key: str, value: Any, into: dict[str, Any]) -> None:
        if self.rng.random() < p:
            into[key] = value

    # events ------------------------------------------------------------------------------
    def step(self) -> None:
        rng = self.rng
        actions: list[tuple[float, Callable[[], None]]] = [
            (10, self.lifecycle), (3, self.random_job_event), (2, self.worker_event),
            (2.5, self.ui), (1.5 * self.junk, self.junk_line),
        ]
        total = sum(w for w, _ in actions)
        x = rng.uniform(0, total)
        for w, action in actions:
            x -= w
            if x <= 0:
                action()
                return
        actions[0][1]()

    def lifecycle(self) -> None:
        rng = self.rng
        if self.pending_retry and rng.random() < 0.3:
            key = self.pending_retry.pop(rng.randrange(len(self.pending_retry)))
            p: dict[str, Any] = {"job_id": self.ref(key)}
            self.maybe(0.5, "error", self.text("retry"), p)
            self.dom("JobRetried", **p)
            if self.status.get(key) not in ("dispatched", "running"):
                self.status[key] = "queued"
            return
        key = self.job()
        st = self.status.get(key, "new")
        jid = self.ref(key)
        if st == "new" or (st in _TERMINAL and rng.random() < 0.25):
            p = {"job_id": jid}  # a (re-)queue, maybe long after the job finished
            self.maybe(0.8, "plugin_name", rng.choice(["orders", "events", "é-plugin"]), p)
            self.maybe(0.4, "plugin_version", rng.choice(["1.0", "2.0", 3]), p)
            self.maybe(0.5, "input_file", rng.choice(["a.csv", None, "b/é.csv"]), p)
            self.dom("JobQueued", **p)
            self.status[key] = "queued"
        elif st == "queued":
            wid: Any = self.worker() if rng.random() < 0.97 else 7  # a number: worker "7"
            p = {"job_id": jid, "worker_id": wid}
            self.maybe(0.3, "plugin_name", rng.choice(["orders", "events"]), p)
            self.dom("JobDispatched", **p)
            self.status[key], self.worker_of[key] = "dispatched", wid
            self.known_workers.add(str(wid))
        elif st == "dispatched" and rng.random() < 0.6:
            p = {"job_id": jid}
            self.maybe(0.8, "worker_id", self.worker_of.get(key), p)
            self.dom("JobStarted", **p)
            self.status[key] = "running"
        elif st in ("dispatched", "running") and rng.random() < 0.35:
            p = {"job_id": jid, "output_name": rng.choice(["orders", "orders_q", "é", None]),
                 "table": rng.choice(["t1", "t2", None])}
            self.maybe(0.8, "rows", rng.choice([0, 5, 100, 2**40, "many", None]), p)
            self.dom("MaterializationRecorded", **p)
        elif st in ("dispatched", "running"):
            self.finish(key, jid)
        else:  # finished, not re-queued: a late straggler event
            self.random_job_event(key)

    def finish(self, key: str, jid: Any) -> None:
        rng = self.rng
        r = rng.random()
        p: dict[str, Any] = {"job_id": jid}
        if rng.random() < 0.3:
            p["worker_id"] = rng.choice([*_WORKERS, self.worker_of.get(key)])
        self.maybe(0.6, "duration_ms", rng.choice([0, 12, 1500.5, None, "slow", True]), p)
        if r < 0.5:
            self.maybe(0.8, "rows", rng.choice([0, 7, 1000, None, 2.5, -1]), p)
            self.maybe(0.5, "outputs", rng.choice(
                [{"orders": 5}, {"orders": 5, "new_out": 2}, {}, ["orders"], None]), p)
            self.maybe(0.2, "quarantine_rows", rng.choice([0, 3, None]), p)
            self.dom("JobCompleted", **p)
            self.status[key] = "completed"
        elif r < 0.78:
            retry = rng.random() < 0.5
            p["will_retry"] = retry if rng.random() < 0.9 else "yes"
            p["error" if rng.random() < 0.7 else "message"] = self.text("failed")
            self.maybe(0.5, "error_kind", rng.choice(["Transient", "Permanent", None]), p)
            self.maybe(0.5, "retry_count", rng.choice([0, 1, 2, 5, "x"]), p)
            self.dom("JobFailed", **p)
            self.status[key] = "queued" if retry else "failed"
            if retry:
                self.pending_retry.append(key)
        elif r < 0.9:
            self.maybe(0.8, "reason", rng.choice(["cancelled", "shutdown", None]), p)
            self.dom("JobAborted", **p)
            self.status[key] = "aborted"
        else:
            self.maybe(0.8, "reason", rng.choice(["unchanged", None]), p)
            self.dom("JobSkipped", **p)
            self.status[key] = "skipped"
        self.worker_of.pop(key, None)

    def random_job_event(self, key: str | None = None) -> None:
        """Any job event for any job, whatever its state (jobs not yet seen included)."""
        rng = self.rng
        key = key if key is not None else self.job()
        jid = self.ref(key)
        name = rng.choice(["JobStarted", "CancelRequested", "JobRetried", "JobSkipped",
                           "JobAborted", "MaterializationRecorded", "JobCompleted",
                           "JobFailed", "JobDispatched", "JobQueued"])
        p: dict[str, Any] = {"job_id": jid}
        if name == "JobStarted":
            if self.known_workers and rng.random() < 0.5:
                p["worker_id"] = rng.choice(sorted(self.known_workers))
        elif name == "JobDispatched":
            p["worker_id"] = self.worker()
            self.known_workers.add(p["worker_id"])
        elif name == "MaterializationRecorded":
            p.update(output_name=rng.choice(["orders", "late"]), rows=rng.choice([1, 0, None]))
        elif name in ("JobFailed", "JobRetried"):
            p["error"] = self.text("late")
            self.maybe(0.5, "will_retry", rng.choice([True, False]), p)
        elif name in ("JobCompleted", "JobAborted"):
            self.maybe(0.5, "duration_ms", rng.choice([3, 4.5]), p)
            self.maybe(0.5, "rows", 9, p)
        self.dom(name, **p)
        self.status[key] = {"JobStarted": self.status.get(key, "new"),
                            "CancelRequested": self.status.get(key, "queued"),
                            "MaterializationRecorded": self.status.get(key, "queued"),
                            "JobSkipped": "skipped", "JobAborted": "aborted",
                            "JobCompleted": "completed", "JobFailed": "failed",
                            "JobRetried": "queued", "JobDispatched": "dispatched",
                            "JobQueued": "queued"}[name]
        if self.status[key] == "new":
            self.status[key] = "queued"

    def requeued_ids(self) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.12:  # not a list: ignored
            return rng.choice(["3", 3, {"job_id": "3"}, None, True, "MISSING"])
        ids: list[Any] = []
        for _ in range(rng.randint(0, 5)):
            q = rng.random()
            if q < 0.45 and self.worker_of:  # a job in flight on some worker
                ids.append(self.ref(rng.choice(sorted(self.worker_of))))
            elif q < 0.7:  # any job: finished, before the cut...
                ids.append(self.ref(rng.choice(self.pool)))
            elif q < 0.85:  # or not yet seen
                ids.append(self.ref(self.future_job()))
            else:
                ids.append(rng.choice([None, True, 7.5, [1], {"a": 1}, "nope", 99]))
        if ids and rng.random() < 0.3:
            ids.append(ids[0])  # a duplicate
        return ids

    def worker_event(self) -> None:
        rng = self.rng
        wid: Any = self.worker() if rng.random() < 0.93 else rng.choice([7, None])
        if rng.random() < 0.4:
            p: dict[str, Any] = {"worker_id": wid}
            self.maybe(0.7, "slots", rng.choice([1, 2, 4, "2", None]), p)
            self.maybe(0.5, "pid", rng.choice([1234, 99, "x"]), p)
            self.maybe(0.1, "job_id", self.ref(self.job()), p)  # not a job event
            self.dom("WorkerJoined", **p)
        else:
            ids = self.requeued_ids()
            p = {"worker_id": wid}
            if ids != "MISSING":
                p["requeued_job_ids"] = ids
            self.dom(rng.choice(["WorkerLost", "WorkerLeft"]), **p)
            for raw in ids if isinstance(ids, list) else ():
                key = raw if isinstance(raw, str) else (
                    str(int(raw)) if isinstance(raw, (int, float)) and not isinstance(raw, bool)
                    and float(raw).is_integer() else None)
                if key is not None and self.status.get(key) in ("dispatched", "running"):
                    self.status[key] = "queued"
                    self.worker_of.pop(key, None)
        if isinstance(wid, str):
            self.known_workers.add(wid)
        elif wid is not None:
            self.known_workers.add(str(wid))

    def ui(self) -> None:
        rng = self.rng
        corr: Any = rng.choice([*_CORRS, None, 5])
        r = rng.random()
        if r < 0.4:
            name: Any = rng.choice(["Submit", "Cancel", "Query", "Wait", f"Odd{_FF}", ["L"]])
            self.emit("ui_command", name, {"plugin": "orders.py"}, corr)
        elif r < 0.75:
            name = rng.choice(["CommandSucceeded", "QueryResult", "SubmitError", "Accepted",
                               None])
            p: dict[str, Any] = {}
            self.maybe(0.3, "status", rng.choice(["done", "queued", None]), p)
            self.maybe(0.2, "message", self.text("note"), p)
            self.emit("system_response", name, p if rng.random() < 0.9 else None, corr)
        else:
            p = {}
            self.maybe(0.6, "error", self.text("cmd"), p)
            self.maybe(0.5, "message", "see logs", p)
            self.emit("error_event", rng.choice(["CommandFailed", "Crash"]), p, corr)

    def junk_line(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            self.lines.append(rng.choice([b"\n", b"   \n", b"\t\n", b"\r\n", b" \t \n"]))
        elif r < 0.32:  # valid JSON, not an envelope
            self.lines.append(rng.choice([b"{}\n", b"[1]\n", b'{"event_name": null}\n',
                                          b"1\n", b'"x"\n', b"null\n",
                                          b'{"event_name": "JobQueued"}\n']))
        elif r < 0.47:  # not JSON, or a value over two lines (see _scan on two per line)
            two = self.envelope("domain_event", "JobQueued", {"job_id": "77"})
            self.lines.append(rng.choice([b"not json\n", b"garbage}\n", b"}{\n",
                                          b"@@@\n", b"\x00\x01\n", b"\xff\xfe bad\n",
                                          b" \r \n",
                                          two.replace(b',"event_name"', b',\n"event_name"')]))
        elif r < 0.55:  # a line cut off mid-string (a crash-restart), then the tape goes on
            whole = self.envelope("domain_event", "JobQueued", {"job_id": "1"})
            self.lines.append(whole[: whole.index(b'"event_id":"e') + 13] + b"\n")
        elif r < 0.63:
            self.emit(rng.choice(["tape_started", "tape_stopped"]), None, {"producer": "x"})
        elif r < 0.71:  # unknown or nameless domain events, odd payloads
            name = rng.choice(["Heartbeat", None, "JobQueued", "JobCompleted", [1]])
            payload = rng.choice([{"job_id": "3"}, None, [1], "x", {"job_id": None},
                                  {"job_id": True}, {"job_id": 2.5}, {"job_id": [1]}, {}])
            self.emit("domain_event", name, payload)
        elif r < 0.76:
            self.emit(rng.choice(["mystery", "domain_event"]), rng.choice(["x", "y"]), {})
        elif r < 0.82:  # a valid event with a non-UTF-8 byte in a string
            self.dom("JobFailed", job_id=self.ref(self.job()),
                     error=f"bad {_FF} byte")
        elif r < 0.87:  # NaN / infinity: only json (line by line) reads these
            self.lines.append(b'{"schema_version":1,"timestamp":"2026-01-01T00:00:09Z",'
                              b'"event_name":{"type":"domain_event","name":"JobCompleted"},'
                              b'"payload":{"job_id":"2","duration_ms":NaN,"rows":Infinity}}\n')
        else:  # a job event whose id cannot be a job: ignored
            self.dom(rng.choice(["JobQueued", "JobDispatched", "JobStarted"]),
                     job_id=rng.choice([None, True, 2.5, [1], {"x": 1}]), worker_id="w1")

    def build(self, n: int, *, ending: str | None = None) -> bytes:
        rng = self.rng
        if rng.random() < 0.6:
            self.emit("tape_started", None, {"producer": "gen"})
        while len(self.lines) < n:
            self.step()
        ending = ending or rng.choice(["plain"] * 5 + ["truncated"] * 3 + ["no-newline"] * 2)
        if ending == "truncated":  # a crash mid-write: the last line is cut, no newline
            whole = self.envelope("domain_event", "JobCompleted", {"job_id": "1", "rows": 1})
            self.lines.append(whole[: rng.randrange(1, len(whole) - 2)])
        elif ending == "no-newline":  # a complete last event without its newline
            self.lines.append(self.envelope("domain_event", "JobQueued",
                                            {"job_id": self.ref(self.job())})[:-1])
        return b"".join(self.lines)


def make_tape(seed: int, n: int, **kw: Any) -> bytes:
    rng = random.Random(seed)
    ending = kw.pop("ending", None)
    return TapeGen(rng, **kw).build(n, ending=ending)


# -- fixtures and runners --------------------------------------------------------------------
@pytest.fixture
def block(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def set_block(size: int) -> None:
        monkeypatch.setattr(_scan, "_BLOCK", size)
    return set_block


def serial_or_error(path: Path) -> Explanation | TapeError:
    try:
        return explain_tape(path)
    except TapeError as exc:
        return exc


def check_cut(path: Path, serial: Explanation | TapeError, cut: int, fmt: str,
              where: str, *, fork: bool = False) -> None:
    if isinstance(serial, TapeError):
        with pytest.raises(TapeError):
            explain_split(path, fmt, split_at=cut, fork=fork)
        return
    merged = explain_split(path, fmt, split_at=cut, fork=fork)
    assert isinstance(merged, MergedExplanation), f"{where}: not split"
    assert_same(serial, merged, fmt, where)
    if fmt == "json":
        assert_same_to_json(serial, merged, where)


class Coverage:
    """What the merges saw (so a generator that stops producing boundary jobs fails)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.boundary = self.lost = self.unmatched = self.merges = 0
        real = _split.merge

        def spy(first: Segment, story: dict[str, Any], fetch: Any, fmt: str) -> Any:
            self.merges += 1
            self.boundary += bool(story["boundary"])
            self.lost += any(e[0] is None for ev in story["boundary"].values() for e in ev)
            self.unmatched += bool(story["unmatched"])
            return real(first, story, fetch, fmt)

        monkeypatch.setattr(_split, "merge", spy)


def no_children_left(before: set[int]) -> None:
    kids = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not kids, f"child processes left behind: {kids}"
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    assert pid == 0 or pid in before, f"an unreaped child {pid}"


def my_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# -- the generator itself --------------------------------------------------------------------
def test_generated_tapes_explain_the_same_whatever_the_block_size(
        tmp_path: Path, block: Callable[[int], None]) -> None:
    """The serial reference must not depend on how the file is read in blocks (else a
    split, whose blocks start elsewhere, could not match it), even with lines the two paths
    could read differently (a value over two lines, a bare CR). Not two values on one line
    together with blank lines in one block: see ``_scan._fast_block``."""
    for seed in range(12):
        path = tmp_path / f"t{seed}.tape"
        path.write_bytes(make_tape(seed, 150))
        block(DEFAULT_BLOCK)
        ref = serial_or_error(path)
        for size in (64, 300, 4096):
            block(size)
            other = serial_or_error(path)
            assert type(other) is type(ref)
            if isinstance(ref, Explanation):
                assert isinstance(other, Explanation)
                assert render_json(other) == render_json(ref), (seed, size)
                assert other.to_text() == ref.to_text(), (seed, size)


def test_generated_tapes_are_adversarial() -> None:
    """The generator produces what the tests claim to cover."""
    data = b"".join(make_tape(seed, 300) for seed in range(30))
    for needle in (b'"requeued_job_ids":[', b'"will_retry":true', b'"JobRetried"',
                   b'"CancelRequested"', b'"JobAborted"', b'"JobSkipped"', b'"ui_command"',
                   b'"error_event"', b'"system_response"', b"\xff", b"not json", b"[1]\n",
                   b'"WorkerJoined"', b'"job_id":7', b'"job_id":7.0', b'"duration_ms"',
                   b'"outputs":{', b"\n\n", b"\r\n"):
        assert needle in data, needle


# -- cut everywhere (fork=False: both parts in this process) -------------------------------
SMALL_SEEDS = range(100, 180)


@pytest.mark.parametrize("seed", SMALL_SEEDS)
def test_small_tapes_cut_at_every_line(tmp_path: Path, block: Callable[[int], None],
                                       monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    # junk 0: every block decodes whole (msgspec); 3: most blocks go line by line (json)
    data = make_tape(seed, rng.randint(20, 70), long_lines=seed % 3 == 0,
                     junk=(1.0, 0.0, 0.3, 3.0)[seed % 4])
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = serial_or_error(path)
    cuts = line_starts(data)
    assert cuts
    cov = Coverage(monkeypatch)
    sizes = [DEFAULT_BLOCK, rng.choice([64, 300, 4096])]
    for size in sizes:
        block(size)
        for cut in cuts:
            for fmt in ("json", "text"):
                check_cut(path, serial, cut, fmt, f"seed {seed} block {size} cut {cut}")
        # a cut in the middle of a line moves to the next line start
        for cut in rng.sample(range(1, len(data)), min(5, len(data) - 1)):
            if cut in cuts or not any(c > cut for c in cuts):
                continue
            check_cut(path, serial, cut, "json", f"seed {seed} block {size} mid-line {cut}")
    if isinstance(serial, Explanation):
        assert cov.merges


def test_small_tapes_exercise_boundary_jobs_and_lost_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cuts above do reach the hard parts: jobs in both parts, requeues by a lost
    worker replayed on them, responses whose command is in the first part."""
    cov = Coverage(monkeypatch)
    for seed in list(SMALL_SEEDS)[:10]:
        data = make_tape(seed, random.Random(seed).randint(20, 70))
        path = tmp_path / f"{seed}.tape"
        path.write_bytes(data)
        for cut in line_starts(data):
            try:
                explain_split(path, "json", split_at=cut, fork=False)
            except TapeError:
                pass
    assert cov.merges > 100
    assert cov.boundary > cov.merges // 2
    assert cov.lost > 10
    assert cov.unmatched > 10


@pytest.mark.parametrize("seed", range(200, 204))
def test_big_tapes_cut_at_random_points(tmp_path: Path, block: Callable[[int], None],
                                        seed: int) -> None:
    rng = random.Random(seed)
    data = make_tape(seed, 2500, junk=0.5 if seed % 2 else 1.0)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    assert serial.summary()["total"] >= 10
    cuts = line_starts(data)
    for size in (DEFAULT_BLOCK, 4096, 300):
        block(size)
        for cut in rng.sample(cuts, 8):
            for fmt in ("json", "text"):
                check_cut(path, serial, cut, fmt, f"seed {seed} block {size} cut {cut}")


def test_more_than_a_hundred_skipped_lines_on_both_sides(
        tmp_path: Path, block: Callable[[int], None]) -> None:
    """Only the first 100 skipped line numbers are listed; the count is all of them."""
    rng = random.Random(7)
    gen = TapeGen(rng, long_lines=False)
    for i in range(400):
        gen.step()
        if i % 2:
            gen.lines.append(b"not json\n")
    data = gen.build(0, ending="truncated")
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    assert serial.skipped_count > 150 and len(serial.skipped_lines) == 100
    cuts = line_starts(data)
    for size in (DEFAULT_BLOCK, 300):
        block(size)
        for cut in [cuts[0], cuts[1], *rng.sample(cuts, 25), cuts[-2], cuts[-1]]:
            for fmt in ("json", "text"):
                check_cut(path, serial, cut, fmt, f"block {size} cut {cut}")


@pytest.mark.parametrize("content", [
    b"not json\n{}\n[1]\n\ngarbage\n",  # lines, none an event
    b"{}\n\n   \n[1]\nnot json\n{\"event_name\": null}\nbad",
    b"\xff\n{}\nnull\n",
])
def test_no_event_at_all_is_a_tape_error_at_every_cut(
        tmp_path: Path, block: Callable[[int], None], content: bytes) -> None:
    path = tmp_path / "t.tape"
    path.write_bytes(content)
    with pytest.raises(TapeError):
        explain_tape(path)
    for size in (DEFAULT_BLOCK, 64):
        block(size)
        for cut in line_starts(content):
            with pytest.raises(TapeError):
                explain_split(path, "json", split_at=cut, fork=False)
            with pytest.raises(TapeError):
                explain_split(path, "text", split_at=cut, fork=False)


@pytest.mark.parametrize("content", [
    b"\n\n\n",  # blank lines only: empty, not an error
    b"garbage",  # one truncated line: not an error either
    b"\n\ngarbage",
    b"{}\n\n",
])
def test_no_event_edge_cases_agree(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.tape"
    path.write_bytes(content)
    serial = serial_or_error(path)
    for cut in line_starts(content):
        for fmt in ("json", "text"):
            check_cut(path, serial, cut, fmt, f"cut {cut}")


def test_cuts_that_cannot_split_fall_back_to_serial(tmp_path: Path) -> None:
    data = make_tape(5, 30, ending="truncated")
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    last_start = data.rindex(b"\n") + 1
    for cut in (0, -5, last_start + 1, len(data), len(data) + 100):
        ex = explain_split(path, "json", split_at=cut, fork=False)
        assert not isinstance(ex, MergedExplanation), cut
        assert render_json(ex) == render_json(serial)
    small = explain_split(path, "json", fork=False)  # below min_bytes: serial
    assert not isinstance(small, MergedExplanation)


# -- hand-made boundary stories ------------------------------------------------------------
def env(seq: int, kind: str, name: str | None, payload: Any, *, corr: Any = None,
        ts: Any = "default") -> bytes:
    event_name = {"type": kind} if name is None else {"type": kind, "name": name}
    stamp = f"2026-01-01T00:00:{seq:02d}.250000Z" if ts == "default" else ts
    return (json.dumps({"schema_version": 1, "seq": seq, "event_id": f"e{seq}",
                        "timestamp": stamp, "correlation_id": corr, "parent_id": None,
                        "event_name": event_name, "payload": payload},
                       separators=(",", ":")) + "\n").encode()


def dom(seq: int, name: str, **payload: Any) -> bytes:
    return env(seq, "domain_event", name, payload)


def check_every_cut(tmp_path: Path, lines: list[bytes], name: str = "t.tape") -> Explanation:
    data = b"".join(lines)
    path = tmp_path / name
    path.write_bytes(data)
    serial = explain_tape(path)
    for size in (DEFAULT_BLOCK, 64):
        _scan._BLOCK = size
        try:
            for cut in line_starts(data):
                for fmt in ("json", "text"):
                    check_cut(path, serial, cut, fmt, f"block {size} cut {cut}")
        finally:
            _scan._BLOCK = DEFAULT_BLOCK
    return serial


def test_a_lost_workers_requeue_across_the_cut(tmp_path: Path) -> None:
    lines = [
        dom(1, "JobQueued", job_id="1", plugin_name="p"),
        dom(2, "JobDispatched", job_id=1, worker_id="w1"),
        dom(3, "JobQueued", job_id="2"),
        dom(4, "JobDispatched", job_id="2", worker_id="w2"),
        dom(5, "JobStarted", job_id="2", worker_id="w2"),
        # names: 1 (int, before the cut), 2 twice, 3 (not seen yet), junk
        dom(6, "WorkerLost", worker_id="w1", requeued_job_ids=[1, "2", 2.0, "3", None, [1]]),
        dom(7, "JobQueued", job_id=3),
        dom(8, "JobDispatched", job_id="3", worker_id="w1"),
        dom(9, "WorkerJoined", worker_id="w1", slots=2, pid=5),
        dom(10, "JobDispatched", job_id="1", worker_id="w1"),
        dom(11, "WorkerLeft", worker_id="w2", requeued_job_ids="1"),  # not a list
        dom(12, "JobCompleted", job_id="1", rows=4, outputs={"o": 4}),
        dom(13, "WorkerLost", worker_id="w1", requeued_job_ids=[3, 1]),
        dom(14, "JobQueued", job_id="1"),  # re-queued after it finished
        dom(15, "JobDispatched", job_id="1", worker_id="w2"),
    ]
    data = check_every_cut(tmp_path, lines)
    jobs = {j["job_id"]: j for j in data.to_json()["jobs"]}
    assert [jobs[k]["status"] for k in "123"] == ["dispatched", "queued", "queued"]


def test_commands_and_responses_across_the_cut(tmp_path: Path) -> None:
    lines = [
        env(1, "system_response", "CommandSucceeded", {}, corr="c1"),  # before its command
        env(2, "ui_command", "Submit", {}, corr="c1"),
        env(3, "ui_command", "Cancel", {}, corr="c2"),
        env(4, "ui_command", "Query", {}, corr=7),  # not a string: never matched
        env(5, "error_event", "CommandFailed", {"error": "nope"}, corr="c2"),
        env(6, "system_response", "QueryResult", {"status": "done"}, corr=7),
        env(7, "system_response", "CommandSucceeded", {}, corr="c9"),  # no command
        env(8, "system_response", "CommandSucceeded", {}, corr="c2"),  # after the failure
        env(9, "ui_command", "Submit", {}, corr="c1"),  # the same id again
        env(10, "system_response", "Accepted", None, corr="c1"),
        env(11, "error_event", "Crash", {"message": "m"}, corr=None),
        env(12, "system_response", "SubmitError", {"message": "x"}, corr="c1"),
        env(13, "system_response", "CommandSucceeded", {"status": "fine"}, corr="c2"),
    ]
    serial = check_every_cut(tmp_path, lines)
    assert [c[1] for c in serial.commands] == ["pending", "fine", "pending", "failed"]


def test_in_flight_retried_cancelled_jobs_straddle_every_cut(tmp_path: Path) -> None:
    lines = [
        env(0, "tape_started", None, {}),
        dom(1, "JobQueued", job_id="a", plugin_name="p", input_file="x.csv"),
        dom(2, "JobDispatched", job_id="a", worker_id="w1"),
        dom(3, "JobStarted", job_id="a", worker_id="w1"),
        dom(4, "MaterializationRecorded", job_id="a", output_name="o1", rows=3),
        dom(5, "JobFailed", job_id="a", will_retry=True, error="flaky", retry_count=1),
        dom(6, "JobRetried", job_id="a"),
        dom(7, "CancelRequested", job_id="b"),
        dom(8, "JobDispatched", job_id="a", worker_id="w2"),
        dom(9, "MaterializationRecorded", job_id="a", output_name="o2", rows=5),
        dom(10, "JobCompleted", job_id="a", outputs={"o1": 3, "o3": 1}),
        dom(11, "JobAborted", job_id="b", reason="cancelled", duration_ms=5),
        dom(12, "JobSkipped", job_id="c", reason="unchanged"),
        dom(13, "JobDispatched", job_id="d", worker_id="w1"),  # dispatched, never queued
        dom(14, "JobDispatched", job_id="d", worker_id="w2"),  # again: the run is over
        dom(15, "JobQueued", job_id="a"),
    ]
    check_every_cut(tmp_path, lines)


def test_a_first_part_without_events(tmp_path: Path) -> None:
    """started_at comes from the second part when the first holds no event."""
    lines = [b"{}\n", b"\n", b"not json\n", b"[1]\n",
             dom(1, "JobQueued", job_id="1"), b"garbage\n",
             dom(2, "JobDispatched", job_id="1", worker_id="w")]
    serial = check_every_cut(tmp_path, lines)
    assert serial.started_at == "2026-01-01T00:00:01.250000Z"


def test_odd_timestamps_and_truncation_at_the_end(tmp_path: Path) -> None:
    lines = [
        env(1, "domain_event", "JobQueued", {"job_id": "1"}, ts=None),
        env(2, "domain_event", "JobDispatched", {"job_id": "1", "worker_id": "w"},
            ts="2026-01-01T00:00:02.123456789Z"),
        env(3, "domain_event", "JobDispatched", {"job_id": "2", "worker_id": "w"}, ts=5),
        b"not json\n",
        env(4, "domain_event", "JobCompleted", {"job_id": "1"}, ts="2026-01-01T00:00:01Z"),
        env(5, "domain_event", "JobDispatched", {"job_id": "3", "worker_id": "v"},
            ts="2026-01-01T01:00:00+01:00"),
        b'{"schema_version":1,"timestamp":"2026-01-01T00:00:09Z","event_name":{"typ',
    ]
    serial = check_every_cut(tmp_path, lines)
    assert serial.truncated == 7


# -- fork=True: a real child process -------------------------------------------------------
def test_fork_split_equals_serial(tmp_path: Path, block: Callable[[int], None]) -> None:
    data = make_tape(300, 1500)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    before = my_children()
    rng = random.Random(300)
    cuts = line_starts(data)
    for size in (DEFAULT_BLOCK, 300):
        block(size)
        for cut in rng.sample(cuts, 3):
            for fmt in ("json", "text"):
                check_cut(path, serial, cut, fmt, f"fork cut {cut}", fork=True)
                no_children_left(before)


def test_fork_default_split_point_on_a_big_enough_tape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No split_at: the middle, when the tape is at least min_bytes (and we can fork)."""
    data = make_tape(301, 800)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    cov = Coverage(monkeypatch)
    before = my_children()
    for fmt in ("json", "text"):
        ex = explain_split(path, fmt, min_bytes=len(data))
        assert_same(serial, ex, fmt, fmt)
    no_children_left(before)
    if hasattr(os, "fork") and (os.cpu_count() or 1) >= 2:
        assert cov.merges == 2
    ex = explain_split(path, "json", min_bytes=len(data) + 1)  # too small to split
    assert not isinstance(ex, MergedExplanation)


def _in_child_only(real: Callable[..., Any], failure: Callable[[], Any]) -> Callable[..., Any]:
    parent = os.getpid()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            failure()
        return real(*args, **kwargs)
    return wrapper


def _raise() -> None:
    raise ValueError("the child broke")


def _die() -> None:
    os._exit(3)  # the child vanishes without a word


@pytest.mark.parametrize(("method", "failure"), [
    ("scan", _raise), ("story", _raise), ("story", _die), ("jobs", _raise), ("jobs", _die),
    ("candidates", _die),
])
def test_a_failing_child_is_replaced_by_this_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
        failure: Callable[[], None]) -> None:
    """Whatever stage the child fails at, the parent explains the second part itself: the
    same result, and no child process left behind."""
    data = make_tape(302, 600)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    monkeypatch.setattr(Segment, method,
                        _in_child_only(getattr(Segment, method), failure))
    before = my_children()
    cuts = line_starts(data)
    for cut in (cuts[len(cuts) // 3], cuts[len(cuts) // 2]):
        for fmt in ("json", "text"):
            check_cut(path, serial, cut, fmt, f"{method} cut {cut}", fork=True)
            no_children_left(before)


def test_fork_on_a_tape_without_events_raises_and_reaps(tmp_path: Path) -> None:
    path = tmp_path / "t.tape"
    path.write_bytes(b"not json\n{}\n" * 50)
    before = my_children()
    for cut in (9, 300):
        with pytest.raises(TapeError):
            explain_split(path, "json", split_at=cut, fork=True)
        no_children_left(before)


# -- the CLI -------------------------------------------------------------------------------
def test_explain_command_splits_a_big_tape_and_prints_the_serial_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_tape(400, 1200)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    defaults = explain_split.__kwdefaults__
    assert defaults is not None and defaults["min_bytes"] == _split.SPLIT_MIN_BYTES
    monkeypatch.setitem(defaults, "min_bytes", 1024)
    cov = Coverage(monkeypatch)
    before = my_children()
    for fmt in ("json", "text"):
        out = io.StringIO()
        assert explain_command(path, fmt, stdout=out) == 0
        if fmt == "json":
            assert_same_json(render_json(serial), out.getvalue(), "cli json")
        else:
            assert_same_text(serial.to_text(), out.getvalue(), "cli text")
    no_children_left(before)
    if hasattr(os, "fork") and (os.cpu_count() or 1) >= 2:
        assert cov.merges == 2


_CLI = """
import sys
from casparian_nb.tape import _split
from casparian_nb.tape.cli import main
if sys.argv[1] == "split":
    _split.explain_split.__kwdefaults__["min_bytes"] = 1024
    real = _split.merge
    def merge(*a, **k):
        print("MERGED", file=sys.stderr)
        return real(*a, **k)
    _split.merge = merge
raise SystemExit(main(sys.argv[2:]))
"""


def _run_cli(mode: str, path: Path, fmt: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", _CLI, mode, "explain", str(path), "--format",
                           fmt], capture_output=True, cwd=ROOT, timeout=60, check=False)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_python_m_cli_split_output_equals_serial(tmp_path: Path, fmt: str) -> None:
    """The real ``main()`` writing to a real stdout, split in a fresh process, prints what
    ``python -m casparian_nb.tape explain`` (serial: the tape is below min_bytes) prints."""
    data = make_tape(401, 1500)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = subprocess.run([sys.executable, "-m", "casparian_nb.tape", "explain", str(path),
                             "--format", fmt], capture_output=True, cwd=ROOT, timeout=60,
                            check=False)
    split = _run_cli("split", path, fmt)
    assert serial.returncode == 0 and split.returncode == 0, split.stderr
    if (os.cpu_count() or 1) >= 2:
        assert b"MERGED" in split.stderr
    a = serial.stdout.decode("utf-8", "surrogateescape")
    b = split.stdout.decode("utf-8", "surrogateescape")
    if fmt == "json":
        assert_same_json(a, b, "python -m")
    else:
        assert_same_text(a, b, "python -m")


# -- cases these tests found (fixed), as minimal reproductions ----------------------------
def test_a_late_start_of_a_finished_boundary_job_names_its_worker(tmp_path: Path) -> None:
    """JobStarted after the job finished does not resurrect it, but the worker it names is
    a worker of the tape whatever the job's state (the child of a split cannot know that
    state): serial and split both list it, in the same place."""
    lines = [
        dom(1, "JobQueued", job_id="1"),
        dom(2, "JobDispatched", job_id="1", worker_id="w1"),
        dom(3, "JobCompleted", job_id="1"),
        dom(4, "JobStarted", job_id="1", worker_id="w9"),  # late: the job stays completed
    ]
    path = tmp_path / "t.tape"
    path.write_bytes(b"".join(lines))
    serial = explain_tape(path)
    merged = explain_split(path, "json", split_at=len(b"".join(lines[:3])), fork=False)
    for ex in (serial, merged):
        assert [w["worker_id"] for w in ex.workers()] == ["w1", "w9"]
        assert ex.to_json()["jobs"][0]["status"] == "completed"
    check_every_cut(tmp_path, lines)


def test_a_late_start_of_a_finished_job_keeps_worker_order(tmp_path: Path) -> None:
    lines = [
        dom(1, "JobQueued", job_id="1"),
        dom(2, "JobCompleted", job_id="1"),
        dom(3, "JobStarted", job_id="1", worker_id="w9"),  # names w9 first
        dom(4, "JobDispatched", job_id="2", worker_id="w8"),
        dom(5, "JobDispatched", job_id="3", worker_id="w9"),
    ]
    check_every_cut(tmp_path, lines)


def _two_paths(tmp_path: Path, lines: list[bytes], bad_at: int) -> None:
    """Serial vs a split placing the spoiling bad line (``bad_at``) in the other part."""
    data = b"".join(lines)
    path = tmp_path / "t.tape"
    path.write_bytes(data)
    serial = explain_tape(path)
    cut = len(b"".join(lines[: bad_at + 1]))
    for fmt in ("json", "text"):
        check_cut(path, serial, cut, fmt, f"cut {cut}")


def test_two_objects_on_one_line(tmp_path: Path) -> None:
    """msgspec would read '{..}{..}' as two events, json as one bad line: a block holding
    one goes line by line, so the answer does not depend on the cut or the block."""
    two = dom(2, "JobQueued", job_id="1")[:-1] + dom(3, "JobQueued", job_id="2")
    _two_paths(tmp_path, [dom(1, "JobQueued", job_id="0"), b"not json\n", two,
                          dom(4, "JobQueued", job_id="3")], 1)


def test_a_value_over_two_lines(tmp_path: Path) -> None:
    """msgspec would read one event where json reads two bad lines: the same rule applies."""
    spread = dom(2, "JobQueued", job_id="1").replace(b',"event_name"', b',\n"event_name"')
    _two_paths(tmp_path, [dom(1, "JobQueued", job_id="0"), b"not json\n", spread,
                          dom(4, "JobQueued", job_id="3")], 1)
    assert [j["job_id"] for j in explain_tape(tmp_path / "t.tape").to_json()["jobs"]] == [
        "0", "3"]


def test_a_bare_carriage_return_inside_a_line(tmp_path: Path) -> None:
    """A bare CR is whitespace inside a line on both paths (only a newline ends a line)."""
    _two_paths(tmp_path, [dom(1, "JobQueued", job_id="0"), b"not json\n", b" \r \n",
                          dom(2, "JobQueued", job_id="2"), b"{}\n",
                          dom(3, "JobQueued", job_id="3")], 1)

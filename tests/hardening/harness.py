"""Shared machinery of the hardening tests: trial counts, the invariant audit, a process
tracker that finds orphans, and the results table (printed by ``make hardening``).

Every fault-matrix trial ends in :func:`audit`, which counts — from the state DB, the sink on
disk and the sentinel's own tapes — jobs lost, jobs completed twice, partial or stray outputs
and (with :class:`ProcessTracker`) orphan processes. :func:`record` keeps the counts for the
table; the tests assert they are all zero.

Knobs (read once at import, before the suite's env isolation runs):

* ``CASPARIAN_HARDENING_TRIALS`` — trials per fault scenario (default 2; ``make hardening`` 10);
* ``CASPARIAN_FUZZ_MESSAGES`` — hostile messages the fuzzer sends at least (default 2000);
* ``CASPARIAN_HARDENING_RESULTS`` — a file to append each result to as a JSON line.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from casparian_nb.config import Settings
from casparian_nb.sinks import job_hash16
from casparian_nb.store import StateReader
from tests.conftest import wait_until

TRIALS = max(1, int(os.environ.get("CASPARIAN_HARDENING_TRIALS", "2")))
FUZZ_MESSAGES = max(1, int(os.environ.get("CASPARIAN_FUZZ_MESSAGES", "2000")))
RESULTS_FILE = os.environ.get("CASPARIAN_HARDENING_RESULTS", "")

#: Quick failure detection (heartbeats 5/s, a silent worker is lost after 2 s).
FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "worker_timeout": 2.0, "retry_backoff": 0.05}
FINAL = {"COMPLETED", "FAILED", "ABORTED", "SKIPPED"}
ROOT = Path(__file__).resolve().parent.parent.parent
HOSTILE_PLUGIN = ROOT / "tests" / "hardening" / "plugins" / "hostile_plugin.py"
#: A promoted file: ``<output>_<16 hex>.parquet`` (anything else in a sink dir is a stray).
FINAL_FILE = re.compile(r"^(?P<output>[a-z][a-z0-9_]*)_(?P<hash>[0-9a-f]{16})\.parquet$")


# -- reading the state DB ------------------------------------------------------------------

def jobs_by_id(settings: Settings, ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    with StateReader.open(settings.state_db) as r:
        rows = r.list_jobs(limit=1_000_000)
    wanted = None if ids is None else set(ids)
    return {int(j["id"]): j for j in rows if wanted is None or int(j["id"]) in wanted}


def materializations(settings: Settings) -> list[dict[str, Any]]:
    with StateReader.open(settings.state_db) as r:
        return r.list_materializations(limit=1_000_000)


def wait_final(settings: Settings, ids: Iterable[int], timeout: float = 40.0) -> dict[int, dict[str, Any]]:
    """Poll the state DB until every job in ``ids`` is final; rows of those that are (the
    audit counts the rest as lost rather than failing here)."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    rows: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            rows = jobs_by_id(settings, ids)
        except Exception:  # the DB may be mid-restart (a refused open): try again
            time.sleep(0.05)
            continue
        if len(rows) == len(ids) and all(r["status"] in FINAL for r in rows.values()):
            break
        time.sleep(0.05)
    return rows


def wait_job(settings: Settings, job_id: int, pred: Any, timeout: float = 30.0,
             message: str = "job state") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = jobs_by_id(settings, [job_id]).get(job_id)
        return job if job is not None and pred(job) else None

    found: dict[str, Any] = wait_until(check, timeout, interval=0.01, message=message)
    return found


# -- orphan processes ----------------------------------------------------------------------

class ProcessTracker:
    """Remembers every process this test process starts from now on, directly or not
    (sampled every 50 ms), so that processes re-parented away from us — a plugin host whose
    worker was killed — can still be found. ``orphans()`` lists those alive but no longer
    ours. Children that existed before (another suite's session server) are never touched."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)
        self._me = psutil.Process()
        self._before: set[tuple[int, float]] = set()
        for p in self._me.children(recursive=True):
            try:
                self._before.add((p.pid, p.create_time()))
            except psutil.Error:
                pass
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hardening-tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        try:
            kids = self._me.children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            for p in kids:
                try:
                    created = p.create_time()
                except psutil.Error:
                    continue
                if (p.pid, created) not in self._before:
                    self.seen.setdefault(p.pid, created)

    def _alive(self) -> list[psutil.Process]:
        out = []
        with self._lock:
            items = list(self.seen.items())
        for pid, created in items:
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def orphans(self) -> list[int]:
        """Tracked processes still alive whose ancestry no longer includes this process."""
        self.sample()
        found = []
        for p in self._alive():
            try:
                if self._me.pid not in {q.pid for q in p.parents()}:
                    found.append(p.pid)
            except psutil.Error:
                pass
        return found

    def alive(self, pids: Iterable[int]) -> list[int]:
        wanted = set(pids)
        return [p.pid for p in self._alive() if p.pid in wanted]

    def wait_gone(self, pids: Iterable[int], timeout: float) -> list[int]:
        """Wait for ``pids`` to exit; return (and then kill) those that did not."""
        pids = list(pids)
        deadline = time.monotonic() + timeout
        left = self.alive(pids)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.alive(pids)
        _kill(left)
        return left

    def wait_no_orphans(self, timeout: float = 10.0) -> list[int]:
        """Give orphans ``timeout`` seconds to notice and exit; return (and kill) the rest."""
        deadline = time.monotonic() + timeout
        left = self.orphans()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.orphans()
        _kill(left)
        return left

    def leftovers(self, timeout: float = 10.0) -> list[int]:
        """Every tracked process still alive ``timeout`` seconds from now (call after
        stopping everything); they are killed."""
        self.sample()
        with self._lock:
            pids = list(self.seen)
        return self.wait_gone(pids, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def pids_of(cluster: Any) -> list[int]:
    """The sentinel, workers and plugin hosts of a LocalCluster right now."""
    pids = list(cluster.pids)
    for pid in list(pids):
        try:
            pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            pass
    return pids


# -- the audit -----------------------------------------------------------------------------

@dataclass
class Audit:
    """What one trial did to its jobs. Every list should be empty."""

    jobs: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    #: Jobs that ended in another final state than the scenario expects (not F8 violations
    #: by themselves — a retry budget may run out — but the test asserts none).
    unexpected: list[str] = field(default_factory=list)
    #: Staging directories of finished jobs still on disk (invisible to users; disk leak).
    debris: list[str] = field(default_factory=list)
    serving: bool = True
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return self.serving and not (self.lost or self.duplicated or self.partial
                                     or self.orphans or self.unexpected)

    def assert_clean(self, scenario: str) -> None:
        assert self.clean, f"{scenario}: {self.describe()}"

    def describe(self) -> str:
        parts = [f"{self.jobs} jobs {dict(self.statuses)}"]
        for name in ("lost", "duplicated", "partial", "orphans", "unexpected", "debris"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {items[:5]}")
        if not self.serving:
            parts.append("the sentinel did not answer Ping")
        return "; ".join(parts)


def _sentinel_completions(settings: Settings) -> Counter[int]:
    """JobCompleted events per job id over every sentinel tape of the home (a sentinel that
    restarts starts a new tape): a job completed twice shows up here even if the DB hid it."""
    seen: Counter[int] = Counter()
    for tape in sorted(settings.tapes_dir.glob("sentinel-*.tape")):
        with open(tape, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"JobCompleted"' not in line:
                    continue
                try:
                    event = json.loads(line)
                    seen[int(event["payload"]["job_id"])] += 1
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill -9: the DB audit still covers it
    return seen


def _parquet_outputs(sink: Path, audit: Audit) -> dict[str, list[tuple[Path, int, set[str]]]]:
    """Final files by job hash: (path, rows, job ids inside). Strays count as partial."""
    import pyarrow.parquet as pq

    found: dict[str, list[tuple[Path, int, set[str]]]] = {}
    if not sink.exists():
        return found
    for entry in sorted(sink.iterdir()):
        m = FINAL_FILE.match(entry.name)
        if not m or not entry.is_file():
            audit.partial.append(f"stray {entry.name} in {sink}")
            continue
        try:
            table = pq.read_table(entry, columns=["_cf_job_id"])
        except Exception as exc:
            audit.partial.append(f"unreadable {entry.name}: {type(exc).__name__}")
            continue
        owners = {str(v) for v in table.column("_cf_job_id").to_pylist()}
        found.setdefault(m.group("hash"), []).append((entry, table.num_rows, owners))
    return found


def duckdb_rows(db: Path, table: str) -> Counter[str]:
    """Rows per ``_cf_job_id`` in ``table`` of the DuckDB file ``db`` (empty if neither is there)."""
    import duckdb

    if not db.exists():
        return Counter()
    con = duckdb.connect(str(db), read_only=True)
    try:
        known = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
        if table not in known:
            return Counter()
        rows = con.execute(f'select "_cf_job_id", count(*) from "{table}" group by 1').fetchall()
    finally:
        con.close()
    return Counter({str(k): int(n) for k, n in rows})


def audit(settings: Settings, ids: Iterable[int], *, sink: Path | None = None,
          duckdb_table: str | None = None, tracker: ProcessTracker | None = None,
          client: Any = None, expect: dict[str, str] | None = None) -> Audit:
    """Check F8 and F2 for ``ids`` after a trial.

    * lost: a job with no row, or not final (left QUEUED/RUNNING), or with a status other
      than ``expect[status-by-input-substring]`` would have it — see ``expect``;
    * duplicated: completed twice on the tapes, more than one materialization per planned
      output, more than one output file per (output, job), rows of a job present twice;
    * partial: anything in the sink that is not a complete promoted file, outputs of jobs
      that did not complete, completed jobs missing rows;
    * orphans: processes we started that lost their parent and still run (``tracker``);
    * serving: the sentinel answers Ping (``client``).
    """
    ids = sorted(ids)
    a = Audit(jobs=len(ids))
    rows = jobs_by_id(settings, ids)
    for job_id in ids:
        row = rows.get(job_id)
        if row is None:
            a.lost.append(f"job {job_id}: no row")
            continue
        a.statuses[row["status"]] += 1
        if row["status"] not in FINAL:
            a.lost.append(f"job {job_id}: left {row['status']}")
        elif expect:
            for needle, status in expect.items():
                if needle in str(row["input_file"]) and row["status"] != status:
                    a.unexpected.append(f"job {job_id}: {row['status']} not {status} "
                                  f"({row.get('error_message')})")
    completions = _sentinel_completions(settings)
    mats = Counter(int(m["job_id"]) for m in materializations(settings) if m.get("job_id"))
    for job_id in ids:
        if completions[job_id] > 1:
            a.duplicated.append(f"job {job_id}: completed {completions[job_id]} times (tape)")
        if mats[job_id] > 1:
            a.duplicated.append(f"job {job_id}: {mats[job_id]} materializations")
    if sink is not None and duckdb_table is None:
        by_hash = _parquet_outputs(sink, a)
        for job_id in ids:
            row = rows.get(job_id) or {}
            files = by_hash.pop(job_hash16(str(job_id)), [])
            done = row.get("status") == "COMPLETED"
            names = Counter(p.name for p, _, _ in files)
            if any(n > 1 for n in names.values()):
                a.duplicated.append(f"job {job_id}: {names}")
            for path, _n, owners in files:
                if owners != {str(job_id)}:
                    a.duplicated.append(f"{path.name}: rows of jobs {sorted(owners)[:3]}")
            got = sum(n for _, n, _ in files)
            if done and got != int(row.get("rows") or 0) + int(row.get("quarantine_rows") or 0):
                a.partial.append(f"job {job_id}: {got} rows on disk, {row.get('rows')} recorded")
            if not done and files:
                a.partial.append(f"job {job_id} ({row.get('status')}): output visible")
        for rest in by_hash.values():  # files of no job of this trial
            a.partial.extend(f"{p.name}: belongs to no job of the trial" for p, _, _ in rest)
    elif sink is not None and duckdb_table is not None:
        counts = duckdb_rows(sink, duckdb_table)
        for job_id in ids:
            row = rows.get(job_id) or {}
            got = counts.pop(str(job_id), 0)
            want = int(row.get("rows") or 0) if row.get("status") == "COMPLETED" else 0
            if got > want:
                a.duplicated.append(f"job {job_id}: {got} rows in {duckdb_table}, want {want}")
            elif got < want:
                a.partial.append(f"job {job_id}: {got} rows in {duckdb_table}, want {want}")
    finished = {str(i) for i in ids if (rows.get(i) or {}).get("status") in FINAL}
    if settings.staging_dir.is_dir():
        for d in settings.staging_dir.rglob("*"):
            if d.is_dir() and d.name.split("-", 1)[0] in finished:
                a.debris.append(str(d.relative_to(settings.staging_dir)))
    if tracker is not None:
        a.orphans = tracker.wait_no_orphans()
    if client is not None:
        try:
            client.ping(timeout=5.0)
        except Exception:
            a.serving = False
    return a


# -- results -------------------------------------------------------------------------------

RESULTS: list[dict[str, Any]] = []


def record(scenario: str, a: Audit | None = None, **extra: Any) -> None:
    """Keep one trial's (or one check's) outcome for the table."""
    row: dict[str, Any] = {"scenario": scenario}
    if a is not None:
        row.update(jobs=a.jobs, lost=len(a.lost), duplicated=len(a.duplicated),
                   partial=len(a.partial), orphans=len(a.orphans),
                   unexpected=len(a.unexpected), debris=len(a.debris), serving=a.serving,
                   statuses=dict(a.statuses))
    row.update(extra)
    if a is not None and a.debris:
        row["debris_paths"] = a.debris[:10]
    RESULTS.append(row)
    if RESULTS_FILE:
        with open(RESULTS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")


COLUMNS = ("trials", "jobs", "lost", "duplicated", "partial", "orphans", "unexpected",
           "debris", "down")


def summarise(rows: Iterable[dict[str, Any]]) -> tuple[list[tuple[str, dict[str, int]]], dict[str, int]]:
    """Fault-matrix rows per scenario (first-seen order) with summed counts, and the number of
    checks (or fuzzed messages) of every other result."""
    table: dict[str, dict[str, int]] = {}
    checks: Counter[str] = Counter()
    for r in rows:
        name = str(r["scenario"])
        if "note" in r:
            continue
        if "jobs" not in r:
            checks[name] += int(r.get("messages") or r.get("checks") or 1)
            continue
        t = table.setdefault(name, dict.fromkeys(COLUMNS, 0))
        t["trials"] += 1
        for k in ("jobs", "lost", "duplicated", "partial", "orphans", "unexpected", "debris"):
            t[k] += int(r.get(k) or 0)
        t["down"] += 0 if r.get("serving", True) else 1
    return list(table.items()), dict(checks)


def host_log_sizes(logs: Path) -> dict[str, int]:
    """Bytes on disk per plugin host log: ``host-*.log`` and its rotated ``.log.1`` together
    (a file rotated away between listing and stat is skipped)."""
    sizes: dict[str, int] = {}
    for p in logs.glob("host-*.log*"):
        base = p.name.removesuffix(".1")
        try:
            sizes[base] = sizes.get(base, 0) + p.stat().st_size
        except FileNotFoundError:
            pass
    return sizes


def note(text: str, value: float) -> None:
    """A measurement to print under the table (the largest value over the trials)."""
    record(text, None, note=True, value=value)


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    table, checks = summarise(rows)
    lines: list[str] = []
    if table:
        width = max(len("scenario"), *(len(name) for name, _ in table))
        head = f"{'scenario':<{width}}  " + "  ".join(f"{c:>10}" for c in COLUMNS)
        lines += [head, "-" * len(head)]
        for name, counts in table:
            lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[c]:>10}" for c in COLUMNS))
        totals = {c: sum(t[c] for _, t in table) for c in COLUMNS}
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{totals[c]:>10}" for c in COLUMNS))
        lines.append("(down = trials after which the sentinel did not answer Ping; debris = "
                     "staged dirs of finished jobs left on disk)")
    fuzz = {k: v for k, v in checks.items() if k.startswith("fuzz")}
    for name, n in fuzz.items():
        lines.append(f"fuzzer: {n} hostile messages tried ({name}); the sentinel answered "
                     "Ping and the queue was unchanged after every batch")
    others = {k: v for k, v in checks.items() if k not in fuzz}
    if others:
        lines.append("checks passed: " + "; ".join(f"{k} ({v})" for k, v in others.items()))
    notes: dict[str, float] = {}
    for r in rows:
        if "note" in r:
            notes[r["scenario"]] = max(notes.get(r["scenario"], float("-inf")), float(r["value"]))
    lines += [f"note: {text}: {value:g}" for text, value in notes.items()]
    return "\n".join(lines)

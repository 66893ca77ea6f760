"""Build ``tapes/golden_session.tape`` with the real TapeWriter, deterministically.

A realistic notebook session against a sentinel with two workers:

* ``Submit`` of four files (plugin path, inputs and sink are hashed on the tape);
* job 1 completes and records a materialization;
* job 2 fails transiently, is retried and then completes;
* job 3 is cancelled while running (``Cancel`` command, ``CancelRequested``, ``JobAborted``);
* job 4 fails permanently (its error text keeps the words, loses the path);
* a ``Query`` command (SQL hashed), then ``TapeStopped``.

Salt, clock and ids are fixed, so the file is byte-for-byte reproducible::

    PYTHONPATH=. python tapes/make_golden_session.py            # rewrite the .tape
    PYTHONPATH=. python tapes/make_golden_session.py --expected # and the .explain.json files

Review the diff of ``*.explain.json`` by hand before committing it: it is the expectation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))  # run as a script from a source checkout

from casparian_nb.tape import TapeWriter, explain_tape  # noqa: E402

SALT = bytes(range(32))
START = 1767225600.0  # 2026-01-01T00:00:00Z
HOME = "/home/alice"


def fixed_clock(start: float = START, step: float = 0.25) -> Callable[[], float]:
    """Each call is ``step`` seconds after the previous one."""
    ticks = iter(range(1_000_000))
    return lambda: start + step * next(ticks)


def fixed_ids(prefix: str = "00000000-0000-4000-8000-") -> Callable[[], str]:
    """uuid4-shaped, sequential ids."""
    counter: Iterator[int] = iter(range(1, 1_000_000))
    return lambda: f"{prefix}{next(counter):012d}"


def build(path: Path) -> Path:
    """Write the golden session tape to ``path``."""
    with TapeWriter(path, producer="notebook", salt=SALT, clock=fixed_clock(),
                    ids=fixed_ids()) as t:
        d = t.domain
        d("WorkerJoined", {"worker_id": "w1", "slots": 1, "pid": 4101})
        d("WorkerJoined", {"worker_id": "w2", "slots": 1, "pid": 4102})
        files = [f"{HOME}/data/{m}.csv" for m in ("jan", "feb", "mar", "apr")]
        sink = f"parquet://{HOME}/output"
        cmd, corr = t.command("Submit", {"plugin": f"{HOME}/plugins/orders.py",
                                         "inputs": files, "sink": sink, "mode": "append"})
        queued = {}
        for n, f in enumerate(files, start=1):
            queued[n] = d("JobQueued", {"job_id": str(n), "plugin_name": "orders",
                                        "plugin_version": "1.0.0", "input_file": f,
                                        "priority": 0, "sink": sink},
                          correlation_id=corr, parent_id=cmd)
        t.succeeded(cmd, corr, {"job_ids": ["1", "2", "3", "4"], "count": 4})

        def job(n: int, name: str, payload: dict[str, object], parent: str) -> str:
            return d(name, {"job_id": str(n), **payload}, correlation_id=corr, parent_id=parent)

        disp1 = job(1, "JobDispatched", {"plugin_name": "orders", "plugin_version": "1.0.0",
                                         "worker_id": "w1", "attempt": 1}, queued[1])
        disp2 = job(2, "JobDispatched", {"plugin_name": "orders", "plugin_version": "1.0.0",
                                         "worker_id": "w2", "attempt": 1}, queued[2])
        job(1, "JobStarted", {"worker_id": "w1"}, disp1)
        job(2, "JobStarted", {"worker_id": "w2"}, disp2)
        fail2 = job(2, "JobFailed", {
            "worker_id": "w2", "error": f"TransientError: connection reset reading {files[1]}",
            "error_kind": "transient", "retry_count": 0, "will_retry": True,
            "duration_ms": 480}, disp2)
        job(2, "JobRetried", {"retry_count": 1, "delay_ms": 1000,
                              "error": f"TransientError: connection reset reading {files[1]}"},
            fail2)
        job(1, "MaterializationRecorded", {"output_name": "orders", "table": "orders",
                                           "rows": 120, "sink": sink}, disp1)
        job(1, "JobCompleted", {"worker_id": "w1", "rows": 120, "quarantine_rows": 0,
                                "outputs": {"orders": 120}, "duration_ms": 1210}, disp1)
        disp3 = job(3, "JobDispatched", {"plugin_name": "orders", "plugin_version": "1.0.0",
                                         "worker_id": "w1", "attempt": 1}, queued[3])
        job(3, "JobStarted", {"worker_id": "w1"}, disp3)
        disp2b = job(2, "JobDispatched", {"plugin_name": "orders", "plugin_version": "1.0.0",
                                          "worker_id": "w2", "attempt": 2}, fail2)
        job(2, "JobStarted", {"worker_id": "w2"}, disp2b)
        ccmd, ccorr = t.command("Cancel", {"job_id": "3"})
        d("CancelRequested", {"job_id": "3", "state": "running"},
          correlation_id=ccorr, parent_id=ccmd)
        t.succeeded(ccmd, ccorr, {"job_ids": ["3"]})
        job(3, "JobAborted", {"worker_id": "w1", "reason": "cancelled by user",
                              "duration_ms": 730}, disp3)
        job(2, "MaterializationRecorded", {"output_name": "orders", "table": "orders",
                                           "rows": 80, "sink": sink}, disp2b)
        job(2, "JobCompleted", {"worker_id": "w2", "rows": 80, "quarantine_rows": 2,
                                "outputs": {"orders": 80, "orders_quarantine": 2},
                                "duration_ms": 990}, disp2b)
        disp4 = job(4, "JobDispatched", {"plugin_name": "orders", "plugin_version": "1.0.0",
                                         "worker_id": "w1", "attempt": 1}, queued[4])
        job(4, "JobStarted", {"worker_id": "w1"}, disp4)
        job(4, "JobFailed", {"worker_id": "w1",
                             "error": f"PermanentError: missing column 'amount' in {files[3]}",
                             "error_kind": "permanent", "retry_count": 0,
                             "will_retry": False, "duration_ms": 250}, disp4)
        qcmd, qcorr = t.command("Query", {"sql": f"select * from read_parquet('{HOME}/output/*')"})
        t.succeeded(qcmd, qcorr, {"rows": 200})
    return path


def write_expected(tape: Path) -> Path:
    """Write ``<name>.explain.json`` next to a tape."""
    out = tape.with_suffix(".explain.json")
    out.write_text(json.dumps(explain_tape(tape).to_json(), indent=2, ensure_ascii=False)
                   + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "golden_session.tape")
    ap.add_argument("--expected", action="store_true",
                    help="also rewrite the .explain.json of every golden tape")
    args = ap.parse_args(argv)
    build(args.out)
    print(f"wrote {args.out}")
    if args.expected:
        for tape in sorted(HERE.glob("golden_*.tape")):
            print(f"wrote {write_expected(tape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

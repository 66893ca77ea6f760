"""Hostile plugin for tests/hardening: misbehaviours the fixture plugin does not have.

Like ``tests/fixtures/plugins/fixture_plugin.py``, the behaviour is chosen per INPUT file by
its first line ``mode=<mode> [key=value ...]``; without one the plugin is ``normal``.

| mode | behaviour |
|---|---|
| `normal` | `rows` rows (default 10) as output `hostile_output(id int64, value string)` |
| `flood` | writes `mb` MiB (default 8) to stdout and to stderr, then `normal` |
| `oom` | allocates (and touches) 16 MiB blocks without bound (needs a memory limit) |
| `exit` | `os._exit(code)` (default 7) in the middle of parse |
| `raise-mid-generator` | a generator: `batches` batches of `rows` rows, then `RuntimeError` |
| `slow` | sleeps `sleep` seconds (default 1) in 20 ms steps, then `normal` |
| `disk-full` | a generator: one batch of `rows` rows, then points the file being staged at \
`/dev/full` and yields another: staging fails with a real ENOSPC from the kernel |
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pyarrow as pa

from casparian_nb import Output

name = "hostile_plugin"
version = "1.0.0"
outputs = {
    "hostile_output": {
        "columns": [
            {"name": "id", "type": "int64"},
            {"name": "value", "type": "string"},
        ]
    }
}


def _settings(path: str) -> dict[str, str]:
    with open(path, "rb") as fh:
        first = fh.readline(4096).decode("utf-8", "replace").strip()
    if not first.startswith("mode="):
        return {"mode": "normal"}
    return dict(part.split("=", 1) for part in first.split() if "=" in part)


def _table(start: int, stop: int) -> pa.Table:
    ids = list(range(start, stop))
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "value": pa.array([f"value_{i}" for i in ids], pa.string())})


def _raise_mid_generator(batches: int, rows: int) -> Iterator[Output]:
    for b in range(batches):
        yield Output("hostile_output", _table(b * rows, (b + 1) * rows))
    raise RuntimeError(f"hostile plugin: failed after {batches} batches")


def _disk_full(rows: int) -> Iterator[Output]:
    """The disk fills up under the job while it stages: after the first batch opened the
    staged file, that descriptor is pointed at ``/dev/full`` (this host is the process that
    writes it), so the staging writer's next real write fails with ENOSPC, as on a full disk.
    """
    before = {f.fd for f in psutil.Process().open_files()}
    yield Output("hostile_output", _table(0, rows))
    staged = [f.fd for f in psutil.Process().open_files()
              if f.fd not in before and f.path.endswith(".parquet")]
    if not staged:
        raise RuntimeError("hostile plugin: the first batch opened no staged file")
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        for fd in staged:
            os.dup2(full, fd)
    finally:
        os.close(full)
    yield Output("hostile_output", _table(rows, 2 * rows))


def parse(path: str, ctx: Any = None) -> Any:
    s = _settings(path)
    mode = s.get("mode", "normal")
    rows = int(s.get("rows", "10"))
    if mode == "flood":
        chunk = ("flood " * 1000 + "\n")[:4096] * 256  # 1 MiB of text per write
        for _ in range(int(s.get("mb", "8"))):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        sys.stdout.flush()
        sys.stderr.flush()
    elif mode == "oom":
        hoard = []
        while True:
            hoard.append(b"x" * (16 << 20))  # bytes are written: real, resident memory
    elif mode == "exit":
        os._exit(int(s.get("code", "7")))
    elif mode == "raise-mid-generator":
        return _raise_mid_generator(int(s.get("batches", "3")), rows)
    elif mode == "disk-full":
        return _disk_full(rows)
    elif mode == "slow":
        deadline = time.monotonic() + float(s.get("sleep", "1"))
        while time.monotonic() < deadline:
            time.sleep(0.02)
    elif mode != "normal":
        raise ValueError(f"unknown hostile mode {mode!r}")
    return [Output("hostile_output", _table(0, rows))]

"""The capped plugin host log (worker/_hostlog.py): rotation, the dropped-bytes note, a
real pipe drained to EOF, and a log that cannot be written (the pipe must keep draining)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from casparian_nb.protocol import HostJob, JobSpec
from casparian_nb.worker._hostlog import CappedLog
from casparian_nb.worker.pool import HostPool


def _sizes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_rotation_keeps_the_newest_output_within_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "host.log"
    log = CappedLog(path, 64 * 1024)
    written = 0
    for i in range(400):  # ~1.2 MB of numbered lines in uneven chunks
        chunk = "".join(f"line {i}:{j}\n" for j in range(i % 7 * 40 + 1)).encode()
        log.write(chunk)
        written += len(chunk)
        assert _sizes(path) <= 64 * 1024
    log.close()
    text = path.read_text()
    first = text.splitlines()[0]
    m = re.fullmatch(r"\[casparian: this log was rotated \(host_log_max_mb\): older output is in "
                     r"host\.log\.1; (\d+) bytes older than that were dropped\]", first)
    assert m, first
    assert text.endswith("line 398:240\nline 399:0\n")  # the newest output, whole lines
    older = (tmp_path / "host.log.1").read_text()
    assert older.splitlines()[-1].startswith("line ")  # cut at a line end where one fits
    # The note counts every byte rotated away; nothing is lost beyond what it says.
    assert int(m.group(1)) == log.dropped > 0
    on_disk = len(text) + len(older)
    assert written <= log.dropped + on_disk <= written + 200 * (written // (32 * 1024) + 1)


def test_a_pipe_is_drained_to_eof_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    log = CappedLog(path, 32 * 1024)
    r, w = os.pipe()
    log.start(r, "test-hostlog")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('x' * 200000)"],
                            stdout=w)
    os.close(w)
    assert proc.wait(30) == 0
    log.join(10)
    assert _sizes(path) <= 32 * 1024 and log.dropped > 150_000
    assert path.read_text().endswith("x" * 1000)
    try:
        os.fstat(r)
    except OSError:
        pass
    else:
        raise AssertionError("the read end was left open")


def test_an_unwritable_log_still_drains_the_pipe(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    log = CappedLog(gone / "h.log", 8192)
    gone.joinpath("h.log").unlink()
    gone.rmdir()  # rotation (and reopening) now fails: every byte is counted as dropped
    r, w = os.pipe()
    log.start(r, "test-hostlog")
    os.write(w, b"y" * 60_000)  # less than a pipe buffer: would block a writer otherwise
    os.close(w)
    log.join(10)
    # All but the first part (written to the still-open, unlinked file) is counted as dropped.
    assert log.dropped >= 60_000 - log.part


def test_a_pool_with_a_cap_logs_through_the_pipe(tmp_path: Path, fixture_plugin: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    job = HostJob(job=JobSpec(job_id="j1", plugin_path=str(fixture_plugin),
                              plugin_name="fixture", input_file=str(src),
                              sink=f"parquet://{tmp_path / 'out'}"),
                  staging_root=str(tmp_path / "staging"))
    with HostPool(1, log_dir=tmp_path / "logs", log_max_bytes=1 << 20) as pool:
        assert pool.run(job).status == "SUCCESS"
    [log] = (tmp_path / "logs").glob("host-*.log")
    deadline = time.monotonic() + 10  # the pipe is drained by a thread: poll for the line
    while "fixture_plugin mode=" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "fixture_plugin mode=" in log.read_text()

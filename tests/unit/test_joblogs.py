"""Per-job logs: captured in a real plugin host per attempt, bounded, redacted, read back
(worker/_capture.py, joblogs.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from casparian_nb.errors import JobLogNotFoundError
from casparian_nb.joblogs import (
    HEAD_BYTES,
    TAIL_BYTES,
    job_log_attempts,
    job_log_path,
    job_logs_root,
    read_job_log,
)
from casparian_nb.protocol import HostJob, JobSpec, ReceiptStatus
from casparian_nb.worker._capture import BoundedLog
from casparian_nb.worker.pool import HostPool
from tests.conftest import ROOT

CHATTY = ROOT / "tests" / "fixtures" / "plugins" / "chatty_plugin.py"


def attempt(home: Path, job_id: str, inp: Path, n: int = 1, *, redact: bool = False,
            plugin: Path = CHATTY) -> HostJob:  # fmt: skip
    spec = JobSpec(job_id=job_id, input_file=str(inp), plugin_path=str(plugin),
                   plugin_name="chatty", sink=f"parquet://{home / 'out'}")
    return HostJob(job=spec, attempt=n, staging_root=str(home / "staging"),
                   log_root=str(job_logs_root(home)), redact_log=redact)


@pytest.fixture
def pool(home: Path) -> HostPool:
    with HostPool(1, log_dir=home / "logs") as p:
        p.wait_ready()
        yield p


def test_every_channel_is_captured_per_attempt(home: Path, pool: HostPool, tmp_path: Path) -> None:
    inp = tmp_path / "a.txt"
    inp.write_text("ok\n")
    for n in (1, 2):
        assert pool.run(attempt(home, "7", inp, n)).status == ReceiptStatus.SUCCESS
    assert job_log_attempts(home, 7) == [1, 2]
    first, latest = read_job_log(home, 7, attempt=1), read_job_log(home, "7")
    assert latest.attempt == 2 and "print: attempt 2" in latest.text
    lines = first.text.splitlines()
    for needle in ("print: attempt 1", "stderr: a line", "chatty WARNING logging: a record",
                   "INFO ctx log: hello", "subprocess: echo"):
        assert sum(needle in ln for ln in lines) == 1, (needle, first.text)
    # prints and log records keep their order (stdout is line-buffered during the job)
    assert lines.index("print: attempt 1") < lines.index("stderr: a line")
    assert first.total_bytes == len(first.text.encode()) and not first.truncated
    assert first.tail(1) == "subprocess: echo"
    assert "<pre" in first._repr_html_() and "print: attempt 1" in first._repr_html_()
    # nothing of the job reached the host's own log
    host_logs = "".join(p.read_text() for p in (home / "logs").glob("host-*.log"))
    assert "print: attempt" not in host_logs


def test_a_silent_job_leaves_no_file(home: Path, pool: HostPool, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import pyarrow as pa\n\ndef parse(path):\n    return pa.table({'x': [1]})\n")
    inp = tmp_path / "a.txt"
    inp.write_text("ok\n")
    assert pool.run(attempt(home, "8", inp, plugin=quiet)).status == ReceiptStatus.SUCCESS
    assert not (job_logs_root(home) / "8").exists()
    log = read_job_log(home, 8)
    assert log.attempt is None and log.text == "" and "no output captured" in repr(log)
    with pytest.raises(JobLogNotFoundError, match="no log for attempt 1"):
        read_job_log(home, 8, attempt=1)
    with pytest.raises(ValueError, match="not a job id"):
        read_job_log(home, "../etc")


def test_ten_megabytes_keep_memory_flat_and_the_log_bounded(home: Path, pool: HostPool,
                                                            tmp_path: Path) -> None:
    [pid] = pool.pids

    def peak_kib() -> int:  # the host's high-water mark of resident memory
        return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0])

    warm = tmp_path / "warm.txt"  # the same plugin and code paths, 1 KB of output
    warm.write_text("flood 1000\n")
    assert pool.run(attempt(home, "90", warm)).status == ReceiptStatus.SUCCESS
    before, rss = peak_kib(), psutil.Process(pid).memory_info().rss
    inp = tmp_path / "flood.txt"
    inp.write_text("flood 10000000\n")
    res = pool.run(attempt(home, "9", inp))
    assert res.status == ReceiptStatus.SUCCESS
    # 10 MB printed raise the host's peak by well under 10 MB: nothing buffers the output
    grown = peak_kib() - before
    print(f"host rss {rss >> 20} MiB; peak grew by {grown} KiB for 10 MB of output")
    assert grown < 3 * 1024, grown
    log = read_job_log(home, 9)
    assert log.truncated and log.total_bytes >= 10_000_000
    size = job_log_path(job_logs_root(home), 9, 1).stat().st_size
    assert size <= HEAD_BYTES + TAIL_BYTES + 200
    assert log.text.startswith("print: attempt 1")
    assert "bytes left out here;" in log.text and log.tail(1) == "f" * 99


def test_redacted_like_the_tape(home: Path, pool: HostPool, tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("def parse(path):\n    print('reading', path)\n    return None\n")
    inp = tmp_path / "secret_name.csv"
    inp.write_text("x\n")
    pool.run(attempt(home, "10", inp, plugin=leaky, redact=True))
    pool.run(attempt(home, "11", inp, plugin=leaky, redact=False))
    redacted, plain = read_job_log(home, 10).text, read_job_log(home, 11).text
    assert "secret_name" not in redacted and "reading <redacted:" in redacted
    assert plain == f"reading {inp}\n"


def test_bounded_log_keeps_head_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "j" / "attempt-1.log"
    log = BoundedLog(path, head=100, tail=100)
    lines = [f"line {i:04d}\n".encode() for i in range(1000)]  # 10 bytes each
    for ln in lines:
        log.write(ln)
    log.close()
    text = path.read_text()
    head, _, rest = text.partition("[casparian: ")
    assert head == "".join(ln.decode() for ln in lines[:10])
    assert rest.split("]\n", 1)[1] == "".join(ln.decode() for ln in lines[-10:])
    assert "10,000 bytes written in all" in rest
    assert log.total == 10_000 and log.truncated


def test_consecutive_captures_share_one_pump_thread_and_keep_every_line(tmp_path: Path) -> None:
    """In a fresh process (fds 1 and 2 are redirected): 50 jobs, one pump thread, every
    line in its own job's log; a subprocess that writes after its job ended is waited for
    (within the grace) and lands in that job's log."""
    script = tmp_path / "jobs.py"
    script.write_text(textwrap.dedent(f"""
        import os, subprocess, sys, threading
        from pathlib import Path
        from casparian_nb.worker._capture import capture_output
        root = Path({str(tmp_path)!r})
        for i in range(50):
            with capture_output(root / f"job-{{i}}.log"):
                print(f"job {{i}} stdout")
                os.write(2, f"job {{i}} fd2\\n".encode())
        with capture_output(root / "late.log"):
            subprocess.Popen(["sh", "-c", "sleep 0.3; echo late line"])
        assert threading.active_count() == 2, threading.enumerate()
        print("ok")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    for i in range(50):
        assert (tmp_path / f"job-{i}.log").read_text() == f"job {i} stdout\njob {i} fd2\n"
    assert (tmp_path / "late.log").read_text() == "late line\n"

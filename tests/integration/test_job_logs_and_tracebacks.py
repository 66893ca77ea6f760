"""Per-job logs and remote tracebacks through real sentinel/worker processes and the CLI:
``casparian job logs``, ``job show`` (text and --json), ``run -v`` and ``run --json``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from casparian_nb.config import Settings
from casparian_nb.joblogs import read_job_log
from casparian_nb.launcher import LocalCluster
from tests.conftest import ROOT
from tests.integration.test_run import cli_env
from tests.integration.test_sentinel import FAST, control, wait_final

CHATTY = ROOT / "tests" / "fixtures" / "plugins" / "chatty_plugin.py"
TB = "Traceback (most recent call last)"


def casparian(home: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home),
                           *map(str, args)], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout)


def test_job_logs_and_tracebacks_from_the_cli(cluster_factory: Callable[..., LocalCluster],
                                              settings: Settings, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("ok\n")
    bad.write_text("fail\n")
    with control(cluster) as client:
        ids = [int(i) for i in client.submit(str(CHATTY), [str(good), str(bad)],
                                             sink=f"parquet://{tmp_path / 'out'}")["job_ids"]]
    rows = wait_final(settings, ids, timeout=60)
    ok_id, bad_id = ids
    assert rows[ok_id]["status"] == "COMPLETED" and rows[bad_id]["status"] == "FAILED"

    # job logs: everything the plugin wrote, per attempt, read without touching the sentinel
    done = casparian(settings.home, "job", "logs", ok_id)
    assert done.returncode == 0, done.stderr
    for needle in ("print: attempt 1", "stderr: a line", "logging: a record", "ctx log: hello",
                   "subprocess: echo"):
        assert done.stdout.count(needle) == 1, done.stdout
    assert casparian(settings.home, "job", "logs", ok_id, "--attempt", "1").stdout == done.stdout
    missing = casparian(settings.home, "job", "logs", ok_id, "--attempt", "5")
    assert missing.returncode == 1  # a failure of a well-formed request (not a usage error)
    assert missing.stderr.startswith("casparian: error: job") and "no log for attempt 5" in missing.stderr
    follow = casparian(settings.home, "job", "logs", ok_id, "--follow", timeout=30)
    assert follow.returncode == 0 and follow.stdout == done.stdout
    assert read_job_log(settings.home, bad_id).text.count("print: attempt 1") == 1

    # job show: the remote traceback, once, in text and in --json
    show = casparian(settings.home, "job", "show", bad_id)
    assert show.returncode == 0, show.stderr
    assert show.stdout.count(TB) == 1 and "chatty failed on purpose" in show.stdout
    assert "raise ValueError(\"chatty failed on purpose\")" in show.stdout
    assert f"casparian job logs {bad_id}" in show.stdout
    doc = json.loads(casparian(settings.home, "job", "show", bad_id, "--json").stdout)
    assert doc["traceback"].count(TB) == 1 and doc["log_attempts"] == [1]
    assert "ValueError: chatty failed on purpose" in doc["traceback"]

    # --follow on a job still queued: waits for its log, prints it as it grows, ends with it
    slow = tmp_path / "slow.txt"
    slow.write_text("slow\n")
    with control(cluster) as client:
        [slow_id] = client.submit(str(CHATTY), [str(slow)],
                                  sink=f"parquet://{tmp_path / 'out'}")["job_ids"]
    follow = casparian(settings.home, "job", "logs", slow_id, "--follow", timeout=60)
    assert follow.returncode == 0, follow.stderr
    ticks = [ln for ln in follow.stdout.splitlines() if ln.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(5)], follow.stdout
    assert wait_final(settings, [slow_id])[slow_id]["status"] == "COMPLETED"


def test_run_verbose_and_json_show_each_traceback_once(home: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("ok\n")
    bad.write_text("fail\n")
    sink = f"parquet://{tmp_path / 'out'}"
    plain = casparian(home, "run", CHATTY, good, bad, "--sink", sink)
    assert plain.returncode == 1
    both = plain.stdout + plain.stderr
    assert both.count("chatty failed on purpose") == 1, both  # printed once, not twice
    assert TB not in both

    verbose = casparian(home, "run", "-v", CHATTY, good, bad, "--sink", sink)
    assert verbose.returncode == 1
    both = verbose.stdout + verbose.stderr
    assert both.count(TB) == 1, both
    assert verbose.stderr.startswith(f"casparian: failed: {bad}: ValueError: chatty failed")
    assert "    output: " in verbose.stderr  # where the failed file's captured output is

    # --force: the good file is already materialized (it would be skipped), run it again
    as_json = casparian(home, "run", "--json", "--force", CHATTY, good, bad, "--sink", sink)
    doc = json.loads(as_json.stdout)
    by_file = {j["input_file"]: j for j in doc["jobs"]}
    assert by_file[str(bad)]["traceback"].count(TB) == 1
    assert by_file[str(good)]["traceback"] is None
    assert "print: attempt 1" in Path(by_file[str(bad)]["log_path"]).read_text()
    assert as_json.stderr.count("chatty failed on purpose") == 1

"""Compaction with a real sentinel: many small promoted files merged while a stream of jobs
keeps promoting into the same output and a reader queries ``count(*)`` through the notebook's
catalog the whole time — the count never goes down, only ever grows by whole jobs, and ends
at the total; the jobs' artifacts name files that exist (issue 18, item 4)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from casparian_nb.client import RemoteRequestError
from casparian_nb.notebook.catalog import OutputCatalog
from tests.conftest import wait_until
from tests.integration.test_sentinel import control, jobs_by_id, wait_final

ROWS = 7  # rows per job: every count the reader sees must be a multiple of it


def inputs(directory: Path, n: int, start: int = 0) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = directory / f"in_{i:04d}.txt"
        p.write_text(f"mode=normal rows={ROWS}\nfile {i}\n")
        out.append(str(p))
    return out


def parquet_files(out: Path) -> list[Path]:
    return sorted(out.glob("fixture_output_" + "?" * 16 + ".parquet"))


def test_compaction_under_concurrent_promotion_and_reads(cluster_factory, settings, tmp_path,
                                                         fixture_plugin):
    cluster = cluster_factory(workers=2, slots=2)
    out = tmp_path / "out"
    sink = f"parquet://{out}"
    client = control(cluster, timeout=60.0)
    first = client.submit(str(fixture_plugin), inputs(tmp_path / "in", 60), sink=sink)
    wait_final(settings, first["job_ids"], timeout=120, status="COMPLETED")
    assert len(parquet_files(out)) == 60

    counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        with OutputCatalog(settings) as cat:
            while not stop.is_set():
                try:
                    counts.append(int(cat.sql("select count(*) n from fixture_output")["n"][0]))
                except BaseException as exc:
                    errors.append(exc)
                    return

    reader = threading.Thread(target=read, name="reader", daemon=True)
    reader.start()
    wait_until(lambda: len(counts) >= 3, 30, message="the reader's first counts")

    # A stream of jobs promoting into the same output while compactions run.
    stream: list[int] = []

    def submit_stream() -> None:
        with control(cluster, timeout=60.0) as c:
            for batch in range(6):
                reply = c.submit(str(fixture_plugin),
                                 inputs(tmp_path / "in", 15, start=100 + 15 * batch), sink=sink)
                stream.extend(reply["job_ids"])
                time.sleep(0.05)

    submitter = threading.Thread(target=submit_stream, name="submitter", daemon=True)
    submitter.start()
    size = max(p.stat().st_size for p in parquet_files(out))
    results = []
    while submitter.is_alive() or len(results) < 3:
        results.append(client.compact(sink, "fixture_output", target_size=size * 8))
    submitter.join(60)
    wait_final(settings, stream, timeout=180, status="COMPLETED")
    results.append(client.compact(sink, target_size=size * 1000))
    total = (60 + len(stream)) * ROWS
    wait_until(lambda: errors or (counts and counts[-1] == total), 30,
               message="the final count")
    stop.set()
    reader.join(30)
    client.close()

    assert not errors, errors
    assert len(counts) > 20, len(counts)
    drops = [(a, b) for a, b in itertools.pairwise(counts) if b < a]
    assert not drops, f"the count went down: {drops[:5]}"
    assert all(c % ROWS == 0 for c in counts), sorted({c % ROWS for c in counts})
    merged = sum(o["files_before"] for r in results for o in r["outputs"])
    assert merged >= 60, [r["outputs"] for r in results]
    assert len(parquet_files(out)) < 20
    # Every job's rows once, lineage kept, and every artifact names a file that exists.
    with OutputCatalog(settings) as cat:
        per_job = cat.sql("select _cf_job_id j, count(*) n from fixture_output group by 1")
    assert len(per_job) == 60 + len(stream) and set(per_job["n"]) == {ROWS}
    rows = jobs_by_id(settings, [*first["job_ids"], *stream])
    repointed = sum(r["jobs_repointed"] for r in results)
    assert repointed >= 60
    for job in rows.values():
        arts = json.loads(job["artifacts_json"]) if isinstance(job["artifacts_json"], str) \
            else job["artifacts_json"]
        for a in arts:
            path = Path(a["uri"].removeprefix("file://"))
            assert path.is_file(), (job["id"], a)


def test_compact_refuses_non_parquet_sinks_with_one_line(cluster, tmp_path):
    with control(cluster) as c, pytest.raises(RemoteRequestError,
                                              match="compaction is for parquet:// sinks"):
        c.compact(f"csv://{tmp_path / 'x'}")


def test_ctl_compact_records_command_and_response(cluster, settings, tmp_path, fixture_plugin):
    import casparian_nb as cf

    out = tmp_path / "out"
    ctl = cf.attach(settings.home)
    try:
        ids = ctl.submit(str(fixture_plugin), inputs(tmp_path / "in", 6), sink=f"parquet://{out}")
        ctl.wait(ids, progress=False)
        result = ctl.compact(f"parquet://{out}")
        assert (result.files_before, result.files_after, result.rows) == (6, 1, 6 * ROWS)
        assert "Compaction" in result._repr_html_() and "6 files" in repr(result)
        assert int(ctl.sql("select count(*) n from fixture_output")["n"][0]) == 6 * ROWS
        tape = ctl.tape_path
    finally:
        ctl.stop()
    events = [json.loads(line) for line in tape.read_text().splitlines()]
    cmd = next(e for e in events if e["event_name"].get("name") == "Compact")
    resp = next(e for e in events if e["parent_id"] == cmd["event_id"])
    assert resp["event_name"]["name"] == "CommandSucceeded"
    assert resp["payload"]["files_before"] == 6 and resp["payload"]["files_after"] == 1
    from casparian_nb.cli.main import main

    assert main(["tape", "validate", str(tape)]) == 0


def test_cli_compacts_with_and_without_a_sentinel_and_repoints_the_state_db(
        cluster_factory, settings, tmp_path, fixture_plugin, capsys):
    from casparian_nb.cli.main import main

    out = tmp_path / "out"
    argv = ["--home", str(settings.home), "compact", f"parquet://{out}", "--json"]
    cluster = cluster_factory(workers=1)
    with control(cluster) as c:
        first = c.submit(str(fixture_plugin), inputs(tmp_path / "in", 5),
                         sink=f"parquet://{out}")["job_ids"]
        wait_final(settings, first, timeout=60, status="COMPLETED")
        assert main(argv) == 0  # through the sentinel
        reply = json.loads(capsys.readouterr().out)
        assert (reply["files_before"], reply["files_after"], reply["jobs_repointed"]) == (5, 1, 5)
        second = c.submit(str(fixture_plugin), inputs(tmp_path / "in", 3, start=5),
                          sink=f"parquet://{out}")["job_ids"]
        wait_final(settings, second, timeout=60, status="COMPLETED")
    cluster.stop()
    assert main(argv) == 0  # no sentinel: this process writes the state DB
    reply = json.loads(capsys.readouterr().out)
    # The first merged file and the 3 new ones; the 5 jobs in it follow it to the new one.
    assert (reply["files_before"], reply["files_after"], reply["rows"]) == (4, 1, 8 * ROWS)
    assert reply["jobs_repointed"] == 8
    [merged] = parquet_files(out)
    for job in jobs_by_id(settings, [*first, *second]).values():
        arts = json.loads(job["artifacts_json"]) if isinstance(job["artifacts_json"], str) \
            else job["artifacts_json"]
        assert [a["uri"] for a in arts] == [f"file://{merged}"]


def test_compact_waits_for_replace_mode_runs_into_the_sink(cluster, settings, tmp_path,
                                                           fixture_plugin):
    out = tmp_path / "out"
    slow = tmp_path / "in" / "slow.txt"
    slow.parent.mkdir(parents=True)
    slow.write_text("mode=slow sleep=2 rows=3\n")
    with control(cluster) as c:
        ids = c.submit(str(fixture_plugin), [str(slow)], sink=f"parquet://{out}",
                       mode="replace")["job_ids"]
        with pytest.raises(RemoteRequestError, match="mode replace/error are not finished"):
            c.compact(f"parquet://{out}")
        wait_final(settings, ids, timeout=60, status="COMPLETED")
        assert c.compact(f"parquet://{out}")["outputs"] == []  # one file: nothing to merge

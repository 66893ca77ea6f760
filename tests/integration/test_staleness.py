"""Staleness you can trust (F15) and one skip rule for sentinel submissions and standalone
runs (F4): an edited unversioned parser re-runs, an edited versioned one is reported stale and
re-runs with ``force``, and ``casparian run`` twice in append mode does not duplicate rows.

Real sentinel and worker processes, the real CLI as a subprocess, real parquet outputs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from casparian_nb import runner
from casparian_nb.config import Settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.store import STALE_REASON
from tests.conftest import make_inputs
from tests.integration.test_sentinel import FAST, control, jobs_by_id, wait_final

PLUGIN = '''\
import pyarrow as pa
{version}
def parse(path):
    return pa.table({{"n": [{values}]}})
'''


def write_plugin(path: Path, values: str, version: str | None) -> Path:
    path.write_text(PLUGIN.format(values=values,
                                  version=f'version = "{version}"' if version else ""))
    return path


def rows_in(out: Path) -> list[int]:
    return sorted(r[0] for r in duckdb.sql(
        f"select n from read_parquet('{out}/*.parquet')").fetchall())


def cli(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home),
                           *map(str, args)], capture_output=True, text=True, timeout=120)


# -- sentinel submissions ------------------------------------------------------------------

def test_edited_unversioned_plugin_reruns_only_after_the_edit(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    plugin = write_plugin(tmp_path / "counts.py", "1, 2", None)
    files = [str(f) for f in make_inputs(tmp_path / "in", 2)]
    sink = f"parquet://{tmp_path / 'out'}"
    with control(cluster) as ctl:
        first = ctl.submit(plugin, files, sink=sink)
        wait_final(settings, first["job_ids"], status="COMPLETED")
        again = ctl.submit(plugin, files, sink=sink)
        assert again["job_ids"] == [] and len(again["skipped"]) == 2
        assert not any(s["stale"] for s in again["skipped"])
        write_plugin(plugin, "1, 2, 3", None)  # edited, still no version
        edited = ctl.submit(plugin, files, sink=sink)
        assert len(edited["job_ids"]) == 2 and edited["skipped"] == []
        wait_final(settings, edited["job_ids"], status="COMPLETED")
        assert ctl.submit(plugin, files, sink=sink)["job_ids"] == []
    rows = jobs_by_id(settings, first["job_ids"] + edited["job_ids"])
    assert {r["parser_version"] for r in rows.values()} == {None}  # none was declared
    assert rows_in(tmp_path / "out") == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]


def test_edited_versioned_plugin_is_reported_stale_and_force_reruns(
        cluster_factory: Callable[..., LocalCluster], settings: Settings,
        home: Path, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, **FAST)
    plugin = write_plugin(tmp_path / "orders.py", "1", "1.0.0")
    files = [str(f) for f in make_inputs(tmp_path / "in", 3)]
    sink = f"parquet://{tmp_path / 'out'}"
    with control(cluster) as ctl:
        first = ctl.submit(plugin, files, sink=sink)
        wait_final(settings, first["job_ids"], status="COMPLETED")
        write_plugin(plugin, "7", "1.0.0")  # a changed source under the same version
        stale = ctl.submit(plugin, files, sink=sink)
        assert stale["job_ids"] == []
        assert [s["stale"] for s in stale["skipped"]] == [True] * 3
        assert {s["reason"] for s in stale["skipped"]} == {STALE_REASON}
        skipped_rows = jobs_by_id(settings, [s["job_id"] for s in stale["skipped"]])
        assert {r["result_summary"] for r in skipped_rows.values()} == {STALE_REASON}
        # The CLI says so in one warning line.
        said = cli(home, "submit", plugin, *files, "--sink", sink)
        assert said.returncode == 0, said.stderr
        assert said.stderr.strip() == ("casparian: warning: 3 files were processed by orders "
                                       "1.0.0 with a different source; use --force to re-run")
        forced = ctl.submit(plugin, files, sink=sink, force=True)
        assert len(forced["job_ids"]) == 3
        wait_final(settings, forced["job_ids"], status="COMPLETED")
        # Forced runs record the new source: a plain submit now skips, not stale.
        after = ctl.submit(plugin, files, sink=sink)
        assert after["job_ids"] == [] and not any(s["stale"] for s in after["skipped"])
    assert rows_in(tmp_path / "out") == [1, 1, 1, 7, 7, 7]


# -- standalone runs -----------------------------------------------------------------------

def test_run_twice_in_append_mode_does_not_duplicate_and_force_reruns(
        home: Path, tmp_path: Path) -> None:
    plugin = write_plugin(tmp_path / "orders.py", "1, 2", "1.0.0")
    inputs = make_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    sink = f"parquet://{out}"
    first = cli(home, "run", plugin, *inputs, "--sink", sink, "--mode", "append")
    assert first.returncode == 0, first.stderr
    assert "2 files, 2 succeeded, 0 failed, 0 skipped, 0 stale" in first.stdout
    second = cli(home, "run", plugin, *inputs, "--sink", sink, "--mode", "append")
    assert second.returncode == 0, second.stderr
    assert "2 files, 0 succeeded, 0 failed, 2 skipped, 0 stale" in second.stdout
    assert rows_in(out) == [1, 1, 2, 2]  # not duplicated
    forced = cli(home, "run", plugin, *inputs, "--sink", sink, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "2 files, 2 succeeded, 0 failed, 0 skipped" in forced.stdout
    assert rows_in(out) == [1, 1, 1, 1, 2, 2, 2, 2]
    # A changed source under the same version: reported, not run.
    write_plugin(plugin, "5", "1.0.0")
    stale = cli(home, "run", plugin, *inputs, "--sink", sink)
    assert stale.returncode == 0, stale.stderr
    assert "2 files, 0 succeeded, 0 failed, 0 skipped, 2 stale" in stale.stdout
    assert ("warning: 2 files were processed by orders 1.0.0 with a different source; "
            "use --force to re-run") in stale.stdout
    assert rows_in(out) == [1, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("version", [None, "2.0.0"])
def test_runner_applies_the_sentinel_rule(settings: Settings, tmp_path: Path,
                                          version: str | None) -> None:
    plugin = write_plugin(tmp_path / "p.py", "1", version)
    inputs = make_inputs(tmp_path / "in", 2)
    sink = f"parquet://{tmp_path / 'out'}"
    kw: dict[str, Any] = {"sink": sink, "settings": settings, "progress": False}
    a = runner.run(plugin, inputs, **kw)
    assert (a.ran, len(a.skipped), len(a.stale)) == (2, 0, 0)
    more = make_inputs(tmp_path / "in", 3)  # one new file among the same two
    b = runner.run(plugin, more, **kw)
    assert (b.ran, len(b.skipped), len(b.stale)) == (1, 2, 0)
    assert "3 files, 1 succeeded, 0 failed, 2 skipped, 0 stale" in repr(b)
    write_plugin(plugin, "9", version)
    c = runner.run(plugin, more, **kw)
    if version is None:  # keyed by its source: the edit re-runs every file
        assert (c.ran, len(c.skipped), len(c.stale)) == (3, 0, 0)
    else:
        assert (c.ran, len(c.skipped), len(c.stale)) == (0, 0, 3)
        assert "different source" in c._repr_html_()
        d = runner.run(plugin, more, force=True, **kw)
        assert d.ran == 3 and d.ok

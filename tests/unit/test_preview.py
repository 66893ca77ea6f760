"""``cf.preview`` / ``casparian preview``: a real plugin host in preview mode, no writes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from casparian_nb import Output
from casparian_nb.config import load_settings
from casparian_nb.errors import TrustError
from casparian_nb.previews import preview
from casparian_nb.tape import read_tape
from tests.conftest import FIXTURE_PLUGIN

LIMIT = 3  # a notebook constant the function below uses: shipped as a literal


def double(x: int) -> int:  # a helper defined beside the function: shipped as source
    return x * 2


def orders(path, ctx=None):  # type: ignore[no-untyped-def]  # a "cell-defined" plugin
    print("parsing", Path(path).name)
    ctx.log("ctx says %s", "hi")
    df = pd.read_csv(path)
    df["b"] = df["a"].map(double)
    df["_cf_row_error"] = [None if v <= LIMIT else f"{v} > {LIMIT}" for v in df["a"]]
    return [Output("orders", df), Output("totals", pd.DataFrame({"n": [len(df)]}))]


def broken(path, ctx=None):  # type: ignore[no-untyped-def]
    raise KeyError("no column named price")


def sleepy(path):  # type: ignore[no-untyped-def]
    import time

    time.sleep(30)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir preview uses: must be empty again afterwards."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    p = tmp_path / "data" / "orders.csv"
    p.parent.mkdir()
    p.write_text("a\n1\n2\n3\n4\n5\n")
    return p


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_a_function_previews_with_rows_schema_quarantine_and_log(
        home: Path, csv: Path, scratch: Path) -> None:
    p = preview(orders, csv, rows=2, home=home)
    assert p.ok, p
    assert p.row_counts == {"orders": 3, "totals": 1}
    assert list(p.outputs["orders"]["a"]) == [1, 2] and list(p.outputs["orders"]["b"]) == [2, 4]
    assert p.schemas["orders"].field("a").type == "int64"
    assert p.details["orders"].quarantine_rows == 2
    assert list(p.quarantine["orders"]["_cf_row_error"]) == ["4 > 3", "5 > 3"]
    assert "parsing orders.csv" in p.log and "INFO ctx says hi" in p.log
    assert p.plugin_name == "orders"
    html = p._repr_html_()
    assert "orders</b>: 3 rows, 2 would be quarantined" in html and "parsing orders.csv" in html
    assert "orders: 3 rows, 2 quarantined" in repr(p)
    # nothing written: no state DB, no sink output, no file in the home, temp dir cleaned up
    assert files_under(home) == [] and files_under(scratch) == []
    assert not (Path.cwd() / "output").exists() or files_under(Path.cwd() / "output") == []


def test_a_raising_plugin_returns_its_remote_traceback(home: Path, csv: Path) -> None:
    p = preview(broken, csv, home=home)
    assert not p.ok and p.error is not None
    assert (p.error.ename, p.error.evalue) == ("KeyError", "'no column named price'")
    assert 'raise KeyError("no column named price")' in p.traceback
    assert p.traceback.count("Traceback (most recent call last)") == 1
    assert "KeyError</b>: &#x27;no column named price&#x27;" in p._repr_html_()
    with pytest.raises(Exception, match="no column named price"):
        p.raise_for_error()


def test_the_job_timeout_applies(home: Path, csv: Path) -> None:
    p = preview(sleepy, csv, timeout=1.0, home=home)
    assert p.error is not None and p.error.ename == "JobTimeoutError"
    assert p.elapsed_s < 20


def test_the_trust_policy_applies_to_notebook_functions(home: Path, csv: Path) -> None:
    (home / "config.toml").write_text("[trust]\nallow_unsigned_python = false\n")
    with pytest.raises(TrustError, match="unsigned plugin refused"):
        preview(orders, csv, settings=load_settings(home))


def test_cli_preview_json_text_and_tape(home: Path, csv: Path, tmp_path: Path) -> None:
    tape = tmp_path / "p.tape"
    data = tmp_path / "in.txt"
    data.write_text("mode=quarantine\nline\n")
    cmd = [sys.executable, "-m", "casparian_nb", "--home", str(home)]
    done = subprocess.run([*cmd, "--tape", str(tape), "preview", str(FIXTURE_PLUGIN), str(data),
                           "--rows", "3", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    out = doc["outputs"]["fixture_output"]
    assert doc["ok"] and len(out["head"]) == min(3, out["rows"]) and out["schema"][0].startswith("id")
    events = list(read_tape(tape))
    [cmd_event] = [e for e in events if e.name == "Preview"]
    [resp] = [e for e in events if e.parent_id == cmd_event.event_id]
    assert resp.correlation_id == cmd_event.correlation_id and resp.payload["status"] == "success"
    assert not (home / "state.sqlite").exists()

    bad = tmp_path / "bad.txt"
    bad.write_text("mode=error msg=cannot parse line 7\n")
    done = subprocess.run([*cmd, "preview", str(FIXTURE_PLUGIN), str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.count("RuntimeError: cannot parse line 7") == 2  # header and traceback
    assert done.stdout.count("Traceback (most recent call last)") == 1

"""``casparian plugin keygen → sign → verify → run`` with unsigned plugins refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = """\
import pyarrow as pa

name = "rows"

def parse(path):
    lines = open(path).read().split()
    return pa.table({"word": lines})
"""


def casparian(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASPARIAN_")}
    env.update(PYTHONPATH=str(ROOT), CASPARIAN_ALLOW_UNSIGNED_PYTHON="false")
    return subprocess.run([sys.executable, "-m", "casparian_nb", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_keygen_sign_verify_run(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "rows.py").write_text(PLUGIN)
    (work / "in.txt").write_text("a b c\n")
    out = f"parquet://{tmp_path / 'out'}"

    refused = casparian(home, "run", "rows.py", "in.txt", "--sink", out, cwd=work)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "`casparian plugin sign`" in refused.stderr
    unsigned = casparian(home, "plugin", "verify", "rows.py", cwd=work)
    assert unsigned.returncode == 1 and unsigned.stdout.startswith("refused: ")

    made = casparian(home, "plugin", "keygen", "--signer", "alice", cwd=work)
    assert made.returncode == 0, made.stderr
    key = home / "keys" / "alice.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / "keys" / "alice.pub").is_file()
    again = casparian(home, "plugin", "keygen", "--signer", "alice", cwd=work)
    assert again.returncode == 2 and "already exists" in again.stderr

    signed = casparian(home, "plugin", "sign", "rows.py", cwd=work)
    assert signed.returncode == 0, signed.stderr
    assert (work / "rows.py.sig").is_file()
    ok = casparian(home, "plugin", "verify", "rows.py", cwd=work)
    assert ok.returncode == 0 and "signed by alice" in ok.stdout, ok.stdout + ok.stderr
    ran = casparian(home, "run", "rows.py", "in.txt", "--sink", out, cwd=work)
    assert ran.returncode == 0, ran.stderr
    (written,) = (tmp_path / "out").glob("rows_*.parquet")
    assert pq.read_table(written).column("word").to_pylist() == ["a", "b", "c"]

    # Edited after signing: refused, and verify says why.
    (work / "rows.py").write_text(PLUGIN + "\n# edited\n")
    tampered = casparian(home, "plugin", "verify", "rows.py", cwd=work)
    assert tampered.returncode == 1 and "modified after signing" in tampered.stdout
    rerun = casparian(home, "run", "rows.py", "in.txt", "--sink", out, cwd=work)
    assert rerun.returncode == 2 and "modified after signing" in rerun.stderr


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "rows.py").write_text(PLUGIN)
    assert casparian(home, "plugin", "keygen", cwd=work).returncode == 0
    (key,) = (home / "keys").glob("*.key")
    key.chmod(0o644)
    done = casparian(home, "plugin", "sign", "rows.py", cwd=work)
    assert done.returncode == 2 and "chmod 600" in done.stderr and done.stderr.count("\n") == 1
    assert not (work / "rows.py.sig").exists()

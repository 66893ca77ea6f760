"""The package builds as one pure-Python wheel whose version is ``casparian_nb.__version__``,
and installs and runs where no C compiler exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import casparian_nb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # hatchling comes with the test extras: no download, the same backend as a normal install
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("*.whl")
    return built


def test_one_pure_python_wheel_named_by_the_package_version(wheel: Path) -> None:
    assert wheel.name == f"casparian_nb-{casparian_nb.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    compiled = [n for n in names if n.endswith((".so", ".pyd", ".c", ".dylib"))]
    assert compiled == []
    for needed in ("casparian_nb/py.typed", "casparian_nb/notebook/static/queue.js",
                   "casparian_nb/notebook/static/timeline.js", "casparian_nb/cli/__init__.py"):
        assert needed in names
    metadata = zipfile.ZipFile(wheel).read(
        f"casparian_nb-{casparian_nb.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {casparian_nb.__version__}\n" in metadata


def test_metadata_names_the_license_and_the_lab_extension(wheel: Path) -> None:
    """The license travels with the wheel; PyPI shows the README and the Jupyter classifiers."""
    zf = zipfile.ZipFile(wheel)
    dist_info = f"casparian_nb-{casparian_nb.__version__}.dist-info"
    metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    assert f"{dist_info}/licenses/LICENSE" in zf.namelist()
    assert "Apache License" in zf.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "Classifier: Framework :: Jupyter :: JupyterLab :: 4" in metadata
    assert "Classifier: Framework :: Jupyter :: JupyterLab :: Extensions :: Prebuilt" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    assert "# casparian_nb" in metadata  # the README is the long description
    for label in ("Source", "Documentation", "Issues"):
        assert f"Project-URL: {label}, https://github.com/casparian-flow/casparian_nb" in metadata


def test_installs_and_runs_without_a_c_compiler(wheel: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "no-compiler"
    bin_dir.mkdir()
    for tool in ("cc", "gcc", "c++", "g++", "clang"):  # any compiler call would fail loudly
        fake = bin_dir / tool
        fake.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CC": str(bin_dir / "cc"),
           "CXX": str(bin_dir / "c++")}
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, env=env, timeout=300)
    env["PYTHONPATH"] = str(target)  # the installed copy, with this environment's dependencies
    done = subprocess.run([str(target / "bin" / "casparian"), "--version"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"casparian {casparian_nb.__version__}"
    where = subprocess.run([sys.executable, "-c", "import casparian_nb; print(casparian_nb.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.strip().startswith(str(target))


def test_the_wheel_ships_the_prebuilt_lab_extension_and_enables_the_server_extension(
        wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    data = f"casparian_nb-{casparian_nb.__version__}.data/data/"
    lab = f"{data}share/jupyter/labextensions/casparian-nb/"
    meta = json.loads(archive.read(f"{lab}package.json"))
    assert meta["name"] == "casparian-nb"
    # built by the build (not committed): webpack's federated entry point is named in it
    entry = meta["jupyterlab"]["_build"]["load"]
    assert f"{lab}{entry}" in names
    assert f"{lab}static/style.js" in names
    assert json.loads(archive.read(f"{lab}install.json"))["packageName"] == "casparian_nb"
    config = json.loads(archive.read(
        f"{data}etc/jupyter/jupyter_server_config.d/casparian_nb.json"))
    assert config == {"ServerApp": {"jpserver_extensions": {"casparian_nb.serverext": True}}}
    assert "casparian_nb/serverext/handlers.py" in names

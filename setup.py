"""Build: casparian_nb is pure Python, and the tape reducer is also compiled when it can be.

``casparian_nb/tape/reducer.py`` runs once per event of a tape (``tape explain``, replay, the
timeline). At install, a copy of it is compiled with mypyc (C, through the system's
compiler) as ``casparian_nb.tape._reducer_c``, stamped with the SHA-256 of the source it was
built from; ``reducer.py`` switches to it only while its own source has that digest, so an
edited reducer is never shadowed by a stale build. Without mypy or a C compiler, if the
build fails, or with ``CASPARIAN_PURE_PYTHON=1``, the package installs and runs as plain
Python with the same results (the tests run both).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "casparian_nb"
# What the reducer imports, staged alone so the compile does not need the package's
# run-time dependencies (the build environment has none of them).
STAGED = ("errors.py", "tape/_decode.py", "tape/envelope.py")


def compiled_reducer() -> list[Any]:
    if os.environ.get("CASPARIAN_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("casparian_nb: mypy is not installed; the tape reducer stays pure Python")
        return []
    stage = ROOT / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "casparian_nb" / "tape").mkdir(parents=True)
    for init in ("__init__.py", "tape/__init__.py"):
        (stage / "casparian_nb" / init).write_text("")
    for name in STAGED:
        shutil.copyfile(PACKAGE / name, stage / "casparian_nb" / name)
    source = (PACKAGE / "tape" / "reducer.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    copy = stage / "casparian_nb" / "tape" / "_reducer_c.py"
    copy.write_bytes(source + f'\nSOURCE_DIGEST = "{digest}"\n'.encode())
    here = os.getcwd()
    os.chdir(stage)  # module names come from the staged tree; no project config applies
    try:
        extensions = mypycify(["--ignore-missing-imports", "--config-file=",
                               "casparian_nb/tape/_reducer_c.py"], opt_level="3")
    except BaseException as exc:  # mypy exits on a type error: build the pure package
        print(f"casparian_nb: the tape reducer stays pure Python ({exc!r})")
        return []
    finally:
        os.chdir(here)
    for ext in extensions:
        ext.optional = True  # a compiler error skips the extension, not the install
        ext.sources = [str(stage / s) for s in ext.sources]
        ext.include_dirs = [d if os.path.isabs(d) else str(stage / d) for d in ext.include_dirs]
        ext.depends = [d if os.path.isabs(d) else str(stage / d) for d in ext.depends]
    return extensions


setup(ext_modules=compiled_reducer())

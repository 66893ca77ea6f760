"""Optional dependencies: a missing one names the extra that brings it.

The widgets need ``anywidget``/``ipywidgets`` (the ``notebook`` extra), the Dask executor
``distributed`` (the ``dask`` extra). Without them the user gets one line saying what to
install, not a bare ``ModuleNotFoundError`` from deep inside an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["EXTRA_OF", "import_with_extra", "missing_extra"]

#: Top-level module -> the extra of casparian_nb that installs it.
EXTRA_OF = {
    "anywidget": "notebook",
    "ipywidgets": "notebook",
    "IPython": "notebook",
    "ipykernel": "notebook",
    "traitlets": "notebook",
    "jupyter_server": "notebook",
    "nbclient": "notebook",
    "nbformat": "notebook",
    "nbconvert": "notebook",
    "distributed": "dask",
    "dask": "dask",
}


def missing_extra(exc: ModuleNotFoundError, feature: str) -> MissingExtraError | None:
    """The one-line error for ``exc`` when the missing module belongs to an extra."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return MissingExtraError(f"{feature} needs {top}, which is not installed: "
                             f"pip install 'casparian_nb[{extra}]'")


def import_with_extra(module: str, feature: str) -> ModuleType:
    """``importlib.import_module(module)``, with :func:`missing_extra`'s message on failure."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, feature)
        if error is None:
            raise
        raise error from exc

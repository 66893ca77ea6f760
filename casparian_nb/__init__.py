"""casparian_nb — turn directories of messy files into typed, queryable tables you can trust.

>>> import casparian_nb as cf
>>> ctl = cf.start(workers=2)                                   # doctest: +SKIP
>>> ids = ctl.submit("plugins/orders.py", "data/*.csv")          # doctest: +SKIP

Names are imported lazily so that ``import casparian_nb`` stays cheap for plugin hosts and the
CLI (pyarrow, zmq and the notebook stack load only when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (``module:attr`` when the names differ)
_EXPORTS: dict[str, str] = {
    "CasparianError": "casparian_nb.errors",
    "PermanentError": "casparian_nb.errors",
    "TransientError": "casparian_nb.errors",
    "RemoteJobError": "casparian_nb.errors",
    "Output": "casparian_nb.plugins",
    "JobContext": "casparian_nb.plugins",
    "SinkMode": "casparian_nb.sinks",
    "Settings": "casparian_nb.config",
    "load_settings": "casparian_nb.config",
    "run": "casparian_nb.notebook._run",
    "preview": "casparian_nb.notebook.controller",
    "Preview": "casparian_nb.previews",
    "JobLog": "casparian_nb.joblogs",
    "Compaction": "casparian_nb.notebook._compaction",
    "start": "casparian_nb.notebook.controller",
    "attach": "casparian_nb.notebook.controller",
    "Controller": "casparian_nb.notebook.controller",
    "explain": "casparian_nb.tape:explain_tape",
    "validate": "casparian_nb.tape:validate_tape",
    "timeline": "casparian_nb.notebook.timeline",
    "chart": "casparian_nb.notebook.charts",
}

__all__ = [
    "CasparianError",
    "Compaction",
    "Controller",
    "JobContext",
    "JobLog",
    "Output",
    "PermanentError",
    "Preview",
    "RemoteJobError",
    "Settings",
    "SinkMode",
    "TransientError",
    "__version__",
    "attach",
    "chart",
    "explain",
    "load_ipython_extension",
    "load_settings",
    "preview",
    "run",
    "start",
    "timeline",
    "validate",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .config import Settings, load_settings
    from .errors import CasparianError, PermanentError, RemoteJobError, TransientError
    from .plugins import JobContext, Output


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'casparian_nb' has no attribute {name!r}")
    module, _, attr = module.partition(":")
    from ._extras import import_with_extra

    value = getattr(import_with_extra(module, f"casparian_nb.{name}"), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext casparian_nb`` registers the ``%%cql`` cell magic."""
    from .notebook.magic import load_ipython_extension as _load

    _load(ipython)

"""``cf.run``: :func:`casparian_nb.runner.run` with a progress bar widget in a notebook.

Outside a kernel it is the runner's own ``run`` (a terminal bar on stderr when on a TTY);
nothing here imports the widget stack unless a kernel is there to show it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .. import runner
from ._kernel import in_kernel

__all__ = ["run"]


@functools.wraps(runner.run)
def run(plugin: Any, inputs: Any, *, progress: Any = None, **kwargs: Any) -> runner.RunResult:
    if progress is None or progress is True:
        if in_kernel():
            from .progress import ProgressWidget

            name = os.path.basename(os.fspath(plugin)) if isinstance(plugin, str | os.PathLike) \
                else str(plugin)
            progress = ProgressWidget(f"run {name}").show()
    return runner.run(plugin, inputs, progress=progress, **kwargs)

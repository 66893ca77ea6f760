"""Whether this process is a Jupyter kernel (where widgets can display), without importing
the widget stack."""

from __future__ import annotations

__all__ = ["in_kernel"]


def in_kernel() -> bool:
    """True inside a Jupyter kernel; False in scripts, terminals and plain IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # IPython comes with the notebook extra; a bare install has none
        return False
    return getattr(get_ipython(), "kernel", None) is not None

"""``%load_ext casparian_nb`` → the ``%%cql`` cell magic: SQL over the outputs.

::

    %%cql
    select plugin_name, count(*) from jobs group by 1

    %%cql df <<
    select * from orders where amount > 100

The cell runs on the catalog of the current controller (the last ``cf.start()`` /
``cf.attach()`` not yet stopped), else on a catalog over ``$CASPARIAN_HOME`` (default
``~/.casparian_flow``), so SQL works without a sentinel. The name ``cql`` keeps clear of
jupysql's ``%sql``/``%%sql``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pandas as pd
from IPython.core.magic import Magics, cell_magic, magics_class

from ..config import default_home
from ._reprs import QueryResult, timed_query
from .catalog import OutputCatalog

__all__ = ["CqlMagics", "load_ipython_extension"]

_ASSIGN = re.compile(r"^\s*(?:([A-Za-z_][A-Za-z0-9_]*)\s*<<)?\s*$")


@magics_class
class CqlMagics(Magics):
    """The ``%%cql`` magic and the fallback catalogs it keeps per home."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._catalogs: dict[str, OutputCatalog] = {}

    def _runner(self) -> Callable[[str], pd.DataFrame]:
        """``ctl.sql`` of the current controller (so the query lands on its session tape),
        else a catalog over ``$CASPARIAN_HOME``."""
        from .controller import current_controller

        ctl = current_controller()
        if ctl is not None:
            return ctl.sql
        home = str(default_home())
        cat = self._catalogs.get(home)
        if cat is None:
            cat = self._catalogs[home] = OutputCatalog(home)
        return cat.sql

    @cell_magic
    def cql(self, line: str, cell: str) -> QueryResult | None:
        """Run the cell as SQL over the outputs, jobs, materializations and tape events.

        ``%%cql NAME <<`` also stores the result DataFrame in ``NAME``.
        """
        m = _ASSIGN.match(line)
        if m is None:
            raise ValueError(f"%%cql: cannot parse {line.strip()!r}; use '%%cql' or '%%cql df <<'")
        query = cell.strip()
        if not query:
            return None
        result = timed_query(self._runner(), query)
        if m.group(1) and self.shell is not None:
            self.shell.user_ns[m.group(1)] = result.df
        return result

    def close(self) -> None:
        """Close the fallback catalogs (the controller owns its own)."""
        for cat in self._catalogs.values():
            cat.close()
        self._catalogs.clear()


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%cql`` (idempotent: loading twice keeps one instance)."""
    ipython.register_magics(CqlMagics(ipython))

"""``%load_ext casparian_nb`` → ``%cql`` / ``%%cql``: SQL over the outputs.

::

    %cql select count(*) from orders

    %%cql -o big
    select * from orders where amount > {threshold}

``{name}`` is a notebook variable, bound as a DuckDB parameter (never pasted into the SQL;
see :mod:`._sqlparams`). ``-o NAME`` (or the older ``NAME <<``) also stores the result in
``NAME``; ``--arrow`` returns a pyarrow Table instead of a pandas DataFrame.

The query runs on the catalog of the current controller (the last ``cf.start()`` /
``cf.attach()`` not yet stopped), else on a catalog over ``$CASPARIAN_HOME`` (default
``~/.casparian_flow``), so SQL works without a sentinel. The name ``cql`` keeps clear of
jupysql's ``%sql``/``%%sql``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from ..config import default_home
from ..errors import ConfigError
from ._reprs import QueryResult, timed_query
from ._sqlparams import bind_variables
from .catalog import OutputCatalog

__all__ = ["CqlMagics", "load_ipython_extension"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION = re.compile(r"(?:(?:-o|--out)\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)|--arrow)(?:\s+|$)")
_USAGE = "use '%%cql', '%%cql -o df' (or '%%cql df <<'), '%%cql --arrow'"


class MagicUsageError(ConfigError):
    """A ``%cql``/``%%cql`` line the magic cannot read."""


class CqlOptions(NamedTuple):
    """What the magic line asked for; ``rest`` is the SQL left on a ``%cql`` line."""

    output: str | None
    arrow: bool
    rest: str


def parse_line(line: str, *, cell: bool) -> CqlOptions:
    """Read the options of a magic line (``-o NAME``, ``NAME <<``, ``--arrow``)."""
    text = line.strip()
    if cell and text.endswith("<<"):  # the older '%%cql df <<' spelling
        name = text[:-2].strip()
        if not _IDENT.match(name):
            raise MagicUsageError(f"%%cql: cannot parse {text!r}; {_USAGE}")
        return CqlOptions(name, False, "")
    output, arrow = None, False
    while text.startswith("-"):
        m = _OPTION.match(text)
        if m is None:
            raise MagicUsageError(f"%cql: cannot parse {line.strip()!r}; {_USAGE}")
        if m.group("name"):
            output = m.group("name")
        else:
            arrow = True
        text = text[m.end():].lstrip()
    if cell and text:
        raise MagicUsageError(f"%%cql: cannot parse {line.strip()!r}; {_USAGE}")
    return CqlOptions(output, arrow, text)


@magics_class
class CqlMagics(Magics):
    """The ``%cql``/``%%cql`` magics and the fallback catalogs they keep per home."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._catalogs: dict[str, OutputCatalog] = {}

    def _runner(self) -> Callable[..., Any]:
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

    def _query(self, options: CqlOptions, sql: str) -> QueryResult | Any | None:
        query = sql.strip()
        if not query:
            return None
        namespace = self.shell.user_ns if self.shell is not None else {}
        query, params = bind_variables(query, namespace)
        run = self._runner()
        if options.arrow:
            table = run(query, params or None, as_="arrow")
            if options.output and self.shell is not None:
                self.shell.user_ns[options.output] = table
            return table
        result = timed_query(lambda q: run(q, params or None), query)
        if options.output and self.shell is not None:
            self.shell.user_ns[options.output] = result.df
        return result

    # IPython would paste ``{name}`` into the line as text before we see it: SQL injection.
    @line_cell_magic
    @no_var_expand
    def cql(self, line: str, cell: str | None = None) -> QueryResult | Any | None:
        """SQL over the outputs, jobs, materializations and tape events.

        ``%cql [-o NAME] [--arrow] SELECT ...`` runs one line; ``%%cql`` runs the cell.
        ``-o NAME`` (or ``%%cql NAME <<``) also stores the result in ``NAME``; ``{name}``
        binds the notebook variable ``name`` as a query parameter.
        """
        options = parse_line(line, cell=cell is not None)
        return self._query(options, options.rest if cell is None else cell)

    def close(self) -> None:
        """Close the fallback catalogs (the controller owns its own)."""
        for cat in self._catalogs.values():
            cat.close()
        self._catalogs.clear()


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%cql``/``%%cql`` (idempotent: loading twice keeps one instance)."""
    ipython.register_magics(CqlMagics(ipython))

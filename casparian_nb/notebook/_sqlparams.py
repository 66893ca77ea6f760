"""``{name}`` in a ``%cql`` query: a notebook variable bound as a DuckDB parameter.

The value never becomes SQL text: ``{limit}`` is rewritten to ``$limit`` and the value travels
as a named parameter, so ``{name}`` with ``name = "x'; drop table t; --"`` matches a string,
it does not run one. Braces inside string literals, quoted identifiers and comments are left
alone, as are DuckDB's struct/map literals (``{'a': 1}``) since only ``{identifier}`` is a
placeholder; ``{{`` and ``}}`` write a literal brace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import CasparianError

__all__ = ["MissingVariableError", "bind_variables"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingVariableError(CasparianError, NameError):
    """A ``{name}`` in a query names no notebook variable."""


def _segments(query: str) -> list[tuple[bool, str]]:
    """``query`` cut into (is_code, text) pieces: code, or a quoted/comment piece to keep."""
    out: list[tuple[bool, str]] = []
    i, start, n = 0, 0, len(query)
    while i < n:
        ch = query[i]
        end = -1
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if query[end] == ch:
                    if end + 1 < n and query[end + 1] == ch:  # doubled quote escapes itself
                        end += 2
                        continue
                    break
                end += 1
            end = min(end + 1, n)
        elif query.startswith("--", i):
            nl = query.find("\n", i)
            end = n if nl < 0 else nl
        elif query.startswith("/*", i):
            close = query.find("*/", i + 2)
            end = n if close < 0 else close + 2
        if end < 0:
            i += 1
            continue
        if i > start:
            out.append((True, query[start:i]))
        out.append((False, query[i:end]))
        i = start = end
    if start < n:
        out.append((True, query[start:]))
    return out


def bind_variables(query: str, namespace: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Rewrite ``{name}`` placeholders to ``$name`` and collect their values from ``namespace``.

    Returns the rewritten query and the parameters for ``duckdb.execute(query, params)``.
    Raises :class:`MissingVariableError` naming the first unknown variable.
    """
    params: dict[str, Any] = {}

    def substitute(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in namespace:
            raise MissingVariableError(f"%cql: {{{name}}} names no notebook variable; define "
                                       f"{name} first, or write {{{{{name}}}}} for literal braces")
        params[name] = namespace[name]
        return f"${name}"

    pieces = []
    for is_code, text in _segments(query):
        if is_code:
            # Escaped braces survive the placeholder pass as sentinels, then become braces.
            text = text.replace("{{", "\x00").replace("}}", "\x01")
            text = _PLACEHOLDER.sub(substitute, text)
            text = text.replace("\x00", "{").replace("\x01", "}")
        pieces.append(text)
    return "".join(pieces), params

"""Per-output routing: which sink each output of a job goes to.

``sink=`` is one URI (every output goes there) or a mapping from output names to URIs, with
``"*"`` for every output not named::

    SinkRouting.parse({"orders": "duckdb://db.duckdb", "errors": "csv://out/errors",
                       "*": "parquet://out"})

An output's quarantine sibling (``orders_quarantine``) follows its output unless the mapping
names it. ``str(routing)`` is the one canonical text that travels in ``JobSpec.sink`` and the
state DB's ``sink_uri`` column: the plain canonical URI when every output goes to one sink
(so single-sink jobs, their keys and tapes are what they always were), else compact JSON with
sorted keys and canonical URIs. :meth:`SinkRouting.parse` reads either back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from ..errors import SinkRoutingError, SinkURIError
from .uri import SinkURI, parse_sink_uri, working_dir

__all__ = ["ANY_OUTPUT", "SinkRouting", "routing_from_args"]

#: The route key for "every output the mapping does not name".
ANY_OUTPUT = "*"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_QUARANTINE = "_quarantine"


@dataclass(frozen=True)
class SinkRouting:
    """Output name (or :data:`ANY_OUTPUT`) -> sink, parsed and canonical."""

    routes: tuple[tuple[str, SinkURI], ...]

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | SinkURI | SinkRouting, *,
              base: str | os.PathLike[str] | None = None) -> SinkRouting:
        """Parse a URI, a mapping, or the canonical text of either (JSON for a mapping).

        Relative paths resolve against ``base`` (default: the current directory). Raises
        :class:`SinkURIError` for a bad URI, :class:`SinkRoutingError` for a bad mapping.
        """
        if isinstance(value, SinkRouting):
            return value
        if isinstance(value, SinkURI):
            return cls(((ANY_OUTPUT, value),))
        if isinstance(value, Mapping):
            return cls._from_mapping(value, base)
        # Text is parsed once per spelling, as parse_sink_uri does (a plugin host and the
        # committer see the same routing for every job); "~" ($HOME's) is never cached.
        base_text = None if base is None else os.fspath(base)
        if "~" in value or (base_text is not None and "~" in base_text):
            return _parse_text.__wrapped__(value, base_text, working_dir())
        return _parse_text(value, base_text, working_dir())

    @classmethod
    def _from_text(cls, value: str, base: str | None) -> SinkRouting:
        if value.lstrip().startswith("{"):
            try:
                mapping = json.loads(value)
            except ValueError:
                raise SinkRoutingError(f"sink routing {value!r} is not valid JSON") from None
            if not isinstance(mapping, dict):
                raise SinkRoutingError(f"sink routing {value!r} is not a JSON object")
            return cls._from_mapping(mapping, base)
        return cls(((ANY_OUTPUT, parse_sink_uri(value, base=base)),))

    @classmethod
    def _from_mapping(cls, mapping: Mapping[str, Any],
                      base: str | os.PathLike[str] | None) -> SinkRouting:
        if not mapping:
            raise SinkRoutingError("sink mapping is empty; give at least one NAME=URI or '*'")
        routes: dict[str, SinkURI] = {}
        for name, uri in mapping.items():
            if not isinstance(name, str) or not (name == ANY_OUTPUT or _NAME.match(name)):
                raise SinkRoutingError(
                    f"sink mapping key {name!r} is not an output name ([a-z][a-z0-9_]*) or '*'")
            try:
                routes[name] = parse_sink_uri(uri, base=base)
            except SinkURIError as exc:
                raise SinkURIError(f"sink for output {name!r}: {exc}") from None
        return cls(tuple(sorted(routes.items())))

    # -- lookups --------------------------------------------------------------------------
    @cached_property
    def _by_name(self) -> dict[str, SinkURI]:
        return dict(self.routes)  # looked up per output batch by the plugin host

    @property
    def default(self) -> SinkURI | None:
        """The ``"*"`` sink, if any."""
        return self._by_name.get(ANY_OUTPUT)

    @property
    def single(self) -> SinkURI | None:
        """The one sink when every output goes to it (only ``"*"``), else None."""
        return self.routes[0][1] if len(self.routes) == 1 and self.routes[0][0] == ANY_OUTPUT \
            else None

    def route(self, output: str) -> SinkURI | None:
        """The sink of ``output``: its own route, else its base output's (for
        ``<name>_quarantine``), else ``"*"``; None when none applies."""
        routes = self._by_name
        if output in routes:
            return routes[output]
        if output.endswith(_QUARANTINE) and output[: -len(_QUARANTINE)] in routes:
            return routes[output[: -len(_QUARANTINE)]]
        return routes.get(ANY_OUTPUT)

    def sink_for(self, output: str) -> SinkURI:
        """Like :meth:`route`, but an output without one is an error naming it."""
        sink = self.route(output)
        if sink is None:
            named = ", ".join(n for n, _ in self.routes)
            raise SinkRoutingError(
                f"output {output!r} has no sink: the sink mapping names {named} and no '*'")
        return sink

    def sinks(self) -> list[SinkURI]:
        """Every distinct sink, in canonical order."""
        return sorted({s for _, s in self.routes}, key=str)

    def check_outputs(self, declared: Collection[str]) -> None:
        """Refuse names the plugin does not declare, and declared outputs without a route."""
        known = set(declared) | {f"{d}{_QUARANTINE}" for d in declared}
        unknown = sorted(n for n, _ in self.routes if n != ANY_OUTPUT and n not in known)
        if unknown:
            raise SinkRoutingError(
                f"sink mapping names output(s) {', '.join(map(repr, unknown))} that the plugin "
                f"does not declare (it declares {', '.join(map(repr, sorted(declared)))})")
        for name in sorted(declared):
            self.sink_for(name)

    def __str__(self) -> str:
        single = self.single
        if single is not None:
            return str(single)
        return json.dumps({n: str(s) for n, s in self.routes}, separators=(",", ":"),
                          sort_keys=True)


def routing_from_args(values: Iterable[str]) -> str | dict[str, str] | None:
    """What repeated ``--sink`` options mean: ``NAME=URI`` routes one output, a bare ``URI``
    is ``"*"``. One bare URI stays a plain string; nothing given is None."""
    items = list(values)
    if not items:
        return None
    mapping: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        # "duckdb://f?table=t" also holds "=": a name never holds "://" or "?".
        if not sep or "://" in name or "?" in name:
            name, uri = ANY_OUTPUT, item
        name = name.strip()
        if name in mapping:
            raise SinkRoutingError(f"--sink given twice for {name!r}")
        mapping[name] = uri.strip()
    if list(mapping) == [ANY_OUTPUT]:
        return mapping[ANY_OUTPUT]
    return mapping


@lru_cache(maxsize=256)
def _parse_text(value: str, base: str | None, cwd: str) -> SinkRouting:
    """:meth:`SinkRouting.parse` of text; ``cwd`` keys the cache only (a relative path means
    something else after a chdir). A SinkRouting is immutable, so sharing one is safe."""
    return SinkRouting._from_text(value, base)

"""Scrubbing identities out of log text for support bundles (:mod:`casparian_nb.bundle`).

:class:`Scrubber` replaces the home directory, the user's home directory, user names and host
names with placeholders, hashes other paths and data file names with a per-bundle salt, and
drops the source lines a traceback quotes from files outside the libraries (plugins).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Scrubber"]

#: Names casparian itself gives to tapes and logs (kept; anything else is hashed).
_OWN_NAME = re.compile(
    r"^(?:(?:sentinel|session|notebook|demo|cli)(?:-[0-9A-Za-z]+)*\.tape"
    r"|sentinel\.(?:log(?:\.1)?|out)|worker-\d+\.out|host-w-[0-9a-f]{1,16}(?:-\d+)*\.log(?:\.1)?)$"
)
#: Directory and file names of a home's layout, kept inside scrubbed ``<home>/...`` paths.
_LAYOUT = frozenset({
    "tapes", "logs", "staging", "plugins", "output", "demo", "data", "state.sqlite",
    "state.sqlite-wal", "state.sqlite-shm", "state.sqlite.lock", "sentinel.json",
    "config.toml",
})


_SEG = r"[^\s'\"<>:;,()\[\]{}|]"
_DATA_EXT = (
    "csv|tsv|json|jsonl|ndjson|parquet|arrow|feather|txt|xml|xlsx|xls|py|pyc|gz|zip|bz2|zst|"
    "duckdb|sqlite|db|dat|bin|fix|toml|yaml|yml|ini|h5|hdf5|pdf|orc|avro|pkl|ipynb"
)
_PATHS = re.compile(
    rf"""
      (?P<home><(?:home|userhome)>(?:/{_SEG}+)*/?)              # placeholders put in first
    | (?P<uri>[A-Za-z][A-Za-z0-9+.\-]*://(?:<(?:home|userhome)>)?[^\s'"<>()]*)  # scheme://
    | (?P<win>(?<![\w:])[A-Za-z]:\\[^\s'"<>]*)                  # C:\windows\path
    | (?P<unc>\\\\[^\s'"<>\\]+\\[^\s'"<>]*)                     # \\unc\share
    | (?P<abs>(?:~|\.{{1,2}})?/(?:{_SEG}+/?)+)                  # /abs, ~/x, ./x, ../x
    | (?P<rel>[\w.\-]+(?:/[\w.\-]+)+/?)                         # rel/ative/path
    | (?P<file>[\w.\-]+\.(?:{_DATA_EXT})\b)                     # orders.csv
    """,
    re.VERBOSE | re.IGNORECASE,
)
_KEEP_SCHEMES = frozenset({"tcp", "inproc", "udp"})  # ZMQ endpoints: useful, not private
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+')
_CARETS = re.compile(r"^\s*[\^~]+\s*$")


def _user_names() -> set[str]:
    names: set[str] = set()
    with contextlib.suppress(Exception):
        names.add(getpass.getuser())
    with contextlib.suppress(Exception):
        import pwd

        names.add(pwd.getpwuid(os.getuid()).pw_name)
    return {n for n in names if n and len(n) >= 2}


def _host_names() -> set[str]:
    names: set[str] = set()
    for getter in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(Exception):
            names.add(getter())
    # Also the short name of a dotted host ("build7" of "build7.corp.example").
    names |= {n.split(".")[0] for n in names}
    return {n for n in names if n and len(n) >= 2 and n not in ("localhost",)}


def _variants(path: Path | str) -> set[str]:
    """A path as written, made absolute and resolved (symlinked /tmp, ...)."""
    out: set[str] = set()
    text = str(path)
    if not text or text == "/":
        return out
    out.add(text.rstrip("/") or text)
    with contextlib.suppress(OSError):
        out.add(os.path.abspath(text).rstrip("/"))
    with contextlib.suppress(OSError):
        out.add(os.path.realpath(text).rstrip("/"))
    return {v for v in out if v and v != "/"}


def _alternation(values: Iterable[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))


class Scrubber:
    """Removes the home directory, user and host names (and, in logs, every path) from text.

    ``hash`` is a salted 16-hex hash (the tape :class:`~casparian_nb.tape.Redactor`'s, with
    this bundle's salt), so the same path gets the same token throughout one bundle.
    """

    def __init__(self, home: Path | str, *, salt: bytes | None = None,
                 users: Iterable[str] | None = None, hosts: Iterable[str] | None = None,
                 user_home: str | None = None) -> None:
        from .tape import Redactor

        self._redactor = Redactor(salt)
        user_home = os.path.expanduser("~") if user_home is None else user_home
        literals: dict[str, str] = {}
        for v in _variants(user_home):
            literals[v] = "<userhome>"
        for v in _variants(home):
            literals[v] = "<home>"  # after userhome: the home is usually inside it
        self._literals = literals
        alt = _alternation(literals)
        self._literal_rx = (
            re.compile(rf"(?:{alt})(?=[/\s'\"<>:;,()\[\]{{}}|\\]|$)") if alt else None
        )
        # The same literals as they appear JSON-escaped inside tape lines.
        json_lits = {json.dumps(k, ensure_ascii=False)[1:-1]: v for k, v in literals.items()}
        json_lits = {k: v for k, v in json_lits.items() if k not in literals}
        jalt = _alternation(json_lits)
        self._json_literals = json_lits
        self._json_literal_rx = re.compile(rf"(?:{jalt})(?=[/\s'\"<>:;,\\]|$)") if jalt else None

        users = _user_names() if users is None else {u for u in users if u and len(u) >= 2}
        hosts = _host_names() if hosts is None else {h for h in hosts if h and len(h) >= 2}
        self._user_rx = (re.compile(rf"(?<!\w)(?:{_alternation(users)})(?!\w)") if users
                         else None)
        self._host_rx = (re.compile(rf"(?<!\w)(?:{_alternation(hosts)})(?!\w)", re.IGNORECASE)
                         if hosts else None)
        # Library and interpreter locations: tracebacks through them stay readable.
        roots: set[str] = set()
        paths = sysconfig.get_paths()
        base = sysconfig.get_paths(vars={"base": sys.base_prefix,
                                         "platbase": sys.base_exec_prefix})
        for d in (paths, base):
            for key in ("stdlib", "platstdlib", "purelib", "platlib"):
                if d.get(key):
                    roots |= _variants(d[key])
        roots |= _variants(Path(__file__).resolve().parent)  # casparian_nb itself
        self._code_roots = tuple(sorted({self._literals_only(r) for r in roots}, key=len,
                                        reverse=True))

    # -- helpers ---------------------------------------------------------------------------
    @property
    def redactor(self) -> Any:
        """The tape :class:`~casparian_nb.tape.Redactor` with this bundle's salt."""
        return self._redactor

    def hash(self, value: str) -> str:
        """This bundle's salted hash of ``value`` (16 hex digits)."""
        return self._redactor.hash(value)

    def _literals_only(self, text: str) -> str:
        if self._literal_rx is None:
            return text
        return self._literal_rx.sub(lambda m: self._literals[m.group(0)], text)

    def _is_code(self, path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in self._code_roots)

    def identities(self, text: str) -> str:
        """Home, user home, user and host names replaced; nothing else touched (for tapes)."""
        text = self._literals_only(text)
        if self._json_literal_rx is not None:
            text = self._json_literal_rx.sub(lambda m: self._json_literals[m.group(0)], text)
        return self._names(text)

    def _names(self, text: str) -> str:
        if self._user_rx is not None:
            text = self._user_rx.sub("<user>", text)
        if self._host_rx is not None:
            text = self._host_rx.sub("<host>", text)
        return text

    def _home_path(self, token: str) -> str:
        head, slash, rest = token.partition("/")
        if not slash:
            return head
        parts = [head]
        for part in rest.split("/"):
            if not part or part in _LAYOUT or _OWN_NAME.match(part):
                parts.append(part)
            else:
                parts.append(f"<h:{self.hash(part)}>")
        return "/".join(parts)

    def _path(self, m: re.Match[str]) -> str:
        token = m.group(0)
        kind = m.lastgroup
        if kind == "uri":
            scheme, _, rest = token.partition("://")
            if scheme.lower() in _KEEP_SCHEMES:
                return token
            if rest.startswith("<home>"):
                return f"{scheme}://{self._home_path(rest)}"
            return f"{scheme}://<path:{self.hash(token)}>"
        if kind in ("home", "abs") and self._is_code(token):
            return token
        if kind == "home" and token.startswith("<home>"):
            return self._home_path(token)
        return f"<path:{self.hash(token)}>"

    # -- public ----------------------------------------------------------------------------
    def text(self, text: str) -> str:
        """Log text: every path, URI and data file name hashed (library paths kept), home,
        user and host replaced, and source lines quoted from non-library files dropped."""
        out: list[str] = []
        drop_source = False
        for line in text.splitlines(keepends=True):
            frame = _FRAME.match(line)
            if frame is not None:
                path = frame.group("path")
                drop_source = not (path.startswith("<") or self._is_code(
                    self._literals_only(path)))
            elif drop_source and line[:1] in (" ", "\t") and line.strip():
                end = "\n" if line.endswith("\n") else ""
                if _CARETS.match(line):
                    continue
                out.append(f"    <source line omitted>{end}")
                continue
            else:
                drop_source = False
            out.append(self.line(line))
        return "".join(out)

    def line(self, line: str) -> str:
        """One line of free text scrubbed (no traceback handling)."""
        line = self._literals_only(line)
        line = _PATHS.sub(self._path, line)
        return self._names(line)

"""``casparian support-bundle OUT.zip``: tapes, scrubbed logs, a redacted config summary and a
manifest, in one zip a user can attach to a bug report.

>>> result = create_support_bundle(load_settings(), Path("bundle.zip"))   # doctest: +SKIP
>>> result.to_json()                                                      # doctest: +SKIP
{'output_path': '.../bundle.zip', 'size_bytes': 5123, 'tape_count': 2, 'log_count': 4, ...}

What goes in (and what never does):

``tapes/<name>.tape``
    Every ``*.tape`` directly in ``<home>/tapes``. Their payloads are already redacted by the
    writer; the bundle checks anyway: the home directory, the user's home directory, the user
    name and the host name become ``<home>``, ``<userhome>``, ``<user>`` and ``<host>``, the
    ``TapeStarted`` payload is re-redacted (the original Casparian recorded raw ``cwd`` and
    ``hostname`` there), and a tape written with redaction off is redacted field by field here.
``logs/<name>``
    Every regular file directly in ``<home>/logs`` (at most the last 5 MiB of each). Paths are
    hashed (``<path:HASH>``; under the home only the file and directory names that are not
    casparian's own), data file names too, the identities above are replaced, and the source
    lines a traceback quotes from non-library files (plugins) are dropped.
``config/redacted_config.json``
    Which settings differ from their defaults (numbers and flags as values, strings only as
    "set"), the trust flags and signer/key *counts*, which parts of the home exist, the names
    (not values) of ``CASPARIAN_*`` variables set, and the home path as a salted hash.
``bundle.json``
    ``{version, created_at, casparian_version, platform{os, arch, python}, schema_version,
    redaction, contents{tapes[], logs[], config, truncated_logs[]}}``.

Never: output data, the state DB, staging, plugin source, keys, the connection file. Files in
the tape and log directories whose names look like data or code (``.parquet``, ``.csv``,
``.duckdb``, ``.py``, ...) and symlinks are skipped; member names that are not casparian's own
naming are replaced by a salted hash of the name. One salt per bundle, never written down.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import os
import platform
import re
import socket
import sqlite3
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from . import __version__
from .config import Settings, TrustSettings
from .errors import CasparianError

__all__ = [
    "BUNDLE_VERSION",
    "LOG_CAP_BYTES",
    "BundleError",
    "BundleResult",
    "Scrubber",
    "add_commands",
    "create_support_bundle",
]

BUNDLE_VERSION = "1"
#: At most this many bytes (the end) of each log file go into a bundle.
LOG_CAP_BYTES = 5 * 1024 * 1024

#: Never bundled, whatever directory they are found in: data, code, databases, archives.
_DENY_SUFFIXES = frozenset({
    ".parquet", ".csv", ".tsv", ".duckdb", ".py", ".pyc", ".pyw", ".ipynb", ".sqlite",
    ".sqlite3", ".db", ".wal", ".arrow", ".feather", ".orc", ".avro", ".xlsx", ".xls",
    ".zip", ".gz", ".bz2", ".zst", ".xz", ".tar", ".h5", ".hdf5", ".pkl", ".pickle", ".npy",
})
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


class BundleError(CasparianError):
    """The support bundle cannot be written (bad output path, unreadable home, ...)."""


# -- scrubbing -------------------------------------------------------------------------------
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


# -- the bundle ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleResult:
    """What :func:`create_support_bundle` wrote."""

    output_path: Path
    size_bytes: int
    tapes: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()
    config_included: bool = False
    truncated_logs: tuple[str, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tape_count(self) -> int:
        return len(self.tapes)

    @property
    def log_count(self) -> int:
        return len(self.logs)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` output (the original's keys)."""
        return {"output_path": str(self.output_path), "size_bytes": self.size_bytes,
                "tape_count": self.tape_count, "log_count": self.log_count,
                "config_included": self.config_included}

    def __str__(self) -> str:
        lines = [f"support bundle: {self.output_path} ({self.size_bytes:,} bytes)",
                 f"  tapes: {self.tape_count}",
                 f"  logs: {self.log_count}"
                 + (f" ({len(self.truncated_logs)} cut to the last "
                    f"{LOG_CAP_BYTES // (1024 * 1024)} MiB)" if self.truncated_logs else ""),
                 f"  config: {'yes' if self.config_included else 'no'}",
                 "  redacted: paths hashed; home, user and host names replaced; "
                 "no output data, no plugin source"]
        return "\n".join(lines)


def _bundle_files(directory: Path, *, suffix: str | None, exclude: set[Path]) -> list[Path]:
    """Regular files (no symlinks, no data/code) directly in ``directory``, sorted."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []
    except OSError as exc:
        raise BundleError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    out = []
    for e in entries:
        p = Path(e.path)
        if not e.is_file(follow_symlinks=False):
            continue
        if suffix is not None and p.suffix != suffix:
            continue
        if p.suffix.lower() in _DENY_SUFFIXES or e.name.startswith(".casparian-bundle-"):
            continue
        if p.absolute() in exclude:
            continue
        out.append(p)
    return sorted(out, key=lambda p: p.name)


def _member_name(name: str, kind: str, scrub: Scrubber, taken: set[str]) -> str:
    if _OWN_NAME.match(name) and scrub.identities(name) == name:
        candidate = name
    else:
        suffix = Path(name).suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", Path(name).suffix) \
            else ""
        candidate = f"{kind}-{scrub.hash(name)}{suffix}"
    n, base = 1, candidate
    while candidate in taken:
        stem, dot, ext = base.rpartition(".")
        candidate = f"{stem}-{n}.{ext}" if dot else f"{base}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _write_tape(src: Path, dst: IO[bytes], scrub: Scrubber) -> None:
    """Copy a tape line by line: identities scrubbed, TapeStarted (and, for a tape written
    without redaction, every payload) redacted by the tape's field rules."""
    redactor: Any = None  # set when the tape says it was not redacted
    fields = scrub.redactor
    with src.open("rb") as fh:
        for number, raw in enumerate(fh):
            text = raw.decode("utf-8", "surrogateescape")
            if number == 0 or redactor is not None:
                text, unredacted = _redact_line(text, fields if number == 0 else redactor)
                if number == 0 and unredacted:
                    redactor = fields
            dst.write(scrub.identities(text).encode("utf-8", "surrogateescape"))


def _redact_line(text: str, redactor: Any) -> tuple[str, bool]:
    """``(line, tape_was_unredacted)``: the payload redacted; untouched if it was clean."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text, False
    if not isinstance(obj, dict) or not isinstance(obj.get("event_name"), dict):
        return text, False
    en = obj["event_name"]
    payload = obj.get("payload")
    if en.get("type") == "tape_started":
        name = "TapeStarted"
        unredacted = isinstance(payload, dict) and payload.get("redaction") == "none"
    elif en.get("type") == "tape_stopped":
        name, unredacted = "TapeStopped", False
    else:
        name, unredacted = str(en.get("name") or ""), False
    redacted = redactor.payload(name, payload if payload is not None else {})
    if unredacted and isinstance(redacted, dict):
        redacted["redaction"] = "hash (support bundle)"
    if redacted == payload:
        return text, unredacted
    obj["payload"] = redacted
    end = "\n" if text.endswith("\n") else ""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + end, unredacted


def _read_log(path: Path, cap: int) -> tuple[str, bool]:
    """The text of a log, at most its last ``cap`` bytes (from a line start)."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            truncated = size > cap
            if truncated:
                fh.seek(size - cap)
                data = fh.read(cap)
                nl = data.find(b"\n")
                data = data[nl + 1:] if nl != -1 else data
            else:
                data = fh.read()
    except OSError as exc:
        raise BundleError(f"cannot read log {path.name}: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", "replace")
    if truncated:
        text = (f"[support-bundle: only the last {len(data):,} of {size:,} bytes "
                f"of this log are included]\n") + text
    return text, truncated


def _schema_version(db: Path) -> int | None:
    """The state DB's schema version, read-only; None when there is no readable DB."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(db.absolute()))}?mode=ro", uri=True,
                               timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM cf_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else None
    except (sqlite3.Error, TypeError, ValueError):
        return None
    finally:
        conn.close()


def _redacted_config(settings: Settings, scrub: Scrubber) -> dict[str, Any]:
    """Settings that differ from their defaults, trust flags and counts: no keys, no paths."""
    changed: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name in ("home", "trust"):
            continue
        value = getattr(settings, f.name)
        if value == f.default:
            continue
        if isinstance(value, bool | int | float):
            changed[f.name] = value
        elif f.name == "default_sink":
            scheme = str(value).split("://", 1)[0] if "://" in str(value) else "?"
            changed[f.name] = f"{scheme}://<redacted>"
        elif f.name == "bind_host":
            changed[f.name] = ("loopback" if value in ("127.0.0.1", "localhost", "::1")
                               else "any" if value in ("0.0.0.0", "::") else "other")
        else:
            changed[f.name] = "<set>"
    trust: TrustSettings = settings.trust
    home = settings.home
    plugins = settings.plugins_dir
    try:
        plugin_files = sum(1 for p in plugins.iterdir() if p.suffix == ".py") \
            if plugins.is_dir() else 0
    except OSError:
        plugin_files = 0
    return {
        "home_path_hash": scrub.hash(str(home)),
        "home_path_hash_note": "salted per bundle; the salt is not included",
        "settings_changed": changed,
        "trust": {
            "allow_unsigned_python": trust.allow_unsigned_python,
            "allowed_signer_count": len(trust.allowed_signers),
            "key_count": len(trust.keys),
        },
        "tape_redaction": settings.tape_redact,
        "environment_variables_set": sorted(k for k in os.environ if k.startswith("CASPARIAN_")),
        "home": {
            "config_file": (home / "config.toml").is_file(),
            "state_db": settings.state_db.is_file(),
            "connection_file": settings.connection_file.is_file(),
            "tapes_dir": settings.tapes_dir.is_dir(),
            "logs_dir": settings.logs_dir.is_dir(),
            "output_dir": settings.output_dir.is_dir(),
            "plugins_dir": plugins.is_dir(),
            "plugin_file_count": plugin_files,
        },
    }


def _platform() -> dict[str, str]:
    return {"os": platform.system().lower() or sys.platform, "os_release": platform.release(),
            "arch": platform.machine(), "python": platform.python_version(),
            "python_implementation": platform.python_implementation()}


def create_support_bundle(settings: Settings, out: Path | str, *, tapes: bool = True,
                          logs: bool = True, config: bool = True,
                          log_cap_bytes: int = LOG_CAP_BYTES) -> BundleResult:
    """Write the support bundle zip to ``out`` (atomically: a temporary file renamed into
    place); :class:`BundleError` with a one-line reason when it cannot be written."""
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise BundleError(f"cannot write support bundle {out}: it is a directory")
    if not out.parent.is_dir():
        what = "is not a directory" if out.parent.exists() else "does not exist"
        raise BundleError(f"cannot write support bundle {out}: {out.parent} {what}")
    scrub = Scrubber(settings.home)
    exclude = {out}
    tape_files = _bundle_files(settings.tapes_dir, suffix=".tape", exclude=exclude) \
        if tapes else []
    log_files = _bundle_files(settings.logs_dir, suffix=None, exclude=exclude) if logs else []
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".casparian-bundle-", suffix=".zip.tmp",
                                        dir=out.parent)
    except OSError as exc:
        raise BundleError(f"cannot write support bundle {out}: "
                          f"{exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(
                raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            taken: set[str] = set()
            tape_names: list[str] = []
            for path in tape_files:
                name = _member_name(path.name, "tape", scrub, taken)
                try:
                    with zf.open(f"tapes/{name}", "w", force_zip64=True) as dst:
                        _write_tape(path, dst, scrub)
                except FileNotFoundError:  # rotated away while we listed: just skip it
                    continue
                tape_names.append(name)
            log_names: list[str] = []
            truncated: list[str] = []
            for path in log_files:
                name = _member_name(path.name, "log", scrub, taken)
                try:
                    text, cut = _read_log(path, log_cap_bytes)
                except BundleError:
                    if not path.exists():
                        continue
                    raise
                zf.writestr(f"logs/{name}", scrub.text(text))
                log_names.append(name)
                if cut:
                    truncated.append(name)
            if config:
                zf.writestr("config/redacted_config.json",
                            json.dumps(_redacted_config(settings, scrub), indent=2) + "\n")
            manifest = {
                "version": BUNDLE_VERSION,
                "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "casparian_version": __version__,
                "platform": _platform(),
                "schema_version": _schema_version(settings.state_db),
                "redaction": "hash",
                "contents": {"tapes": tape_names, "logs": log_names, "config": bool(config),
                             "truncated_logs": truncated},
            }
            zf.writestr("bundle.json", json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BundleError(f"cannot write support bundle {out}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return BundleResult(output_path=out, size_bytes=out.stat().st_size,
                        tapes=tuple(tape_names), logs=tuple(log_names),
                        config_included=bool(config), truncated_logs=tuple(truncated),
                        manifest=manifest)


# -- CLI ---------------------------------------------------------------------------------------
def cmd_support_bundle(args: argparse.Namespace, settings: Settings) -> int:
    result = create_support_bundle(settings, Path(args.output), tapes=not args.no_tapes,
                                   logs=not args.no_logs, config=not args.no_config)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result)
    args._tape_response = {"tape_count": result.tape_count, "log_count": result.log_count,
                           "size_bytes": result.size_bytes}
    return 0


def add_commands(sub: Any) -> None:
    """Register ``support-bundle OUT.zip [--no-tapes] [--no-logs] [--no-config] [--json]``."""
    p = sub.add_parser(
        "support-bundle", help="zip tapes, scrubbed logs and a redacted config for a bug report",
        description="Write a zip with the home's tapes, its logs (paths, home, user and host "
                    "names scrubbed), a redacted config summary and a manifest. Never "
                    "includes output data or plugin source.")
    p.add_argument("output", metavar="OUT.zip", help="the zip file to write")
    p.add_argument("--no-tapes", action="store_true", help="leave the tapes out")
    p.add_argument("--no-logs", action="store_true", help="leave the logs out")
    p.add_argument("--no-config", action="store_true", help="leave the config summary out")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=cmd_support_bundle, tape_name="SupportBundle")


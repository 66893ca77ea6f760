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

import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from . import __version__
from ._scrub import _OWN_NAME, Scrubber
from .config import Settings, TrustSettings
from .errors import CasparianError
from .store.schema import stored_version

__all__ = [
    "BUNDLE_VERSION",
    "LOG_CAP_BYTES",
    "BundleError",
    "BundleResult",
    "Scrubber",
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

class BundleError(CasparianError):
    """The support bundle cannot be written (bad output path, unreadable home, ...)."""


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
                "schema_version": stored_version(settings.state_db),
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

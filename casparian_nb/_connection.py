"""The sentinel's connection file ``<home>/sentinel.json`` (re-exported by
:mod:`casparian_nb.client`).

It holds the endpoints, the signing key and the pid::

    {"control": "tcp://127.0.0.1:P", "workers": "...", "events": "...", "key": "<hex>",
     "pid": 1234, "home": "/path", "version": 1, "started_at": "2024-...Z"}

and is 0600 from the moment it exists: whoever reads the key can drive the sentinel.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._codec import one_line
from .errors import ConfigError, SentinelError
from .protocol import Codec

CONNECTION_FILE = "sentinel.json"
_FORMAT_VERSION = 1
_REQUIRED = ("control", "workers", "events", "key", "pid", "home")
PathLike = str | os.PathLike[str]


def new_key() -> bytes:
    """A fresh 32-byte signing key (stored as hex in the connection file)."""
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class ConnectionInfo:
    """What a client needs to reach a sentinel: endpoints, signing key, pid."""

    control: str
    workers: str
    events: str
    key: str = field(repr=False)  # hex, as in the file; never in a repr, log line or traceback
    pid: int
    home: Path
    version: int = _FORMAT_VERSION
    started_at: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def key_bytes(self) -> bytes:
        """The signing key as bytes."""
        return bytes.fromhex(self.key)

    def codec(self, **kwargs: Any) -> Codec:
        """A :class:`~casparian_nb.protocol.Codec` with this connection's key (kwargs:
        ``accepts``, ``max_bytes``, ``max_age``)."""
        return Codec(self.key_bytes, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of the connection file."""
        return {"control": self.control, "workers": self.workers, "events": self.events,
                "key": self.key, "pid": self.pid, "home": str(self.home),
                "version": self.version, "started_at": self.started_at}  # fmt: skip


def write_connection_file(path: PathLike, info: Mapping[str, Any] | ConnectionInfo) -> Path:
    """Write the connection file atomically (temp file + rename), 0600 from its creation, so
    the key is never readable by others, not even for a moment."""
    data = dict(info.to_dict() if isinstance(info, ConnectionInfo) else info)
    if isinstance(data.get("key"), bytes | bytearray):
        data["key"] = bytes(data["key"]).hex()
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"connection info lacks {', '.join(missing)}")
    data["home"] = str(data["home"])
    data.setdefault("version", _FORMAT_VERSION)
    data.setdefault("started_at", dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask can only clear bits; this pins exactly 0600
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise SentinelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def remove_connection_file(path: PathLike, *, pid: int | None = None) -> bool:
    """Remove the connection file if it exists and (when ``pid`` is given) still names that
    process — a stopping sentinel must not delete the file of its successor."""
    path = Path(path)
    if pid is not None:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("pid") != pid:
                return False
        except (OSError, ValueError, AttributeError):
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _connection_path(home: PathLike) -> tuple[Path, Path]:
    p = Path(home).expanduser()
    if p.suffix == ".json" and not p.is_dir():
        return p.parent, p
    return p, p / CONNECTION_FILE


def read_connection_file(home: PathLike) -> ConnectionInfo:
    """Read ``<home>/sentinel.json`` (or the given ``.json`` file).

    Raises :class:`SentinelError` with a one-line reason when it is missing, unreadable,
    corrupt, or readable by group/others (a leaked key lets anyone drive the sentinel).
    """
    home_dir, path = _connection_path(home)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SentinelError(
            f"no sentinel is running for home {home_dir} (no {CONNECTION_FILE}); "
            "start one with `casparian start` or cf.start()"
        ) from None
    except OSError as exc:
        raise SentinelError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())  # of the file we opened, not of whatever the path names now
        if st.st_mode & 0o077:
            raise SentinelError(
                f"refusing {path}: mode {st.st_mode & 0o777:04o} lets other users read the "
                f"sentinel key; it must be 0600 (chmod 600 {path}, or restart the sentinel)"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise SentinelError(f"refusing {path}: owned by uid {st.st_uid}, not by you")
        raw = fh.read(1_000_000)
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        version = data.get("version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(f"format version {one_line(repr(version), 20)}, this build reads 1")
        key = str(data["key"]).lower()
        if len(bytes.fromhex(key)) < 16:
            raise ValueError("key shorter than 16 bytes")
        pid = data["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError("pid is not a positive integer")
        return ConnectionInfo(
            control=str(data["control"]), workers=str(data["workers"]),
            events=str(data["events"]), key=key, pid=pid, home=Path(str(data["home"])),
            version=version, started_at=str(data.get("started_at", "")), path=path,
        )  # fmt: skip
    except ValueError as exc:  # includes JSON and hex decoding errors
        raise SentinelError(
            f"{path} is corrupt ({one_line(exc)}); stop the sentinel or delete the file"
        ) from None


def connection_is_live(info: ConnectionInfo) -> bool:
    """Whether the process named by the connection file is still the sentinel that wrote it
    (alive, not a zombie, and not a newer process that reused the pid)."""
    if info.pid <= 0:
        return False  # os.kill(0, ...) would address our own process group
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency; stay usable without it
        return True
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = dt.datetime.fromisoformat(info.started_at.replace("Z", "+00:00"))
        # The sentinel writes the file after it starts; a process born later reused the pid.
        created: float = proc.create_time()
        return created <= started.timestamp() + 2.0
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, ValueError):
        return True  # no access or no started_at: the pid check is all we have

"""Salted redaction of tape payloads, decided per field by a schema per event name.

Every tape gets a random 32-byte salt; ``hash(s)`` is the first 16 hex digits of
``blake3(salt + s)`` — stable inside one tape (the same input file hashes the same in every
event, so a reader can still follow it) and unlinkable across tapes.

Each payload field has one of three policies:

``keep``
    ids, counts, statuses, durations, plugin names and versions, output names, error *kind*.
    A plugin name is kept only when the plugin declared it (``name = "..."``): a payload
    whose ``plugin_name_source`` is ``"file"`` carries the plugin file's stem instead, and
    its ``plugin_name`` is hashed like any file name (:data:`HASH_WHEN`).
``hash``
    paths, file names, sink URIs, SQL text, host names: replaced by their 16-hex hash
    (lists element-wise, dicts recursively, keys included).
``text``
    free text a user must read — error messages, abort reasons. Kept, but absolute and
    relative paths, URIs, data file names, the home directory, the user name and the host
    name inside it are replaced by ``<redacted:HASH>`` (the same hash as the field holding
    that path, so ``input_file`` and the error that names it still match). Other words
    stay: an error that quotes a table or column name keeps it — errors must stay readable.

A field a known event does not list, and every field of an unknown event, is hashed unless
its key is on a short safe list (``job_id``, ``status``, ...), ends in ``_id``/``_ids``/
``_hash``, or names free text (``error``, ``message``, ``reason``). Numbers, booleans and
null always pass through: they cannot carry a path.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from blake3 import blake3

from .envelope import (
    CLI_COMMANDS,
    COMMAND_FAILED,
    COMMAND_SUCCEEDED,
    CONTROLLER_COMMANDS,
    EventName,
)

__all__ = ["HASH", "HASH_WHEN", "KEEP", "PAYLOAD_SCHEMAS", "TEXT", "Redactor", "policy_for"]

KEEP: Final = "keep"
HASH: Final = "hash"
TEXT: Final = "text"

_E = EventName
_JOB = {"job_id": KEEP, "worker_id": KEEP, "duration_ms": KEEP}
#: ``plugin_name`` plus the field that says where it came from (see :data:`HASH_WHEN`).
_PLUGIN = {"plugin_name": KEEP, "plugin_name_source": KEEP}
_CMD = {"plugin": HASH, "inputs": HASH, "input": HASH, "sink": HASH, "mode": KEEP,
        "path": HASH, "home": HASH, "file": HASH, "output": HASH, "status": KEEP,
        "limit": KEEP, "workers": KEEP, "job_id": KEEP, "job_ids": KEEP, "format": KEEP,
        "force": KEEP, "failed": KEEP, "target_size": KEEP}

#: Field policies per event name (``*`` in the design notes = ``hash``).
PAYLOAD_SCHEMAS: Final[dict[str, dict[str, str]]] = {
    # writer-generated
    "TapeStarted": {"producer": KEEP, "casparian_version": KEEP, "salt_hash": KEEP,
                    "redaction": KEEP, "version": KEEP},
    "TapeStopped": {"reason": KEEP},
    # sentinel domain events
    _E.JOB_QUEUED: {**_JOB, **_PLUGIN, "plugin_version": KEEP, "input_file": HASH,
                    "priority": KEEP, "sink": HASH, "forced": KEEP},
    _E.JOB_DISPATCHED: {**_JOB, **_PLUGIN, "plugin_version": KEEP, "attempt": KEEP},
    _E.JOB_STARTED: {**_JOB},
    _E.CANCEL_REQUESTED: {**_JOB, "state": KEEP},
    _E.JOB_COMPLETED: {**_JOB, **_PLUGIN, "rows": KEEP, "quarantine_rows": KEEP,
                       "outputs": KEEP},
    _E.JOB_FAILED: {**_JOB, "error": TEXT, "error_kind": KEEP, "retry_count": KEEP,
                    "will_retry": KEEP, "dead_letter": KEEP},
    _E.JOB_ABORTED: {**_JOB, "reason": TEXT},
    _E.JOB_RETRIED: {**_JOB, "retry_count": KEEP, "delay_ms": KEEP, "error": TEXT,
                     "attempt": KEEP},
    _E.JOB_SKIPPED: {**_JOB, "input_file": HASH, "reason": TEXT, "stale": KEEP},
    _E.MATERIALIZATION_RECORDED: {**_JOB, "output_name": KEEP, "table": KEEP, "rows": KEEP,
                                  "sink": HASH},
    _E.WORKER_JOINED: {"worker_id": KEEP, "slots": KEEP, "pid": KEEP},
    _E.WORKER_LOST: {"worker_id": KEEP, "requeued_job_ids": KEEP},
    _E.WORKER_LEFT: {"worker_id": KEEP, "requeued_job_ids": KEEP},
    # a staging dir's path names the job's id and the home: hashed like every path
    _E.STAGING_REMOVED: {"job_id": KEEP, "attempt": KEEP, "path": HASH, "cause": KEEP},
    # responses
    COMMAND_SUCCEEDED: {"status": KEEP, "job_ids": KEEP, "count": KEEP, "rows": KEEP,
                        "files_before": KEEP, "files_after": KEEP},
    COMMAND_FAILED: {"status": KEEP, "error": TEXT, "error_kind": KEEP},
    # CLI and controller commands
    **{name: dict(_CMD) for name in (*CLI_COMMANDS, *CONTROLLER_COMMANDS)},
    "Query": {**_CMD, "sql": HASH},
}

#: Keys that pass through in fields no schema lists.
_SAFE_KEYS = frozenset({
    "job_id", "job_ids", "status", "state", "kind", "error_kind", "attempt", "retry_count",
    "will_retry", "rows", "count", "priority", "mode", "plugin_name", "plugin_name_source",
    "plugin_version", "output_name", "worker_id", "duration_ms", "delay_ms", "version",
    "producer", "redaction", "salt_hash", "slots", "pid", "limit", "offset", "type", "name",
})
_TEXT_KEYS = frozenset({"error", "message", "reason", "detail"})

#: A kept field that is hashed after all when a sibling field of the same payload says its
#: value is a file name: ``key -> (sibling, value)``. Applies to every event (and nested
#: objects), so no producer can keep a file-derived plugin name by using another event name.
HASH_WHEN: Final[Mapping[str, tuple[str, str]]] = {
    "plugin_name": ("plugin_name_source", "file"),
}


@lru_cache(maxsize=4096)
def policy_for(event_name: str | None, key: str) -> str:
    """The policy of ``key`` in the payload of ``event_name`` (cached: it's on the hot path)."""
    schema = PAYLOAD_SCHEMAS.get(event_name or "")
    if schema is not None and key in schema:
        return schema[key]
    if key in _SAFE_KEYS or key.endswith(("_id", "_ids", "_hash")):
        return KEEP
    if key in _TEXT_KEYS:
        return TEXT
    return HASH


# -- environment identifiers scrubbed out of free text ---------------------------------------
@lru_cache(maxsize=1)
def _identity() -> tuple[str, ...]:
    """Home directory, user name and host name of this machine (longest first).

    Cached per process, and no ``getfqdn()``: a DNS lookup on every tape opened would make
    each CLI command wait on the resolver.
    """
    found: set[str] = set()
    home = os.path.expanduser("~")
    if home and home != "/":
        found.add(home.rstrip("/"))
    try:
        found.add(getpass.getuser())
    except Exception:  # no passwd entry and no $USER: nothing to scrub
        pass
    host = socket.gethostname()
    found.update((host, host.split(".")[0]))
    # Very short names ("a", "pi") would shred ordinary words; require 3+ characters.
    return tuple(sorted((v for v in found if len(v) >= 3), key=len, reverse=True))


_DATA_EXT = (
    "csv|tsv|json|jsonl|ndjson|parquet|arrow|feather|txt|log|xml|xlsx|xls|py|gz|zip|bz2|zst|"
    "duckdb|sqlite|db|dat|bin|fix|tape|toml|yaml|yml|ini|h5|hdf5|pdf|orc|avro"
)
# Order matters: URIs before paths (a URI contains a path), absolute before relative.
_TEXT_PATTERNS = re.compile(
    r"""
      [A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>()]+              # scheme://anything (sink URIs)
    | (?<![\w:])[A-Za-z]:\\[^\s'"<>]*                      # C:\windows\path
    | \\\\[^\s'"<>\\]+\\[^\s'"<>]*                         # \\unc\share
    | (?:~|\.{1,2})?/(?:[^\s'"<>:;,()\[\]{}]+/?)+          # /abs, ~/x, ./x, ../x
    | [\w.\-]+(?:/[\w.\-]+)+                               # rel/ative/path
    | [\w.\-]+\.(?:"""
    + _DATA_EXT
    + r""")\b                                              # orders.csv
    """,
    re.VERBOSE | re.IGNORECASE,
)


class Redactor:
    """Salted hashing and payload redaction for one tape.

    ``Redactor(salt)`` with ``enabled=False`` passes payloads through untouched (the
    ``--no-redact`` case) but still hashes on request.
    """

    __slots__ = ("_cache", "_identity_rx", "_policies", "_prefix", "enabled", "salt")

    def __init__(self, salt: bytes | None = None, *, enabled: bool = True) -> None:
        self.salt = os.urandom(32) if salt is None else bytes(salt)
        self.enabled = enabled
        self._prefix = blake3(self.salt)
        # Sink URIs and input paths repeat across events; a bounded memo saves the hashing.
        self._cache: dict[str, str] = {}
        self._policies: dict[str | None, dict[str, str]] = {}
        ident = _identity()
        self._identity_rx = (
            # Whole words only: a user called "root" must not eat "rootless" or "chroot".
            re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(v) for v in ident) + r")(?![\w-])")
            if ident
            else None
        )

    # -- hashing ---------------------------------------------------------------------------
    def hash(self, value: str | bytes) -> str:
        """First 16 hex digits of ``blake3(salt + value)``."""
        if isinstance(value, str):
            hit = self._cache.get(value)
            if hit is not None:
                return hit
            data = value.encode("utf-8", "surrogatepass")
        else:
            data = value
        h = self._prefix.copy()
        h.update(data)
        out = h.hexdigest()[:16]
        if isinstance(value, str):
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[value] = out
        return out

    @property
    def salt_hash(self) -> str:
        """The salt's own redaction hash (recorded in ``TapeStarted``; the salt is not)."""
        return self.hash(self.salt)

    # -- free text -------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """Free text with paths, URIs, file names, home, user and host replaced by hashes."""
        def sub(m: re.Match[str]) -> str:
            return f"<redacted:{self.hash(m.group(0))}>"

        out = _TEXT_PATTERNS.sub(sub, text)
        if self._identity_rx is not None:
            out = self._identity_rx.sub(sub, out)
        return out

    # -- payloads --------------------------------------------------------------------------
    def payload(self, event_name: str | None, payload: Any) -> Any:
        """``payload`` redacted field by field according to ``event_name``'s schema."""
        if not self.enabled:
            return payload
        if isinstance(payload, Mapping):
            return self._mapping(event_name, payload)
        return self._value(HASH, payload, event_name)

    def _mapping(self, event_name: str | None, payload: Mapping[Any, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        policies = self._policies.get(event_name)
        if policies is None:
            policies = self._policies[event_name] = {}
        # Payload-dependent overrides (HASH_WHEN): one lookup per rule, not per field.
        hashed: set[str] | None = None
        for field, (sibling, flag) in HASH_WHEN.items():
            if field in payload and payload.get(sibling) == flag:
                hashed = {field} if hashed is None else hashed | {field}
        for key, value in payload.items():
            k = key if type(key) is str else str(key)
            policy = policies.get(k)
            if policy is None:
                policy = policies[k] = policy_for(event_name, k)
            if hashed is not None and k in hashed and policy == KEEP:
                policy = HASH
            # Exact type checks first: this runs per field of every event written.
            t = type(value)
            if t is str:
                if policy == KEEP:
                    out[k] = value
                elif policy == HASH:
                    out[k] = self.hash(value)
                else:
                    out[k] = self.scrub(value)
            elif value is None or t is int or t is float or t is bool:
                out[k] = value
            else:
                out[k] = self._value(policy, value, None)  # nested: default rules
        return out

    def _value(self, policy: str, value: Any, event_name: str | None) -> Any:
        if isinstance(value, os.PathLike):
            # A path object is a path whatever its field says: never keep it verbatim.
            value = os.fspath(value)
            policy = HASH if policy == KEEP else policy
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            if policy == TEXT:
                return self.scrub(value)
            return value if policy == KEEP else self.hash(value)
        if isinstance(value, Mapping):
            if policy == HASH:
                # Keys of a hashed mapping may themselves be paths ({"/data/a.csv": 3}).
                return {self.hash(str(k)): self._value(HASH, v, None) for k, v in value.items()}
            if policy == KEEP:
                return dict(value)
            # Text or unknown nested objects: apply the field rules one level down.
            return self._mapping(event_name, value)
        if isinstance(value, list | tuple):
            return [self._value(policy, v, event_name) for v in value]
        # Anything else (bytes, objects) is not JSON; record only its hash.
        return self.hash(repr(value))

"""Payload schemas of every wire message type, and the small validator that checks them.

Schemas are declared as tables that read like the protocol notes (``"name?"`` = optional key,
``"T|None"`` = may be null)::

    "SubmitJobs": {"plugin": "str", "inputs": "list[str]", "sink?": "str|None", ...}

Types: ``str int float bool dict list[str] list[int] list[dict]``, ``enum(A,B)`` (a string from a
fixed set) and ``obj(Name)`` (a nested object with its own schema in ``_OBJECTS``). Keys not in a
schema are allowed and ignored, so a newer peer may add fields without breaking an older one.
``bool`` is never accepted as an ``int``/``float`` (Python would), and integers must fit in a
signed 64-bit value: ids and counts go straight into SQLite, which cannot store more.
The declarations are parsed at import time, so a typo in a table fails every test at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Kind = Literal["request", "reply", "worker", "event"]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

ERROR_CODES: Final = (
    "PARSE_ERROR", "AUTH_ERROR", "UNKNOWN_TYPE", "INVALID_REQUEST",
    "NOT_FOUND", "DB_ERROR", "INTERNAL", "TOO_LARGE",
)  # fmt: skip
RECEIPT_STATUSES: Final = ("SUCCESS", "FAILED", "ABORTED", "REJECTED")

_OBJECTS: dict[str, dict[str, str]] = {
    # The job a worker runs: everything it needs without reading the state DB.
    "JobSpec": {
        "job_id": "str", "plugin_path": "str", "plugin_source_hash?": "str|None",
        "plugin_name": "str", "plugin_name_declared?": "bool",
        "parser_version?": "str|None", "input_file": "str",
        "sink?": "str|None", "mode?": "str|None", "timeout_s?": "float|None", "attempt": "int",
        "staging_root": "str",
    },
    # A remote failure travelling as data (rendered by RemoteJobError on the controller).
    "ErrorInfo": {
        "ename": "str", "evalue": "str", "traceback?": "str",
        "kind": "enum(permanent,transient)",
    },
}  # fmt: skip

_DECLARATIONS: dict[Kind, dict[str, dict[str, str]]] = {
    "request": {
        "Ping": {},
        "ListJobs": {"status?": "str|None", "limit?": "int|None", "offset?": "int|None",
                     "submission_id?": "str"},
        "GetJob": {"job_id": "int"},
        "CancelJob": {"job_id": "int"},
        "CancelJobs": {"job_ids?": "list[int]", "status?": "str"},
        "GetQueueStats": {},
        "SubmitJobs": {"plugin": "str", "inputs": "list[str]", "sink?": "str|None",
                       "mode?": "str|None", "priority?": "int", "timeout?": "float|None",
                       "submission_id?": "str|None", "force?": "bool"},
        "RegisterPlugin": {"path": "str"},
        "ListWorkers": {},
        "Shutdown": {},
    },
    "reply": {
        "Pong": {"pid": "int", "version": "str", "uptime_s": "float", "event_seq?": "int"},
        "Jobs": {"jobs": "list[dict]", "total": "int"},
        "Job": {"job": "dict|None"},
        "CancelResult": {"success": "bool", "message": "str", "state": "str"},
        "QueueStats": {k: "int" for k in ("queued", "running", "completed", "failed", "aborted",
                                          "skipped", "cancel_requested", "total")},
        "Submitted": {"job_ids": "list[int]", "skipped": "list[dict]", "submission_id": "str"},
        "PluginRegistered": {"plugin_id": "int", "name": "str", "version": "str",
                             "source_hash": "str", "trust": "str"},
        "Workers": {"workers": "list[dict]"},
        "ShutdownAck": {},
        "Error": {"code": "str", "message": "str"},
    },
    "worker": {
        "Identify": {"worker_id": "str", "slots": "int", "pid": "int", "host": "str"},
        "Welcome": {"worker_id": "str", "heartbeat_interval": "float"},
        "Refused": {"reason": "str"},
        "Dispatch": {"job": "obj(JobSpec)"},
        "Abort": {"job_id": "str", "reason": "str"},
        "Heartbeat": {"worker_id": "str", "active_job_ids": "list[str]", "free_slots": "int"},
        "JobStarted": {"job_id": "str", "host_pid": "int"},
        "Receipt": {"job_id": "str", "status": "enum(" + ",".join(RECEIPT_STATUSES) + ")",
                    "rows?": "dict", "quarantine_rows?": "int", "source_hash?": "str|None",
                    "staged?": "dict|None", "error?": "obj(ErrorInfo)|None",
                    "duration_ms?": "float"},
        "Goodbye": {"worker_id": "str"},
    },
    "event": {
        "Event": {"name": "str", "seq": "int", "data": "dict"},
        # Published on topic b"ready.<token>" when a subscription to it arrives: the
        # subscriber then knows its earlier subscriptions are in place (no slow joiner).
        "Subscribed": {"token": "str"},
    },
}

#: The reply type each control request expects (``Error`` is always possible too).
REPLY_FOR: Final[Mapping[str, str]] = {
    "Ping": "Pong", "ListJobs": "Jobs", "GetJob": "Job", "CancelJob": "CancelResult",
    "CancelJobs": "CancelResult", "GetQueueStats": "QueueStats", "SubmitJobs": "Submitted",
    "RegisterPlugin": "PluginRegistered", "ListWorkers": "Workers", "Shutdown": "ShutdownAck",
}  # fmt: skip

_BASES = ("str", "int", "float", "bool", "dict", "list[str]", "list[int]", "list[dict]")
_DESCRIBE = {
    "str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
    "dict": "an object", "list[str]": "a list of strings", "list[int]": "a list of integers",
    "list[dict]": "a list of objects", "obj": "an object",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload key: its type, whether it must be present and whether it may be null."""

    name: str
    base: str  # one of _BASES, "enum" or "obj"
    required: bool = True
    nullable: bool = False
    choices: tuple[str, ...] = ()
    nested: tuple[FieldSpec, ...] = ()

    def describe(self) -> str:
        if self.base == "enum":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return _DESCRIBE[self.base]


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """A message type: its name, which socket role uses it, and its payload fields."""

    name: str
    kind: Kind
    fields: tuple[FieldSpec, ...]


def _parse_field(key: str, decl: str) -> FieldSpec:
    name, required = (key[:-1], False) if key.endswith("?") else (key, True)
    base, nullable = (decl[:-5], True) if decl.endswith("|None") else (decl, False)
    if base.startswith("enum(") and base.endswith(")"):
        return FieldSpec(name, "enum", required, nullable, tuple(base[5:-1].split(",")))
    if base.startswith("obj(") and base.endswith(")"):
        nested = tuple(_parse_field(k, v) for k, v in _OBJECTS[base[4:-1]].items())
        return FieldSpec(name, "obj", required, nullable, nested=nested)
    if base not in _BASES:
        raise ValueError(f"schema field {key!r}: unknown type {decl!r}")
    return FieldSpec(name, base, required, nullable)


def _build() -> dict[str, MessageSpec]:
    specs: dict[str, MessageSpec] = {}
    for kind, table in _DECLARATIONS.items():
        for name, fields in table.items():
            assert name not in specs, f"message type {name} declared twice"
            specs[name] = MessageSpec(
                name, kind, tuple(_parse_field(k, v) for k, v in fields.items())
            )
    for req, rep in REPLY_FOR.items():
        assert specs[req].kind == "request" and specs[rep].kind == "reply", (req, rep)
    return specs


#: Every message type on every socket, by name.
MESSAGE_TYPES: Final[Mapping[str, MessageSpec]] = _build()


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    for py, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                     (list, "list"), (tuple, "list"), (dict, "object")):  # fmt: skip
        if isinstance(value, py):
            return name
    return type(value).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX


def _is_float(v: Any) -> bool:
    # ints are fine where a number is expected (JSON has no separate int type); NaN/inf are
    # not: they compare false with everything and would slip through range checks later.
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


_SCALAR_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "float": _is_float,
    "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
}
_ITEM_CHECKS = {"list[str]": _SCALAR_CHECKS["str"], "list[int]": _is_int,
                "list[dict]": _SCALAR_CHECKS["dict"]}  # fmt: skip


def _check_value(f: FieldSpec, value: Any, label: str) -> str | None:
    if value is None:
        return None if f.nullable else f"field {label!r} must be {f.describe()}, got null"
    base = f.base
    if base in _SCALAR_CHECKS:
        ok = _SCALAR_CHECKS[base](value)
    elif base in _ITEM_CHECKS:
        if not isinstance(value, list | tuple):
            ok = False
        else:
            item_ok = _ITEM_CHECKS[base]
            for i, item in enumerate(value):
                if not item_ok(item):
                    return (f"field {label!r} must be {f.describe()} "
                            f"(item {i} is {json_type(item)})")  # fmt: skip
            ok = True
    elif base == "enum":
        ok = isinstance(value, str) and value in f.choices
        if not ok and isinstance(value, str):
            return f"field {label!r} must be {f.describe()}, got {value[:40]!r}"
    else:  # obj
        if not isinstance(value, dict):
            ok = False
        else:
            return check_fields(f.nested, value, prefix=label + ".")
    if ok:
        return None
    return f"field {label!r} must be {f.describe()}, got {json_type(value)}"


def check_fields(fields: tuple[FieldSpec, ...], payload: Mapping[str, Any], *,
                 prefix: str = "") -> str | None:  # fmt: skip
    """The first problem with ``payload`` against ``fields``, or None when it is valid."""
    for f in fields:
        if f.name not in payload:
            if f.required:
                return f"missing required field {prefix + f.name!r}"
            continue
        problem = _check_value(f, payload[f.name], prefix + f.name)
        if problem:
            return problem
    return None

"""The tape envelope (v1), its event types and the event names casparian_nb records.

One tape line is one JSON object whose keys come in this order (the original's order)::

    {"schema_version": 1, "event_id": "<uuid4>", "seq": 0,
     "timestamp": "2026-01-01T00:00:00.123456Z", "correlation_id": null, "parent_id": null,
     "event_name": {"type": "domain_event", "name": "JobQueued"}, "payload": {...}}

``event_name`` is adjacently tagged: ``tape_started`` and ``tape_stopped`` carry no ``name``;
every other type does. Readers accept any JSON key order; the writer always uses this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import TapeError
from ..protocol import TAPE_JOB_STATUSES, EventName

__all__ = [
    "CLI_COMMANDS",
    "COMMAND_FAILED",
    "COMMAND_PENDING",
    "COMMAND_SUCCEEDED",
    "COMMAND_SUCCESS",
    "CONTROLLER_COMMANDS",
    "DOMAIN_EVENT",
    "ERROR_EVENT",
    "EVENT_TYPES",
    "JOB_STATUSES",
    "NAMED_TYPES",
    "SCHEMA_VERSION",
    "SYSTEM_RESPONSE",
    "TAPE_STARTED",
    "TAPE_STOPPED",
    "UI_COMMAND",
    "WORKER_ACTIVE",
    "WORKER_LEFT",
    "WORKER_LOST",
    "EventName",
    "TapeEvent",
    "casparian_version",
    "envelope_problem",
    "field_problem",
    "finite",
    "format_timestamp",
    "job_key",
    "parse_timestamp",
    "timestamp_problem",
]

#: Envelope version written by this package (the original's ``SCHEMA_VERSION``).
SCHEMA_VERSION = 1

# -- event types (``event_name.type``) ------------------------------------------------------
TAPE_STARTED = "tape_started"
TAPE_STOPPED = "tape_stopped"
UI_COMMAND = "ui_command"
DOMAIN_EVENT = "domain_event"
SYSTEM_RESPONSE = "system_response"
ERROR_EVENT = "error_event"
EVENT_TYPES = frozenset(
    {TAPE_STARTED, TAPE_STOPPED, UI_COMMAND, DOMAIN_EVENT, SYSTEM_RESPONSE, ERROR_EVENT}
)
#: Types whose ``event_name`` must carry a ``name``.
NAMED_TYPES = EVENT_TYPES - {TAPE_STARTED, TAPE_STOPPED}

# -- names ----------------------------------------------------------------------------------
# Domain events and responses are casparian_nb.protocol's EventName; the commands are named
# by their producers.
COMMAND_SUCCEEDED = EventName.COMMAND_SUCCEEDED
COMMAND_FAILED = EventName.COMMAND_FAILED
#: ``ui_command`` names of the ``casparian`` CLI (one per subcommand).
CLI_COMMANDS = (
    "Run", "Submit", "Jobs", "Job", "Start", "Sentinel", "Worker", "Tape", "SupportBundle",
    "Demo", "Stop", "Plugin", "Preview", "Compact",
)  # fmt: skip
#: ``ui_command`` names of the notebook controller.
CONTROLLER_COMMANDS = ("Start", "Attach", "Submit", "Cancel", "Wait", "Query", "Stop",
                       "Preview", "Retry", "Compact")
#: Job statuses ``explain`` and the replay reducer report, in the order explain counts them.
JOB_STATUSES = tuple(s.tape_name for s in TAPE_JOB_STATUSES)
#: A command's status before its response, and a success response's default ``status``.
COMMAND_PENDING, COMMAND_SUCCESS = "pending", "success"
#: A worker's status in ``explain``: still there, gone without a goodbye, or said goodbye.
WORKER_ACTIVE, WORKER_LOST, WORKER_LEFT = "active", "lost", "left"


def job_key(value: Any) -> str | None:
    """The canonical string form of a job id: ``123`` and ``"123"`` are the same job.

    Returns None for values that cannot be a job id (missing, bool, containers).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


# -- timestamps ------------------------------------------------------------------------------
def format_timestamp(epoch: float) -> str:
    """RFC 3339 UTC with microseconds and ``Z`` (``2026-01-01T00:00:00.000000Z``)."""
    dt = datetime.fromtimestamp(epoch, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SECONDS: dict[str, float] = {}


def parse_timestamp(text: Any) -> float | None:
    """Seconds since the epoch from an RFC 3339 timestamp, or None when it is not one.

    Accepts ``Z`` or numeric offsets and any number of fractional digits (the original's
    chrono timestamps may carry nanoseconds; digits past microseconds are dropped).
    """
    if type(text) is not str or len(text) < 20:
        return None
    # Fast path for the writer's "YYYY-MM-DDTHH:MM:SS[.ffffff]Z": readers call this for
    # every job event, so the whole-second part is parsed once and cached.
    if text[-1] == "Z" and text[19] in ".Z":
        base = _SECONDS.get(text[:19])
        if base is None:
            base = _slow_timestamp(text[:19] + "Z")
            if base is None:
                return None
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            _SECONDS[text[:19]] = base
        frac = text[20:-1]
        if not frac:
            return base if text[19] == "Z" else None
        return base + float(text[19:-1]) if frac.isdigit() and frac.isascii() else None
    return _slow_timestamp(text)


def _slow_timestamp(s: str) -> float | None:
    if len(s) < 20 or s[10] not in "Tt":
        return None
    dot = s.find(".", 19)
    if dot != -1:
        # fromisoformat wants at most 6 fractional digits: trim the rest, keep the offset.
        end = dot + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        if end - dot > 7:
            s = s[: dot + 7] + s[end:]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None  # RFC 3339 demands an offset; a naive time is ambiguous
    return dt.timestamp()


@dataclass(slots=True)
class TapeEvent:
    """One tape line: the v1 envelope fields plus the line number it was read from.

    ``kind`` is ``event_name.type``; ``name`` is ``event_name.name`` (None for
    ``tape_started`` / ``tape_stopped``).
    """

    schema_version: int
    event_id: str
    seq: int
    timestamp: str
    correlation_id: str | None
    parent_id: str | None
    kind: str
    name: str | None
    payload: Any = field(default_factory=dict)
    line: int = 0

    @property
    def event_name(self) -> dict[str, str]:
        """``event_name`` as written on the tape."""
        if self.name is None:
            return {"type": self.kind}
        return {"type": self.kind, "name": self.name}

    @property
    def time(self) -> float | None:
        """``timestamp`` as seconds since the epoch (None when unparseable)."""
        return parse_timestamp(self.timestamp)

    @property
    def job_id(self) -> str | None:
        """The payload's ``job_id`` in canonical string form, if any."""
        if isinstance(self.payload, dict):
            return job_key(self.payload.get("job_id"))
        return None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a dict, in the on-tape key order."""
        return {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "correlation_id": self.correlation_id,
            "parent_id": self.parent_id,
            "event_name": self.event_name,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, obj: Any, line: int = 0) -> TapeEvent:
        """Build an event from a parsed line; :class:`TapeError` names what is wrong."""
        problem = envelope_problem(obj)
        if problem is not None:
            raise TapeError(f"line {line}: {problem[1]}")
        en = obj["event_name"]
        return cls(
            schema_version=obj["schema_version"],
            event_id=obj["event_id"],
            seq=obj["seq"],
            timestamp=obj["timestamp"],
            correlation_id=obj.get("correlation_id"),
            parent_id=obj.get("parent_id"),
            kind=en["type"],
            name=en.get("name"),
            payload=obj.get("payload"),
            line=line,
        )


def finite(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


Problem = tuple[str, str]  # (issue kind, message)


def envelope_problem(obj: Any) -> Problem | None:
    """``(issue kind, message)`` for the first thing wrong with an envelope, else None.

    Checks shape only (types and required keys); sequence and link checks are validate's.
    The timestamp comes last: a line whose only defect is its timestamp is still an event.
    """
    if not isinstance(obj, dict):
        return ("bad_envelope", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("schema_version", "event_id", "seq", "timestamp", "event_name"):
        if key not in obj:
            return ("bad_envelope", f"missing key {key!r}")
    en = obj["event_name"]
    is_obj = isinstance(en, dict)
    return field_problem(obj["schema_version"], obj["event_id"], obj["seq"],
                         obj.get("correlation_id"), obj.get("parent_id"), is_obj,
                         en.get("type") if is_obj else None,
                         en.get("name") if is_obj else None) or timestamp_problem(
                             obj["timestamp"])


def field_problem(version: Any, event_id: Any, seq: Any, correlation_id: Any, parent_id: Any,
                  name_is_object: bool, kind: Any, name: Any) -> Problem | None:
    """The envelope's field checks but the timestamp's, on values however they were
    parsed (``json`` dicts or validate's msgspec structs: one set of rules for both)."""
    if not _is_int(version):
        return ("bad_envelope", "schema_version is not an integer")
    if not isinstance(event_id, str) or not event_id:
        return ("missing_event_id", "event_id is missing or empty")
    if not _is_int(seq) or seq < 0:
        return ("bad_envelope", f"seq is not a non-negative integer: {seq!r}")
    for key, v in (("correlation_id", correlation_id), ("parent_id", parent_id)):
        if v is not None and not isinstance(v, str):
            return ("bad_envelope", f"{key} is neither a string nor null")
    if not name_is_object or not isinstance(kind, str):
        return ("bad_envelope", "event_name is not an object with a string 'type'")
    if kind not in EVENT_TYPES:
        return ("unknown_event_type", f"unknown event type {kind!r}")
    if kind in NAMED_TYPES and not (isinstance(name, str) and name):
        return ("bad_envelope", f"event_name of type {kind!r} has no name")
    return None


def timestamp_problem(timestamp: Any) -> Problem | None:
    if parse_timestamp(timestamp) is None:
        return ("bad_timestamp", f"timestamp is not RFC 3339: {timestamp!r}")
    return None


def casparian_version() -> str:
    """The installed casparian_nb version (``0.1.0`` when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("casparian_nb")
    except PackageNotFoundError:
        return "0.1.0"

"""Tapes: NDJSON recordings of every command and job event — write, read, validate,
explain and replay them.

>>> from casparian_nb.tape import TapeWriter, explain_tape, validate_tape   # doctest: +SKIP
>>> with TapeWriter("s.tape", producer="notebook") as tape:
...     cmd, corr = tape.command("Submit", {"plugin": "orders.py", "inputs": ["a.csv"]})
...     tape.succeeded(cmd, corr, {"job_ids": ["1"]})
>>> validate_tape("s.tape").valid
True
>>> explain_tape("s.tape").to_json()["commands"]
['Submit']

The envelope (v1) is the original Casparian Flow's, so its tapes read here unchanged; see
:mod:`.envelope`. Redaction is by field, per event name: :mod:`.redact`.
"""

from __future__ import annotations

from .envelope import (
    COMMAND_FAILED,
    COMMAND_SUCCEEDED,
    DOMAIN_EVENT,
    ERROR_EVENT,
    EVENT_TYPES,
    JOB_STATUSES,
    SCHEMA_VERSION,
    SYSTEM_RESPONSE,
    TAPE_STARTED,
    TAPE_STOPPED,
    UI_COMMAND,
    EventName,
    TapeEvent,
    job_key,
)
from .explain import Explanation, explain_tape
from .reader import TapeReader, read_tape
from .redact import PAYLOAD_SCHEMAS, Redactor
from .replay import ReplayIndex, TapeReducer, Timeline, build_timeline, state_at
from .validate import Issue, ValidationReport, validate_tape
from .writer import TapeLockedError, TapeWriter, new_correlation_id

__all__ = [
    "COMMAND_FAILED",
    "COMMAND_SUCCEEDED",
    "DOMAIN_EVENT",
    "ERROR_EVENT",
    "EVENT_TYPES",
    "JOB_STATUSES",
    "PAYLOAD_SCHEMAS",
    "SCHEMA_VERSION",
    "SYSTEM_RESPONSE",
    "TAPE_STARTED",
    "TAPE_STOPPED",
    "UI_COMMAND",
    "EventName",
    "Explanation",
    "Issue",
    "Redactor",
    "ReplayIndex",
    "TapeEvent",
    "TapeLockedError",
    "TapeReader",
    "TapeReducer",
    "TapeWriter",
    "Timeline",
    "ValidationReport",
    "build_timeline",
    "explain_tape",
    "job_key",
    "new_correlation_id",
    "read_tape",
    "state_at",
    "validate_tape",
]

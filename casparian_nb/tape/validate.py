"""``tape validate``: check a tape line by line and name every problem with its line.

Errors (any makes the tape INVALID, exit 1):

=======================  ================================================================
``parse_error``          a complete line that is not JSON (or not UTF-8)
``truncated``            the last line has no newline and does not parse: a cut-off write
``bad_envelope``         missing/mistyped envelope keys, ``event_name`` without ``name``
``missing_event_id``     empty or missing ``event_id``
``bad_timestamp``        ``timestamp`` is not RFC 3339 with an offset
``unknown_event_type``   ``event_name.type`` outside the six v1 types
``schema_version``       a version other than the first line's, or the first line's is not 1
``seq_gap``              ``seq`` jumps forward (a -> b, b > a + 1)
``seq_repeat``           ``seq`` repeats or goes backwards
``duplicate_event_id``   an ``event_id`` seen on an earlier line
``parent_not_earlier``   ``parent_id`` names no earlier event of this tape
``first_event``          the first event is not ``tape_started``
``empty``                no events at all
=======================  ================================================================

Warnings (reported, tape stays VALID):

* ``missing_tape_stopped`` — no ``tape_stopped``: the producer crashed or is still running.
  The tape is still a faithful record up to its last line, so it is not rejected.
* ``events_after_stop`` — events follow a ``tape_stopped``.

Memory grows with the number of events (every event id is remembered for the duplicate and
parent checks); use ``explain`` for constant-per-event streaming.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .envelope import SCHEMA_VERSION, TAPE_STARTED, TAPE_STOPPED, envelope_problem
from .reader import iter_raw

__all__ = ["Issue", "ValidationReport", "validate_tape"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: the 1-based line it is on, its kind, a message and its severity."""

    line: int
    kind: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "Warning: " if self.severity == "warning" else ""
        return f"Line {self.line}: {prefix}{self.message}"


@dataclass(slots=True)
class ValidationReport:
    """The result of :func:`validate_tape`."""

    path: str
    lines: int = 0
    events: int = 0
    schema_version: int | None = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when there is no error-severity issue (warnings allowed)."""
        return not any(i.severity == "error" for i in self.issues)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: file, lines, events, schema_version, valid, issues[]."""
        return {
            "file": self.path,
            "lines": self.lines,
            "events": self.events,
            "schema_version": self.schema_version,
            "valid": self.valid,
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "issues": [asdict(i) for i in self.issues],
        }

    def to_text(self) -> str:
        """The original's layout: banner, File, Lines, Schema Version, then the verdict."""
        out = ["=== Tape Validation ===", f"File: {self.path}", f"Lines: {self.lines}",
               f"Schema Version: {self.schema_version}", ""]
        if self.issues:
            out.append(f"Issues ({len(self.issues)}):")
            out += [f"  - {i}" for i in self.issues]
            out.append("")
        out.append("Result: VALID ✓" if self.valid else "Result: INVALID ✗")
        return "\n".join(out) + "\n"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython shows the text report for ``cf.validate(path)`` in a cell."""
        printer.text(self.to_text().rstrip("\n"))


def validate_tape(path: str | os.PathLike[str]) -> ValidationReport:
    """Validate a tape file. Raises :class:`~casparian_nb.errors.TapeError` only when the
    file cannot be opened; every problem inside it becomes an :class:`Issue`."""
    report = ValidationReport(str(Path(path)))
    issues = report.issues
    seen: set[str] = set()
    prev_seq: int | None = None
    slack = 0  # after a line whose seq is unknown, the next seq may skip that one number
    first_version: int | None = None
    stopped_at: int | None = None  # line of a tape_stopped not yet followed by an event
    saw_stop = False
    last_line = 0
    for raw in iter_raw(path):
        last_line = raw.line
        if raw.error is not None:
            if raw.truncated:
                issues.append(Issue(raw.line, "truncated",
                                    "Truncated last line (no newline, not parseable): "
                                    "the writer was cut off"))
            else:
                issues.append(Issue(raw.line, "parse_error", f"Parse error: {raw.error}"))
            slack = 1
            continue
        obj = raw.obj
        problem = envelope_problem(obj)
        if problem is not None and problem[0] != "bad_timestamp":
            issues.append(Issue(raw.line, problem[0], problem[1]))
            # One defect, one issue: a broken line's own seq still advances the sequence.
            seq = obj.get("seq") if isinstance(obj, dict) else None
            if isinstance(seq, int) and not isinstance(seq, bool):
                prev_seq, slack = seq, 0
            else:
                slack = 1
            _note_ids(obj, raw.line, seen, issues)
            continue
        if problem is not None:  # timestamp only: the rest of the line can still be checked
            issues.append(Issue(raw.line, problem[0], problem[1]))
        report.events += 1
        version, seq, kind = obj["schema_version"], obj["seq"], obj["event_name"]["type"]

        if first_version is None:
            first_version = report.schema_version = version
            if version != SCHEMA_VERSION:
                issues.append(Issue(raw.line, "schema_version",
                                    f"Tape uses schema version {version}, this build reads "
                                    f"{SCHEMA_VERSION}"))
            if kind != TAPE_STARTED:
                issues.append(Issue(raw.line, "first_event",
                                    f"First event is {kind!r}, expected 'tape_started'"))
        elif version != first_version:
            issues.append(Issue(raw.line, "schema_version",
                                f"Schema version mismatch ({first_version} vs {version})"))

        if prev_seq is not None:
            if seq > prev_seq + 1 + slack:
                issues.append(Issue(raw.line, "seq_gap", f"Sequence gap ({prev_seq} -> {seq})"))
            elif seq <= prev_seq:
                issues.append(Issue(raw.line, "seq_repeat",
                                    f"Sequence repeat or step back ({prev_seq} -> {seq})"))
        prev_seq, slack = seq, 0

        if stopped_at is not None:
            issues.append(Issue(raw.line, "events_after_stop",
                                f"Event after tape_stopped (line {stopped_at})", "warning"))
            stopped_at = None  # report once per stop
        if kind == TAPE_STOPPED:
            stopped_at = raw.line
            saw_stop = True
        _note_ids(obj, raw.line, seen, issues)

    report.lines = last_line
    if report.events == 0 and not any(i.kind in ("parse_error", "truncated") for i in issues):
        issues.append(Issue(max(last_line, 1), "empty", "No events: the tape is empty"))
    elif report.events and not saw_stop:
        issues.append(Issue(last_line, "missing_tape_stopped",
                            "No tape_stopped event: the producer stopped without closing "
                            "the tape (crash or still running)", "warning"))
    return report


def _note_ids(obj: Any, line: int, seen: set[str], issues: list[Issue]) -> None:
    """Parent link first (it must be earlier), then record this event's id."""
    if not isinstance(obj, dict):
        return
    parent = obj.get("parent_id")
    if isinstance(parent, str) and parent not in seen:
        issues.append(Issue(line, "parent_not_earlier",
                            f"parent_id {parent!r} does not refer to an earlier event"))
    eid = obj.get("event_id")
    if isinstance(eid, str) and eid:
        if eid in seen:
            issues.append(Issue(line, "duplicate_event_id", f"Duplicate event_id {eid!r}"))
        seen.add(eid)


def report_json(report: ValidationReport) -> str:
    """The report as pretty JSON text (what ``--format json`` prints)."""
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False)

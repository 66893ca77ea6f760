"""The state DB's time format: RFC 3339 UTC with milliseconds and ``Z``, which sorts as text."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["check_iso", "iso_from_epoch", "now_iso", "stamp"]


def now_iso() -> str:
    """Now as RFC 3339 UTC with milliseconds and ``Z`` (sorts lexicographically)."""
    return _fmt(datetime.now(UTC))


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def iso_from_epoch(seconds: float) -> str:
    """RFC 3339 UTC (ms, ``Z``) for a ``time.time()`` value: the state DB's time format."""
    return _fmt(datetime.fromtimestamp(seconds, UTC))


def check_iso(value: object, name: str) -> None:
    """Refuse a non-string time early: a float stored in a TEXT time column would sort
    wrongly against RFC 3339 strings and silently break scheduling."""
    if value is not None and not isinstance(value, str):
        raise TypeError(
            f"{name} must be an RFC 3339 string (see now_iso / iso_from_epoch), "
            f"got {type(value).__name__} {value!r}"
        )


def stamp(now: str | None) -> str:
    """``now`` checked (see :func:`check_iso`), or the current time when None."""
    check_iso(now, "now")
    return now or now_iso()

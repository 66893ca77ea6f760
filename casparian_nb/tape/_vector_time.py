"""RFC 3339 timestamps to epoch seconds, many at once (the timeline reads one per event).

The writer's own form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 ASCII characters) is parsed with
numpy over the bytes; anything else (other lengths, offsets, odd dates, non-strings) goes to
:func:`.envelope.parse_timestamp` one by one, so the answer is that function's, only faster.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .envelope import parse_timestamp

__all__ = ["epoch_seconds"]

_WIDTH = 27
_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22, 23, 24, 25])
_PUNCT = np.array([4, 7, 10, 13, 16, 19, 26])
_PUNCT_CHARS = np.frombuffer(b"--T::.Z", dtype=np.uint8)


def epoch_seconds(values: list[Any]) -> Any:
    """float64 seconds since the epoch per value; NaN where it is not a timestamp."""
    n = len(values)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    try:
        # one byte wider than the form, so a longer string does not pass as it truncated
        raw = np.array(values, dtype=f"S{_WIDTH + 1}")
    except (UnicodeEncodeError, TypeError, ValueError):  # not all ASCII strings
        return np.array([_one(v) for v in values], dtype=np.float64)
    b = raw.view(np.uint8).reshape(n, _WIDTH + 1)
    digits = b[:, _DIGITS]
    ok = (b[:, _WIDTH] == 0) & (b[:, _PUNCT] == _PUNCT_CHARS).all(axis=1) & (
        (digits >= 48) & (digits <= 57)).all(axis=1)
    rows = np.nonzero(ok)[0]
    try:
        text = np.ascontiguousarray(b[rows, :_WIDTH - 1]).view(f"S{_WIDTH - 1}").ravel()
        us = text.astype("datetime64[us]").astype(np.int64)
    except ValueError:  # a date numpy refuses (Feb 30, a leap second): one by one
        rows, us = rows[:0], np.zeros(0, dtype=np.int64)
    # whole seconds plus the fraction, as parse_timestamp adds them (same float)
    out[rows] = (us // 1_000_000).astype(np.float64) + (us % 1_000_000) / 1e6
    done = np.zeros(n, dtype=bool)
    done[rows] = True
    for i in np.nonzero(~done)[0].tolist():
        out[i] = _one(values[i])
    return out


def _one(value: Any) -> float:
    t = parse_timestamp(value)
    return np.nan if t is None else t

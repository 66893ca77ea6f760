"""Layout and level of detail of a timeline: worker-slot lanes, queue-depth and density bins.

Pure numpy over :class:`~.timeline_data.TimelineData`'s columns; see that module for the rules
and the payload these feed.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

__all__ = ["assign_slots", "density_bins", "depth_bins"]

_EPS = 1e-9


def assign_slots(t0: Any, t1: Any, workers: list[str],
                  order: list[str]) -> tuple[Any, list[tuple[str, int]]]:
    """Greedy interval partitioning per worker: each bar (sorted by start) to its worker's
    lowest-numbered slot that is free at its start. Returns (lane per bar, lanes)."""
    slot = [0] * len(workers)
    busy: dict[str, list[tuple[float, int]]] = {w: [] for w in order}
    free: dict[str, list[int]] = {w: [] for w in order}
    used: dict[str, int] = dict.fromkeys(order, 1)  # every worker has at least one lane
    push, pop = heapq.heappush, heapq.heappop
    # plain floats: this loop runs once per bar (100,000+), numpy scalars cost ~3x here
    for i, (w, start, end) in enumerate(zip(workers, t0.tolist(), t1.tolist(), strict=True)):
        active, idle = busy[w], free[w]
        while active and active[0][0] <= start + _EPS:
            push(idle, pop(active)[1])
        if idle:
            s = pop(idle)
        else:
            s = len(active)
            if s >= used[w]:
                used[w] = s + 1
        push(active, (end, s))
        slot[i] = s
    lanes = [(w, s) for w in order for s in range(used[w])]
    base = {}
    for i, (w, s) in enumerate(lanes):
        if s == 0:
            base[w] = i
    lane = np.asarray([base[w] for w in workers], dtype=np.int32) + np.asarray(slot, dtype=np.int32)
    return lane, lanes


def depth_bins(t: Any, queued: Any, running: Any, edges: Any, dt: float) -> dict[str, Any]:
    """The most queued / running jobs within each bin (a step function's maxima)."""
    out: dict[str, Any] = {"t0": round(float(edges[0]), 6), "dt": dt}
    for key, values in (("queued", queued), ("running", running)):
        if len(t) == 0:
            out[key] = [0] * (len(edges) - 1)
            continue
        at_left = np.searchsorted(t, edges[:-1], side="right") - 1
        level = np.where(at_left >= 0, values[np.maximum(at_left, 0)], 0)
        lo = np.searchsorted(t, edges[:-1], side="right")
        hi = np.searchsorted(t, edges[1:], side="right")
        # Bins are contiguous ([lo_i, lo_i+1) = [lo_i, hi_i)), so one reduceat gives each
        # bin's peak; a trailing 0 keeps every index valid, and the last bin is capped.
        peaks = np.maximum.reduceat(np.append(values, 0), lo)
        if hi[-1] > lo[-1]:
            peaks[-1] = values[lo[-1]:hi[-1]].max()
        inner = np.where(hi > lo, peaks, 0)
        out[key] = np.maximum(level, inner).tolist()
    return out


def density_bins(lanes: int, lane: Any, t0: Any, t1: Any, failed_lane: Any, failed_t: Any,
                 edges: Any, dt: float) -> dict[str, Any]:
    """Busy share (0..100) per lane and bin of the bars ``lane``/``t0``/``t1`` (arrays; open
    bars already closed at the view's end), and how many failing attempts end in each bin
    (``failed_lane``/``failed_t``)."""
    nbins = len(edges) - 1
    busy = np.zeros((lanes, nbins), dtype=np.float64)
    order = np.lexsort((t0, lane))
    lane, t0, t1 = lane[order], t0[order], t1[order]
    bounds = np.searchsorted(lane, np.arange(lanes + 1))
    for k in range(lanes):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        s, e = t0[a:b], np.maximum(t1[a:b], t0[a:b])
        # Bars of one lane never overlap: busy time up to x = whole bars ended + one part.
        cum = np.concatenate(([0.0], np.cumsum(e - s)))
        done = np.searchsorted(e, edges, side="right")
        begun = np.searchsorted(s, edges, side="right")
        part = np.where(begun > done, edges - s[np.minimum(done, len(s) - 1)], 0.0)
        busy[k] = np.diff(cum[done] + part) / dt
    failed = np.zeros((lanes, nbins), dtype=np.int64)
    inside = (failed_t >= edges[0]) & (failed_t <= edges[-1])
    cols = np.minimum(nbins - 1, ((failed_t[inside] - edges[0]) / dt).astype(np.int64))
    np.add.at(failed, (failed_lane[inside], cols), 1)
    return {"t0": round(float(edges[0]), 6), "dt": dt,
            "busy": np.clip(np.rint(busy * 100), 0, 100).astype(np.int64).tolist(),
            "failed": failed.tolist()}

"""A static SVG of a timeline, for the ``text/html`` a saved notebook shows without a kernel.

Same data as the widget (:func:`~casparian_nb.tape.timeline_data.timeline_payload` of the whole
tape), drawn small: a queue-depth strip, then one row per worker slot with exact bars when
there are few, else one busy-share area per slot. Inline styles only (GitHub and nbviewer
load no CSS) and a bounded size: a 100,000-job tape's snapshot stays tens of kB.
"""

from __future__ import annotations

from typing import Any

from ..tape.timeline_data import TimelineData, timeline_payload
from ._reprs import STATUS_COLORS, esc

__all__ = ["timeline_svg"]

_W = 640  # plot width (px)
_LABEL = 70
_DEPTH_H = 36
_MAX_BARS = 400  # more → busy-share areas
_OTHER = "#9ca3af"


def _color(status: str) -> str:
    if status in ("failed_retrying", "requeued"):
        return "#d97706"
    if status == "dispatched":
        status = "running"
    return STATUS_COLORS.get(status.upper(), _OTHER)


def timeline_svg(data: TimelineData, *, title: str = "") -> str:
    """An inline SVG (inside a ``div`` with a caption) of the whole tape."""
    p = timeline_payload(data, width_px=_W // 2 * 2, bar_limit=_MAX_BARS)
    lanes = p["lanes"]
    lane_h = max(4, min(16, 320 // max(1, len(lanes))))
    top = _DEPTH_H + 8
    height = top + lane_h * len(lanes) + 16
    full = max(1e-9, p["view"]["t1"] - p["view"]["t0"])
    sx = _W / full
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W + _LABEL}" '
             f'height="{height}" style="font:10px sans-serif" role="img">',
             f'<title>{esc(title)} timeline</title>']
    parts.append(_depth(p["depth"], sx))
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        if i % 2:
            parts.append(f'<rect x="{_LABEL}" y="{y}" width="{_W}" height="{lane_h}" '
                         'fill="#f9fafb"/>')
        if lane_h >= 9 and (lane["slot"] == 0 or lane_h >= 12):
            label = lane["worker"] + (f" #{lane['slot'] + 1}" if lane["slot"] else "")
            parts.append(f'<text x="2" y="{y + lane_h - 2}" fill="#374151">{esc(label)}</text>')
    statuses = p["statuses"]
    if p["mode"] == "bars":
        b = p["bars"]
        end = p["view"]["t1"]
        for lane, t0, t1, final in zip(b["lane"], b["t0"], b["t1"], b["final"], strict=True):
            x0 = _LABEL + t0 * sx
            w = max(1.0, ((end if t1 is None else t1) - t0) * sx)
            parts.append(f'<rect x="{x0:.1f}" y="{top + lane * lane_h + 1}" width="{w:.1f}" '
                         f'height="{max(2, lane_h - 2)}" fill="{_color(statuses[final])}"/>')
    else:
        dens = p["density"]
        step = dens["dt"] * sx
        for i, row in enumerate(dens["busy"]):
            base = top + (i + 1) * lane_h
            levels = [round(v / 20) * 20 for v in row]  # 5 shades keep the SVG small
            parts.append(_area(levels, step, base, (lane_h - 1) / 100,
                               STATUS_COLORS["COMPLETED"], 0.8))
    parts.append(f'<text x="{_LABEL}" y="{height - 3}" fill="#6b7280">0 s</text>'
                 f'<text x="{_LABEL + _W}" y="{height - 3}" text-anchor="end" fill="#6b7280">'
                 f'{p["duration_s"]:.2f} s</text></svg>')
    counts = ", ".join(f"{k} {n}" for k, n in p["counts"].items() if n)
    caption = (f"{esc(title)} — {p['events']:,} events, {p['jobs']:,} jobs, {len(lanes)} worker "
               f"slots{' (busy share per slot)' if p['mode'] == 'bins' else ''}; {esc(counts)}")
    return (f'<div class="cf-timeline-snapshot"><div style="font:12px sans-serif;'
            f'color:#374151;margin:2px 0">{caption}</div>{"".join(parts)}</div>')


def _depth(depth: dict[str, Any], sx: float) -> str:
    """Queued (grey) and running (blue) jobs over time, scaled to the strip's height."""
    step = depth["dt"] * sx
    q, r = max([0, *depth["queued"]]), max([0, *depth["running"]])
    out = [f'<text x="2" y="12" fill="#6b7280">queued ≤{q}</text>'
           f'<text x="2" y="24" fill="#2563eb">running ≤{r}</text>']
    # each on its own scale: thousands queued would flatten a few dozen running
    for key, color, peak in (("queued", STATUS_COLORS["QUEUED"], q),
                             ("running", STATUS_COLORS["RUNNING"], r)):
        out.append(_area(depth[key], step, _DEPTH_H, (_DEPTH_H - 2) / max(1, peak), color, 0.45))
    return "".join(out)


def _area(values: list[int], step: float, base: float, scale: float, color: str,
          opacity: float) -> str:
    """A step-shaped area over ``base``: a point only where the value changes."""
    pts = [f"{_LABEL},{base}"]
    last = None
    for k, v in enumerate(values):
        if v != last:
            x = _LABEL + k * step
            if last is not None:
                pts.append(f"{x:.1f},{base - last * scale:.1f}")
            pts.append(f"{x:.1f},{base - v * scale:.1f}")
            last = v
    if last is not None:
        pts.append(f"{_LABEL + _W},{base - last * scale:.1f}")
    pts.append(f"{_LABEL + _W},{base}")
    return f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="{opacity}"/>'

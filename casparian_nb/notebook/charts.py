"""Charts for notebooks: Altair (Vega-Lite) specs that also carry a static SVG.

>>> ctl.stats().plot()             # jobs per status over time, and throughput  # doctest: +SKIP
>>> cf.explain(tape).plot()        # per-worker utilisation, durations histogram # doctest: +SKIP
>>> cf.chart(alt.Chart(df).mark_bar().encode(...))   # any Altair chart, static too

Why Altair: a chart is a JSON spec (Vega-Lite) that JupyterLab renders natively, and
``vl-convert-python`` (one self-contained wheel, no browser) turns the same spec into an SVG
in ~0.1 s, so every chart's display data holds the interactive spec *and* a static SVG
(``image/svg+xml``, plus the SVG inline as ``text/html``): GitHub, nbviewer and
``jupyter nbconvert --to html`` show the picture without a kernel or JavaScript. (Plotly's
static export needs Kaleido, which drives a Chrome.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

from ..protocol import JobStatus
from ._reprs import STATUS_COLORS

__all__ = ["StaticChart", "chart", "explanation_chart", "stats_chart"]

_VEGALITE = f"application/vnd.vegalite.v{alt.SCHEMA_VERSION.lstrip('v').split('.')[0]}+json"
_STATUS_ORDER = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.SKIPPED,
                 JobStatus.RUNNING, JobStatus.QUEUED]
_STATUS_SCALE = alt.Scale(domain=[str(s) for s in _STATUS_ORDER],
                          range=[STATUS_COLORS[s] for s in _STATUS_ORDER])


class StaticChart:
    """An Altair chart whose display data carries the Vega-Lite spec and a static SVG."""

    def __init__(self, chart: alt.TopLevelMixin, description: str = "chart") -> None:
        #: The Altair chart (``.chart.properties(width=...)`` to restyle, then :func:`chart`).
        self.chart = chart
        self.description = description
        self._svg: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The Vega-Lite spec (data inline)."""
        spec: dict[str, Any] = self.chart.to_dict(validate=False)  # schema checks cost seconds
        return spec

    def to_svg(self) -> str:
        """The static SVG (rendered once, by vl-convert)."""
        if self._svg is None:
            import vl_convert

            self._svg = str(vl_convert.vegalite_to_svg(self.to_dict()))
        return self._svg

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        svg = self.to_svg()
        return {_VEGALITE: self.to_dict(), "image/svg+xml": svg,
                "text/html": f'<div class="cf-chart">{svg}</div>',
                "text/plain": f"<{self.description}>"}

    def __repr__(self) -> str:
        return f"<StaticChart {self.description}>"


def chart(altair_chart: alt.TopLevelMixin, description: str = "chart") -> StaticChart:
    """Any Altair chart, displayed with a static SVG beside its interactive spec."""
    return StaticChart(altair_chart, description)


def stats_chart(jobs: pd.DataFrame, counts: Mapping[str, int] | None = None) -> StaticChart:
    """Jobs per status over time (cumulative finished, stacked) and throughput per interval,
    from ``ctl.jobs()`` rows (``status``, ``created_at``, ``ended_at``); with no finished job
    yet, the current ``counts`` as bars."""
    ended = jobs.dropna(subset=["ended_at"]) if "ended_at" in jobs else jobs.iloc[0:0]
    if ended.empty:
        data = pd.DataFrame([{"status": str(k).upper(), "jobs": int(v)}
                             for k, v in (counts or {}).items()
                             if str(k).upper() in {str(s) for s in _STATUS_ORDER} and v])
        bars = alt.Chart(data).mark_bar().encode(
            x=alt.X("jobs:Q"), y=alt.Y("status:N", sort=[str(s) for s in _STATUS_ORDER]),
            color=alt.Color("status:N", scale=_STATUS_SCALE, legend=None))
        return StaticChart(bars.properties(width=360, title="jobs per status"), "jobs per status")
    t0 = pd.to_datetime(jobs["created_at"], utc=True).min()
    frame = pd.DataFrame({"status": ended["status"].astype(str),
                          "t": (pd.to_datetime(ended["ended_at"], utc=True) - t0)
                          .dt.total_seconds()}).sort_values("t")
    frame["finished"] = frame.groupby("status").cumcount() + 1
    over_time = alt.Chart(frame).mark_line(interpolate="step-after", point=True).encode(
        x=alt.X("t:Q", title="seconds since the first submission"),
        y=alt.Y("finished:Q", title="jobs finished"),
        color=alt.Color("status:N", scale=_STATUS_SCALE)).properties(
        width=360, height=180, title="jobs per status over time")
    span = max(frame["t"].max(), 1e-3)
    step = _nice_bin(span / 20)
    frame["bin"] = (frame["t"] // step) * step
    rate = frame.groupby("bin").size().reset_index(name="n")
    rate["jobs_per_s"] = rate["n"] / step
    throughput = alt.Chart(rate).mark_bar(color=STATUS_COLORS[JobStatus.COMPLETED]).encode(
        x=alt.X("bin:Q", title=f"seconds (bins of {step:g} s)"),
        y=alt.Y("jobs_per_s:Q", title="jobs finished per second")).properties(
        width=300, height=180, title="throughput")
    return StaticChart(alt.hconcat(over_time, throughput), "jobs per status over time, throughput")


def explanation_chart(workers: Sequence[Mapping[str, Any]],
                      durations_ms: Sequence[float]) -> StaticChart:
    """Per-worker utilisation (busy share of its slots over the tape) and a histogram of job
    durations, from :meth:`~casparian_nb.tape.Explanation.workers` and the jobs."""
    util = pd.DataFrame([{"worker": str(w["worker_id"]), "utilisation": w.get("utilisation") or 0.0,
                          "jobs": w.get("jobs", 0)} for w in workers])
    if util.empty:
        util = pd.DataFrame({"worker": [], "utilisation": [], "jobs": []})
    left = alt.Chart(util).mark_bar(color=STATUS_COLORS[JobStatus.RUNNING]).encode(
        x=alt.X("utilisation:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]),
                title="busy share of its slots"),
        y=alt.Y("worker:N", sort=None, title="worker"),
        tooltip=["worker", "jobs", alt.Tooltip("utilisation:Q", format=".1%")]).properties(
        width=280, title="per-worker utilisation")
    durations = pd.DataFrame({"seconds": [d / 1000.0 for d in durations_ms]})
    right = alt.Chart(durations).mark_bar(color=STATUS_COLORS[JobStatus.COMPLETED]).encode(
        x=alt.X("seconds:Q", bin=alt.Bin(maxbins=30), title="job duration (s)"),
        y=alt.Y("count():Q", title="jobs")).properties(width=300, title="job durations")
    return StaticChart(alt.hconcat(left, right), "per-worker utilisation, job durations")


def _nice_bin(raw: float) -> float:
    import math

    pow10 = 10 ** math.floor(math.log10(max(raw, 1e-6)))
    return float(next(m * pow10 for m in (1, 2, 5, 10) if raw <= m * pow10))

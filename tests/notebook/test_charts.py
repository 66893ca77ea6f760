"""Charts (Altair + a static SVG from vl-convert): stats over time, explain's utilisation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import casparian_nb as cf
from casparian_nb.notebook._models import QueueStats

SESSION = Path(__file__).resolve().parents[2] / "tapes" / "golden_session.tape"


def _static(chart: object) -> dict:
    bundle = chart._repr_mimebundle_()  # type: ignore[attr-defined]
    assert bundle["image/svg+xml"].lstrip().startswith("<svg")
    assert "<svg" in bundle["text/html"]
    spec = next(v for k, v in bundle.items() if k.startswith("application/vnd.vegalite"))
    return spec


def test_explanation_plot_shows_worker_utilisation_and_durations() -> None:
    ex = cf.explain(SESSION)
    spec = _static(ex.plot())
    left, right = spec["hconcat"]
    rows = spec["datasets"][left["data"]["name"]]
    assert {r["worker"] for r in rows} == {"w1", "w2"}
    assert {round(r["utilisation"], 4) for r in rows} == {w["utilisation"] for w in ex.workers()}
    durations = spec["datasets"][right["data"]["name"]]
    assert len(durations) == sum(1 for j in ex.reducer.jobs.values() if j.duration_ms is not None)


def test_stats_plot_over_time_and_throughput() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    jobs = pd.DataFrame({
        "status": ["COMPLETED", "COMPLETED", "FAILED", "RUNNING"],
        "created_at": [t] * 4,
        "ended_at": [t + pd.Timedelta(seconds=s) for s in (1, 2, 3)] + [pd.NaT]})
    stats = QueueStats(completed=2, failed=1, running=1, total=4, history=lambda: jobs)
    spec = _static(stats.plot())
    over_time, throughput = spec["hconcat"]
    finished = spec["datasets"][over_time["data"]["name"]]
    assert [(r["status"], r["finished"]) for r in finished] == [
        ("COMPLETED", 1), ("COMPLETED", 2), ("FAILED", 1)]
    assert throughput["title"] == "throughput"


def test_stats_plot_without_history_shows_the_counts() -> None:
    spec = _static(QueueStats(queued=3, running=1, total=4).plot())
    assert {(r["status"], r["jobs"]) for r in spec["datasets"][spec["data"]["name"]]} == {
        ("QUEUED", 3), ("RUNNING", 1)}

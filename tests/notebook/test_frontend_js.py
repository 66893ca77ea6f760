"""The widgets' ES modules under Node: they load as modules and their pure helpers are right.

The DOM parts are exercised in a browser (tests/browser); here only what needs no DOM.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "casparian_nb" / "notebook" / "static"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _node(script: str) -> str:
    assert NODE is not None
    out = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True,
                         text=True, timeout=60, cwd=STATIC)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_queue_module_helpers() -> None:
    _node(f"""
import assert from "node:assert/strict";
const q = await import({str(STATIC / "queue.js")!r});
assert.equal(typeof q.default.render, "function");
assert.equal(q.formatDuration(null), "");
assert.equal(q.formatDuration(850), "850 ms");
assert.equal(q.formatDuration(12300), "12.3 s");
assert.equal(q.formatDuration(245000), "4 min 05 s");
assert.equal(q.formatDuration(7380000), "2 h 03 min");
assert.equal(q.pageLabel({{offset: 25, limit: 25}}, 10000), "26\\u201350 of 10,000");
assert.equal(q.pageLabel({{offset: 0, limit: 25}}, 0), "no jobs");
assert.deepEqual(q.nextSort({{sort: "id", desc: true}}, "id"), {{sort: "id", desc: false, offset: 0}});
assert.deepEqual(q.nextSort({{sort: "id", desc: true}}, "plugin"), {{sort: "plugin", desc: false, offset: 0}});
assert.deepEqual(q.nextSort({{sort: "id", desc: true}}, "duration"), {{sort: "duration", desc: true, offset: 0}});
// the status names come from the kernel: none is spelled in the module
assert.equal(q.STATUSES, undefined);
const voc = {{statuses: ["QUEUED", "RUNNING", "COMPLETED", "FAILED"], queued: "QUEUED", running: "RUNNING"}};
assert.deepEqual(q.shownStatuses(voc, {{RUNNING: 2, FAILED: 1, total: 3}}, ""), ["RUNNING", "FAILED"]);
assert.deepEqual(q.shownStatuses(voc, {{RUNNING: 2}}, "COMPLETED"), ["RUNNING", "COMPLETED"]);
assert.deepEqual(q.vocabularyOf({{get: () => voc}}), voc);
assert.deepEqual(q.vocabularyOf({{get: () => undefined}}).statuses, []);
""")


def test_queue_module_spells_no_status() -> None:
    """The widget's JavaScript takes every status name from the kernel's vocabulary."""
    from casparian_nb.notebook.queue_widget import STATUS_VOCABULARY
    from casparian_nb.protocol import STORED_JOB_STATUSES, JobStatus

    source = (STATIC / "queue.js").read_text()
    for status in JobStatus:
        assert f'"{status}"' not in source and f"'{status}'" not in source, status
    assert STATUS_VOCABULARY["statuses"] == [str(s) for s in STORED_JOB_STATUSES]
    assert [STATUS_VOCABULARY[k] for k in ("queued", "running", "dispatched")] == [
        "QUEUED", "RUNNING", "DISPATCHED"]


def test_timeline_module_helpers() -> None:
    _node(f"""
import assert from "node:assert/strict";
const t = await import({str(STATIC / "timeline.js")!r});
assert.equal(typeof t.default.render, "function");
assert.equal(t.scaleX(5, {{t0: 0, t1: 10}}, 200), 100);
// zooming in around t=2 keeps t=2 at the same screen position
const z = t.zoomView({{t0: 0, t1: 10}}, 0.5, 2, 10);
assert.ok(Math.abs(z.t1 - z.t0 - 5) < 1e-9);
assert.ok(Math.abs(t.scaleX(2, z, 100) - t.scaleX(2, {{t0: 0, t1: 10}}, 100)) < 1e-9);
// zooming out never leaves the tape; panning stops at its ends
assert.deepEqual(t.zoomView({{t0: 2, t1: 4}}, 100, 3, 10), {{t0: 0, t1: 10}});
assert.deepEqual(t.panView({{t0: 2, t1: 4}}, -5, 10), {{t0: 0, t1: 2}});
assert.deepEqual(t.panView({{t0: 2, t1: 4}}, 50, 10), {{t0: 8, t1: 10}});
const bars = [{{t0: 0, t1: 1}}, {{t0: 2, t1: null}}, {{t0: 5, t1: 6}}];
assert.equal(t.visibleBars(bars, {{t0: 3, t1: 4}}, 10).length, 1);  // the open bar runs on
assert.equal(t.formatSeconds(0.25), "250 ms");
assert.equal(t.formatSeconds(75), "1 min 15 s");
assert.equal(t.STATUS_CLASS.failed_retrying, "cf-t-requeued");
""")

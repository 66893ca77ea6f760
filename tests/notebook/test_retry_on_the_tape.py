"""Issue 14 item 6: the session tape records retries (with the attempt number) and forced
re-runs under the correlation id of the command that caused them. Real sentinel and worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from casparian_nb.tape import read_tape, validate_tape
from tests.conftest import make_inputs


def test_retries_and_forced_reruns_are_tied_to_their_commands(
        controllers: Callable[..., Any], fixture_plugin_path: Path, tmp_path: Path) -> None:
    ctl = controllers()
    [bad] = make_inputs(tmp_path / "in", 1, mode="permanent")
    sink = f"parquet://{tmp_path / 'out'}"
    [job_id] = ctl.submit(fixture_plugin_path, bad, sink=sink)
    ctl.wait([job_id], timeout=60)
    bad.write_text("mode=normal rows=2\n")
    reply = ctl.retry(job_id)
    assert reply["job_ids"] == [job_id] and reply["attempts"] == {str(job_id): 2}
    assert ctl.wait([job_id], timeout=60).counts == {"COMPLETED": 1}
    assert [(a["attempt"], a["status"]) for a in ctl.job(job_id).attempts] == [
        (1, "FAILED"), (2, "COMPLETED")]
    forced = ctl.submit(fixture_plugin_path, bad, sink=sink, force=True)
    ctl.wait(forced, timeout=60)
    tape = ctl.tape_path
    ctl.stop()
    assert validate_tape(tape).valid
    events = list(read_tape(tape))
    retry = next(e for e in events if e.kind == "ui_command" and e.name == "Retry")
    assert retry.payload == {"job_ids": [job_id]}
    retried = [e for e in events if e.name == "JobRetried"]
    assert [(e.correlation_id, e.payload["attempt"]) for e in retried] == [
        (retry.correlation_id, 2)]
    submit = [e for e in events if e.kind == "ui_command" and e.name == "Submit"][-1]
    assert submit.payload["force"] is True
    queued = [e for e in events if e.name == "JobQueued" and e.payload.get("forced")]
    assert [(e.correlation_id, e.payload["job_id"]) for e in queued] == [
        (submit.correlation_id, forced[0])]

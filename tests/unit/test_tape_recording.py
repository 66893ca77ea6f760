"""The ``sentinel_tape`` setting: on by default; off, the sentinel records no tape (used by
``benchmarks/tape_explain.py`` to measure what recording costs dispatch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casparian_nb.config import load_settings
from casparian_nb.sentinel.server import Sentinel


def test_the_setting_defaults_on_and_reads_the_environment(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "a", env={}).sentinel_tape is True
    off = load_settings(tmp_path / "b", env={"CASPARIAN_SENTINEL_TAPE": "false"})
    assert off.sentinel_tape is False
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.toml").write_text("sentinel_tape = false\n")
    assert load_settings(tmp_path / "c", env={}).sentinel_tape is False


@pytest.mark.parametrize("record", [True, False])
def test_the_sentinel_honours_it(tmp_path: Path, record: bool) -> None:
    settings = load_settings(tmp_path / "home", env={}, sentinel_tape=record)
    sentinel = Sentinel(settings)
    try:
        assert (sentinel.tape is not None) is record
        sentinel._publish("JobQueued", {"job_id": 1, "plugin_name": "p"})
    finally:
        if sentinel.tape is not None:
            sentinel.tape.close("sentinel_stopped")
        sentinel.persist.close()
        sentinel.ctx.destroy(linger=0)
        sentinel.store.close()
    tapes = sorted(settings.tapes_dir.glob("sentinel-*.tape"))
    if not record:
        assert tapes == []
        return
    names = [json.loads(x)["event_name"].get("name") for x in tapes[0].read_text().splitlines()]
    assert names == [None, "JobQueued", None]  # TapeStarted, the event, TapeStopped

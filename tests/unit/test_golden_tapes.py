"""Every checked-in golden tape (``tapes/*.tape``) validates with ``casparian tape validate``,
explains with ``casparian tape explain --format json`` to exactly its ``.explain.json``, and
carries nothing machine-dependent (no absolute paths, no home, user or host names).

A new golden tape needs its expectation next to it; to (re)write every expectation after a
deliberate change to explain, run ``python tests/unit/test_golden_tapes.py --regenerate`` and
review the diff by hand.

``demo_session.tape`` is the sentinel tape of one real ``casparian demo`` run (what ``make demo``
runs), copied from ``<home>/tapes/sentinel-*.tape``; to record it again::

    casparian --home /tmp/d --tape /tmp/d/demo_cli.tape demo
    cp /tmp/d/tapes/sentinel-*.tape tapes/demo_session.tape
    casparian tape explain tapes/demo_session.tape --format json > tapes/demo_session.explain.json
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from casparian_nb import cli

ROOT = Path(__file__).resolve().parents[2]
TAPES = ROOT / "tapes"
GOLDEN = sorted(TAPES.glob("*.tape"))
#: An absolute path with at least two components (/tmp/x, parquet:///data/x, C:\\x, ~/x).
_ABSOLUTE = re.compile(r"(?:^|[\s=:'\"(/])/[\w\-][\w.\-]*/|[A-Za-z]:\\|(?:^|\s)~/")


def _main(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(list(argv))
    return code, buf.getvalue()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_the_golden_tapes_are_there() -> None:
    names = {p.name for p in GOLDEN}
    assert {"golden_original.tape", "golden_session.tape", "demo_session.tape"} <= names


def test_every_expectation_has_its_tape() -> None:
    orphans = [p.name for p in TAPES.glob("*.explain.json")
               if p.name.replace(".explain.json", ".tape") not in {t.name for t in GOLDEN}]
    assert orphans == []


@pytest.mark.parametrize("tape", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_tape_validates(tape: Path) -> None:
    code, text = _main("tape", "validate", str(tape), "--format", "json")
    report = json.loads(text)
    assert code == 0 and report["valid"], text
    # Golden tapes are complete recordings: not even a warning (e.g. a missing TapeStopped).
    assert report["issues"] == [], text


@pytest.mark.parametrize("tape", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_tape_explains_to_its_checked_in_json(tape: Path) -> None:
    expected_path = tape.with_name(tape.stem + ".explain.json")
    assert expected_path.is_file(), f"{tape.name} has no {expected_path.name} next to it"
    code, text = _main("tape", "explain", str(tape), "--format", "json")
    assert code == 0
    assert json.loads(text) == json.loads(expected_path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("tape", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_tape_is_machine_independent(tape: Path) -> None:
    """No absolute path (the original's golden tape has only a relative sink) in any payload
    or in the explanation."""
    for number, line in enumerate(tape.read_text(encoding="utf-8").splitlines(), 1):
        for s in _strings(json.loads(line).get("payload")):
            assert not _ABSOLUTE.search(s), f"{tape.name}:{number}: {s!r}"
    expected = json.loads(tape.with_name(tape.stem + ".explain.json").read_text())
    for s in _strings(expected):
        assert not _ABSOLUTE.search(s), f"{tape.stem}.explain.json: {s!r}"


def test_demo_session_tells_the_demo_story() -> None:
    """The tape recorded from ``casparian demo``: 12 sample files on 2 workers, all completed,
    each with its orders + quarantine materializations, input files and sinks hashed."""
    data = json.loads((TAPES / "demo_session.explain.json").read_text())
    assert data["summary"]["total"] == data["summary"]["completed"] == 12
    assert data["summary"]["failed"] == 0 and data["errors"] == []
    assert len(data["workers"]) == 2
    assert {m["output_name"] for m in data["materialization_summary"]} == {
        "orders", "orders_quarantine"}
    assert all(re.fullmatch(r"[0-9a-f]{16}", j["input_file"]) for j in data["jobs"])
    lines = (TAPES / "demo_session.tape").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["payload"]["producer"] == "sentinel" and first["payload"]["redaction"] == "hash"
    assert last["event_name"] == {"type": "tape_stopped"}


def _regenerate() -> None:  # pragma: no cover - maintenance helper
    for tape in GOLDEN:
        code, text = _main("tape", "explain", str(tape), "--format", "json")
        assert code == 0, tape
        tape.with_name(tape.stem + ".explain.json").write_text(text, encoding="utf-8")
        print(f"wrote {tape.stem}.explain.json")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--regenerate"]:
        _regenerate()
    else:
        sys.exit("usage: python tests/unit/test_golden_tapes.py --regenerate")

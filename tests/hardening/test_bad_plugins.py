"""Bad plugins submitted to a REAL sentinel through the control API (issue 7 §4).

Every plugin here writes a marker file when it is imported and when ``parse`` runs. Refusals
that can be made before running anything — a syntax error, no ``parse``, reserved ``_cf_``
columns declared in the manifest, a path escaping ``<home>/plugins`` by ``..`` or by a
symlink, an unsigned plugin under ``allow_unsigned_python = false``, a signed plugin changed
after signing (before the submit or between the submit and the run) — must come back as one
line naming the file, with no job queued and no marker. What only running can tell — a wrong
return type, reserved columns produced at run time — fails the job permanently, in one line
naming the plugin file, with nothing promoted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from casparian_nb.client import ControlClient, RemoteRequestError
from casparian_nb.config import Settings, TrustSettings
from casparian_nb.launcher import LocalCluster
from casparian_nb.plugins import generate_signing_key, sign_plugin
from tests.hardening.harness import FAST, audit, jobs_by_id, record, wait_final, wait_job

GOOD_BODY = """
import pyarrow as pa

def parse(path):
    open(MARKER + ".parse", "w").close()
    return {ret}
"""


def marker_plugin(path: Path, body: str, *, manifest: str = "") -> Path:
    """A plugin that leaves ``<path>.marker`` behind if it is ever imported or run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = f"{path}.marker"
    path.write_text(f"MARKER = {marker!r}\nopen(MARKER, 'w').close()\n"
                    f"name = {path.stem!r}\nversion = '1.0.0'\n{manifest}{body}")
    return path


def ran(path: Path) -> bool:
    return Path(f"{path}.marker").exists() or Path(f"{path}.marker.parse").exists()


@pytest.fixture
def strict(hcluster: Callable[..., LocalCluster], settings: Settings,
           home: Path) -> tuple[LocalCluster, str]:
    """A cluster that runs only plugins signed by 'alice'; returns it and her private key."""
    private, public = generate_signing_key()
    (home / "config.toml").write_text(
        "[trust]\nallow_unsigned_python = false\nallowed_signers = [\"alice\"]\n"
        f"[trust.keys]\nalice = \"{public}\"\n")
    trust = TrustSettings(allow_unsigned_python=False, allowed_signers=("alice",),
                          keys={"alice": public})
    return hcluster(workers=1, trust=trust, **FAST), private


def test_bad_plugins_are_refused_before_anything_runs(
        strict: tuple[LocalCluster, str], settings: Settings, tmp_path: Path,
        fixture_plugin: Path) -> None:
    cluster, private = strict
    assert cluster.info is not None
    plugins_dir = settings.plugins_dir
    src = tmp_path / "in.txt"
    src.write_text("x\n")

    def signed(p: Path) -> Path:
        sign_plugin(p, "alice", private)
        return p

    syntax = signed(marker_plugin(plugins_dir / "syntax_error.py", "def parse(path:\n  pass\n"))
    no_parse = signed(marker_plugin(plugins_dir / "no_parse.py",
                                    "def transform(path):\n    return None\n"))
    reserved = signed(marker_plugin(
        plugins_dir / "reserved_cols.py", GOOD_BODY.format(ret="None"),
        manifest="outputs = {'o': {'columns': [{'name': 'id', 'type': 'int64'}, "
                 "{'name': '_cf_job_id', 'type': 'string'}]}}\n"))
    outside = marker_plugin(tmp_path / "elsewhere" / "escapee.py", GOOD_BODY.format(ret="None"))
    signed(outside)
    evil = marker_plugin(settings.home / "evil.py", GOOD_BODY.format(ret="None"))
    signed(evil)
    (plugins_dir / "link.py").symlink_to(outside)
    (plugins_dir / "link.py.sig").symlink_to(f"{outside}.sig")
    unsigned = marker_plugin(plugins_dir / "unsigned.py", GOOD_BODY.format(ret="None"))
    tampered = signed(marker_plugin(plugins_dir / "tampered.py", GOOD_BODY.format(ret="None")))
    with tampered.open("a") as fh:
        fh.write("\nimport os  # a harmless-looking change after signing\n")
    wrong_key = marker_plugin(plugins_dir / "wrong_key.py", GOOD_BODY.format(ret="None"))
    sign_plugin(wrong_key, "alice", generate_signing_key()[0])  # alice's name, not her key

    cases: list[tuple[str, str, list[str]]] = [
        ("syntax error", str(syntax), [str(syntax), "syntax error", "line"]),
        ("missing parse", str(no_parse), [str(no_parse), "no module-level parse"]),
        ("reserved _cf_ column in the manifest", str(reserved),
         [str(reserved), "'_cf_job_id'", "reserved"]),
        ("path traversal by name", "../evil", ["'../evil'", "'..' is not allowed"]),
        ("path traversal, nested", "sub/../../evil", ["'..' is not allowed"]),
        ("symlink escape", "link", ["'link'", "outside the plugins directory"]),
        ("absolute path that is no file", f"{plugins_dir}/../evil", ["plugin file not found"]),
        ("unsigned, allow_unsigned_python = false", str(unsigned),
         [str(unsigned), "unsigned plugin refused by trust policy"]),
        ("signed, then tampered", str(tampered), [str(tampered), "modified after signing"]),
        ("signed with another key", str(wrong_key), [str(wrong_key), "invalid signature"]),
    ]
    with ControlClient(cluster.info) as ctl:
        for name, ref, needles in cases:
            for call in (lambda r: ctl.submit(r, [str(src)]), ctl.register_plugin):
                with pytest.raises(RemoteRequestError) as refused:
                    call(ref)
                text = refused.value.remote_message
                assert refused.value.code == "INVALID_REQUEST", (name, text)
                assert "\n" not in text, (name, text)
                for needle in needles:
                    assert needle in text, (name, needle, text)
        assert ctl.queue_stats()["total"] == 0, "a refused plugin got a job"
        # The sentinel is serving and a signed plugin runs: the refusals were the policy,
        # not a broken pipeline. Only then look for markers.
        good = plugins_dir / "fixture_plugin.py"
        good.write_text(fixture_plugin.read_text())
        signed(good)
        [job_id] = ctl.submit("fixture_plugin", [str(src)])["job_ids"]
        assert wait_final(settings, [job_id])[job_id]["status"] == "COMPLETED"
    for p in (syntax, no_parse, reserved, outside, evil, unsigned, tampered, wrong_key):
        assert not ran(p), f"{p} was executed"
    record("bad plugins refused before running", None, checks=len(cases) * 2)


def test_a_plugin_changed_between_submit_and_run_is_refused_by_the_worker(
        strict: tuple[LocalCluster, str], settings: Settings, tmp_path: Path,
        fixture_plugin: Path) -> None:
    """The worker enforces trust itself (F13): a signed plugin swapped on disk while its job
    waits in the queue never runs."""
    cluster, private = strict
    assert cluster.info is not None
    blocker = settings.plugins_dir / "fixture_plugin.py"
    blocker.write_text(fixture_plugin.read_text())
    sign_plugin(blocker, "alice", private)
    swapped = marker_plugin(settings.plugins_dir / "swapped.py", GOOD_BODY.format(ret="None"))
    sign_plugin(swapped, "alice", private)
    slow, src = tmp_path / "slow.txt", tmp_path / "in.txt"
    slow.write_text("mode=slow sleep=1\n")
    src.write_text("x\n")
    with ControlClient(cluster.info) as ctl:
        [first] = ctl.submit("fixture_plugin", [str(slow)])["job_ids"]
        wait_job(settings, first, lambda j: j["status"] == "RUNNING", 20, "the blocker to run")
        [job_id] = ctl.submit("swapped", [str(src)])["job_ids"]
        swapped.write_text(swapped.read_text().replace("return None", "return None  # evil"))
        rows = wait_final(settings, [first, job_id])
    row = rows[job_id]
    assert row["status"] == "FAILED" and row["error_kind"] == "permanent", row
    assert str(swapped) in row["error_message"] and "\n" not in row["error_message"]
    # Refused by the worker's trust check (the signature) when the swap came before the
    # dispatch, else by the plugin host (the hash the job was submitted with) when the job
    # was already in the worker's backlog: either way before anything of it runs.
    msg = row["error_message"]
    assert "modified after signing" in msg or "changed on disk since it was submitted" in msg, msg
    assert not ran(swapped)
    record("plugin swapped after submit refused by worker", None, checks=1)


def test_what_only_running_can_tell_fails_the_job_in_one_line_naming_the_plugin(
        hcluster: Callable[..., LocalCluster], settings: Settings, tmp_path: Path) -> None:
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    wrong_type = marker_plugin(tmp_path / "wrong_type.py", GOOD_BODY.format(ret="{'a': 1}"))
    collides = marker_plugin(tmp_path / "collides.py", GOOD_BODY.format(
        ret="pa.table({'id': [1], '_cf_job_id': ['forged']})"))
    partial = marker_plugin(tmp_path / "partial_lineage.py", GOOD_BODY.format(
        ret="pa.table({'id': [1], '_cf_source_hash': ['x'], '_cf_job_id': ['y']})"))
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    sink = tmp_path / "out"
    expect = {
        wrong_type: ["PluginReturnError", "parse() returned dict"],
        collides: ["LineageError", "'_cf_job_id' is reserved"],
        partial: ["LineageError", "partial lineage set"],
    }
    ids = {}
    with ControlClient(cluster.info) as ctl:
        for plugin in expect:
            ids[plugin] = ctl.submit(plugin, [str(src)], sink=f"parquet://{sink}")["job_ids"][0]
        rows = wait_final(settings, ids.values())
        a = audit(settings, ids.values(), sink=sink, client=ctl)
    for plugin, needles in expect.items():
        row = rows[ids[plugin]]
        msg = row["error_message"]
        assert row["status"] == "FAILED" and row["error_kind"] == "permanent", row
        assert row["retry_count"] == 0 and "\n" not in msg, msg
        assert str(plugin) in msg, f"the error does not name the plugin file: {msg}"
        for needle in needles:
            assert needle in msg, msg
    a.assert_clean("runtime plugin errors")
    assert not sink.exists() or not any(sink.iterdir()), "a failed job promoted output"
    assert all(j["status"] == "FAILED" for j in jobs_by_id(settings, ids.values()).values())
    record("bad plugins failing at run time", a)



def test_a_relative_wire_ref_cannot_climb_out_of_the_sentinels_cwd(
        hcluster: Callable[..., LocalCluster], settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    evil = marker_plugin(settings.home / "evil.py", GOOD_BODY.format(ret="None"))
    monkeypatch.chdir(settings.plugins_dir)  # the sentinel inherits this cwd
    cluster = hcluster(workers=1, **FAST)
    assert cluster.info is not None
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    with ControlClient(cluster.info) as ctl:
        with pytest.raises(RemoteRequestError, match=r"'\.\.' is not allowed"):
            ctl.submit("../evil.py", [str(src)])
    assert not ran(evil)

"""The server extension's API in a real jupyter-server (pytest-jupyter's ``jp_fetch``):
tapes read with the notebook's own code, paths confined to the root, authentication, and a
real sentinel listed and a running job cancelled through the signed control API."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from casparian_nb.client import ControlClient
from casparian_nb.config import load_settings
from casparian_nb.launcher import LocalCluster
from casparian_nb.notebook.timeline import TimelineWidget
from casparian_nb.tape.timeline_view import TimelineSource
from tests.conftest import FIXTURE_PLUGIN, ROOT, assert_no_leaks, descendants, make_inputs

GOLDEN = ROOT / "tapes" / "golden_session.tape"
Fetch = Callable[..., Awaitable[Any]]


async def get_json(jp_fetch: Fetch, *parts: str, **params: Any) -> dict[str, Any]:
    response = await jp_fetch("casparian", "api", *parts, params=params)
    assert response.code == 200
    return json.loads(response.body)  # type: ignore[no-any-return]


async def refused(jp_fetch: Fetch, *parts: str, method: str = "GET", body: Any = None,
                  **params: Any) -> tuple[int, str]:
    kwargs: dict[str, Any] = {"method": method, "params": params}
    if method == "POST":
        kwargs["body"] = json.dumps(body)
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("casparian", "api", *parts, **kwargs)
    assert info.value.response is not None
    return info.value.code, json.loads(info.value.response.body)["reason"]


async def test_a_tape_is_served_as_the_notebook_timeline_draws_it(
        jp_fetch: Fetch, jp_root_dir: Path) -> None:
    (jp_root_dir / "runs").mkdir()
    shutil.copy(GOLDEN, jp_root_dir / "runs" / "golden.tape")
    doc = await get_json(jp_fetch, "tape", path="runs/golden.tape")
    widget = TimelineWidget(GOLDEN)  # the same data, lanes and end state as the widget
    assert doc["data"] == widget.data and doc["data"]["lanes"]
    assert doc["state"] == widget.state and doc["position"] == widget.position
    assert doc["validation"]["valid"] is True and doc["validation"]["issues"] == []
    assert doc["explain"]["commands"] == ["Submit", "Cancel", "Query"]
    assert "jobs: completed 2, failed 1, aborted 1" in doc["explain_text"]
    # the scrubber and a marker's payload, as the widget answers them
    first = doc["data"]["markers"][0]["seq"]
    at = await get_json(jp_fetch, "tape", "state", path="runs/golden.tape", seq=str(first))
    assert at == {"state": widget.scrub(seq=first), "position": widget.position}
    mid = await get_json(jp_fetch, "tape", "state", path="runs/golden.tape", t="2.5")
    assert mid["state"] == widget.scrub(t=2.5)
    event = await get_json(jp_fetch, "tape", "event", path="runs/golden.tape", seq=str(first))
    assert event == {"seq": first, "event": widget.event(first)}
    # a zoom: the level of detail of that view, as the widget's kernel answers {type: "view"}
    view = await get_json(jp_fetch, "tape", "view", path="runs/golden.tape", t0="0.5",
                          t1="2.5", width="640")
    assert view == {"payload": TimelineSource(GOLDEN).payload((0.5, 2.5), 640)}
    assert view["payload"] != doc["data"]
    code, reason = await refused(jp_fetch, "tape", "view", path="runs/golden.tape", t0="3",
                                 t1="1")
    assert code == 400 and "t0" in reason


async def test_a_damaged_tape_answers_with_its_validation_errors(
        jp_fetch: Fetch, jp_root_dir: Path) -> None:
    lines = GOLDEN.read_text().splitlines(keepends=True)
    damaged = jp_root_dir / "damaged.tape"
    damaged.write_text("".join(lines[:5]) + "{not json at all\n" + "".join(lines[5:12])
                       + lines[12][: len(lines[12]) // 2])
    doc = await get_json(jp_fetch, "tape", path="damaged.tape")
    report = doc["validation"]
    assert report["valid"] is False and report["error_count"] >= 1
    assert any(i["line"] == 6 for i in report["issues"]), report["issues"]
    assert "jobs: queued 2, dispatched 1, running 1" in doc["explain_text"]  # up to the damage
    assert doc["data"]["lanes"] and doc["replay_error"] is None
    # not a tape at all: still an answer, with its errors and no timeline
    (jp_root_dir / "garbage.tape").write_bytes(b"garbage\x00 not a tape\n{\"a\": 1}\n")
    doc = await get_json(jp_fetch, "tape", path="garbage.tape")
    assert [i["line"] for i in doc["validation"]["issues"]] == [1, 2]
    assert doc["data"] is None and doc["explain"] is None
    assert doc["replay_error"] == "garbage.tape is not a tape: no line parses as an event"


@pytest.mark.parametrize("path", ["../outside.tape", "/etc/passwd", "link/outside.tape",
                                  "a/../../outside.tape"])
async def test_paths_outside_the_root_are_refused(jp_fetch: Fetch, jp_root_dir: Path,
                                                  tmp_path: Path, path: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(GOLDEN, outside / "outside.tape")
    shutil.copy(GOLDEN, jp_root_dir.parent / "outside.tape")
    (jp_root_dir / "link").symlink_to(outside)  # a symlink escaping the root
    code, reason = await refused(jp_fetch, "tape", path=path)
    assert code == 403
    assert reason.startswith("refused:") and "\n" not in reason
    code, reason = await refused(jp_fetch, "start", method="POST", body={"path": path})
    assert code == 403


async def test_a_missing_tape_is_a_404_with_a_reason(jp_fetch: Fetch) -> None:
    assert await refused(jp_fetch, "tape", path="nope.tape") == (404, "no tape file 'nope.tape'")
    assert await refused(jp_fetch, "tape") == (400, "missing ?path=")


async def test_requests_without_the_token_are_refused(
        jp_serverapp: Any, jp_fetch: Fetch, jp_root_dir: Path, jp_http_port: int,
        jp_base_url: str) -> None:
    shutil.copy(GOLDEN, jp_root_dir / "golden.tape")
    client = AsyncHTTPClient()
    base = f"http://localhost:{jp_http_port}{jp_base_url}casparian/api/"
    for url, method, body in [(f"{base}tape?path=golden.tape", "GET", None),
                              (f"{base}sentinels", "GET", None),
                              (f"{base}cancel", "POST", json.dumps({"home": "x", "job_id": 1}))]:
        response = await client.fetch(url, method=method, body=body, raise_error=False)
        assert response.code == 403, url
        assert b'"lanes"' not in response.body


async def test_a_running_sentinel_is_listed_and_its_running_job_cancelled(
        jp_fetch: Fetch, jp_root_dir: Path, tmp_path: Path, default_home: Path) -> None:
    home = jp_root_dir / "project" / "home"
    home.mkdir(parents=True, mode=0o700)
    cluster = LocalCluster(load_settings(home, heartbeat_interval=0.2), workers=1, slots=1)
    tracked: list[int] = []
    try:
        info = cluster.start()
        tracked += cluster.pids
        listed = await get_json(jp_fetch, "sentinels")
        rows = {r["home"]: r for r in listed["sentinels"]}
        assert str(default_home) in rows and rows[str(default_home)]["running"] is False
        mine = rows[str(home)]
        assert mine["running"] is True and mine["pid"] == info.pid
        assert len(mine["workers"]) == 1
        assert mine["tape"] is not None and mine["tape"].startswith("project/home/tapes/")

        plugin = tmp_path / "fixture_plugin.py"
        shutil.copy(FIXTURE_PLUGIN, plugin)
        (hang,) = make_inputs(tmp_path / "in", 1, mode="hang")
        with ControlClient(info) as ctl:
            job_id = ctl.submit(plugin, [str(hang)],
                                sink=f"parquet://{tmp_path / 'out'}")["job_ids"][0]

        async def job() -> dict[str, Any]:
            jobs = (await get_json(jp_fetch, "jobs", home=str(home)))["jobs"]
            return next(j for j in jobs if j["job_id"] == job_id)

        host = await poll(lambda: _running_host(home, job_id), "the plugin host to start")
        row = await job()
        assert row["active"] is True and row["status"] == "running"
        response = await jp_fetch("casparian", "api", "cancel", method="POST",
                                  body=json.dumps({"home": str(home), "job_id": job_id}))
        assert json.loads(response.body)["success"] is True
        await poll(lambda: _gone(host), f"plugin host {host} to be killed")

        async def aborted() -> dict[str, Any] | None:
            r = await job()
            return r if r["status"] == "aborted" else None

        final = await apoll(aborted, "the job to be ABORTED")
        assert final["active"] is False
        # retry: a new attempt through the same signed control API; a second one is refused
        response = await jp_fetch("casparian", "api", "retry", method="POST",
                                  body=json.dumps({"home": str(home), "job_id": job_id}))
        assert json.loads(response.body)["attempts"] == {str(job_id): 2}
        code, reason = await refused(jp_fetch, "retry", method="POST",
                                     body={"home": str(home), "job_id": job_id})
        assert code == 409 and f"job {job_id} is not finished" in reason, reason
        host = await poll(lambda: _running_host(home, job_id), "attempt 2's plugin host")
        await jp_fetch("casparian", "api", "cancel", method="POST",
                       body=json.dumps({"home": str(home), "job_id": job_id}))
        await poll(lambda: _gone(host), f"plugin host {host} to be killed")
        await apoll(aborted, "attempt 2 to be ABORTED")
        stats = (await get_json(jp_fetch, "sentinels"))["sentinels"]
        assert next(r for r in stats if r["home"] == str(home))["counts"]["aborted"] == 1
        # a home the server does not show cannot be named
        code, reason = await refused(jp_fetch, "cancel", method="POST",
                                     body={"home": str(tmp_path), "job_id": job_id})
        assert (code, reason) == (404, f"no sentinel home {str(tmp_path)!r} is visible to "
                                       "this server")
        # stopped: listed as such, its counts read from its state DB
        tracked += descendants(cluster.pids)
        cluster.stop()
        stopped = (await get_json(jp_fetch, "sentinels"))["sentinels"]
        row = next(r for r in stopped if r["home"] == str(home))
        assert row["running"] is False and row["workers"] == []
        assert row["counts"]["aborted"] == 1 and row["counts"]["total"] == 1
    finally:
        tracked += descendants(cluster.pids)
        cluster.stop()
        assert_no_leaks(tracked)


async def test_start_runs_a_sentinel_in_a_folder_of_the_root(
        jp_fetch: Fetch, jp_root_dir: Path) -> None:
    folder = jp_root_dir / "fresh"
    folder.mkdir()
    response = await jp_fetch("casparian", "api", "start", method="POST",
                              body=json.dumps({"path": "fresh"}))
    started = json.loads(response.body)
    pids = [started["pid"]]
    try:
        assert started["home"] == str(folder.resolve())
        pids += descendants(pids)
        rows = (await get_json(jp_fetch, "sentinels"))["sentinels"]
        row = next(r for r in rows if r["home"] == str(folder.resolve()))
        assert row["running"] and row["pid"] == started["pid"] and len(row["workers"]) == 2
        code, reason = await refused(jp_fetch, "start", method="POST", body={"path": "fresh"})
        assert code == 409 and "already serves" in reason
    finally:
        pids += descendants(pids[:1])
        with ControlClient.from_home(folder) as ctl:
            ctl.shutdown()
        assert_no_leaks(pids, timeout=20)


def _running_host(home: Path, job_id: int) -> int | None:
    from casparian_nb.store import StateReader

    with StateReader.open(load_settings(home).state_db) as r:
        job = r.get_job(job_id)
    return job["host_pid"] if job and job["status"] == "RUNNING" and job["host_pid"] else None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def poll(predicate: Callable[[], Any], message: str, timeout: float = 20.0) -> Any:
    async def wrapped() -> Any:
        return predicate()
    return await apoll(wrapped, message, timeout)


async def apoll(predicate: Callable[[], Awaitable[Any]], message: str,
                timeout: float = 20.0) -> Any:
    """Await ``predicate`` until it is truthy (without blocking the server's loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)


"""The HTTP API under ``/casparian/api/`` that the JupyterLab extension calls.

Every handler is authenticated like any Jupyter endpoint (token/cookie, XSRF on POST); paths
are confined to the server's root folder; sentinels are reached only through the signed
control API. Errors answer ``{"reason": "<one line>"}`` with a status that says what kind.

=======================  ====================================================================
``GET  tape?path=P``     validation, explain summary, timeline and scrubber state of tape P
``GET  tape/state``      ``?path=P&t=SECONDS`` or ``&seq=N``: the replayed queue there
``GET  tape/event``      ``?path=P&seq=N``: one event's full envelope
``GET  tape/view``       ``?path=P&t0=S&t1=S&width=PX``: a zoomed view's level of detail
``GET  sentinels``       the sentinels of the homes visible to the server
``GET  jobs?home=H``     the job queue of one of them
``POST cancel``          ``{"home", "job_id"}``: cancel a job (running → "aborting…")
``POST retry``           ``{"home", "job_id"}``: a FAILED/ABORTED job as a new attempt (409: refused)
``POST start``           ``{"path"}``: start a sentinel + workers with that folder as home
=======================  ====================================================================
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..errors import CasparianError, ConfigError, PathOutsideRootError, SentinelError
from ._paths import confined, relative_to_root
from ._sentinels import ServerSentinels
from ._tapes import TapeView, tape_document

__all__ = ["setup_handlers"]

T = TypeVar("T")
_VIEW_CACHE = 4  # loaded tapes kept for scrubbing (keyed by path, size and mtime)


class _BaseHandler(APIHandler):
    """Runs blocking work in a thread and maps error types to statuses."""

    @property
    def sentinels(self) -> ServerSentinels:
        return self.settings["casparian_sentinels"]  # type: ignore[no-any-return]

    @property
    def root_dir(self) -> Path:
        return Path(self.settings["server_root_dir"])

    def fail(self, status: int, reason: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"reason": reason}))

    async def run(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)`` in a thread; on a known error, answer it and return None."""
        try:
            return await asyncio.to_thread(fn, *args)
        except PathOutsideRootError as exc:
            self.fail(403, str(exc))
        except (FileNotFoundError, LookupError) as exc:
            self.fail(404, _reason(exc))
        except (IsADirectoryError, NotADirectoryError, ConfigError) as exc:
            self.fail(400, _reason(exc))
        except SentinelError as exc:
            self.fail(409, str(exc))
        except (CasparianError, OSError) as exc:
            self.fail(500, _reason(exc))
        return None

    def path_arg(self) -> str:
        path = self.get_query_argument("path", "")
        if not path:
            raise tornado.web.HTTPError(400, reason="missing ?path=")
        return path

    def tape_file(self, path: str) -> Path:
        real = confined(self.root_dir, path)
        if not real.is_file():
            raise FileNotFoundError(f"no tape file {path!r}")
        return real

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the body is not JSON") from None
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, reason="the body is not a JSON object")
        return data

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"reason": self._reason or "error"}))


def _reason(exc: BaseException) -> str:
    """One line; an OS error names the file, not its full path on the server."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {Path(str(exc.filename)).name}"
    # KeyError/LookupError's str() is the repr of its argument: use the argument itself
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


class _TapeViews:
    """A few loaded tapes, so that scrubbing does not re-read the file each time (a tape that
    changed — a live session tape grows — is loaded again)."""

    def __init__(self) -> None:
        self._views: OrderedDict[tuple[Path, int, int], TapeView] = OrderedDict()

    def get(self, path: Path) -> TapeView:
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        view = self._views.pop(key, None) or TapeView(path)
        self._views[key] = view
        while len(self._views) > _VIEW_CACHE:
            self._views.popitem(last=False)
        return view


_views = _TapeViews()


class TapeHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        path = self.path_arg()

        def load() -> dict[str, Any]:
            return tape_document(self.tape_file(path), Path(path).name, views=_views)

        doc = await self.run(load)
        if doc is not None:
            self.finish(json.dumps(doc))


class TapeStateHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        path = self.path_arg()
        seq = _number(self.get_query_argument("seq", None), int, "seq")
        t = _number(self.get_query_argument("t", None), float, "t")
        out = await self.run(lambda: _views.get(self.tape_file(path)).at(t=t, seq=seq))
        if out is not None:
            self.finish(json.dumps(out))


class TapeEventHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        path = self.path_arg()
        seq = _number(self.get_query_argument("seq", None), int, "seq")
        if seq is None:
            raise tornado.web.HTTPError(400, reason="missing ?seq=")
        out = await self.run(
            lambda: {"seq": seq, "event": _views.get(self.tape_file(path)).event(seq)})
        if out is not None:
            self.finish(json.dumps(out))


class TapeViewHandler(_BaseHandler):
    """A zoom: the level of detail of ``?t0=&t1=`` seconds at ``&width=`` pixels, as the
    widget's kernel answers its ``{type: "view"}`` message."""

    @tornado.web.authenticated
    async def get(self) -> None:
        path = self.path_arg()
        t0 = _number(self.get_query_argument("t0", None), float, "t0")
        t1 = _number(self.get_query_argument("t1", None), float, "t1")
        width = _number(self.get_query_argument("width", None), int, "width") or 800
        if t0 is None or t1 is None or not t1 > t0:
            raise tornado.web.HTTPError(400, reason="need ?t0= before ?t1= (seconds from the start)")
        width = max(50, min(width, 8000))
        out = await self.run(
            lambda: {"payload": _views.get(self.tape_file(path)).payload((t0, t1), width)})
        if out is not None:
            self.finish(json.dumps(out))


class SentinelsHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        rows = await self.run(self.sentinels.summaries)
        if rows is not None:
            for row in rows:  # the viewer opens tapes by their path under the root
                row["tape"] = row["tape"] and relative_to_root(self.root_dir, Path(row["tape"]))
            self.finish(json.dumps({"sentinels": rows}))


class JobsHandler(_BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        home = self.get_query_argument("home", "")
        jobs = await self.run(lambda: self.sentinels.jobs(self.sentinels.known(home)))
        if jobs is not None:
            self.finish(json.dumps({"jobs": jobs}))


class _JobActionHandler(_BaseHandler):
    """``POST {"home", "job_id"}``: one job action of a visible sentinel, through its signed
    control API. ``refusal`` says where the sentinel's reply carries a refusal (409)."""

    def act(self, home: Path, job_id: int) -> dict[str, Any]:
        raise NotImplementedError

    def refusal(self, reply: dict[str, Any], job_id: int) -> str | None:
        return None

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.body()
        job_id = body.get("job_id")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise tornado.web.HTTPError(400, reason="job_id must be an integer")
        home = str(body.get("home", ""))
        reply = await self.run(lambda: self.act(self.sentinels.known(home), job_id))
        if reply is None:
            return
        refused = self.refusal(reply, job_id)
        if refused:
            self.fail(409, refused)
        else:
            self.finish(json.dumps(reply))


class CancelHandler(_JobActionHandler):
    def act(self, home: Path, job_id: int) -> dict[str, Any]:
        return self.sentinels.cancel(home, job_id)


class RetryHandler(_JobActionHandler):
    def act(self, home: Path, job_id: int) -> dict[str, Any]:
        return self.sentinels.retry(home, job_id)

    def refusal(self, reply: dict[str, Any], job_id: int) -> str | None:
        why = (reply.get("refused") or {}).get(str(job_id))
        return None if why is None else str(why)


class StartHandler(_BaseHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        folder = str(self.body().get("path", ""))

        def start() -> dict[str, Any]:
            home = confined(self.root_dir, folder)
            if not home.is_dir():
                raise NotADirectoryError(f"{folder or '/'} is not a folder")
            return self.sentinels.start(home)

        reply = await self.run(start)
        if reply is not None:
            self.finish(json.dumps(reply))


def _number(raw: str | None, kind: Callable[[str], T], name: str) -> T | None:
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise tornado.web.HTTPError(400, reason=f"{name} must be a number") from None


def setup_handlers(web_app: tornado.web.Application, sentinels: ServerSentinels) -> None:
    """Mount the handlers under ``<base_url>casparian/api/``."""
    web_app.settings["casparian_sentinels"] = sentinels
    base = url_path_join(web_app.settings["base_url"], "casparian", "api")
    routes: list[tuple[str, type[_BaseHandler]]] = [
        ("tape", TapeHandler), ("tape/state", TapeStateHandler), ("tape/event", TapeEventHandler),
        ("tape/view", TapeViewHandler),
        ("sentinels", SentinelsHandler), ("jobs", JobsHandler), ("cancel", CancelHandler),
        ("retry", RetryHandler),
        ("start", StartHandler),
    ]
    web_app.add_handlers(".*$", [(url_path_join(base, p), h) for p, h in routes])

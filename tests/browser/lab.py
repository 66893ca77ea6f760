"""JupyterLab + headless Chromium for the browser tests (imported by tests, not collected).

- :class:`Lab` starts ``python -m jupyterlab`` on 127.0.0.1 with no token, a fresh workspace
  folder (else Lab restores the last workspace and "Run All" can hit the wrong notebook) and a
  fresh user-settings folder that silences the news/update toast; ``stop()`` ends it by PID.
- :func:`launch_chromium` launches Debian's ``/usr/bin/chromium`` through Python playwright
  (``executable_path``; never ``playwright install``: no browser downloads are reachable).
- :class:`NotebookPage` drives one notebook in a page: open it, wait for an idle kernel, run
  all / one cell, restart the kernel, and explain what the page shows when a wait fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import nbformat
import pytest

from tests.conftest import wait_until

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "screenshots"  # git-ignored
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: `make test` installs Debian's chromium; in CI a missing browser is a failure, not a skip.
requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="no /usr/bin/chromium (run `bash scripts/test-deps.sh`)")

#: User settings for a fresh lab: no news/update toast over the notebook.
_QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """A running JupyterLab: its URL, root folder and ``stop()`` (SIGTERM by PID: the server
    shuts its kernels down first)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], root: Path | None = None) -> None:
        self.url = url
        self.proc = proc
        self.root = root

    @classmethod
    def start(cls, root: Path, state: Path, env: Mapping[str, str] | None = None,
              timeout: float = 60.0) -> Lab:
        """JupyterLab serving ``root``; its workspaces, settings and log live in ``state``."""
        for rel, content in _QUIET_SETTINGS.items():
            path = state / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
        port = free_port()
        full_env = {**(os.environ if env is None else env),
                    "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
                    "JUPYTERLAB_SETTINGS_DIR": str(state / "settings")}
        with (state / "lab.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
                 "--port", str(port), "--ServerApp.token=", "--ServerApp.password=",
                 "--ServerApp.disable_check_xsrf=True",  # REST calls from the tests
                 "--allow-root", f"--ServerApp.root_dir={root}"],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        lab = cls(f"http://127.0.0.1:{port}", proc, root)
        try:
            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"JupyterLab exited with {proc.returncode}; see "
                                         f"{state / 'lab.log'}")
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0
            wait_until(up, timeout, 0.1, message="JupyterLab to listen")
        except BaseException:
            lab.stop()
            raise
        return lab

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    # -- REST ----------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One call to the server's REST API (no token: the lab runs with ``token=''``)."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def sessions_for(self, notebook: str) -> list[dict[str, Any]]:
        return [s for s in self.api("GET", "sessions") if s.get("path") == notebook]

    def shutdown_kernels_of(self, notebook: str) -> int:
        """Shut down the kernels of ``notebook``'s sessions; how many."""
        sessions = self.sessions_for(notebook)
        for s in sessions:
            self.api("DELETE", f"sessions/{s['id']}")
        return len(sessions)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)


def write_notebook(path: Path, cells: Sequence[str]) -> Path:
    """A notebook of code cells with the python3 kernelspec."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


_QUEUE_ROWS_JS = """(cell) => {
  const scope = cell === null ? document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')
    : document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')[cell];
  const q = scope?.querySelector('.cf-queue');
  if (!q) return null;
  return [...q.querySelectorAll('tbody tr.cf-q-row')].map((tr) => ({
    id: Number(tr.dataset.id),
    status: [...tr.classList].find((c) => c.startsWith('cf-row-')).slice('cf-row-'.length),
    label: tr.querySelector('.cf-q-badge')?.textContent ?? '',
    input: tr.querySelector('.cf-q-input')?.textContent ?? '',
    cancel: !!tr.querySelector('button.cf-q-cancel'),
  }));
}"""

# The tracebacks a cell shows. Lab renders an error as stderr text like any stderr stream, so
# tell them apart by what an IPython error looks like.
_CELL_ERRORS = r"""const cellErrors = (c) => [...c.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map((e) => e.textContent)
  .filter((t) => /Traceback \(most recent call last\)|^\s*Cell In\[\d+\], line \d+|^\w+(Error|Exception|Exit|Interrupt)\b/m.test(t))
  .map((t) => t.trim().slice(-800));"""

# What a notebook page shows, for failure messages: every cell's prompt, its errors, and the
# text of the casparian widgets in it.
_DESCRIBE_JS = """() => {
  """ + _CELL_ERRORS + """
  const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')];
  const kernel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const out = [`kernel: ${kernel ? kernel.getAttribute('data-status') : '?'}`];
  cells.forEach((c, i) => {
    const prompt = c.querySelector('.jp-InputPrompt')?.textContent?.trim() ?? '';
    const errs = cellErrors(c);
    const widgets = [...c.querySelectorAll('.cf-queue, .cf-timeline, .jp-OutputArea-output')]
      .map((e) => e.innerText.replace(/\\s+/g, ' ').trim().slice(0, 600));
    out.push(`cell ${i} ${prompt} ${errs.length ? 'ERRORS: ' + errs.join(' | ') : ''} ${widgets.length ? 'OUTPUT: ' + widgets.join(' || ') : ''}`);
  });
  return out.join('\\n');
}"""


class NotebookPage:
    """One notebook opened in a playwright page of a running :class:`Lab`."""

    def __init__(self, page: Any, lab: Lab, path: str, shot: str) -> None:
        self.page = page
        self.lab = lab
        self.path = path  # relative to the lab's root
        self.shot = shot  # screenshot name (the failure screenshot gets a suffix)

    # -- diagnostics ---------------------------------------------------------------------------
    def describe(self) -> str:
        try:
            return str(self.page.evaluate(_DESCRIBE_JS))
        except Exception as exc:  # the page itself is broken: say so
            return f"(could not read the page: {exc})"

    def fail(self, what: str) -> AssertionError:
        """An AssertionError saying what the page shows (and a screenshot of it)."""
        shot = screenshot_path(f"{self.shot}-FAILED")
        try:
            self.page.screenshot(path=str(shot), full_page=True)
        except Exception:
            pass
        return AssertionError(f"{what}\n--- the page shows ({shot}):\n{self.describe()}")

    def wait_js(self, predicate: str, what: str, timeout: float = 60.0, arg: Any = None) -> Any:
        """Wait until the JS ``predicate`` (a function expression) returns something truthy."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(predicate, arg=arg, timeout=timeout * 1000,
                                               polling=50).json_value()
        except PlaywrightTimeout:
            raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}") from None

    def wait_for(self, selector: str, what: str, timeout: float = 60.0,
                 state: str = "visible") -> Any:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_selector(selector, timeout=timeout * 1000, state=state)
        except PlaywrightTimeout:
            raise self.fail(f"timed out after {timeout:.0f}s waiting for {what} "
                            f"({selector!r} {state})") from None

    # -- actions -------------------------------------------------------------------------------
    def open(self, timeout: float = 60.0) -> NotebookPage:
        """Open the notebook in a workspace of its own (``?reset``: no tabs restored from
        another test) and wait until its kernel is idle (ready to run cells)."""
        screenshot_path(f"{self.shot}-FAILED").unlink(missing_ok=True)  # from an earlier run
        self.page.goto(f"{self.lab.url}/lab/workspaces/{self.shot}/tree/{self.path}?reset")
        self.wait_for(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell",
                      "the notebook's cells", timeout)
        self.wait_kernel_idle(timeout)
        return self

    def wait_kernel_idle(self, timeout: float = 60.0) -> None:
        """Wait until the server has this notebook's kernel connected and idle, then until the
        page says idle too (the page's indicator reads "idle" before any kernel exists)."""
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            kernels = [s["kernel"] for s in self.lab.sessions_for(self.path) if s.get("kernel")]
            return bool(kernels) and all(k["execution_state"] == "idle" and k["connections"]
                                         for k in kernels)
        while not ready():
            if time.monotonic() > deadline:
                raise self.fail(f"no idle, connected kernel for {self.path} after {timeout:.0f}s: "
                                f"{self.lab.sessions_for(self.path)}")
            time.sleep(0.05)
        self.wait_for(".jp-NotebookPanel:not(.lm-mod-hidden) "
                      ".jp-Notebook-ExecutionIndicator[data-status='idle']",
                      "an idle kernel", max(1.0, deadline - time.monotonic()), state="attached")

    def menu(self, top: str, item: str) -> None:
        """Click ``top`` in the main menu bar, then its enabled entry ``item``."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{re.escape(top)}$")).click()
        entry = self.page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel",
                                  has_text=re.compile(f"^{re.escape(item)}$"))
        try:
            entry.click(timeout=10_000)
        except PlaywrightTimeout:
            enabled = self.page.locator(".lm-Menu-item:not(.lm-mod-disabled) "
                                        ".lm-Menu-itemLabel").all_inner_texts()
            raise self.fail(f"no enabled {item!r} in the {top} menu; it has {enabled}") from None

    def run_all(self, timeout: float = 120.0) -> None:
        """Run > Run All Cells; wait until every code cell ran and the kernel is idle; fail
        with the cells' errors if one raised."""
        self.menu("Run", "Run All Cells")
        self.wait_cells_done(timeout)

    def select_cell(self, index: int) -> None:
        """Select cell ``index`` (click its prompt; command mode)."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")

    def run_cell(self, index: int, timeout: float = 60.0) -> None:
        """Run one code cell (select it, Ctrl+Enter) and wait for it."""
        self.select_cell(index)
        self.page.keyboard.press("Control+Enter")
        self.wait_cells_done(timeout, [index])

    def wait_cells_done(self, timeout: float, cells: Sequence[int] | None = None) -> None:
        """Wait until the code cells (or the cells ``cells``) show an execution count and the
        kernel is idle, or until a cell raised (Lab then skips the rest): fail with the
        traceback if one did."""
        done = """(only) => {
          """ + _CELL_ERRORS + """
          const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
          if (!panel) return false;
          const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
          if (!ind || ind.getAttribute('data-status') !== 'idle') return false;
          const all = [...panel.querySelectorAll('.jp-Cell')];
          const cells = only === null ? all.filter((c) => c.classList.contains('jp-CodeCell'))
            : only.map((i) => all[i]);
          const prompts = cells.map((c) => c.querySelector('.jp-InputPrompt')?.textContent ?? '');
          if (prompts.some((p) => p.includes('*'))) return false;
          return prompts.every((p) => /\\[\\d+\\]/.test(p)) || all.some((c) => cellErrors(c).length);
        }"""
        what = "every code cell to run" if cells is None else f"cells {list(cells)} to run"
        self.wait_js(done, what, timeout, arg=None if cells is None else list(cells))
        self.assert_no_errors()

    def errors(self) -> list[str]:
        """The tracebacks the notebook shows."""
        return self.page.evaluate("""() => { """ + _CELL_ERRORS + """
          return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')]
            .flatMap(cellErrors); }""")  # type: ignore[no-any-return]

    def assert_no_errors(self) -> None:
        errors = self.errors()
        if errors:
            raise self.fail(f"{len(errors)} cell(s) raised; the last one:\n{errors[-1]}")
        broken = self.page.get_by_text("Error displaying widget")
        if broken.count():
            raise self.fail("a widget output says 'Error displaying widget'")

    def restart_kernel(self, timeout: float = 60.0) -> None:
        """Kernel > Restart Kernel…, confirm the dialog; returns once the server answered the
        restart request and the page shows the new kernel idle."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        def is_restart(r: Any) -> bool:
            return r.request.method == "POST" and "/restart" in r.url

        try:
            with self.page.expect_response(is_restart, timeout=timeout * 1000) as answer:
                self.menu("Kernel", "Restart Kernel…")
                self.page.locator(".jp-Dialog button.jp-mod-accept").click()
        except PlaywrightTimeout:
            raise self.fail("no answer to a kernel restart request") from None
        if not answer.value.ok:
            raise self.fail(f"the server refused the restart: HTTP {answer.value.status}")
        self.wait_kernel_idle(timeout)

    def poll(self, read: Callable[[], T], ok: Callable[[T], bool], what: str,
             timeout: float = 60.0) -> T:
        """Call ``read`` until ``ok(value)``; on timeout fail with the last value seen."""
        deadline = time.monotonic() + timeout
        while True:
            value = read()
            if ok(value):
                return value
            if time.monotonic() > deadline:
                raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}; "
                                f"last seen: {value!r}")
            self.page.wait_for_timeout(50)  # a polling interval, not a synchronisation

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(index)

    def cell_sources(self, timeout: float = 30.0) -> list[str | None]:
        """Each cell's source text (None for a markdown or raw cell), from the server's copy of
        the notebook: JupyterLab attaches the editors of cells below the viewport only when the
        browser is idle, so the page's DOM may not hold their text yet. Waits until the page
        shows as many cells as the file has, so the indices agree with ``cell(i)``."""
        model = self.lab.api("GET", f"contents/{quote(self.path)}?content=1")
        cells = model["content"]["cells"]
        sources = [c["source"] if c["cell_type"] == "code" else None for c in cells]
        self.wait_js("""(n) => document.querySelectorAll(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').length === n""",
                     f"the page to show the notebook's {len(cells)} cells", timeout,
                     arg=len(cells))
        return sources

    def cell_index(self, contains: str, last: bool = False) -> int:
        """Index (among all cells) of the first (or last) code cell whose source contains
        ``contains``."""
        found = [i for i, src in enumerate(self.cell_sources())
                 if src is not None and contains in src]
        if not found:
            raise self.fail(f"no code cell contains {contains!r}")
        return found[-1] if last else found[0]

    def queue_rows(self, cell: int | None = None) -> list[dict[str, Any]] | None:
        """The rows of the queue widget (in cell ``cell``, else the first one on the page):
        ``{id, status, label, input, cancel}``; None while no queue widget is drawn."""
        return self.page.evaluate(_QUEUE_ROWS_JS, cell)  # type: ignore[no-any-return]

    def queue_chips(self, cell: int | None = None) -> list[str]:
        return self.page.evaluate("""(cell) => {
          const scope = cell === null ? document : document.querySelectorAll(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')[cell];
          return [...(scope?.querySelectorAll('.cf-q-chip') ?? [])].map((b) => b.textContent);
        }""", cell)  # type: ignore[no-any-return]

    def scroll_to(self, index: int) -> None:
        """Scroll cell ``index`` to the top of the notebook and let the page paint (cells off
        screen are drawn lazily)."""
        self.cell(index).evaluate("(c) => c.scrollIntoView({block: 'start'})")
        self.page.evaluate("() => new Promise((ok) => requestAnimationFrame(() => "
                           "requestAnimationFrame(ok)))")

    def screenshot(self, locator: Any = None, suffix: str = "") -> Path:
        """``screenshots/<shot><suffix>.png``: the element ``locator``, else the page (with
        the mouse moved off the notebook so no hover decoration shows)."""
        path = screenshot_path(self.shot + suffix)
        if locator is None:
            self.page.mouse.move(1, 1)
            self.page.screenshot(path=str(path), full_page=True)
        else:
            locator.screenshot(path=str(path))
        return path

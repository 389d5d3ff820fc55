"""Fixtures for the real-browser tests: a Jupyter server per front end, Debian's Chromium.

Browser tests skip when Chromium is absent, except under CI=true, where they fail.
Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _jupyter import CHROMIUM, CHROMIUM_ARGS, Front, JupyterServer, make_notebook

from helpers.util import unavailable

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
ARTIFACTS = REPO / "test-artifacts"
FRONTENDS = ["lab", "notebook"]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="session", autouse=True)
def _browser_required() -> None:
    why = _missing()
    if why:
        unavailable(why, f"browser tests cannot run under CI=true: {why}")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session", params=FRONTENDS)
def jupyter(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    root = tmp_path_factory.mktemp(f"nb-{request.param}")
    env = {"PYTHONPATH": os.pathsep.join(p for p in [str(TESTS), os.environ.get("PYTHONPATH")] if p)}
    srv = JupyterServer(request.param, root, root.parent / f"{request.param}-server.log", env)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ui_context(browser: Any, jupyter: JupyterServer) -> Iterator[Any]:
    """One browser context per front end (its HTTP cache makes later page loads fast)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@dataclass
class Notebook:
    """One test's notebook page, its database file and its screenshots."""

    server: JupyterServer
    page: Any
    front: Front
    db: Path
    name: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # requests that left 127.0.0.1

    @property
    def app(self) -> str:
        return self.server.app

    def panel(self) -> Any:
        return self.page.get_by_test_id("tether-panel")

    def cell(self, index: int) -> Any:
        """The cell at ``index`` (0 is the prelude), the same way in Lab and Notebook 7."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{self.app}-{label}.png"
        self.page.screenshot(path=str(path))
        return path


PRELUDE = """import tether
from helpers import panel_pipelines as pp
_ = tether.configure(db={db!r})"""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def open_notebook(
    request: pytest.FixtureRequest, jupyter: JupyterServer, ui_context: Any
) -> Iterator[Callable[..., Notebook]]:
    """``open_notebook(cells)``: write <test>.ipynb (prelude + cells), open it, wait for the kernel."""
    opened: list[Notebook] = []
    test = request.node.originalname

    def _open(cells: list[str], *, run: bool = False) -> Notebook:
        name = f"{test}.ipynb"
        db = jupyter.root / f"{test}.db"
        for p in jupyter.root.glob(f"{test}.db*"):
            p.unlink()
        make_notebook(jupyter.root / name, [PRELUDE.format(db=str(db)), *cells])
        page = ui_context.new_page()
        nb = Notebook(jupyter, page, Front(page, name), db, test)
        page.on("dialog", lambda d: d.accept())
        page.on("pageerror", lambda e: nb.errors.append(str(e)[:300]))
        page.on(
            "request",
            lambda r: (
                nb.foreign.append(r.url)
                if r.url.startswith("http") and not r.url.startswith(jupyter.url)
                else None
            ),
        )
        opened.append(nb)
        page.goto(_fresh(jupyter.page_url(name), jupyter.app))
        nb.front.wait_ready()
        if run:
            assert nb.front.run_all() is True
        return nb

    yield _open
    failed = getattr(request.node, "rep_call", None)
    for nb in opened:
        if failed is not None and failed.failed:
            try:
                nb.shot(f"{test}-FAILED")
            except Exception:
                pass
        nb.page.close()
    try:
        jupyter.shutdown_kernels()
    except OSError:
        pass


def _fresh(url: str, app: str) -> str:
    # JupyterLab restores the last workspace (earlier tests' notebooks) unless told to reset
    return url.replace("?", "?reset&", 1) if app == "lab" else url

"""The panel in marimo, in real Chromium against a real marimo server.

``marimo run``: one process, one session per browser page. Several sessions share the process, so
a panel widget belongs to one session: each page gets its own working widget of the same run, and
a reloaded page (a new session) shows the panel of the same run again, never a new run and never
marimo's "Model not found".

``marimo edit``: the editor's kernel is a process of its own; the cell's output is the live panel,
its buttons reach the run, and a reactive re-run of the cell (another cell's value changed) shows
the same run's panel, still live (marimo closes the widget models a cell made when it runs again).

The app shows ``tether.panel(run)`` itself, the editor ``mo.ui.anywidget(tether.panel(run))``:
both spellings of docs/marimo.md's pattern.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _jupyter import free_port
from playwright.sync_api import expect

from helpers.util import unavailable

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
ARTIFACTS = REPO / "test-artifacts"

NOTEBOOK = textwrap.dedent(
    """
    import marimo

    app = marimo.App()


    @app.cell
    def _():
        import os

        import marimo as mo

        import tether
        from helpers import panel_pipelines as pp

        return mo, os, pp, tether


    @app.cell
    def _(mo):
        bump = mo.ui.button(value=0, on_click=lambda n: n + 1, label="bump")
        bump
        return (bump,)


    @app.cell
    def _(bump, mo, os, pp, tether):
        # the same params in every session and every re-run: the one run, executed in this process
        run = pp.four_phase.start(n=20, delay=0.05, tag="marimo", hold=os.environ["TETHER_TEST_HOLD"])
        mo.vstack([mo.md(f"bumped {bump.value} times"), PANEL])
        return
    """
)
# the two ways to show it: wrapped, or the widget itself (marimo wraps an anywidget it displays)
WRAPPED, BARE = "mo.ui.anywidget(tether.panel(run))", "tether.panel(run)"
# the editor runs the notebook when it opens, whatever the user's own marimo.toml says
EDITOR_CONFIG = "[runtime]\nauto_instantiate = true\n"


class MarimoServer:
    """``marimo run`` or ``marimo edit`` of one notebook on a free port (stopped by SIGTERM, then
    SIGKILL)."""

    def __init__(self, mode: str, root: Path, notebook: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"marimo-{mode}.log"
        cmd = [sys.executable, "-m", "marimo", mode, str(notebook), "--headless", "--no-token"]
        cmd += ["--host", "127.0.0.1", "-p", str(self.port)]
        cmd += ["--no-check"] if mode == "run" else ["--no-sandbox", "--skip-update-check"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"marimo exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"marimo did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _serve(mode: str, root: Path, shown: str) -> Iterator[tuple[MarimoServer, Path, Path]]:
    if importlib.util.find_spec("marimo") is None:  # the test extra has it
        why = "marimo is not installed: pip install -e '.[test]'"
        unavailable(why, why)
    notebook = root / "panel_app.py"
    notebook.write_text(NOTEBOOK.replace("PANEL", shown))
    config = root / "xdg" / "marimo" / "marimo.toml"  # not the user's own
    config.parent.mkdir(parents=True)
    config.write_text(EDITOR_CONFIG)
    db, hold = root / "runs.db", root / "hold"
    path = [str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "TETHER_DB": str(db), "TETHER_TEST_HOLD": str(hold)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env["XDG_CONFIG_HOME"] = str(root / "xdg")
    srv = MarimoServer(mode, root, notebook, env)
    try:
        srv.wait_ready()
        yield srv, db, hold
    finally:
        hold.touch()  # the run ends before the server stops
        srv.stop()


@pytest.fixture
def marimo_run(tmp_path: Path) -> Iterator[tuple[MarimoServer, Path, Path]]:
    yield from _serve("run", tmp_path, BARE)


@pytest.fixture
def marimo_edit(tmp_path: Path) -> Iterator[tuple[MarimoServer, Path, Path]]:
    yield from _serve("edit", tmp_path, WRAPPED)


def _open(context: Any, url: str, errors: list[str]) -> Any:
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)[:300]))
    page.on("console", lambda m: errors.append(m.text[:300]) if "Model not found" in m.text else None)
    page.goto(url)
    return page


def _held_panel(page: Any) -> Any:
    panel = page.get_by_test_id("tether-panel")
    expect(panel).to_have_attribute("data-phase", "analyzing", timeout=60_000)
    expect(panel).to_have_attribute("data-status", "running")
    expect(panel).to_have_attribute("data-mode", "stream")  # executed by this very process
    return panel


def _bump(page: Any, times: int) -> None:
    """Click the other cell's button: marimo re-runs the panel's cell (start() and panel() again)."""
    page.get_by_role("button", name="bump").click()
    expect(page.get_by_text(f"bumped {times} times")).to_be_visible()


@contextlib.contextmanager
def _browsing(browser: Any, name: str) -> Iterator[tuple[Any, list[str]]]:
    """A browser context and the page errors seen in it; on a failure, screenshots and page text."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(30_000)
    errors: list[str] = []
    try:
        yield context, errors
        assert not [e for e in errors if "Model not found" in e], errors
    except AssertionError as exc:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, page in enumerate(context.pages):
            page.screenshot(path=str(ARTIFACTS / f"marimo-{name}-{i}.png"))
        said = " | ".join(p.inner_text("body")[:300] for p in context.pages)
        raise AssertionError(f"{str(exc)[:1500]}\npages say: {said}; {errors[:5]}") from None
    finally:
        context.close()


def _runs(db: Path) -> list[tuple[str, str]]:
    from tether.workspace import Workspace

    ws = Workspace(db=db)
    try:
        return [(r.id, str(r.status)) for r in ws.runs()]
    finally:
        ws.close()


def test_each_marimo_session_has_its_own_working_panel_of_the_same_run(
    browser: Any, marimo_run: tuple[MarimoServer, Path, Path]
) -> None:
    srv, db, hold = marimo_run
    with _browsing(browser, "run") as (context, errors):
        first = _open(context, srv.url, errors)
        run_id = _held_panel(first).get_attribute("data-run-id")
        assert run_id
        second = _open(context, srv.url, errors)  # a second session of the same process
        expect(_held_panel(second)).to_have_attribute("data-run-id", run_id)
        first.reload()  # a new session again: the panel of the same run, not "Model not found"
        expect(_held_panel(first)).to_have_attribute("data-run-id", run_id)
        _bump(second, 1)  # a reactive re-run in one session: that session's panel of the same run
        expect(_held_panel(second)).to_have_attribute("data-run-id", run_id)
        for page in (first, second):
            expect(page.get_by_text("Model not found")).to_have_count(0)
        hold.touch()  # both sessions follow the run live to its end
        for page in (first, second):
            panel = page.get_by_test_id("tether-panel")
            expect(panel).to_have_attribute("data-status", "succeeded", timeout=60_000)
            expect(panel).to_have_attribute("data-run-id", run_id)
    assert [i for i, _ in _runs(db)] == [run_id]  # one run for three sessions and a re-run


def test_in_the_marimo_editor_the_panel_is_live_across_reloads_and_reactive_reruns(
    browser: Any, marimo_edit: tuple[MarimoServer, Path, Path]
) -> None:
    srv, db, _hold = marimo_edit
    with _browsing(browser, "edit") as (context, errors):
        page = _open(context, srv.url, errors)
        run_id = _held_panel(page).get_attribute("data-run-id")
        assert run_id
        page.reload()  # the editor's session again: its outputs, the panel of the same run
        expect(_held_panel(page)).to_have_attribute("data-run-id", run_id)
        _bump(page, 1)
        _bump(page, 2)  # the cell ran three times: one panel of one run, still live
        panel = _held_panel(page)
        expect(panel).to_have_attribute("data-run-id", run_id)
        expect(page.get_by_test_id("tether-panel")).to_have_count(1)
        ARTIFACTS.mkdir(exist_ok=True)  # docs/img/marimo-edit-light.png is this, reduced to 256 colours
        page.locator(".marimo-cell").filter(has=panel).screenshot(path=str(ARTIFACTS / "marimo-edit.png"))
        panel.get_by_role("button", name="Cancel").click()  # reaches the run in the kernel process
        expect(panel).to_have_attribute("data-status", "cancelled", timeout=30_000)
        expect(page.get_by_text("Model not found")).to_have_count(0)
    assert _runs(db) == [(run_id, "cancelled")]

"""The panel under ``marimo run``: one process, one session per browser page, in real Chromium.

Several sessions share the process there, so a panel widget belongs to one session: each page
gets its own working widget of the same run, and a reloaded page (a new session) shows the panel
of the same run again, never a new run and never marimo's "Model not found".
"""

from __future__ import annotations

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
    def _(mo, os, pp, tether):
        # the same params in every session: the one run, executed in this process
        run = pp.four_phase.start(n=20, delay=0.05, tag="marimo", hold=os.environ["TETHER_TEST_HOLD"])
        mo.ui.anywidget(tether.panel(run))
        return
    """
)


class MarimoServer:
    """``marimo run`` on a free port (stopped by SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path, notebook: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "marimo-server.log"
        cmd = [sys.executable, "-m", "marimo", "run", str(notebook), "--headless", "--no-token"]
        cmd += ["--host", "127.0.0.1", "-p", str(self.port), "--no-check"]
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


@pytest.fixture
def marimo_run(tmp_path: Path) -> Iterator[tuple[MarimoServer, Path, Path]]:
    if importlib.util.find_spec("marimo") is None:  # the test extra has it
        why = "marimo is not installed: pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    notebook = tmp_path / "panel_app.py"
    notebook.write_text(NOTEBOOK)
    db, hold = tmp_path / "runs.db", tmp_path / "hold"
    path = [str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "TETHER_DB": str(db), "TETHER_TEST_HOLD": str(hold)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    srv = MarimoServer(tmp_path, notebook, env)
    try:
        srv.wait_ready()
        yield srv, db, hold
    finally:
        hold.touch()  # the run ends before the server stops
        srv.stop()


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


def test_each_marimo_session_has_its_own_working_panel_of_the_same_run(
    browser: Any, marimo_run: tuple[MarimoServer, Path, Path]
) -> None:
    srv, db, hold = marimo_run
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(30_000)
    errors: list[str] = []
    try:
        first = _open(context, srv.url, errors)
        run_id = _held_panel(first).get_attribute("data-run-id")
        assert run_id
        second = _open(context, srv.url, errors)  # a second session of the same process
        expect(_held_panel(second)).to_have_attribute("data-run-id", run_id)
        first.reload()  # a new session again: the panel of the same run, not "Model not found"
        expect(_held_panel(first)).to_have_attribute("data-run-id", run_id)
        for page in (first, second):
            expect(page.get_by_text("Model not found")).to_have_count(0)
        hold.touch()  # both sessions follow the run live to its end
        for page in (first, second):
            panel = page.get_by_test_id("tether-panel")
            expect(panel).to_have_attribute("data-status", "succeeded", timeout=60_000)
            expect(panel).to_have_attribute("data-run-id", run_id)
        assert not [e for e in errors if "Model not found" in e], errors
    except AssertionError:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, page in enumerate(context.pages):
            page.screenshot(path=str(ARTIFACTS / f"marimo-session-{i}.png"))
        raise AssertionError(
            "pages say: " + " | ".join(p.inner_text("body")[:300] for p in context.pages) + f"; {errors}"
        ) from None
    finally:
        context.close()
    from tether.workspace import Workspace

    ws = Workspace(db=db)
    try:
        assert [r.id for r in ws.runs()] == [run_id]  # one run for three sessions
    finally:
        ws.close()

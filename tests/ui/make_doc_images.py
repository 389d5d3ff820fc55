"""Make the screenshots of docs/panel.md (docs/img/panel-*.png, light and dark) and README's
docs/img/panel.png, in JupyterLab with Debian's Chromium. Run by hand, not by pytest:

    python tests/ui/make_doc_images.py [OUT_DIR]      # default: docs/img

Each image is one panel (or the dashboard), cut out of the page and reduced to a 256-colour
palette so it stays small. It also checks the claim of docs/panel.md about JupyterLab's "Save
Widget State Automatically": a saved notebook reloaded without its kernel shows the panel's last
state, marked disconnected.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from _jupyter import CHROMIUM, CHROMIUM_ARGS, Front, JupyterServer, make_notebook

REPO = Path(__file__).resolve().parents[2]

SETUP = """import os, time
import tether
HOLD = {hold!r}
_ = tether.configure(db={db!r})"""

PIPELINES = """@tether.pipeline(phases=["scanning", "analyzing", "generating", "applying"])
def refactor(ctx, repo: str, files: int = 40, delay: float = 0.05):
    for phase in ["scanning", "analyzing", "generating", "applying"]:
        ctx.phase(phase, total=files)
        for i in ctx.track(range(files)):
            time.sleep(delay)
            while os.path.exists(os.path.join(HOLD, f"{repo.strip('./')}-{phase}-{i}")):
                ctx.advance(0)
                time.sleep(0.02)
        ctx.log("%s: %d files", phase, files)
    return {"repo": repo, "changed": files // 7}


@tether.pipeline(phases=["loading", "summarising"])
def total_sales(ctx, path: str):
    ctx.phase("loading", total=3)
    for part in ctx.track(["2024", "2025", "2026"]):
        ctx.log("read %s/%s.csv", path, part)
    ctx.phase("summarising")
    raise KeyError("column 'amount' is missing in 2026.csv")


@tether.pipeline(retries=3, retry_delay=30)
def fetch_prices(ctx, source: str):
    ctx.phase("downloading", total=10)
    for _ in range(4):
        ctx.advance()
    raise ConnectionError(f"connection reset by {source}")


@tether.pipeline(phases=["loading"])
def load(ctx, region: str, rows: int = 12):
    ctx.phase("loading", total=rows)
    for i in ctx.track(range(rows)):
        time.sleep(0.01)
        while os.path.exists(os.path.join(HOLD, f"load-{region}-{i}")):
            ctx.advance(0)
            time.sleep(0.02)
    return rows


@tether.pipeline(phases=["loading", "merging"])
def report(ctx, month: str):
    ctx.phase("loading")
    parts = [load.start(region=r) for r in ("north", "south", "east")]
    total = sum(p.result() for p in parts)
    ctx.phase("merging")
    return total"""

WORKER_MODULE = """import time
import tether


@tether.pipeline(phases=["extract", "load"])
def nightly_etl(ctx, table: str):
    ctx.phase("extract")
    time.sleep(1)
    return table
"""


class Shots:
    def __init__(self, page: Any, front: Front, out: Path) -> None:
        self.page, self.front, self.out = page, front, out
        self.sizes: dict[str, int] = {}

    def theme(self, name: str) -> None:
        self.front.js(
            "await window.jupyterapp.commands.execute('apputils:change-theme', "
            f"{{theme: '{name}'}}); return null;"
        )
        light = "true" if name.endswith("Light") else "false"
        self.page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'")
        self.page.wait_for_timeout(300)  # the theme's CSS transition (a picture, not a test)

    def both(self, loc: Any, name: str) -> None:
        for theme, suffix in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            self.theme(theme)
            self.save(loc, f"{name}-{suffix}")
        self.theme("JupyterLab Light")

    def save(self, loc: Any, name: str) -> None:
        from PIL import Image

        loc.scroll_into_view_if_needed()
        raw = loc.screenshot(animations="disabled")
        img = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256)
        path = self.out / f"{name}.png"
        img.save(path, optimize=True)
        self.sizes[path.name] = path.stat().st_size


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tether-doc-images-"))
    root, hold = work / "root", work / "hold"
    root.mkdir()
    hold.mkdir()
    (root / "pipelines.py").write_text(WORKER_MODULE)
    db = root / "runs.db"
    cells = [
        SETUP.format(hold=str(hold), db=str(db)),
        PIPELINES,
        # 2: running, 3: stored, 4: failed, 5: cancelled, 6: newer, 7: detached, 8: dashboard
        "run = refactor.start(repo='./app', files=300, delay=0.04)\nrun",
        "refactor.start(repo='./lib', files=6, delay=0.01).wait(30)\n"
        "refactor.start(repo='./lib', files=6, delay=0.01)  # again: the stored result",
        "total_sales.start(path='sales')",
        "slow = refactor.start(repo='./web', files=400, delay=0.05)\nslow",
        "old = refactor.start(repo='./lib', files=6, delay=0.01)\n"
        "new = old.rerun()\nnew.wait(30)\ntether.get_run(old.id)",
        "import pipelines\npipelines.nightly_etl.start(table='orders', detach=True)",
        "tether.dashboard()",
        "run",
        # 10: waiting to retry, 11: a parent with its children
        "fetch_prices.start(source='prices.example.com')",
        "report.start(month='2026-10')",
    ]
    make_notebook(root / "panel.ipynb", cells)
    # JupyterLab's "Save Widget State Automatically", to check what a reload without kernel shows
    settings = work / "jp-settings" / "@jupyter-widgets" / "jupyterlab-manager"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"saveState": true}')
    path = os.pathsep.join(p for p in [str(root), os.environ.get("PYTHONPATH")] if p)
    srv = JupyterServer("lab", root, work / "lab.log", {"PYTHONPATH": path})
    srv.start()
    try:
        _fix_settings(srv, work / "jp-settings")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            page.set_default_timeout(60_000)
            page.on("dialog", lambda d: d.accept())
            page.goto(srv.page_url("panel.ipynb").replace("?", "?reset&", 1))
            front = Front(page, "panel.ipynb")
            front.wait_ready()
            front.js("window.jupyterapp.commands.execute('application:toggle-left-area'); return null;")
            shots = Shots(page, front, out)

            def cell(i: int) -> Any:
                return page.locator(".jp-Notebook .jp-Cell").nth(i)

            try:
                _shoot(page, front, shots, cell, hold, srv, expect)
            except Exception:
                page.screenshot(path=str(out / "FAILED.png"))
                raise
            browser.close()
    finally:
        srv.stop()
    for name, size in sorted(shots.sizes.items()):
        print(f"{size / 1024:6.1f} KiB  {name}")


def _shoot(
    page: Any, front: Front, shots: Shots, cell: Any, hold: Path, srv: JupyterServer, expect: Any
) -> None:
    for i in range(2):
        assert front.run_cell(i) is True
    # running, with a rate and a phase ETA: held at item 60 of "analyzing"
    (hold / "app-analyzing-60").write_text("")
    assert front.run_cell(2) is True
    running = cell(2).get_by_test_id("tether-panel")
    expect(running).to_have_attribute("data-phase", "analyzing", timeout=60_000)
    expect(running.get_by_test_id("tether-eta")).to_contain_text("ETA", timeout=30_000)
    page.wait_for_timeout(1500)
    shots.both(running, "panel-running")
    shots.save(running, "panel")  # README's picture
    for i in (3, 4, 5):
        assert front.run_cell(i) is True
    stored = cell(3).get_by_test_id("tether-panel")
    expect(stored.get_by_test_id("tether-stored")).to_be_visible(timeout=30_000)
    shots.both(stored, "panel-stored")
    failed = cell(4).get_by_test_id("tether-panel")
    expect(failed).to_have_attribute("data-status", "failed", timeout=30_000)
    shots.both(failed, "panel-failed")
    cancelled = cell(5).get_by_test_id("tether-panel")
    expect(cancelled).to_have_attribute("data-phase", "scanning", timeout=30_000)
    cancelled.get_by_role("button", name="Cancel").click()
    expect(cancelled).to_have_attribute("data-status", "cancelled", timeout=30_000)
    page.wait_for_timeout(1600)  # the guard after the end, so the picture shows it over
    shots.both(cancelled, "panel-cancelled")
    for i in (6, 7, 8):
        assert front.run_cell(i) is True
    older = cell(6).get_by_test_id("tether-panel")
    expect(older.get_by_test_id("tether-newer")).to_be_visible(timeout=30_000)
    shots.both(older, "panel-newer")
    detached = cell(7).get_by_test_id("tether-panel")
    expect(detached.get_by_test_id("tether-waiting")).to_be_visible(timeout=30_000)
    shots.both(detached, "panel-waiting")
    dash = cell(8).get_by_test_id("tether-dashboard")
    expect(dash.get_by_test_id("tether-dashboard-row").first).to_be_visible(timeout=30_000)
    page.set_viewport_size({"width": 700, "height": 1000})
    page.wait_for_timeout(500)
    shots.both(dash, "dashboard-700px")
    page.set_viewport_size({"width": 1000, "height": 1000})
    # control (docs/control.md): a run waiting to retry, a parent listing its children
    (hold / "load-east-5").write_text("")
    for i in (10, 11):
        assert front.run_cell(i) is True
    retrying = cell(10).get_by_test_id("tether-panel")
    expect(retrying.get_by_test_id("tether-tries")).to_contain_text("next in", timeout=30_000)
    shots.both(retrying, "panel-retrying")
    parent = cell(11).get_by_test_id("tether-panel")
    kids = parent.get_by_test_id("tether-child")
    expect(kids).to_have_count(3, timeout=30_000)
    expect(kids.nth(1)).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(kids.nth(2)).to_contain_text("5/12", timeout=30_000)
    shots.both(parent, "panel-children")
    # saved while the kernel is alive (JupyterLab saves the state of live widgets only), then
    # a kernel restart: the running panel says it is disconnected
    front.save()
    front.restart_kernel()
    expect(running).to_have_attribute("data-mode", "disconnected", timeout=5_000)
    shots.both(running, "panel-disconnected")
    # the saved widget state, reloaded without the kernel that made it: the last saved state,
    # disconnected (instead of "Error displaying widget: model not found")
    srv.shutdown_kernels()
    page.reload()
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
    restored = page.get_by_test_id("tether-panel").first
    expect(restored).to_have_attribute("data-mode", "disconnected", timeout=60_000)
    shots.save(restored, "panel-restored-light")


def _fix_settings(srv: JupyterServer, settings: Path) -> None:
    """JupyterServer keeps its settings under its own state folder: copy ours there."""
    import shutil

    for state in srv.root.parent.glob("jp-state-*"):
        shutil.copytree(settings, state / "settings", dirs_exist_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "img")

"""The run panel in a real browser: JupyterLab 4 and Notebook 7, headless Debian Chromium.

Each scenario asserts on the DOM (data-run-id / data-status / data-mode hooks, role=progressbar,
real buttons) and saves a screenshot to test-artifacts/<frontend>-<scenario>.png.
Synchronisation is by Playwright waits with deadlines, never by fixed sleeps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from conftest import TESTS, Notebook
from tether.store import SQLiteStore as Store

pytestmark = pytest.mark.browser

PHASES = ["scanning", "analyzing", "generating", "applying"]

# Records every state the panel shows (a MutationObserver on the panel's attributes), so a test
# can assert on the sequence after the fact instead of sampling with sleeps.
RECORDER = """() => {
  window.__tether_states = [];
  const snap = () => {
    const p = document.querySelector('[data-testid=tether-panel]');
    if (!p) return;
    const bar = p.querySelector('[role=progressbar]');
    const s = {t: performance.now(), id: p.dataset.runId, status: p.dataset.status,
      mode: p.dataset.mode, attempt: p.dataset.attempt, phase: p.dataset.phase,
      now: bar && bar.getAttribute('aria-valuenow'), max: bar && bar.getAttribute('aria-valuemax'),
      steps: [...p.querySelectorAll('[data-testid=tether-step]')].map(li => li.dataset.state)};
    const last = window.__tether_states[window.__tether_states.length - 1];
    if (!last || JSON.stringify({...last, t: 0}) !== JSON.stringify({...s, t: 0}))
      window.__tether_states.push(s);
  };
  new MutationObserver(snap).observe(document.body,
    {subtree: true, attributes: true, childList: true, characterData: true});
  snap();
}"""


def states(nb: Notebook) -> list[dict[str, Any]]:
    return list(nb.page.evaluate("() => window.__tether_states || []"))


def panel_state(nb: Notebook) -> dict[str, Any]:
    return dict(
        nb.page.evaluate("""() => {
      const p = document.querySelector('[data-testid=tether-panel]');
      if (!p) return {};
      const bar = p.querySelector('[role=progressbar]');
      return {id: p.dataset.runId, status: p.dataset.status, mode: p.dataset.mode,
              attempt: p.dataset.attempt, phase: p.dataset.phase,
              now: Number(bar.getAttribute('aria-valuenow')),
              steps: [...p.querySelectorAll('[data-testid=tether-step]')].map(li => li.dataset.state)};
    }""")
    )


# true once the saved (static) text/html of the notebook's outputs includes the argument
SAVED_HTML_SAYS = """(text) => {
    const p = [...window.jupyterapp.shell.widgets('main')].find(w => w.context?.model?.cells);
    if (!p) return false;
    const html = [];
    for (let c = 0; c < p.context.model.cells.length; c++) {
      const outs = p.context.model.cells.get(c).outputs;
      for (let i = 0; outs && i < outs.length; i++) html.push(outs.get(i).data['text/html'] || '');
    }
    return html.join('').includes(text) && !html.join('').includes('data-status="running"'); }"""


def now_ms(nb: Notebook) -> float:
    """The page's clock (performance.now(), ms)."""
    return float(nb.page.evaluate("() => performance.now()"))


def progress_key(state: dict[str, Any]) -> tuple[int, float]:
    """Ordering of a panel state along the run: (phase index, done in that phase)."""
    phase = state.get("phase") or ""
    return (PHASES.index(phase) if phase in PHASES else -1, float(state.get("now") or 0))


def db_runs(db: Path) -> list[Any]:
    store = Store(db)
    try:
        return store.list_runs()
    finally:
        store.close()


def wait_db(db: Path, pred: Any, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = db_runs(db) if db.exists() else []
        if pred(runs):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"database {db} never matched; runs: {runs}")
        time.sleep(0.1)


# -- 1 ------------------------------------------------------------------------------------------


def test_stream_bar_and_stepper_advance(open_notebook: Any) -> None:
    nb = open_notebook(["run = pp.four_phase.start(n=16, delay=0.08, tag='s1')\nrun"])
    nb.page.evaluate(RECORDER)
    assert nb.front.run_all() is True
    panel = nb.panel()
    expect(panel).to_have_attribute("data-mode", "stream", timeout=15_000)
    expect(panel).to_have_attribute("data-phase", "analyzing", timeout=15_000)
    bar = panel.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuemin", "0")
    expect(bar).to_have_attribute("aria-valuemax", "16")
    nb.shot("1-stream-running")
    expect(panel).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(panel).to_have_attribute("data-mode", "static")
    seen = states(nb)
    running = [s for s in seen if s["status"] == "running"]
    assert {s["phase"] for s in running} >= {"scanning", "analyzing", "generating"}, seen
    assert all(s["mode"] == "stream" for s in running)
    # the bar advances inside a phase, and the stepper walks done -> current -> upcoming
    in_phase = [float(s["now"]) for s in running if s["phase"] == "analyzing" and s["now"]]
    assert len(set(in_phase)) >= 2 and in_phase == sorted(in_phase), in_phase
    assert ["done", "current", "upcoming", "upcoming"] in [s["steps"] for s in running]
    keys = [progress_key(s) for s in running]
    assert keys == sorted(keys), keys  # never goes backwards
    steps = panel.get_by_test_id("tether-step")
    expect(steps).to_have_count(4)
    for i in range(4):
        expect(steps.nth(i)).to_have_attribute("data-state", "done")
    expect(bar).to_have_attribute("aria-valuenow", "16")
    expect(panel.get_by_role("button", name="Re-run")).to_be_visible()
    expect(panel.get_by_test_id("tether-result")).to_contain_text('"tag": "s1"')
    assert nb.foreign == [], f"the page fetched from outside: {nb.foreign}"  # no CDN, no fonts
    nb.shot("1-stream-succeeded")


# -- 7 ------------------------------------------------------------------------------------------


def test_run_text_is_never_html(open_notebook: Any) -> None:
    nb = open_notebook(["run = pp.evil.start(tag='x')\nrun"], run=True)
    panel = nb.panel()
    expect(panel).to_have_attribute("data-status", "failed", timeout=20_000)
    evil = '<img src=x onerror="window.__tether_xss=1"> <script>window.__tether_xss=2</script>'
    expect(panel.get_by_test_id("tether-log")).to_contain_text(evil)
    expect(panel.get_by_test_id("tether-error-message")).to_have_text("ValueError: bad input " + evil)
    panel.locator("summary", has_text="Traceback").click()
    expect(panel.get_by_test_id("tether-traceback")).to_contain_text("bad input <img src=x")
    expect(panel.get_by_test_id("tether-traceback")).to_be_visible()
    assert panel.locator("img, script").count() == 0
    assert nb.page.locator("img[src=x]").count() == 0
    assert nb.page.evaluate("() => window.__tether_xss") is None
    steps = panel.get_by_test_id("tether-step")
    expect(steps.nth(0)).to_have_attribute("data-state", "done")
    expect(steps.nth(1)).to_have_attribute("data-state", "failed")
    expect(panel.get_by_role("button", name="Re-run")).to_be_visible()
    expect(panel.get_by_role("button", name="Resume")).to_be_visible()
    expect(panel.get_by_role("button", name="Cancel")).to_be_hidden()
    nb.shot("7-text-not-html")
    # the panel follows the front end's dark theme through its CSS variables
    light = _background_luminance(panel)
    try:
        _theme(nb, "JupyterLab Dark")
        assert light > 0.5 and _background_luminance(panel) < 0.3
        nb.shot("7-text-not-html-dark")
    finally:
        _theme(nb, "JupyterLab Light")


def _rgb(loc: Any, prop: str) -> tuple[int, int, int]:
    rgb = loc.evaluate(f"el => getComputedStyle(el).{prop}")
    r, g, b = (int(float(x)) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
    return r, g, b


def _background_luminance(loc: Any) -> float:
    r, g, b = _rgb(loc, "backgroundColor")
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


# -- 2 ------------------------------------------------------------------------------------------


def test_reexecuting_the_cell_rebinds_to_the_same_run(open_notebook: Any, tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # the run waits halfway through "analyzing" until this exists
    cell = f"run = pp.four_phase.start(n=10, delay=0.05, tag='s2', hold={str(hold)!r})\nrun"
    nb = open_notebook([cell], run=True)
    panel = nb.panel()
    expect(panel).to_have_attribute("data-phase", "analyzing", timeout=20_000)
    expect(panel.get_by_role("progressbar")).not_to_have_attribute("aria-valuenow", "0")
    before = panel_state(nb)
    assert before["status"] == "running" and before["mode"] == "stream"
    nb.page.evaluate(RECORDER)
    assert nb.front.run_cell(1) is True
    expect(panel).to_have_count(1)
    expect(panel).to_have_attribute("data-run-id", before["id"])
    expect(panel).to_have_attribute("data-mode", "stream")
    # progress continues from where it was (no reset), then moves on
    first = panel_state(nb)
    assert progress_key(first) >= progress_key(before), (before, first)
    hold.write_text("go")
    nb.page.wait_for_function(
        """([phase, now]) => { const p = document.querySelector('[data-testid=tether-panel]');
             const v = Number(p.querySelector('[role=progressbar]').getAttribute('aria-valuenow'));
             return p.dataset.phase !== phase || v > now; }""",
        arg=[first["phase"], first["now"]],
        timeout=10_000,
    )
    after = panel_state(nb)
    assert progress_key(after) > progress_key(first)
    keys = [progress_key(s) for s in states(nb) if s["status"] == "running"]
    assert keys == sorted(keys), keys
    assert all(s["id"] == before["id"] for s in states(nb))
    runs = db_runs(nb.db)
    assert [r.id for r in runs] == [before["id"]], runs
    nb.shot("2-reexecute-same-run")


# -- 3 ------------------------------------------------------------------------------------------


def test_reload_of_a_saved_notebook_rerenders_the_current_state(open_notebook: Any, tmp_path: Path) -> None:
    """Reloading re-renders the panel from the live kernel's widget state within 2 s.

    Only for a *saved* notebook: an unsaved one reloads from disk without outputs, so there is
    no panel to re-render (Jupyter's behaviour; re-executing the cell shows the same run again).
    """
    hold = tmp_path / "hold"  # the run waits halfway through "analyzing" until this exists
    cell = f"run = pp.four_phase.start(n=10, delay=0.05, tag='s3', hold={str(hold)!r})\nrun"
    nb = open_notebook([cell], run=True)
    panel = nb.panel()
    expect(panel).to_have_attribute("data-phase", "analyzing", timeout=20_000)
    expect(panel.get_by_role("progressbar")).not_to_have_attribute("aria-valuenow", "0")
    nb.front.save()
    before = panel_state(nb)
    nb.page.reload()
    nb.front.wait_ready()
    t0 = time.monotonic()
    expect(panel).to_have_attribute("data-run-id", before["id"], timeout=2_000)
    shown_after = time.monotonic() - t0
    first = panel_state(nb)
    assert first["status"] == "running" and first["mode"] == "stream", first
    assert progress_key(first) >= progress_key(before), (before, first)
    nb.shot("3-reload-saved")
    # and it is live: released, it advances to the end
    hold.write_text("go")
    expect(panel).to_have_attribute("data-status", "succeeded", timeout=30_000)
    assert shown_after <= 2.0
    # the output's saved copy follows (here the front end does it: after a reload, the kernel's
    # update_display_data answers a request this page never made, so no output area takes it)
    nb.page.wait_for_function(SAVED_HTML_SAYS, arg='data-status="succeeded"', timeout=10_000)


# -- 4 ------------------------------------------------------------------------------------------


def test_kernel_restart_shows_interrupted_and_rerun_runs_attempt_2(
    open_notebook: Any, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"  # attempt 1 waits halfway through "analyzing" until this exists
    cell = f"run = pp.four_phase.start(n=8, delay=0.05, tag='s4', hold={str(hold)!r})\nrun"
    nb = open_notebook([cell], run=True)
    panel = nb.panel()
    expect(panel).to_have_attribute("data-phase", "analyzing", timeout=20_000)
    first_id = panel.get_attribute("data-run-id")
    clicked = nb.front.restart_kernel()
    # the old panel says at once that nothing drives it any more (it used to look alive, its
    # clock and ETA running on): disconnected within 5 s, clock stopped, buttons disabled
    expect(panel).to_have_attribute(
        "data-mode", "disconnected", timeout=max(1, 5_000 - (now_ms(nb) - clicked))
    )
    assert now_ms(nb) - clicked < 5_000 or panel.get_attribute("data-mode") == "disconnected"
    expect(panel.get_by_test_id("tether-status")).to_have_text(re.compile(r"^was running at \d\d:\d\d$"))
    expect(panel.get_by_test_id("tether-disconnected")).to_contain_text("re-run the cell to reattach")
    cancel = panel.get_by_role("button", name="Cancel")
    expect(cancel).to_be_disabled()
    assert "re-run the cell to reattach" in (cancel.get_attribute("title") or "")
    clock = panel.get_by_test_id("tether-elapsed").inner_text()
    ticks = int(panel.get_attribute("data-ticks") or 0)
    nb.page.wait_for_function(
        """(n) => Number(document.querySelector(
        '[data-testid=tether-panel]').dataset.ticks) >= n""",
        arg=ticks + 2,
        timeout=10_000,
    )
    assert panel.get_by_test_id("tether-elapsed").inner_text() == clock  # the clock stopped
    expect(panel.get_by_test_id("tether-eta")).to_have_text("")
    nb.shot("4-restart-disconnected")
    assert nb.front.run_all() is True
    expect(panel).to_have_count(1)
    expect(panel).to_have_attribute("data-run-id", first_id, timeout=15_000)
    expect(panel).to_have_attribute("data-status", "interrupted", timeout=15_000)
    expect(panel).to_have_attribute("data-mode", "static")
    rerun = panel.get_by_role("button", name="Re-run")
    expect(rerun).to_be_visible()
    expect(panel.get_by_role("button", name="Cancel")).to_be_hidden()
    nb.shot("4-restart-interrupted")
    hold.write_text("go")  # attempt 2 runs through
    rerun.click()
    expect(panel).to_have_attribute("data-attempt", "2", timeout=10_000)
    expect(panel).not_to_have_attribute("data-run-id", first_id)
    expect(panel).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(panel.get_by_test_id("tether-notice")).to_be_hidden()
    runs = db_runs(nb.db)
    assert sorted((r.attempt, str(r.status)) for r in runs) == [(1, "interrupted"), (2, "succeeded")]
    nb.shot("4-restart-rerun-succeeded")


# -- 5 ------------------------------------------------------------------------------------------


def test_run_of_another_process_is_polled_to_the_end(open_notebook: Any, tmp_path: Path) -> None:
    id_file = tmp_path / "run-id"
    nb = open_notebook([f"run = tether.get_run(open({str(id_file)!r}).read())\nrun"])
    script = (
        "import sys, tether\n"
        "from helpers import panel_pipelines as pp\n"
        "tether.configure(db=sys.argv[1])\n"
        "run = pp.four_phase.start(n=10, delay=0.2, tag='s5')\n"
        "open(sys.argv[2] + '.tmp', 'w').write(run.id)\n"
        "import os; os.replace(sys.argv[2] + '.tmp', sys.argv[2])\n"
        "run.wait(120)\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(TESTS), os.environ.get("PYTHONPATH")] if p)
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(nb.db), str(id_file)], env=env)
    try:
        runs = wait_db(nb.db, lambda rs: bool(rs) and rs[0].status == "running")
        nb.page.evaluate(RECORDER)
        assert nb.front.run_all() is True
        panel = nb.panel()
        expect(panel).to_have_attribute("data-run-id", runs[0].id, timeout=10_000)
        expect(panel).to_have_attribute("data-mode", "poll", timeout=10_000)
        expect(panel).to_have_attribute("data-status", "running")
        expect(panel.get_by_role("button", name="Cancel")).to_be_visible()
        nb.shot("5-other-process-poll")
        expect(panel).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(panel).to_have_attribute("data-mode", "static")
        polled = [progress_key(s) for s in states(nb) if s["mode"] == "poll"]
        assert len(set(polled)) >= 2 and polled == sorted(polled), polled  # it advanced
        assert child.wait(30) == 0
        nb.shot("5-other-process-succeeded")
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(10)


# -- 6 ------------------------------------------------------------------------------------------


def test_cancel_ends_a_running_run_as_cancelled(open_notebook: Any, tmp_path: Path) -> None:
    hold = tmp_path / "never"
    cell = f"run = pp.four_phase.start(n=10, delay=0.05, tag='s6', hold={str(hold)!r})\nrun"
    nb = open_notebook([cell], run=True)
    panel = nb.panel()
    expect(panel).to_have_attribute("data-status", "running", timeout=20_000)
    cancel = panel.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible()
    box = cancel.bounding_box()
    cancel.click()
    expect(panel).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(panel).to_have_attribute("data-mode", "static")
    expect(panel.get_by_role("button", name="Cancel")).to_be_hidden()
    rerun = panel.get_by_role("button", name="Re-run")
    expect(rerun).to_be_visible()
    expect(panel.get_by_test_id("tether-notice")).to_be_hidden()
    # a cancel is neutral: no error, no traceback of tether's own code, a grey badge, the origin
    expect(panel.get_by_test_id("tether-error")).to_be_hidden()
    expect(panel.get_by_test_id("tether-traceback")).to_be_hidden()
    assert "RunCancelled" not in panel.inner_text() and "_raise_cancelled" not in panel.inner_text()
    expect(panel.get_by_test_id("tether-cancel-origin")).to_have_text(
        re.compile(r"^cancelled from this panel at \d\d:\d\d:\d\d$")
    )
    r, g, b = _rgb(panel.get_by_test_id("tether-status"), "backgroundColor")
    assert max(r, g, b) - min(r, g, b) < 40, (r, g, b)  # grey, not red or orange
    expect(panel.locator("[data-testid=tether-step][data-state=stopped]")).to_have_count(1)
    expect(panel.locator("[data-state=failed]")).to_have_count(0)
    # what replaced Cancel is not where the pointer was on Cancel (a late click restarts nothing)
    for button in (rerun, panel.get_by_role("button", name="Resume")):
        other = button.bounding_box()
        assert box is not None and other is not None
        assert other["x"] + other["width"] <= box["x"] or other["x"] >= box["x"] + box["width"]
    assert [str(r.status) for r in db_runs(nb.db)] == ["cancelled"]
    nb.shot("6-cancelled")


# -- 8 ------------------------------------------------------------------------------------------


def test_dashboard_lists_runs_with_live_status(open_notebook: Any, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    nb = open_notebook(
        [
            "quick = pp.four_phase.start(n=2, delay=0.01, tag='quick')\n_ = quick.wait(30)",
            f"slow = pp.four_phase.start(n=6, delay=0.05, tag='slow', hold={str(hold)!r})",
            "import tether\ntether.dashboard()",
        ],
        run=True,
    )
    runs = wait_db(nb.db, lambda rs: len(rs) == 2)
    slow = next(r for r in runs if r.params["tag"] == "slow")
    quick = next(r for r in runs if r.params["tag"] == "quick")
    page = nb.page
    dash = page.get_by_test_id("tether-dashboard")
    expect(dash).to_be_visible(timeout=15_000)
    row = dash.locator(f"tr[data-run-id='{slow.id}']")
    expect(dash.locator(f"tr[data-run-id='{quick.id}']")).to_have_attribute("data-status", "succeeded")
    expect(row).to_have_attribute("data-status", "running", timeout=10_000)
    expect(row).to_contain_text("four_phase")
    nb.shot("8-dashboard-running")
    # filter by status (done in the kernel: only running rows come back)
    dash.get_by_test_id("tether-dashboard-filter").select_option("running")
    expect(dash.get_by_test_id("tether-dashboard-row")).to_have_count(1)
    expect(dash.get_by_test_id("tether-dashboard-row")).to_have_attribute("data-run-id", slow.id)
    dash.get_by_test_id("tether-dashboard-filter").select_option("")
    expect(dash.get_by_test_id("tether-dashboard-row")).to_have_count(2)
    # live: released, the slow run's row turns succeeded by itself
    hold.write_text("go")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    # selecting a row shows its panel
    row.click()
    panel = page.get_by_test_id("tether-panel")
    expect(panel).to_have_count(1, timeout=10_000)  # the one under the table
    expect(panel).to_have_attribute("data-run-id", slow.id)
    expect(panel).to_have_attribute("data-status", "succeeded")
    expect(row).to_have_attribute("aria-selected", "true")
    nb.shot("8-dashboard-selected")


# -- 9 ------------------------------------------------------------------------------------------


def test_a_panel_keeps_its_attempt_and_a_rerun_in_it_moves_it(open_notebook: Any) -> None:
    """A panel shows the attempt it was given, offers a newer one (tether-newer) and moves only
    when asked in it: Re-run (which asks once for a long run) or the newer attempt's link."""
    nb = open_notebook(
        [
            # every Re-run asks here; the real threshold is a run of more than a minute
            "from tether.view import snapshot\nsnapshot.CONFIRM_RERUN_AFTER = 0",
            "first = pp.four_phase.start(n=2, delay=0.01, tag='s9')\n_ = first.wait(30)\nfirst",
            "tether.get_run(first.id)",
            "third = tether.get_run(first.id).rerun()\n_ = third.wait(30)",
        ]
    )
    for i in (0, 1, 2):
        assert nb.front.run_cell(i) is True
    moved = nb.cell(2).get_by_test_id("tether-panel")
    expect(moved).to_have_attribute("data-status", "succeeded", timeout=20_000)
    first_id = moved.get_attribute("data-run-id")
    moved.get_by_role("button", name="Re-run").click()
    confirm = moved.get_by_test_id("tether-rerun-confirm")
    expect(moved.get_by_test_id("tether-confirm")).to_contain_text("Start it again from scratch?")
    assert moved.get_attribute("data-attempt") == "1"  # nothing happened before the answer
    nb.shot("9-rerun-asks")
    confirm.click()
    expect(moved).to_have_attribute("data-attempt", "2", timeout=10_000)
    expect(moved).to_have_attribute("data-status", "succeeded", timeout=20_000)
    second_id = moved.get_attribute("data-run-id")
    assert second_id != first_id
    # attempt 1 shown again: its own panel, attempt 1, with a link to the newer attempt
    assert nb.front.run_cell(3) is True
    old = nb.cell(3).get_by_test_id("tether-panel")
    expect(old).to_have_attribute("data-run-id", first_id, timeout=10_000)
    expect(old).to_have_attribute("data-attempt", "1")
    newer = old.get_by_test_id("tether-newer")
    expect(newer).to_contain_text("#2 (succeeded)")
    expect(old.get_by_test_id("tether-stored")).to_contain_text("stored result from")
    # a third attempt made from code moves no panel; both offer it
    assert nb.front.run_cell(4) is True
    expect(newer).to_contain_text("#3 (succeeded)", timeout=10_000)
    expect(moved.get_by_test_id("tether-newer")).to_contain_text("#3", timeout=10_000)
    assert (old.get_attribute("data-attempt"), moved.get_attribute("data-attempt")) == ("1", "2")
    nb.shot("9-newer-attempt")
    newer.click()
    expect(old).to_have_attribute("data-attempt", "3", timeout=10_000)
    expect(old.get_by_test_id("tether-newer")).to_be_hidden()
    expect(moved).to_have_attribute("data-run-id", second_id)


# -- 10 -----------------------------------------------------------------------------------------


def test_dashboards_keep_their_own_filters_and_fit_700px(open_notebook: Any) -> None:
    nb = open_notebook(
        [
            "ok = pp.four_phase.start(n=2, delay=0.01, tag='x' * 90)\n_ = ok.wait(30)",
            "bad = pp.evil.start(tag='bad')\n_ = bad.wait(30)",
            "tether.dashboard()",
            "tether.dashboard(status='failed')",
        ],
        run=True,
    )
    runs = wait_db(nb.db, lambda rs: len(rs) == 2 and all(r.status.terminal for r in rs))
    ok = next(r for r in runs if r.status == "succeeded")
    bad = next(r for r in runs if r.status == "failed")
    every = nb.cell(3).get_by_test_id("tether-dashboard")
    failed = nb.cell(4).get_by_test_id("tether-dashboard")
    expect(every.get_by_test_id("tether-dashboard-row")).to_have_count(2, timeout=15_000)
    expect(failed.get_by_test_id("tether-dashboard-row")).to_have_count(1)
    expect(failed.get_by_test_id("tether-dashboard-row")).to_have_attribute("data-run-id", bad.id)
    every.get_by_test_id("tether-dashboard-filter").select_option("succeeded")
    expect(every.get_by_test_id("tether-dashboard-row")).to_have_count(1)
    expect(every.get_by_test_id("tether-dashboard-row")).to_have_attribute("data-run-id", ok.id)
    expect(failed.get_by_test_id("tether-dashboard-row")).to_have_attribute("data-run-id", bad.id)
    expect(failed.get_by_test_id("tether-dashboard-filter")).to_have_value("failed")
    every.get_by_test_id("tether-dashboard-filter").select_option("")
    expect(every.get_by_test_id("tether-dashboard-row")).to_have_count(2)
    # the params tell runs apart; the started time is 24-hour
    expect(every.locator(f"tr[data-run-id='{ok.id}'] [data-testid=tether-dashboard-params]")).to_contain_text(
        "tag='xxx"
    )
    expect(every.locator(f"tr[data-run-id='{ok.id}'] .tether-col-started")).to_have_text(
        re.compile(r"^\d\d:\d\d:\d\d$")
    )
    # 700 px wide, light then dark: no horizontal scrolling, in the table or around it
    with _at_700px(nb):
        for theme in THEMES:
            light = _theme(nb, theme)
            for dash in (every, failed):
                expect(dash).to_be_visible()
                over = dash.evaluate("""el => { const out = [];
                    for (let n = el; n && n !== document.body; n = n.parentElement)
                        if (n.scrollWidth > n.clientWidth + 1 && getComputedStyle(n).overflowX !== 'hidden')
                            out.push(`${n.className}: ${n.scrollWidth} > ${n.clientWidth}`);
                    return out; }""")
                assert over == [], (theme, over)
            nb.shot(f"10-dashboards-700px-{'light' if light == 'true' else 'dark'}")
        assert _background_luminance(every) < 0.3  # the dark theme reached the table


THEMES = ("JupyterLab Light", "JupyterLab Dark")


@contextmanager
def _at_700px(nb: Notebook) -> Iterator[None]:
    """The page 700 px wide; afterwards 1280 px again, in the light theme."""
    nb.page.set_viewport_size({"width": 700, "height": 900})
    try:
        yield
    finally:
        _theme(nb, "JupyterLab Light")
        nb.page.set_viewport_size({"width": 1280, "height": 900})


def _theme(nb: Notebook, theme: str) -> str:
    """Switch the front end to ``theme``; returns body's data-jp-theme-light ("true"/"false")."""
    nb.front.js(
        "await window.jupyterapp.commands.execute('apputils:change-theme', "
        f"{{theme: '{theme}'}}); return null;"
    )
    light = "true" if theme.endswith("Light") else "false"
    nb.page.wait_for_function(
        f"() => document.body.dataset.jpThemeLight === '{light}'"
        " && !document.querySelector('#jupyterlab-splash')"
    )
    return light


# -- 11 -----------------------------------------------------------------------------------------


def test_a_saved_notebook_exports_the_final_state_of_each_run(open_notebook: Any, tmp_path: Path) -> None:
    """BUG (before): the exported HTML read `running · scanning: 6/40` for a run that succeeded,
    and `<tether.dashboard ... rows=2>` for the dashboard."""
    hold = tmp_path / "hold"
    nb = open_notebook(
        [
            f"run = pp.four_phase.start(n=4, delay=0.02, tag='s11', hold={str(hold)!r})\nrun",
            "failing = pp.evil.start(tag='s11')\nfailing",
            "tether.dashboard()",
        ],
        run=True,
    )
    panels = nb.panel()
    expect(panels).to_have_count(2, timeout=15_000)
    expect(panels.nth(0)).to_have_attribute("data-status", "running", timeout=15_000)
    hold.write_text("go")
    for i in range(2):
        expect(panels.nth(i)).to_have_attribute("data-mode", "static", timeout=30_000)
    dash = nb.page.get_by_test_id("tether-dashboard")
    expect(dash.locator("tr[data-status=running]")).to_have_count(0, timeout=15_000)
    ids = {
        panels.nth(i).get_attribute("data-run-id"): panels.nth(i).get_attribute("data-status")
        for i in range(2)
    }
    assert sorted(ids.values()) == ["failed", "succeeded"]
    # the saved outputs follow (the kernel's update by display id, and the front end's own)
    path = nb.server.root / f"{nb.name}.ipynb"
    for status in ("succeeded", "failed"):
        nb.page.wait_for_function(SAVED_HTML_SAYS, arg=f'data-status="{status}"', timeout=15_000)
    nb.front.save()
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--stdout", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    html = out.stdout
    for run_id, status in ids.items():
        assert f'data-run-id="{run_id}" data-status="{status}"' in html, (run_id, status)
    assert 'data-status="running"' not in html and "&lt;tether.dashboard" not in html
    assert html.count("<tr data-run-id=") == 2  # the dashboard's table, both runs ended


# -- 12 -----------------------------------------------------------------------------------------

# every text the tries line shows, in order (a MutationObserver: the countdown is asserted after
# the fact, not sampled with sleeps)
TRIES_RECORDER = """() => {
  window.__tether_tries = [];
  const seen = () => {
    const t = document.querySelector('[data-testid=tether-tries]');
    const text = t && !t.hidden ? t.textContent : '';
    const all = window.__tether_tries;
    if (text && all[all.length - 1] !== text) all.push(text);
  };
  new MutationObserver(seen).observe(document.body,
    {subtree: true, attributes: true, childList: true, characterData: true});
}"""

FLAKY = """@tether.pipeline(retries=2, retry_delay=3.0, retry_backoff=1.0)
def flaky(ctx):
    ctx.phase("fetching", total=2)
    ctx.advance()
    raise ConnectionError(f"connection reset on try {ctx.tries}")

run = flaky.start()
run"""


def test_a_retried_run_counts_down_to_each_try_then_says_how_it_ended(open_notebook: Any) -> None:
    nb = open_notebook([FLAKY])
    nb.page.evaluate(TRIES_RECORDER)
    assert nb.front.run_all() is True
    panel = nb.panel()
    tries = panel.get_by_test_id("tether-tries")
    expect(tries).to_have_text(re.compile(r"^try 2 of 3 — next in [123] s$"), timeout=20_000)
    expect(panel).to_have_attribute("data-status", "running")
    expect(panel.get_by_test_id("tether-try-error")).to_have_text(
        ["try 1: ConnectionError: connection reset on try 1"]
    )
    nb.shot("12-retry-countdown")
    expect(panel).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(tries).to_have_text("failed after 3 tries")
    expect(panel.get_by_test_id("tether-try-error")).to_have_text(
        [f"try {i}: ConnectionError: connection reset on try {i}" for i in (1, 2)]
    )
    expect(panel.get_by_test_id("tether-error-message")).to_have_text(
        "ConnectionError: connection reset on try 3"
    )
    shown = nb.page.evaluate("() => window.__tether_tries")
    for n in (2, 3):  # each wait counted down, second by second, never to 0
        waits = [int(m.group(1)) for t in shown if (m := re.match(rf"try {n} of 3 — next in (\d) s$", t))]
        assert len(waits) >= 2 and waits == sorted(waits, reverse=True) and min(waits) >= 1, shown
    assert shown[-1] == "failed after 3 tries", shown
    nb.shot("12-retry-failed")


FAMILY = """import os, time

@tether.pipeline(phases=["loading"])
def kid(ctx, name: str, gate: str = ""):
    ctx.phase("loading", total=4)
    for _ in range(3):
        ctx.advance()
    while gate and not os.path.exists(gate):
        ctx.advance(0)
        time.sleep(0.02)
    ctx.advance()
    return name

@tether.pipeline
def family(ctx, gate: str):
    kids = [kid.start(name="quick <b>x</b>"), kid.start(name="slow", gate=gate)]
    return [k.result() for k in kids]

parent = family.start(gate=os.path.abspath("family.gate"))
parent"""


WAIT_FOR_CHILDREN = """deadline = time.monotonic() + 30
while len(parent.children()) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
parent.children()[1]"""


def test_a_parent_lists_its_children_live_and_a_child_names_its_parent(open_notebook: Any) -> None:
    nb = open_notebook([FAMILY, WAIT_FOR_CHILDREN], run=True)
    parent, child = nb.panel().nth(0), nb.panel().nth(1)
    kids = parent.get_by_test_id("tether-children").get_by_test_id("tether-child")
    expect(kids).to_have_count(2, timeout=20_000)
    expect(kids.nth(0)).to_have_attribute("data-status", "succeeded", timeout=20_000)
    expect(kids.nth(1)).to_have_attribute("data-status", "running")
    expect(kids.nth(1)).to_contain_text("3/4 (75%)")
    expect(parent.get_by_test_id("tether-children-summary")).to_have_text(
        "children: 2 (1 running, 1 succeeded)"
    )
    ids = [r.id for r in sorted(db_runs(nb.db), key=lambda r: r.created_at)]
    assert [kids.nth(i).get_attribute("data-run-id") for i in range(2)] == ids[1:], ids
    expect(child).to_have_attribute("data-run-id", ids[2])
    expect(child.get_by_test_id("tether-parent")).to_have_text(f"started by family #1 (id {ids[0]})")
    expect(child.get_by_test_id("tether-children")).to_be_hidden()
    _fits_700px_light_and_dark(nb, parent, "13-children")
    (nb.db.parent / "family.gate").write_text("go")
    expect(kids.nth(1)).to_have_attribute("data-status", "succeeded", timeout=20_000)
    expect(parent).to_have_attribute("data-status", "succeeded", timeout=20_000)
    expect(kids.nth(1)).to_contain_text("4/4 (100%)")
    expect(parent.get_by_test_id("tether-result")).to_contain_text('"quick <b>x</b>", "slow"')
    assert parent.locator("b").count() == 0  # run text stays text
    nb.shot("13-children-succeeded")


def _fits_700px_light_and_dark(nb: Notebook, panel: Any, label: str) -> None:
    """At 700 px, in the light and the dark theme, nothing in ``panel`` scrolls sideways."""
    with _at_700px(nb):
        for theme in THEMES:
            light = _theme(nb, theme)
            over = panel.evaluate("""el => { const out = [];
                for (const n of [el, ...el.querySelectorAll('*')])
                    if (n.scrollWidth > n.clientWidth + 1
                        && !['hidden', 'auto'].includes(getComputedStyle(n).overflowX))
                        out.push(`${n.className}: ${n.scrollWidth} > ${n.clientWidth}`);
                return out; }""")
            assert over == [], (theme, over)
            assert panel.bounding_box()["width"] <= 700
            nb.shot(f"{label}-700px-{'light' if light == 'true' else 'dark'}")
        assert _background_luminance(panel) < 0.3  # the dark theme reached the panel

"""The run panel at the Python level: snapshots, one model per run, buttons, modes, the poller,
and coalescing counted through a real kernel (jupyter_client)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets.widgets.widget as ipw_widget
import pytest

import tether
from helpers import panel_pipelines as pp
from helpers.util import wait_until as until
from tether.view import snapshot as _snap
from tether.view.snapshot import VOLATILE, html_snapshot, text_snapshot
from tether.widget import dashboard, panel, poller, repr_bundle
from tether.widget.panel import RunPanel


@pytest.fixture
def fast_poller() -> Iterator[poller.Poller]:
    """The default workspace's poller with a short interval (restored and stopped afterwards)."""
    p = tether.workspace.default().state(poller.Poller)
    saved = p.interval
    p.interval = 0.1
    yield p
    p.stop()
    p.interval = saved


class Child:
    """A separate Python process owning a run (helpers.panel_pipelines.CHILD)."""

    def __init__(self, env: dict[str, str], kind: str, arg: str, tag: str, fate: str = "wait"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", pp.CHILD, kind, arg, tag, fate], env=env, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.run_id = self.proc.stdout.readline().strip()
        assert self.run_id, "the child process did not start its run"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def child(child_env: dict[str, str]) -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def _start(kind: str, arg: str, tag: str, fate: str = "wait") -> Child:
        c = Child(child_env, kind, arg, tag, fate)
        made.append(c)
        return c

    yield _start
    for c in made:
        c.close()


def release(path: Path, text: str) -> None:
    """Open a gate (helpers.panel_pipelines.gate) atomically: its body polls for the file and reads
    it, so a plain write_text() let it read the file created but still empty (a flaky result)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def settle(w: RunPanel, status: str, mode: str | None = None) -> dict[str, Any]:
    until(
        lambda: w.snapshot.get("status") == status and (mode is None or w.mode == mode),
        what=f"panel {status}/{mode} (now {w.snapshot.get('status')}/{w.mode})",
    )
    return w.snapshot


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_contents_for_every_status(
    db: Path, tmp_path: Path, child: Any, fast_poller: poller.Poller
) -> None:
    tether.configure(max_concurrency=1)
    gate = tmp_path / "gate"
    running = pp.gate.start(path=str(gate), tag="running")
    pending = pp.four_phase.start(n=2, delay=0.01, tag="pending")  # waits for the only slot
    until(lambda: running.status == "running")

    snap = panel(pending).snapshot
    assert (snap["status"], snap["mode"]) == ("pending", "stream")
    assert snap["actions"] == {"cancel": True, "rerun": False, "resume": False}
    assert [p["state"] for p in snap["phases"]] == ["upcoming"] * 4
    assert snap["elapsed"] is None and snap["error"] is None and snap["result"] is None
    assert "max_concurrency" in snap["waiting"]  # what it waits for, not just "waiting"
    assert snap["params"] == "delay=0.01, hold='', n=2, tag='pending'"
    assert not snap["stored"] and snap["newer"] is None and snap["cancel"] is None

    w = panel(running)
    snap = settle(w, "running", "stream")
    assert snap["phase"] == "waiting" and snap["phases"] == [{"name": "waiting", "state": "current"}]
    assert snap["total"] is None and snap["percent"] is None  # indeterminate
    assert snap["actions"] == {"cancel": True, "rerun": False, "resume": False}
    assert snap["pipeline"] == "helpers.panel_pipelines.gate" and snap["attempt"] == 1
    assert snap["id"] == running.id and snap["key"] == running.key and "key_short" not in snap
    assert snap["waiting"] is None and snap["eta_scope"] == "run"  # "waiting" is its last phase

    pending.cancel()
    snap = settle(panel(pending), "cancelled", "static")
    assert snap["actions"] == {"cancel": False, "rerun": True, "resume": True}
    assert snap["error"] is None  # a cancel is no error: no red, no traceback
    assert snap["cancel"]["origin"] == "by run.cancel() in this kernel" and snap["cancel"]["at"]

    release(gate, "go")
    snap = settle(w, "succeeded", "static")
    assert snap["result"] == '"go"' and snap["error"] is None
    assert snap["log"] == ["released: go"] and snap["percent"] == 100.0
    assert [p["state"] for p in snap["phases"]] == ["done", "done"]  # waiting, released
    assert snap["actions"] == {"cancel": False, "rerun": True, "resume": False}
    assert snap["elapsed"] is not None and snap["rate"] is None and snap["eta"] is None

    failed = pp.evil.start(tag="failed")
    snap = settle(panel(failed), "failed", "static")
    assert snap["error"]["type"] == "ValueError"
    assert snap["error"]["message"] == "bad input " + pp.EVIL
    assert "Traceback" in snap["error"]["traceback"]
    assert [p["state"] for p in snap["phases"]] == ["done", "failed"]
    assert snap["log"] == [pp.EVIL, "plain line after " + pp.EVIL]
    assert snap["done"] == 0 and snap["phase"] == "exploding"
    assert snap["actions"] == {"cancel": False, "rerun": True, "resume": True}

    dead = child("gate", str(tmp_path / "never"), "interrupted", "die")
    assert dead.proc.wait(10) == 0
    snap = settle(panel(tether.get_run(dead.run_id)), "interrupted", "static")
    assert snap["error"]["type"] == "Interrupted" and "pid" in snap["error"]["message"]
    assert snap["phases"] == [{"name": "waiting", "state": "failed"}]
    assert snap["actions"] == {"cancel": False, "rerun": True, "resume": True}


def test_static_renderings_escape_run_text(db: Path) -> None:
    run = pp.evil.start(tag="static")
    run.wait(20)
    bundle = repr_bundle(run)  # no kernel here: the static bundle
    assert set(bundle) == {"text/plain", "text/html"}
    html = bundle["text/html"]
    assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=" in html
    assert f'data-run-id="{run.id}"' in html and 'data-status="failed"' in html
    assert 'data-mode="static"' in html
    assert "ValueError: bad input <img" in bundle["text/plain"]
    assert repr_bundle(run, include=["text/plain"]).keys() == {"text/plain"}
    assert repr_bundle(run, exclude=["text/plain"]).keys() == {"text/html"}
    # the widget's own bundle: the view plus the same static fallbacks
    data, _meta = panel(run)._repr_mimebundle_()
    assert set(data) == {"application/vnd.jupyter.widget-view+json", "text/plain", "text/html"}
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == panel(run).model_id
    assert data["text/html"] == html_snapshot(panel(run).snapshot)
    assert data["text/plain"] == text_snapshot(panel(run).snapshot)


# -- one model per run -------------------------------------------------------------------------


def _instances() -> int:
    return len(ipw_widget._instances)


def test_one_widget_model_per_run_and_a_panel_keeps_its_attempt(db: Path, tmp_path: Path) -> None:
    hold = str(tmp_path / "hold")  # the run waits (running) until this file exists
    run = pp.four_phase.start(n=2, delay=0.001, tag="one", hold=hold)
    w = panel(run)
    before = _instances()
    for _ in range(100):  # re-executing the cell: the same run, the same model
        again = pp.four_phase.start(n=2, delay=0.001, tag="one", hold=hold)
        assert panel(again) is w
        assert panel(tether.get_run(run.id)) is w
        panel(again)._repr_mimebundle_()
    assert _instances() == before
    release(Path(hold), "go")
    run.wait(20)
    settle(w, "succeeded", "static")
    assert not w.snapshot["stored"]  # it ran while we watched

    # Re-run clicked in the panel: the user asked, so this panel moves to attempt 2
    reply = w.handle({"id": "r1", "action": "rerun"})
    assert reply == {"id": "r1", "ok": True, "error": None}
    assert w.run.attempt == 2 and w.snapshot["attempt"] == 2 and w.run.key == run.key
    settle(w, "succeeded", "static")
    assert panel(w.run) is w
    assert pp.four_phase.start(n=2, delay=0.001, tag="one", hold=hold).id == w.run.id
    assert panel(pp.four_phase.start(n=2, delay=0.001, tag="one", hold=hold)) is w
    assert w.snapshot["stored"]  # start() gave back the ended run: its panel says it is stored
    old = panel(run)  # the first attempt, shown on purpose: its own (static) panel
    assert old is not w and old.snapshot["attempt"] == 1 and old.snapshot["id"] == run.id
    assert old.snapshot["newer"] == {"id": w.run.id, "attempt": 2, "status": "succeeded"}

    # a newer attempt made elsewhere never moves a panel: both offer it (data-testid=tether-newer)
    third = w.run.rerun()
    t3 = panel(third)
    assert t3 is not w and t3.snapshot["attempt"] == 3
    assert w.snapshot["attempt"] == 2 and w.snapshot["newer"]["id"] == third.id
    assert old.snapshot["attempt"] == 1 and old.snapshot["newer"]["attempt"] == 3
    third.wait(20)
    settle(t3, "succeeded", "static")
    until(lambda: old.snapshot["newer"]["status"] == "succeeded", what="the newer attempt's end")
    # ... until its link is clicked: then the panel shows the newest attempt
    assert old.handle({"id": "n", "action": "newer"}) == {"id": "n", "ok": True, "error": None}
    assert old.snapshot["attempt"] == 3 and old.snapshot["newer"] is None
    w.close()
    assert panel(w.run) is not w  # a closed panel is never handed out again


def test_an_older_attempt_learns_of_a_newer_one_made_by_another_process(
    db: Path, child_env: dict[str, str]
) -> None:
    run = pp.four_phase.start(n=1, delay=0.001, tag="cross")
    run.wait(20)
    w = panel(tether.get_run(run.id))
    assert w.snapshot["newer"] is None and w.snapshot["stored"]
    code = (
        "import sys, tether; tether.configure(db=sys.argv[1]); "
        "from helpers import panel_pipelines as pp; "
        "r = pp.four_phase.start(n=1, delay=0.001, tag='cross', policy='rerun'); r.wait(30)"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], env=child_env, check=True, timeout=60)
    # the front end asks an ended run's panel to refresh every few seconds (panel.js PING_MS)
    assert w.handle({"id": 1, "action": "refresh"})["ok"]  # type: ignore[index]
    assert w.snapshot["newer"]["attempt"] == 2 and w.snapshot["attempt"] == 1


# -- buttons -----------------------------------------------------------------------------------


def test_button_messages_reply_and_show_errors(db: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = pp.gate.start(path=str(gate), tag="buttons")
    w = panel(run)
    settle(w, "running", "stream")

    reply = w.handle({"id": "a", "action": "rerun"})  # refused while running
    assert reply is not None and reply["ok"] is False and reply["id"] == "a"
    assert "RunActive" in reply["error"] and "still running" in reply["error"]
    assert w.notice["level"] == "error" and w.notice["text"] == reply["error"]

    reply = w.handle({"id": "b", "action": "explode"})
    assert reply is not None and reply["ok"] is False and "unknown panel action" in reply["error"]
    assert w.handle("not a request") is None

    # the real ipywidgets dispatch path of a front-end custom message
    w._handle_custom_msg({"id": "c", "action": "cancel"}, [])
    snap = settle(w, "cancelled", "static")
    assert w.notice == {}  # a successful action clears the last error
    assert snap["actions"]["rerun"] and not snap["actions"]["cancel"]
    # cancelled is neutral: no error, no traceback of tether's own code, the origin said
    assert snap["error"] is None and snap["cancel"]["origin"] == "from this panel"
    assert snap["phases"] == [{"name": "waiting", "state": "stopped"}]
    text, html = text_snapshot(snap), html_snapshot(snap)
    assert "cancelled from this panel at " in text and "Traceback" not in text
    assert "_raise_cancelled" not in text + html and "#cf222e" not in html  # no red
    assert panel(tether.get_run(run.id)) is w  # the same run: the same panel, same words

    reply = w.handle({"id": "d", "action": "resume"})
    assert reply == {"id": "d", "ok": True, "error": None}
    assert w.snapshot["attempt"] == 2 and w.run.resumed_from == run.id
    release(gate, "x")
    settle(w, "succeeded", "static")
    assert w.handle({"id": "e", "action": "refresh"}) == {"id": "e", "ok": True, "error": None}


def test_rerun_of_a_pipeline_not_defined_here_is_shown(db: Path) -> None:
    @tether.pipeline(name="test_panel.ephemeral")
    def ephemeral(ctx: Any) -> int:
        return 1

    run = ephemeral.start()
    run.wait(20)
    w = panel(run)
    tether.workspace.default().pipelines.discard("test_panel.ephemeral")  # "restarted"
    reply = w.handle({"id": "x", "action": "rerun"})
    assert reply is not None and reply["ok"] is False
    assert "PipelineNotFound" in reply["error"] and "run the cell that defines it" in reply["error"]
    assert w.notice["text"] == reply["error"] and w.run.id == run.id


# -- modes -------------------------------------------------------------------------------------


def test_mode_for_own_foreign_and_ended_runs(
    db: Path, tmp_path: Path, child: Any, fast_poller: poller.Poller
) -> None:
    own = pp.gate.start(path=str(tmp_path / "own"), tag="own")
    w_own = panel(own)
    assert w_own.mode == "stream" and fast_poller.watching(w_own) == "stream"

    foreign = child("gate", str(tmp_path / "foreign"), "foreign")
    w_foreign = panel(tether.get_run(foreign.run_id))
    assert w_foreign.mode == "poll" and w_foreign.snapshot["mode"] == "poll"
    assert fast_poller.watching(w_foreign) == "poll"
    assert w_foreign.snapshot["actions"]["cancel"]

    release(tmp_path / "foreign", "done")  # the polled run ends -> static by itself
    settle(w_foreign, "succeeded", "static")
    assert fast_poller.watching(w_foreign) is None

    release(tmp_path / "own", "done")
    settle(w_own, "succeeded", "static")
    assert fast_poller.watching(w_own) is None
    # an ended run is static; its re-run executes here -> stream, then static again
    assert w_foreign.handle({"id": 1, "action": "rerun"})["ok"]  # type: ignore[index]
    assert w_foreign.mode in ("stream", "static") and w_foreign.snapshot["attempt"] == 2
    settle(w_foreign, "succeeded", "static")


# -- the poller --------------------------------------------------------------------------------


def test_poller_reads_only_new_rows_and_stops_at_the_end(
    db: Path, child: Any, fast_poller: poller.Poller
) -> None:
    foreign = child("four", "12", "polled")  # 4 phases x 12 steps x 50 ms, in another process
    run = tether.get_run(foreign.run_id)
    store = run.store
    calls: list[tuple[str, int]] = []
    seen: list[int] = []
    real_events, real_tail = store.events, store.tail

    def events(run_id: str, after: int = 0, **kw: Any) -> Any:
        out = real_events(run_id, after=after, **kw)
        if run_id == run.id and not kw.get("kinds"):  # the reader's reads (not the child events')
            calls.append(("events", after))
            seen.extend(e.seq for e in out)
        return out

    def tail(run_id: str, kind: str, n: int) -> Any:
        out = real_tail(run_id, kind, n)
        if run_id == run.id:
            calls.append(("tail", 0))
        return out

    store.events, store.tail = events, tail  # type: ignore[method-assign]
    try:
        w = panel(run)
        assert w.mode == "poll"
        settle(w, "succeeded", "static")
        until(lambda: not fast_poller.alive, what="the poller thread to stop")
    finally:
        del store.events, store.tail
    afters = [a for kind, a in calls if kind == "events"]
    assert afters == sorted(set(afters)), afters  # never re-reads from an older point
    assert len(seen) == len(set(seen)), "a row was read twice"
    assert all(a > 0 for a in afters)  # only the first read takes the tails
    assert fast_poller.watching(w) is None
    assert w.snapshot["log"] == [f"{p}: halfway (6/12)" for p in pp.PHASES]
    rec = run.snapshot()
    assert w._reader.seq == rec.last_seq  # caught up with every row


def test_stream_updates_are_coalesced(db: Path) -> None:
    run = pp.churn.start(n=400, tag="coalesce")  # 400 persisted phase switches -> 400 notifies
    w = panel(run)
    t0 = time.monotonic()
    run.wait(60)
    settle(w, "succeeded", "static")
    elapsed = time.monotonic() - t0
    assert w.updates <= 10 * elapsed + 4, (w.updates, elapsed)
    assert w.snapshot["done"] == 399 and w.snapshot["result"] == "400"  # the final state


def test_dashboard_lists_filters_and_selects(db: Path, tmp_path: Path, fast_poller: poller.Poller) -> None:
    done = pp.four_phase.start(n=1, delay=0.001, tag="d1")
    done.wait(20)
    gate = tmp_path / "gate"
    live = pp.gate.start(path=str(gate), tag="d2")
    d = dashboard()
    rows = {r["id"]: r for r in d.table.rows}
    assert set(rows) == {done.id, live.id}
    assert rows[done.id]["status"] == "succeeded" and rows[done.id]["percent"] == 100.0
    assert rows[done.id]["params"] == "delay=0.001, hold='', n=1, tag='d1'"  # runs told apart
    d.table.status_filter = "succeeded"
    assert [r["id"] for r in d.table.rows] == [done.id]
    d.table.status_filter = ""
    d.select(live.id)
    (shown,) = d.holder.children
    assert shown is panel(live)
    release(gate, "ok")
    until(
        lambda: {r["id"]: r["status"] for r in d.table.rows}.get(live.id) == "succeeded",
        what="the dashboard row to turn succeeded",
    )
    with pytest.raises(Exception, match="not a status"):
        d.table.status_filter = "nope"
    d.select("no-such-run")
    assert "cannot show run no-such-run" in d.table.error
    d.close()
    assert fast_poller.watching(d) is None


def test_a_phase_with_a_total_of_zero_is_all_done_in_every_view(db: Path) -> None:
    # the panel, its list of children and the dashboard share one percent: nothing to do is done
    from dataclasses import replace

    from tether.model import Status
    from tether.widget.dashboard import _row

    run = pp.four_phase.start(n=1, delay=0.001, tag="zero")
    run.wait(20)
    empty = replace(run.snapshot(), status=Status.RUNNING, done=0, total=0)
    unknown = replace(empty, total=None)
    assert _snap.percent_done(empty) == 100.0 and _snap.percent_done(unknown) is None
    assert _snap.build(empty, mode="static")["percent"] == 100.0
    assert _snap.child_entry(empty)["percent"] == 100.0
    assert _row(empty, time.time(), False)["percent"] == 100.0
    assert _row(unknown, time.time(), False)["percent"] is None


def test_every_dashboard_call_is_its_own_widget_and_filter(db: Path, monkeypatch: Any) -> None:
    import importlib

    dash_mod = importlib.import_module("tether.widget.dashboard")

    ok = pp.four_phase.start(n=1, delay=0.001, tag="ok")
    bad = pp.evil.start(tag="bad")
    ok.wait(20)
    bad.wait(20)
    where = ("cell-1", "request-1")
    monkeypatch.setattr(dash_mod, "_cell_request", lambda: where)
    every = dashboard()
    failed = dashboard(status="failed")  # the same cell, the same execution: both stay
    assert every is not failed and not every._closed
    assert {r["id"] for r in every.table.rows} == {ok.id, bad.id}
    assert [r["id"] for r in failed.table.rows] == [bad.id]
    every.table.status_filter = "succeeded"  # changing one filter leaves the other alone
    assert [r["id"] for r in every.table.rows] == [ok.id]
    assert failed.table.status_filter == "failed" and [r["id"] for r in failed.table.rows] == [bad.id]
    # the static fallback (nbconvert, GitHub) is a table of the rows, not a repr
    data, _meta = every._repr_mimebundle_()
    assert "<table" in data["text/html"] and f'data-run-id="{ok.id}"' in data["text/html"]
    assert "tag='ok'" in data["text/plain"] and "succeeded" in data["text/plain"]
    assert every.table.fallback["final"] and every.table.fallback["model_id"] == every.model_id
    assert "&lt;img" not in every.table.fallback["text/html"]  # nothing of run text as HTML
    # the cell executed again: the dashboards its last execution made are closed
    where = ("cell-1", "request-2")
    again = dashboard()
    assert every._closed and failed._closed and not again._closed
    where = ("cell-2", "request-3")
    other = dashboard()
    assert not again._closed and not other._closed
    again.close()
    other.close()


def test_panel_rejects_what_is_not_a_run(db: Path) -> None:
    with pytest.raises(TypeError, match=r"takes a tether\.Run"):
        panel("abc")  # type: ignore[arg-type]


def test_volatile_keys_do_not_resend(db: Path) -> None:
    run = pp.four_phase.start(n=1, delay=0.001, tag="v")
    run.wait(20)
    w = panel(run)
    settle(w, "succeeded", "static")
    n = w.updates
    for _ in range(5):
        w.refresh()
    assert w.updates == n
    assert set(w.snapshot) >= VOLATILE
    w.refresh(force=True)
    assert w.updates == n + 1


# -- through a real kernel ---------------------------------------------------------------------

KERNEL_CODE = """
import tether
from IPython.display import display
from helpers import panel_pipelines as pp
tether.configure(db={db!r})
run = pp.spin.start(calls=3_000_000, tag="kernel")
display(run)
run.wait(120)
rec = run.snapshot()
print("RUN", rec.started_at, rec.ended_at, run.id)
"""


@pytest.mark.slow
def test_comm_messages_per_second_through_a_real_kernel(tmp_path: Path, child_env: dict[str, str]) -> None:
    from jupyter_client.manager import start_new_kernel

    env = dict(child_env)
    env.pop("TETHER_DB", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        msg_id = kc.execute(KERNEL_CODE.format(db=str(tmp_path / "kernel.db")))
        comm_ids: set[str] = set()
        updates: list[dict[str, Any]] = []
        out: list[str] = []
        idle = False
        final = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (idle and final):
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty
                continue
            kind, content = msg["msg_type"], msg["content"]
            if (
                kind == "comm_open"
                and content["data"]["state"].get("_model_name") == "AnyModel"
                and "snapshot" in content["data"]["state"]
            ):
                comm_ids.add(content["comm_id"])
            elif kind == "comm_msg" and content["comm_id"] in comm_ids:
                updates.append(content["data"])
                snap = content["data"].get("state", {}).get("snapshot")
                if snap and snap["status"] == "succeeded":
                    final = snap
            elif kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and msg["parent_header"].get("msg_id") == msg_id:
                idle = content["execution_state"] == "idle"
        text = "".join(out)
        assert "RUN" in text, text
        started, ended, _run_id = text.split("RUN", 1)[1].split()
        duration = float(ended) - float(started)
        assert len(comm_ids) == 1, "one panel model"
        assert final is not None and final["done"] == 3_000_000, "the final state was sent"
        assert len(updates) <= 10 * duration + 3, (len(updates), duration)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_reader_never_skips_rows_committed_between_its_reads(db: Path) -> None:
    """Regression: the first catch-up read the log tail and the phase tail separately; a phase
    change committed in between moved the reader past the log lines before it."""
    import threading

    from tether.view.reader import RunReader

    step = threading.Event()

    @tether.pipeline(phases=["a", "b"])
    def two_phase(ctx: tether.Context) -> None:
        ctx.phase("a")
        step.wait(20)
        ctx.log("one")
        ctx.log("two")
        ctx.phase("b")  # flushes the two log lines and the phase change in one transaction
        step.clear()
        step.wait(20)

    run = two_phase.start()
    until(lambda: run.phase == "a")
    store = run.store
    real_tail = store.tail

    def tail_then_commit(run_id: str, kind: str, n: int) -> list[tether.Event]:
        rows = real_tail(run_id, kind, n)
        if kind == "log":  # let the body commit its logs + phase "b" before the phase tail
            step.set()
            until(lambda: store.get(run.id).phase == "b")
        return rows

    store.tail = tail_then_commit  # type: ignore[method-assign]
    try:
        reader = RunReader(run)
        reader.read()
    finally:
        del store.tail
        step.set()
    reader.read()
    assert list(reader.log) == ["one", "two"]
    assert reader.phase_name == "b"


# -- small items (issue 12, point 10) and params in sight (issue 13, item 7) --------------------


def test_dir_of_tether_is_its_public_api() -> None:
    names = dir(tether)
    assert "annotations" not in names  # was: from __future__ import annotations
    assert set(tether.__all__) <= set(names) and {"panel", "dashboard"} <= set(names)
    assert not [n for n in names if n.startswith("_") and n != "__version__"]


def test_a_pipeline_written_without_ctx_is_told_so(db: Path) -> None:
    @tether.pipeline(name="test_panel.total_sales")
    def total_sales(path: str) -> int:  # the body forgot ctx: `path` receives it
        return 1

    for call in (lambda: total_sales.start(path="sales.csv"), lambda: total_sales.start("x")):
        with pytest.raises(
            tether.ParamsError,
            match="the first parameter of a pipeline receives "
            r"ctx.*write def total_sales\(ctx, path, \.\.\.\)",
        ):
            call()
    with pytest.raises(tether.ParamsError) as info:  # an ordinary mistake gets no such hint
        pp.four_phase.start(n=1, nope=2)
    assert "receives ctx" not in str(info.value)


def test_runs_filter_on_equal_param_values(db: Path) -> None:
    @tether.pipeline(name="test_panel.params")
    def params(
        ctx: Any, repo: str, n: float = 1, flag: bool = False, opts: dict[str, Any] | None = None
    ) -> int:
        return 1

    a = params.start(repo="a")
    b = params.start(repo="b", n=2.0, flag=True, opts={"x": [1, 2], "y": "é"})
    c = params.start(repo="a", n=3)
    for run in (a, b, c):
        run.wait(20)

    def ids(**flt: Any) -> set[str]:
        return {r.id for r in tether.runs(params=flt)}

    assert ids(repo="a") == {a.id, c.id}
    assert ids(repo="a", n=3) == {c.id}
    assert ids(n=2) == {b.id}  # 2 == 2.0, as in Python and JSON
    assert ids(flag=True) == {b.id} and ids(flag=1) == set()  # but True is not 1
    assert ids(opts={"y": "é", "x": [1, 2]}) == {b.id} and ids(opts=None) == {a.id, c.id}
    assert ids(nope=1) == set() and ids() == {a.id, b.id, c.id}
    assert [r.id for r in tether.runs(params={"repo": "a"}, limit=1)] == [c.id]  # filter, then limit
    # a row whose params column is not JSON (edited by hand) is skipped, not an error
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE runs SET params = '{not json' WHERE id = ?", (a.id,))
        conn.commit()
    assert ids(repo="a") == {c.id}
    with pytest.raises(tether.ParamsError, match="not a JSON value"):
        tether.runs(params={"x": object()})
    with pytest.raises(tether.ParamsError, match="takes a dict"):
        tether.runs(params=[("repo", "a")])  # type: ignore[arg-type]


def test_cli_ls_shows_params_clipped_and_wide(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import main

    long = "x" * 100
    run = pp.four_phase.start(n=1, delay=0.001, tag=long)
    run.wait(20)
    assert main(["ls", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    head, row = out.splitlines()[:2]
    assert head.split()[-1] == "PARAMS"
    assert "delay=0.001" in row and "tag='xxx" in row and long not in row and "…" in row
    assert main(["ls", "--db", str(db), "--wide"]) == 0
    assert f"tag='{long}'" in capsys.readouterr().out


def test_cancel_origin_is_recorded_for_each_way_of_cancelling(
    db: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    by_api = pp.gate.start(path=str(tmp_path / "a"), tag="api")
    by_cli = pp.gate.start(path=str(tmp_path / "b"), tag="cli")
    until(lambda: by_api.status == "running" and by_cli.status == "running")
    by_api.cancel()
    proc = subprocess.run(
        [sys.executable, "-m", "tether.cli", "cancel", by_cli.id, "--db", str(db)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for run in (by_api, by_cli):
        run.wait(20)
    api = panel(tether.get_run(by_api.id)).snapshot
    cli = panel(tether.get_run(by_cli.id)).snapshot
    assert api["cancel"]["origin"] == "by run.cancel() in this kernel"
    assert cli["cancel"]["origin"].startswith("by `tether cancel` (pid ")
    assert api["error"] is None and cli["error"] is None
    # the origin is stored with the request: another process's reader says where it came from
    from tether.view.snapshot import cancel_origin

    origin = next(e.data["origin"] for e in by_api.events() if e.kind == "cancel_requested")
    assert origin["via"] == "api" and origin["pid"] == os.getpid()
    assert cancel_origin(origin, {"instance": "another process"}) == (f"by run.cancel() in pid {os.getpid()}")


def test_stored_outcomes_are_labelled(db: Path) -> None:
    run = pp.four_phase.start(n=1, delay=0.001, tag="stored")
    w = panel(run)
    run.wait(20)
    snap = settle(w, "succeeded", "static")
    assert not snap["stored"]  # watched to its end: a fresh result
    again = pp.four_phase.start(n=1, delay=0.001, tag="stored")  # re-executing the cell
    assert again.id == run.id and panel(again) is w
    snap = w.snapshot
    assert snap["stored"] and snap["ended_at"] == run.snapshot().ended_at
    assert "stored result from " in text_snapshot(snap)
    assert "to compute again: Re-run, or start(..., policy='rerun')" in text_snapshot(snap)
    failed = pp.evil.start(tag="stored")
    failed.wait(20)
    snap = panel(pp.evil.start(tag="stored")).snapshot
    assert snap["stored"] and "stored outcome from " in html_snapshot(snap)
    assert "Re-run or Resume" in text_snapshot(snap)
    bundle = tether.get_run(run.id)._repr_mimebundle_()  # no kernel: the static bundle
    assert "stored result from" in bundle["text/plain"]


def test_a_pending_detached_run_names_the_worker_command(db: Path) -> None:
    run = pp.four_phase.start(n=1, tag="detached", detach=True)
    snap = panel(run).snapshot
    assert snap["status"] == "pending"
    assert snap["waiting"] == (
        f"waiting for a tether worker to take it; in a shell, run: "
        f"tether worker helpers.panel_pipelines --db {db}"
    )
    assert snap["waiting"] in text_snapshot(snap)


# -- honest numbers ------------------------------------------------------------------------------


@tether.pipeline(name="test_panel.mapped", phases=["items"])
def mapped(ctx: tether.Context, flag: str, n: int = 60, pause: float = 0.05) -> int:
    """``n`` items, one at a time, ``pause`` s each; item 20 fails while ``flag`` exists."""
    from concurrent.futures import ThreadPoolExecutor

    def item(i: int) -> int:
        if i == 20 and os.path.exists(flag):
            raise RuntimeError("item 20 fails this time")
        time.sleep(pause)
        return i

    ctx.phase("items", total=n)
    with ThreadPoolExecutor(1) as pool:
        return sum(ctx.map(item, range(n), executor=pool))


def test_rate_after_resume_counts_only_new_progress(db: Path, tmp_path: Path) -> None:
    """BUG (before): the rate was done / time in phase, so the 20 items a resumed ctx.map took
    from checkpoints at once made it ~3x too fast (and the ETA far too short)."""
    flag = tmp_path / "fail"
    flag.write_text("")
    first = mapped.start(flag=str(flag))
    with pytest.raises(tether.RunFailed):
        first.result(30)
    flag.unlink()
    w = panel(first)
    assert w.handle({"id": 1, "action": "resume"})["ok"]  # type: ignore[index]
    seen = []
    while w.snapshot["status"] in ("pending", "running"):
        snap = w.snapshot
        if snap["rate"] is not None:
            seen.append((snap["done"], snap["rate"], snap["eta"]))
        time.sleep(0.05)
    assert w.snapshot["status"] == "succeeded" and w.snapshot["attempt"] == 2
    true_rate = 1 / 0.05  # items a second, at most
    assert seen, "no rate was ever shown"
    for done, rate, eta in seen:
        assert rate <= 1.5 * true_rate, (done, rate)  # was up to 3x with the skipped 20 counted
        assert eta is not None and eta >= 0.5 * (60 - done) / true_rate, (done, rate, eta)


def test_rate_meter_measures_recent_progress_only() -> None:
    from types import SimpleNamespace as Rec

    from tether.view.reader import RateMeter

    m = RateMeter()
    rec = Rec(id="r", phase="p", done=500, resumed_from=None)
    m.add(rec, 100.0)  # opened mid-phase with 500 done: none of it is speed seen here
    assert m.rate(100.5) is None
    m.add(Rec(id="r", phase="p", done=510, resumed_from=None), 101.0)
    assert m.rate(101.0) == pytest.approx(10.0)
    assert m.rate(111.0) == pytest.approx(10 / 11)  # stalled since: the rate falls
    m.add(Rec(id="r", phase="q", done=0, resumed_from=None), 112.0)  # a new phase starts afresh
    assert m.rate(113.0) is None
    # a resumed attempt: the first step of a phase (items reused from checkpoints) is no speed
    m.add(Rec(id="r2", phase="p", done=0, resumed_from="r"), 200.0)
    m.add(Rec(id="r2", phase="p", done=300, resumed_from="r"), 200.01)
    m.add(Rec(id="r2", phase="p", done=305, resumed_from="r"), 201.01)
    assert m.rate(201.01) == pytest.approx(5.0)
    for t in range(1, 60):  # samples older than the window are dropped
        m.add(Rec(id="r2", phase="p", done=305 + t, resumed_from="r"), 201.01 + t)
    assert m.rate(260.01) == pytest.approx(1.0) and len(m.samples) <= 32


def test_eta_is_labelled_and_resent_only_when_it_drifts(db: Path) -> None:
    from tether.view.snapshot import build, progress_text, same

    run = pp.four_phase.start(n=1, delay=0.001, tag="eta")
    run.wait(20)
    rec = run.snapshot()
    rec.status = tether.Status.RUNNING
    rec.phase, rec.done, rec.total = "analyzing", 10, 110
    a = build(rec, mode="stream", rate=2.0, now=1000.0)
    assert a["eta"] == pytest.approx(50.0) and a["eta_scope"] == "phase"
    rec.phase = "applying"  # the last declared phase: its ETA is the run's
    assert build(rec, mode="stream", rate=2.0, now=1000.0)["eta_scope"] == "run"
    rec.phase = "analyzing"
    assert same(build(rec, mode="stream", rate=2.0, now=1010.0), a)  # the countdown predicts it
    assert not same(build(rec, mode="stream", rate=1.0, now=1010.0), a)  # 100 s, not 40: resend
    assert not same(build(rec, mode="stream", rate=None, now=1010.0), a)  # stalled: no ETA
    # a phase without a total: what was counted, or nothing (never "summarising: 0")
    rec.total, rec.done = None, 0
    snap = build(rec, mode="stream", now=1000.0)
    assert progress_text(snap) == "" and "analyzing ·" in text_snapshot(snap)
    rec.done = 12
    assert progress_text(build(rec, mode="stream", now=1000.0)) == "12 done"


# -- saved notebooks tell the end ------------------------------------------------------------

SAVED_CELLS = [
    "import tether\nfrom helpers import panel_pipelines as pp\ntether.configure(db={db!r})",
    "run = pp.four_phase.start(n=3, delay=0.05, tag='saved')\nrun",
    "failing = pp.evil.start(tag='saved')\nfailing",
    "dash = tether.dashboard()\ndash",
    # the ends are displayed by the poller thread: this cell waits until each display was replaced
    # (its fallback is final, and the lock it is replaced under is free), so nbclient hears it
    "from helpers.util import wait_until\n"
    "for w, lock in ((tether.panel(run), '_plock'), (tether.panel(failing), '_plock'), (dash, '_dlock')):\n"
    "    f = w.table if w is dash else w\n"
    "    wait_until(lambda: f.fallback.get('final'), what='a final display', timeout=60)\n"
    "    with getattr(w, lock):\n"
    "        pass",
]


@pytest.mark.slow
def test_an_executed_notebook_shows_how_each_run_ended(tmp_path: Path, child_env: dict[str, str]) -> None:
    """BUG (before): `jupyter nbconvert --execute` (nbclient, nbval) saved each panel's static
    text as it was when its cell ran: `four_phase #1 [running] ... 0/3`, and the dashboard as
    `<tether.dashboard ... rows=2>`. The panel's display is now updated (by its display id) when
    the run ends, and the dashboard's once its runs have all ended."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c.format(db=str(tmp_path / "nb.db"))) for c in SAVED_CELLS]
    env = {k: v for k, v in child_env.items() if k != "TETHER_DB"}
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(env=env)
    (ok,), (bad,), (dash,) = (nb.cells[i].outputs for i in (1, 2, 3))
    assert "[succeeded]" in ok["data"]["text/plain"], ok["data"]["text/plain"]
    assert 'data-status="succeeded"' in ok["data"]["text/html"]
    assert "[failed]" in bad["data"]["text/plain"] and "ValueError: bad input" in bad["data"]["text/plain"]
    assert "<img" not in bad["data"]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in ok["data"]  # still the live widget first
    html = dash["data"]["text/html"]
    assert "<table" in html and html.count("<tr data-run-id=") == 2
    assert 'data-status="running"' not in html and 'data-status="failed"' in html


def test_a_run_that_ends_while_its_panel_is_being_displayed_gets_that_display_replaced(
    db: Path, tmp_path: Path, fast_poller: poller.Poller, monkeypatch: Any
) -> None:
    """BUG (before, seen once in CI): the run ended after the panel's snapshot was rendered for a
    display but before the display's id was registered. The end's refresh found no display to
    replace and never looked again, so the saved notebook said `[running]` for a failed run."""
    import importlib

    mod = importlib.import_module("tether.widget.panel")
    sent: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        mod, "show", lambda data, **kw: sent.append(("show", kw["display_id"], data["text/plain"]))
    )
    monkeypatch.setattr(
        mod,
        "_update_displays",
        lambda displays, data, meta: sent.extend(("update", d, data["text/plain"]) for d, _ in displays),
    )
    gate = tmp_path / "gate"
    run = pp.gate.start(path=str(gate), tag="display race")
    w = panel(run)
    settle(w, "running", "stream")
    rendered = RunPanel._repr_mimebundle_

    def render_then_end(self: RunPanel, **kw: Any) -> Any:
        out = rendered(self, **kw)  # says running
        release(gate, "go")
        until(lambda: self.fallback.get("final"), what="the end refreshed before the display registers")
        return out

    monkeypatch.setattr(RunPanel, "_repr_mimebundle_", render_then_end)
    w._ipython_display_()
    (kind, display_id, text), *rest = sent
    assert kind == "show" and "[running]" in text
    assert [(k, d) for k, d, _ in rest] == [("update", display_id)], sent
    assert "[succeeded]" in rest[0][2]


def test_a_display_made_after_the_runs_ended_keeps_what_it_rendered(db: Path, monkeypatch: Any) -> None:
    """Only a display rendered before the runs settled (or the run ended) is replaced by the
    saved final text: a later one, e.g. of a dashboard filtered since, keeps its own."""
    import importlib

    mod = importlib.import_module("tether.widget.dashboard")
    shown: list[str] = []
    updates: list[str] = []
    monkeypatch.setattr(mod, "show", lambda data, **kw: shown.append(data["text/plain"].splitlines()[0]))
    monkeypatch.setattr(
        mod, "_update_displays", lambda d, data, meta: updates.append(data["text/plain"].splitlines()[0])
    )
    for i in range(2):
        pp.four_phase.start(n=1, delay=0, tag=f"settled {i}").result(timeout=60)
    d = dashboard()
    try:
        d._ipython_display_()
        d.table.status_filter = "succeeded"  # the same rows: nothing settles again
        d._ipython_display_()
    finally:
        d.close()
    assert "all statuses" in shown[0] and "succeeded" in shown[1]
    assert updates == [], updates


def test_an_active_runs_snapshot_beats_even_when_nothing_changes(
    db: Path, tmp_path: Path, fast_poller: poller.Poller, monkeypatch: Any
) -> None:
    """The front end can tell a quiet run from a kernel gone quiet (panel.js QUIET_MS) only if an
    active run's panel hears from the kernel now and then."""
    import importlib

    monkeypatch.setattr(importlib.import_module("tether.widget.panel"), "BEAT_S", 0.2)
    gate = tmp_path / "gate"
    run = pp.gate.start(path=str(gate), tag="beat")  # waits: nothing changes, nothing flushes
    w = panel(run)
    settle(w, "running", "stream")
    n0, t0 = w.updates, w.snapshot["now"]
    until(lambda: w.updates >= n0 + 3, what="three beats of an unchanged run", timeout=10)
    assert w.snapshot["now"] > t0 and w.snapshot["status"] == "running"
    release(gate, "go")
    settle(w, "succeeded", "static")
    n1 = w.updates
    for _ in range(3):
        w.refresh()  # an ended run does not beat
    assert w.updates == n1


def test_dashboards_do_not_pile_up_without_cell_ids(db: Path, monkeypatch: Any) -> None:
    import importlib

    dash_mod = importlib.import_module("tether.widget.dashboard")
    monkeypatch.setattr(dash_mod, "MAX_LIVE", 3)
    fresh = dash_mod.PerSession(list)  # the kernel's session, with no dashboard yet
    monkeypatch.setattr(tether.workspace.default().state(dash_mod.Dashboards), "live", fresh)
    made = [dashboard() for _ in range(5)]  # no kernel: no cell id
    assert [d._closed for d in made] == [True, True, False, False, False]
    for d in made[2:]:
        d.close()


# -- control: retries, timeouts, the queue, parents and children (issue 14) -------------------


@tether.pipeline(retries=2, retry_delay=0.5, retry_backoff=1.0, retry_on=(ConnectionError,))
def flaky_panel(ctx: tether.Context, log: str, fail: int) -> int:
    """Fails its first ``fail`` tries with a ConnectionError (counted in the file ``log``)."""
    ctx.phase("fetching", total=2)
    ctx.advance()
    tries = len(pp_lines(log)) + 1
    with open(log, "a") as fh:
        fh.write(f"try {tries}\n")
    if tries <= fail:
        raise ConnectionError(f"connection reset on try {tries}")
    ctx.advance()
    return tries


@tether.pipeline(phases=["loading"])
def kid_panel(ctx: tether.Context, name: str, gate: str = "") -> str:
    ctx.phase("loading", total=4)
    for _ in range(3):
        ctx.advance()
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        ctx.advance(0)
        time.sleep(0.01)
    ctx.advance()
    return name


@tether.pipeline
def family_panel(ctx: tether.Context, gate: str) -> list[str]:
    kids = [kid_panel.start(name="quick"), kid_panel.start(name="slow", gate=gate)]
    return [k.result(timeout=30) for k in kids]


@tether.pipeline(concurrency=1)
def queued_panel(ctx: tether.Context, gate: str, tag: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        ctx.advance(0)
        time.sleep(0.01)
    return tag


def pp_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines() if os.path.exists(path) else []


def recorder(w: RunPanel) -> list[dict[str, Any]]:
    """The panel's snapshot and every one it sends from now on (traitlets tells each change)."""
    sent: list[dict[str, Any]] = [w.snapshot]
    w.observe(lambda change: sent.append(change["new"]), names="snapshot")
    return sent


def test_a_retried_run_shows_its_tries_countdown_and_final_outcome(db: Path, tmp_path: Path) -> None:
    log = tmp_path / "tries.log"
    run = flaky_panel.start(log=str(log), fail=3)  # fails all 3 tries (retries=2)
    w = panel(run)
    sent = recorder(w)
    snap = settle(w, "failed", "static")
    assert pp_lines(str(log)) == ["try 1", "try 2", "try 3"]
    waits = [s for s in sent if s.get("retry_at") is not None]
    assert {(s["tries"], s["max_tries"]) for s in waits} == {(1, 3), (2, 3)}, waits
    first = next(s for s in waits if s["tries"] == 1)
    assert 0 < first["retry_at"] - first["now"] <= 0.5
    assert _snap.control_notes(first)[0].startswith("try 2 of 3 — next in ")
    assert first["try_errors"] == [
        {"try": 1, "type": "ConnectionError", "message": "connection reset on try 1"}
    ]
    # the end: no countdown, the outcome in words, every retried try's error kept
    assert snap["retry_at"] is None and (snap["tries"], snap["max_tries"]) == (3, 3)
    notes = _snap.control_notes(snap)
    assert notes[0] == "failed after 3 tries"
    assert notes[1:] == [
        "try 1: ConnectionError: connection reset on try 1",
        "try 2: ConnectionError: connection reset on try 2",
    ]
    assert snap["error"]["message"] == "connection reset on try 3"
    assert "failed after 3 tries" in text_snapshot(snap) and "failed after 3 tries" in html_snapshot(snap)

    ok = flaky_panel.start(log=str(tmp_path / "ok.log"), fail=1)
    snap = settle(panel(ok), "succeeded", "static")
    assert _snap.control_notes(snap)[0] == "succeeded on try 2 of 3"
    plain = settle(panel(pp.four_phase.start(n=1, delay=0, tag="no-retries")), "succeeded", "static")
    assert _snap.control_notes(plain) == [] and plain["try_errors"] == []


def test_countdown_and_overdue_texts_match_the_cli(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same stored state, said by the panel's snapshot and by `tether ls`."""
    from dataclasses import replace

    from tether import _ls
    from tether.model import Status

    run = pp.four_phase.start(n=1, delay=0, tag="texts")
    run.wait(20)
    rec = run.snapshot()
    now = time.time()
    waiting = replace(rec, status=Status.RUNNING, tries=1, max_tries=4, retry_at=now + 8.2, timeout=600.0)
    snap = _snap.build(waiting, mode="stream", now=now)
    assert _snap.control_notes(snap) == ["try 2 of 4 — next in 8 s"]
    assert _ls.status_text(waiting, now) == "running (try 2 of 4 in 8 s)"
    trying = replace(waiting, tries=2, retry_at=None)
    assert _snap.control_notes(_snap.build(trying, mode="stream", now=now)) == ["try 2 of 4"]
    late = replace(rec, status=Status.RUNNING, tries=1, max_tries=1, timeout=600.0, deadline=now - 12.1)
    snap = _snap.build(late, mode="stream", now=now)
    assert snap["overdue"] == pytest.approx(12.1)
    assert _snap.control_notes(snap) == [
        "past its timeout by 12 s (timeout 600 s per try): it stops at its next ctx call"
    ]
    assert _ls.status_text(late, now) == "running (past its timeout by 12 s)"
    # overdue grows with the clock (the front end counts it up): no re-send for that alone,
    # but one when it comes or goes
    later = _snap.build(late, mode="stream", now=now + 3)
    assert _snap.same(snap, later)
    assert not _snap.same(_snap.build(late, mode="stream", now=late.deadline - 1), snap)


def test_a_parent_lists_its_children_live_and_a_child_names_its_parent(db: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    parent = family_panel.start(gate=str(gate))
    w = panel(parent)
    until(
        lambda: (
            [c["status"] for c in w.snapshot["children"]] == ["succeeded", "running"]
            and w.snapshot["children"][1]["done"] == 3
        ),
        what=f"two children listed, one done (now {w.snapshot['children']})",
    )
    quick, slow = w.snapshot["children"]
    assert [k.id for k in parent.children()] == [quick["id"], slow["id"]]  # oldest first
    assert quick["pipeline"] == slow["pipeline"] == "test_panel.kid_panel"
    assert quick["params"] == "gate='', name='quick'"  # what tells children of one pipeline apart
    assert slow["params"].startswith("gate='/") and slow["params"].endswith("…, name='slow'")  # clipped
    assert (slow["done"], slow["total"], slow["percent"]) == (3, 4, 75.0)
    assert quick["percent"] == 100.0 and w.snapshot["children_count"] == {"succeeded": 1, "running": 1}
    assert w.snapshot["parent"] is None and w.snapshot["status"] == "running"

    child = panel(tether.get_run(slow["id"])).snapshot
    assert child["parent"] == {"id": parent.id, "pipeline": "test_panel.family_panel", "attempt": 1}
    assert f"started by test_panel.family_panel #1 (id {parent.id})" in _snap.control_notes(child)
    assert child["children"] == []

    release(gate, "go")
    snap = settle(w, "succeeded", "static")
    assert [c["status"] for c in snap["children"]] == ["succeeded", "succeeded"]
    text = text_snapshot(snap)
    assert (
        "children: 2 (2 succeeded)" in text
        and "test_panel.kid_panel #1 (gate='', name='quick')  succeeded  4/4 (100%)" in text
    )


def test_a_child_that_changed_is_read_again_within_the_throttle(db: Path, tmp_path: Path) -> None:
    """The parent's list of children is read at most once a second, unless a child this process
    runs says it changed: a child that then waits on a gate flushes nothing more, so without
    that the list would stay stale until the poller's safety poll."""
    from tether.view.control import ControlReader

    gate = tmp_path / "gate"
    parent = family_panel.start(gate=str(gate))
    until(lambda: len(parent.children()) == 2, what="two children started")
    reader = ControlReader(parent.store)
    reader.read(parent.snapshot())
    reads = reader.reads
    reader.read(parent.snapshot())
    assert reader.reads == reads  # within CHILDREN_EVERY: the list read a moment ago is kept
    reader.child_changed()
    reader.read(parent.snapshot())
    assert reader.reads == reads + 1
    release(gate, "go")
    parent.wait(20)


def test_a_queued_run_says_how_many_are_ahead(db: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    runs = [queued_panel.start(gate=str(gate), tag=str(i)) for i in range(3)]
    until(lambda: runs[0].status == "running")
    snaps = [panel(r).snapshot for r in runs]
    assert [s["ahead"] for s in snaps] == [None, 0, 1]
    assert _snap.control_notes(snaps[2])[0] == "queued — 1 ahead (concurrency=1)"
    release(gate, "go")
    for r in runs:
        assert settle(panel(r), "succeeded", "static")["ahead"] is None


def test_panels_are_kept_per_front_end_session() -> None:
    """A widget model lives in one session's comms (marimo run serves several sessions from one
    process; tests/ui/test_marimo_browser.py shows it in a browser): each session has its own
    panels, and a closed session's go with it."""
    import gc

    from tether.widget.panel import Panels, session

    class Session:  # what marimo's runtime context is to Panels: an object per session
        pass

    panels = Panels()
    one, two = Session(), Session()
    assert panels.of(one) is panels.of(one) and panels.of(one) is not panels.of(two)
    assert panels.of(None) is panels.of(None) is not panels.of(one)  # a Jupyter kernel: one session
    panels.of(one)[("db", "run-1")] = "panel of one"  # type: ignore[assignment]
    panels.of(two)[("db", "run-1")] = "panel of two"  # type: ignore[assignment]
    assert sorted(w for _k, w in panels.every()) == ["panel of one", "panel of two"]
    del one
    gc.collect()
    assert [w for _k, w in panels.every()] == ["panel of two"]
    assert session() is None  # outside marimo: the kernel's one session

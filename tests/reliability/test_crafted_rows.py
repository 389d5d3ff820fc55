"""Crafted or damaged rows (issue 11: items 9 and 10, and the panel snapshot cap of item 8).

Runs are made with tether, then their columns are overwritten with plain ``sqlite3`` (a hand edit,
another tool, a half-understood migration, an attacker who can write the file): text where a number
belongs, an impossible owner, non-object JSON, unknown statuses, HTML and terminal escapes. Every
reader must survive: listings show the row as damaged, a value that is needed is a typed
``StoreError`` naming the run and the column, HTML escapes every field, text/plain carries no
terminal control characters, and one damaged row never stops the recovery of the other runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import owner_pipelines, reliability_pipelines
from helpers.util import Children, raw, wait_until
from tether import owner
from tether.view.snapshot import html_snapshot, text_snapshot
from tether.widget import dashboard, panel

XSS = '<img src=x onerror="window.__tether_xss=1">'
ESC = "\x1b]0;pwned\x07\x1b[2J\rover\x9b31m\x7f"
HOST = socket.gethostname()
# a running row owned by a process of this host (the owner fields are overridden per case)
RUNNING = {
    "status": "running",
    "ended_at": None,
    "owner_host": HOST,
    "owner_pid": os.getpid(),
    "owner_started": 1.0,
    "owner_instance": "crafted-instance",
}

# case -> (columns to overwrite, a read of the value that needs the damaged column, or None)
CASES: dict[str, tuple[dict[str, Any], Callable[[tether.Run], Any] | None]] = {
    "done-text": ({"done": "abc"}, lambda r: r.progress),
    "total-text": ({"total": "many"}, lambda r: r.progress),
    "attempt-html": ({"attempt": "#1 " + XSS}, None),
    "owner-pid-negative": ({**RUNNING, "owner_pid": -1}, None),
    "owner-pid-zero": ({**RUNNING, "owner_pid": 0}, None),
    "owner-pid-text": ({**RUNNING, "owner_pid": "abc"}, None),
    "owner-pid-huge": ({**RUNNING, "owner_pid": 2**62}, None),
    "owner-started-text": ({**RUNNING, "owner_started": "then"}, None),
    "owner-host-null": ({**RUNNING, "owner_host": None}, None),
    "lease-text-remote-owner": ({**RUNNING, "owner_host": "elsewhere", "lease_until": "soon"}, None),
    "status-unknown": ({"status": "exploded"}, lambda r: r.status),
    "status-unknown-result": ({"status": "exploded"}, lambda r: r.result(timeout=5)),
    "phases-number": ({"phases": "7"}, lambda r: r.phases),
    "phases-object": ({"phases": '{"a": 1}'}, lambda r: r.phases),
    "phases-of-numbers": ({"phases": "[1, 2]"}, lambda r: r.phases),
    "phases-not-json": ({"phases": "[oops"}, lambda r: r.phases),
    "phases-done-string": ({"phases_done": '"abc"'}, lambda r: r.phases_done),
    "error-number": ({"status": "failed", "error": "7"}, lambda r: r.error),
    "error-list": ({"status": "failed", "error": '["x"]'}, lambda r: r.result(timeout=5)),
    "error-fields": (
        {"status": "failed", "error": '{"type": 5, "message": ["x"], "traceback": 3}'},
        lambda r: r.error,
    ),
    "params-list": ({"params": "[1, 2]"}, lambda r: r.params),
    "result-not-json": ({"result": "[1"}, lambda r: r.result(timeout=5)),
    "created-at-text": ({"created_at": "yesterday"}, None),
    "started-at-blob": ({"started_at": b"\x00\x01"}, None),
    "cancel-requested-text": ({"cancel_requested": "maybe"}, None),
    "message-blob": ({"message": b"\xff\xfe" + ESC.encode()}, lambda r: r.message),
    "phase-blob": ({"phase": b"\x1b[2J"}, lambda r: r.phase),
    "last-seq-text": ({"last_seq": "abc"}, None),
    "pipeline-blob": ({"pipeline": b"\x1b[2Jx"}, None),
}

# the column a case damages, where it is not the first one it writes
DAMAGED_COLUMN = {
    "owner-started-text": "owner_started",
    "owner-host-null": "owner_host",
    "lease-text-remote-owner": "lease_until",
    "error-number": "error",
    "error-list": "error",
    "error-fields": "error",
}
for _case, (_cols, _need) in CASES.items():
    if _case.startswith("owner-pid"):
        DAMAGED_COLUMN[_case] = "owner_pid"
# damage found only when the value is decoded (the JSON text looks like an object)
LAZY = {"error-fields", "result-not-json"}


# -- helpers --------------------------------------------------------------------------------------


def craft(db: Path, run_id: str, **cols: Any) -> None:
    """Overwrite columns of one run behind tether's back."""
    sets = ", ".join(f"{c} = ?" for c in cols)
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*cols.values(), run_id))
        conn.commit()


def cli(env: dict[str, str], db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether.cli", *args, "--db", str(db)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def controls(text: str, allowed: str = "\n") -> list[str]:
    """Terminal control characters (C0, DEL, C1) in ``text``, but for ``allowed``."""
    return sorted({c for c in text if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) and c not in allowed})


def check_html(html: str) -> None:
    assert "<img" not in html and "<script" not in html, html[:2000]
    assert "onerror=" not in html or "&lt;img" in html


def damaged_run(db: Path, case: str) -> tether.Run:
    run = reliability_pipelines.benign.start(tag=case)
    run.wait(timeout=30)
    craft(db, run.id, **CASES[case][0])
    return run


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    assert tether.runs() == []  # the database exists (and is migrated) before any child starts
    kids = Children(child_env, tmp_path, owner_pipelines.CHILD)
    yield kids
    kids.close()


def orphan(db: Path, children: Children, tmp_path: Path, tag: str) -> str:
    """A run whose owner (a real child process) was killed with SIGKILL while it ran."""
    proc = children.spawn(pipeline="gated", params={"gate": str(tmp_path / f"never-{tag}"), "lines": 1})

    def running() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"the child exited early: {proc.communicate()}")
        rows = raw(db, "SELECT id FROM runs WHERE status = 'running' AND owner_pid = ?", proc.pid)
        return rows[0][0] if rows else None

    run_id = wait_until(running, what=f"the run of pid {proc.pid}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return run_id


def status_of(db: Path, run_id: str) -> str:
    return raw(db, "SELECT status FROM runs WHERE id = ?", run_id)[0][0]


# -- every reader survives every damaged column ---------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_every_reader_shows_a_damaged_row_as_damaged(db: Path, case: str) -> None:
    """BUG (before): ``done='abc'`` -> ValueError in ls/show; ``owner_pid=-1`` -> ValueError from
    runs(), get_run(), the mimebundle and every recovery; non-object JSON -> AttributeError. Now
    listings show the row as damaged and the value that needs the column is a StoreError."""
    good = reliability_pipelines.benign.start(tag="good")
    good.wait(timeout=30)
    bad = damaged_run(db, case)
    column = DAMAGED_COLUMN.get(case) or next(iter(CASES[case][0]))

    listed = {r.id: r for r in tether.runs()}
    assert set(listed) == {good.id, bad.id}
    assert listed[good.id].damaged == ()
    for run in (listed[bad.id], tether.get_run(bad.id)):
        assert controls(repr(run), "") == []
        if case not in LAZY:
            assert "damaged" in repr(run)
            assert any(d.startswith(column + "=") for d in run.damaged), run.damaged
        bundle = run._repr_mimebundle_()
        assert "damaged" in bundle["text/plain"] and controls(bundle["text/plain"]) == []
        assert "damaged" in bundle["text/html"]
        check_html(bundle["text/html"])

    widget = panel(tether.get_run(bad.id))
    snap = widget.snapshot
    json.dumps(snap, allow_nan=False)
    assert snap["damaged"], snap
    data, _meta = widget._repr_mimebundle_()
    check_html(data["text/html"])
    assert controls(data["text/plain"]) == []
    table = dashboard()
    try:
        rows = {r["id"]: r for r in table.table.rows}
        assert bool(rows[bad.id]["damaged"]) is (case not in LAZY) and not rows[good.id]["damaged"]
        assert table.table.error == ""
    finally:
        table.close()

    store = tether.workspace.default().store()
    store.recover(store.active(), owner.gone_reason)  # the runner's sweep: no error
    assert raw(db, "SELECT status FROM runs WHERE id = ?", bad.id)[0][0] == (
        CASES[case][0].get("status") or "succeeded"
    )  # never acted on
    need = CASES[case][1]
    if need is not None:
        with pytest.raises(tether.StoreError) as info:
            need(tether.get_run(bad.id))
        assert bad.id in str(info.value)
        assert f"'{column}'" in str(info.value), str(info.value)
    assert good.result(timeout=5) == {"tag": "good"}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_show_of_a_damaged_row(db: Path, child_env: dict[str, str], case: str) -> None:
    """``tether show`` (text and JSON) of a damaged row: exit 0, the row marked damaged, no
    traceback, no control character."""
    bad = damaged_run(db, case)
    procs = [cli(child_env, db, "show", bad.id), cli(child_env, db, "show", bad.id, "--json")]
    (code, out, err), (jcode, jout, jerr) = (finished(p) for p in procs)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "damaged" in out and controls(out) == [], out
    assert jcode == 0 and "Traceback" not in jerr, jerr[-2000:]
    shown = json.loads(jout)
    assert shown["id"] == bad.id and shown["damaged"], shown


def test_cli_listings_and_gc_over_every_damaged_row(db: Path, child_env: dict[str, str]) -> None:
    """``tether ls`` (text and JSON) and ``tether gc`` over a database holding every damaged row
    at once: exit 0, every row listed, no traceback (before: ValueError/TypeError tracebacks)."""
    good = reliability_pipelines.benign.start(tag="good")
    good.wait(timeout=30)
    bad = {damaged_run(db, case).id for case in CASES}
    odd = reliability_pipelines.benign.start(tag="odd times")  # sound, but no calendar holds these times
    odd.wait(timeout=30)
    craft(db, odd.id, started_at=1e300, ended_at=-1e300, created_at=-1e300)
    procs = [
        cli(child_env, db, "show", odd.id),
        cli(child_env, db, "ls", "--limit", "100"),
        cli(child_env, db, "ls", "--json", "--limit", "100"),
        cli(child_env, db, "gc"),
    ]
    (ocode, oout, oerr), (code, out, err), (jcode, jout, jerr), (gcode, gout, gerr) = (
        finished(p) for p in procs
    )
    assert ocode == 0 and "Traceback" not in oerr and "1e+300" in oout, oerr[-2000:]
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert controls(out) == [] and out.count("damaged") >= len(bad) - 1, out
    assert jcode == 0 and "Traceback" not in jerr, jerr[-2000:]
    rows = {r["id"]: r for r in json.loads(jout)}
    assert set(rows) >= bad | {good.id}
    assert all(rows[i]["damaged"] for i in bad) and rows[good.id]["damaged"] == []
    assert gcode == 0 and "Traceback" not in gerr, gerr[-2000:]
    assert "marked 0 interrupted" in gout and controls(gout) == []


# -- events -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "7",
        "[1]",
        '"text"',
        "null",
        "{oops",
        b"\x80\x04K\x01.",
        '{"message": 5}',
        '{"message": "' + "\\u001b[2J" + '"}',
    ],
)
def test_a_damaged_event_is_marked_never_a_crash(db: Path, child_env: dict[str, str], data: Any) -> None:
    """BUG (before): non-object JSON in ``events.data`` -> AttributeError in run.logs(), the
    panel's reader and ``tether show``; broken JSON -> StoreError for the whole listing."""
    run = reliability_pipelines.benign.start(tag="events", log="")
    run.wait(timeout=30)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE events SET data = ? WHERE run_id = ? AND kind = 'log'", (data, run.id))
        conn.execute("UPDATE runs SET message = ? WHERE id = ?", ("\x1b[2J", run.id))  # last line
        conn.commit()
    proc = cli(child_env, db, "show", run.id)
    (log,) = [e for e in run.events() if e.kind == "log"]
    lines = run.logs()
    assert len(lines) == 1 and isinstance(lines[0], str)
    if isinstance(data, bytes) or not data.startswith('{"message"'):
        assert log.damaged and log.data == {} and "damaged" in lines[0], (log, lines)
    elif data == '{"message": 5}':
        assert "damaged" in lines[0]  # not text: marked, not passed off as the line "5"
    else:
        assert lines == ["\x1b[2J"]  # the API returns the stored text as it is
    assert run.logs(1) == lines
    fresh = tether.get_run(run.id)
    snap = panel(fresh).snapshot
    assert snap["log"] == [lines[0]]
    assert controls(fresh._repr_mimebundle_()["text/plain"]) == []
    code, out, err = finished(proc)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert controls(out) == []


# -- HTML and terminal escapes -----------------------------------------------------------------------


def test_every_html_output_escapes_every_field_and_text_carries_no_controls(
    db: Path, child_env: dict[str, str]
) -> None:
    """BUG (before): text in ``attempt`` reached the static text/html raw (``#1 <img ...>``), and
    text/plain (Run repr, mimebundles) passed ESC, BEL and CR from run text to the terminal.
    Hostile text in every field a row holds: attempt, phase, message, key, pipeline, params keys,
    phases, error."""
    run = reliability_pipelines.benign.start(tag="html")
    run.wait(timeout=30)
    craft(
        db,
        run.id,
        attempt="1 " + XSS,
        phase=XSS + ESC,
        message=XSS + ESC,
        key="k" + XSS + ESC,
        pipeline="p" + XSS + ESC,
        params=json.dumps({XSS + ESC: XSS + ESC}),
        phases=json.dumps([XSS + ESC, "b" + ESC]),
        status="failed",
        error=json.dumps({"type": XSS + ESC, "message": XSS + ESC, "traceback": XSS + ESC}),
    )
    fresh = tether.get_run(run.id)
    for text in (repr(fresh), repr(tether.runs()), repr(panel(fresh))):
        assert controls(text, "") == [] and "\\x1b" in text, text
    htmls, texts = [], []
    bundle = fresh._repr_mimebundle_()
    htmls.append(bundle["text/html"])
    texts.append(bundle["text/plain"])
    data, _meta = panel(fresh)._repr_mimebundle_()
    htmls.append(data["text/html"])
    texts.append(data["text/plain"])
    snap = panel(fresh).snapshot
    htmls.append(html_snapshot(snap))
    texts.append(text_snapshot(snap))
    for html in htmls:
        check_html(html)
        assert "&lt;img src=x" in html
    for text in texts:
        assert controls(text) == [], text
        assert "\\x1b" in text  # shown escaped, not dropped
    for args in (["ls"], ["show", run.id], ["show", run.id, "--json"], ["ls", "--json"]):
        code, out, err = finished(cli(child_env, db, *args))
        assert code == 0 and "Traceback" not in err, err[-2000:]
        assert controls(out) == [], (args, out)
    # the live widgets: their JS sets run text with textContent / setAttribute only (rendered in
    # a browser by tests/ui/test_panel_browser.py::test_run_text_is_never_html)
    static = Path(tether.__file__).parent / "widget" / "static"
    for script in static.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{script.name} uses {sink}"


# -- recovery goes on past a damaged row --------------------------------------------------------------


def _read_runs() -> None:
    tether.runs()


def _sweep() -> None:
    store = tether.workspace.default().store()
    store.recover(store.active(), owner.gone_reason)


def _gc(env: dict[str, str], db: Path) -> None:
    code, out, err = finished(cli(env, db, "gc"))
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "marked 1 interrupted" in out, out


@pytest.mark.parametrize("reader", ["runs", "sweep", "gc"])
def test_a_damaged_owner_never_stops_the_recovery_of_a_real_orphan(
    db: Path, child_env: dict[str, str], tmp_path: Path, children: Children, reader: str
) -> None:
    """BUG (before): one running row with ``owner_pid=-1`` made every recovery raise ValueError
    (psutil), so a genuinely orphaned run (its owner SIGKILLed) stayed ``running`` for good."""
    crafted = reliability_pipelines.benign.start(tag="crafted")
    crafted.wait(timeout=30)
    tether.workspace.default().close()  # no sweep of this process's runner: the reader under test recovers
    craft(db, crafted.id, **{**RUNNING, "owner_pid": -1})
    dead = orphan(db, children, tmp_path, "dead")
    {"runs": _read_runs, "sweep": _sweep, "gc": lambda: _gc(child_env, db)}[reader]()
    assert status_of(db, dead) == "interrupted"
    assert status_of(db, crafted.id) == "running"  # no provable owner: never acted on
    assert tether.get_run(crafted.id).damaged


def test_a_row_that_cannot_be_interrupted_does_not_stop_the_others(
    db: Path, child_env: dict[str, str], tmp_path: Path, children: Children
) -> None:
    """Two real orphans; one has a ``last_seq`` behind its stored events, so marking it
    interrupted hits the events' primary key. BUG (before): that IntegrityError rolled back the
    whole recovery (and was a traceback from ``tether gc``): the other orphan stayed running."""
    first = orphan(db, children, tmp_path, "first")
    second = orphan(db, children, tmp_path, "second")
    craft(db, first, last_seq=0)
    code, out, err = finished(cli(child_env, db, "gc"))
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert status_of(db, second) == "interrupted", out
    assert status_of(db, first) == "running"  # left as it was: its write failed, nothing half-done
    assert raw(db, "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'interrupted'", first) == [(0,)]
    tether.runs()  # and in-process: no error either
    assert status_of(db, first) == "running"


# -- the panel snapshot has a size cap ----------------------------------------------------------------


def test_panel_snapshot_stays_small_for_huge_runs(db: Path) -> None:
    """BUG (before): 100k phases gave 4.4 MiB of JSON per panel update. Every part of the snapshot
    is capped: phases (with a count of the hidden ones), log lines, message, error, result."""
    run = reliability_pipelines.benign.start(tag="huge")
    run.wait(timeout=30)
    names = [f"phase-{i:06d}" for i in range(100_000)]
    big = "m" * 50_000_000
    craft(
        db,
        run.id,
        phases=json.dumps(names),
        phases_done=json.dumps(names[:60_000]),
        phase=names[60_000],
        message=big,
        key="k" * 1_000_000,
        status="failed",
        error=json.dumps({"type": "T" * 100_000, "message": big[:5_000_000], "traceback": big[:5_000_000]}),
    )
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "UPDATE events SET data = ? WHERE run_id = ? AND kind = 'log'",
            (json.dumps({"message": big[:2_000_000]}), run.id),
        )
        seq = conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run.id,)).fetchone()[0]
        conn.executemany(
            "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, 1.0, 'log', NULL, ?)",
            [(run.id, seq + i, json.dumps({"message": big[:1_000_000]})) for i in range(1, 41)],
        )
        conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq + 40, run.id))
        conn.commit()
    snap = panel(tether.get_run(run.id)).snapshot
    size = len(json.dumps(snap))
    assert size < 64 * 1024, size
    assert snap["phases_hidden"]["before"] + snap["phases_hidden"]["after"] == 100_000 - len(snap["phases"])
    current = [p for p in snap["phases"] if p["state"] == "failed"]
    assert [p["name"] for p in current] == [names[60_000]]  # the phase that matters is kept
    bundle = tether.get_run(run.id)._repr_mimebundle_()
    assert len(bundle["text/html"]) < 64 * 1024 and len(bundle["text/plain"]) < 16 * 1024
    assert "more phases" in bundle["text/plain"]
    # a succeeded run's result preview is capped too
    ok = reliability_pipelines.chatty.start(lines=1, result_bytes=3_000_000)
    assert len(ok.result(timeout=30)) == 3_000_000
    assert len(json.dumps(panel(ok).snapshot)) < 64 * 1024

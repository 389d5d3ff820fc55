"""The `tether` CLI, run for real in subprocesses against a real database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import cli_pipelines

# -- pipelines whose runs the CLI looks at -------------------------------------------------------


@tether.pipeline(phases=["load", "crunch", "save"])
def cli_good(ctx, n: int):
    ctx.phase("load", total=n)
    ctx.advance(n)
    ctx.log("loaded %d", n)
    return {"n": n}


@tether.pipeline(phases=["load", "crunch", "save"])
def cli_bad(ctx, n: int):
    ctx.phase("load", total=2)
    ctx.advance(2)
    ctx.phase("crunch", total=10)
    for i in range(12):
        ctx.log("step %d of the crunch", i)
    ctx.advance(4)
    raise ValueError(f"boom {n}")


@tether.pipeline(phases=["spin"])
def cli_spin(ctx, tag: str):
    ctx.phase("spin")
    while True:
        ctx.advance()
        threading.Event().wait(0.002)


# -- helpers --------------------------------------------------------------------------------------


def cli(
    env: dict[str, str], *args: str, script: bool = False, lean: bool = False
) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` in a child process: through ``tether.cli``, the installed console script
    (``script``), or the console script's module, which runs `ls` without tether's ``__init__``
    (``lean``)."""
    if script:
        exe = Path(sys.executable).parent / "tether"
        assert exe.exists(), f"the tether console script is not installed next to {sys.executable}"
        cmd = [str(exe), *args]
    else:
        cmd = [sys.executable, "-m", "_tether_cli" if lean else "tether.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def ok(env: dict[str, str], *args: str, script: bool = False, lean: bool = False) -> str:
    out = cli(env, *args, script=script, lean=lean)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == ""
    return out.stdout


@pytest.fixture
def env(child_env, tmp_path):
    """Child environment whose TETHER_DB points elsewhere: every command must honour --db."""
    e = dict(child_env)
    e["TETHER_DB"] = str(tmp_path / "elsewhere" / "wrong.db")
    yield e
    assert not (tmp_path / "elsewhere").exists(), "a command used TETHER_DB instead of --db"


@pytest.fixture
def history(db) -> dict[str, Any]:
    """Two succeeded runs and a failed one, all ended."""
    good1 = cli_good.start(n=1)
    good1.wait(timeout=30)
    good2 = cli_good.start(n=2)
    good2.wait(timeout=30)
    bad = cli_bad.start(n=7)
    bad.wait(timeout=30)
    assert [good1.status, good2.status, bad.status] == ["succeeded", "succeeded", "failed"]
    return {"good1": good1, "good2": good2, "bad": bad}


def _rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "PIPELINE", "#", "STATUS"]
    return [line.split() for line in lines[1:]]


def _row(db: Path, run_id: str) -> tuple[str, float]:
    """(status, done) of a run, read with sqlite3 as another process would."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT status, done FROM runs WHERE id = ?", (run_id,)).fetchone()


def _status(db: Path, run_id: str) -> str:
    return _row(db, run_id)[0]


def _poll(fn: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def _spawn_hang(env: dict[str, str], marker: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A child process running cli_pipelines.hang; returns it and its run id once the run is running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", cli_pipelines.CHILD, str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the child never started its run"
        time.sleep(0.01)
    return proc, marker.read_text()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# -- ls -------------------------------------------------------------------------------------------


def test_ls_table_lists_runs_newest_first(db, env, history):
    out = ok(env, "ls", "--db", str(db))
    rows = _rows(out)
    assert [r[0] for r in rows] == [history["bad"].id, history["good2"].id, history["good1"].id]
    by_id = {r[0]: r for r in rows}
    assert by_id[history["bad"].id][1:5] == [cli_bad.name, "1", "failed", "crunch"]
    assert by_id[history["good1"].id][1:6] == [cli_good.name, "1", "succeeded", "load", "1/1"]
    assert not (Path(env["TETHER_DB"]).parent).exists(), "--db was not used instead of TETHER_DB"


def test_ls_filters_and_limit(db, env, history):
    rows = _rows(ok(env, "ls", "--db", str(db), "--status", "failed"))
    assert [r[0] for r in rows] == [history["bad"].id]
    rows = _rows(ok(env, "ls", "--db", str(db), "--pipeline", cli_good.name))
    assert [r[0] for r in rows] == [history["good2"].id, history["good1"].id]
    rows = _rows(ok(env, "ls", "--db", str(db), "--limit", "1"))
    assert [r[0] for r in rows] == [history["bad"].id]
    rows = _rows(
        ok(env, "ls", "--db", str(db), "--pipeline", cli_good.name, "--status", "succeeded", "--limit", "1")
    )
    assert [r[0] for r in rows] == [history["good2"].id]
    assert "no runs" in ok(env, "ls", "--db", str(db), "--status", "cancelled")


def test_ls_json(db, env, history):
    data = json.loads(ok(env, "ls", "--db", str(db), "--json"))
    assert [d["id"] for d in data] == [history["bad"].id, history["good2"].id, history["good1"].id]
    good2 = data[1]
    assert good2["status"] == "succeeded"
    assert good2["params"] == {"n": 2}
    assert good2["result"] == {"n": 2}
    assert good2["pipeline"] == cli_good.name
    bad = data[0]
    assert bad["error"]["type"] == "ValueError"
    assert json.loads(ok(env, "ls", "--db", str(db), "--json", "--status", "interrupted")) == []


def test_installed_console_script(db, env, history):
    data = json.loads(ok(env, "ls", "--db", str(db), "--json", "--limit", "2", script=True))
    assert [d["id"] for d in data] == [history["bad"].id, history["good2"].id]


def test_ls_lean_process_prints_what_the_full_cli_prints(db, env, history):
    """The console script lists in a process that loads no engine: the same table, damaged rows
    and control characters included; JSON and errors are the full CLI's."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE runs SET phases = 'oops' WHERE id = ?", (history["good1"].id,))  # not shown
        conn.execute("UPDATE runs SET params = 'not json' WHERE id = ?", (history["good2"].id,))
        conn.execute("UPDATE runs SET phase = 'x\x1b[2Jy' WHERE id = ?", (history["bad"].id,))
        conn.commit()
    for args in (["ls"], ["ls", "--wide"], ["ls", "--status", "failed"], ["ls", "--pipeline", cli_good.name]):
        lean = ok(env, *args, "--db", str(db), lean=True)
        assert lean == ok(env, *args, "--db", str(db)), args
    lean = ok(env, "ls", "--db", str(db), lean=True)
    rows = {r[0]: r for r in _rows(lean)}
    assert rows[history["good1"].id][3:5] == ["succeeded", "(damaged)"]
    assert rows[history["good2"].id][-1] == "(damaged)"
    assert "x\\x1b[2Jy" in lean and "\x1b" not in lean
    assert "2 damaged row(s)" in lean
    assert ok(env, "ls", "--json", "--db", str(db), lean=True) == ok(env, "ls", "--json", "--db", str(db))
    missing = cli(env, "ls", "--db", str(db.parent / "typo.db"), lean=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("tether: error:") and missing.stderr.count("\n") == 1
    assert not (db.parent / "typo.db").exists()


def test_ls_lean_process_imports_no_engine(db, env, history):
    code = (
        "import sys; from _tether_cli import main; status = main(); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('tether'))), file=sys.stderr); "
        "sys.exit(status)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "ls", "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and history["bad"].id in out.stdout, out.stderr
    loaded = set(out.stderr.split())
    assert {"tether._ls", "tether.store"} <= loaded
    assert not loaded & {
        "tether.workspace",
        "tether.runner",
        "tether.context",
        "tether.run",
        "tether.cli",
        "tether.view",
    }


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "full"])
def test_ls_marks_an_orphan_interrupted_before_listing_it(db, env, child_env, tmp_path, lean):
    tether.configure(sweep_interval=3600)  # only the listing may find the orphan
    proc, orphan = _spawn_hang(child_env, tmp_path / "hang.id")
    _kill(proc)
    assert _status(db, orphan) == "running"
    rows = {r[0]: r for r in _rows(ok(env, "ls", "--db", str(db), lean=lean))}
    assert rows[orphan][3] == "interrupted"
    assert _status(db, orphan) == "interrupted"


# -- show -----------------------------------------------------------------------------------------


def test_show_failed_run(db, env, history):
    bad = history["bad"]
    out = ok(env, "show", bad.id, "--db", str(db))
    lines = out.splitlines()
    assert f"run       {bad.id}  ({cli_bad.name}, attempt 1)" in lines
    assert "status    failed" in lines
    assert "phases    [x] load  [!] crunch  [ ] save" in lines
    assert "phase     crunch  progress 4/10 (40%)" in lines
    assert "last 10 log lines:" in lines
    assert "step 11 of the crunch" in out and "step 2 of the crunch" in out
    assert "step 1 of the crunch" not in out
    assert "error     ValueError: boom 7" in lines
    assert "Traceback (most recent call last):" in lines
    assert 'raise ValueError(f"boom {n}")' in out
    assert lines[-1] == "ValueError: boom 7"


def test_show_lines_and_json(db, env, history):
    bad = history["bad"]
    out = ok(env, "show", bad.id, "--db", str(db), "--lines", "2")
    assert "last 2 log lines:" in out
    assert "step 10 of the crunch" in out and "step 11 of the crunch" in out
    assert "step 9 of the crunch" not in out
    data = json.loads(ok(env, "show", bad.id, "--db", str(db), "--json"))
    assert data["id"] == bad.id
    assert data["status"] == "failed"
    assert (data["phase"], data["done"], data["total"]) == ("crunch", 4, 10)
    assert data["error"]["message"] == "boom 7"
    assert "Traceback" in data["error"]["traceback"]


def test_show_succeeded_run(db, env, history):
    good = history["good2"]
    out = ok(env, "show", good.id, "--db", str(db))
    assert "status    succeeded" in out.splitlines()
    assert "phases    [x] load  [ ] crunch  [ ] save" in out.splitlines()
    assert "loaded 2" in out
    assert 'result    {"n": 2}' in out.splitlines()
    assert "error" not in out


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_running_run_from_another_process(db, env):
    run = cli_spin.start(tag="x")
    try:
        assert _poll(lambda: _status(db, run.id) == "running")
        out = ok(env, "cancel", run.id, "--db", str(db))
        asked = time.monotonic()
        assert f"{run.id}: cancel requested" in out
        assert f"pid {os.getpid()}" in out
        run.wait(timeout=10)
        print(f"cross-process cancel took {time.monotonic() - asked:.3f} s after the CLI returned")
    finally:
        run.cancel()
    assert run.status == "cancelled"
    assert "cancel_requested" in [e.kind for e in run.events()]
    # cancelling an ended run is a no-op that reports its status
    assert ok(env, "cancel", run.id, "--db", str(db)).strip() == f"{run.id}: cancelled"


def test_cancel_run_of_dead_owner_ends_it_at_once(db, env, child_env, tmp_path):
    proc, run_id = _spawn_hang(child_env, tmp_path / "hang.id")
    _kill(proc)
    assert _status(db, run_id) == "running"
    out = ok(env, "cancel", run_id, "--db", str(db))
    assert out.strip() == f"{run_id}: cancelled"
    assert _status(db, run_id) == "cancelled"


def test_cancel_ended_run_reports_status(db, env, history):
    good = history["good1"]
    assert ok(env, "cancel", good.id, "--db", str(db)).strip() == f"{good.id}: succeeded"
    assert _status(db, good.id) == "succeeded"


# -- gc -------------------------------------------------------------------------------------------


def test_gc_interrupts_orphans_only(db, env, child_env, tmp_path):
    tether.configure(sweep_interval=3600)  # this process must not sweep the orphan before gc does
    live = cli_spin.start(tag="live")
    try:
        # once this process has flushed progress, its first (and, here, only) sweep is done
        assert _poll(lambda: _row(db, live.id)[1] > 0)
        proc, orphan = _spawn_hang(child_env, tmp_path / "hang.id")
        _kill(proc)
        assert _status(db, orphan) == "running"
        out = ok(env, "gc", "--db", str(db))
        assert f"{orphan} ({cli_pipelines.hang.name}) interrupted: " in out
        assert f"pid {proc.pid}" in out
        assert "checked 2 active run(s); marked 1 interrupted" in out
        assert _status(db, orphan) == "interrupted"
        assert _status(db, live.id) == "running"
        out = ok(env, "gc", "--db", str(db))
        assert "checked 1 active run(s); marked 0 interrupted" in out
    finally:
        live.cancel()
    live.wait(timeout=10)
    assert live.status == "cancelled"


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "cancel"])
def test_unknown_id_is_a_one_line_error_exit_2(db, env, history, command):
    out = cli(env, command, "nosuchrun", "--db", str(db))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.endswith("\n")
    assert out.stderr.startswith("tether: error:")
    assert "nosuchrun" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args", [["ls"], ["ls", "--json"], ["show", "abc"], ["cancel", "abc"], ["gc"]], ids=lambda a: "-".join(a)
)
def test_non_sqlite_db_is_a_one_line_error_exit_1(db, env, tmp_path, args):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 20)
    before = path.read_bytes()
    out = cli(env, *args, "--db", str(path))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("tether: error:")
    assert "not a SQLite database" in out.stderr
    # the fix names the CLI's flag, not the Python API's configure()
    assert out.stderr.rstrip().endswith("Point tether at another file with --db PATH.")
    assert "configure" not in out.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

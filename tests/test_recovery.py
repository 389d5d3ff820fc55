"""Owners that die: SIGKILL, zombies, interpreter exit with a run in flight, and ``tether gc``.

The owner of each run is a real child process (``helpers.owner_pipelines.child``). Until the test has
checked recovery, this process reads the database with plain sqlite3 (or psycopg: every test runs
on PostgreSQL too) only, so that no tether call recovers a run before the one under test does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import tether
from helpers import owner_pipelines
from helpers.postgres import BOTH_BACKENDS
from helpers.util import Children, intact, raw, stop_outside_a_write, wait_until, write

pytestmark = BOTH_BACKENDS


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    assert tether.runs() == []  # the database exists (and is migrated) before any child starts
    kids = Children(child_env, tmp_path, owner_pipelines.CHILD)
    yield kids
    kids.close()


def run_of(db: Path, pipeline: tether.Pipeline, proc: subprocess.Popen[str]) -> str:
    """The id of the run ``proc`` owns, once it is running (read without tether)."""

    def found() -> str | None:
        rows = raw(
            db,
            "SELECT id FROM runs WHERE pipeline = ? AND status = 'running' AND owner_pid = ?",
            pipeline.name,
            proc.pid,
        )
        if proc.poll() is not None:
            raise AssertionError(f"the child exited early: {proc.communicate()}")
        return rows[0][0] if rows else None

    return wait_until(found, what=f"a running run of {pipeline.name} in pid {proc.pid}")


def logged(db: Path, run_id: str) -> int:
    return raw(db, "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'log'", run_id)[0][0]


def crash_mid_run(
    db: Path, children: Children, tag: str, reap: bool = True
) -> tuple[subprocess.Popen[str], str, list[tether.Event]]:
    """A child running ``crashy`` killed with SIGKILL once it has flushed a few log lines.

    Returns the process, the run id, and the events stored just before the kill.
    """
    proc = children.spawn(pipeline="crashy", params={"tag": tag})
    run_id = run_of(db, owner_pipelines.crashy, proc)
    wait_until(lambda: logged(db, run_id) >= 5, what="five flushed log lines")
    before = tether.workspace.default().store().events(run_id)  # the store's plain read: no recovery
    os.kill(proc.pid, signal.SIGKILL)
    if reap:
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    return proc, run_id, before


def check_events(events: list[tether.Event], before: list[tether.Event], last: str) -> None:
    """Events survive the crash up to the last flush, seq contiguous from 1, ``last`` at the end."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[: len(before)] == before
    assert events[0].kind == "created" and events[1].kind == "started"
    assert events[-1].kind == last
    assert [e.kind for e in events].count(last) == 1
    messages = [e.data["message"] for e in events if e.kind == "log"]
    assert len(messages) >= 5
    assert messages == [f"line {i}" for i in range(len(messages))]  # no gap, no duplicate


def test_sigkill_mid_run_is_interrupted_on_the_next_get_run(db: Path, children: Children) -> None:
    _, run_id, before = crash_mid_run(db, children, "get-run")
    assert raw(db, "SELECT status FROM runs WHERE id = ?", run_id) == [("running",)]

    t0 = time.monotonic()
    run = tether.get_run(run_id)
    status = run.status
    elapsed = time.monotonic() - t0
    assert status == "interrupted"
    assert elapsed < 1.0, f"recovery took {elapsed:.2f} s"

    check_events(run.events(), before, "interrupted")
    assert run.error is not None and run.error["type"] == "Interrupted"
    with pytest.raises(tether.RunInterrupted):
        run.result(timeout=1)
    assert [r.status for r in tether.runs()] == ["interrupted"]


def test_start_after_sigkill_returns_the_interrupted_run_and_rerun_succeeds(
    db: Path, children: Children
) -> None:
    _, run_id, before = crash_mid_run(db, children, "start")

    t0 = time.monotonic()
    again = owner_pipelines.crashy.start(tag="start")  # policy="attach": the ended run, as it is
    elapsed = time.monotonic() - t0
    assert again.id == run_id
    assert again.status == "interrupted"
    assert elapsed < 1.0, f"start() took {elapsed:.2f} s"
    check_events(again.events(), before, "interrupted")
    assert owner_pipelines.crashy.start(tag="start").id == run_id  # still no new attempt

    second = owner_pipelines.crashy.start(tag="start", policy="rerun")
    assert second.attempt == 2 and second.id != run_id
    assert second.result(timeout=30) == {"attempt": 2, "pid": os.getpid()}
    assert [(r.attempt, str(r.status)) for r in second.attempts()] == [(1, "interrupted"), (2, "succeeded")]


def test_cancel_of_a_run_whose_owner_is_dead_ends_it_at_once(db: Path, children: Children) -> None:
    proc = children.spawn(pipeline="crashy", params={"tag": "cancel-dead"})
    run_id = run_of(db, owner_pipelines.crashy, proc)
    wait_until(lambda: logged(db, run_id) >= 5, what="five flushed log lines")
    run = tether.get_run(run_id)  # a handle taken while the owner lives
    assert run.status == "running"
    before = run.events()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    t0 = time.monotonic()
    run.cancel()
    status = run.status  # no waiting: it has ended already
    elapsed = time.monotonic() - t0
    assert status == "cancelled"
    assert elapsed < 1.0
    check_events(run.events(), before, "cancelled")
    with pytest.raises(tether.RunCancelled):
        run.result(timeout=1)


def test_a_zombie_owner_counts_as_dead(db: Path, children: Children) -> None:
    proc, run_id, before = crash_mid_run(db, children, "zombie", reap=False)
    wait_until(
        lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE,
        what="the killed child to become a zombie",
    )
    assert psutil.pid_exists(proc.pid)  # not reaped: the pid still exists, as a zombie

    t0 = time.monotonic()
    status = tether.get_run(run_id).status
    elapsed = time.monotonic() - t0
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE  # still unreaped when seen
    assert status == "interrupted"
    assert elapsed < 1.0
    check_events(tether.get_run(run_id).events(), before, "interrupted")
    proc.wait(timeout=30)


def check_interrupted_at_exit(db: Path, run_id: str) -> None:
    """What a child wrote about its run on its way out (nothing in this process has looked yet)."""
    status, error = raw(db, "SELECT status, error FROM runs WHERE id = ?", run_id)[0]
    assert status == "interrupted", (status, json.loads(error or "{}").get("message"))
    assert json.loads(error)["type"] == "Interrupted"
    events = raw(db, "SELECT seq, kind, data FROM events WHERE run_id = ? ORDER BY seq", run_id)
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    assert [e[1] for e in events].count("interrupted") == 1 and events[-1][1] == "interrupted"
    assert "exit" in json.loads(events[-1][2])["reason"]  # the child's reason, not an orphan sweep


EXITS = [("exit", 0), ("sysexit", 3), ("raise", 1)]  # fall off the end, sys.exit(3), raise


@pytest.mark.parametrize(("mode", "code"), EXITS, ids=[m for m, _ in EXITS])
def test_interpreter_exit_with_a_blocked_run_in_flight_marks_it_interrupted(
    db: Path, children: Children, tmp_path: Path, mode: str, code: int
) -> None:
    # the child exits once its run waits for a file (no progress calls)
    proc = children.spawn(
        pipeline="gated", params={"gate": str(tmp_path / "never")}, mode=mode, phase="applying"
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    if mode == "raise":
        assert "the main thread died with a run in flight" in err
    rows = raw(db, "SELECT id FROM runs")
    assert len(rows) == 1
    check_interrupted_at_exit(db, rows[0][0])
    assert intact(db)
    assert tether.get_run(rows[0][0]).status == "interrupted"


def test_interpreter_exit_while_the_body_keeps_reporting_progress_marks_it_interrupted(
    db: Path, children: Children
) -> None:
    # The shutdown asks the body to stop, and the body's next ctx.advance() raises: the run must
    # still end "interrupted" (the process exited), never "cancelled" (nobody cancelled it).
    # Which of the two threads gets there first is a race, so several children each try it.
    procs = [
        (
            children.spawn(pipeline="spinner", params={"tag": f"{mode}{i}"}, mode=mode, phase="spinning"),
            mode,
            code,
        )
        for i in range(3)
        for mode, code in EXITS
    ]
    for proc, _, code in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
    ids = [r[0] for r in raw(db, "SELECT id FROM runs ORDER BY created_at")]
    assert len(ids) == len(procs)
    statuses = raw(db, "SELECT status, count(*) FROM runs GROUP BY status")
    assert statuses == [("interrupted", len(procs))], statuses
    for run_id in ids:
        check_interrupted_at_exit(db, run_id)
    assert intact(db)


def test_gc_cli_reports_and_marks_orphans(
    db: Path, children: Children, tmp_path: Path, child_env: dict[str, str]
) -> None:
    gate = tmp_path / "gate"
    alive = children.spawn(pipeline="gated", params={"gate": str(gate)})
    alive_id = run_of(db, owner_pipelines.gated, alive)
    _, dead_id, _ = crash_mid_run(db, children, "gc")

    def gc(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "gc", "--db", str(db)],
            env=child_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = gc(sys.executable, "-m", "tether.cli")
    assert first.returncode == 0, first.stderr
    assert dead_id in first.stdout and "interrupted" in first.stdout
    assert alive_id not in first.stdout
    assert "checked 2 active run(s); marked 1 interrupted" in first.stdout
    assert raw(db, "SELECT id, status FROM runs ORDER BY status") == [
        (dead_id, "interrupted"),
        (alive_id, "running"),
    ]

    script = Path(sys.executable).with_name("tether")
    second = gc(str(script)) if script.exists() else gc(sys.executable, "-m", "tether.cli")
    assert second.returncode == 0, second.stderr
    assert "checked 1 active run(s); marked 0 interrupted" in second.stdout

    gate.touch()
    assert tether.get_run(alive_id).result(timeout=30)["pid"] == alive.pid
    alive.communicate(timeout=30)
    assert alive.returncode == 0


def test_a_live_owner_on_this_host_keeps_its_run_even_with_an_expired_lease(
    db: Path, children: Children
) -> None:
    """On this host a live pid is proof of life: a stopped process (SIGSTOP, a body holding the
    GIL) whose lease ran out is not recovered by a neighbour; once it is dead, it is."""
    proc = children.spawn(pipeline="crashy", params={"tag": "stopped"})
    run_id = run_of(db, owner_pipelines.crashy, proc)
    stop_outside_a_write(proc, db)
    try:
        write(db, "UPDATE runs SET lease_until = 1 WHERE id = ?", run_id)  # ran out long ago
        assert tether.get_run(run_id).status == "running"
        assert [r.id for r in tether.runs(status="running")] == [run_id]
        assert (
            tether.workspace.default()
            .store()
            .recover(tether.workspace.default().store().active(), tether.owner.gone_reason)
            == []
        )
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert tether.get_run(run_id).status == "interrupted"


def test_an_owner_on_another_host_is_gone_once_its_lease_expires(db: Path, children: Children) -> None:
    proc = children.spawn(pipeline="crashy", params={"tag": "remote"})
    run_id = run_of(db, owner_pipelines.crashy, proc)
    stop_outside_a_write(proc, db)
    try:
        write(  # pretend the owner lives on another machine
            db,
            "UPDATE runs SET owner_host = 'elsewhere', lease_until = ? WHERE id = ?",
            time.time() + 60,
            run_id,
        )
        assert tether.get_run(run_id).status == "running"  # lease still valid
        write(db, "UPDATE runs SET lease_until = ? WHERE id = ?", time.time() - 1, run_id)
        run = tether.get_run(run_id)
        assert run.status == "interrupted"
        assert "lease" in run.error["message"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)

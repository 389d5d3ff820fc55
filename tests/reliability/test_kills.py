"""SIGKILL at random and at chosen moments, recovery from another process, invariant checks.

The harness (``reliability.harness``, also behind ``bench/soak.py``) does the work; here it runs a
short version (~30 kills), and a scripted lineage shows that its checks catch each kind of
violation, so a pass means something. Interpreter exit with runs in flight (normal exit,
SystemExit, an exception in the main thread) is covered by tests/test_recovery.py.

``TETHER_KILL_SEED=<n>`` replays the plan choices of a failed run (the timings differ).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reliability import harness
from reliability.harness import Checker, KillHarness, Plan

pytestmark = pytest.mark.slow

CATALOG = {
    f"trip {op} {when}-commit"
    for op in [*harness.TRIP_OPS, "interrupt_own", "new_attempt"]
    for when in ("pre", "post")
} | {f"point {p}" for p in harness.POINTS}


def test_sigkill_at_random_and_chosen_moments_keeps_every_invariant(tmp_path: Path) -> None:
    seed = int(os.environ["TETHER_KILL_SEED"]) if os.environ.get("TETHER_KILL_SEED") else None
    rep = KillHarness(tmp_path, kills=30, seed=seed, parallel=3).run()
    summary = "\n".join(rep.lines())
    assert rep.violations == [], f"{summary}\n" + "\n".join(rep.violations[:30])
    assert rep.kills >= 30, summary
    assert rep.unfired == [], summary  # every chosen moment was reached and killed at least once
    assert set(rep.kills_by) >= CATALOG, summary
    assert rep.checks > 1000, summary
    assert rep.statuses["running"] == rep.statuses["pending"] == 0, summary
    assert rep.statuses["succeeded"] >= 1 and rep.statuses["interrupted"] >= 1, summary


def test_interpreter_exit_during_ctx_map_marks_the_run_interrupted_not_failed(tmp_path: Path) -> None:
    """A script ends while its run is inside ``ctx.map``: the run must end ``interrupted`` by the
    exit (as with any other body, see tests/test_recovery.py), not ``failed``.

    concurrent.futures registers its exit hook with ``threading._register_atexit``; it runs
    before tether's ``atexit`` hook, sets "no new futures" and joins the pool's busy workers. The
    body, still running, reaches its next ``ctx.map`` and ``submit()`` raises RuntimeError, which
    is recorded as the run's failure before tether marks it interrupted.
    """
    db, marker = tmp_path / "runs.db", tmp_path / "item-started"
    spec = json.dumps({"db": str(db), "marker": str(marker), "hold": 0.5})
    code = "import sys; from reliability.harness import exit_in_map; exit_in_map(sys.argv[1])"
    out = subprocess.run(
        [sys.executable, "-c", code, spec],
        env=harness.child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.splitlines()[0])["id"]
    conn = harness.connect(db)
    assert conn is not None
    status, error = conn.execute("SELECT status, error FROM runs WHERE id = ?", (run_id,)).fetchone()
    conn.close()
    message = json.loads(error or "{}").get("message")
    assert (status, "exited before the run ended" in (message or "")) == ("interrupted", True), (
        status,
        message,
    )


# -- the checks catch what they claim to catch -----------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A key whose attempt 1 was killed right after recording its steps and its first map items,
    and whose attempt 2 (a resume, started by another process) succeeded.

    Returns (db, journal, key)."""
    work = tmp_path_factory.mktemp("scripted")
    h = KillHarness(work, kills=0, parallel=1)
    try:
        db = work / "runs.db"
        lin = h.new_lineage(work)
        checker = Checker(db)
        first = h.drive_one(db, checker, lin, Plan("trip", 0.0, "put_checkpoints", "post"))
        assert first.was_killed
        second = h.drive_one(db, checker, lin, Plan("none"))
        assert not second.was_killed and second.rc == 0, second.stderr()
        key = harness.work.key_for(harness.work.bind(**lin.params))
        view = checker.check({key: lin.journal}, recovered=True)
        assert checker.violations == []
        runs = sorted(view.runs.values(), key=lambda r: r.attempt)
        assert [(r.attempt, r.status) for r in runs] == [(1, "interrupted"), (2, "succeeded")]
        recorded = set(view.checkpoints[runs[0].id])
        assert {"step:s0", "step:s1"} <= recorded
        assert any(name.startswith("map:items:") for name in recorded)
        assert checker.skipped >= 3  # attempt 2 did not execute them again
    finally:
        h.close()
    return db, lin.journal, key


def _copy(db: Path, journal: Path, to: Path) -> tuple[Path, Path]:
    to.mkdir()
    src = sqlite3.connect(db)
    dst = sqlite3.connect(to / "runs.db")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    shutil.copy(journal, to / journal.name)
    return to / "runs.db", to / journal.name


def _ids(db: Path) -> tuple[str, str]:
    conn = harness.connect(db)
    assert conn is not None
    rows = conn.execute("SELECT id FROM runs ORDER BY attempt").fetchall()
    conn.close()
    return rows[0][0], rows[1][0]


def _sql(*statements: str) -> Callable[[Path, Path], None]:
    def tamper(db: Path, _journal: Path) -> None:
        first, second = _ids(db)
        conn = sqlite3.connect(db)
        with conn:
            for sql in statements:
                conn.execute(sql.format(first=first, second=second))
        conn.close()

    return tamper


def _journal_line(kind: str, name: str, pid_of: str = "owner") -> Callable[[Path, Path], None]:
    """A journal line saying that attempt 2 executed ``name`` (``"recorded"``: a map item that
    attempt 1 recorded)."""

    def tamper(db: Path, journal: Path) -> None:
        first, second = _ids(db)
        conn = harness.connect(db)
        assert conn is not None
        pid = conn.execute("SELECT owner_pid FROM runs WHERE id = ?", (second,)).fetchone()[0]
        item = name
        if name == "recorded":
            cp = conn.execute(
                "SELECT name FROM checkpoints WHERE run_id = ? AND name LIKE 'map:items:%' ORDER BY name",
                (first,),
            ).fetchone()[0]
            item = cp.rsplit(":", 1)[1]
        conn.close()
        harness._append(str(journal), f"{kind} {item} {second} 2 {pid if pid_of == 'owner' else 1}")

    return tamper


TAMPERS = {
    "an event flushed before is lost": (
        _sql("DELETE FROM events WHERE run_id = '{first}' AND seq = 5"),
        "no longer a prefix",
    ),
    "a gap in seq": (_sql("UPDATE runs SET last_seq = last_seq + 1 WHERE id = '{second}'"), "not contiguous"),
    "a log line lost in the middle": (
        _sql(
            "UPDATE events SET data = json_set(data, '$.message', 'L9999') "
            "WHERE run_id = '{second}' AND seq = (SELECT min(seq) FROM events "
            "WHERE run_id = '{second}' AND kind = 'log')"
        ),
        "gap or duplicate",
    ),
    "a terminal status changes": (
        _sql("UPDATE runs SET status = 'failed' WHERE id = '{second}'"),
        "changed: succeeded -> failed",
    ),
    "two active runs for a key": (
        _sql("UPDATE runs SET status = 'running' WHERE id IN ('{first}', '{second}')"),
        "2 active runs",
    ),
    "a run still running after recovery": (
        _sql("UPDATE runs SET status = 'running' WHERE id = '{second}'"),
        "after recovery",
    ),
    "a recorded step executed again": (_journal_line("step", "s0"), "executed step:s0 again"),
    "a recorded map item executed again": (_journal_line("item", "recorded"), "executed map:items:"),
    "a step executed by another process": (_journal_line("step", "s3", pid_of="other"), "executed by pid 1"),
    "a checkpoint not copied on resume": (
        _sql("UPDATE checkpoints SET value = '{{}}' WHERE run_id = '{second}' AND name = 'step:s0'"),
        "not copied unchanged",
    ),
}


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_the_checks_catch(what: str, resumed: tuple[Path, Path, str], tmp_path: Path) -> None:
    db, journal, key = resumed
    tamper, expected = TAMPERS[what]
    db2, journal2 = _copy(db, journal, tmp_path / "copy")
    checker = Checker(db2)
    checker.check({key: journal2}, recovered=True)
    assert checker.violations == []
    tamper(db2, journal2)
    checker.check({key: journal2}, recovered=True)
    assert any(expected in v for v in checker.violations), json.dumps(checker.violations, indent=1)

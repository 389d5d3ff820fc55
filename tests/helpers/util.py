"""Test utilities shared by the test modules (the test process only): polling, raw reads, children."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
    """Poll ``pred`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def unavailable(why: str, ci: str | None = None) -> NoReturn:
    """Skip a test that cannot run here (``why``); under ``CI=true`` fail it instead, with ``ci``
    (or ``why``): CI installs everything the test suite needs, so a skip there hides a gap."""
    if os.environ.get("CI") == "true":
        pytest.fail(ci or f"CI must run this test: {why}")
    pytest.skip(why)


# Store helpers that open the transaction for several writes (PostgreSQL's write_run): a
# transaction is named after the write that called them (put_checkpoint...), not after the helper.
_SHARED_TX = frozenset({"write_run"})


def tx_caller(depth: int = 1) -> str:
    """The name of the store method that opened a transaction: called from a wrapper of
    ``Store.tx``, ``depth`` frames up from the caller, skipping shared helpers and contextlib."""
    frame = sys._getframe(depth + 1)
    while frame.f_back is not None and (
        frame.f_code.co_name in _SHARED_TX or frame.f_code.co_filename == contextlib.__file__
    ):
        frame = frame.f_back
    return frame.f_code.co_name


@contextlib.contextmanager
def counting_commits(store: Any) -> Iterator[list[str]]:
    """The store method (start, put_checkpoint, finish...) of each write transaction ``store``
    commits meanwhile, in order: each ``tx`` and each one-statement ``write_run`` (on
    PostgreSQL a ``tx`` of its own, counted once)."""
    commits: list[str] = []
    tx, write_run = store.tx, store.write_run

    def counting_tx(*scope: Any) -> Any:
        if sys._getframe(1).f_code.co_name != "write_run":  # counted there
            commits.append(tx_caller())
        return tx(*scope)

    def counting_write(*args: Any) -> Any:
        commits.append(tx_caller())
        return write_run(*args)

    store.tx, store.write_run = counting_tx, counting_write
    try:
        yield commits
    finally:
        del store.tx, store.write_run


class _Translated:
    """A psycopg connection (autocommit) that takes statements in SQLite's dialect, as
    sqlite3's does (tether.store._pg_dialect translates them; nothing else of tether is used)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        from tether.store._pg_dialect import arguments, translate

        text, order = translate(sql)
        return self.conn.execute(text, arguments(order, args))

    def close(self) -> None:
        self.conn.close()


def connect(db: str | os.PathLike[str]) -> Any:
    """A plain connection to the database, for reads behind tether's back: sqlite3's, or for a
    postgresql:// URL psycopg's taking the same statements."""
    if str(db).startswith("postgresql://"):
        return _Translated(str(db))
    return sqlite3.connect(db, timeout=30)


def raw(db: str | os.PathLike[str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the database with plain sqlite3 (no tether code, so no recovery on the way); a
    postgresql:// URL with psycopg, the statement translated from SQLite's dialect."""
    conn = connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class Children:
    """Child processes of one test; any still alive at teardown is killed and reaped.

    ``child`` is the argv (after the interpreter) of a helper module's ``child(spec_json)``."""

    def __init__(self, env: dict[str, str], cwd: Path, child: Sequence[str] = ()) -> None:
        self.env, self.cwd, self.child = env, cwd, list(child)
        self.procs: list[subprocess.Popen[str]] = []

    def popen(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def spawn(self, **spec: Any) -> subprocess.Popen[str]:
        """A ``child(spec)`` process of the helper module."""
        assert self.child, "Children(..., child=<argv of the helper's child()>)"
        return self.popen(*self.child, json.dumps(spec))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def stop_outside_a_write(proc: subprocess.Popen[str], db: str | os.PathLike[str], tries: int = 200) -> None:
    """SIGSTOP ``proc`` at a moment it is inside no write transaction on ``db``.

    A process stopped inside one holds SQLite's write lock (or PostgreSQL's row locks) until it is
    continued: every other writer waits, which is the database's behaviour and not what a test of
    a stopped owner is about. So: stop it, look; if it was writing, let it go on and try again."""
    pg = str(db).startswith("postgresql://")
    for _ in range(tries):
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: _all_stopped(proc.pid), timeout=10, what=f"process {proc.pid} stopped")
        if pg:
            writing = raw(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "AND datname = current_database() AND pid <> pg_backend_pid()",
            )[0][0]
        else:
            try:
                with contextlib.closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("ROLLBACK")
                writing = False
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                writing = True
        if not writing:
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)  # its transaction is a few statements: let it commit
    raise AssertionError(f"process {proc.pid} was inside a write transaction each of {tries} times")


def _all_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped: kill() returns before a thread running on another
    CPU has stopped, and it may take a lock meanwhile."""
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended
            continue
        if stat[stat.rindex(")") + 2] not in "tT":
            return False
    return True


def write(db: str | os.PathLike[str], sql: str, *args: Any) -> None:
    """A committed write behind tether's back (a hand edit), on either backend (see ``raw``)."""
    conn = connect(db)
    try:
        conn.execute(sql, args)
        if isinstance(conn, sqlite3.Connection):  # psycopg's is in autocommit
            conn.commit()
    finally:
        conn.close()


def intact(db: str | os.PathLike[str]) -> bool:
    """The database passes its integrity check (SQLite's; a server's database is never left
    half-written by a client that dies)."""
    if str(db).startswith("postgresql://"):
        return True
    return raw(db, "PRAGMA integrity_check") == [("ok",)]


def undo_active_index(conn: Any, migrations: str = "_sqlite_migrations") -> None:
    """Take a current database back to schema 0004 (0005_active_index undone: the indexes of
    every run by status instead of the partial index of the active ones)."""
    conn.execute("DROP INDEX runs_active")
    conn.execute("CREATE INDEX runs_status ON runs (status, created_at)")
    conn.execute("CREATE INDEX runs_queue ON runs (pipeline, status)")
    conn.execute(f"DELETE FROM {migrations} WHERE name = '0005_active_index'")


def undo_control_migration(conn: Any, migrations: str = "_sqlite_migrations") -> None:
    """Take a current database back to schema 0002 (0005_active_index, then 0003_control undone),
    as an older tether left it, to test the migration path (``conn``: a plain sqlite3 or psycopg
    connection; ``migrations``: the backend's table of applied migrations)."""
    undo_active_index(conn, migrations)
    conn.execute("DROP TABLE workers")
    conn.execute("DROP INDEX runs_parent")
    conn.execute("DROP INDEX runs_queue")
    for col in (
        "parent_id",
        "tries",
        "max_tries",
        "retry_at",
        "timeout",
        "deadline",
        "concurrency",
        "parked",
    ):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {col}")
    conn.execute(f"DELETE FROM {migrations} WHERE name = '0003_control'")

"""The database file is SQLite's alone (issue 11, item 1): tether never opens or closes a descriptor
of ``runs.db``, ``-wal`` or ``-shm`` outside SQLite.

POSIX locks belong to a process, not to a descriptor: closing *any* descriptor of a file drops every
lock the process holds on it, those of its SQLite connections included (SQLite's "How To Corrupt An
SQLite Database File", section 2.2). A process that has lost its locks looks gone to the others: the
next process to close its last connection believes it is the last user, checkpoints, and deletes
``-wal`` and ``-shm`` under the live connections. What the first process writes next goes to a WAL
nobody else sees (split brain), then fails with "disk I/O error", and its checkpoint at exit
overwrites what the others wrote meanwhile.

The scenario, with real processes: this test process plays the notebook kernel. It holds a
connection of its own to ``runs.db`` (``sqlite3.connect``, as docs/data.md suggests, or what pandas
``read_sql`` keeps) or an already open tether store, then tether opens the database (a new store: the
checks of an existing file run). Another process then uses the database and exits.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import tether
from helpers.util import raw


@tether.pipeline
def echo(ctx: tether.Context, v: str) -> str:
    ctx.log("echo %s", v)
    return v


_START_IN_CHILD = """
import sys, tether

@tether.pipeline
def echo(ctx, v: str) -> str:
    return v

tether.configure(db=sys.argv[1])
assert echo.start(v=sys.argv[2]).result(timeout=30) == sys.argv[2]
"""


def _child(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _start_in_child(env: dict[str, str], db: Path, v: str) -> None:
    _child(env, "-c", _START_IN_CHILD, str(db), v)


def _results_seen_by_another_process(env: dict[str, str], db: Path) -> list[str]:
    code = (
        "import json, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "rows = conn.execute(\"SELECT json_extract(result, '$') FROM runs WHERE status = "
        "'succeeded'\").fetchall()\n"
        "print(json.dumps(sorted(r[0] for r in rows)))\n"
    )
    out = _child(env, "-c", code, str(db))
    return sorted(__import__("json").loads(out.stdout))


@pytest.fixture
def held(
    request: pytest.FixtureRequest, db: Path, child_env: dict[str, str], tmp_path: Path
) -> Iterator[Path]:
    """An existing database, and a connection to it this process holds while tether opens it.
    Yields the path tether is pointed at."""
    _start_in_child(child_env, db, "created")  # the database exists, used and closed
    assert not Path(f"{db}-wal").exists()
    if request.param == "user-sqlite3":
        with closing(sqlite3.connect(db)) as user:  # the user's own read connection, kept open
            assert user.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]
            yield db
            # it still reads what everyone wrote
            assert user.execute("SELECT count(*) FROM runs").fetchall() == [(5,)]
    else:
        # tether's own connections are open (a run went through), then a second store opens the
        # same file under another name (a symlinked folder)
        assert echo.start(v="first").result(timeout=30) == "first"
        link = tmp_path / "link"
        link.symlink_to(tmp_path, target_is_directory=True)
        tether.configure(db=link / db.name)
        yield link / db.name


@pytest.mark.parametrize("held", ["user-sqlite3", "second-store"], indirect=True)
def test_opening_the_database_keeps_every_lock_of_the_process(
    held: Path, db: Path, child_env: dict[str, str]
) -> None:
    assert tether.runs(limit=1)  # tether opens the existing database: its checks run now
    assert echo.start(v="a").result(timeout=30) == "a"
    # another process uses the database and exits: it must not think it was the last user
    _child(child_env, "-m", "tether.cli", "ls", "--db", str(db))
    assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists(), (
        "another process deleted the WAL under this process's live connections: tether dropped "
        "this process's SQLite locks by closing a descriptor of the database"
    )
    # this process's writes are seen by the others, and theirs by this one
    assert echo.start(v="b").result(timeout=30) == "b"
    assert "b" in _results_seen_by_another_process(child_env, db)
    _start_in_child(child_env, db, "c")
    assert echo.start(v="d").result(timeout=30) == "d"
    assert {r.result() for r in tether.runs(status="succeeded")} >= {"a", "b", "c", "d"}
    expected = sorted(["created", "a", "b", "c", "d"] + (["first"] if held != db else []))
    tether.workspace.default().close()
    assert _results_seen_by_another_process(child_env, db) == expected
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]


def test_no_descriptor_of_the_database_is_opened_outside_sqlite(db: Path, child_env: dict[str, str]) -> None:
    """The mechanism, seen directly: after tether opened an existing database, every descriptor of
    this process on the file is one of SQLite's, so the process still holds its shared lock:
    another process cannot lock the file exclusively."""
    _start_in_child(child_env, db, "created")
    with closing(sqlite3.connect(db)) as user:
        user.execute("SELECT count(*) FROM runs").fetchall()
        tether.runs()
        code = (
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
            "conn.execute('PRAGMA locking_mode = EXCLUSIVE')\n"
            "try:\n"
            "    conn.execute('SELECT count(*) FROM runs').fetchall()\n"
            "    print('exclusive')\n"
            "except sqlite3.OperationalError as exc:\n"
            "    print('refused:', exc)\n"
        )
        out = _child(child_env, "-c", code, str(db))
        assert out.stdout.startswith("refused"), (
            "another process locked the database exclusively although this process holds "
            f"connections to it: {out.stdout}"
        )

"""The store: lazy opening, private files, refusing files that are not (current) tether databases
untouched, WAL, plain readable tables, JSON only (never pickle); and the Status/Progress model."""

from __future__ import annotations

import io
import json
import os
import pickletools
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

import tether
from tether import codec
from tether.model import Owner, Progress, RunRecord, Status
from tether.store import FlushItem, SQLiteStore

# -- helpers --------------------------------------------------------------------------------------


def _use(path: Path) -> None:
    """Point tether at ``path`` and use it: list runs, read every run's events, start a run."""
    tether.configure(db=path)
    for run in tether.runs(limit=None):
        run.events()
    _tiny.start(tag="probe")


@tether.pipeline
def _tiny(ctx, tag: str = ""):
    ctx.phase("only", total=1)
    ctx.advance()
    ctx.log("tiny %s", tag)
    return {"tag": tag}


def _real_db(db: Path, dest: Path, runs: int = 40) -> bytes:
    """A real tether database with some runs, copied (consistently, WAL included) to ``dest``."""
    for i in range(runs):
        assert _tiny.start(tag=f"r{i}").result(timeout=30) == {"tag": f"r{i}"}
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)
    tether.workspace.default().close()
    return dest.read_bytes()


def _refused(path: Path) -> str:
    """Use ``path`` through the public API; assert a StoreError and an untouched file."""
    before = path.read_bytes()
    with pytest.raises(tether.StoreError) as info:
        _use(path)
    assert path.read_bytes() == before, "tether changed a file it refused"
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


# -- opening --------------------------------------------------------------------------------------


def test_import_and_decorating_open_no_database(tmp_path):
    """`import tether`, `@tether.pipeline` and `configure()` create nothing; first use does."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env_db = tmp_path / "from_env" / "runs.db"
    conf_db = tmp_path / "configured" / "runs.db"
    code = textwrap.dedent(f"""
        import json, os, threading
        import tether

        @tether.pipeline(phases=["a"])
        def job(ctx, n: int = 1):
            return n

        tether.configure(db={str(conf_db)!r})
        seen = {{
            "cwd": sorted(os.listdir(".")),
            "env_db": os.path.exists({str(env_db.parent)!r}),
            "conf_db": os.path.exists({str(conf_db.parent)!r}),
            "threads": threading.active_count(),
        }}
        tether.runs()  # first use
        seen["after_use"] = os.path.exists({str(conf_db)!r})
        print(json.dumps(seen))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DB"}
    env["TETHER_DB"] = str(env_db)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"cwd": [], "env_db": False, "conf_db": False, "threads": 1, "after_use": True}
    # nothing appeared at exit either, except the configured database
    assert os.listdir(cwd) == []
    assert not env_db.parent.exists()


def test_import_alone_creates_no_default_database(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import tether\n@tether.pipeline\ndef f(ctx):\n    pass\n"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TETHER_DB"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_database_opens_on_first_use(db):
    assert not db.exists()
    assert tether.runs() == []
    assert db.exists()
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"


def test_created_folder_and_file_are_private(db, tmp_path):
    outer_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    path = tmp_path / "private" / "runs.db"
    tether.configure(db=path)
    assert _tiny.start(tag="x").result(timeout=30) == {"tag": "x"}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for side in ("-wal", "-shm"):  # the WAL holds data too (it exists while the store is open)
        extra = Path(str(path) + side)
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, side
    # a folder that already existed keeps its mode
    assert stat.S_IMODE(tmp_path.stat().st_mode) == outer_mode


# -- refusing files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(os.urandom(8192), id="random-bytes"),
        pytest.param(b"id,name\n1,hello\n" * 50, id="text"),
        pytest.param(b"SQLite format 2\x00" + bytes(4080), id="almost-header"),
    ],
)
def test_non_sqlite_file_is_refused_untouched(db, tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    message = _refused(path)
    assert "not a SQLite database" in message
    assert not Path(str(path) + "-wal").exists()


def test_a_fix_names_the_setting_as_data_in_the_apis_words(db, tmp_path):
    """The fix names the setting to change as data (``settings``); str() words it as the Python
    API sets it, and another front end passes its own words (the CLI's: tests/test_cli.py)."""
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100)
    tether.configure(db=path)
    with pytest.raises(tether.StoreError) as info:
        tether.runs()
    err = info.value
    assert err.settings == ("db",)
    assert str(err).endswith("Point tether at another file with tether.configure(db=...).")
    assert err.text({"db": "the DB field"}).endswith("Point tether at another file with the DB field.")
    assert err.text({}) == str(err)  # a setting a front end does not word: the API's words


def test_directory_is_refused(db, tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    tether.configure(db=folder)
    with pytest.raises(tether.StoreError, match="directory"):
        tether.runs()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("cut", ["header-only", "first-page", "half"])
def test_truncated_database_is_refused_untouched(db, tmp_path, cut):
    data = _real_db(db, tmp_path / "good.db")
    size = {"header-only": 100, "first-page": 4096, "half": len(data) // 2}[cut]
    path = tmp_path / "cut.db"
    path.write_bytes(data[:size])
    _refused(path)


def test_sqlite_header_followed_by_garbage_is_refused_untouched(db, tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8176))
    _refused(path)


@pytest.mark.parametrize("table", ["runs", "events"])
def test_corrupt_table_page_is_a_store_error(db, tmp_path, table):
    """Header and schema intact, but a table's pages are garbage: StoreError, not sqlite3's error."""
    data = bytearray(_real_db(db, tmp_path / "good.db"))
    with closing(sqlite3.connect(tmp_path / "good.db")) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data[(root - 1) * page : root * page] = b"\xff" * page
    path = tmp_path / "corrupt.db"
    path.write_bytes(bytes(data))
    message = _refused(path)
    assert "corrupt" in message or "malformed" in message


def test_sqlite_database_of_another_program_is_refused_untouched(db, tmp_path):
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        conn.commit()
    message = _refused(path)
    assert "not a tether" in message
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_other_sqlite_utils_app_with_a_runs_table_is_refused_untouched(db, tmp_path):
    """Another app using sqlite-utils migrations and a table called `runs` is not tether's."""
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE _sqlite_migrations (id INTEGER PRIMARY KEY, migration_set TEXT, "
            "name TEXT, applied_at TEXT)"
        )
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('myapp', '0001_init', '2024-01-01')"
        )
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, score REAL)")
        conn.commit()
    message = _refused(path)
    assert "not a tether" in message


def test_database_from_a_newer_schema_is_refused_untouched(db, tmp_path):
    path = tmp_path / "newer.db"
    _real_db(db, path, runs=3)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('tether', '9999_from_the_future', '2099-01-01')"
        )
        conn.commit()
    message = _refused(path)
    assert "newer" in message
    assert "upgrade" in message.lower()
    assert "9999_from_the_future" in message


def test_unwritable_location_suggests_configure(db, tmp_path):
    regular = tmp_path / "a_file"
    regular.write_text("not a folder")
    tether.configure(db=regular / "sub" / "runs.db")
    with pytest.raises(tether.StoreError) as info:
        tether.runs()
    assert "tether.configure(db=" in str(info.value)
    assert regular.read_text() == "not a folder"


def test_read_only_folder_suggests_configure(db, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user can write into a read-only folder (root)")
        tether.configure(db=folder / "runs.db")
        with pytest.raises(tether.StoreError) as info:
            tether.runs()
        assert "tether.configure(db=" in str(info.value)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


# -- what is stored, and how ----------------------------------------------------------------------


def test_wal_mode_is_on(db):
    tether.runs()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_tables_are_plain_and_readable_with_sqlite3(db):
    @tether.pipeline(phases=["load"])
    def readable(ctx, path: str, n: int = 2):
        ctx.phase("load", total=n)
        rows = ctx.step("load", lambda: [1, 2, 3])
        ctx.advance(n)
        ctx.log("loaded %d rows", len(rows))
        return {"rows": rows}

    run = readable.start(path="data.csv")
    assert run.result(timeout=30) == {"rows": [1, 2, 3]}
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT *, datetime(created_at, 'unixepoch') AS created FROM runs WHERE id = ?", (run.id,)
        ).fetchone()
        assert row["status"] == "succeeded"
        assert row["pipeline"] == readable.name
        assert row["key"] == run.key
        assert row["attempt"] == 1
        assert json.loads(row["params"]) == {"path": "data.csv", "n": 2}
        assert json.loads(row["result"]) == {"rows": [1, 2, 3]}
        assert row["phase"] == "load"
        assert (row["done"], row["total"]) == (2, 2)
        assert row["message"] == "loaded 3 rows"
        assert row["created"][:2] == "20"
        events = conn.execute(
            "SELECT seq, kind, data FROM events WHERE run_id = ? ORDER BY seq", (run.id,)
        ).fetchall()
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["kind"] == "succeeded"
        assert {"message": "loaded 3 rows", "level": "info"} in [json.loads(e["data"]) for e in events]
        cps = conn.execute("SELECT name, value FROM checkpoints WHERE run_id = ?", (run.id,)).fetchall()
        assert [(c["name"], json.loads(c["value"])) for c in cps] == [("step:load", [1, 2, 3])]


def test_store_keeps_pickle_looking_text_as_text(db, tmp_path):
    """A param that is a valid pickle (which would create a file if unpickled) stays a string."""
    marker = tmp_path / "unpickled"
    payload = f"cbuiltins\nopen\n(S'{marker}'\nS'w'\ntR."
    pickletools.dis(payload.encode("latin-1"), out=io.StringIO())  # it really is a pickle
    binary = "\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."  # protocol 4 framing

    @tether.pipeline
    def echo(ctx, blob: str, raw: str):
        return {"blob": blob, "raw": raw}

    run = echo.start(blob=payload, raw=binary)
    assert run.result(timeout=30) == {"blob": payload, "raw": binary}
    again = tether.get_run(run.id)
    assert again.params == {"blob": payload, "raw": binary}
    assert echo.start(blob=payload, raw=binary).id == run.id
    with closing(sqlite3.connect(db)) as conn:
        stored = conn.execute("SELECT params FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
    assert isinstance(stored, str)
    assert json.loads(stored) == {"blob": payload, "raw": binary}
    assert not marker.exists()


# -- model ----------------------------------------------------------------------------------------


def test_status_is_a_plain_string():
    values = {"pending", "running", "succeeded", "failed", "cancelled", "interrupted"}
    assert {s.value for s in Status} == values
    assert tether.Status is Status
    for s in Status:
        assert s == s.value
        assert str(s) == s.value
        assert f"{s}" == s.value
        assert f"{s:>12}" == f"{s.value:>12}"
        assert json.dumps(s) == json.dumps(s.value)
        assert Status(s.value) is s
        assert s in {s.value}
        assert s.terminal != s.active
    assert {s.value for s in Status if s.terminal} == values - {"pending", "running"}
    assert {s.value for s in Status if s.active} == {"pending", "running"}
    with pytest.raises(ValueError):
        Status("done")


def test_progress_is_a_named_pair():
    p = Progress(3, 10)
    assert tether.Progress is Progress
    assert p == (3, 10)
    assert (p.done, p.total) == (3, 10)
    done, total = Progress(2, None)
    assert (done, total) == (2, None)


def test_run_exposes_status_and_progress_types(db):
    run = _tiny.start(tag="model")
    run.wait(timeout=30)
    assert isinstance(run.status, Status)
    assert run.status == "succeeded"
    assert str(run.status) == "succeeded"
    assert isinstance(run.progress, Progress)
    assert run.progress == (1, 1)


def test_close_leaves_a_live_threads_connection_to_that_thread(db):
    """store.close() at exit must not pull a connection from under a thread still using it."""
    import threading

    store = tether.workspace.default().store()
    store.conn()  # opened and migrated by this thread
    opened, closed, out = threading.Event(), threading.Event(), []

    def reader() -> None:
        conn = store.conn()
        opened.set()
        closed.wait(10)
        out.append(conn.execute("SELECT count(*) FROM runs").fetchone()[0])  # still usable

    t = threading.Thread(target=reader)
    t.start()
    assert opened.wait(10)
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):  # this thread's connection is closed
        store._local.conn.execute("SELECT 1")
    closed.set()
    t.join(10)
    assert out == [0]
    with pytest.raises(tether.StoreError, match="is closed"):
        store.conn()


def test_absolute_db_path_works_after_the_cwd_is_deleted(db, tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    tether.configure(db=db)
    assert _tiny.start(tag="cwd").result(timeout=30) == {"tag": "cwd"}
    assert [r.params for r in tether.runs()] == [{"tag": "cwd"}]


def test_connections_do_not_accumulate_over_many_runs_and_threads(db):
    """Each run executes in a thread with its own connection: an ended thread's connection is
    reused or closed, so a long-lived kernel keeps a bounded number of file descriptors."""
    import threading

    import psutil

    me = psutil.Process()
    for i in range(20):
        _tiny.start(tag=f"warm{i}").result(timeout=30)
    before = me.num_fds()
    for i in range(300):
        assert _tiny.start(tag=f"r{i}").result(timeout=30) == {"tag": f"r{i}"}
    for _ in range(50):  # user threads reading the store, then ending
        t = threading.Thread(target=lambda: tether.runs(limit=1))
        t.start()
        t.join()
    _tiny.start(tag="last").result(timeout=30)
    assert me.num_fds() <= before + 6, (before, me.num_fds())


def test_the_main_threads_connection_waits_in_slices_and_a_write_changes_no_setting(db):
    """The main thread's statements wait at most a slice for a lock (an interrupt lands between
    slices), with no setting toggled around each write; other threads wait the whole timeout."""
    from tether.store import BUSY_TIMEOUT_S

    store = tether.workspace.default().store()
    _tiny.start(tag="slices").wait(timeout=20)  # a write of the main thread, and of a run thread
    timeout = store.conn().execute("PRAGMA busy_timeout").fetchone()[0]
    assert 0 < timeout < 1000
    seen = []
    worker = threading.Thread(
        target=lambda: seen.append(store.conn().execute("PRAGMA busy_timeout").fetchone()[0])
    )
    worker.start()
    worker.join()
    assert seen == [int(BUSY_TIMEOUT_S * 1000)]


def test_every_write_of_the_process_goes_through_one_connection_and_readers_see_commits_only(db):
    """The caller's start, the run thread's checkpoints and end, and the flusher all write through
    one connection (a connection per writing thread made each commit invalidate the others'
    caches); a write transaction reads what it wrote, any other thread only what is committed."""
    import contextlib

    store = tether.workspace.default().store()
    used: set[int] = set()
    orig = store.tx

    @contextlib.contextmanager
    def spy(*scope):
        with orig(*scope) as conn:
            used.add(id(conn))
            yield conn

    store.tx = spy
    try:
        for i in range(5):
            assert _tiny.start(tag=f"one{i}").result(timeout=30) == {"tag": f"one{i}"}
        assert _stepped_tiny.start().result(timeout=30) == [0, 1]
    finally:
        del store.tx
    assert len(used) == 1, used

    run = _tiny.start(tag="seen")
    run.wait(timeout=30)
    before = store.get(run.id).message
    assert before == "tiny seen"
    inside, held, release, seen = threading.Event(), [], threading.Event(), []

    def writer() -> None:
        with store.tx() as conn:
            conn.execute("UPDATE runs SET message = 'in flight' WHERE id = ?", (run.id,))
            held.append(store.get(run.id).message)  # this transaction's own write
            inside.set()
            release.wait(10)
            conn.execute("UPDATE runs SET message = ? WHERE id = ?", (before, run.id))

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(10)
        seen.append(store.get(run.id).message)  # this thread: the committed row
    finally:
        release.set()
        t.join(10)
    assert held == ["in flight"] and seen == [before]


@tether.pipeline
def _stepped_tiny(ctx):
    return [ctx.step(f"s{k}", lambda k=k: k) for k in range(2)]


def test_queries_of_active_runs_read_the_index_of_active_runs_never_the_whole_table(db):
    """Claims under ``concurrency=``, a worker's claim, cancel requests, the lease, recovery,
    interrupting this process's runs and listings of running runs all read the partial index of
    the active runs: a database of many ended runs costs them nothing (no statement on ``runs``
    scans the table)."""
    import re

    from tether import owner as owners
    from tether.model import Owner

    store = tether.workspace.default().store()
    for i in range(30):  # ended runs
        _tiny.start(tag=f"ended{i}").result(timeout=30)
    seen: list[str] = []
    me = owners.current()
    stranger = Owner("elsewhere", 12345, 1.0, "stranger", None)
    store.conn().set_trace_callback(seen.append)
    store._writing().set_trace_callback(seen.append)
    try:
        first, second = _capped.start(n=1), _capped.start(n=2)  # the second waits for room
        assert (first.result(timeout=30), second.result(timeout=30)) == (1, 2)
        store.active()
        store.cancel_requests(me)
        store.flush([], me, time.time() + 30)  # the lease
        store.recover(store.active(), owners.gone_reason)
        store.interrupt_own(stranger, "a test")
        store.claim_next(stranger, ["test_store.capped"], 30.0)
        store.list_runs(status="running")
        store.list_runs(pipeline="test_store.capped", status="running")
        store.summaries(status=["pending", "running"])
        store.summaries(pipeline="test_store.capped", status="pending")
    finally:
        store.conn().set_trace_callback(None)
        store._writing().set_trace_callback(None)
    on_runs = [
        sql for sql in seen if re.search(r"\b(FROM|UPDATE) runs\b", sql) and not sql.startswith("EXPLAIN")
    ]
    assert any("concurrency" in sql for sql in on_runs) and any(
        "cancel_requested = 1" in sql for sql in on_runs
    )
    # a run by its id (the primary key's index, or the rowid) or its key, a parent's children, or
    # the active runs: never a walk through an index of every run (runs_created, runs_pipeline)
    # nor the table
    allowed = (
        "runs_active",
        "sqlite_autoindex_runs_1",
        "sqlite_autoindex_runs_2",
        "runs_parent",
        "PRIMARY KEY",
    )
    wide = {}
    with closing(sqlite3.connect(db)) as conn:
        for sql in on_runs:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            bad = [
                line
                for line in plan
                if re.match(r"(SCAN|SEARCH) (runs|o)\b", line) and not any(a in line for a in allowed)
            ]
            if bad:
                wide[sql] = plan
    assert wide == {}


@tether.pipeline(name="test_store.capped", concurrency=1)
def _capped(ctx, n: int):
    return n


def test_write_errors_are_judged_by_sqlite_result_code(db, tmp_path):
    """Transient (worth retrying) or not, judged by SQLite's result code; the message's text only
    where Python (3.10) gives no code."""
    store = tether.workspace.default().store()
    other = tmp_path / "other.db"
    with (
        closing(sqlite3.connect(other, isolation_level=None)) as holder,
        closing(sqlite3.connect(other, isolation_level=None, timeout=0)) as waiter,
    ):
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as info:
            waiter.execute("BEGIN IMMEDIATE")
    busy = store._write_error(info.value)
    assert busy.transient and "stayed locked" in str(busy)
    if sys.version_info >= (3, 11):
        assert info.value.sqlite_errorcode == 5
        full = sqlite3.OperationalError("a message that says locked")
        full.sqlite_errorcode = 13  # SQLITE_FULL: the code decides, not the text
        assert "disk is full" in str(store._write_error(full))
        readonly = sqlite3.OperationalError("locked")
        readonly.sqlite_errorcode = 8 | (1 << 8)  # SQLITE_READONLY_RECOVERY: its primary code
        assert not store._write_error(readonly).transient
    assert store._write_error(sqlite3.OperationalError("database or disk is full")).transient  # no code
    assert not store._write_error(sqlite3.OperationalError("no such table: x")).transient


# -- ended attempts kept per thread (SQLiteStore.latest) ------------------------------------------

RERUN_ELSEWHERE = """
import sys
import tether
from helpers import panel_pipelines as pp
tether.configure(db=sys.argv[1])
run = pp.four_phase.start(n=1, delay=0, tag=sys.argv[2], policy="rerun")
run.result(timeout=60)
print(run.id)
"""


def test_an_ended_attempt_read_again_costs_one_pragma_until_anything_is_committed(db, child_env):
    """start() of an ended run keeps the row for its thread: read again, it costs one
    `PRAGMA data_version`. Any commit since, by another process, a user's own sqlite3
    connection or another thread of this process, makes it read the row again."""
    from helpers import panel_pipelines as pp

    def attach():
        return pp.four_phase.start(n=1, delay=0, tag="kept")

    first = attach()
    first.result(timeout=60)
    assert attach().id == first.id  # read and kept
    conn = tether.workspace.default().store().conn()
    said: list[str] = []
    conn.set_trace_callback(said.append)
    try:
        again = attach()
    finally:
        conn.set_trace_callback(None)
    assert again.id == first.id and again.attempt == 1 and again.result() == first.result()
    assert said == ["PRAGMA data_version"]

    other = subprocess.run(
        [sys.executable, "-c", RERUN_ELSEWHERE, str(db), "kept"],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    second = attach()  # another process made attempt 2
    assert second.id == other.stdout.strip() and second.attempt == 2

    with closing(sqlite3.connect(db)) as mine:  # the user's own connection edits the row
        mine.execute("UPDATE runs SET status = 'failed' WHERE id = ?", (second.id,))
        mine.commit()
    assert attach().status == "failed"

    box = []
    thread = threading.Thread(
        target=lambda: box.append(pp.four_phase.start(n=1, delay=0, tag="kept", policy="rerun"))
    )
    thread.start()
    thread.join(60)
    box[0].result(timeout=60)
    third = attach()  # this process's other thread made attempt 3
    assert third.id == box[0].id and third.attempt == 3


def test_each_read_of_a_kept_attempt_is_a_record_of_its_own(db):
    """What one caller does with its record or the values decoded from it never shows in the
    next caller's."""
    from helpers import panel_pipelines as pp

    run = pp.four_phase.start(n=2, delay=0, tag="own")
    value = run.result(timeout=60)
    store = tether.workspace.default().store()
    a, b = store.latest(run.key), store.latest(run.key)  # read, then kept
    assert a is not b and a == b
    phases, done = list(a.phases), list(a.phases_done)
    for rec in (a, b):
        rec.phases.append("mine")
        rec.phases_done.clear()
        rec.result["mine"] = True
        rec.status = Status.FAILED
    c = store.latest(run.key)
    assert c.phases == phases and c.phases_done == done and done
    assert c.result == value and "mine" not in c.result and c.status == "succeeded"
    assert pp.four_phase.start(n=2, delay=0, tag="own").result() == value


# -- a step's checkpoint with nothing else to write: one statement, its own commit -----------------

_ME = Owner("test-host", os.getpid(), 1.0, "me")
_OTHER = Owner("test-host", os.getpid(), 1.0, "other")


def _running(path: Path) -> tuple[SQLiteStore, str]:
    """A store at ``path`` with one run running under _ME."""
    store = SQLiteStore(path)
    out = store.start(
        key="k", owner=_ME, pipeline="p", params_json="{}", version=None, phases=[], policy="attach",
        lease_s=60.0, gone=lambda *_: None,
    )  # fmt: skip
    assert isinstance(store.claim(out.record.id, _ME, 60.0), RunRecord)
    return store, out.record.id


def test_a_checkpoint_alone_is_one_statement_that_writes_only_while_the_run_is_ours(tmp_path):
    """The ownership check and the row in one statement, committed on its own (no BEGIN, no
    SELECT, no COMMIT), through the process's one writer connection; for a run another owner took
    over, or one that ended, that statement writes nothing and the write answers False. A value
    that carries files still takes a transaction (its files are checked inside it)."""
    store, run_id = _running(tmp_path / "runs.db")
    seen: list[str] = []
    store._writing().set_trace_callback(seen.append)
    try:
        assert store.put_checkpoint(run_id, _ME, "a", "1")
        mine = list(seen)
        seen.clear()
        assert not store.put_checkpoint(run_id, _OTHER, "b", "2")
        other = list(seen)
        seen.clear()
        big = codec.encode("x" * (codec.INLINE_MAX + 1))
        assert isinstance(big, codec.Encoded) and big.files
        assert store.put_checkpoint(run_id, _ME, "big", big)
        with_files = list(seen)
    finally:
        store._writing().set_trace_callback(None)
    for statements in (mine, other):
        assert len(statements) == 1, statements
        assert statements[0].startswith("INSERT OR REPLACE INTO checkpoints") and "EXISTS" in statements[0]
    assert with_files[0] == "BEGIN IMMEDIATE" and with_files[-1] == "COMMIT", with_files
    assert store.checkpoint(run_id, "a") == (True, 1)
    assert store.checkpoint(run_id, "b") == (False, None)
    assert store.checkpoint(run_id, "big") == (True, "x" * (codec.INLINE_MAX + 1))
    item = FlushItem(run_id, None, [], [], 0, None, None, [])
    assert store.finish(item, _ME, Status.SUCCEEDED, result_json="1", error=None)
    assert not store.put_checkpoint(run_id, _ME, "c", "3")  # ended: nobody's
    assert store.checkpoint(run_id, "c") == (False, None)
    events = [e.kind for e in store.events(run_id)]
    assert events == ["created", "started", "succeeded"]  # the lean writes wrote no event
    store.close()


def test_a_checkpoint_alone_waits_for_another_writer_in_slices_an_interrupt_lands_between(tmp_path):
    """Another connection holds the write lock: the one-statement write waits for it (slice by
    slice, longer than one slice) and then lands; a Ctrl-C meanwhile is delivered between two
    slices, with nothing written, no transaction open and the process's write lock free."""
    path = tmp_path / "runs.db"
    store, run_id = _running(path)
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(0.4, lambda: holder.execute("COMMIT")).start()
        t0 = time.monotonic()
        assert store.put_checkpoint(run_id, _ME, "waited", "1")
        assert time.monotonic() - t0 >= 0.3
        assert store.checkpoint(run_id, "waited") == (True, 1)

        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                store.put_checkpoint(run_id, _ME, "interrupted", "2")
            assert time.monotonic() - t0 < 5  # not after the lock's owner let go
            assert holder.in_transaction
        finally:
            holder.execute("COMMIT")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not store._writing().in_transaction
    assert store.write_lock.acquire(blocking=False)
    store.write_lock.release()
    assert store.checkpoint(run_id, "interrupted") == (False, None)
    assert store.put_checkpoint(run_id, _ME, "after", "3")
    store.close()


_BUSY_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE runs SET message = ?", (str(n),))
    conn.execute("COMMIT")
    conn.execute("SELECT count(*) FROM checkpoints").fetchone()  # a read between, as readers do
    n += 1
print(n)
"""


def test_checkpoints_alone_never_fail_while_another_process_commits_all_the_time(tmp_path):
    """A statement outside a transaction takes the write lock before it reads (as BEGIN
    IMMEDIATE does): another process committing without pause makes it wait, never fail with
    SQLITE_BUSY (nor BUSY_SNAPSHOT, the upgrade of a stale read), and every row lands."""
    path = tmp_path / "runs.db"
    store, run_id = _running(path)
    other = subprocess.Popen(
        [sys.executable, "-c", _BUSY_WRITER, str(path), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        n = 0
        while other.poll() is None and n < 5000:
            assert store.put_checkpoint(run_id, _ME, f"s{n}", str(n))
            n += 1
        commits = int(other.communicate(timeout=30)[0])
    finally:
        other.kill()
        other.wait()
    assert other.returncode == 0 and commits > 50 and n > 50, (commits, n)
    assert len(store.checkpoints(run_id, "s")) == n
    store.close()


def test_a_checkpoint_alone_is_refused_on_a_full_disk_and_on_a_replaced_file(tmp_path):
    """The one-statement write keeps the transaction's errors: no room (SQLITE_FULL) is a
    transient StoreError, nothing written, and the next write lands once there is room; a file
    replaced while in use is never written to."""
    path = tmp_path / "runs.db"
    store, run_id = _running(path)
    writer = store._writing()
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk
    with pytest.raises(tether.StoreError, match="disk is full") as info:
        store.put_checkpoint(run_id, _ME, "big", json.dumps("x" * 200_000))
    assert info.value.transient
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert store.checkpoint(run_id, "big") == (False, None)
    assert store.put_checkpoint(run_id, _ME, "big", json.dumps("x" * 200_000))

    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE mine (y)")
        conn.commit()
    before = other.read_bytes()
    os.replace(other, path)
    with pytest.raises(tether.StoreError, match="deleted or replaced"):
        store.put_checkpoint(run_id, _ME, "late", "1")
    assert path.read_bytes() == before
    store.close()


def test_an_ended_attempt_with_a_large_result_is_read_each_time_not_kept(db):
    """The memo of ended attempts holds short rows only: a large inline result (up to the codec's
    inline limit) would otherwise stay in memory per thread for as long as nothing is committed."""
    from helpers import panel_pipelines as pp

    big = pp.four_phase.start(n=1, delay=0, tag="x" * 20_000)  # params (and result) long
    small = pp.four_phase.start(n=1, delay=0, tag="small")
    big.result(timeout=60)
    small.result(timeout=60)
    for run in (big, small, big, small):
        assert pp.four_phase.start(n=1, delay=0, tag=run.params["tag"]).id == run.id
    kept = tether.workspace.default().store()._local.ended.rows
    assert small.key in kept and big.key not in kept


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10's sqlite3 gives no extended result code")
@pytest.mark.parametrize("how", ["write_run", "tx"])
def test_a_stale_snapshot_on_the_writer_is_reported_at_once_not_waited_for(db, monkeypatch, how):
    """A statement left unfinished on the writer connection keeps an old read snapshot: every
    try of a write then gets SQLITE_BUSY_SNAPSHOT, which no wait ends. Before, each write spun
    at full CPU for BUSY_TIMEOUT_S under the process's write lock, then said "stayed locked by
    another process" (found by review; no path of tether leaves one today)."""
    import importlib

    monkeypatch.setattr(importlib.import_module("tether.store._connection"), "BUSY_TIMEOUT_S", 5.0)
    for i in range(3):
        _tiny.start(tag=f"stale {i}").result(timeout=30)
    store = tether.workspace.default().store()
    with store.write_lock:
        cursor = store._writing().execute("SELECT id FROM runs")
        cursor.fetchone()  # unfinished: its snapshot stays open
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("UPDATE runs SET updated_at = updated_at + 1")
    with pytest.raises(tether.StoreError) as info:
        if how == "tx":
            with store.tx() as conn:
                conn.execute("UPDATE runs SET updated_at = updated_at WHERE id = 'x'")
        else:
            store.write_run("x", "UPDATE runs SET updated_at = updated_at WHERE id = ?", ("x",))
    assert "reads an old snapshot" in str(info.value) and "stayed locked" not in str(info.value)
    assert info.value.__cause__.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT"
    cursor.close()  # the snapshot ends: writes go through again
    assert _tiny.start(tag="after").result(timeout=30) == {"tag": "after"}

"""The PostgreSQL store beyond the contract (tests/store_contract runs that on both backends): its
schema derived from the SQLite one, the dialect seam, interrupts and forks, large values in the
database, workers of several processes sharing one queue. A throwaway cluster (tests/conftest.py
``pg_cluster``): skipped without PostgreSQL, required under CI=true."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from helpers.postgres import CLAIMER, race, start_cluster
from tether import codec
from tether.errors import StoreError
from tether.model import Owner, RunRecord, Status
from tether.store import FlushItem, SQLiteStore
from tether.store._pg_dialect import translate
from tether.store.postgres import _WRITE_LOCK

TESTS = Path(__file__).parent
ME = Owner("pg-host", os.getpid(), 1.0, "me")


def alive(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
    return None


def pg_store(url: str) -> Any:
    from tether.store.postgres import PostgresStore

    return PostgresStore(url)


def start(store: Any, key: str, **more: Any) -> RunRecord:
    args: dict[str, Any] = {
        "pipeline": "p", "params_json": "{}", "version": None, "phases": [], "policy": "attach",
        "owner": ME, "lease_s": 60.0, "gone": alive,
    }  # fmt: skip
    args.update(more)
    return store.start(key=key, **args).record  # type: ignore[no-any-return]


def pg_rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args or None).fetchall()


def pg_exec(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


# -- the dialect seam (no server) ------------------------------------------------------------------


def test_statements_in_sqlites_dialect_are_translated_with_their_arguments_in_order() -> None:
    text, order = translate("SELECT 1 FROM t WHERE a IS ? AND b = ? AND c > ?1 AND d = 'x?%'")
    assert text == "SELECT 1 FROM t WHERE a IS NOT DISTINCT FROM %s AND b = %s AND c > %s AND d = 'x?%%'"
    assert order == (0, 1, 0)  # ?1 is the first argument again
    text, order = translate(
        "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) VALUES (?, ?, ?, ?)"
    )
    assert text.endswith("ON CONFLICT (run_id, name) DO UPDATE SET value = EXCLUDED.value, ts = EXCLUDED.ts")
    assert order is None
    assert translate("SELECT json_extract(data, '$.id') WHERE instr(v, ?) > 0")[0] == (
        "SELECT (tether_jsonb(data) ->> 'id') WHERE strpos(v, %s) > 0"
    )


def test_a_cluster_started_with_options_runs_them_over_the_tests_settings(pg_cluster: Any) -> None:
    """bench/bench_postgres.py measures a durable server through this parameter."""
    cluster = start_cluster({"fsync": "on", "synchronous_commit": "on", "work_mem": "8MB"})
    try:
        shown = {n: pg_rows(cluster.url(), f"SHOW {n}")[0][0] for n in ("fsync", "synchronous_commit",
                 "work_mem", "full_page_writes", "max_connections")}  # fmt: skip
    finally:
        cluster.stop()
    assert shown == {"fsync": "on", "synchronous_commit": "on", "work_mem": "8MB", "full_page_writes": "off",
                     "max_connections": "200"}  # fmt: skip


def test_a_url_is_named_without_its_password() -> None:
    from tether.store.postgres import redact

    assert redact("postgresql://ann:s3cret@db.example:5433/runs?sslmode=require") == (
        "postgresql://ann@db.example:5433/runs?sslmode=require"
    )
    assert redact("postgresql://ann@db/runs") == "postgresql://ann@db/runs"


# -- schema ----------------------------------------------------------------------------------------


def test_the_postgres_schema_has_the_tables_and_columns_of_the_sqlite_one(
    pg_url: str, tmp_path: Path
) -> None:
    lite = SQLiteStore(tmp_path / "runs.db")
    lite.list_runs(limit=1)
    lite.close()
    with closing(sqlite3.connect(tmp_path / "runs.db")) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_cols = {
            (t, c[1])
            for t in tables
            if t != "_sqlite_migrations"
            for c in conn.execute(f"PRAGMA table_info({t})")
        }
    store = pg_store(pg_url)
    store.list_runs(limit=1)
    store.close()
    pg_cols = set(
        pg_rows(
            pg_url,
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() "
            "AND table_name NOT IN ('tether_migrations', 'tether_files')",
        )
    )
    assert {t for t, _ in sqlite_cols} == {"runs", "events", "checkpoints", "workers"}
    assert pg_cols == sqlite_cols | {("runs", "rowid")}  # SQLite's rowid is implicit
    applied = [r[0] for r in pg_rows(pg_url, "SELECT name FROM tether_migrations ORDER BY seq")]
    assert applied == ["0001_initial", "0002_owner_ns", "0003_control", "0004_code", "0005_active_index"]


def test_a_database_with_a_runs_table_of_another_program_is_refused_untouched(pg_url: str) -> None:
    pg_exec(pg_url, "CREATE TABLE runs (x int)")
    store = pg_store(pg_url)
    with pytest.raises(StoreError, match="not a tether database; it was left untouched"):
        store.list_runs()
    store.close()
    assert pg_rows(
        pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tether_migrations'"
    ) == [(0,)]


def test_an_unreachable_server_is_a_transient_store_error_naming_the_url_without_password() -> None:
    store = pg_store("postgresql://ann:s3cret@127.0.0.1:1/runs?connect_timeout=2")
    with pytest.raises(StoreError, match="could not be reached") as err:
        store.list_runs()
    assert (
        err.value.transient
        and "s3cret" not in str(err.value)
        and "postgresql://ann@127.0.0.1:1/runs" in str(err.value)
    )


# -- transactions: interrupts and forks -----------------------------------------------------------


def test_an_interrupt_inside_a_write_rolls_it_back_and_frees_the_write_lock(pg_url: str) -> None:
    store = pg_store(pg_url)
    rec = start(store, "a")
    with pytest.raises(KeyboardInterrupt), store.tx() as conn:
        conn.execute("UPDATE runs SET message = 'half' WHERE id = ?", (rec.id,))
        raise KeyboardInterrupt
    assert not store.conn().in_transaction
    assert store.get(rec.id).message is None  # rolled back
    # the database's write lock is free for another session (another host's process)
    assert pg_rows(pg_url, "SELECT pg_try_advisory_lock(%s)", _WRITE_LOCK) == [(True,)]
    assert start(store, "b").key == "b"  # and this store writes on
    store.close()


def test_a_write_waiting_for_another_hosts_write_is_interruptible_and_holds_nothing(pg_url: str) -> None:
    import psycopg

    store = pg_store(pg_url)
    start(store, "a")
    with psycopg.connect(pg_url) as holder:  # another host in the middle of a write
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            start(store, "b")  # waits for the lock, in slices
        assert time.monotonic() - t0 < 5
        timer.join()
        assert not store.conn().in_transaction
        holder.rollback()  # that write ends: ours goes through
    assert start(store, "b").key == "b"
    assert {r.key for r in store.list_runs()} == {"a", "b"}
    store.close()


def test_a_connection_given_back_inside_a_transaction_is_rolled_back_by_the_pool(pg_url: str) -> None:
    store = pg_store(pg_url)
    rec = start(store, "a")

    def body() -> None:
        conn = store.conn()
        conn.execute("BEGIN")
        conn.execute("UPDATE runs SET message = 'never' WHERE id = ?", (rec.id,))
        store.release_conn()  # a run thread ending: its connection goes back to the pool

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert store.get(rec.id).message is None
    assert pg_rows(
        pg_url, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
    ) == [(0,)]
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_opens_its_own_connections_and_the_parents_keep_working(pg_url: str) -> None:
    store = pg_store(pg_url)
    start(store, "parent")
    before = store.conn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the store works, through connections of its own
        code = 1
        try:
            rec = start(store, "child")
            code = 0 if store.conn() is not before and rec.key == "child" else 2
        finally:
            os.write(w, b"x")
            os._exit(code)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the child never closed (nor used) the parent's sessions: the parent's connection works
    assert store.conn() is before
    assert {r.key for r in store.list_runs()} == {"parent", "child"}
    store.close()


# -- large values ------------------------------------------------------------------------------------


def test_a_large_value_is_kept_in_the_database_and_read_back_checked(pg_url: str) -> None:
    store = pg_store(pg_url)
    rec = store.claim(start(store, "big").id, ME, 60.0)
    assert isinstance(rec, RunRecord)
    value = {"rows": "x" * (codec.INLINE_MAX + 10)}
    text = codec.encode(value, "checkpoint")
    assert store.put_checkpoint(
        FlushItem(rec.id, None, [], [], 0, None, None, []),
        ME,
        "big",
        text,
    )
    assert pg_rows(pg_url, "SELECT count(*), sum(size) > %s FROM tether_files", codec.INLINE_MAX) == [
        (1, True)
    ]
    assert store.checkpoint(rec.id, "big") == (True, value)
    # altered behind tether's back: an error naming the value, never a wrong value
    pg_exec(pg_url, "UPDATE tether_files SET data = overlay(data placing 'y' from 1)")
    with pytest.raises(StoreError, match="does not match"):
        store.checkpoint(rec.id, "big")
    # no longer referred to: collected
    store.finish(
        FlushItem(rec.id, None, [], [], 0, None, None, []),
        ME, Status.SUCCEEDED, result_json="1", error=None,
    )  # fmt: skip
    pg_exec(pg_url, "DELETE FROM checkpoints")
    assert store.collect_files()[0] == 1
    assert pg_rows(pg_url, "SELECT count(*) FROM tether_files") == [(0,)]
    store.close()


# -- workers of several processes ------------------------------------------------------------------


def test_workers_in_three_processes_drain_the_queue_and_no_run_is_claimed_twice(pg_url: str) -> None:
    store = pg_store(pg_url)
    ids = {start(store, f"k{i}", detach=True).id for i in range(60)}
    claimed = [json.loads(out) for out in race(CLAIMER, [[pg_url, str(n), "p"] for n in range(3)])]
    flat = [run_id for got in claimed for run_id in got]
    assert sorted(flat) == sorted(ids)  # every run once, none twice
    assert {r.status for r in store.list_runs(limit=None)} == {Status.RUNNING}
    owners = {r.owner.instance for r in store.list_runs(limit=None) if r.owner}
    assert owners <= {"worker-0", "worker-1", "worker-2"}
    store.close()


# -- configuration: tether.configure(db=...), TETHER_DB, --db --------------------------------------


def test_a_postgresql_url_configured_routes_every_feature_to_the_server(pg_url: str) -> None:
    from tether.store.postgres import PostgresStore
    from tether.workspace import Workspace

    ws = Workspace(db=pg_url)
    try:
        pipe = ws.pipeline(name="test_postgres.double")(lambda ctx, x: 2 * x)
        run = pipe.start(x=21)
        assert run.result(timeout=60) == 42
        assert isinstance(run.store, PostgresStore) and str(run.store.path) == pg_url
        assert pipe.start(x=21).id == run.id  # an idempotent start attaches
        assert [r.id for r in ws.runs()] == [run.id]
    finally:
        ws.close()
    assert pg_rows(pg_url, "SELECT status, result FROM runs") == [("succeeded", "42")]


def test_tether_db_and_the_clis_db_option_take_a_postgresql_url(pg_url: str, tmp_path: Path) -> None:
    env = dict(os.environ, TETHER_DB=pg_url, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    code = (
        "import tether\n"
        "p = tether.pipeline(name='sq')(lambda ctx, x: x * x)\n"
        "print(p.start(x=7).result(timeout=60))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "49", out.stderr[-2000:]
    env.pop("TETHER_DB")
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ls", "--db", pg_url, "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert [(r["pipeline"], r["status"]) for r in json.loads(out.stdout)] == [("sq", "succeeded")]
    typo = pg_url.replace("@/", "@/typo_", 1)
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", "ls", "--db", typo],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0 and "does not exist" in out.stderr, out.stderr[-2000:]
    assert os.listdir(tmp_path) == []  # no file, no folder named postgresql:


def test_without_psycopg_a_postgresql_url_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys\nsys.modules['psycopg'] = None\n"
        "import tether\ntry:\n    tether.runs()\nexcept tether.StoreError as exc:\n    print(exc)\n"
    )
    env = dict(os.environ, TETHER_DB="postgresql://ann:s3cret@db.example/runs")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'tether[postgres]'" in out.stdout and "s3cret" not in out.stdout, out.stdout


def test_a_nul_character_in_a_log_line_or_message_is_stored_as_a_replacement(pg_url: str) -> None:
    store = pg_store(pg_url)
    rec = store.claim(start(store, "a\x00b").id, ME, 60.0)
    assert isinstance(rec, RunRecord)
    line = (1.0, "log", "work", codec.dumps({"line": "x\x00y"}))
    item = FlushItem(rec.id, "ph\x00ase", [], [], 1, None, "m\x00n", [line])
    assert store.flush([item], ME, None)[0] == set()
    got = store.get(rec.id)
    assert (got.key, got.phase, got.message) == ("a\ufffdb", "ph\ufffdase", "m\ufffdn")
    assert store.tail(rec.id, "log", 1)[0].data == {"line": "x\x00y"}  # JSON escapes it: kept
    store.close()


def test_a_pickle_is_stored_but_never_unpickled_from_a_shared_database(pg_url: str) -> None:
    from helpers import values
    from tether.workspace import default

    ws = default()
    saved = ws.settings
    ws.configure(db=pg_url)
    try:
        run = values.pickled.start()  # defined with serializer="pickle" in this process
        run.wait(timeout=60)
        with pytest.raises(StoreError, match="does not unpickle values from a shared PostgreSQL"):
            _ = ws.store().get(run.id).result
        assert pg_rows(pg_url, "SELECT status FROM runs WHERE id = %s", run.id) == [("succeeded",)]
    finally:
        ws.close()
        ws.settings = saved


# -- another host ------------------------------------------------------------------------------------


def test_exists_tells_a_tether_database_from_an_empty_or_missing_one_without_creating_it(pg_url: str) -> None:
    missing = pg_url.replace("@/", "@/no_such_db_", 1)
    assert pg_store(missing).exists() is False
    store = pg_store(pg_url)
    assert store.exists() is False  # an empty database: nothing of tether's in it
    assert pg_rows(pg_url, "SELECT to_regclass('runs') IS NULL") == [(True,)]  # nor made by asking
    start(store, "a")
    assert store.exists() is True
    store.close()
    with pytest.raises(StoreError, match="could not be reached"):
        pg_store("postgresql://ann@127.0.0.1:1/runs?connect_timeout=2").exists()


def test_a_session_the_server_ended_is_replaced_and_the_read_sent_again(pg_url: str) -> None:
    store = pg_store(pg_url)
    rec = start(store, "a")
    ended = pg_rows(
        pg_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'tether'",
    )
    assert ended[0][0] >= 1  # a server restart, a failover, a connection dropped on the way
    assert store.get(rec.id).key == "a"  # no error: the read went again on a new session
    pg_rows(
        pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tether'"
    )
    with store.tx() as conn:  # a write begins on a new session as well
        conn.execute("UPDATE runs SET message = 'm' WHERE id = ?", (rec.id,))
    assert store.get(rec.id).message == "m"
    store.close()

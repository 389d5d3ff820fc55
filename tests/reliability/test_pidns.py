"""Owners in another pid namespace (issue 11, item 5): containers sharing a bind-mounted database,
``unshare --pid``. There the owner's pid is another process here (pid 1 is this machine's init), so
liveness cannot be proven from here: the lease decides, never "dead". Another boot id under the same
host name proves the owner gone (the machine restarted). A database of schema 0001 migrates on
open, and its runs (no namespace recorded) are judged by host and pid as before.

The namespace tests need root and ``unshare`` (util-linux): they skip without them, except under
``CI=true``, where they fail instead.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import tether
from helpers.hosts import need_unshare
from helpers.util import raw, undo_control_migration, wait_until
from tether import owner
from tether.model import Owner

PIDNS = ("--pid", "--fork", "--mount-proc")  # same host name, own pids and /proc: a container
LEASE_S = 1.0  # of the namespaced owner; it renews every BEAT_S while alive
BEAT_S = 0.1

_INNER = """
import json, os, sys, time
import tether

spec = json.loads(sys.argv[1])
tether.configure(db=spec["db"], lease=spec["lease"], heartbeat_interval=spec["beat"])
seen = {r.id: str(r.status) for r in tether.runs()}  # this side looks at the other's runs too

@tether.pipeline
def inner_long(ctx, tag: str) -> int:
    ctx.phase("wait")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ctx.advance()  # raises once the run was taken from this process
        time.sleep(0.02)
    return os.getpid()

run = inner_long.start(tag="inner")
with open(spec["ready"] + ".tmp", "w") as fh:
    json.dump({"id": run.id, "pid": os.getpid(), "seen": seen}, fh)
os.replace(spec["ready"] + ".tmp", spec["ready"])
try:
    run.result(timeout=90)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(3)
"""


def _need_unshare() -> None:
    need_unshare(PIDNS, "the pid namespace tests")


GATE = threading.Event()  # opens the runs of outer_long


@tether.pipeline
def outer_long(ctx: tether.Context, tag: str) -> str:
    ctx.phase("wait")
    deadline = time.monotonic() + 60
    while not GATE.is_set() and time.monotonic() < deadline:
        ctx.advance()
        time.sleep(0.02)
    return tag


@tether.pipeline
def quick(ctx: tether.Context, n: int) -> int:
    return n


@contextmanager
def _namespaced(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A Python process that is pid 1 of a new pid namespace (with its own /proc), running a long
    run against the shared database. Yields (the ``unshare`` process, what the child reported)."""
    _need_unshare()
    GATE.clear()
    ready = tmp_path / "ready.json"
    spec = {"db": str(db), "lease": LEASE_S, "beat": BEAT_S, "ready": str(ready)}
    proc = subprocess.Popen(
        ["unshare", *PIDNS, sys.executable, "-c", _INNER, json.dumps(spec)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def reported() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the namespaced child exited: {proc.communicate()}")
            return ready.exists()

        wait_until(reported, timeout=60, what="the namespaced child's run")
        yield proc, json.loads(ready.read_text())
    finally:
        for p in _inner(proc):
            p.kill()
        proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def namespaced(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    with _namespaced(db, child_env, tmp_path) as ns:
        yield ns


def _inner(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cli(db: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tether.cli", *args, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _sweep() -> None:
    """One orphan sweep of this process's runner (as its flusher does every sweep_interval)."""
    r = tether.workspace.default().runner()
    r._next_sweep = 0.0
    r.flush()


def test_a_live_owner_in_another_pid_namespace_keeps_its_run(
    db: Path, child_env: dict[str, str], namespaced: tuple[subprocess.Popen[str], dict[str, Any]]
) -> None:
    proc, child = namespaced
    assert child["pid"] == 1, "the child is not pid 1 of a new pid namespace"
    run_id = child["id"]
    mine = outer_long.start(tag="outer")  # a run of this side too
    try:
        # every way of looking from outside, for several of the owner's lease periods
        t0 = time.monotonic()
        ways = 0
        while time.monotonic() - t0 < 3 * LEASE_S or ways < 8:
            assert tether.get_run(run_id).status == "running"
            assert {r.id: str(r.status) for r in tether.runs()}[run_id] == "running"
            _sweep()
            which = ways % 3
            if which == 0:
                assert "marked 0 interrupted" in _cli(db, child_env, "gc")
            elif which == 1:
                assert "running" in _cli(db, child_env, "ls")
            else:
                assert "running" in _cli(db, child_env, "show", run_id)
            ways += 1
        lease_until = raw(db, "SELECT lease_until FROM runs WHERE id = ?", run_id)[0][0]
        assert lease_until > time.time(), "the namespaced owner does not renew its lease"
        assert proc.poll() is None, proc.communicate()
        assert tether.get_run(mine.id).status == "running"
    finally:
        GATE.set()
    assert mine.result(timeout=30) == "outer"

    # killed: its lease runs out, and then (not before) it is an orphan
    inner = _inner(proc)
    assert inner, "the namespaced python process is gone already"
    for p in inner:
        p.kill()
    killed = time.time()

    def interrupted() -> tether.Run | None:
        run = next(r for r in tether.runs() if r.id == run_id)
        return run if run.status == "interrupted" else None

    run = wait_until(interrupted, timeout=30, what="the run to be marked interrupted")
    assert time.time() >= raw(db, "SELECT lease_until FROM runs WHERE id = ?", run_id)[0][0]
    assert time.time() - killed < 20
    message = run.error["message"]
    assert "lease" in message and "pid namespace" in message, message


def test_the_namespaced_process_does_not_end_runs_of_this_namespace(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    """The other way round: a run of this process is live while a process in a new pid namespace
    lists the runs (its own /proc does not show this process)."""
    _need_unshare()
    GATE.clear()
    mine = outer_long.start(tag="seen from inside")
    try:
        wait_until(lambda: tether.get_run(mine.id).status == "running", what="the run to start")
        with _namespaced(db, child_env, tmp_path) as (_, child):
            assert child["seen"][mine.id] == "running"
            assert tether.get_run(mine.id).status == "running"
    finally:
        GATE.set()
    assert mine.result(timeout=30) == "seen from inside"


# -- the rules, without namespaces ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_another_boot_id_on_this_host_proves_the_owner_gone() -> None:
    me = owner.current()
    assert me.ns, "Linux records the boot id and pid namespace of an owner"
    boot, _, pidns = me.ns.partition("/")
    later = time.time() + 3600  # a lease far from expiry
    # this very process (alive, same pid and start time) but recorded in another boot
    rebooted = Owner(me.host, me.pid, me.started, "crafted", f"not-{boot}/{pidns}")
    reason = owner.gone_reason(rebooted, later, time.time())
    assert reason and "restarted" in reason, reason
    # same boot, another pid namespace: nothing proven while the lease runs, gone after it
    elsewhere = Owner(me.host, _dead_pid(), me.started, "crafted", f"{boot}/0:1")
    assert owner.gone_reason(elsewhere, later, time.time()) is None
    reason = owner.gone_reason(elsewhere, time.time() - 1, time.time())
    assert reason and "lease" in reason and "pid namespace" in reason, reason
    # same boot and namespace: the pid decides, as it always did
    dead = Owner(me.host, _dead_pid(), me.started, "crafted", me.ns)
    assert owner.gone_reason(dead, later, time.time())
    alive = Owner(me.host, me.pid, me.started, "crafted", me.ns)
    assert owner.gone_reason(alive, time.time() - 1, time.time()) is None
    # recorded without a namespace (an older tether): judged by host and pid as before
    old_dead = Owner(me.host, _dead_pid(), me.started, "crafted", None)
    assert owner.gone_reason(old_dead, later, time.time())
    old_alive = Owner(me.host, me.pid, me.started, "crafted", None)
    assert owner.gone_reason(old_alive, time.time() - 1, time.time()) is None


def test_owner_identity_is_recorded_with_its_namespace(db: Path) -> None:
    assert quick.start(n=1).result(timeout=30) == 1
    (ns,) = raw(db, "SELECT owner_ns FROM runs")[0]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    st = os.stat("/proc/self/ns/pid")
    assert ns == f"{boot}/{st.st_dev}:{st.st_ino}"
    assert tether.runs()[0].snapshot().owner == owner.current()


def test_a_schema_0001_database_migrates_on_open_and_keeps_judging_its_runs(db: Path, tmp_path: Path) -> None:
    """An older tether's database: no owner_ns column. It migrates on first use (0002_owner_ns);
    its runs are judged by host and pid as before, a live one stays live."""
    assert quick.start(n=1).result(timeout=30) == 1
    tether.workspace.default().close()
    with closing(sqlite3.connect(db)) as conn:
        undo_control_migration(conn)  # back to schema 0002 (0003_control undone)
        conn.execute("ALTER TABLE runs DROP COLUMN owner_ns")
        conn.execute("ALTER TABLE runs DROP COLUMN code")  # added later still (0004_code)
        conn.execute("DELETE FROM _sqlite_migrations WHERE name IN ('0002_owner_ns', '0004_code')")
        template = conn.execute("SELECT * FROM runs").fetchone()
        cols = [d[1] for d in conn.execute("PRAGMA table_info(runs)")]
        me = owner.current()
        for run_id, pid, started in (("olddead", _dead_pid(), me.started), ("oldlive", me.pid, me.started)):
            row = dict(zip(cols, template))
            row.update(
                id=run_id,
                key=run_id,
                status="running",
                ended_at=None,
                result=None,
                owner_host=socket.gethostname(),
                owner_pid=pid,
                owner_started=started,
                owner_instance="old-" + run_id,
                lease_until=time.time() - 1,
                last_seq=1,
            )
            conn.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            conn.execute(
                "INSERT INTO events (run_id, seq, ts, kind, data) VALUES (?, 1, ?, 'created', '{}')",
                (run_id, time.time()),
            )
        conn.commit()
    assert [r[0] for r in raw(db, "SELECT name FROM _sqlite_migrations")] == ["0001_initial"]
    statuses = {r.id: str(r.status) for r in tether.runs()}
    assert statuses["olddead"] == "interrupted" and statuses["oldlive"] == "running"
    assert [r[0] for r in raw(db, "SELECT name FROM _sqlite_migrations")] == [
        "0001_initial",
        "0002_owner_ns",
        "0003_control",
        "0004_code",
        "0005_active_index",
    ]
    assert raw(db, "SELECT owner_ns FROM runs WHERE id = 'oldlive'") == [(None,)]
    assert quick.start(n=2).result(timeout=30) == 2
    assert raw(db, "SELECT count(*) FROM runs WHERE owner_ns IS NOT NULL") == [(1,)]

"""Several hosts on one database (issue 18 item 2): real processes in their own UTS and pid
namespaces (tests/helpers/hosts.py), each with its own host name and pids from 1.

- ``tether worker`` on three hosts drains one queue of detached runs: every run executed exactly
  once, by one of them, and every host gets a share.
- A run whose owner is on another host is judged by its lease alone: its pid (1 there, init here)
  proves nothing here; while the host lives the run is its own, once the host dies the run is an
  orphan as soon as its lease runs out, and not before.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import tether
from helpers import host_pipelines
from helpers.hosts import host_process, hosts, kill_host, need_hosts
from helpers.postgres import BOTH_BACKENDS
from helpers.util import raw, wait_until

pytestmark = BOTH_BACKENDS  # a SQLite file shared by containers, or a PostgreSQL server

N_RUNS = 60
HOSTS = ("host-a", "host-b", "host-c")


def _workers(db: Path) -> set[str]:
    """Host names of the registered workers (none before the first worker made the tables)."""
    try:
        return {host for (host,) in raw(db, "SELECT DISTINCT host FROM workers")}
    except Exception as exc:  # sqlite3's or psycopg's "no such table"
        if "workers" not in str(exc):
            raise
        return set()


def test_workers_on_three_hosts_drain_one_queue_each_run_once(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    argv = [sys.executable, "-m", "tether.cli", "worker", "helpers.host_pipelines"]
    argv += ["--db", str(db), "--concurrency", "2", "--poll", "0.05"]
    with hosts(HOSTS, argv, child_env) as procs:
        # the queue fills once every worker serves it, so that no host starts with a head start
        def serving() -> bool:
            for proc in procs:
                assert proc.poll() is None, proc.communicate()
            return _workers(db) == set(HOSTS)

        wait_until(serving, timeout=90, what="a worker on each host")
        runs = [host_pipelines.where.start(i=i, log=str(log), detach=True) for i in range(N_RUNS)]
        results = [run.result(timeout=120) for run in runs]

    assert [r["i"] for r in results] == list(range(N_RUNS))
    done_by = Counter(str(r["host"]) for r in results)
    assert set(done_by) == set(HOSTS), done_by
    assert min(done_by.values()) >= N_RUNS // 10, f"one host got almost nothing: {done_by}"
    # executed exactly once: one line per run in the log every execution appends to, one attempt
    # per key, one "started" event per run
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(i) for i, _, _ in lines) == list(range(N_RUNS))
    for run, result in zip(runs, results):
        assert len(run.attempts()) == 1
        started = [e for e in run.events() if e.kind == "started"]
        assert len(started) == 1 and started[0].data["host"] == result["host"], started


_HOLDER = """
import json, os, sys, time
import tether

spec = json.loads(sys.argv[1])
tether.configure(db=spec["db"], lease=spec["lease"], heartbeat_interval=spec["beat"])

@tether.pipeline
def held(ctx, tag: str) -> int:
    while True:
        ctx.advance()
        time.sleep(0.02)

run = held.start(tag="far")
with open(spec["ready"] + ".tmp", "w") as fh:
    json.dump({"id": run.id, "pid": os.getpid()}, fh)
os.replace(spec["ready"] + ".tmp", spec["ready"])
run.wait()
"""
LEASE_S = 1.0
BEAT_S = 0.1


def test_a_run_on_another_host_is_judged_by_its_lease_alone(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    need_hosts()
    ready = tmp_path / "ready.json"
    spec = {"db": str(db), "lease": LEASE_S, "beat": BEAT_S, "ready": str(ready)}
    proc = host_process("host-far", [sys.executable, "-c", _HOLDER, json.dumps(spec)], child_env)
    try:

        def reported() -> bool:
            assert proc.poll() is None, proc.communicate()
            return ready.exists()

        wait_until(reported, timeout=60, what="the far host's run")
        child = json.loads(ready.read_text())
        assert child["pid"] == 1  # pid 1 there; here pid 1 is init, alive for ever
        run_id = child["id"]
        host, pid = raw(db, "SELECT owner_host, owner_pid FROM runs WHERE id = ?", run_id)[0]
        assert (host, pid) == ("host-far", 1)

        # alive and renewing: its run stays its own over several lease periods, whoever looks
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * LEASE_S:
            assert {r.id: str(r.status) for r in tether.runs()}[run_id] == "running"
        assert raw(db, "SELECT lease_until FROM runs WHERE id = ?", run_id)[0][0] > time.time()
    finally:
        kill_host(proc)
    killed = time.time()
    (lease_until,) = raw(db, "SELECT lease_until FROM runs WHERE id = ?", run_id)[0]

    def interrupted() -> tether.Run | None:
        run = next(r for r in tether.runs() if r.id == run_id)
        return run if run.status == "interrupted" else None

    run = wait_until(interrupted, timeout=30, what="the far host's run to be marked interrupted")
    assert time.time() >= lease_until, "recovered before its lease ran out"
    assert time.time() - killed < 20
    assert "host-far" in run.error["message"] and "lease" in run.error["message"], run.error

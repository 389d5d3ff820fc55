"""tether on PostgreSQL (docs/postgres.md), against DBOS on the SAME PostgreSQL server (section 12).

Starts its own throwaway cluster (tests/helpers/postgres.py: ``initdb`` into a temporary folder,
unix socket only), its server run with PostgreSQL's own durability defaults (``fsync=on``,
``synchronous_commit=on``, ``full_page_writes=on``; ``--fast-server``: the test suite's
``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``), and gives tether and DBOS a
database each on it:

- **12a** durable trivial runs, one after the other: the 3-step pipeline of ``peers.py`` (2a),
  tether on ``postgresql://`` vs a DBOS workflow of three steps with
  ``system_database_url=postgresql://`` (DBOS 3.x on psycopg 3 through SQLAlchemy), batches
  interleaved side by side (the side that goes first alternates), median of >= 5 batches.
- **12b** idempotent attach: ``start()`` of a finished run vs DBOS's call inside
  ``SetWorkflowID(same id)`` and ``DBOS.start_workflow`` with the same id (the faster DBOS form is
  the baseline), in blocks of ``BLOCK`` calls per form; p50 over all calls.
- **12c** a race: 16 processes each start the same 200 keys at once (released together through
  their stdin) and wait for the results: one run per key, every process got the same run for each
  key, no exception raised to any caller.
- **12d** a worker pool on 3 "hosts" (tests/helpers/hosts.py: ``unshare --uts --pid``, own host
  name; needs root) running ``tether worker helpers.host_pipelines`` drains 1,000 pending detached
  runs; each body appends its run's number and host to one log with ``O_APPEND``: a run executed
  twice would leave two lines. Time from the hosts' launch (interpreter start-up included) to the
  last run's end.

    python bench/bench_postgres.py [--quick] [--fast-server] [--json OUT] [--wait-idle S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _paths
from benchlib import CpuWatch, Row, add_wait_idle, machine, ms, pct, report, say, version_of, wait_idle
from peers import QUICK, Sizes, interleaved, reattach, warm_up

import tether
from helpers.postgres import Cluster, missing, start_cluster, timed_race

try:
    from dbos import DBOS
except ImportError:
    DBOS = None  # type: ignore[assignment,misc]

pc = time.perf_counter
HOSTS = ("host-a", "host-b", "host-c")
SERVER_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers")
# PostgreSQL's own defaults, over the test suite's fsync, synchronous_commit and full_page_writes off
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
FULL = Sizes(batches=5, batch_runs=60, warmup=10, single_runs=0, restarts=300)

_RACE = """
import json, sys, time
import tether
tether.configure(db=sys.argv[1], max_concurrency=8)
p = tether.pipeline(name="bench_pg.race")(lambda ctx, k: k)
tether.runs(limit=1)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
ids, errors = [], []
for k in range(int(sys.argv[2])):
    try:
        ids.append(p.start(k=k).id)
    except Exception as exc:
        ids.append(None)
        errors.append(repr(exc))
starts = time.perf_counter() - t0
for i in ids:
    try:
        if i is not None:
            tether.get_run(i).result(timeout=300)
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"ids": ids, "errors": errors, "starts": starts}), flush=True)
"""


def server(cluster: Cluster) -> str:
    """What the server says it runs: the durability settings measured."""
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        shown = [f"{n}={conn.execute(f'SHOW {n}').fetchone()[0]}" for n in SERVER_SETTINGS]  # type: ignore[index]
    return f"PostgreSQL {version}, local unix socket, {', '.join(shown)}"


def launch_dbos(url: str) -> str:
    """DBOS on its own database of the same server; its settings."""
    DBOS(
        config={
            "name": "tether-pg-peers",
            "system_database_url": url.replace("postgresql://", "postgresql+psycopg://", 1),
            "run_admin_server": False,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    return (
        "system_database_url=postgresql+psycopg://… (a database of its own on the same server), "
        "DBOS's defaults: SQLAlchemy pool of 20 connections, the server's synchronous_commit; "
        "admin server off; workflow called directly inside SetWorkflowID"
    )


def attach(sz: Sizes, n: int) -> Row:
    """12b: re-start of finished runs, tether and both DBOS forms in blocks of BLOCK calls."""
    at = reattach(sz.restarts, n)
    t50, c50, s50 = pct(at.start, 0.5), pct(at.call, 0.5), pct(at.start_workflow, 0.5)
    say(f"  12b: tether start() p50 {ms(t50)}; DBOS call {ms(c50)}, start_workflow {ms(s50)}")
    return Row(
        "12b",
        f"PostgreSQL: idempotent re-start of a finished run, {at.calls} calls per form",
        f"`start()` p50 {ms(t50)}, p99 {ms(pct(at.start, 0.99))}",
        f"DBOS on the same server: `SetWorkflowID` + call p50 {ms(c50)}, + `start_workflow` p50 {ms(s50)}",
        t50 / min(c50, s50),
        "(informative)",
        None,
    )


def versus_dbos(sz: Sizes, cluster: Cluster) -> tuple[list[Row], str, str]:
    """12a and 12b; (rows, tether's settings, DBOS's settings)."""
    tether.configure(db=cluster.new_database())
    try:
        tether.runs(limit=1)  # creates the schema
        tether_settings = '`tether.configure(db="postgresql://…")`, defaults (psycopg 3 pool)'
        dbos_settings = launch_dbos(cluster.url("dbos_bench"))
        try:
            warm_up(sz.warmup, 0)
            tether_cell, dbos_cell, ratio = interleaved(sz, 0, "12a")
            n = sz.batches * sz.batch_runs
            rows = [
                Row(
                    "12a",
                    f"PostgreSQL: durable trivial runs (3 checkpointed steps), {n} runs one after the "
                    f"other (median of {sz.batches} interleaved batches of {sz.batch_runs})",
                    tether_cell,
                    f"DBOS on the same server {dbos_cell}",
                    ratio,
                    "(informative)",
                    None,
                ),
                attach(sz, n),
            ]
        finally:
            DBOS.destroy(destroy_registry=False)
    finally:
        tether.workspace.default().close()
    return rows, tether_settings, dbos_settings


def race(url: str, procs: int, keys: int) -> Row:
    """12c: ``procs`` processes start the same ``keys`` keys at once."""
    env = dict(os.environ, PYTHONPATH=_paths.child_pythonpath(_paths.SRC))
    texts, took = timed_race(_RACE, [[url, str(keys)]] * procs, 600, env)
    outs = [json.loads(t) for t in texts]
    from helpers.util import raw

    rows = raw(url, "SELECT key, attempt FROM runs")
    errors = [e for o in outs for e in o["errors"]]
    one_each = len(rows) == keys and all(a == 1 for _, a in rows)
    same = all(o["ids"] == outs[0]["ids"] for o in outs)
    starts = max(o["starts"] for o in outs)  # the slowest process's loop of start() calls
    say(
        f"  12c: {len(rows)} runs, one per key {one_each}, same runs {same}, "
        f"{len(errors)} errors, {took:.1f} s (start() loops {starts:.1f} s)"
    )
    for e in errors[:5]:
        say(f"    error: {e}")
    return Row(
        "12c",
        f"PostgreSQL: {procs} processes each start the same {keys} keys at once and wait for them",
        f"{len(rows)} runs ({'one per key' if one_each else 'NOT one per key'}), every process got the "
        f"same run of each key: {'yes' if same else 'NO'}, {len(errors)} errors raised, {took:.1f} s "
        f"for {procs * keys:,} `start()` calls and their results (the calls alone: {starts:.1f} s in "
        "the slowest process)",
        "",
        None,
        "one run per key, no error",
        one_each and same and not errors,
    )


def hosts_drain(url: str, n: int, tmp: Path) -> Row:
    """12d: 3 hosts running ``tether worker`` drain ``n`` pending runs."""
    from helpers import host_pipelines
    from helpers.hosts import host_process, kill_host, need_hosts
    from helpers.util import raw, wait_until

    try:
        need_hosts()
    except BaseException as exc:  # pytest's Skipped is a BaseException
        return Row("12d", "PostgreSQL: 3 worker hosts drain pending runs", "not measured", str(exc), None,
                   "no run twice", None)  # fmt: skip
    log = tmp / "executions.log"
    tether.configure(db=url)
    try:
        for i in range(n):  # pending, for any worker
            host_pipelines.where.start(i=i, log=str(log), pause=0.0, detach=True)
    finally:
        tether.workspace.default().close()
    env = dict(os.environ, PYTHONPATH=_paths.child_pythonpath(_paths.SRC))
    argv = [
        sys.executable,
        "-m",
        "tether.cli",
        "worker",
        "helpers.host_pipelines",
        "--db",
        url,
        "--poll",
        "0.05",
    ]
    t0 = pc()
    procs = [host_process(h, argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in HOSTS]
    try:

        def drained() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"a worker host ended with {p.returncode}")
            return raw(url, "SELECT count(*) FROM runs WHERE status = 'succeeded'")[0][0] == n

        wait_until(drained, timeout=600, what=f"{n} runs drained")
        took = pc() - t0
    finally:
        for p in procs:
            kill_host(p)
    lines = [line.split() for line in log.read_text().splitlines()]
    twice = len(lines) - len({i for i, _, _ in lines})
    shares = Counter(host for _, host, _ in lines)
    attempts = raw(url, "SELECT max(attempt) FROM runs")[0][0]
    share_text = " / ".join(str(shares[h]) for h in HOSTS)
    say(f"  12d: {len(lines)} executions, {twice} twice, shares {share_text}, {took:.1f} s")
    return Row(
        "12d",
        f"PostgreSQL: 3 hosts (own UTS and pid namespaces) running `tether worker` drain {n:,} pending "
        "runs (time from the hosts' launch, start-up included; queued before it)",
        f"{len(lines):,} executions, {twice} twice, max attempt {attempts}; per host {share_text}; "
        f"{took:.1f} s ({n / took:,.0f} runs/s)",
        "",
        None,
        "no run twice",
        twice == 0 and len(lines) == n,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument(
        "--fast-server", action="store_true", help="the test suite's server: fsync and synchronous_commit off"
    )
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    add_wait_idle(ap)
    args = ap.parse_args(argv)
    sz, keys, queue = (QUICK, 50, 200) if args.quick else (FULL, 200, 1000)
    info = machine()
    info["dbos"] = version_of("dbos") or "not installed"
    info["psycopg"] = version_of("psycopg") or "not installed"
    why = missing()
    if why:
        say(f"no PostgreSQL here: {why}")
        report([Row("12", "PostgreSQL", "not measured", why, None, "(informative)", None)], info,
               CpuWatch(), 0.0, args.json)  # fmt: skip
        return 0
    free = wait_idle(args.wait_idle)
    if free is not None:
        info["CPU idle just before the start"] = f"{free:.0%} (the rest was used by other processes)"
    watch = CpuWatch()
    started = pc()
    rows: list[Row] = []
    cluster = start_cluster(None if args.fast_server else DURABLE)
    try:
        info["PostgreSQL server (both sides)"] = server(cluster)
        if DBOS is None:
            rows.append(Row("12a", "PostgreSQL vs DBOS", "not measured", "DBOS is not installed", None,
                            "(informative)", None))  # fmt: skip
        else:
            say(f"[12a, 12b] tether vs DBOS on one PostgreSQL server: {sz.batches * sz.batch_runs} runs ...")
            more, info["tether settings (PostgreSQL)"], info["dbos settings (PostgreSQL)"] = versus_dbos(
                sz, cluster
            )
            rows += more
        say(f"[12c] 16 processes x {keys} keys ...")
        rows.append(race(cluster.new_database(), 16, keys))
        say(f"[12d] 3 worker hosts drain {queue} pending runs ...")
        with tempfile.TemporaryDirectory(prefix="tether-pg-hosts-") as tmp:
            rows.append(hosts_drain(cluster.new_database(), queue, Path(tmp)))
    finally:
        cluster.stop()
    report(rows, info, watch, pc() - started, args.json,
           head=f"## tether on PostgreSQL ({'quick' if args.quick else 'full'})\n\n"
           + "\n".join(f"- **{k}**: {v}" for k, v in info.items()) + "\n\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

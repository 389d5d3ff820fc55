"""tether against its peers: DBOS (durable workflows on SQLite) and Huey (a task queue on SQLite).

Measures, in ONE process and interleaved rep by rep, the figures of the peers issue and prints a
markdown table with the goal and PASS/MISS of each (ratios are tether / peer):

- **2a** durable trivial runs, one after the other: a 3-step pipeline, started and waited for.
  tether: ``@tether.pipeline`` whose body makes three ``ctx.step(name, fn, ...)`` calls (each a
  checkpoint stored in SQLite) returning small dicts; ``pipeline.start(i=...)`` then
  ``run.result()``, distinct params per run (a new key each time). DBOS: a ``@DBOS.workflow()``
  calling three ``@DBOS.step()`` functions, called directly inside ``SetWorkflowID(id)`` (the call
  runs the workflow and returns its result: DBOS's fastest sequential path; ``DBOS.start_workflow``
  + ``get_result()`` was about 2x slower in trials). The runs are done in 5 batches (quick: 5 small
  ones), tether and DBOS alternating batch by batch (the side that goes first alternates too);
  throughput is the median over the batches, latency the p50 over every run.
- **2b** single-run latency vs Huey with its documented defaults: tether starts a pipeline whose
  body returns a value and waits with ``run.result()``; Huey enqueues a task returning a value and
  waits with ``result.get(blocking=True)``, consumed by ``huey.create_consumer()`` started in this
  process (``consumer.start()``, as huey's API docs show for embedding the consumer). tether and
  Huey alternate in blocks of 20 runs (call by call, each side would mostly measure the cold CPU
  caches the other one left; the side that goes first alternates).
- **2c** (informative) the same with Huey polling as fast as we could reasonably ask: its worker
  polls the queue every 1 ms without back-off and the waiting client polls for the result every
  1 ms. Huey documents no lower bound for ``--delay`` (default 0.1 s) and requires ``backoff >= 1``.
- **2d** the runs of 2a at equal durability: tether with ``tether.configure(durability="full")``
  (``synchronous=FULL``: an fsync of the WAL per commit, checked on its connection) against DBOS at
  its default, also FULL; new ids on both sides, a warm-up, then batches interleaved as in 2a.
  Measured after 3 and 7b (its runs would change their counts); tether goes back to "normal".
- **3** idempotent re-start of a finished run: tether ``start()`` of a succeeded run with the same
  params (returns the existing run); DBOS calling the workflow again inside
  ``SetWorkflowID(same id)`` (returns the recorded result without running it) and
  ``DBOS.start_workflow`` with the same id (returns a handle on it; its ``get_result()`` is waited
  for outside the timing); the faster DBOS form is the baseline. The three forms alternate in
  blocks of 20 calls, over the finished runs of 2a.
- **7b** database bytes per run after the runs of 2a: (file size + WAL after
  ``PRAGMA wal_checkpoint(TRUNCATE)``) growth over the measured runs / their count (the same count
  on both sides; the total size / every run stored is shown too).

Settings, as found in the peers' code (DBOS 3.4.0 ``_sys_db_sqlite.py``: its connections set
``busy_timeout``, ``foreign_keys`` and ``BEGIN IMMEDIATE``, not the journal mode; huey 3.5.4
``SqliteStorage``: ``journal_mode='wal'``, ``synchronous`` untouched unless ``fsync=`` is given):
the DBOS file is switched to WAL by this script before ``DBOS.launch()`` (WAL is persistent in the
file); neither peer sets ``synchronous``, so both run at SQLite's default (FULL: an fsync of the WAL
per commit), while tether uses WAL + NORMAL by default (FULL in 2d). The header reports the
PRAGMAs read from the files.
DBOS's admin HTTP server is off (``run_admin_server: False``) and its log level WARNING: neither
changes what a workflow does.

    python bench/peers.py                  # full run (~35 s on an idle machine)
    python bench/peers.py --quick          # smoke run (< 40 s); figures are noisier
    python bench/peers.py --json OUT.json  # also write the rows for bench/run.py

Needs the peers: ``pip install -e . -r bench/requirements.txt`` (in a venv of its own); without
them the rows say "not installed". Everything happens in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import CpuWatch, Row, add_wait_idle, machine, ms, pct, report, say, version_of, wait_idle

import tether

try:  # peers (bench/requirements.txt); without them their rows say so
    from dbos import DBOS, SetWorkflowID
except ImportError:
    DBOS = SetWorkflowID = None  # type: ignore[assignment,misc]
try:
    from huey import SqliteHuey
except ImportError:
    SqliteHuey = None  # type: ignore[assignment,misc]

pc = time.perf_counter
BLOCK = 20  # sections 3, 2b, 2c: calls per side in a row before switching side
FULL_IDS = 1_000_000  # 2d: the first id of its runs (apart from 2a's)
INSTALL = "pip install -r bench/requirements.txt"


@dataclass(frozen=True)
class Sizes:
    batches: int  # 2a: batches per side (throughput = median over them)
    batch_runs: int  # 2a: runs per batch
    warmup: int  # 2a: warm-up runs per side (not timed; counted in the DB totals)
    single_runs: int  # 2b, 2c: single runs per side
    restarts: int  # 3: re-starts per form


FULL = Sizes(batches=5, batch_runs=100, warmup=10, single_runs=200, restarts=300)
QUICK = Sizes(batches=5, batch_runs=10, warmup=5, single_runs=30, restarts=60)


# -- the work: the same on every side ---------------------------------------------------------------


def small(i: int, k: int) -> dict[str, int]:
    return {"i": i, "k": k}


def expected(i: int) -> list[dict[str, int]]:
    return [small(i, 1), small(i, 2), small(i, 3)]


@tether.pipeline(name="peers.three_steps")
def three_steps(ctx: Any, i: int) -> list[dict[str, int]]:
    return [ctx.step("s1", small, i, 1), ctx.step("s2", small, i, 2), ctx.step("s3", small, i, 3)]


@tether.pipeline(name="peers.single")
def single(ctx: Any, i: int) -> int:
    return i


if DBOS is not None:

    @DBOS.step()
    def dbos_small(i: int, k: int) -> dict[str, int]:
        return {"i": i, "k": k}

    @DBOS.workflow()
    def dbos_three_steps(i: int) -> list[dict[str, int]]:
        return [dbos_small(i, 1), dbos_small(i, 2), dbos_small(i, 3)]


def tether_run(i: int) -> float:
    t0 = pc()
    value = three_steps.start(i=i).result(timeout=60)
    spent = pc() - t0
    if value != expected(i):
        raise SystemExit(f"tether run i={i} returned {value!r}")
    return spent


def dbos_run(i: int) -> float:
    t0 = pc()
    with SetWorkflowID(f"peers-{i}"):
        value = dbos_three_steps(i)
    spent = pc() - t0
    if value != expected(i):
        raise SystemExit(f"DBOS workflow i={i} returned {value!r}")
    return spent


def warm_up(runs: int, below: int) -> None:
    """``runs`` runs of ids ``below - 1``, ``below - 2``, ... on each side, not timed: imports, first
    connections, first threads (and keys apart from the measured ones)."""
    for w in range(runs):
        tether_run(below - w - 1)
        dbos_run(below - w - 1)


@dataclass
class Reattach:
    """Seconds per call of each form of an idempotent re-start of a finished run."""

    calls: int  # per form
    start: list[float]  # tether ``three_steps.start(i=...)`` of a succeeded run
    start_result: list[float]  # the same and its ``result()``
    call: list[float]  # DBOS ``dbos_three_steps(i)`` inside ``SetWorkflowID(same id)``
    start_workflow: list[float]  # DBOS ``start_workflow`` with the same id (its result not timed)


def reattach(restarts: int, n: int) -> Reattach:
    """Re-start ``restarts`` of the finished runs ``0..n-1`` (of tether_run and dbos_run) in each form,
    in blocks of BLOCK calls per form (call by call, each form would mostly measure the cold caches
    the one before left), checking each call got the finished run."""
    keys = [i % n for i in range(0, restarts * 7, 7)]  # spread over the finished runs
    handles = {i: three_steps.start(i=i) for i in set(keys)}  # the runs, to check the attach
    at = Reattach(len(keys), [], [], [], [])
    for b in range(0, len(keys), BLOCK):
        block = keys[b : b + BLOCK]
        for i in block:
            t0 = pc()
            run = three_steps.start(i=i)
            t1 = pc()
            value = run.result()
            t2 = pc()
            at.start.append(t1 - t0)
            at.start_result.append(t2 - t0)
            if run.id != handles[i].id or value != expected(i):
                raise SystemExit(f"tether start(i={i}) did not return the finished run")
        for i in block:
            t0 = pc()
            with SetWorkflowID(f"peers-{i}"):
                value = dbos_three_steps(i)
            at.call.append(pc() - t0)
            if value != expected(i):
                raise SystemExit(f"DBOS re-call i={i} returned {value!r}")
        for i in block:
            t0 = pc()
            with SetWorkflowID(f"peers-{i}"):
                handle = DBOS.start_workflow(dbos_three_steps, i)
            at.start_workflow.append(pc() - t0)
            if handle.get_workflow_id() != f"peers-{i}" or handle.get_result() != expected(i):
                raise SystemExit(f"DBOS start_workflow i={i} gave {handle.get_workflow_id()}")
    return at


# -- SQLite files -----------------------------------------------------------------------------------


def db_bytes(path: Path) -> int:
    """Size of the database: main file + WAL, after a TRUNCATE checkpoint (retried while busy)."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        for _ in range(50):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                break
            time.sleep(0.05)
        else:
            say(f"  warning: the checkpoint of {path.name} stayed busy; the WAL is counted as is")
    finally:
        conn.close()
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def pragmas(path: Path) -> str:
    """journal_mode (persistent, from the file) and synchronous (per connection: what a connection
    that does not set it gets)."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()
    return f"journal_mode={mode}, synchronous={sync} ({SYNC.get(sync, '?')}) by default"


def kb(n: float) -> str:
    return f"{n / 1024:.2f} KiB"


# -- DBOS: sections 2a, 3, 7b -----------------------------------------------------------------------


def not_installed(ref: str, name: str, peer: str, goal: str) -> Row:
    return Row(ref, name, "not measured", f"{peer} is not installed ({INSTALL})", None, goal, None)


def launch_dbos(path: Path) -> str:
    """Create the DBOS system database in WAL mode and launch DBOS on it; returns its settings."""
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.close()
    if mode != "wal":
        raise SystemExit(f"could not switch {path} to WAL (journal_mode={mode})")
    DBOS(
        config={
            "name": "tether-peers",
            "system_database_url": f"sqlite:///{path}",
            "run_admin_server": False,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    return (
        f"system database sqlite:///…/{path.name}; {pragmas(path)} (WAL set on the file by this "
        "script before launch: DBOS does not set a journal mode; synchronous: DBOS does not set "
        "it); DBOS connections: busy_timeout=30000, foreign_keys=ON, BEGIN IMMEDIATE; workflow "
        "called directly inside SetWorkflowID"
    )


def interleaved(sz: Sizes, first: int, label: str) -> tuple[str, str, float]:
    """tether and DBOS runs of ids ``first``.. in sz.batches batches per side, alternating batch
    by batch (the side that goes first alternates too): each side's throughput (the median batch
    rate) and latencies as a cell, and the ratio of the throughputs."""
    lat_t: list[float] = []
    lat_d: list[float] = []
    rate_t: list[float] = []
    rate_d: list[float] = []
    for b in range(sz.batches):
        ids = range(first + b * sz.batch_runs, first + (b + 1) * sz.batch_runs)
        sides: list[tuple[Callable[[int], float], list[float], list[float]]] = [
            (tether_run, lat_t, rate_t),
            (dbos_run, lat_d, rate_d),
        ]
        if b % 2:
            sides.reverse()
        for fn, lat, rate in sides:
            gc.collect()
            t0 = pc()
            lat.extend(fn(i) for i in ids)
            rate.append(sz.batch_runs / (pc() - t0))
    rt, rd = statistics.median(rate_t), statistics.median(rate_d)
    say(
        f"  {label}: tether {rt:,.0f} runs/s ({', '.join(f'{r:,.0f}' for r in rate_t)}), p50 "
        f"{ms(pct(lat_t, 0.5))}; DBOS {rd:,.0f} runs/s ({', '.join(f'{r:,.0f}' for r in rate_d)}), "
        f"p50 {ms(pct(lat_d, 0.5))}"
    )

    def cell(rate: float, lat: list[float]) -> str:
        return f"{rate:,.0f} runs/s, p50 {ms(pct(lat, 0.5))}, p99 {ms(pct(lat, 0.99))}"

    return cell(rt, lat_t), cell(rd, lat_d), rt / rd


def bench_full(sz: Sizes) -> Row:
    """2d: 2a again with tether at durability="full" (synchronous=FULL, an fsync of the WAL per
    commit), DBOS's default: both sides equally durable. New ids on both sides (new keys)."""
    tether.configure(durability="full")
    try:
        store = tether.workspace.default().store()
        sync = store.conn().execute("PRAGMA synchronous").fetchone()[0]
        if sync != 2:
            raise SystemExit(f"tether at durability='full' runs synchronous={sync}, not 2 (FULL)")
        warm_up(sz.warmup, FULL_IDS)  # the connections switch to FULL, fresh keys on both sides
        tether_cell, dbos_cell, ratio = interleaved(sz, FULL_IDS, "2d (tether at full)")
    finally:
        tether.configure(durability="normal")
    return Row(
        "2d",
        f'the runs of 2a at equal durability: tether `configure(durability="full")` '
        f"(synchronous=FULL) vs DBOS at its default FULL, {sz.batches * sz.batch_runs} runs (median "
        f"of {sz.batches} interleaved batches of {sz.batch_runs})",
        tether_cell,
        f"DBOS on SQLite (WAL, FULL) {dbos_cell}",
        ratio,
        "ratio >= 5",
        ratio >= 5,
    )


def bench_durable(sz: Sizes, tether_db: Path, dbos_db: Path) -> list[Row]:
    """2a (throughput, latency), 7b (bytes per run) and 3 (idempotent re-start)."""
    warm_up(sz.warmup, 0)
    base_t, base_d = db_bytes(tether_db), db_bytes(dbos_db)

    tether_cell, dbos_cell, ratio = interleaved(sz, 0, "2a")
    n = sz.batches * sz.batch_runs
    rows = [
        Row(
            "2a",
            f"durable trivial runs (3 checkpointed steps), {n} runs one after the other: "
            f"throughput (median of {sz.batches} interleaved batches of {sz.batch_runs}) and "
            "latency start -> result",
            tether_cell,
            f"DBOS on SQLite (WAL) {dbos_cell}",
            ratio,
            "ratio >= 30",
            ratio >= 30,
        )
    ]

    # 7b: bytes per run
    end_t, end_d = db_bytes(tether_db), db_bytes(dbos_db)
    all_t = count(tether_db, "SELECT count(*) FROM runs")
    all_d = count(dbos_db, "SELECT count(*) FROM workflow_status")
    if all_t != all_d or all_t != n + sz.warmup:
        raise SystemExit(f"runs stored: tether {all_t}, DBOS {all_d}, expected {n + sz.warmup}")
    per_t, per_d = (end_t - base_t) / n, (end_d - base_d) / n
    say(
        f"  7b: tether {end_t:,} B for {all_t} runs ({per_t:,.0f} B/run over the {n} measured); "
        f"DBOS {end_d:,} B ({per_d:,.0f} B/run)"
    )
    rows.append(
        Row(
            "7b",
            f"database bytes per run (file + WAL after a TRUNCATE checkpoint): growth "
            f"over the {n} runs of 2a / {n} (in brackets: total size / all {all_t} runs)",
            f"{kb(per_t)} ({kb(end_t / all_t)})",
            f"DBOS {kb(per_d)} ({kb(end_d / all_d)})",
            per_t / per_d,
            "ratio <= 1",
            per_t <= per_d,
        )
    )

    # 3: idempotent re-start of a finished key
    at = reattach(sz.restarts, n)
    if count(dbos_db, "SELECT count(*) FROM workflow_status") != all_d:
        raise SystemExit("DBOS re-starts created workflows")
    if count(tether_db, "SELECT count(*) FROM runs") != all_t:
        raise SystemExit("tether re-starts created runs")
    t50, r50 = pct(at.start, 0.5), pct(at.start_result, 0.5)
    c50, s50 = pct(at.call, 0.5), pct(at.start_workflow, 0.5)
    base = min(c50, s50)
    say(
        f"  3: tether start() p50 {ms(t50)} (+ result() {ms(r50)}); DBOS call {ms(c50)}, "
        f"start_workflow {ms(s50)}"
    )
    rows.insert(
        1,
        Row(
            "3",
            f"idempotent re-start of a finished run (same params / same workflow id), "
            f"{at.calls} calls per form",
            f"`start()` p50 {ms(t50)}, p99 {ms(pct(at.start, 0.99))} (`start().result()` p50 {ms(r50)})",
            f"DBOS `SetWorkflowID` + call p50 {ms(c50)}, + `start_workflow` p50 {ms(s50)}",
            t50 / base,
            "ratio <= 0.1",
            t50 / base <= 0.1,
        ),
    )
    rows.append(bench_full(sz))  # last: its runs would change 7b's counts and 3's keys
    return rows


# -- Huey: sections 2b, 2c --------------------------------------------------------------------------


HUEY_DEFAULTS = {"initial_delay": 0.1, "backoff": 1.15, "max_delay": 10.0}
HUEY_FAST = {"initial_delay": 0.001, "backoff": 1.0, "max_delay": 0.001}
RESULT_DEFAULTS = {"backoff": 1.15, "max_delay": 1.0}  # result.get(blocking=True): from 0.05 s
RESULT_FAST = {"backoff": 1.0, "max_delay": 0.001}


def tether_single(i: int) -> float:
    t0 = pc()
    value = single.start(i=i).result(timeout=60)
    spent = pc() - t0
    if value != i:
        raise SystemExit(f"tether single run i={i} returned {value!r}")
    return spent


def huey_latencies(
    huey: Any, task: Any, n: int, first: int, consumer_opts: dict[str, float], result_opts: dict[str, float]
) -> tuple[list[float], list[float]]:
    """Runs ``n`` Huey tasks and ``n`` tether runs, alternating blocks; returns (tether, huey)
    latencies."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer = huey.create_consumer(workers=1, worker_type="thread", **consumer_opts)
    consumer.start()  # a scheduler thread + 1 worker thread; it also sets signal handlers
    try:
        for w in range(5):  # warm-up
            task(-w - 1).get(blocking=True, timeout=30, **result_opts)
            tether_single(first - w - 1)
        lat_t: list[float] = []
        lat_h: list[float] = []
        for b in range(0, n, BLOCK):  # blocks of BLOCK runs per side, Huey first and tether first
            block = range(first + b, first + min(n, b + BLOCK))
            sides = ["h", "t"] if (b // BLOCK) % 2 == 0 else ["t", "h"]
            for side in sides:
                for i in block:
                    if side == "t":
                        lat_t.append(tether_single(i))
                        continue
                    t0 = pc()
                    value = task(i).get(blocking=True, timeout=30, **result_opts)
                    lat_h.append(pc() - t0)
                    if value != i:
                        raise SystemExit(f"Huey task i={i} returned {value!r}")
        return lat_t, lat_h
    finally:
        consumer.stop(graceful=True)
        for s, h in saved.items():
            signal.signal(s, h)


def bench_huey(sz: Sizes, tmp: Path) -> tuple[list[Row], str]:
    huey = SqliteHuey("tether-peers", filename=str(tmp / "huey.db"))

    @huey.task(name="peers.value")
    def value_task(i: int) -> int:
        return i

    n = sz.single_runs
    lat_t, lat_h = huey_latencies(huey, value_task, n, 1_000_000, {}, {})
    t50, h50 = pct(lat_t, 0.5), pct(lat_h, 0.5)
    say(f"  2b: tether p50 {ms(t50)}; Huey (defaults) p50 {ms(h50)}")
    rows = [
        Row(
            "2b",
            f"single run, start -> result, trivial body returning a value ({n} runs each, "
            f"alternating blocks of {BLOCK})",
            f"p50 {ms(t50)}, p99 {ms(pct(lat_t, 0.99))}",
            f"Huey `SqliteHuey`, in-process thread consumer, documented defaults: p50 "
            f"{ms(h50)}, p99 {ms(pct(lat_h, 0.99))}",
            t50 / h50,
            "ratio <= 0.2",
            t50 / h50 <= 0.2,
        )
    ]
    lat_t, lat_h = huey_latencies(huey, value_task, n, 2_000_000, HUEY_FAST, RESULT_FAST)
    t50, h50 = pct(lat_t, 0.5), pct(lat_h, 0.5)
    say(f"  2c: tether p50 {ms(t50)}; Huey (1 ms polls) p50 {ms(h50)}")
    rows.append(
        Row(
            "2c",
            f"the same, Huey polling every 1 ms ({n} runs each, alternating blocks of {BLOCK})",
            f"p50 {ms(t50)}, p99 {ms(pct(lat_t, 0.99))}",
            f"Huey, worker and result polls every 1 ms: p50 {ms(h50)}, p99 {ms(pct(lat_h, 0.99))}",
            t50 / h50,
            "(informative)",
            None,
        )
    )
    settings = (
        f"SqliteHuey defaults ({pragmas(tmp / 'huey.db')}, cache_mb=8, fsync unset); "
        "consumer `huey.create_consumer(workers=1, worker_type='thread')` + `start()` in "
        "this process; 2b: its documented defaults, the worker polls the queue after "
        "initial_delay=0.1 s, x backoff=1.15 per empty poll, up to max_delay=10 s; "
        "`result.get(blocking=True)` polls from 0.05 s, x1.15, up to 1.0 s. 2c: "
        "initial_delay=0.001, backoff=1.0, max_delay=0.001 and "
        "`get(blocking=True, backoff=1.0, max_delay=0.001)` (huey documents no lower bound "
        "for the delay; backoff must be >= 1)"
    )
    return rows, settings


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 40 s)")
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    add_wait_idle(ap)
    args = ap.parse_args(argv)
    sz = QUICK if args.quick else FULL
    info = machine()
    info["dbos"] = version_of("dbos") or f"not installed ({INSTALL})"
    info["huey"] = version_of("huey") or f"not installed ({INSTALL})"
    info["SQLAlchemy (used by DBOS)"] = version_of("sqlalchemy") or "not installed"
    free = wait_idle(args.wait_idle)
    if free is not None:
        info["CPU idle just before the start"] = f"{free:.0%} (the rest was used by other processes)"
    watch = CpuWatch()
    started = pc()
    rows: list[Row] = []
    n = sz.batches * sz.batch_runs
    with tempfile.TemporaryDirectory(prefix="tether-peers-") as tmp_name:
        tmp = Path(tmp_name)
        tether_db = tmp / "tether.db"
        tether.configure(db=tether_db)
        try:
            tether.runs(limit=1)  # creates and migrates the tether DB
            mode = pragmas(tether_db).split(",")[0]
            info["tether settings"] = (
                f"{mode}; tether's connections set synchronous=1 (NORMAL), its default "
                'durability; 2d: synchronous=2 (FULL), `configure(durability="full")`'
            )
            if DBOS is None:
                info["dbos settings"] = "not measured: DBOS is not installed"
                say(f"DBOS is not installed: its rows are not measured ({INSTALL})")
                rows += [
                    not_installed("2a", "durable trivial runs, throughput", "DBOS", "ratio >= 30"),
                    not_installed(
                        "2d", "durable trivial runs at equal durability (FULL)", "DBOS", "ratio >= 5"
                    ),
                    not_installed("3", "idempotent re-start of a finished run", "DBOS", "ratio <= 0.1"),
                    not_installed("7b", "database bytes per run", "DBOS", "ratio <= 1"),
                ]
            else:
                say(f"[2a, 3, 7b] tether vs DBOS: {n} durable runs, re-starts, bytes ...")
                dbos_db = tmp / "dbos.sqlite"
                info["dbos settings"] = launch_dbos(dbos_db)
                try:
                    rows += bench_durable(sz, tether_db, dbos_db)
                finally:
                    DBOS.destroy(destroy_registry=False)
            if SqliteHuey is None:
                info["huey settings"] = "not measured: Huey is not installed"
                say(f"Huey is not installed: its rows are not measured ({INSTALL})")
                rows += [
                    not_installed("2b", "single run, start -> result", "Huey", "ratio <= 0.2"),
                    not_installed("2c", "single run, Huey polling every 1 ms", "Huey", "(informative)"),
                ]
            else:
                say(f"[2b, 2c] tether vs Huey: {sz.single_runs} single runs, twice ...")
                huey_rows, info["huey settings"] = bench_huey(sz, tmp)
                rows += huey_rows
        finally:
            tether.workspace.default().close()  # stop tether's threads before the directory goes away
    order = {"2a": 0, "2b": 1, "2c": 2, "2d": 3, "3": 4, "7b": 5}
    rows.sort(key=lambda r: order.get(r.ref, 9))
    head = "\n".join(f"- **{k}**: {v}" for k, v in info.items())
    report(
        rows,
        info,
        watch,
        pc() - started,
        args.json,
        head=f"## tether vs peers ({'quick' if args.quick else 'full'})\n\n{head}\n\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

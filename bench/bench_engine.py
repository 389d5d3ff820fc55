"""Engine benchmarks for tether: hot-path progress calls, log and progress persistence, polls on a
big database (panel and ``tether ls``), and start() latency.

Measures tether side by side with its baseline (tqdm, rich, a bare loop, raw sqlite3, a raw thread)
in ONE process on this machine, and prints a markdown table with the goal and PASS/MISS of each
figure. The figure numbers are those of docs/performance.md (sections 1, 4, 5 and 9 of
``bench/run.py``, which runs this script once per section and writes that page).

    python bench/bench_engine.py                  # every section (~1.5 min)
    python bench/bench_engine.py --quick          # smoke run (< 30 s); figures are noisier
    python bench/bench_engine.py --only loops     # sections: loops, log, progress, poll, attach, first,
                                                  # claim
    python bench/bench_engine.py --json OUT.json  # also write the rows for bench/run.py

Everything happens in a temporary directory that is removed at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import random
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
import tqdm as tqdm_module
from benchlib import CpuWatch, Row, add_wait_idle, machine, ms, ns, pct, report, say, version_of, wait_idle
from tqdm import tqdm

import tether
from tether import cli
from tether.store import _schema
from tether.store._rows import _RUN_COLS

try:  # rich is a peer of section 1 (bench/requirements.txt); without it its rows say so
    from rich.console import Console
    from rich.progress import Progress
    from rich.progress import track as rich_track
except ImportError:
    Console = Progress = rich_track = None  # type: ignore[assignment,misc]

ROOT = Path(__file__).resolve().parent.parent
pc = time.perf_counter


# -- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    loop_n: int  # items per ctx.track / tqdm / rich / bare loop
    rich_adv_n: int  # calls of rich's Progress.advance (~2 us each: fewer)
    loop_reps: int  # repetitions of each loop (median taken)
    log_n: int  # ctx.log() lines per run
    log_reps: int
    adv_n: int  # ctx.advance() calls of the progress-persistence run
    raw_updates: int  # raw sqlite3 UPDATEs of the baseline
    seen_s: float  # seconds a reader watches a run's progress
    attach_calls: int
    first_runs: int
    claim_runs: int  # claims of each kind (with and without concurrency=)
    poll_runs: int  # runs that carry the events
    poll_events_per_run: int
    all_runs: int  # total runs in the poll database (for tether.runs(limit=50), tether ls)
    polls: int
    lists: int
    ls_procs: int  # `tether ls` subprocesses (median taken)


FULL = Sizes(
    loop_n=3_000_000,
    rich_adv_n=300_000,
    loop_reps=5,
    log_n=200_000,
    log_reps=5,
    adv_n=3_000_000,
    raw_updates=200_000,
    seen_s=3.0,
    attach_calls=3000,
    first_runs=300,
    poll_runs=1000,
    poll_events_per_run=1000,
    all_runs=10_000,
    polls=2000,
    lists=300,
    ls_procs=9,
    claim_runs=2000,
)
QUICK = Sizes(
    loop_n=300_000,
    rich_adv_n=30_000,
    loop_reps=5,
    log_n=50_000,
    log_reps=5,
    adv_n=1_000_000,
    raw_updates=50_000,
    seen_s=1.5,
    attach_calls=500,
    first_runs=60,
    poll_runs=100,
    poll_events_per_run=1000,
    all_runs=2000,
    polls=300,
    lists=60,
    ls_procs=5,
    claim_runs=300,
)


# -- pipelines (module level, so they are registered once under stable names) ----------------------

_devnull = open(os.devnull, "w")  # noqa: SIM115 - shared by every tqdm bar and rich console


@tether.pipeline(name="bench.loop")
def loop_body(ctx: Any, mode: str, n: int, rep: int) -> float:
    """One timed loop of ``n`` items/calls; returns the loop's seconds (perf_counter)."""
    ctx.phase("loop", total=n)
    if mode == "bare":
        t0 = pc()
        for _ in range(n):
            pass
        return pc() - t0
    if mode == "tqdm":
        t0 = pc()
        for _ in tqdm(range(n), file=_devnull):
            pass
        return pc() - t0
    if mode == "rich":  # rich.progress.track with its defaults, to a console on /dev/null
        console = Console(file=_devnull)
        t0 = pc()
        for _ in rich_track(range(n), console=console):
            pass
        return pc() - t0
    if mode == "track":
        t0 = pc()
        for _ in ctx.track(range(n)):
            pass
        return pc() - t0
    if mode == "update":
        bar = tqdm(total=n, file=_devnull)
        t0 = pc()
        for _ in range(n):
            bar.update(1)
        spent = pc() - t0
        bar.close()
        return spent
    if mode == "rich_advance":
        with Progress(console=Console(file=_devnull)) as progress:
            task = progress.add_task("loop", total=n)
            t0 = pc()
            for _ in range(n):
                progress.advance(task, 1)
            return pc() - t0
    if mode == "advance":
        t0 = pc()
        for _ in range(n):
            ctx.advance()
        return pc() - t0
    raise ValueError(mode)


@tether.pipeline(name="bench.log")
def log_body(ctx: Any, n: int, rep: int) -> float:
    """Logs ``n`` lines; returns perf_counter() at the first ctx.log() call."""
    ctx.phase("logging", total=n)
    t0 = pc()
    for i in range(n):
        ctx.log("processed item %d of the benchmark", i)
    return t0


@tether.pipeline(name="bench.advance")
def advance_body(ctx: Any, n: int, rep: int) -> float:
    """Calls ctx.advance() ``n`` times; returns perf_counter() at the first call."""
    ctx.phase("advancing", total=n)
    t0 = pc()
    for _ in range(n):
        ctx.advance()
    return t0


@tether.pipeline(name="bench.advance_for")
def advance_for_body(ctx: Any, seconds: float, rep: int) -> int:
    """Calls ctx.advance() as fast as it can for ``seconds``; returns the count."""
    ctx.phase("advancing")
    end = pc() + seconds
    n = 0
    while pc() < end:
        for _ in range(1000):
            ctx.advance()
        n += 1000
    return n


@tether.pipeline(name="bench.attach")
def attach_body(ctx: Any, x: int) -> dict[str, int]:
    return {"x": x}


@tether.pipeline(name="bench.first")
def first_body(ctx: Any, i: int, tag: str) -> float:
    return pc()  # the body's first statement


def result_of(run: tether.Run) -> Any:
    try:
        return run.result(timeout=300)
    except tether.RunFailed as exc:
        raise SystemExit(f"benchmark run {run.id} failed: {exc}") from exc


# -- 1: progress hot path -------------------------------------------------------------------------


def bench_loops(sz: Sizes) -> list[Row]:
    n = sz.loop_n
    have_rich = rich_track is not None
    modes = ["bare", "tqdm", "track", "update", "advance"] + (["rich", "rich_advance"] if have_rich else [])
    size = {m: (sz.rich_adv_n if m == "rich_advance" else n) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up (imports, first thread, first bar)
        result_of(loop_body.start(mode=m, n=min(size[m], 50_000), rep=-1))
    for rep in range(sz.loop_reps):  # interleaved, so drift hits every mode alike
        for m in modes:
            gc.collect()
            times[m].append(result_of(loop_body.start(mode=m, n=size[m], rep=rep)) / size[m])
    med = {m: statistics.median(v) for m, v in times.items()}
    say(f"  per item/call (median of {sz.loop_reps}): " + ", ".join(f"{m} {ns(v)}" for m, v in med.items()))
    bare = f"bare loop {ns(med['bare'])}"
    reps = f"median of {sz.loop_reps}"
    rows = [
        Row(
            "1a",
            f"`ctx.track(range(N))` per item vs tqdm, N={n:,} ({reps})",
            ns(med["track"]),
            f"`tqdm(range(N))` {ns(med['tqdm'])} ({bare})",
            med["track"] / med["tqdm"],
            "ratio <= 0.5",
            med["track"] / med["tqdm"] <= 0.5,
        ),
    ]
    if have_rich:
        rows.append(
            Row(
                "1b",
                f"`ctx.track(range(N))` per item vs rich, N={n:,} ({reps})",
                ns(med["track"]),
                f"`rich.progress.track(range(N))` {ns(med['rich'])}",
                med["track"] / med["rich"],
                "ratio <= 0.5",
                med["track"] / med["rich"] <= 0.5,
            )
        )
    else:
        rows.append(
            Row(
                "1b",
                "`ctx.track()` vs `rich.progress.track`",
                ns(med["track"]),
                "not measured: rich is not installed (pip install -r bench/requirements.txt)",
                None,
                "ratio <= 0.5",
                None,
            )
        )
    rows.append(
        Row(
            "1c",
            f"`ctx.advance()` per call vs tqdm, N={n:,} ({reps})",
            ns(med["advance"]),
            f"`tqdm.update(1)` {ns(med['update'])} ({bare})",
            med["advance"] / med["update"],
            "ratio <= 0.5",
            med["advance"] / med["update"] <= 0.5,
        )
    )
    if have_rich:
        r = med["advance"] / med["rich_advance"]
        rows.append(
            Row(
                "1d",
                f"`ctx.advance()` per call vs rich, N={n:,} / {sz.rich_adv_n:,} ({reps})",
                ns(med["advance"]),
                f"`Progress.advance(task, 1)` {ns(med['rich_advance'])}",
                r,
                "ratio <= 0.5",
                r <= 0.5,
            )
        )
    return rows


# -- 4: what the store absorbs: log lines and progress updates ------------------------------------


def _ddl(table_name: str) -> str:
    for stmt in _schema._V1:
        if f"CREATE TABLE {table_name} " in stmt or f"CREATE TABLE {table_name}(" in stmt:
            return stmt
    raise RuntimeError(f"no {table_name} table in tether._schema")


def _raw_conn(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def raw_log_insert(path: Path, n: int, batch: int = 1000) -> float:
    """Rows/s of a plain batched sqlite3 insert of the rows ctx.log() produces (WAL, NORMAL)."""
    conn = _raw_conn(path)
    conn.execute(_ddl("events"))
    run_id = secrets.token_hex(6)
    now = time.time()
    rows = [
        (
            run_id,
            i + 1,
            now,
            "log",
            "logging",
            json.dumps(
                {"level": "info", "message": f"processed item {i} of the benchmark"},
                separators=(",", ":"),
                sort_keys=True,
            ),
        )
        for i in range(n)
    ]
    sql = "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, ?, ?, ?, ?)"
    t0 = pc()
    for start in range(0, n, batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[start : start + batch])
        conn.execute("COMMIT")
    spent = pc() - t0
    conn.close()
    return n / spent


def raw_progress_update(path: Path, n: int, batch: int = 1000) -> float:
    """UPDATEs/s of one run's progress row with plain sqlite3, every update written (WAL, NORMAL,
    ``executemany`` in transactions of ``batch`` updates)."""
    conn = _raw_conn(path)
    conn.execute(_ddl("runs"))
    run_id = secrets.token_hex(6)
    conn.execute(
        "INSERT INTO runs (id, key, attempt, pipeline, params, status, created_at, "
        "updated_at, done, total) VALUES (?, 'k', 1, 'p', '{}', 'running', 0, 0, 0, ?)",
        (run_id, n),
    )
    sql = "UPDATE runs SET done = ?, updated_at = ? WHERE id = ?"
    t0 = pc()
    for start in range(0, n, batch):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, [(i + 1, now, run_id) for i in range(start, min(n, start + batch))])
        conn.execute("COMMIT")
    spent = pc() - t0
    done = conn.execute("SELECT done FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    conn.close()
    if done != n:
        raise SystemExit(f"raw progress baseline stored done={done}, expected {n}")
    return n / spent


def bench_log(sz: Sizes, db: Path, tmp: Path) -> list[Row]:
    n = sz.log_n
    result_of(log_body.start(n=2000, rep=-1))  # warm-up
    rates, raws = [], []
    for rep in range(sz.log_reps):  # interleaved with the raw baseline
        gc.collect()
        run = log_body.start(n=n, rep=rep)
        run.wait(timeout=300)
        t_end = pc()
        t_first = result_of(run)
        conn = sqlite3.connect(db)
        stored = conn.execute(
            "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'log'", (run.id,)
        ).fetchone()[0]
        conn.close()
        if stored != n:
            raise SystemExit(f"run {run.id}: {stored} log events stored, {n} logged")
        rates.append(stored / (t_end - t_first))
        gc.collect()
        raws.append(raw_log_insert(tmp / f"raw-log-{rep}.db", n))
    raw, rate = statistics.median(raws), statistics.median(rates)
    say(
        f"  ctx.log: {rate:,.0f} lines/s (runs: {', '.join(f'{r:,.0f}' for r in rates)}); "
        f"raw sqlite3: {raw:,.0f} rows/s ({', '.join(f'{r:,.0f}' for r in raws)})"
    )
    return [
        Row(
            "4a",
            f"`ctx.log()` lines persisted per second, {n:,} lines (median of {sz.log_reps})",
            f"{rate:,.0f} /s",
            f"raw sqlite3 batched INSERT {raw:,.0f} rows/s",
            rate / raw,
            "ratio >= 0.5",
            rate / raw >= 0.5,
        )
    ]


def bench_progress(sz: Sizes, db: Path, tmp: Path) -> list[Row]:
    """4b: ctx.advance() calls whose effect is persisted, per second; 4c: what a reader sees."""
    n = sz.adv_n
    result_of(advance_body.start(n=10_000, rep=-1))  # warm-up
    rates, raws = [], []
    for rep in range(sz.log_reps):
        gc.collect()
        run = advance_body.start(n=n, rep=rep)
        run.wait(timeout=300)
        t_end = pc()
        t_first = result_of(run)
        conn = sqlite3.connect(db)
        done = conn.execute("SELECT done FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
        conn.close()
        if done != n:
            raise SystemExit(f"run {run.id}: done={done} stored, {n} advanced")
        rates.append(n / (t_end - t_first))
        gc.collect()
        raws.append(raw_progress_update(tmp / f"raw-progress-{rep}.db", sz.raw_updates))
    rate, raw = statistics.median(rates), statistics.median(raws)
    say(f"  ctx.advance persisted: {rate:,.0f} /s; raw sqlite3 UPDATE per update: {raw:,.0f} /s")
    rows = [
        Row(
            "4b",
            f"`ctx.advance()` updates persisted per second, {n:,} calls (median of "
            f"{sz.log_reps}; coalesced: one row write per flush tick)",
            f"{rate:,.0f} /s",
            f"raw sqlite3 batched UPDATE, one per update, {raw:,.0f} /s",
            rate / raw,
            "ratio >= 0.5",
            rate / raw >= 0.5,
        )
    ]

    # 4c: a reader polling the run's row at 200 Hz from its own connection: distinct values seen
    seen: list[tuple[float, int]] = []
    stop = threading.Event()
    run_box: list[tether.Run] = []
    started = threading.Event()

    def reader() -> None:
        started.wait(10)
        conn = sqlite3.connect(db)
        rid = run_box[0].id
        while not stop.is_set():
            row = conn.execute("SELECT done, status FROM runs WHERE id = ?", (rid,)).fetchone()
            if row[1] == "running" and (not seen or seen[-1][1] != row[0]):
                seen.append((pc(), row[0]))
            time.sleep(0.005)
        conn.close()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    run = advance_for_body.start(seconds=sz.seen_s, rep=0)
    run_box.append(run)
    started.set()
    calls = result_of(run)
    stop.set()
    th.join()
    seen = [(t, v) for t, v in seen if v]  # 0 is the state before the first flush
    gaps = [b[0] - a[0] for a, b in pairwise(seen)]
    per_s = len(gaps) / (seen[-1][0] - seen[0][0]) if gaps else 0.0  # changes per second
    flush = tether.configure().flush_interval
    gap = f", gap between values p50 {ms(pct(gaps, 0.5))}, max {ms(max(gaps))}" if gaps else ""
    rows.append(
        Row(
            "4c",
            f"progress values a reader sees: a run calls `ctx.advance()` for "
            f"{sz.seen_s:g} s ({calls / sz.seen_s:,.0f} calls/s), a 200 Hz reader polls "
            "its row",
            f"{per_s:.1f} distinct values/s{gap}",
            f"by design <= 1 / flush_interval = {1 / flush:.0f} /s",
            None,
            "(informative)",
            None,
        )
    )
    return rows


# -- 9: start() latency ---------------------------------------------------------------------------


def bench_attach(sz: Sizes, db: Path) -> list[Row]:
    first = attach_body.start(x=1)
    result_of(first)
    for _ in range(100):  # warm-up
        attach_body.start(x=1)
    lat = []
    for _ in range(sz.attach_calls):
        t0 = pc()
        run = attach_body.start(x=1)
        lat.append(pc() - t0)
        if run.id != first.id:
            raise SystemExit("start() did not return the existing run")
    conn = sqlite3.connect(db)  # baseline: the same lookup as one raw SQL query
    raw = []
    for _ in range(sz.attach_calls):
        t0 = pc()
        conn.execute(
            "SELECT * FROM runs WHERE key = ? ORDER BY attempt DESC LIMIT 1", (first.key,)
        ).fetchone()
        raw.append(pc() - t0)
    conn.close()
    p50, p99, r50 = pct(lat, 0.5), pct(lat, 0.99), pct(raw, 0.5)
    return [
        Row(
            "9a",
            f"`start()` of a succeeded run (attach), {sz.attach_calls:,} calls",
            f"p50 {ms(p50)}, p99 {ms(p99)}",
            f"raw SELECT by key p50 {ms(r50)}",
            p50 / r50,
            "p50 <= 0.15 ms",
            p50 <= 0.15e-3,
        )
    ]


def bench_first_line(sz: Sizes) -> list[Row]:
    tag = secrets.token_hex(4)
    for i in range(10):  # warm-up
        result_of(first_body.start(i=-i - 1, tag=tag))
    lat = []
    for i in range(sz.first_runs):
        t0 = pc()
        run = first_body.start(i=i, tag=tag)
        lat.append(result_of(run) - t0)
    raw = []  # baseline: start a plain thread and reach its first line
    for _ in range(sz.first_runs):
        seen: list[float] = []
        t0 = pc()
        th = threading.Thread(target=lambda s=seen: s.append(pc()), daemon=True)
        th.start()
        th.join()
        raw.append(seen[0] - t0)
    p50, p99, r50 = pct(lat, 0.5), pct(lat, 0.99), pct(raw, 0.5)
    return [
        Row(
            "9b",
            f"`start()` (new key) to the body's first line, {sz.first_runs} runs",
            f"p50 {ms(p50)}, p99 {ms(p99)}",
            f"`Thread.start()` to first line p50 {ms(r50)}",
            p50 / r50,
            "p50 <= 5 ms",
            p50 <= 5e-3,
        )
    ]


def bench_claim(sz: Sizes) -> list[Row]:
    """The claim transaction (pending -> running) of runs of a pipeline with concurrency=4 and of
    one without, interleaved: each with sz.claim_runs pending runs of its pipeline queued behind
    it at the start (claimed in start order, each ended at once so one runs at a time), and as
    many pending runs of the other pipeline beside them."""
    from tether import owner
    from tether.model import Control
    from tether.store import FlushItem

    store = tether.workspace.default().store()
    me = tether.workspace.default().runner(store).owner
    tag = secrets.token_hex(4)
    ids: dict[str, list[str]] = {"free": [], "limited": []}
    for i in range(sz.claim_runs + 20):  # pending, for a worker (no runner claims them here)
        for kind, control in (("free", None), ("limited", Control(concurrency=4))):
            out = store.start(
                pipeline=f"bench.claim.{kind}",
                key=f"claim:{kind}:{tag}:{i}",
                params_json="{}",
                version=None,
                phases=[],
                policy="attach",
                owner=me,
                lease_s=30.0,
                gone=owner.gone_reason,
                detach=True,
                control=control,
            )
            ids[kind].append(out.record.id)
    lat: dict[str, list[float]] = {"free": [], "limited": []}
    for i in range(sz.claim_runs + 20):
        for kind in ("free", "limited") if i % 2 else ("limited", "free"):
            run_id = ids[kind][i]
            t0 = pc()
            rec = store.claim(run_id, me, 30.0, target="worker")
            dt = pc() - t0
            if not isinstance(rec, tether.model.RunRecord):
                raise SystemExit(f"the claim of {run_id} ({kind}) did not pass: {rec!r}")
            if i >= 20:  # the first ones warm up
                lat[kind].append(dt)
            store.finish(
                FlushItem(run_id, None, [], [], 0, None, None, []),
                me,
                tether.Status.SUCCEEDED,
                result_json="null",
                error=None,
            )
    free, lim = pct(lat["free"], 0.5), pct(lat["limited"], 0.5)
    return [
        Row(
            "9c",
            f"claim of a pending run with `concurrency=4` checked, {sz.claim_runs:,} "
            f"claims, {sz.claim_runs:,} runs queued at first",
            f"p50 {ms(lim)}, p99 {ms(pct(lat['limited'], 0.99))}",
            f"the same claim without `concurrency=` p50 {ms(free)}",
            lim / free,
            "ratio <= 1.5",
            lim / free <= 1.5,
        )
    ]


# -- 5: panel poll and run listings on a big database ---------------------------------------------


def fill_poll_db(path: Path, sz: Sizes, owner: tuple[str, int, float]) -> list[tuple[str, int]]:
    """Runs and events written with raw executemany into a tether DB. Returns (id, last_seq).

    The runs that carry the events are ``running``, owned by a live helper process (``owner``:
    host, pid, process start time), as a panel sees a run another kernel executes; the others
    have succeeded.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -65536")
    now = time.time()
    t_base = now - 86_400
    ids = sorted(secrets.token_hex(6) for _ in range(sz.all_runs))
    heavy = set(ids[:: max(1, sz.all_runs // sz.poll_runs)][: sz.poll_runs])
    host, pid, started = owner
    instance = secrets.token_hex(8)
    runs, big = [], []
    for i, rid in enumerate(ids):
        created = t_base + i * 5.0
        if rid in heavy:
            last = sz.poll_events_per_run
            runs.append(
                (
                    rid,
                    f"bench.poll:{i:016x}",
                    1,
                    "bench.poll",
                    json.dumps({"i": i}),
                    "running",
                    "work",
                    '["setup","work"]',
                    '["setup"]',
                    last,
                    10 * last,
                    None,
                    created,
                    created + 0.01,
                    None,
                    now,
                    host,
                    pid,
                    started,
                    instance,
                    instance,
                    now + 86_400,
                    last,
                )
            )
            big.append((rid, last))
        else:
            runs.append(
                (
                    rid,
                    f"bench.poll:{i:016x}",
                    1,
                    "bench.poll",
                    json.dumps({"i": i}),
                    "succeeded",
                    "work",
                    '["setup","work"]',
                    '["setup","work"]',
                    3,
                    3,
                    '{"ok":true}',
                    created,
                    created + 0.01,
                    created + 3.0,
                    created + 3.0,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    3,
                )
            )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO runs (id, key, attempt, pipeline, params, status, phase, phases, phases_done, "
        "done, total, result, created_at, started_at, ended_at, updated_at, owner_host, owner_pid, "
        "owner_started, owner_instance, target, lease_until, last_seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        runs,
    )
    sql = "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, ?, ?, ?, ?)"
    for rid, *_, last in runs:
        conn.executemany(
            sql,
            [
                (
                    rid,
                    s,
                    t_base + s * 0.001,
                    "log",
                    "work",
                    f'{{"level":"info","message":"processed item {s} of the benchmark"}}',
                )
                for s in range(1, last + 1)
            ],
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return big


def helper_process() -> tuple[subprocess.Popen[bytes], tuple[str, int, float]]:
    """A live process that 'owns' the polled runs (so tether's orphan check finds it alive)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    return proc, (socket.gethostname(), proc.pid, psutil.Process(proc.pid).create_time())


def bench_poll(sz: Sizes, tmp: Path) -> list[Row]:
    db = tmp / "poll.db"
    tether.configure(db=db)
    tether.runs(limit=1)  # opens and migrates the new DB through tether
    proc, owner = helper_process()
    try:
        return _bench_poll(sz, db, owner)
    finally:
        proc.kill()
        proc.wait()


# the columns `tether ls` reads (Store.summaries: every column, for the damage checks)
RAW_LIST = f"SELECT {_RUN_COLS} FROM runs ORDER BY created_at DESC, attempt DESC LIMIT 50"
BATCHES = 5


def ls_command() -> list[str]:
    """The `tether` console script if it is this checkout's (its module ``_tether_cli``), else
    what it runs: ``_tether_cli.main()`` in a new interpreter."""
    script = Path(sys.executable).with_name("tether")
    if script.exists() and "_tether_cli" in script.read_text(errors="replace"):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from _tether_cli import main; sys.exit(main())"]


RAW_LS_SCRIPT = (  # the baseline of `tether ls` in a new process: the same query, rows printed
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1])\n"
    f"rows = conn.execute({RAW_LIST!r}).fetchall()\n"
    "print('\\n'.join('  '.join(map(str, r[:8])) for r in rows))\n"
)


def raw_owner_check(pid: int, started: float) -> bool:
    """What tether's orphan check does, with psutil directly: is ``pid`` the same live process?"""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) <= 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _bench_poll(sz: Sizes, db: Path, owner: tuple[str, int, float]) -> list[Row]:
    from tether.view.reader import RunReader

    t0 = pc()
    big = fill_poll_db(db, sz, owner)
    conn = sqlite3.connect(db)
    n_events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    n_runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    say(f"  poll DB: {n_runs:,} runs, {n_events:,} events in {pc() - t0:.1f} s")
    store = tether.get_run(big[0][0]).store
    rng = random.Random(7)
    picks = [big[rng.randrange(len(big))] for _ in range(sz.polls)]
    readers = {rid: RunReader(tether.get_run(rid)) for rid, _ in picks}

    def measure(fn: Callable[[str, int], Any], behind: int) -> list[float]:
        for rid, last in picks[:50]:  # warm-up
            fn(rid, last - behind)
        out = []
        for rid, last in picks:
            t = pc()
            fn(rid, last - behind)
            out.append(pc() - t)
        return out

    def store_poll(rid: str, after: int) -> None:
        store.get(rid)
        store.events(rid, after=after)

    def panel_read(rid: str, after: int) -> None:
        reader = readers[rid]
        reader.seq = after  # as a panel that has seen every event up to ``after``
        if reader.read().status != "running":
            raise SystemExit(f"run {rid} is no longer running: the owner check failed")

    def raw_poll(rid: str, after: int) -> None:
        conn.execute("SELECT * FROM runs WHERE id = ?", (rid,)).fetchone()
        conn.execute(
            "SELECT seq, ts, kind, phase, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq",
            (rid, after),
        ).fetchall()

    def raw_poll_checked(rid: str, after: int) -> None:
        row = conn.execute("SELECT owner_pid, owner_started FROM runs WHERE id = ?", (rid,)).fetchone()
        raw_owner_check(row[0], row[1])
        raw_poll(rid, after)

    rows = []
    what = f"{n_events:,} events, {n_runs:,} runs in the DB"
    for ref, behind, label in (("5a", 0, "no new event"), ("5b", 10, "10 new events")):
        lat, raw = measure(store_poll, behind), measure(raw_poll, behind)
        p50, p99, r50 = pct(lat, 0.5), pct(lat, 0.99), pct(raw, 0.5)
        rows.append(
            Row(
                ref,
                f"panel poll, DB reads: `store.get` + `store.events(after=seq)`, {label}; {what}",
                f"p50 {ms(p50)}, p99 {ms(p99)}",
                f"raw SQL (same 2 queries) p50 {ms(r50)}",
                p50 / r50,
                "ratio <= 3",
                p50 / r50 <= 3,
            )
        )
    lat, raw, raw_c = measure(panel_read, 10), measure(raw_poll, 10), measure(raw_poll_checked, 10)
    p50, p99, r50, c50 = pct(lat, 0.5), pct(lat, 0.99), pct(raw, 0.5), pct(raw_c, 0.5)
    rows.append(
        Row(
            "5c",
            "panel poll, the panel's code (`RunReader.read()`: `run.snapshot()` with "
            "the owner check + events) of a run another live process owns, 10 new events",
            f"p50 {ms(p50)}, p99 {ms(p99)}",
            f"raw SQL + the same owner check with psutil p50 {ms(c50)} (raw SQL alone {ms(r50)})",
            p50 / c50,
            "ratio <= 3",
            p50 / c50 <= 3,
        )
    )

    # listings: tether.runs(limit=50) and `tether ls` (in-process and as a new process), each
    # against the raw indexed query of the same columns
    active = sum(r._last.status == "running" for r in tether.runs(limit=50))
    sink = io.StringIO()

    def ls_main() -> None:
        sink.seek(0)
        sink.truncate()
        with contextlib.redirect_stdout(sink):
            if cli.main(["ls", "--db", str(db)]) != 0:
                raise SystemExit("tether ls failed")

    def raw_connect() -> None:
        with contextlib.closing(sqlite3.connect(db)) as fresh:
            fresh.execute(RAW_LIST).fetchall()

    fns: dict[str, Callable[[], Any]] = {
        "runs": lambda: tether.runs(limit=50),
        "ls": ls_main,
        "raw": lambda: conn.execute(RAW_LIST).fetchall(),
        "raw_connect": raw_connect,
    }
    for _ in range(10):
        for fn in fns.values():
            fn()
    # BATCHES batches, each interleaving the four; a figure is the median of the batches' p50s
    batches: list[dict[str, list[float]]] = []
    for _ in range(BATCHES):
        lists: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(max(1, sz.lists // BATCHES)):
            for name, fn in fns.items():
                t = pc()
                fn()
                lists[name].append(pc() - t)
        batches.append(lists)
    if sink.getvalue().count("\n") != 51:
        raise SystemExit(f"tether ls printed {sink.getvalue().count(chr(10))} lines, expected 51")

    def med(name: str, q: float = 0.5) -> float:
        return statistics.median(pct(b[name], q) for b in batches)

    def ratio(name: str, base: str) -> float:
        return statistics.median(pct(b[name], 0.5) / pct(b[base], 0.5) for b in batches)

    r50, c50 = med("raw"), med("raw_connect")
    each = f"median of {BATCHES} interleaved batches"
    rows.append(
        Row(
            "5d",
            f"`tether.runs(limit=50)` with {n_runs:,} runs ({active} of the 50 running: owner check), {each}",
            f"p50 {ms(med('runs'))}, p99 {ms(med('runs', 0.99))}",
            f"raw indexed query p50 {ms(r50)}",
            ratio("runs", "raw"),
            "(informative)",
            None,
        )
    )
    r = ratio("ls", "raw_connect")
    what = (
        f"`tether ls` in-process (`cli.main(['ls'])`: 50 rows, owner check of the {active} running, "
        f"table printed), {n_runs:,} runs, {each}"
    )
    rows.append(
        Row(
            "5e",
            what,
            f"p50 {ms(med('ls'))}, p99 {ms(med('ls', 0.99))}",
            f"raw indexed query of the same columns, `sqlite3.connect` + `SELECT` p50 {ms(c50)}",
            r,
            "ratio <= 3",
            r <= 3,
        )
    )
    rows.append(
        Row(
            "5e'",
            "the same `tether ls` against the query alone on a connection kept open",
            f"p50 {ms(med('ls'))}",
            f"raw `SELECT` of the same columns p50 {ms(r50)}",
            ratio("ls", "raw"),
            "(informative)",
            None,
        )
    )
    conn.close()

    # `tether ls` as a user types it: a new process, wall time; baseline: a new python process
    # running the raw query and printing the rows
    cmds = {
        "ls": [*ls_command(), "ls", "--db", str(db)],
        "raw": [sys.executable, "-c", RAW_LS_SCRIPT, str(db)],
        "pass": [sys.executable, "-c", "pass"],
    }
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(sz.ls_procs):  # each round one interleaved batch
        for name, cmd in cmds.items():
            t = pc()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
            walls[name].append(pc() - t)
            if out.returncode != 0:
                raise SystemExit(f"{cmd} failed: {out.stderr}")
    w = {k: statistics.median(v) for k, v in walls.items()}
    r = statistics.median(a / b for a, b in zip(walls["ls"], walls["raw"]))
    rows.append(
        Row(
            "5f",
            f"`tether ls` in a new process (the console script's module), wall, median of "
            f"{sz.ls_procs} interleaved rounds, {n_runs:,} runs",
            f"{ms(w['ls'])}",
            f"`python -c` raw query of the same columns + print {ms(w['raw'])} "
            f"(`python -c pass` {ms(w['pass'])})",
            r,
            "ratio <= 3",
            r <= 3,
        )
    )
    return rows


# -- main --------------------------------------------------------------------------------------

SECTIONS = ("loops", "log", "progress", "poll", "attach", "first", "claim")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 30 s)")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    add_wait_idle(ap)
    ap.add_argument("--write-docs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_docs:
        ap.error("docs/performance.md is written by bench/run.py now: python bench/run.py --write-docs")
    sz = QUICK if args.quick else FULL
    only = set(args.only or SECTIONS)
    info = machine()
    if "loops" in only:
        info["tqdm"] = tqdm_module.__version__
        info["rich"] = version_of("rich") or "not installed"
    free = wait_idle(args.wait_idle)
    if free is not None:
        info["CPU idle just before the start"] = f"{free:.0%} (the rest was used by other processes)"
    head = "\n".join(f"- **{k}**: {v}" for k, v in info.items())
    print(f"## tether engine benchmark ({'quick' if args.quick else 'full'})\n\n{head}\n", flush=True)
    watch = CpuWatch()

    started = pc()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "runs.db"
        tether.configure(db=db)
        try:
            if "loops" in only:
                say("[1] progress hot path ...")
                rows += bench_loops(sz)
            if "log" in only:
                say("[4a] ctx.log() persisted ...")
                rows += bench_log(sz, db, tmp)
            if "progress" in only:
                say("[4b-c] ctx.advance() persisted ...")
                rows += bench_progress(sz, db, tmp)
            if "attach" in only:
                say("[9a] start() attach ...")
                rows += bench_attach(sz, db)
            if "first" in only:
                say("[9b] start() to first line ...")
                rows += bench_first_line(sz)
            if "claim" in only:
                say("[9c] claim with concurrency= ...")
                rows += bench_claim(sz)
            if "poll" in only:
                say("[5] panel polls and listings on a big DB ...")
                rows += bench_poll(sz, tmp)
        finally:
            tether.workspace.default().close()  # stop tether's threads before the directory goes away
    report(rows, info, watch, pc() - started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

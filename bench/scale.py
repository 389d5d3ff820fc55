"""Load and scale figures for tether: racing starts, readers vs writers, and a 10,000-run /
5,000,000-event database.

    python bench/scale.py                    # everything (~5 min; the big DB needs ~1 GB of disk)
    python bench/scale.py --only load        # 16 processes x 200 keys; 8 writers vs readers
    python bench/scale.py --only scale       # tether ls, the dashboard query, a panel poll
    python bench/scale.py --only scale --db /tmp/big.db   # keep (and reuse) the big database
    python bench/scale.py --quick            # small sizes, a smoke run

``load`` runs the scenarios of tests/reliability/test_load.py (``reliability.harness``) with
bigger sizes and prints their figures; ``scale`` fills a database with raw ``executemany`` in
tether's schema (created by tether itself), then times what a user waits for. Exit status is 0
even when a goal is missed: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _paths  # noqa: F401 - puts tests/ on sys.path for reliability.harness
import psutil

import tether
from reliability import harness
from tether import cli
from tether.store import SQLiteStore as Store

pc = time.perf_counter
GOAL_S = 0.050


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(fn: Callable[[], Any], n: int, warm: int = 3) -> dict[str, float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t = pc()
        fn()
        out.append(pc() - t)
    return {"p50": pct(out, 0.5), "p99": pct(out, 0.99), "max": max(out), "n": n}


def row(figure: str, value: str, goal: str = "", ok: bool | None = None) -> str:
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    return f"| {figure} | {value} | {goal} | {verdict} |"


HEADER = ["| figure | measured | goal | |", "|---|---|---|---|"]


# -- load --------------------------------------------------------------------------------------


def bench_load(work: Path, quick: bool) -> list[str]:
    rows = []
    procs, keys = (8, 50) if quick else (16, 200)
    say(f"load: {procs} processes x {keys} keys starting at once (new database) ...")
    race = harness.start_race(work / "race", procs=procs, keys=keys, hold=0.2)
    ok = not race["errors"] and race["runs"] == keys and not race["keys_with_more_than_one_run"]
    rows.append(
        row(
            f"{procs} processes x {keys} keys, `start()` at once: runs per key, errors",
            f"{race['runs']} runs for {race['keys_with_runs']} keys, "
            f"{len(race['errors'])} errors, {race['attached_to_active']} calls attached "
            f"to an active run, wall {race['wall']:.1f} s",
            "exactly 1 run per key, 0 errors",
            ok,
        )
    )
    rows.append(
        row(
            "... `start()` latency in that race",
            f"p50 {ms(race['start_p50'])}, "
            f"worst process p99 {ms(race['start_p99_worst'])}, max {ms(race['start_max'])}",
        )
    )
    lines = 300 if quick else 2000
    results = {}
    for label, readers in (("without readers", False), ("with readers", True)):
        say(f"load: 8 runs x {lines} log lines in 4 processes, {label} ...")
        results[label] = harness.readers_writers(
            work / label.replace(" ", "-"),
            runs=8,
            writer_procs=4,
            lines=lines,
            pace=0.005,
            pollers=2 if readers else 0,
            dashboard=readers,
            cli=readers,
        )
    base, rw = results["without readers"], results["with readers"]
    errors = base["errors"] + rw["errors"]
    ok = (
        not errors
        and all(v == lines for v in rw["stored_logs"].values())
        and all(seen == rw["stored_logs"] for seen in rw["reader_logs"])
    )
    rows.append(
        row(
            "8 runs writing logs + progress while 2 pollers (`store.get` + "
            "`store.events(after=)`), a dashboard (`store.list_runs(limit=50)`) and a "
            "`tether ls` loop read: errors, events stored and seen",
            f"{len(errors)} errors; {sum(rw['stored_logs'].values()):,} log events stored, "
            f"every one seen by each poller; {rw['cli_runs']} `tether ls` runs",
            "0 errors, nothing missing",
            ok,
        )
    )
    for label, r in results.items():
        rows.append(
            row(
                f"flush transaction (`Store.flush`, incl. waiting for the write lock), {label}",
                f"p50 {ms(r['flush_p50'])}, p99 {ms(r['flush_p99'])}, "
                f"max {ms(r['flush_max'])} ({r['flushes']} flushes)",
            )
        )
    for label, r in results.items():
        if r["visible_n"]:
            rows.append(
                row(
                    f"`ctx.log()` in the body to the line visible to a poller, {label}",
                    f"p50 {ms(r['visible_p50'])}, p99 {ms(r['visible_p99'])}, "
                    f"max {ms(r['visible_max'])} ({r['visible_n']:,} lines)",
                    "p99 <= flush_interval (250 ms) + 50 ms",
                    r["visible_p99"] <= 0.300,
                )
            )
    rows.append(
        row(
            "one poller pass over the 8 runs / one dashboard query, under that load",
            f"p99 {ms(rw['poll_call_p99'])} / p99 {ms(rw['dashboard_call_p99'])}",
        )
    )
    return rows


# -- scale -------------------------------------------------------------------------------------


def fill(
    db: Path, n_runs: int, n_events: int, heavy: int, heavy_events: int, owner: tuple[str, int, float]
) -> dict[str, Any]:
    """``n_runs`` runs and ``n_events`` events, written with raw executemany in tether's schema.

    ``heavy`` runs carry ``heavy_events`` events each; the rest share the remainder. A few runs are
    ``running``, owned by a live helper process (``owner``), as a panel sees another kernel's run.
    """
    tether.workspace.default().store(db).list_runs(limit=1)  # tether creates and migrates the database
    rng = random.Random(5)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    now = time.time()
    t0 = now - 30 * 86_400
    host, pid, started = owner
    instance = secrets.token_hex(8)
    rest = n_events - heavy * heavy_events
    light = n_runs - heavy
    per, extra = divmod(rest, light)
    runs, heavy_ids, running_ids = [], [], []
    k_light = 0
    statuses = ["succeeded"] * 85 + ["failed"] * 7 + ["interrupted"] * 5 + ["cancelled"] * 3
    for i in range(n_runs):
        rid = secrets.token_hex(6)
        created = t0 + i * (30 * 86_400 / n_runs)
        big = i % (n_runs // heavy) == 0 and len(heavy_ids) < heavy
        if big:
            n = heavy_events
        else:
            n = per + (1 if k_light < extra else 0)
            k_light += 1
        status = "running" if big or i % 1000 == 7 else rng.choice(statuses)
        if big:
            heavy_ids.append((rid, n))
        if status == "running":
            running_ids.append(rid)
        alive = status == "running"
        err = (
            None
            if status in ("succeeded", "running")
            else json.dumps({"type": "RuntimeError", "message": f"run {i} {status}", "traceback": ""})
        )
        runs.append(
            (
                rid,
                f"bench.p{i % 20}:{i:016x}",
                1,
                f"bench.p{i % 20}",
                None,
                json.dumps({"i": i}),
                status,
                "work",
                '["setup","work"]',
                '["setup"]',
                n,
                n,
                f"processed item {n}",
                err,
                '{"ok":true}' if status == "succeeded" else None,
                created,
                created + 0.01,
                None if alive else created + 60,
                now if alive else created + 60,
                host if alive else None,
                pid if alive else None,
                started if alive else None,
                instance if alive else None,
                instance if alive else None,
                now + 86_400 if alive else None,
                0,
                None,
                "start",
                n,
            )
        )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO runs (id, key, attempt, pipeline, version, params, status, phase, phases, "
        "phases_done, done, total, message, error, result, created_at, started_at, ended_at, "
        "updated_at, owner_host, owner_pid, owner_started, owner_instance, target, lease_until, "
        "cancel_requested, resumed_from, created_by, last_seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?)",
        runs,
    )
    sql = "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, ?, ?, ?, ?)"
    done = 0
    for k, r in enumerate(runs):
        rid, n, created = r[0], r[-1], r[15]

        def rows(rid: str = rid, n: int = n, created: float = created) -> Any:
            yield (rid, 1, created, "created", None, '{"by":"start"}')
            yield (rid, 2, created, "started", None, '{"host":"h","pid":1}')
            for s in range(3, n + 1):
                if s % 500 == 3:
                    yield (rid, s, created + s * 1e-3, "phase", "work", '{"name":"work","total":null}')
                else:
                    yield (
                        rid,
                        s,
                        created + s * 1e-3,
                        "log",
                        "work",
                        f'{{"level":"info","message":"processed item {s} of the benchmark"}}',
                    )

        conn.executemany(sql, rows())
        done += n
        if k % 1000 == 999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            say(f"  filled {k + 1:,} runs, {done:,} events")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"heavy": heavy_ids, "running": running_ids}


def helper() -> tuple[subprocess.Popen[bytes], tuple[str, int, float]]:
    """A live process that owns the ``running`` runs (tether's owner check finds it alive)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    return proc, (socket.gethostname(), proc.pid, psutil.Process(proc.pid).create_time())


class _NoPoller:
    def watch(self, *_a: Any, **_k: Any) -> None:
        pass

    def unwatch(self, *_a: Any) -> None:
        pass


def bench_scale(work: Path, quick: bool, db_arg: str | None) -> list[str]:
    n_runs, n_events = (2_000, 200_000) if quick else (10_000, 5_000_000)
    heavy, heavy_events = (5, 10_000) if quick else (10, 200_000)
    db = Path(db_arg) if db_arg else work / "scale.db"
    proc, owner = helper()
    rows = []
    try:
        meta_path = db.with_suffix(".json")
        if db.exists() and meta_path.exists():
            say(f"scale: reusing {db}; re-owning its running runs by a new helper process")
            meta = json.loads(meta_path.read_text())
            conn = sqlite3.connect(db)
            with conn:
                conn.execute(
                    "UPDATE runs SET owner_host = ?, owner_pid = ?, owner_started = ?, "
                    "lease_until = ? WHERE status = 'running'",
                    (owner[0], owner[1], owner[2], time.time() + 86_400),
                )
            conn.close()
            fill_s = None
        else:
            say(f"scale: filling {db} with {n_runs:,} runs and {n_events:,} events ...")
            t = pc()
            meta = fill(db, n_runs, n_events, heavy, heavy_events, owner)
            fill_s = pc() - t
            meta_path.write_text(json.dumps(meta))
        conn = sqlite3.connect(db)
        runs_n = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        events_n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        conn.close()
        size = db.stat().st_size
        filled = f" (filled in {fill_s:.0f} s)" if fill_s else ""
        rows.append(row("database", f"{runs_n:,} runs, {events_n:,} events, {size / 2**20:,.0f} MiB{filled}"))
        env = harness.child_env()
        script = Path(sys.executable).with_name("tether")
        ls = [str(script)] if script.exists() else [sys.executable, "-m", "tether.cli"]

        def sub(cmd: list[str]) -> float:
            t = pc()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            took = pc() - t
            if out.returncode != 0:
                raise SystemExit(f"{cmd} failed: {out.stderr}")
            return took

        say("scale: tether ls (subprocess) ...")
        tiny = work / "tiny.db"  # the same command on a 1-run database: the fixed costs
        tiny_store = Store(tiny)
        tiny_store.list_runs(limit=1)
        tiny_store.close()
        conn = sqlite3.connect(tiny)
        with conn:
            conn.execute(
                "INSERT INTO runs (id, key, attempt, pipeline, params, status, created_at, "
                "updated_at) VALUES ('x', 'k', 1, 'p', '{}', 'succeeded', 0, 0)"
            )
        conn.close()
        n_sub = 5 if quick else 21
        walls: dict[str, list[float]] = {"big": [], "tiny": [], "import": []}
        for _ in range(n_sub):  # interleaved, so that a busy neighbour hits all three alike
            walls["big"].append(sub([*ls, "ls", "--db", str(db)]))
            walls["tiny"].append(sub([*ls, "ls", "--db", str(tiny)]))
            walls["import"].append(sub([sys.executable, "-c", "import tether.cli"]))
        big_med, tiny_med, imp_med = (statistics.median(walls[k]) for k in ("big", "tiny", "import"))
        store = tether.workspace.default().store(db)

        def ls_in_process() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["ls", "--db", str(db)])

        m = measure(ls_in_process, 50)
        rows.append(
            row(
                f"`tether ls` in a new process, wall (median of {n_sub})",
                f"{ms(big_med)} (the same on a 1-run DB: {ms(tiny_med)}; "
                f"`python -c 'import tether.cli'`: {ms(imp_med)})",
                "what the DB adds (the difference) < 50 ms",
                big_med - tiny_med < GOAL_S,
            )
        )
        rows.append(
            row(
                "`tether ls` command in-process (`cli.main(['ls'])`: list, owner check "
                "of running runs, table)",
                f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                "p99 < 50 ms",
                m["p99"] < GOAL_S,
            )
        )
        m = measure(lambda: store.list_runs(limit=50), 200)
        rows.append(
            row(
                "`store.list_runs(limit=50)`",
                f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                "p99 < 50 ms",
                m["p99"] < GOAL_S,
            )
        )
        for status in ("running", "failed"):
            m = measure(lambda status=status: store.list_runs(status=status, limit=50), 200)
            rows.append(
                row(
                    f"`store.list_runs(status={status!r}, limit=50)`",
                    f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                    "p99 < 50 ms",
                    m["p99"] < GOAL_S,
                )
            )
        tether.configure(db=db)
        m = measure(lambda: tether.runs(limit=50), 200)
        rows.append(
            row(
                "`tether.runs(limit=50)` (with the owner check of active runs)",
                f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                "p99 < 50 ms",
                m["p99"] < GOAL_S,
            )
        )
        from tether.widget.dashboard import Dashboard

        for status in (None, "running"):
            dash = Dashboard(store, status=status, limit=50, poller=_NoPoller())  # type: ignore[arg-type]
            shown = len(dash.table.rows)

            def refresh(sweep: bool, dash: Dashboard = dash) -> None:
                if sweep:
                    dash._next_sweep = 0.0
                dash.refresh()

            for sweep in (False, True):
                m = measure(lambda sweep=sweep: refresh(sweep), 200)
                what = (
                    "with its orphan sweep (owner check of the active rows)" if sweep else ("between sweeps")
                )
                filt = f"status={status!r}, " if status else ""
                rows.append(
                    row(
                        f"dashboard query (`Dashboard.refresh()`, {filt}{shown} rows), {what}",
                        f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                        "p99 < 50 ms",
                        m["p99"] < GOAL_S,
                    )
                )
            dash.close()
        big_id, big_n = max(meta["heavy"], key=lambda x: x[1])
        small = store.list_runs(status="succeeded", limit=1)[0]
        for label, rid, last in (
            (f"a run with {big_n:,} events", big_id, big_n),
            (f"a run with {small.last_seq:,} events", small.id, small.last_seq),
        ):
            for behind in (0, 10):

                def poll(rid: str = rid, after: int = last - behind) -> None:
                    store.get(rid)
                    store.events(rid, after=after)

                m = measure(poll, 500)
                rows.append(
                    row(
                        f"panel poll `store.get` + `store.events(id, after=seq)`, {label}, {behind} new",
                        f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                        "p99 < 50 ms",
                        m["p99"] < GOAL_S,
                    )
                )
        from tether.view.reader import RunReader

        def first_read() -> None:
            RunReader(tether.workspace.default().run(store, big_id)).read()

        m = measure(first_read, 100)
        rows.append(
            row(
                f"panel first read (`RunReader.read()`: snapshot + log tail), a run with {big_n:,} events",
                f"p50 {ms(m['p50'])}, p99 {ms(m['p99'])}",
                "p99 < 50 ms",
                m["p99"] < GOAL_S,
            )
        )
    finally:
        proc.kill()
        proc.wait()
    return rows


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["load", "scale"])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--db", help="scale: database to create once and reuse (default: temporary)")
    args = ap.parse_args(argv)
    cmd = " ".join(["python bench/scale.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {cmd}")
    print(
        f"tether {tether.__version__}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    rows = list(HEADER)
    with tempfile.TemporaryDirectory(prefix="tether-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "load"):
            rows += bench_load(work, args.quick)
        if args.only in (None, "scale"):
            rows += bench_scale(work, args.quick, args.db)

        tether.workspace.default().close()
    print("\n".join(rows))
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

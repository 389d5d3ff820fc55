"""Memory benchmarks for tether (section 7a of docs/performance.md): what a kernel keeps per finished
run, and per open panel.

    python bench/bench_memory.py                  # full run (~30 s): 3,000 runs, 50 panels of each kind
    python bench/bench_memory.py --quick          # smoke run (~15 s): 1,500 runs, 20 panels
    python bench/bench_memory.py --json OUT.json  # also write the rows for bench/run.py

1. **Runs**: one process starts and waits for small runs one after the other (a phase, ``ctx.track``
   over 10 items, 3 log lines, a dict result), and reads its RSS (``psutil``, after ``gc.collect()``
   and glibc's ``malloc_trim(0)``, so freed memory the allocator keeps is not counted) after a
   warm-up of 100 runs, after 1,000 more runs and at the end. The runner keeps the done-event of the
   last ``_KEEP_ENDED`` (1,000) ended runs (``tether/runner/_state.py``), so growth over the first 1,000
   runs is expected and growth after that should be ~0. Baseline: the same body run in plain
   ``threading.Thread`` s (start + join), no store: the interpreter's own drift. Open file
   descriptors and SQLite connections of the store are reported too.
2. **Panels**: ``tether.panel(run)`` widgets created in this process (ipywidgets and anywidget
   imported, no kernel: the comm is ipywidgets' dummy one, as for the peer) for N finished runs
   (static panels) and N runs owned by another live process (poll panels: the shared poller thread
   refreshes them every second), each run with 100 log lines; kept open. Figure: traced Python
   memory (``tracemalloc``) and RSS growth per panel. Peer: ``tqdm.notebook.tqdm`` bars (an HBox of
   a progress bar and two HTML widgets), N of them kept open, each updated to 50%.

Exit status is 0 even when a goal is missed. Everything happens in a temporary directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import secrets
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from benchlib import Row, Section, say, section_args

import tether

MiB = 2**20
pc = time.perf_counter


@dataclass(frozen=True)
class Sizes:
    runs: int  # runs after the first 1,000 (steady state)
    panels: int  # panels of each kind (and tqdm.notebook bars)


FULL = Sizes(runs=2000, panels=50)
QUICK = Sizes(runs=500, panels=20)
WARM = 100
WINDOW = 1000  # tether.runner._KEEP_ENDED


def _trim() -> Callable[[], Any]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


malloc_trim = _trim()
proc = psutil.Process()


def rss() -> int:
    gc.collect()
    malloc_trim()
    return int(proc.memory_info().rss)


def work(ctx: Any, i: int) -> dict[str, int]:
    ctx.phase("work", total=10)
    for k in ctx.track(range(10)):
        if k % 4 == 0:
            ctx.log("item %d of run %d", k, i)
    return {"i": i}


@tether.pipeline(name="bench_memory.small")
def small(ctx: tether.Context, i: int) -> dict[str, int]:
    return work(ctx, i)


@tether.pipeline(name="bench_memory.logs")
def logs(ctx: tether.Context, i: int, lines: int = 100) -> int:
    ctx.phase("work", total=lines)
    for k in ctx.track(range(lines)):
        ctx.log("line %d of run %d: some text a real run would log", k, i)
    return i


class _FakeCtx:
    """What ``work`` needs, without tether (the thread baseline)."""

    def phase(self, *_a: Any, **_k: Any) -> None:
        pass

    def track(self, it: Any) -> Any:
        return it

    def log(self, *_a: Any) -> None:
        pass


def bench_runs(sz: Sizes) -> tuple[list[Row], dict[str, Any]]:
    store = tether.workspace.default().store()

    def conns() -> int:
        return len(store._conns)

    for i in range(WARM):
        small.start(i=-1 - i).result(60)
    r0, f0, c0 = rss(), proc.num_fds(), conns()
    t0 = pc()
    for i in range(WINDOW):
        small.start(i=i).result(60)
    r1, f1, c1 = rss(), proc.num_fds(), conns()
    for i in range(WINDOW, WINDOW + sz.runs):
        small.start(i=i).result(60)
    r2, f2, c2 = rss(), proc.num_fds(), conns()
    took = pc() - t0
    kept = len(tether.workspace.default().runner(store)._done)
    say(
        f"  runs: RSS {r0 / MiB:.1f} -> {r1 / MiB:.1f} -> {r2 / MiB:.1f} MiB, fds {f0} -> {f1} -> {f2}, "
        f"store connections {c0} -> {c1} -> {c2}, done-events kept {kept} ({took:.1f} s)"
    )

    fake = _FakeCtx()
    b0 = rss()
    for i in range(WINDOW + sz.runs):
        th = threading.Thread(target=work, args=(fake, i))
        th.start()
        th.join()
    b1 = rss()
    n = WINDOW + sz.runs
    base = (b1 - b0) / n * 1000
    first = (r1 - r0) / WINDOW * 1000
    steady = (r2 - r1) / sz.runs * 1000
    fds = (f2 - f1) / sz.runs * 1000
    info = {
        "runs: RSS MiB at 100 / 1,100 / end": f"{r0 / MiB:.1f} / {r1 / MiB:.1f} / {r2 / MiB:.1f}",
        "runs: open fds at 100 / 1,100 / end": f"{f0} / {f1} / {f2}",
        "runs: store connections at 100 / 1,100 / end": f"{c0} / {c1} / {c2}",
        "runs: done-events kept by the runner": kept,
    }
    rows = [
        Row(
            "7a",
            f"kernel RSS growth per 1,000 finished runs, steady state (runs 1,001 to "
            f"{n:,}, after the runner's window of {WINDOW:,} ended runs is full)",
            f"{steady / MiB:+.2f} MiB ({fds:+.0f} open fds, {(c2 - c1) / sz.runs * 1000:+.0f} SQLite "
            "connections)",
            f"plain threads, same body: {base / MiB:+.2f} MiB",
            None,
            "<= 1 MiB / 1,000 runs (bounded)",
            steady <= MiB,
        ),
        Row(
            "7a'",
            f"kernel RSS growth per 1,000 finished runs, the first {WINDOW:,} (the window fills)",
            f"{first / MiB:+.2f} MiB ({(f1 - f0) / WINDOW * 1000:+.0f} open fds)",
            f"plain threads: {base / MiB:+.2f} MiB",
            None,
            "(informative)",
            None,
        ),
    ]
    return rows, info


def bench_panels(sz: Sizes, helper: tuple[int, float]) -> tuple[list[Row], dict[str, Any]]:
    import anywidget  # noqa: F401 - imported before the baseline reading, as in a notebook
    import ipywidgets  # noqa: F401
    from tqdm.notebook import tqdm as tqdm_nb

    from tether.widget.panel import RunPanel

    n = sz.panels
    done = [logs.start(i=i) for i in range(2 * n + 2)]
    for r in done:
        r.result(60)
    # copies of half of them, as if another live process executed them (the poll panels)
    store = tether.workspace.default().store()
    pid, started = helper
    conn = sqlite3.connect(store.path, isolation_level=None)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    fixed = {
        "id": "?",
        "key": "key || ?",
        "status": "'running'",
        "ended_at": "NULL",
        "owner_host": "?",
        "owner_pid": "?",
        "owner_started": "?",
        "owner_instance": "'bench-helper'",
        "target": "'bench-helper'",
        "lease_until": "?",
    }
    copy_run = (
        f"INSERT INTO runs ({', '.join(cols)}) SELECT "
        f"{', '.join(fixed.get(c, c) for c in cols)} FROM runs WHERE id = ?"
    )
    poll_ids = []
    conn.execute("BEGIN")
    for r in done[n + 1 :]:
        new = "p" + secrets.token_hex(6)
        conn.execute(copy_run, (new, "-poll", socket.gethostname(), pid, started, time.time() + 86_400, r.id))
        conn.execute(
            "INSERT INTO events (run_id, seq, ts, kind, phase, data) SELECT ?, seq, ts, "
            "kind, phase, data FROM events WHERE run_id = ?",
            (new, r.id),
        )
        poll_ids.append(new)
    conn.execute("COMMIT")
    conn.close()
    static_runs, poll_runs = done[1 : n + 1], [tether.get_run(rid) for rid in poll_ids[1:]]
    sink = open(os.devnull, "w")  # noqa: SIM115 - display() prints without a kernel
    keep: list[Any] = []
    with contextlib.redirect_stdout(sink):  # warm-up: first widget of each kind
        keep.append(tqdm_nb(total=100))
        keep.append(tether.panel(done[0]))
        keep.append(tether.panel(tether.get_run(poll_ids[0])))

    def measure(make: Callable[[int], Any]) -> tuple[float, float]:
        tracemalloc.start()
        m0, r0 = tracemalloc.get_traced_memory()[0], rss()
        with contextlib.redirect_stdout(sink):
            for i in range(n):
                keep.append(make(i))
        m1, r1 = tracemalloc.get_traced_memory()[0], rss()
        tracemalloc.stop()
        return (m1 - m0) / n, (r1 - r0) / n

    def bar(i: int) -> Any:
        b = tqdm_nb(total=100, desc=f"bar {i}")
        b.update(50)
        return b

    figures = {
        "tqdm": measure(bar),
        "static": measure(lambda i: tether.panel(static_runs[i])),
        "poll": measure(lambda i: tether.panel(poll_runs[i])),
    }
    modes = {p.mode for p in keep if isinstance(p, RunPanel)}
    time.sleep(1.5)  # the poller refreshes the poll panels once at least
    for w in keep:
        w.close()
    sink.close()
    kib = {k: (t / 1024, r / 1024) for k, (t, r) in figures.items()}
    say(
        "  per widget (traced KiB, RSS KiB): "
        + ", ".join(f"{k} {t:.1f}, {r:.1f}" for k, (t, r) in kib.items())
    )
    tq = kib["tqdm"]
    rows = []
    for ref, key, what in (
        ("7a''", "static", "a finished run"),
        ("7a'''", "poll", "a run another live process owns (poll mode)"),
    ):
        t, r = kib[key]
        rows.append(
            Row(
                ref,
                f"memory per open panel: `tether.panel(run)` of {what}, 100 log lines, {n} panels kept open",
                f"{t:.1f} KiB traced (RSS {r:+.1f} KiB)",
                f"`tqdm.notebook` bar: {tq[0]:.1f} KiB traced (RSS {tq[1]:+.1f} KiB)",
                t / tq[0] if tq[0] > 0 else None,
                "(informative)",
                None,
            )
        )
    return rows, {"panel modes seen": ", ".join(sorted(modes))}


def main(argv: list[str] | None = None) -> int:
    args = section_args(__doc__.splitlines()[0], "smaller sizes (a smoke run)").parse_args(argv)
    sz = QUICK if args.quick else FULL
    section = Section(
        f"## tether memory benchmark ({'quick' if args.quick else 'full'})",
        ("ipywidgets", "anywidget", "tqdm"),
    )
    info = section.info
    rows: list[Row] = []
    helper = psutil.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        with tempfile.TemporaryDirectory(prefix="tether-bench-memory-") as tmp:
            tether.configure(db=Path(tmp) / "runs.db")
            try:
                say("[7a] RSS per 1,000 finished runs ...")
                got, extra = bench_runs(sz)
                rows += got
                info.update(extra)
                try:
                    say("[7a] memory per open panel ...")
                    got, extra = bench_panels(sz, (helper.pid, helper.create_time()))
                    rows += got
                    info.update(extra)
                except ImportError as exc:
                    rows.append(
                        Row(
                            "7a''",
                            "memory per open panel",
                            "",
                            f"not measured: {exc}",
                            None,
                            "(informative)",
                            None,
                        )
                    )
            finally:
                tether.workspace.default().close()
    finally:
        helper.kill()
        helper.wait()
    section.end(rows, args.json, head="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

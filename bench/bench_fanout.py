"""Fan-out benchmarks for tether: ``ctx.map`` overhead per item, and the cost of resuming a big map.

    python bench/bench_fanout.py            # full run (~1-2 min): 400 items x 5 reps, 100,000 items
    python bench/bench_fanout.py --quick    # smoke run (< 30 s): 100 items x 5 reps, 25,000 items
    python bench/bench_fanout.py --only overhead   # or: resume
    python bench/bench_fanout.py --json OUT.json   # also write the rows for bench/run.py

Figures (a markdown table with PASS/MISS is printed at the end; exit status is 0 either way):

1. ``ctx.map(sleepy, items, executor=ex)`` inside a run vs a plain ``list(ex.map(sleepy, items))``
   with the same executor, for a thread pool of 4 and a Dask ``LocalCluster`` executor (2 worker
   processes x 2 threads, ``client.get_executor()``); items sleep 10 ms. Medians of interleaved
   repetitions; goal: ratio <= 1.1. The tether figure is timed by the pipeline body around the
   ``ctx.map`` call (the run's start is not counted); each repetition maps fresh items so Dask
   never serves a result from memory. Also shown: the CPU time of the calling thread per item
   (``time.thread_time()``: the run's thread for ctx.map, the caller for ``executor.map``), and for
   Dask two more baselines: one plain ``client.map`` + ``client.gather`` (how ctx.map submits), and
   ``ctx.map(..., checkpoint=False)`` (ctx.map without its checkpoint writes). 6e: the run thread's
   CPU per item on Dask (median of the repetitions); goal: <= 0.3 ms.
2. Resume with N finished items: a run maps N trivial items (default thread pool, every item
   checkpointed), then fails; ``run.resume()`` starts an attempt whose ``ctx.map`` finds every item
   stored. Printed: the ``resume()`` call (the new attempt copies the checkpoints), the resumed
   ``ctx.map`` call, and the time from ``resume()`` until the resumed map returns, against a raw
   ``SELECT`` + ``json.loads`` of the N stored rows; and the first attempt, against a plain
   ``executor.map`` of the same items on a 32-thread pool (the size of ctx.map's default pool).
   Informative (no goal was set).

The figure numbers (6a, 6b, ...) are those of section 6 of docs/performance.md (``bench/run.py``).
Everything happens in a temporary directory (database included) that is removed at the end. Run on
an idle machine: the header shows how much CPU other processes left idle before the start, and the
last line how much they used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import CpuWatch, Row, machine, report, say, version_of

import tether

pc = time.perf_counter
EXECUTORS: dict[str, Any] = {}  # lent to the pipeline by name (the run executes in this process)


def sleepy(x: int) -> int:
    """A 10 ms item."""
    time.sleep(0.01)
    return x


def trivial(x: int) -> int:
    return x


@tether.pipeline(name="bench_fanout.timed_map")
def timed_map(
    ctx: tether.Context,
    n: int,
    kind: str,
    executor: str = "",
    offset: int = 0,
    fail_attempt: int = 0,
    checkpoint: bool = True,
) -> dict[str, float]:
    """Time one ``ctx.map`` over ``range(offset, offset + n)``; attempt ``fail_attempt`` fails.

    Also returns the CPU time the run's thread spent in the call (``time.thread_time()``)."""
    fn = sleepy if kind == "sleepy" else trivial
    t0, c0 = pc(), time.thread_time()
    out = ctx.map(fn, range(offset, offset + n), executor=EXECUTORS.get(executor), checkpoint=checkpoint)
    t1, c1 = pc(), time.thread_time()
    if out != list(range(offset, offset + n)):
        raise AssertionError("ctx.map returned wrong results")
    if ctx.attempt == fail_attempt:
        raise RuntimeError(f"planned failure of attempt {ctx.attempt} (map took {t1 - t0:.3f} s)")
    return {"t0": t0, "t1": t1, "seconds": t1 - t0, "cpu": c1 - c0}


@dataclass(frozen=True)
class Sizes:
    items: int  # 10 ms items per map (overhead figure)
    reps: int
    resume_items: int


FULL = Sizes(items=400, reps=5, resume_items=100_000)
QUICK = Sizes(items=100, reps=5, resume_items=25_000)


CPU: dict[str, list[float]] = {}  # CPU seconds of the calling thread per repetition, by variant


def run_map(n: int, kind: str, executor: str, offset: int, checkpoint: bool = True) -> float:
    """One tether run mapping ``n`` items; the body's own timing of its ``ctx.map`` call."""
    key = f"bench-{secrets.token_hex(6)}"
    res = timed_map.start(
        n=n, kind=kind, executor=executor, offset=offset, key=key, checkpoint=checkpoint
    ).result(600)
    CPU.setdefault("ours" if checkpoint else "nocp", []).append(float(res["cpu"]))
    return float(res["seconds"])


def overhead(ref: str, label: str, ex: Executor, sizes: Sizes, client: Any = None) -> list[Row]:
    """Interleaved repetitions of plain ``ex.map`` and ``ctx.map`` on the same executor (and, with
    a Dask ``client``, of one plain ``client.map`` + ``client.gather``, which is how ctx.map submits,
    and of ``ctx.map(..., checkpoint=False)``)."""
    EXECUTORS[label] = ex
    n = sizes.items
    offset = 0

    def fresh() -> range:
        nonlocal offset
        offset += n
        return range(offset, offset + n)

    def plain() -> float:
        items = fresh()
        t0, c0 = pc(), time.thread_time()
        out = list(ex.map(sleepy, items))
        elapsed = pc() - t0
        CPU.setdefault("plain", []).append(time.thread_time() - c0)
        assert out == list(items)
        return elapsed

    def batch() -> float:
        items = fresh()
        t0, c0 = pc(), time.thread_time()
        out = client.gather(client.map(sleepy, items, pure=False))
        elapsed = pc() - t0
        CPU.setdefault("batch", []).append(time.thread_time() - c0)
        assert out == list(items)
        return elapsed

    def ours() -> float:
        items = fresh()
        return run_map(n, "sleepy", label, items.start)

    def nocp() -> float:
        items = fresh()
        return run_map(n, "sleepy", label, items.start, checkpoint=False)

    plain()  # warm up every path (threads started, Dask workers have the function)
    ours()
    times: dict[str, list[float]] = {"plain": [], "ours": [], "batch": [], "nocp": []}
    fns: list[tuple[str, Callable[[], float]]] = [("plain", plain), ("ours", ours)]
    if client is not None:
        fns += [("batch", batch), ("nocp", nocp)]
    CPU.clear()
    for rep in range(sizes.reps):
        for name, fn in fns if rep % 2 == 0 else fns[::-1]:
            times[name].append(fn())
    for name, values in times.items():
        if values:
            say(f"  {label} {name}: {[round(x, 3) for x in values]}")
    b, t = statistics.median(times["plain"]), statistics.median(times["ours"])
    cpu = {k: statistics.median(v) / n * 1e3 for k, v in CPU.items()}  # ms per item
    say(f"  {label} calling thread CPU ms/item: {cpu}")
    rows = [
        Row(
            ref,
            f"`ctx.map` of {n} x 10 ms items, {label} (median of {sizes.reps})",
            f"{t:.3f} s ({(t - b) / n * 1e3:+.2f} ms/item; run thread CPU {cpu['ours']:.2f} ms/item)",
            f"{b:.3f} s `executor.map` (caller CPU {cpu['plain']:.2f} ms/item)",
            t / b,
            "ratio <= 1.1",
            t / b <= 1.1,
        )
    ]
    if client is not None:
        s = statistics.median(times["batch"])
        rows.append(
            Row(
                f"{ref}'",
                f"same, against one plain `client.map` + `client.gather` ({label})",
                f"{t:.3f} s",
                f"{s:.3f} s `client.map` + `gather` (caller CPU {cpu['batch']:.2f} ms/item)",
                t / s,
                "(informative)",
                None,
            )
        )
        c = statistics.median(times["nocp"])
        rows.append(
            Row(
                f"{ref}''",
                f"same, `ctx.map(..., checkpoint=False)` ({label}): no checkpoint writes",
                f"{c:.3f} s ({(c - b) / n * 1e3:+.2f} ms/item; run thread CPU {cpu['nocp']:.2f} ms/item)",
                f"{b:.3f} s `executor.map`",
                c / b,
                "(informative)",
                None,
            )
        )
        rows.append(
            Row(
                "6e",
                f"run thread CPU per `ctx.map` item, {label}, {n} x 10 ms items (median of {sizes.reps})",
                f"{cpu['ours']:.3f} ms",
                f"`executor.map` caller {cpu['plain']:.3f} ms, `client.map` + `gather` caller "
                f"{cpu['batch']:.3f} ms",
                cpu["ours"] / cpu["plain"],
                "<= 0.3 ms",
                cpu["ours"] <= 0.3,
            )
        )
    return rows


def bench_overhead(sizes: Sizes) -> list[Row]:
    rows = []
    say("overhead: thread pool of 4")
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows += overhead("6a", "thread pool of 4", pool, sizes)
    try:
        import distributed
    except ImportError:
        say("overhead: Dask skipped (pip install 'tether[dask]')")
        return [
            *rows,
            Row(
                "6b",
                "`ctx.map` on a Dask `LocalCluster`",
                "",
                "not measured: distributed is not installed (pip install 'tether[dask]')",
                None,
                "ratio <= 1.1",
                None,
            ),
            Row(
                "6e", "run thread CPU per `ctx.map` item on Dask", "", "not measured", None, "<= 0.3 ms", None
            ),
        ]
    say("overhead: Dask LocalCluster (2 worker processes x 2 threads)")
    with warnings.catch_warnings():  # its HTTP server falls back from a busy port 8787: fine
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    try:
        rows += overhead("6b", "Dask LocalCluster executor", client.get_executor(), sizes, client=client)
    finally:
        client.close()
        cluster.close()
    return rows


def bench_resume(sizes: Sizes, db: Path) -> list[Row]:
    n = sizes.resume_items
    say(f"resume: a map of {n:,} trivial items, then a resume")
    t0 = pc()
    first = timed_map.start(n=n, kind="trivial", fail_attempt=1, key=f"bench-{secrets.token_hex(6)}")
    try:
        first.result(600)
        raise AssertionError("the first attempt should fail")
    except tether.RunFailed:
        pass
    first_s = pc() - t0
    say(f"  first attempt (map + checkpoints of {n:,} items): {first_s:.2f} s")

    t0 = pc()
    resumed = first.resume()
    t1 = pc()
    res = resumed.result(600)
    resume_call, resumed_map, until_return = t1 - t0, res["seconds"], res["t1"] - t0

    conn = sqlite3.connect(db)
    try:
        t2 = pc()
        rows = conn.execute(
            "SELECT name, value FROM checkpoints WHERE run_id = ? AND substr(name, 1, 4) = 'map:'",
            (first.id,),
        ).fetchall()
        values = {name: json.loads(value) for name, value in rows}
        raw_s = pc() - t2
    finally:
        conn.close()
    assert len(values) == n
    with ThreadPoolExecutor(max_workers=32) as pool:  # what ctx.map's default pool is
        t3 = pc()
        assert list(pool.map(trivial, range(n))) == list(range(n))
        plain_s = pc() - t3
    return [
        Row(
            "6c",
            f"resume with {n:,} finished items: `resume()` until the resumed map returns",
            f"{until_return:.3f} s",
            f"{raw_s:.3f} s raw SELECT + json.loads",
            until_return / raw_s,
            "(informative)",
            None,
        ),
        Row(
            "6c'",
            "of which `run.resume()` (new attempt, checkpoints copied)",
            f"{resume_call:.3f} s",
            "",
            None,
            "(informative)",
            None,
        ),
        Row(
            "6c''",
            "of which the resumed `ctx.map` call (no item runs)",
            f"{resumed_map:.3f} s",
            "",
            None,
            "(informative)",
            None,
        ),
        Row(
            "6d",
            f"first attempt of 6c: a map of {n:,} trivial items, each checkpointed (32 threads)",
            f"{first_s:.2f} s ({first_s / n * 1e6:.0f} us/item)",
            f"{plain_s:.2f} s `executor.map`, no run",
            first_s / plain_s,
            "(informative)",
            None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 30 s")
    parser.add_argument("--only", choices=["overhead", "resume"])
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    info = machine()
    info["distributed"] = version_of("distributed") or "not installed"
    watch = CpuWatch()
    free = watch.idle_share(1.0)
    print(f"# tether fan-out benchmark ({'quick' if args.quick else 'full'})\n")
    print("\n".join(f"- **{k}**: {v}" for k, v in info.items()))
    if free is not None:
        print(f"- CPU left idle by other processes (1 s before start): {free:.0%}")
    print(flush=True)
    watch = CpuWatch()
    start = pc()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-fanout-") as tmp:
        db = Path(tmp) / "runs.db"
        tether.configure(db=db)
        try:
            if args.only in (None, "overhead"):
                rows += bench_overhead(sizes)
            if args.only in (None, "resume"):
                rows += bench_resume(sizes, db)
        finally:
            tether.workspace.default().close()
    report(rows, info, watch, pc() - start, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

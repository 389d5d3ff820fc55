"""`tether serve` under many watchers: 50 concurrent SSE streams of one busy run.

    python bench/serve_watchers.py            # 10 s per phase (~40 s)
    python bench/serve_watchers.py --quick    # 4 s per phase
    python bench/serve_watchers.py --watchers 100 --json OUT

A child process owns a run that logs a line every ~2 ms (plus progress); ``tether serve`` runs in
another process; this process opens the SSE streams (httpx, asyncio). Two phases over the same
run: one watcher, then ``--watchers`` at once. Measured in each phase:

- **DB reads/s**: the server's own count of store reads (its hub counts each one; ``/api/stats``),
  over the phase, after a 1 s warm-up;
- **event latency**: for every log event a watcher receives, its arrival time minus the time the
  pipeline called ``ctx.log`` (``ts`` of the event; same host clock). It includes the owner's
  flush interval (0.25 s by default): the line reaches the store only at the owner's next flush.

Goals: reads/s with 50 watchers <= 2x one watcher's; p50 latency <= 300 ms.
Exit status 0 even when goals are missed: this measures, it does not test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths
from benchlib import CpuWatch, Row, machine, pct, report, say


async def _watch(
    client: Any, base: str, run_id: str, until: float, lat: list[float], counts: list[int]
) -> None:
    async with client.stream("GET", f"{base}/api/runs/{run_id}/events") as resp:
        data: list[str] = []
        async for line in resp.aiter_lines():
            if line == "":
                if data:
                    msg = json.loads("\n".join(data))
                    now = time.time()
                    for ev in msg["events"]:
                        if ev["kind"] == "log":
                            lat.append(now - ev["ts"])
                    counts.append(len(msg["events"]))
                data = []
                if time.monotonic() > until:
                    return
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))


async def _phase(base: str, run_id: str, watchers: int, seconds: float) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    counts: list[int] = []
    start = time.monotonic()
    # one client, one connection per stream (a client per watcher would cost an SSL context each)
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=None))
    tasks = [
        asyncio.create_task(_watch(client, base, run_id, start + 1.0 + seconds, lat, counts))
        for _ in range(watchers)
    ]
    await asyncio.sleep(1.0)  # warm-up: every stream open, the feed running
    r0 = (await client.get(f"{base}/api/stats")).json()
    t0 = time.monotonic()
    lat.clear()
    await asyncio.sleep(seconds)
    r1 = (await client.get(f"{base}/api/stats")).json()
    t1 = time.monotonic()
    failed = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, BaseException)]
    if failed:
        say(f"{len(failed)} watcher(s) failed, e.g. {failed[0]!r}")
    await client.aclose()
    return {
        "reads_per_s": (r1["reads"] - r0["reads"]) / (t1 - t0),
        "watchers_seen": r0["watchers"],
        "p50": pct(lat, 0.5) if lat else float("nan"),
        "p99": pct(lat, 0.99) if lat else float("nan"),
        "events": len(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()
    seconds = 4.0 if args.quick else 10.0
    watch = CpuWatch()
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tether-serve-bench-"))
    db = tmp / "runs.db"
    env = dict(os.environ, TETHER_DB=str(db))
    env["PYTHONPATH"] = _paths.child_pythonpath(_paths.SRC)
    from helpers import web

    n = 1_000_000
    owner, run_id = web.start_child(env, tmp, "chatty", n=n, delay=0.002)
    srv = web.Serve(db, env).start()
    try:
        say(f"run {run_id}; server {srv.base}")
        one = asyncio.run(_phase(srv.base, run_id, 1, seconds))
        say(f"1 watcher: {one}")
        many = asyncio.run(_phase(srv.base, run_id, args.watchers, seconds))
        say(f"{args.watchers} watchers: {many}")
    finally:
        srv.stop()
        owner.kill()
        owner.communicate(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = many["reads_per_s"] / one["reads_per_s"] if one["reads_per_s"] else None
    w = args.watchers
    rate = many["events"] / (w * seconds)  # log lines/s the run wrote, as each watcher saw them
    rows = [
        Row(
            "11a",
            f"`tether serve`: store reads/s with {w} SSE watchers of one busy run ({rate:,.0f} log lines/s), "
            f"{seconds:.0f} s",
            f"{many['reads_per_s']:.1f} reads/s ({many['events']:,} log events received)",
            f"one watcher: {one['reads_per_s']:.1f} reads/s",
            ratio,
            "ratio <= 2",
            None if ratio is None else ratio <= 2,
        ),
        Row(
            "11b",
            f"`tether serve`: event latency, `ctx.log` in the owner -> received by each of {w} SSE "
            "watchers (includes the owner's 0.25 s flush interval)",
            f"p50 {many['p50'] * 1e3:.0f} ms, p99 {many['p99'] * 1e3:.0f} ms",
            f"one watcher: p50 {one['p50'] * 1e3:.0f} ms, p99 {one['p99'] * 1e3:.0f} ms",
            many["p50"] / one["p50"] if one["p50"] else None,
            "p50 <= 300 ms",
            many["p50"] <= 0.3,
        ),
    ]
    info = machine()
    report(rows, info, watch, time.monotonic() - t_start, args.json)


if __name__ == "__main__":
    main()

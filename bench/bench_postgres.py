"""Figures of the PostgreSQL store (docs/postgres.md), on a throwaway local cluster started here
(tests/helpers/postgres.py; PostgreSQL's binaries and psycopg needed), beside SQLite on this disk.

    python bench/bench_postgres.py [--quick]

1. attach: start() of a key whose run has ended (the fast path: one read), ms per call;
2. durable runs/s: distinct keys started and run to the end by the runner, one process;
3. a race: 16 processes each start the same 200 keys at once: one run per key, no error;
4. workers: 3 processes drain 1,000 pending detached runs (claim, then finish): none twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (tests/ importable: helpers.postgres)

from helpers.postgres import start_cluster
from tether.model import Owner
from tether.workspace import Workspace

_RACE = """
import json, sys, time
from tether.workspace import Workspace
ws = Workspace(db=sys.argv[1], max_concurrency=8)
p = ws.pipeline(name="bench_pg.race")(lambda ctx, k: k)
print("ready", flush=True)
sys.stdin.readline()
runs = [p.start(k=k) for k in range(int(sys.argv[2]))]
ids = [r.id for r in runs]
for r in runs:
    r.result(timeout=300)
print(json.dumps(ids), flush=True)
ws.close()
"""

_DRAIN = """
import json, os, sys
from tether.model import Owner, Status
from tether.store import FlushItem
from tether.workspace import Workspace
store = Workspace(db=sys.argv[1]).store()
me = Owner("host-" + sys.argv[2], os.getpid(), 1.0, "worker-" + sys.argv[2])
store.list_runs(limit=1)
print("ready", flush=True)
sys.stdin.readline()
done = []
while (rec := store.claim_next(me, ["bench_pg.queue"], 60.0)) is not None:
    item = FlushItem(rec.id, None, [], [], 1, 1, None, [])
    store.finish(item, me, Status.SUCCEEDED, result_json="1", error=None)
    done.append(rec.id)
print(json.dumps(done), flush=True)
"""


def _procs(code: str, args: list[list[str]]) -> tuple[list[Any], float]:
    """Run ``code`` in one process per argument list, released at once; (their JSON, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *a],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    took = time.perf_counter() - t0
    assert all(p.returncode == 0 for p in procs), "a process failed"
    return [json.loads(o) for o in outs], took


def attach_and_runs(db: str, n_attach: int, n_runs: int) -> tuple[float, float]:
    ws = Workspace(db=db)
    try:
        p = ws.pipeline(name="bench_pg.one")(lambda ctx, x: x)
        p.start(x=0).result(timeout=60)
        t0 = time.perf_counter()
        for _ in range(n_attach):
            p.start(x=0)
        attach_ms = (time.perf_counter() - t0) / n_attach * 1000
        t0 = time.perf_counter()
        runs = [p.start(x=i) for i in range(1, n_runs + 1)]
        for r in runs:
            r.result(timeout=300)
        per_s = n_runs / (time.perf_counter() - t0)
    finally:
        ws.close()
    return attach_ms, per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    n_attach, n_runs, keys, queue = (200, 50, 50, 200) if opts.quick else (2000, 300, 200, 1000)
    cluster = start_cluster()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lite = attach_and_runs(str(Path(tmp) / "runs.db"), n_attach, n_runs)
        pg = attach_and_runs(cluster.new_database(), n_attach, n_runs)
        print(f"attach: PostgreSQL {pg[0]:.3f} ms, SQLite {lite[0]:.3f} ms")
        print(f"durable runs/s (one process): PostgreSQL {pg[1]:.0f}, SQLite {lite[1]:.0f}")

        url = cluster.new_database()
        outs, took = _procs(_RACE, [[url, str(keys)] for _ in range(16)])
        ws = Workspace(db=url)
        rows = ws.store().list_runs(limit=None)
        ws.close()
        one_each = len(rows) == keys and all(r.attempt == 1 for r in rows)
        same = all(o == outs[0] for o in outs)
        print(
            f"race: 16 processes x {keys} keys in {took:.1f} s: {len(rows)} runs, one per key: {one_each}, "
            f"every process got the same run of each key: {same}, errors: 0"
        )

        url = cluster.new_database()
        ws = Workspace(db=url)
        store, me = ws.store(), Owner("bench", os.getpid(), 1.0, "bench")
        for k in range(queue):  # pending, for any worker (what start(detach=True) leaves)
            store.start(
                pipeline="bench_pg.queue", key=f"k{k}", params_json="{}", version=None, phases=[],
                policy="attach", owner=me, lease_s=60.0, gone=lambda o, lease, now: None, detach=True,
            )  # fmt: skip
        ws.close()
        outs, took = _procs(_DRAIN, [[url, str(n)] for n in range(3)])
        flat = [i for o in outs for i in o]
        print(
            f"workers: 3 processes drained {len(flat)} pending runs in {took:.1f} s "
            f"({len(flat) / took:.0f}/s), claimed twice: {len(flat) - len(set(flat))}, "
            f"per worker: {[len(o) for o in outs]}"
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()

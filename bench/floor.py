"""The floor of figure 2a: the least a Python engine must do for a durable 3-step run, against
tether and DBOS in the same process, interleaved batch by batch.

The floor engine does the durable work of 2a and nothing else, written straight on ``sqlite3``
(WAL, ``synchronous=NORMAL``, tether's default durability), one connection shared by its two
threads:

- ``start(i)``: canonical JSON of the params, their SHA-256 key, one indexed read of the key (the
  idempotency check), then one write transaction: the run's row (running, owned) and its
  ``started`` event; the body goes to one persistent run thread through a ``SimpleQueue``;
- the run thread: per step, the step's value as JSON and a write transaction storing the
  checkpoint, fenced on the run still being this owner's (``INSERT ... SELECT ... WHERE EXISTS``),
  committed before the next step begins (DESIGN.md: a crash never loses a checkpoint); then one
  write transaction for the end (the row's status, result and end time; the ``succeeded`` event);
  then it wakes the caller (a ``threading.Event``);
- the caller returns the result.

That is five commits and two thread hand-overs per run, like tether (and DBOS); no progress, log,
retries, cancels, leases, recovery, damaged-row checks, interrupts or fork safety. What the floor
spends per run is what any Python engine with these guarantees spends at least; its ratio to
DBOS bounds the ratio tether can reach (the goal of 2a is 30x DBOS).

    python bench/floor.py            # 5 interleaved batches of 300 runs per side (~1 min)
    python bench/floor.py --quick    # a smoke run
    python bench/floor.py --full     # 2d's case: the floor and tether at synchronous=FULL (an
                                     # fsync per commit), DBOS at its default (also FULL)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import peers  # beside this script: the same tether pipeline, DBOS workflow and launch as 2a

import tether

pc = time.perf_counter

SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, params TEXT NOT NULL,
    status TEXT NOT NULL, owner TEXT, result TEXT, created_at REAL, ended_at REAL,
    last_seq INTEGER NOT NULL);
CREATE TABLE checkpoints (run_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, ts REAL,
    PRIMARY KEY (run_id, name));
CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL, kind TEXT NOT NULL,
    data TEXT, PRIMARY KEY (run_id, seq));
"""


class Floor:
    """The floor engine (see the module's docstring)."""

    def __init__(self, path: Path, sync: str = "NORMAL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {sync}")
        self.conn.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.owner = uuid.uuid4().hex
        self.queue: SimpleQueue[tuple[str, int, threading.Event, list[Any]] | None] = SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="floor-run", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.conn.close()

    def run(self, i: int) -> Any:
        """start(i=i).result()"""
        params = json.dumps({"i": i}, sort_keys=True, separators=(",", ":"))
        key = "floor.three_steps:" + hashlib.sha256(params.encode()).hexdigest()[:16]
        conn = self.conn
        with self.lock:
            row = conn.execute("SELECT id, status, result FROM runs WHERE key = ?", (key,)).fetchone()
        if row is not None:
            raise SystemExit(f"floor: key of i={i} already has a run")
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        self._commit(
            (
                "INSERT INTO runs (id, key, params, status, owner, created_at, last_seq) "
                "VALUES (?, ?, ?, 'running', ?, ?, 1)",
                (run_id, key, params, self.owner, now),
            ),
            ("INSERT INTO events VALUES (?, 1, ?, 'started', NULL)", (run_id, now)),
        )
        done = threading.Event()
        out: list[Any] = []
        self.queue.put((run_id, i, done, out))
        done.wait()
        return out[0]

    def _commit(self, *statements: tuple[str, tuple[Any, ...]]) -> int:
        """One write transaction of ``statements``; the rows the first one changed."""
        conn = self.conn
        with self.lock:
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.execute(*statements[0]).rowcount
            for sql, args in statements[1:]:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        return changed

    def _loop(self) -> None:
        owner = self.owner
        while (job := self.queue.get()) is not None:
            run_id, i, done, out = job
            values = []
            for k in (1, 2, 3):
                value = peers.small(i, k)
                text = json.dumps(value, sort_keys=True, separators=(",", ":"))
                ours = self._commit(
                    (
                        "INSERT OR REPLACE INTO checkpoints SELECT ?, ?, ?, ? WHERE EXISTS "
                        "(SELECT 1 FROM runs WHERE id = ? AND status = 'running' AND owner = ?)",
                        (run_id, f"s{k}", text, time.time(), run_id, owner),
                    )
                )
                if ours != 1:
                    raise SystemExit(f"floor: run {run_id} is no longer ours")
                values.append(value)
            result = json.dumps(values, sort_keys=True, separators=(",", ":"))
            now = time.time()
            self._commit(
                (
                    "UPDATE runs SET status = 'succeeded', result = ?, ended_at = ?, last_seq = 2 "
                    "WHERE id = ? AND status = 'running' AND owner = ?",
                    (result, now, run_id, owner),
                ),
                ("INSERT INTO events VALUES (?, 2, ?, 'succeeded', NULL)", (run_id, now)),
            )
            out.append(values)
            done.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, a smoke run")
    ap.add_argument("--full", action="store_true", help="the floor and tether at synchronous=FULL (2d)")
    ap.add_argument("--batches", type=int, default=5, help="interleaved batches per side (default 5)")
    args = ap.parse_args(argv)
    runs = 30 if args.quick else 300
    if peers.DBOS is None:
        print(f"DBOS is not installed: {peers.INSTALL}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tether-floor-") as tmp_name:
        tmp = Path(tmp_name)
        tether.configure(db=tmp / "tether.db", durability="full" if args.full else "normal")
        floor = Floor(tmp / "floor.db", "FULL" if args.full else "NORMAL")
        peers.launch_dbos(tmp / "dbos.sqlite")
        try:
            sides: dict[str, Any] = {
                "floor": lambda i: floor.run(i) == peers.expected(i),
                "tether": lambda i: peers.tether_run(i) >= 0,
                "DBOS": lambda i: peers.dbos_run(i) >= 0,
            }
            for i in range(20):  # warm-up: imports, first connections and threads
                for fn in sides.values():
                    fn(-i - 1)
            rates: dict[str, list[float]] = {name: [] for name in sides}
            order = list(sides)
            for b in range(args.batches):
                ids = range(b * runs, (b + 1) * runs)
                for name in order[b % 3 :] + order[: b % 3]:  # who goes first rotates
                    fn = sides[name]
                    gc.collect()
                    t0 = pc()
                    if not all(fn(i) for i in ids):
                        raise SystemExit(f"{name}: a run returned the wrong value")
                    rates[name].append(runs / (pc() - t0))
        finally:
            peers.DBOS.destroy(destroy_registry=False)
            floor.close()
            tether.workspace.default().close()
    med = {name: statistics.median(r) for name, r in rates.items()}
    sync = "FULL, DBOS at its default FULL (2d)" if args.full else "NORMAL, DBOS at its default FULL (2a)"
    print(
        f"durable 3-step runs at synchronous={sync}, {args.batches} interleaved batches of {runs} per side:"
    )
    for name, r in rates.items():
        print(f"  {name:>6}: {med[name]:7,.0f} runs/s  ({', '.join(f'{x:,.0f}' for x in r)})")
    goal = "2d's goal for tether: 5x" if args.full else "2a's goal for tether: 30x"
    print(f"floor / DBOS  = {med['floor'] / med['DBOS']:.1f}x   ({goal})")
    print(f"tether / DBOS = {med['tether'] / med['DBOS']:.1f}x")
    print(f"tether / floor = {med['tether'] / med['floor']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

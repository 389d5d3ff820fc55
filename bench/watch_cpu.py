"""CPU of `tether watch` following a busy run of another process (figure 11c of docs/performance.md).

    python bench/watch_cpu.py                  # 20 s per mode (~50 s)
    python bench/watch_cpu.py --quick          # 5 s per mode (or --seconds N)
    python bench/watch_cpu.py --json OUT.json  # also write the rows for bench/run.py

A child process executes ``helpers.watch_pipelines.busy`` (~1,000 ``ctx.advance()`` and ~50 log
lines a second). ``tether watch ID`` follows it, once under a pseudo-terminal (frames redrawn in
place; this script reads the terminal all the time, as a terminal would) and once with its stdout
on a pipe (plain lines). The figure is the watcher's CPU time (``psutil`` ``cpu_times()``, user +
system) over ``--seconds`` after a 2 s warm-up (its start and imports are not counted), as a
share of one core. Exit status 0 even when the goal is missed.
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

import _paths
import pexpect
import psutil
from benchlib import CpuWatch, Row, machine, report, say

GOAL = 0.02  # of one core
WARMUP_S = 2.0


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def measure(env: dict[str, str], run_id: str, seconds: float, tty: bool) -> float:
    """The watcher's CPU share of one core over ``seconds``."""
    cmd = [sys.executable, "-m", "tether.cli", "watch", run_id]
    if tty:
        w = pexpect.spawn(cmd[0], cmd[1:], env=env, dimensions=(30, 120), timeout=seconds + 60)
        pid = w.pid
    else:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pid = p.pid
    proc = psutil.Process(pid)
    t0 = c0 = 0.0
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if not t0 and now - start >= WARMUP_S:
            t0, c0 = now, cpu(proc)
        if t0 and now - t0 >= seconds:
            share = (cpu(proc) - c0) / (now - t0)
            # a watcher that had exited (the run ended early) measured nothing
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, "the watcher exited early"
            break
        if tty:
            try:  # drain the terminal, as a terminal does: a full pty would block the watcher
                w.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                pass
        else:
            time.sleep(0.2)  # plain lines are few: the pipe never fills in this time
    proc.terminate()
    if tty:
        w.close(force=True)
    else:
        p.communicate(timeout=30)
    return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per mode (default 20)")
    ap.add_argument("--quick", action="store_true", help="5 measured seconds per mode (a smoke run)")
    ap.add_argument("--json", help="also write the rows to this file (for bench/run.py)")
    args = ap.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    watch = CpuWatch()
    began = time.monotonic()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["TETHER_DB"] = str(Path(tmp) / "runs.db")
        env["PYTHONPATH"] = _paths.child_pythonpath(_paths.SRC)
        for mode in ("tty", "plain"):
            params = {"seconds": args.seconds + WARMUP_S + 10, "tag": f"{mode} {time.time()}"}
            code = "import sys; from helpers.watch_pipelines import child; child(sys.argv[1])"
            child = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps({"pipeline": "busy", "params": params})],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            run_id = child.stdout.readline().strip()
            say(f"{mode}: watching run {run_id} for {args.seconds:g} s (+{WARMUP_S:g} s warm-up)")
            results[mode] = measure(env, run_id, args.seconds, tty=mode == "tty")
            child.kill()
            child.wait()
            say(f"{mode}: {results[mode]:.2%} of a core")
    name = (
        f"`tether watch ID` CPU, following a busy run of another process (~1,000 `ctx.advance()` "
        f"and ~50 log lines/s) for {args.seconds:g} s, under a pseudo-terminal (frames redrawn "
        "in place); in brackets: stdout on a pipe (plain lines)"
    )
    rows = [
        Row(
            "11c",
            name,
            f"{results['tty']:.2%} of a core ({results['plain']:.2%})",
            "",
            None,
            f"<= {GOAL:.0%} of a core",
            results["tty"] <= GOAL and results["plain"] <= GOAL,
        )
    ]
    info: dict[str, Any] = {**machine(), "seconds": args.seconds}
    report(rows, info, watch, time.monotonic() - began, args.json)


if __name__ == "__main__":
    main()

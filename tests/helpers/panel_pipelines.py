"""Pipelines for the panel tests: importable by pytest, by child processes and by notebook kernels.

Import as ``helpers.panel_pipelines`` (tests/ on sys.path) so the registered names agree everywhere.
"""

from __future__ import annotations

import time

import tether

PHASES = ["scanning", "analyzing", "generating", "applying"]


@tether.pipeline(phases=PHASES)
def four_phase(ctx, n: int = 20, delay: float = 0.05, tag: str = "", hold: str = "") -> dict:
    """Four phases of ``n`` steps each, ``delay`` seconds a step, a log line per phase.

    ``hold``: a path; halfway through "analyzing" the run waits (still running) until it exists.
    """
    for name in PHASES:
        ctx.phase(name, total=n)
        for i in ctx.track(range(n)):
            time.sleep(delay)
            if i == n // 2:
                ctx.log("%s: halfway (%d/%d)", name, i, n)
                if hold and name == "analyzing":
                    _wait_for(ctx, hold)
    return {"tag": tag, "steps": 4 * n}


def _wait_for(ctx, path: str) -> None:
    import os

    while not os.path.exists(path):
        ctx.advance(0)  # sees a cancel
        time.sleep(0.01)


@tether.pipeline(phases=["counting"])
def spin(ctx, calls: int = 3_000_000, tag: str = "") -> int:
    """``calls`` ctx.advance() calls: the hot path, for the coalescing test and the benchmark."""
    ctx.phase("counting", total=calls)
    advance = ctx.advance
    for _ in range(calls):
        advance()
    return calls


EVIL = '<img src=x onerror="window.__tether_xss=1"> <script>window.__tether_xss=2</script>'


@tether.pipeline(phases=["loading", "exploding"])
def evil(ctx, tag: str = "") -> None:
    """Logs and fails with HTML-looking text: the panel must show it as text."""
    ctx.phase("loading", total=2)
    ctx.log(EVIL)
    ctx.advance()
    ctx.log("plain line after " + EVIL)
    ctx.advance()
    ctx.phase("exploding")
    raise ValueError("bad input " + EVIL)


@tether.pipeline(phases=["waiting"])
def gate(ctx, path: str, timeout: float = 60.0, tag: str = "") -> str:
    """Waits (polling the file system) until ``path`` exists, logging a line when it does."""
    ctx.phase("waiting")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            ctx.advance(0)  # sees a cancel
            time.sleep(0.01)
            continue
        ctx.phase("released")
        ctx.log("released: %s", text)
        return text
    raise TimeoutError(f"{path} did not appear within {timeout} s")


@tether.pipeline(phases=["a", "b"])
def churn(ctx, n: int = 300, tag: str = "") -> int:
    """``n`` phase switches: each one is persisted and notifies the panel (coalescing test)."""
    for i in range(n):
        ctx.phase("a" if i % 2 == 0 else "b", total=n)
        ctx.advance(i)
    return n


CHILD = """
import os, sys, time
import tether
from helpers import panel_pipelines as pp
kind, arg, tag, fate = sys.argv[1:5]
run = pp.gate.start(path=arg, tag=tag) if kind == "gate" else pp.four_phase.start(
    n=int(arg), delay=0.05, tag=tag)
print(run.id, flush=True)
while (rec := run.store.get(run.id)).status != "running" or rec.phase is None:  # as stored
    time.sleep(0.01)
if fate == "die":
    os._exit(0)
run.wait(120)
"""


@tether.pipeline
def relay(ctx, folder: str, count: int = 5, timeout: float = 60.0, tag: str = "") -> int:
    """For i in range(count): wait for ``folder/i``, then switch to phase ``step<i>`` (latency bench)."""
    import os

    for i in range(count):
        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(folder, str(i))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{folder}/{i} did not appear within {timeout} s")
            ctx.advance(0)
            time.sleep(0.002)
        ctx.phase(f"step{i}")
    return count

"""Pipelines for the ``tether watch`` tests and bench, run by a child process the watcher is not.

``gated`` is driven step by step by the test: it waits (with ctx calls, so a cancel stops it) for
gate files ``<gates>/a`` and ``<gates>/b`` to appear. ``busy`` advances and logs steadily for a
given time (the CPU bench). ``child(spec)`` starts one run in this process and waits for its end.
Every wait has a deadline, so a child the test forgot to stop ends by itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import tether

SAFETY_S = 60.0
EVIL = "evil \x1b]0;pwned\x07 \x1b[2J\x1b[31mred\r\x08 end"

# argv for a child process: ``[sys.executable, *CHILD, json.dumps(spec)]``
CHILD = ["-c", "import sys; from helpers.watch_pipelines import child; child(sys.argv[1])"]


def _gate(ctx: tether.Context, gates: str, name: str) -> None:
    path = os.path.join(gates, name)
    deadline = time.monotonic() + SAFETY_S
    while not os.path.exists(path):
        ctx.advance(0)  # a cancel is seen here
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.01)


@tether.pipeline(phases=["load", "crunch", "save"])
def gated(ctx: tether.Context, gates: str, fail: bool = False) -> dict[str, Any]:
    """load 2/4, wait for gate a; log lines (one escape-laden), crunch 5/10, wait for gate b;
    then fail, or save and return."""
    ctx.phase("load", total=4)
    ctx.advance(2)
    ctx.log("loaded two of four")
    _gate(ctx, gates, "a")
    ctx.log(EVIL)
    ctx.phase("crunch", total=10)
    ctx.advance(5)
    ctx.log("crunching")
    _gate(ctx, gates, "b")
    if fail:
        raise ValueError("boom at the gate")
    ctx.phase("save", total=1)
    ctx.advance()
    return {"ok": True}


@tether.pipeline(retries=3, retry_delay=30.0)
def retrying(ctx: tether.Context, gates: str) -> str:
    """Fails its first try, then waits 30 s before the next: a run that shows ``try 2 of 4``."""
    ctx.phase("work", total=1)
    if ctx.tries == 1:
        raise ConnectionError("first try fails")
    _gate(ctx, gates, "a")
    return "ok"


@tether.pipeline(phases=["spin"])
def busy(ctx: tether.Context, seconds: float, tag: str = "") -> int:
    """Advance ~1,000 times and log ~50 lines a second, for ``seconds`` (``tag``: another key)."""
    n = int(seconds * 1000)
    ctx.phase("spin", total=n)
    for i in range(n):
        ctx.advance()
        if i % 20 == 0:
            ctx.log("item %d of %d", i, n)
        time.sleep(0.001)
    return n


@tether.pipeline
def quick(ctx: tether.Context, ok: bool = True) -> str:
    ctx.log("quick")
    if not ok:
        raise ValueError("quick failure")
    return "done"


@tether.pipeline
def family(ctx: tether.Context, gates: str) -> list[str]:
    """Starts two ``quick`` children (one fails), waits for them, then for gate a."""
    kids = [quick.start(ok=True), quick.start(ok=False)]
    for kid in kids:
        try:
            kid.wait(timeout=SAFETY_S)
        except tether.RunFailed:
            pass
    _gate(ctx, gates, "a")
    return [kid.id for kid in kids]


def child(spec_json: str) -> None:
    """Start ``spec["pipeline"]`` with ``spec["params"]`` here; print its id; wait for its end."""
    spec = json.loads(spec_json)
    fn = globals()[spec["pipeline"]]
    run = fn.start(**spec["params"])
    print(run.id, flush=True)
    try:
        run.wait(timeout=SAFETY_S * 2)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)

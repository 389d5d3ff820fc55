"""Pipelines for the control tests (retries, timeouts, nesting, concurrency=, callbacks).

Importable as ``helpers.control_pipelines`` in the test process, in child processes and in ``tether
worker`` processes, so each name means the same pipeline everywhere. Side effects are counted in
files (one line per execution) so a test can tell which steps ran on which try, in whichever
process. Every wait has a deadline, so a child the test forgot to stop ends by itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tether
from helpers.files import SAFETY_S, append, lines, wait_file

# argv for a child process: ``[sys.executable, *CHILD, json.dumps(spec)]`` (see ``child``)
CHILD = ["-c", "import sys; from helpers.control_pipelines import child; child(sys.argv[1])"]


def _step(log: str, name: str) -> str:
    ctx = tether.context.current()
    assert ctx is not None
    append(log, f"{name}@{ctx.tries}")
    return name


def _item(arg: dict[str, Any]) -> int:
    ctx = tether.context.current()
    tries = ctx.tries if ctx is not None else 0
    append(arg["log"], f"item{arg['i']}@{tries}")
    if arg["i"] == 1 and len([x for x in lines(arg["log"]) if x.startswith("item1@")]) == 1:
        raise ConnectionError("item 1 fails the first time")
    return int(arg["i"]) * 10


@tether.pipeline(retries=3, retry_delay=0.05, retry_on=(ConnectionError,))
def flaky(ctx: tether.Context, log: str, fail_b: int = 1) -> dict[str, Any]:
    """Step a, a map of two items (item 1 fails once), step b that fails ``fail_b`` times."""
    a = ctx.step("a", _step, log, "a")
    append(log, f"body@{ctx.tries}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # one at a time: item 0 ends before item 1
        items = ctx.map(_item, [{"log": log, "i": 0}, {"log": log, "i": 1}], executor=pool, name="items")

    def b() -> str:
        append(log, f"b@{ctx.tries}")
        if len([x for x in lines(log) if x.startswith("b@")]) <= fail_b:
            raise ConnectionError(f"b fails (try {ctx.tries})")
        return "b"

    return {"a": a, "items": items, "b": ctx.step("b", b), "tries": ctx.tries}


@tether.pipeline(retries=2, retry_on=(ConnectionError,))
def killed(ctx: tether.Context, log: str) -> str:
    """Try 1 fails after step a; try 2 does step b, then waits to be killed (SIGKILL); a later
    try fails again: with the tries of the killed attempt counted, none is left after it."""
    ctx.step("a", _step, log, "a")
    append(log, f"body@{ctx.tries}")
    if ctx.tries == 1:
        raise ConnectionError("try 1 fails")
    ctx.step("b", _step, log, "b")
    if ctx.tries == 2:
        ctx.log("waiting to be killed")
        ctx.phase("hanging")
        wait_file(log + ".never")
    raise ConnectionError(f"try {ctx.tries} fails too")


@tether.pipeline(concurrency=2)
def limited(ctx: tether.Context, tag: str, hold: float = 0.15) -> dict[str, Any]:
    """Holds a slot of its pipeline's concurrency=2 for ``hold`` s, making progress calls."""
    end = time.monotonic() + hold
    while time.monotonic() < end:
        ctx.advance()
        time.sleep(0.005)
    return {"tag": tag, "pid": os.getpid()}


@tether.pipeline(concurrency=1)
def single(ctx: tether.Context, tag: str, gate: str = "") -> dict[str, Any]:
    """concurrency=1; waits for ``gate`` (if given) with progress calls."""
    deadline = time.monotonic() + SAFETY_S
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        ctx.advance()
        time.sleep(0.005)
    return {"tag": tag, "pid": os.getpid()}


PIPELINES = {"flaky": flaky, "killed": killed, "limited": limited, "single": single}


def child(spec_json: str) -> None:
    """A child process: start ``spec["runs"]`` (a list of [pipeline, params]) in order, print
    {"ids", "pid"} at once, then (``spec["wait"]``, default True) wait for them all."""
    spec = json.loads(spec_json)
    if spec.get("go"):
        wait_file(spec["go"])
    runs = [PIPELINES[name].start(**params) for name, params in spec["runs"]]
    print(json.dumps({"ids": [r.id for r in runs], "pid": os.getpid()}), flush=True)
    if spec.get("wait", True):
        for run in runs:
            run.wait(timeout=SAFETY_S)
        print(json.dumps({"statuses": [str(r.status) for r in runs]}), flush=True)
    else:
        wait_file(spec["hold"])  # until killed
    sys.stdout.flush()

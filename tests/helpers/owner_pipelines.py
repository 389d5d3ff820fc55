"""Pipelines importable by the tests and by the child processes they start.

A child process runs ``child(spec_json)`` (see ``CHILD`` below): it starts one pipeline of this
module in its own process (so it is the run's owner) and then does what ``spec["mode"]`` says.
Pipelines are named ``helpers.owner_pipelines.<name>`` in the parent and in every child alike, so a start()
in either process means the same key.

Every loop here has a deadline so that a child the test forgot to stop ends by itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import tether
from helpers.files import SAFETY_S, append, wait_file

# argv for a child process: ``[*CHILD, json.dumps(spec)]``
CHILD = ["-c", "import sys; from helpers.owner_pipelines import child; child(sys.argv[1])"]


@tether.pipeline(phases=["work"])
def count_once(ctx: tether.Context, marker: str, hold: float = 0.3) -> dict[str, Any]:
    """Append one line (the pid) to ``marker`` per execution; stay active ``hold`` seconds."""
    append(marker, str(os.getpid()))
    ctx.phase("work")
    end = time.monotonic() + hold
    while time.monotonic() < end:
        ctx.advance()
        time.sleep(0.005)
    return {"pid": os.getpid()}


@tether.pipeline(phases=["scanning", "applying"])
def gated(ctx: tether.Context, gate: str, lines: int = 3) -> dict[str, Any]:
    """Log ``lines`` lines, then wait for the file ``gate`` to appear, making no progress calls."""
    ctx.phase("scanning", total=lines)
    for i in range(lines):
        ctx.log("line %d", i)
        ctx.advance()
    ctx.phase("applying")
    wait_file(gate)
    return {"lines": lines, "pid": os.getpid()}


@tether.pipeline
def spinner(ctx: tether.Context, tag: str = "", pause: float = 0.002) -> None:
    """Call ctx.advance() in a loop (every ``pause`` s; 0: flat out) until cancelled."""
    ctx.phase("spinning")
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        ctx.advance()
        if pause:
            time.sleep(pause)
    raise TimeoutError("spinner was never cancelled")


@tether.pipeline(phases=["logging"])
def crashy(ctx: tether.Context, tag: str) -> dict[str, Any]:
    """Attempt 1 logs lines forever (until its process is killed); later attempts succeed at once."""
    if ctx.attempt >= 2:
        return {"attempt": ctx.attempt, "pid": os.getpid()}
    ctx.phase("logging")
    deadline = time.monotonic() + SAFETY_S
    i = 0
    while time.monotonic() < deadline:
        ctx.log("line %d", i)
        ctx.advance()
        i += 1
        time.sleep(0.005)
    raise TimeoutError("crashy was never killed")


PIPELINES = {"count_once": count_once, "gated": gated, "spinner": spinner, "crashy": crashy}


def child(spec_json: str) -> None:
    """Entry point of a child process. ``spec``:

    - ``pipeline``, ``params``: what to start (``policy`` optional);
    - ``ready``, ``go``: optional files: create ``ready``, then wait for ``go`` before calling
      start() (to line up a race);
    - ``mode``: ``"wait"`` (wait for the run to end, print {"id", "status"}; the default),
      ``"exit"`` / ``"sysexit"`` / ``"raise"`` (once the run is running, and in phase
      ``spec["phase"]`` if given: return normally / ``sys.exit(3)`` / raise in the main thread,
      leaving the run in flight).
    """
    spec = json.loads(spec_json)
    pipe = PIPELINES[spec["pipeline"]]
    if spec.get("ready"):
        open(spec["ready"], "w").close()  # imported and about to wait for "go"
    if spec.get("go"):
        wait_file(spec["go"])
    run = pipe.start(**spec["params"], policy=spec.get("policy", "attach"))
    mode = spec.get("mode", "wait")
    if mode == "wait":
        run.wait(timeout=SAFETY_S)
        print(json.dumps({"id": run.id, "status": str(run.status), "pid": os.getpid()}), flush=True)
        return
    deadline = time.monotonic() + SAFETY_S
    while run.status != "running" or (spec.get("phase") and run.phase != spec["phase"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the run never started (or never reached spec['phase'])")
        time.sleep(0.005)
    if mode == "sysexit":
        sys.exit(3)
    if mode == "raise":
        raise RuntimeError("the main thread died with a run in flight")
    # mode == "exit": fall off the end of the program

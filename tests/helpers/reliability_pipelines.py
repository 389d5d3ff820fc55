"""Pipelines for the bad-input and security tests (tests/reliability/), importable as
``helpers.reliability_pipelines`` in the test process, in child processes and in ``tether worker``.

``full_disk_child(spec_json)`` is the entry point of a child process that runs one pipeline with a
small file-size limit (``RLIMIT_FSIZE``) and ``SIGXFSZ`` ignored, so writing past the limit is an
``EFBIG`` error for SQLite instead of a signal that kills the process. It prints one JSON line:
what ``run.result()`` returned or raised, and what the runner recorded.

Every wait has a deadline, so a child the test forgot to stop ends by itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from typing import Any

import tether

SAFETY_S = 60.0

# argv for the full-disk child: ``[sys.executable, *FULL_DISK_CHILD, json.dumps(spec)]``
FULL_DISK_CHILD = [
    "-c",
    "import sys; from helpers.reliability_pipelines import full_disk_child; full_disk_child(sys.argv[1])",
]


@tether.pipeline(phases=["logging"])
def chatty(
    ctx: tether.Context,
    lines: int,
    width: int = 200,
    quiet: float = 0.0,
    result_bytes: int = 0,
    tag: str = "",
) -> Any:
    """Log ``lines`` lines of ``width`` characters, stay quiet ``quiet`` s (no progress calls,
    so the flusher has ticks with nothing new), then return ``result_bytes`` characters (or a
    small dict)."""
    ctx.phase("logging", total=lines)
    pad = "x" * width
    for i in range(lines):
        ctx.log("line %d %s", i, pad)
        ctx.advance()
    time.sleep(quiet)
    if result_bytes:
        return "y" * result_bytes
    return {"lines": lines, "tag": tag}


@tether.pipeline
def benign(ctx: tether.Context, tag: str, log: str = "") -> dict[str, Any]:
    """An ordinary detached run for a worker; appends ``tag`` to ``log`` when it executes."""
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(tag + "\n")
    ctx.log("benign %s", tag)
    return {"tag": tag}


def full_disk_child(spec_json: str) -> None:
    """``spec``: ``db``, ``limit`` (bytes the process may write into any one file, on top of what
    the database files hold once opened), ``params`` (for ``chatty``)."""
    spec = json.loads(spec_json)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    tether.configure(db=spec["db"])
    tether.runs()  # open (and create) the database before the limit applies
    sizes = [os.path.getsize(spec["db"] + ext) for ext in ("", "-wal") if os.path.exists(spec["db"] + ext)]
    cap = max(sizes) + int(spec["limit"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))
    out: dict[str, Any] = {}
    run = chatty.start(**spec["params"])
    out["id"] = run.id
    rn = tether.workspace.default().runner()
    deadline = time.monotonic() + SAFETY_S
    # an end that cannot be written is retried for the life of the process: say so and stop
    while run.id not in rn.unstored and not rn.done_event(run.id).is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    if run.id in rn.unstored and not rn.done_event(run.id).is_set():
        out["unstored"] = rn.unstored[run.id]
    try:
        value = run.result(timeout=0 if "unstored" in out else SAFETY_S)
        out["result"] = value if not isinstance(value, str) else f"<str of {len(value)}>"
    except Exception as exc:
        out["raised"] = [type(exc).__name__, str(exc)]
    try:
        out["logs"] = len(run.logs())
    except Exception as exc:
        out["logs_raised"] = [type(exc).__name__, str(exc)]
    out["runner_errors"] = sorted({e.strip().splitlines()[-1] for e in rn.errors})
    print(json.dumps(out), flush=True)
    sys.stdout.flush()

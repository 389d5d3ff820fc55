"""Pipelines the example notebooks import.

A pipeline that another process must run (a child process, a ``tether worker``, a process pool)
has to live in an importable module like this one: a pipeline defined in a notebook cell exists
only in that kernel. Imported from here, a pipeline is named ``pipelines.<function>`` in every
process, so a ``start()`` with the same params means the same run everywhere.

Each pipeline appends one line per unit of work it really executes to a *journal* file, so the
notebooks can show which steps and items ran again after a crash and which were skipped.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tether

__all__ = ["crashy", "crunch", "etl", "journal", "square"]


def _note(path: str, line: str) -> None:
    """Record that some work really executed (append one line to the journal file)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def journal(path: str) -> list[str]:
    """The lines written to a journal so far (empty if none)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


# -- 03_crash_and_recover --------------------------------------------------------------------


def _list_files(log: str, n: int) -> list[str]:
    _note(log, "step list_files")
    time.sleep(0.1)  # e.g. a slow directory listing on a network share
    return [f"part-{i:02d}.csv" for i in range(n)]


def _process(log: str, name: str, delay: float) -> dict[str, Any]:
    _note(log, f"item {name}")
    time.sleep(delay)  # the expensive part
    return {"file": name, "rows": 100 + len(name) * 7}


def _summarise(log: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    _note(log, "step summarise")
    return {"files": len(parts), "rows": sum(p["rows"] for p in parts)}


@tether.pipeline(phases=["listing", "processing", "summarising"])
def etl(ctx: tether.Context, log: str, n: int = 12, delay: float = 0.3) -> dict[str, Any]:
    """List ``n`` files (a checkpointed step), process each (checkpointed per item), summarise.

    ``log`` is the journal file; ``delay`` the seconds each file takes. Items are processed two at
    a time so that a crash in the middle leaves some finished, some in flight, some not started.
    """
    from concurrent.futures import ThreadPoolExecutor

    ctx.phase("listing")
    files = ctx.step("list_files", _list_files, log, n)
    ctx.phase("processing", total=len(files))
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = ctx.map(lambda name: _process(log, name, delay), files, executor=pool, name="process")
    ctx.phase("summarising")
    summary = ctx.step("summarise", _summarise, log, parts)
    ctx.log("processed %d files, %d rows", summary["files"], summary["rows"])
    return summary


@tether.pipeline(phases=["work"])
def crashy(ctx: tether.Context, log: str) -> None:
    """Kill its own process each time it runs (like a segfault in a C extension)."""
    ctx.phase("work")
    _note(log, f"attempt {ctx.attempt} in pid {os.getpid()}")
    ctx.log("about to crash")
    time.sleep(0.3)  # let the flusher store the log line first
    os._exit(1)


# -- 05_async_and_fan_out --------------------------------------------------------------------


def square(x: int) -> int:
    """Work for a process pool or a Dask cluster: must be importable, like this."""
    time.sleep(0.01)
    return x * x


@tether.pipeline(phases=["crunching"])
def crunch(ctx: tether.Context, n: int = 20) -> dict[str, Any]:
    """A detached run's pipeline: executed by ``tether worker pipelines``, not by the kernel."""
    ctx.phase("crunching", total=n)
    total = 0
    for i in ctx.track(range(n)):
        total += square(i)
    ctx.log("worker pid %d", os.getpid())
    return {"sum_of_squares": total, "pid": os.getpid()}

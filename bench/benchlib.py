"""Shared pieces of the benchmark scripts: the table row, the machine header, the CPU watch, JSON out.

Not a benchmark itself. Every ``bench/*.py`` section script imports it (the scripts are run as
``python bench/X.py``, so ``bench/`` is on ``sys.path``), and ``bench/run.py`` merges the rows the
sections write with ``--json OUT``: ``{"info": {...}, "rows": [Row as a dict, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuWatch",
    "Row",
    "Section",
    "add_wait_idle",
    "dump",
    "machine",
    "ms",
    "ns",
    "pct",
    "say",
    "section_args",
    "table",
    "version_of",
    "wait_idle",
]


@dataclass
class Row:
    """One line of a results table. ``ref``: the figure's number in docs/performance.md."""

    ref: str
    name: str
    tether: str
    baseline: str
    ratio: float | None  # tether / baseline (for rates: tether's rate / the baseline's rate)
    goal: str
    ok: bool | None  # None: informative only (no goal), or not measured

    @property
    def verdict(self) -> str:
        """PASS, **MISS**, info (no goal: the goal reads "(...)") or n/a (a goal, not measured)."""
        if self.ok is None:
            return "info" if self.goal.startswith("(") else "n/a"
        return "PASS" if self.ok else "**MISS**"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        return cls(
            str(d["ref"]),
            str(d["name"]),
            str(d["tether"]),
            str(d["baseline"]),
            None if d.get("ratio") is None else float(d["ratio"]),
            str(d["goal"]),
            None if d.get("ok") is None else bool(d["ok"]),
        )


def table(rows: Sequence[Row]) -> str:
    out = [
        "| # | figure | tether | baseline / peer | ratio | goal | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        out.append(f"| {r.ref} | {r.name} | {r.tether} | {r.baseline} | {ratio} | {r.goal} | {r.verdict} |")
    return "\n".join(out)


def dump(path: str | os.PathLike[str], rows: Sequence[Row], info: dict[str, Any]) -> None:
    """Write the ``--json OUT`` file that bench/run.py reads."""
    Path(path).write_text(json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1))


def report(
    rows: Sequence[Row],
    info: dict[str, Any],
    watch: CpuWatch,
    seconds: float,
    json_path: str | os.PathLike[str] | None,
    head: str = "",
) -> None:
    """The end of every section script: the table, a PASS/MISS summary with the CPU other
    processes took, and the ``--json`` file for bench/run.py."""
    misses = sum(r.ok is False for r in rows)
    passes = sum(r.ok is True for r in rows)
    summary = f"{passes} PASS, {misses} MISS, in {seconds:.0f} s."
    others = watch.others()
    if others is not None:
        info["CPU used by other processes meanwhile"] = f"{others:.0%}"
        summary += f" Other processes used {others:.0%} of the machine's CPU meanwhile"
        summary += " (busy machine: the figures are pessimistic)." if others > 0.10 else "."
    print(f"{head}{table(rows)}\n\n{summary}", flush=True)
    if json_path:
        dump(json_path, rows, info)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ns(seconds: float) -> str:
    return f"{seconds * 1e9:,.0f} ns"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable){mem}",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "SQLite": sqlite3.sqlite_version,
        "tether": (version_of("tether") or "?") + _commit(),
    }


def _commit() -> str:
    """`` at commit abc1234`` (``+ changes`` if src/ differs from it), or '' outside a git clone."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True, capture_output=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    changed = " + uncommitted changes in src/" if dirty.stdout.strip() else ""
    return f" at commit {head.stdout.strip()}{changed}"


class CpuWatch:
    """How busy the machine was with *other* processes (Linux ``/proc/stat``).

    "Mine" is this process's CPU time plus that of its waited-for children (``os.times()``), so
    ``bench/run.py`` can watch the section subprocesses it runs without counting them as others.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        t = os.times()
        mine = t.user + t.system + t.children_user + t.children_system
        return (sum(fields[:8]) - idle) / tick, time.monotonic(), mine

    def idle_share(self, seconds: float = 1.0) -> float | None:
        """Share of the machine's CPU that other processes left idle over ``seconds`` now."""
        a = self._sample()
        time.sleep(seconds)
        b = self._sample()
        if a is None or b is None:
            return None
        used = ((b[0] - a[0]) - (b[2] - a[2])) / ((b[1] - a[1]) * (os.cpu_count() or 1))
        return min(1.0, max(0.0, 1 - used))  # clamped: the tick counters are coarse

    def others(self) -> float | None:
        """CPU share (0..1 of all cores) used by other processes since the start."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, wall, mine = (e - s for e, s in zip(end, self.start))
        return min(1.0, max(0.0, (busy - mine) / (wall * (os.cpu_count() or 1))))


def wait_idle(seconds: float, threshold: float = 0.9) -> float | None:
    """Wait up to ``seconds`` for other processes to leave >= ``threshold`` of the CPU idle.

    Returns the last idle share measured (None where /proc/stat is missing)."""
    watch = CpuWatch()
    free = watch.idle_share(1.0)
    deadline = time.monotonic() + seconds
    while free is not None and free < threshold and time.monotonic() < deadline:
        say(f"waiting for an idle machine: other processes leave {free:.0%} of the CPU idle")
        time.sleep(3.0)
        free = watch.idle_share(2.0)
    return free


def section_args(description: str, quick: str) -> argparse.ArgumentParser:
    """The options of every section script: ``--quick`` (``quick`` says what it changes) and
    ``--json OUT``; the script adds its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON (for bench/run.py)")
    return ap


def add_wait_idle(ap: argparse.ArgumentParser, more: str = "") -> None:
    """``--wait-idle SECONDS`` (see wait_idle()); ``more``: what else the script waits for."""
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave >= 90%% of the CPU "
        f"idle{more} (a shared machine)",
    )


class Section:
    """The timing of a section script, from its header to its table: ``info`` (the machine, and
    the versions of ``dists``) printed under ``title``, then the CPU watch and the clock started;
    ``end()`` prints the table with the time taken and writes the ``--json`` file."""

    def __init__(self, title: str, dists: Sequence[str] = (), info: dict[str, Any] | None = None) -> None:
        self.info: dict[str, Any] = machine() if info is None else info
        for dist in dists:
            self.info[dist] = version_of(dist) or "not installed"
        print(f"{title}\n")
        print("\n".join(f"- **{k}**: {v}" for k, v in self.info.items()), flush=True)
        self.watch = CpuWatch()
        self.start = time.perf_counter()

    def end(self, rows: Sequence[Row], json_path: str | None, head: str = "") -> None:
        report(rows, self.info, self.watch, time.perf_counter() - self.start, json_path, head)

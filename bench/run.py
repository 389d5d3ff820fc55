"""Every benchmark of tether, side by side with its peers, as ONE markdown table.

    python bench/run.py                          # everything (< 10 min on 2 cores)
    python bench/run.py --quick                  # smoke run (< 2 min); figures are noisier
    python bench/run.py --only 1 --only 5        # some sections: 1 to 12 (7: 7a, 7b; 12: 12a-12d)
    python bench/run.py --wait-idle 300          # on a shared machine: wait for idle CPUs first
    python bench/run.py --write-docs             # then rewrite docs/performance.md

Each section is a script run as a subprocess (``python bench/X.py --json OUT [--quick]``) with this
interpreter, so imports, memory and global state never bleed from one section into another; this
script merges the rows they write, sorts them by figure number and prints the table (ratios are
tether / baseline or peer, measured in the same subprocess). Installs nothing: the peers come from
``pip install -e . -r bench/requirements.txt``; a missing one turns its rows into "not measured".
A section that fails or runs past its time limit gets a row saying so, and the others still run.
Exit status 0 even when goals are missed: this measures, it does not test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import CpuWatch, Row, add_wait_idle, machine, say, table, wait_idle
from perfdoc import write_doc

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Section:
    refs: tuple[str, ...]  # the figure numbers it produces (what --only selects)
    title: str
    args: tuple[str, ...]  # script and its arguments
    limit: float  # seconds (full run); a quick run gets half
    quick_args: tuple[str, ...] = ("--quick",)


SECTIONS = (
    Section(("1",), "progress hot path", ("bench_engine.py", "--only", "loops"), 150),
    Section(("2", "3", "7b"), "peers: DBOS and Huey", ("peers.py",), 150),
    Section(("4",), "store limits", ("bench_engine.py", "--only", "log", "--only", "progress"), 120),
    Section(("5",), "polling at scale", ("bench_engine.py", "--only", "poll"), 150),
    Section(("6",), "fan-out", ("bench_fanout.py",), 200),
    Section(("7a",), "memory", ("bench_memory.py",), 120),
    Section(("8",), "import time", ("bench_import.py",), 120),
    Section(
        ("9",),
        "start() latency",
        ("bench_engine.py", "--only", "attach", "--only", "first", "--only", "claim"),
        120,
    ),
    Section(("10",), "values: arrays and frames", ("bench_values.py",), 150),
    Section(("11a", "11b"), "front ends: `tether serve` with many watchers", ("serve_watchers.py",), 150),
    Section(("11c",), "front ends: `tether watch` CPU", ("watch_cpu.py",), 150),
    Section(
        ("12a", "12b", "12c", "12d"),
        "PostgreSQL: DBOS on the same server, a race, worker hosts",
        ("bench_postgres.py",),
        300,
    ),
)


def ref_key(ref: str) -> tuple[int, str, int]:
    m = re.match(r"(\d+)([a-z]*)('*)", ref)
    return (int(m.group(1)), m.group(2), len(m.group(3))) if m else (99, ref, 0)


def selected(only: list[str] | None) -> list[Section]:
    """The sections of the figures in ``only``: a ref (``7b``), or a number, for all of its refs
    (``7``: 7a and 7b; ``11``: 11a, 11b and 11c)."""
    if not only:
        return list(SECTIONS)
    want = set(only)
    return [s for s in SECTIONS if want & ({*s.refs} | {str(ref_key(r)[0]) for r in s.refs})]


CHOICES = sorted({x for s in SECTIONS for r in s.refs for x in (r, str(ref_key(r)[0]))}, key=ref_key)


@dataclass
class Outcome:
    section: Section
    rows: list[Row]
    info: dict[str, Any]
    seconds: float
    others: float | None
    error: str | None = None


def run_section(sec: Section, quick: bool, tmp: Path) -> Outcome:
    """Run one section script; its stderr (progress lines) is passed through, its stdout kept."""
    out = tmp / f"{sec.refs[0]}-{sec.args[0].removesuffix('.py')}-{len(list(tmp.iterdir()))}.json"
    cmd = [sys.executable, str(BENCH / sec.args[0]), *sec.args[1:], "--json", str(out)]
    if quick:
        cmd += list(sec.quick_args)
    limit = sec.limit / 2 if quick else sec.limit
    say(f"\n== [{', '.join(sec.refs)}] {sec.title}: {' '.join(['python', *cmd[1:]])}")
    watch = CpuWatch()
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    stdout = tmp / "stdout.txt"
    with open(stdout, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp
        )

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                tail.append(line.rstrip())
                print(f"  {line}", end="", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        error = None
        try:
            code = proc.wait(timeout=limit)
            if code != 0:
                error = f"exit status {code}: {tail[-1] if tail else 'no message'}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its helpers and Dask workers too
            proc.wait()
            error = f"stopped after its time limit of {limit:.0f} s"
        reader.join(5)
    seconds = time.monotonic() - t0
    others = watch.others()
    if error is None and not out.exists():
        error = "wrote no JSON"
    if error is not None:
        text = stdout.read_text()[-2000:]
        say(f"  section failed: {error}\n{text}")
        row = Row(
            sec.refs[0],
            f"section {', '.join(sec.refs)}: {sec.title}",
            "not measured",
            f"`{' '.join(sec.args)}` failed: {error}",
            None,
            "",
            None,
        )
        return Outcome(sec, [row], {}, seconds, others, error)
    data = json.loads(out.read_text())
    rows = [Row.from_dict(d) for d in data.get("rows", [])]
    return Outcome(sec, rows, dict(data.get("info", {})), seconds, others)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run (< 2 min)")
    ap.add_argument(
        "--only",
        action="append",
        choices=CHOICES,
        metavar="N",
        help=f"run only the section(s) of figure N (repeatable): {', '.join(CHOICES)}",
    )
    add_wait_idle(ap, ", and up to 30 s more before each section")
    ap.add_argument(
        "--write-docs", action="store_true", help="rewrite docs/performance.md with this run's table"
    )
    args = ap.parse_args(argv)
    sections = selected(args.only)
    info = machine()
    free = wait_idle(args.wait_idle)
    if free is not None:
        info["CPU idle just before the start"] = f"{free:.0%} (the rest was used by other processes)"
    head = "\n".join(f"- **{k}**: {v}" for k, v in info.items())
    started = time.monotonic()
    watch = CpuWatch()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-run-") as tmp_name:
        for sec in sections:
            if args.wait_idle > 0 and sec is not sections[0]:
                wait_idle(min(30.0, args.wait_idle))
            outcomes.append(run_section(sec, args.quick, Path(tmp_name)))
    elapsed = time.monotonic() - started
    others = watch.others()
    rows = sorted((r for o in outcomes for r in o.rows), key=lambda r: ref_key(r.ref))
    passes = sum(r.ok is True for r in rows)
    misses = [r.ref for r in rows if r.ok is False]
    failed = [o for o in outcomes if o.error]
    summary = f"{passes} PASS, {len(misses)} MISS" + (f" ({', '.join(misses)})" if misses else "")
    if failed:
        summary += f", {len(failed)} section(s) not measured"
    summary += f", in {elapsed / 60:.1f} min."
    if others is not None:
        summary += f" Other processes used {others:.0%} of the machine's CPU meanwhile"
        summary += " (busy machine: the figures are pessimistic)." if others > 0.10 else "."
    per = "; ".join(
        f"{', '.join(o.section.refs)} {o.seconds:.0f} s"
        + ("" if o.others is None else f" (others {o.others:.0%})")
        for o in outcomes
    )
    mode = "quick" if args.quick else "full"
    print(
        f"## tether benchmarks ({mode})\n\n{head}\n\n{table(rows)}\n\n{summary}\n\nPer section: {per}.",
        flush=True,
    )
    if args.write_docs:
        if args.quick or args.only:
            say("note: --write-docs with --quick/--only writes a partial or noisy table")
        command = (
            "python bench/run.py"
            + (" --quick" if args.quick else "")
            + "".join(f" --only {s}" for s in args.only or ())
            + (f" --wait-idle {args.wait_idle:g}" if args.wait_idle else "")
        )
        write_doc(
            command=command,
            machine=info,
            rows=rows,
            summary=summary,
            per_section=per,
            sections=[(o.section.refs, o.section.title, o.info, o.error) for o in outcomes],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

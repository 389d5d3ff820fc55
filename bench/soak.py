"""Kill soak: SIGKILL tether processes >= 500 times at random and chosen moments, recover from
another process each time, check every invariant, and print the counts.

    python bench/soak.py                      # 500 kills (the goal: < 15 minutes, 0 violations)
    python bench/soak.py --kills 50           # a quick one
    python bench/soak.py --seed 123 --keep    # replay the plan choices; keep the databases

The harness is ``tests/reliability/harness.py`` (the test suite runs a 30-kill version of it);
see its docstring and docs/reliability.md for what is killed where and what is checked. Everything
happens in a temporary directory (removed at the end unless --keep or a violation). Exit status 1
if any invariant was violated.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import tether  # noqa: E402
from reliability.harness import KillHarness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=500, help="SIGKILLs to deliver (default 500)")
    ap.add_argument("--parallel", type=int, default=3, help="keys (child processes) per round")
    ap.add_argument("--per-db", type=int, default=100, help="kills per database file")
    ap.add_argument("--seed", type=int, default=None, help="seed of the plan choices")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tether-soak-"))
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    print(f"tether {tether.__version__}, Python {platform.python_version()}, SQLite "
          f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"command: python bench/soak.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    harness = KillHarness(work, kills=args.kills, seed=args.seed, parallel=args.parallel,
                          per_db=args.per_db, say=say)
    t0 = time.monotonic()
    report = harness.run()
    wall = time.monotonic() - t0
    print("\n".join(report.lines()))
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for v in report.violations[:50]:
        print(f"VIOLATION {v}")
    verdict = "PASS" if not report.violations and wall < 15 * 60 else "FAIL"
    print(f"{verdict}: {report.kills} kills, {len(report.violations)} violations, "
          f"{wall / 60:.1f} min (goal: >= {args.kills} kills, 0 violations, < 15 min)")
    if args.keep or report.violations:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

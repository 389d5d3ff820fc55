"""Kill soak: SIGKILL tether processes >= 500 times at random and chosen moments, and inject
>= 500 of the other faults a kernel meets (SIGINTs during start(), forks in bodies, a user's
sqlite3 connection held open, a process in another pid namespace, a disk that fills and frees);
recover from another process each round, check every invariant, and print the counts.

    python bench/soak.py                      # 500 kills + 500 other faults (< 15 min, 0 violations)
    python bench/soak.py --faults 0           # the SIGKILL soak alone
    python bench/soak.py --kills 50 --faults 50         # a quick one
    python bench/soak.py --mix sigint=1,fork=1          # only some kinds, in these shares
    python bench/soak.py --seed 123 --keep    # replay the plan choices; keep the databases

pidns and disk need root (unshare --pid, mount -t tmpfs): without it they are skipped, said so
in the output, and their share goes to the other kinds. The harness is
``tests/reliability/harness.py`` (the test suite runs short versions of it: test_kills.py,
test_faults.py); see its docstring and docs/reliability.md for what is injected where and what is
checked. Everything happens in a temporary directory (removed at the end unless --keep or a
violation). Exit status 1 if any invariant was violated.
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

import _paths  # noqa: F401 - puts tests/ on sys.path for reliability.harness

import tether
from reliability.harness import FAULT_KINDS, KillHarness, capabilities

MIX = {"sigint": 30, "fork": 20, "sqlite": 20, "pidns": 15, "disk": 15}  # default shares, %


def fault_targets(total: int, mix: dict[str, float]) -> tuple[dict[str, int], dict[str, str]]:
    """``total`` faults split by ``mix``; kinds this machine cannot inject give their share to
    the others. Returns (targets, skipped kind -> why)."""
    missing = capabilities() if total and any(k in ("pidns", "disk") for k in mix) else {}
    skipped = {k: why for k, why in missing.items() if mix.get(k)}
    shares = {k: w for k, w in mix.items() if w > 0 and k not in skipped}
    if not total or not shares:
        return {}, skipped
    weight = sum(shares.values())
    targets = {k: int(total * w / weight) for k, w in shares.items()}
    for k in list(shares)[: total - sum(targets.values())]:  # the rounding remainder
        targets[k] += 1
    return targets, skipped


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown fault kind {kind.strip()!r}; known: {', '.join(FAULT_KINDS)}"
            )
        mix[kind.strip()] = float(weight or 1)
    return mix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=500, help="SIGKILLs to deliver (default 500)")
    ap.add_argument(
        "--faults",
        type=int,
        default=500,
        help="other faults to inject besides the SIGKILLs (default 500; 0: none)",
    )
    ap.add_argument(
        "--mix",
        type=parse_mix,
        default=MIX,
        help="shares of the other faults, e.g. sigint=30,fork=20,sqlite=20,pidns=15,"
        "disk=15 (the default); a kind left out is not injected",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds within which, once a fault is over, a live process's run must end (default 10)",
    )
    ap.add_argument("--parallel", type=int, default=3, help="keys (child processes) per round")
    ap.add_argument("--per-db", type=int, default=100, help="kills per database file")
    ap.add_argument("--seed", type=int, default=None, help="seed of the plan choices")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tether-soak-"))
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    print(
        f"tether {tether.__version__}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"command: python bench/soak.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    targets, skipped = fault_targets(args.faults, args.mix)
    for kind, why in skipped.items():
        print(f"SKIPPED {kind} faults: {why}")
    if targets:
        print(f"fault targets: {', '.join(f'{k} {n}' for k, n in targets.items())}")
    harness = KillHarness(
        work,
        kills=args.kills,
        seed=args.seed,
        parallel=args.parallel,
        per_db=args.per_db,
        say=say,
        faults=targets,
        settle=args.settle,
    )
    harness.report.faults_skipped.update(skipped)
    t0 = time.monotonic()
    report = harness.run()
    wall = time.monotonic() - t0
    print("\n".join(report.lines()))
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for v in report.violations[:50]:
        print(f"VIOLATION {v[:3000]}")
    faults = sum(report.faults.values())
    enough = report.kills >= args.kills and all(report.faults[k] >= n for k, n in targets.items())
    # the time goal is about the machine as much as the code: missing it alone is SLOW, not FAIL
    verdict = "FAIL" if report.violations or not enough else "PASS" if wall < 15 * 60 else "SLOW"
    print(
        f"{verdict}: {report.kills} kills and {faults} other faults, {len(report.violations)} "
        f"violations, {wall / 60:.1f} min (goal: >= {args.kills} kills and >= "
        f"{sum(targets.values())} other faults, 0 violations; < 15 min on an idle 2-core machine)"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    if args.keep or report.violations:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

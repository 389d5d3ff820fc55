"""Import time of tether against its peers (section 8 of docs/performance.md).

    python bench/bench_import.py                  # 9 rounds (~20 s)
    python bench/bench_import.py --quick          # 7 rounds
    python bench/bench_import.py --json OUT.json  # also write the rows for bench/run.py

Each round starts fresh interpreters (``sys.executable``) one after the other, in a rotating
order: ``python -c pass`` and ``python -c "import X"`` for X in tether, tqdm.notebook, tqdm, dbos
(and rich.progress). The figure of X is the median wall time of its imports minus the median of
``pass`` (the interpreter's own start). Bytecode caches are warm (one untimed import of each first).
The ``-X importtime`` breakdown of ``import tether`` (the modules that cost the most, self time) is
printed and kept in the JSON info. Exit status 0 even when a goal is missed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchlib import Row, Section, machine, say, section_args, version_of

pc = time.perf_counter
MODULES = {
    "tether": "tether",
    "tqdm.notebook": "tqdm",
    "tqdm": "tqdm",
    "dbos": "dbos",
    "rich.progress": "rich",
}


def wall(code: str) -> float:
    t = pc()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    took = pc() - t
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return took


def importtime(module: str, top: int = 8) -> tuple[float, list[tuple[str, float]]]:
    """(cumulative ms of ``module``, the ``top`` modules by self time in ms) from -X importtime."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        rows.append((name.strip(), int(self_us) / 1000, int(cum_us) / 1000, name))
    cum = next((c for n, _s, c, raw in rows if n == module and not raw.startswith("  ")), 0.0)
    by_self = sorted(rows, key=lambda r: -r[1])[:top]
    return cum, [(n, s) for n, s, _c, _r in by_self]


def main(argv: list[str] | None = None) -> int:
    args = section_args(__doc__.splitlines()[0], "7 rounds instead of 9").parse_args(argv)
    rounds = 7 if args.quick else 9
    info: dict[str, Any] = machine()
    missing: dict[str, str] = {}
    for mod, dist in MODULES.items():
        info[dist] = version_of(dist) or "not installed"
        try:
            wall(f"import {mod}")  # warm the bytecode cache; find what is missing
        except RuntimeError as exc:
            missing[mod] = str(exc)
    section = Section(f"## tether import-time benchmark ({rounds} rounds)", info=info)
    codes = {"pass": "pass", **{m: f"import {m}" for m in MODULES if m not in missing}}
    times: dict[str, list[float]] = {k: [] for k in codes}
    names = list(codes)
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate: drift hits all alike
        for name in order:
            times[name].append(wall(codes[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    net = {k: med[k] - med["pass"] for k in med if k != "pass"}
    say("  medians (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()))
    cum, heavy = importtime("tether")
    info["`python -X importtime -c 'import tether'`, top self times"] = ", ".join(
        f"{n} {s:.1f} ms" for n, s in heavy
    )
    info["`-X importtime` cumulative of tether"] = f"{cum:.1f} ms"

    def ms(x: float) -> str:
        return f"{x * 1e3:.0f} ms"

    t = net["tether"]
    rows = []
    each = f"median of {rounds}, minus `python -c pass` {ms(med['pass'])}"
    if "tqdm.notebook" in net:
        r = t / net["tqdm.notebook"]
        plain = f"; plain `import tqdm` {ms(net['tqdm'])}" if "tqdm" in net else ""
        rows.append(
            Row(
                "8a",
                f"`import tether` in a fresh process ({each})",
                ms(t),
                f"`import tqdm.notebook` {ms(net['tqdm.notebook'])}{plain}",
                r,
                "ratio <= 1",
                r <= 1,
            )
        )
    else:
        rows.append(
            Row(
                "8a",
                "`import tether` vs `import tqdm.notebook`",
                ms(t),
                f"not measured: {missing.get('tqdm.notebook')}",
                None,
                "ratio <= 1",
                None,
            )
        )
    if "dbos" in net:
        rows.append(
            Row(
                "8b",
                f"`import tether` vs `import dbos` ({each})",
                ms(t),
                f"`import dbos` {ms(net['dbos'])}",
                t / net["dbos"],
                "(informative)",
                None,
            )
        )
    else:
        rows.append(
            Row(
                "8b",
                "`import tether` vs `import dbos`",
                ms(t),
                f"not measured: dbos is not installed in {sys.executable} "
                "(pip install -r bench/requirements.txt)",
                None,
                "(informative)",
                None,
            )
        )
    if "rich.progress" in net:
        rows.append(
            Row(
                "8c",
                f"`import tether` vs `import rich.progress` ({each})",
                ms(t),
                f"`import rich.progress` {ms(net['rich.progress'])}",
                t / net["rich.progress"],
                "(informative)",
                None,
            )
        )
    section.end(rows, args.json, head="\n")
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.exit(main())

"""Panel benchmarks: the kernel-side cost of an open panel, comm messages per second, and the time
from a state change to the DOM in stream and poll modes.

    python bench/bench_panel.py               # full run (~1.5 min; the browser part needs chromium)
    python bench/bench_panel.py --quick       # smaller sizes (~45 s)
    python bench/bench_panel.py --no-browser  # kernel figures only

1. **Kernel cost**: a fast run (``ctx.advance()`` in a tight loop, ~2-3 s) executes in a real
   kernel (jupyter_client) with and without its panel displayed; the kernel measures its own
   process CPU time and wall time over the run. Reported: CPU % of the kernel process in both
   cases, the run's wall time, and the panel's comm messages per second (counted on iopub).
2. **State change -> DOM**: a run waits for files; the benchmark writes file i (time T) and the
   pipeline switches to phase ``step<i>`` at once; a MutationObserver in the page records when the
   panel's ``data-phase`` shows it (time D). Latency = D - T, on the same host clock, in
   JupyterLab 4 (headless Chromium). Stream: the kernel runs it; poll: a separate process does.

Prints a markdown table. Exit status 0 even when a goal is missed: this measures, it does not test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths

KERNEL_RUN = """
import time, tether
from IPython.display import display
from helpers import panel_pipelines as pp
tether.configure(db={db!r})
c0, w0 = time.process_time(), time.perf_counter()
run = pp.spin.start(calls={calls}, tag={tag!r})
d = 0.0
if {show}:
    display(run)
    d = time.perf_counter() - w0
run.wait(300)
c1, w1 = time.process_time(), time.perf_counter()
rec = run.snapshot()
print("BENCH", json.dumps({{"cpu": c1 - c0, "wall": w1 - w0, "run": rec.ended_at - rec.started_at,
                            "display": d}}))
"""


def kernel_cost(calls: int, reps: int, tmp: Path) -> dict[str, Any]:
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, PYTHONPATH=_paths.child_pythonpath())
    env.pop("TETHER_DB", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    results: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    try:
        # imports (anywidget, ipywidgets) happen once per kernel: keep them out of the figures
        kc.execute_interactive("import json, tether.widget", timeout=60)
        for rep in range(reps):
            for variant in ("without", "with"):  # interleaved
                out: list[str] = []
                msgs = 0
                comm: set[str] = set()
                code = KERNEL_RUN.format(
                    db=str(tmp / "kernel.db"), calls=calls, tag=f"{variant}-{rep}", show=variant == "with"
                )

                def hook(msg: dict[str, Any], out: list[str] = out, comm: set[str] = comm) -> None:
                    nonlocal msgs
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        out.append(content["text"])
                    elif kind == "comm_open" and "snapshot" in content["data"].get("state", {}):
                        comm.add(content["comm_id"])
                    elif kind == "comm_msg" and content["comm_id"] in comm:
                        msgs += 1
                    elif kind == "error":
                        raise RuntimeError("\n".join(content["traceback"]))

                kc.execute_interactive(code, timeout=300, output_hook=hook)
                fig = json.loads("".join(out).split("BENCH", 1)[1])
                fig["msgs"] = msgs
                results[variant].append(fig)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    def pct(variant: str) -> float:
        return statistics.median(100 * r["cpu"] / r["wall"] for r in results[variant])

    with_msgs = statistics.median(r["msgs"] / r["run"] for r in results["with"])
    return {
        "calls": calls,
        "reps": reps,
        "cpu_without": pct("without"),
        "cpu_with": pct("with"),
        "run_without": med("without", "run"),
        "run_with": med("with", "run"),
        "display": med("with", "display"),
        "msgs_per_s": with_msgs,
    }


# -- browser -------------------------------------------------------------------------------------

RECORD_PHASES = """() => {
  window.__phases = [];
  let last = null;
  new MutationObserver(() => {
    const p = document.querySelector('[data-testid=tether-panel]');
    const ph = p && p.dataset.phase;
    if (ph && ph !== last) { last = ph; window.__phases.push({phase: ph, t: Date.now()}); }
  }).observe(document.body, {subtree: true, attributes: true, childList: true});
}"""

CHILD_RELAY = """
import sys, tether
from helpers import panel_pipelines as pp
tether.configure(db=sys.argv[1])
run = pp.relay.start(folder=sys.argv[2], count=int(sys.argv[3]), tag="poll")
print(run.id, flush=True)
run.wait(300)
"""


def dom_latency(count: int, tmp: Path) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    from ui._jupyter import CHROMIUM, CHROMIUM_ARGS, Front, JupyterServer, make_notebook

    root = tmp / "nb"
    root.mkdir()
    env = {"PYTHONPATH": _paths.child_pythonpath()}
    srv = JupyterServer("lab", root, tmp / "lab.log", env).start()
    out: dict[str, list[float]] = {}
    child = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for mode in ("stream", "poll"):
                folder = tmp / f"gates-{mode}"
                folder.mkdir()
                db = tmp / f"{mode}.db"
                if mode == "stream":
                    show = f"run = pp.relay.start(folder={str(folder)!r}, count={count}, tag='stream')\nrun"
                else:
                    child = subprocess.Popen(
                        [sys.executable, "-c", CHILD_RELAY, str(db), str(folder), str(count)],
                        env=dict(os.environ, **env),
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    assert child.stdout is not None
                    run_id = child.stdout.readline().strip()
                    show = f"run = tether.get_run({run_id!r})\nrun"
                name = f"{mode}.ipynb"
                make_notebook(
                    root / name,
                    [
                        f"import tether\nfrom helpers import panel_pipelines as pp\n"
                        f"tether.configure(db={str(db)!r})",
                        show,
                    ],
                )
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(srv.page_url(name).replace("?", "?reset&", 1))
                fr = Front(page, name)
                fr.wait_ready()
                page.evaluate(RECORD_PHASES)
                fr.run_all()
                page.wait_for_selector(f"[data-testid=tether-panel][data-mode={mode}]", timeout=30_000)
                lat = []
                for i in range(count):
                    # a random pause: samples fall anywhere in the poller's 1 s cycle
                    page.wait_for_timeout(random.uniform(200, 1200))
                    t = time.time()
                    (folder / str(i)).write_text("go")
                    page.wait_for_function(
                        "(p) => window.__phases.some(x => x.phase === p)", arg=f"step{i}", timeout=15_000
                    )
                    rec = page.evaluate("(p) => window.__phases.find(x => x.phase === p).t", f"step{i}")
                    lat.append(rec / 1000 - t)
                out[mode] = lat
                page.close()
                srv.shutdown_kernels()
            browser.close()
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(10)
        srv.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--no-browser", action="store_true", help="skip the DOM latency part")
    args = ap.parse_args(argv)
    calls, reps, count = (4_000_000, 2, 4) if args.quick else (15_000_000, 5, 10)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-panel-") as tmpdir:
        tmp = Path(tmpdir)
        k = kernel_cost(calls, reps, tmp)
        extra = 100 * (k["run_with"] / k["run_without"] - 1)
        rows += [
            (
                f"kernel process CPU % during a {calls:,}-advance run, no panel",
                f"{k['cpu_without']:.0f}% (run {k['run_without']:.2f} s)",
                "(baseline)",
            ),
            (
                "kernel process CPU % during the same run, panel displayed",
                f"{k['cpu_with']:.0f}% (run {k['run_with']:.2f} s)",
                f"run time {extra:+.1f}% (goal <= +5%)",
            ),
            (
                "displaying the panel (create model, open comm, first state)",
                f"{k['display'] * 1000:.0f} ms",
                "once per run per kernel",
            ),
            ("panel comm messages per second of run", f"{k['msgs_per_s']:.1f}", "goal <= 10"),
        ]
        if not args.no_browser and Path("/usr/bin/chromium").exists():
            lat = dom_latency(count, tmp)
            for mode, goal in (("stream", "goal p50 <= 0.4 s"), ("poll", "goal p50 <= 1.5 s")):
                xs = sorted(lat[mode])
                rows.append(
                    (
                        f"state change -> DOM, {mode} mode (JupyterLab, n={len(xs)})",
                        f"p50 {statistics.median(xs) * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms",
                        goal,
                    )
                )
    print("| figure | value | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sizes (issue 11, item 8): what a run writes stays proportional to what it does.

- 8,000 dynamic phases: each ``ctx.phase()`` writes the run at once, and the ``phases`` list it
  writes is capped (``PHASES_MAX``), so the cost per phase does not grow with the phases before;
- one 50 MB log line is stored clipped (``LOG_LINE_MAX`` characters and a marker), in its event
  and in the ``message`` column that every progress flush rewrites;
- a params conflict over 100,000 ``**kwargs`` names a few differences and counts the rest.

The bytes a child process writes are its ``wchar`` in ``/proc/self/io`` (every ``write()`` of
every thread: the WAL, checkpoints into the DB), read before and after its run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers.util import raw
from tether.context import LOG_LINE_MAX, PHASES_MAX

SIZES_CHILD = r"""
import json, sys, time
import tether

spec = json.loads(sys.argv[1])


def written():
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))


@tether.pipeline
def phases(ctx, n):
    for i in range(n):
        ctx.phase(f"step {i}")
        ctx.advance()
    return n


@tether.pipeline
def long_line(ctx, chars, seconds):
    ctx.log("%s", "y" * chars)
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # progress the flusher writes at every tick
        ctx.advance()
        time.sleep(0.001)
    return chars


tether.runs()  # the database exists before the measure
pipe = {"phases": phases, "long_line": long_line}[spec.pop("pipeline")]
w0, t0 = written(), time.perf_counter()
run = pipe.start(**spec)
run.wait(timeout=300)
print(json.dumps({"id": run.id, "status": str(run.status), "elapsed": time.perf_counter() - t0,
                  "written": written() - w0}), flush=True)
"""


def _child(child_env: dict[str, str], tmp_path: Path, **spec: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SIZES_CHILD, json.dumps(spec)],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded", out
    return out


def test_8000_phases_cost_what_8000_phases_do(db: Path, child_env: dict[str, str], tmp_path: Path) -> None:
    out = _child(child_env, tmp_path, pipeline="phases", n=8000)
    mib = out["written"] / 2**20
    # each phase is one small transaction (a few pages of WAL); an uncapped list made phase i
    # rewrite i names twice: 18.8 s and 2.5 GB for 8,000
    assert mib < 400, f"8,000 phases wrote {mib:.0f} MiB"
    assert out["elapsed"] < 15, f"8,000 phases took {out['elapsed']:.1f} s"
    ((phase, listed, done),) = raw(db, "SELECT phase, phases, phases_done FROM runs WHERE id = ?", out["id"])
    listed, done = json.loads(listed), json.loads(done)
    assert phase == "step 7999"  # the current phase is named even beyond the list
    assert listed == [f"step {i}" for i in range(PHASES_MAX)]
    # every listed phase is done; the last one joins them at the end of the run
    assert done == [*listed, "step 7999"]
    ((last,),) = raw(
        db, "SELECT data FROM events WHERE run_id = ? AND kind = 'phase' ORDER BY seq DESC LIMIT 1", out["id"]
    )
    assert json.loads(last) == {"name": "step 7999", "total": None, "unlisted": 8000 - PHASES_MAX}
    ((phase_events,),) = raw(db, "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'phase'", out["id"])
    assert phase_events == 8000  # every phase change is still an event


def test_a_50_mb_log_line_is_stored_clipped(db: Path, child_env: dict[str, str], tmp_path: Path) -> None:
    chars = 50_000_000
    out = _child(child_env, tmp_path, pipeline="long_line", chars=chars, seconds=1.5)
    mib = out["written"] / 2**20
    assert mib < 16, f"one long line and 1.5 s of progress wrote {mib:.0f} MiB"
    marker = f"… [{chars - LOG_LINE_MAX:,} characters cut]"
    ((data,),) = raw(db, "SELECT data FROM events WHERE run_id = ? AND kind = 'log'", out["id"])
    message = json.loads(data)["message"]
    assert message == "y" * LOG_LINE_MAX + marker
    ((column,),) = raw(db, "SELECT message FROM runs WHERE id = ?", out["id"])
    assert column == message


def test_a_long_line_through_logging_and_ctx_log_reads_back_clipped(db: Path) -> None:
    import logging

    log = logging.getLogger("tether-sizes")
    log.setLevel(logging.INFO)

    @tether.pipeline
    def chatty(ctx: tether.Context) -> None:
        ctx.log("a" * (LOG_LINE_MAX + 5))
        log.info("%s", "b" * (LOG_LINE_MAX + 7))
        ctx.log("c" * LOG_LINE_MAX)  # at the limit: kept whole

    run = chatty.start()
    run.wait(timeout=30)
    assert run.logs() == [
        "a" * LOG_LINE_MAX + "… [5 characters cut]",
        "b" * LOG_LINE_MAX + "… [7 characters cut]",
        "c" * LOG_LINE_MAX,
    ]


def test_a_kwargs_params_conflict_names_a_few_differences_and_counts_the_rest(db: Path) -> None:
    @tether.pipeline
    def loose(ctx: tether.Context, **options: Any) -> int:
        return len(options)

    n = 100_000
    first = {f"option_{i:06d}_" + "n" * 50: i for i in range(n)}
    run = loose.start(key="loose", **first)
    assert run.result(timeout=60) == n
    second = {name: value + 1 for name, value in first.items()}
    second["z" * 1_000_000] = "v" * 1_000_000  # a huge name and value: clipped too
    with pytest.raises(tether.KeyConflict) as info:
        loose.start(key="loose", **second)
    text = str(info.value)
    assert len(text) < 2_000, f"{len(text):,} characters"
    assert f"and {n + 1 - 5:,} more" in text
    assert "option_000000_" in text  # the first differences, by name, are shown

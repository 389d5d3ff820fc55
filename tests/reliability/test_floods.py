"""Floods (issue 11, item 7): a body that logs flat out is slowed to what the store can write.

Each test runs the flood in a real child process (``python -c FLOOD_CHILD spec``). The body logs
``L1, L2, ...`` (through ``ctx.log`` or through ``logging``) and every ``every`` lines records how
many it has emitted in a counter file with ``os.pwrite`` (8 bytes at offset 0), so the parent
knows a lower bound of what the body emitted even after a SIGKILL.

- a SIGKILL mid-flood loses at most ``LOST_LINES_MAX`` lines, and the lines stored are ``L1..Lk``
  with no gap;
- the peak memory of a flooding child stays far below what an unbounded buffer reaches;
- a flood ends soon after its body returns (nothing left to drain but one buffer);
- while the store cannot write (a file-size limit the child sets, then lifts), lines beyond the
  buffer are dropped and counted: one ``dropped`` event says how many, and stored + dropped lines
  add up to the emitted ones, in order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers.util import raw, wait_until
from tether import context
from tether.context import LOG_BUFFER_EVENTS, LOG_WAIT_S

LOST_LINES_MAX = 2 * LOG_BUFFER_EVENTS  # the batch being written + the buffer behind it (docs)

FLOOD_CHILD = r"""
import json, logging, os, resource, signal, struct, sys, time
import tether

spec = json.loads(sys.argv[1])
fd = os.open(spec["counter"], os.O_RDWR | os.O_CREAT, 0o600)
pad = "x" * spec.get("width", 0)
every = spec.get("every", 100)
log = logging.getLogger("flood")
log.setLevel(logging.INFO)
log.propagate = False  # captured into the run by tether, printed nowhere


def peak_rss_kib():
    # VmHWM: the peak of this process image (ru_maxrss would include the parent's before exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def mark(i):
    os.pwrite(fd, struct.pack("<q", i), 0)


@tether.pipeline
def flood(ctx, seconds, via):
    end = time.monotonic() + seconds
    outage = spec.get("outage")  # [after_s, for_s]: the store cannot write meanwhile
    if outage:
        db = os.environ["TETHER_DB"]
        cut_at, lift_at = time.monotonic() + outage[0], time.monotonic() + sum(outage)
        cut = False
    say = ctx.log if via == "ctx" else log.info
    i = 0
    while True:
        i += 1
        say("L%d%s", i, pad)
        if i % every == 0:
            mark(i)
            now = time.monotonic()
            if outage:
                if not cut and cut_at <= now < lift_at:
                    size = max(os.path.getsize(db + ext) for ext in ("", "-wal"))
                    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
                    cut = True
                elif cut and now >= lift_at:
                    resource.setrlimit(resource.RLIMIT_FSIZE,
                                       (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                    cut = False
            if now > end:
                break
    mark(i)
    return {"emitted": i, "returned": time.time()}


signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE a write fails (EFBIG) instead
tether.runs()  # the store and the runner's imports are ready before the flood: a fair baseline
before = peak_rss_kib()
run = flood.start(seconds=spec["seconds"], via=spec.get("via", "ctx"))
run.wait(timeout=120)
out = {"id": run.id, "status": str(run.status), "ended": time.time(),
       "rss_before_kib": before, "rss_peak_kib": peak_rss_kib()}
if out["status"] == "succeeded":
    out.update(run.result())
print(json.dumps(out), flush=True)
"""


def _flood(child_env: dict[str, str], tmp_path: Path, **spec: Any) -> subprocess.Popen[str]:
    spec.setdefault("counter", str(tmp_path / "emitted"))
    return subprocess.Popen(
        [sys.executable, "-c", FLOOD_CHILD, json.dumps(spec)],
        env=child_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _emitted(counter: Path) -> int:
    try:
        data = counter.read_bytes()
    except FileNotFoundError:
        return 0
    return struct.unpack("<q", data[:8])[0] if len(data) >= 8 else 0


def _stored_logs(db: Path) -> list[dict[str, Any]]:
    return [
        json.loads(d) for (d,) in raw(db, "SELECT data FROM events WHERE kind = 'log' ORDER BY run_id, seq")
    ]


def _line_numbers(logs: list[dict[str, Any]]) -> list[int]:
    return [
        int(re.match(r"L(\d+)", e["message"]).group(1))  # type: ignore[union-attr]
        for e in logs
        if "dropped" not in e
    ]


def _assert_contiguous(numbers: list[int]) -> None:
    gaps = [(a, b) for a, b in pairwise(numbers) if b != a + 1]
    assert numbers[:1] == [1] and not gaps, f"first {numbers[:1]}, gaps {gaps[:5]}"


@pytest.mark.parametrize("via", ["ctx", "logging"])
def test_a_sigkill_mid_flood_loses_at_most_the_documented_lines(
    db: Path, child_env: dict[str, str], tmp_path: Path, via: str
) -> None:
    counter = tmp_path / "emitted"
    proc = _flood(child_env, tmp_path, seconds=60, via=via, counter=str(counter), every=100)
    try:
        # flooding for a while: an unbounded buffer has fallen far behind by now
        wait_until(
            lambda: _emitted(counter) >= 150_000 or proc.poll() is not None,
            timeout=60,
            what="the child to emit 150,000 lines",
        )
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    emitted = _emitted(counter)  # the body logged at least this many lines
    numbers = _line_numbers(_stored_logs(db))
    _assert_contiguous(numbers)
    lost = emitted - numbers[-1]
    assert lost <= LOST_LINES_MAX, f"{lost:,} lines lost of {emitted:,} (bound {LOST_LINES_MAX:,})"


def test_a_flooding_child_keeps_its_memory_bounded(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    # 1,000-character lines: an unbounded buffer holds ~2 KiB per line not yet written
    out = _finish(_flood(child_env, tmp_path, seconds=3, width=1000))
    assert out["status"] == "succeeded"
    grew_mib = (out["rss_peak_kib"] - out["rss_before_kib"]) / 1024
    assert grew_mib < 32, f"peak RSS grew by {grew_mib:.0f} MiB while flooding"
    _assert_contiguous(numbers := _line_numbers(_stored_logs(db)))
    assert numbers[-1] == out["emitted"]  # back-pressure, not loss: every line stored


def test_a_2_s_flood_ends_soon_after_its_body_returns(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    # long lines: the body makes them faster than the store writes them
    out = _finish(_flood(child_env, tmp_path, seconds=2, width=1000))
    assert out["status"] == "succeeded"
    late = out["ended"] - out["returned"]  # run.wait() returned: the end (and every line) stored
    assert late < 1.0, f"the run ended {late:.2f} s after its body returned"
    numbers = _line_numbers(_stored_logs(db))
    assert numbers == list(range(1, out["emitted"] + 1))


def test_lines_the_store_cannot_take_are_dropped_and_counted_in_one_event(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    # after 0.5 s of flooding, no file may grow for 1.5 s (RLIMIT_FSIZE): every write fails
    out = _finish(_flood(child_env, tmp_path, seconds=3, outage=[0.5, 1.5], width=50))
    assert out["status"] == "succeeded"
    logs = _stored_logs(db)
    drops = [e for e in logs if "dropped" in e]
    assert len(drops) >= 1 and all(e["level"] == "warning" for e in drops)
    assert all(f"{e['dropped']:,} log lines dropped" in e["message"] for e in drops)
    dropped = sum(e["dropped"] for e in drops)
    # in order: lines stored before the outage, then the drop note, then the lines after it
    numbers, expected, n = [], [], 0
    for e in logs:
        if "dropped" in e:
            n += e["dropped"]
        else:
            n += 1
            expected.append(n)
            numbers.append(int(re.match(r"L(\d+)", e["message"]).group(1)))  # type: ignore[union-attr]
    assert numbers == expected
    assert len(numbers) + dropped == out["emitted"]
    grew_mib = (out["rss_peak_kib"] - out["rss_before_kib"]) / 1024
    assert grew_mib < 32, f"peak RSS grew by {grew_mib:.0f} MiB during the outage"
    assert 0 < dropped < out["emitted"]


# -- a store that takes nothing (another connection holds the write lock) --------------------------


@contextmanager
def _write_lock_held(db: Path) -> Iterator[None]:
    """Another connection holds the database's write lock: every tether write waits."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _blocking_flood(lines: int) -> tuple[tether.Pipeline, threading.Event, threading.Event, list[int]]:
    """A pipeline that floods once ``go`` is set; ``returned`` is set when its body returns."""
    go, returned = threading.Event(), threading.Event()
    emitted = [0]

    @tether.pipeline
    def blocked(ctx: tether.Context) -> int:
        try:
            go.wait(30)
            for i in range(1, lines + 1):
                ctx.log("L%d", i)
                emitted[0] = i
            return lines
        finally:
            returned.set()

    return blocked, go, returned, emitted


def test_a_cancel_wakes_a_body_waiting_for_room_in_the_log_buffer(db: Path) -> None:
    blocked, go, returned, emitted = _blocking_flood(10_000_000)
    run = blocked.start()
    ctx = wait_until(lambda: tether.workspace.default().runner().live(run.id), timeout=10)
    with _write_lock_held(db):  # the run is claimed: now nothing more can be written
        go.set()

        # the flusher took one batch and waits for the lock; the body filled the buffer behind it
        # and waits with the next line
        def waiting() -> int:
            if len(ctx._events) < LOG_BUFFER_EVENTS:
                return 0
            last = int(json.loads(ctx._events[-1][3])["message"][1:])
            return last if emitted[0] == last else 0

        waiting_at = wait_until(waiting, timeout=20, what="the body to wait for room")
        assert not returned.is_set()
        asked = time.monotonic()
        # run.cancel() sets the flag, then writes the request (which waits for the lock)
        canceller = threading.Thread(target=run.cancel, daemon=True)
        canceller.start()
        assert returned.wait(timeout=LOG_WAIT_S / 2), "the body still waits for room"
        assert time.monotonic() - asked < LOG_WAIT_S / 2
        assert emitted[0] == waiting_at  # the line it waited with was dropped; ctx.log raised
    canceller.join(timeout=30)
    run.wait(timeout=30)
    assert run.status == tether.Status.CANCELLED
    logs = _stored_logs(db)
    numbers = _line_numbers(logs)
    _assert_contiguous(numbers)
    assert numbers[-1] == waiting_at
    assert [e["dropped"] for e in logs if "dropped" in e] == [1]


def test_a_body_waits_for_a_stuck_store_at_most_log_wait_s_then_drops_and_counts(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "LOG_WAIT_S", 0.3)
    lines = 50_000
    blocked, go, returned, emitted = _blocking_flood(lines)
    run = blocked.start()
    wait_until(lambda: tether.workspace.default().runner().live(run.id), timeout=10)
    with _write_lock_held(db):
        go.set()
        # one wait of LOG_WAIT_S, then every line that finds the buffer full is dropped at once
        assert returned.wait(timeout=10), f"the body is stuck after {emitted[0]:,} lines"
    assert run.result(timeout=30) == lines
    logs = _stored_logs(db)
    drops = [e["dropped"] for e in logs if "dropped" in e]
    numbers = _line_numbers(logs)
    _assert_contiguous(numbers)
    assert len(drops) == 1 and len(numbers) + drops[0] == lines
    assert len(numbers) <= 2 * LOG_BUFFER_EVENTS  # one batch taken, one buffer behind it

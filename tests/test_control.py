"""Control over runs (issue 14): nested pipelines, retries, timeouts, concurrency= across
processes, done callbacks and ``await``.

Real SQLite files, real threads and real processes (``helpers.control_pipelines``); what ran on which try
is counted in files.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import control_pipelines
from helpers.postgres import BOTH_BACKENDS
from helpers.util import Children, connect, raw, wait_until
from tether import cli

pytestmark = BOTH_BACKENDS

# -- nested pipelines ------------------------------------------------------------------------


@tether.pipeline
def leaf(ctx: tether.Context, i: int) -> int:
    ctx.advance()
    return i


@tether.pipeline
def middle(ctx: tether.Context, i: int) -> int:
    kids = [leaf.start(i=10 * i + j) for j in range(2)]
    return sum(k.result() for k in kids)


@tether.pipeline
def top(ctx: tether.Context, n: int) -> list[int]:
    kids = [middle.start(i=i) for i in range(n)]
    return [k.result() for k in kids]


def test_nesting_at_depth_3_with_one_slot_finishes(db: Path) -> None:
    """Before: the parent held the only slot while it waited for its child, which stayed
    pending forever (a deadlock at any max_concurrency, with enough parents)."""
    tether.configure(max_concurrency=1)
    t0 = time.monotonic()
    run = top.start(n=3)
    assert run.result(timeout=20) == [1, 21, 41]
    assert time.monotonic() - t0 < 10

    kids = run.children()
    assert [(k.pipeline, k.params) for k in kids] == [(middle.name, {"i": i}) for i in range(3)]
    assert all(k.parent == run and k.status == "succeeded" for k in kids)
    grandkids = kids[1].children()
    assert [g.params for g in grandkids] == [{"i": 10}, {"i": 11}]
    assert grandkids[0].parent == kids[1] and grandkids[0].parent.parent == run
    assert run.parent is None and leaf.start(i=10).parent == kids[1]
    r = tether.workspace.default().runner()
    wait_until(lambda: r.slots == 0 and r.busy == 0, what="every slot given back")


_four = threading.Barrier(4, timeout=10)


@tether.pipeline
def one_child(ctx: tether.Context, i: int) -> int:
    _four.wait()  # the four parents hold the four slots before any child is started
    return leaf.start(i=100 + i).result() + 0


def test_four_parents_waiting_on_children_with_four_slots(db: Path) -> None:
    """The issue's report: with the default max_concurrency=4, four parents each waiting on a
    child; the children stayed pending forever."""
    _four.reset()
    runs = [one_child.start(i=i) for i in range(4)]
    assert [r.result(timeout=20) for r in runs] == [100 + i for i in range(4)]


@tether.pipeline
def spin_child(ctx: tether.Context, tag: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ctx.advance()
        time.sleep(0.005)


@tether.pipeline
def spin_parent(ctx: tether.Context, n: int) -> None:
    kids = [spin_child.start(tag=f"k{i}") for i in range(n)]
    kids.append(detached_kid.start(tag="detached", detach=True))
    for k in kids:
        k.result()


@tether.pipeline
def detached_kid(ctx: tether.Context, tag: str) -> None:
    pass


@tether.pipeline
def grand(ctx: tether.Context) -> None:
    spin_parent.start(n=2).result()


def test_cancel_of_a_parent_cascades_to_its_active_children(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detached_kid, "_check_importable", lambda: None)
    run = grand.start()
    parent = wait_until(lambda: (c := run.children()) and c[0], what="the parent")
    wait_until(
        lambda: (
            len(parent.children()) == 3
            and [k.status for k in parent.children()] == ["running", "running", "pending"]
        ),
        what="two running children and a pending (detached) one",
    )
    t0 = time.monotonic()
    run.cancel()
    run.wait(timeout=10)
    everyone = [run, parent, *parent.children()]
    wait_until(lambda: all(r.status.terminal for r in everyone), timeout=5, what="every run ended")
    assert time.monotonic() - t0 < 3
    assert [str(r.status) for r in everyone] == ["cancelled"] * 5
    pending_kid = parent.children()[2]
    assert pending_kid.events()[-1].data == {"by": "parent", "parent": run.id}
    assert "cancel_requested" in [e.kind for e in parent.children()[0].events()]


@tether.pipeline
def counted_child(ctx: tether.Context, log: str, i: int) -> int:
    control_pipelines.append(log, f"child{i}")
    return i


@tether.pipeline
def fragile_parent(ctx: tether.Context, log: str) -> list[int]:
    out = []
    for i in range(3):
        out.append(counted_child.start(log=log, i=i).result())
        if i == 1 and ctx.attempt == 1:
            raise RuntimeError("the parent fails after two children")
    return out


def test_a_parents_resume_reuses_its_succeeded_children(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    first = fragile_parent.start(log=log)
    with pytest.raises(tether.RunFailed):
        first.result(timeout=10)
    done = first.children()
    assert [(c.params["i"], str(c.status)) for c in done] == [(0, "succeeded"), (1, "succeeded")]

    second = first.resume()
    assert second.result(timeout=10) == [0, 1, 2]
    assert control_pipelines.lines(log) == ["child0", "child1", "child2"]  # none redone
    kids = second.children()
    assert [c.id for c in kids[:2]] == [c.id for c in done]  # attached, by key
    assert kids[2].parent == second and kids[2].params["i"] == 2
    assert [e.data["created"] for e in second.events(kinds=["child"])] == [False, False, True]


@tether.pipeline
def async_leaf(ctx: tether.Context, i: int) -> int:
    return i


@tether.pipeline
async def async_parent(ctx: tether.Context, n: int) -> list[int]:
    kids = [async_leaf.start(i=i) for i in range(n)]
    return [await k for k in kids]


@tether.pipeline
async def blocking_async_parent(ctx: tether.Context) -> int:
    return spin_child.start(tag="blocked").result()  # type: ignore[no-any-return]


def test_an_async_parent_awaits_its_children_and_is_told_not_to_block(db: Path) -> None:
    tether.configure(max_concurrency=1)
    assert async_parent.start(n=3).result(timeout=10) == [0, 1, 2]
    run = blocking_async_parent.start()
    with pytest.raises(tether.RunFailed, match="await run"):
        run.result(timeout=10)
    for kid in run.children():
        kid.cancel().wait(timeout=10)


# -- retries ---------------------------------------------------------------------------------


def test_retries_keep_the_checkpoints_of_the_run(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    run = control_pipelines.flaky.start(log=log, fail_b=1)
    out = run.result(timeout=20)
    assert out == {"a": "a", "items": [0, 10], "b": "b", "tries": 3}
    # try 1: a, item0, item1 (fails); try 2: item1 again, b (fails); try 3: b again
    assert control_pipelines.lines(log) == [
        "a@1",
        "body@1",
        "item0@1",
        "item1@1",
        "body@2",
        "item1@2",
        "b@2",
        "body@3",
        "b@3",
    ]
    assert run.tries == 3 and run.max_tries == 4 and run.retry_at is None
    assert [r.id for r in run.attempts()] == [run.id]  # within the same run
    retries = run.events(kinds=["retry"])
    assert [(e.data["try"], e.data["type"]) for e in retries] == [(1, "MapItemError"), (2, "ConnectionError")]
    assert "item 1 fails the first time" in retries[0].data["message"]
    assert "ConnectionError" in retries[1].data["traceback"]
    assert [e.data["try"] for e in run.events(kinds=["try"])] == [2, 3]


@tether.pipeline(retries=3, retry_delay=0.2, retry_backoff=2.0)
def always_fails(ctx: tether.Context, tag: str) -> None:
    raise ValueError(f"try {ctx.tries}")


def test_backoff_delays_stay_within_bounds(db: Path) -> None:
    run = always_fails.start(tag="backoff")
    with pytest.raises(tether.RunFailed, match="ValueError: try 4"):
        run.result(timeout=20)
    events = run.events(kinds=["retry", "try"])
    assert [e.kind for e in events] == ["retry", "try"] * 3
    waits = [b.ts - a.ts for a, b in zip(events[::2], events[1::2], strict=True)]
    for expected, waited, ev in zip([0.2, 0.4, 0.8], waits, events[::2], strict=True):
        assert ev.data["delay"] == pytest.approx(expected)
        assert expected <= waited + 0.01 < expected + 0.5, (expected, waited)
    assert run.tries == 4


@tether.pipeline(retries=3, retry_on=(ConnectionError,))
def picky(ctx: tether.Context, kind: str, log: str) -> int:
    control_pipelines.append(log, kind)
    if kind == "value":
        raise ValueError("not retried")
    if kind == "conn" and ctx.tries < 3:
        raise ConnectionError("retried")
    if kind == "cancel":
        ctx.run.cancel()
        ctx.advance()  # raises RunCancelled: never retried
    return ctx.tries


def test_retry_on_filters_what_is_retried(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    value = picky.start(kind="value", log=log)
    with pytest.raises(tether.RunFailed, match="not retried"):
        value.result(timeout=10)
    assert value.tries == 1 and value.events(kinds=["retry"]) == []
    assert picky.start(kind="conn", log=log).result(timeout=10) == 3
    cancelled = picky.start(kind="cancel", log=log)
    with pytest.raises(tether.RunCancelled):
        cancelled.result(timeout=10)
    assert cancelled.tries == 1
    assert control_pipelines.lines(log) == ["value", "conn", "conn", "conn", "cancel"]


@tether.pipeline(retries=2, retry_delay=30)
def slow_retry(ctx: tether.Context) -> None:
    raise ValueError("fails, then waits 30 s to retry")


def test_a_cancel_during_the_wait_ends_the_run_at_once(db: Path) -> None:
    run = slow_retry.start()
    wait_until(lambda: run.retry_at is not None, what="the wait before try 2")
    assert run.retry_at > time.time() + 20 and run.status == "running" and run.tries == 1
    t0 = time.monotonic()
    run.cancel().wait(timeout=10)
    assert time.monotonic() - t0 < 2
    assert run.status == "cancelled" and run.tries == 1
    assert "while waiting to retry" in run.error["message"]


@tether.pipeline
def flaky_child(ctx: tether.Context, log: str) -> str:
    control_pipelines.append(log, "child")
    if len(control_pipelines.lines(log)) == 1:
        raise ConnectionError("the child fails once")
    return "ok"


@tether.pipeline(retries=1)
def retrying_parent(ctx: tether.Context, log: str) -> str:
    return flaky_child.start(log=log).result()  # type: ignore[no-any-return]


def test_a_parents_retry_resumes_its_failed_child(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    run = retrying_parent.start(log=log)
    assert run.result(timeout=10) == "ok"
    kids = run.children()
    assert [(k.attempt, str(k.status)) for k in kids] == [(1, "failed"), (2, "succeeded")]
    assert kids[1].resumed_from == kids[0].id and run.tries == 2


def test_retry_after_a_sigkill_of_the_owner_counts_the_tries_used(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    tether.runs()
    log = str(tmp_path / "log")
    kids = Children(child_env, tmp_path, control_pipelines.CHILD)
    try:
        proc = kids.spawn(runs=[["killed", {"log": log}]], wait=False, hold=str(tmp_path / "no"))
        run_id = json.loads(proc.stdout.readline())["ids"][0]  # type: ignore[union-attr]
        wait_until(
            lambda: raw(db, "SELECT phase FROM runs WHERE id = ?", run_id) == [("hanging",)],
            what="try 2 to hang",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kids.close()
    assert raw(db, "SELECT status, tries FROM runs WHERE id = ?", run_id) == [("running", 2)]
    again = control_pipelines.killed.start(log=log, policy="resume")  # the automatic-resume rule
    assert again.resumed_from == run_id and again.attempt == 2
    with pytest.raises(tether.RunFailed, match="try 3 fails too"):
        again.result(timeout=10)
    assert tether.get_run(run_id).status == "interrupted"
    # try 3 was the last of 1 + retries=2: the killed attempt's two tries counted
    assert again.tries == 3 and again.events(kinds=["retry"]) == []
    assert control_pipelines.lines(log) == ["a@1", "body@1", "body@2", "b@2", "body@3"]


@tether.pipeline(retries=3, retry_delay=0, timeout=0.3)
async def async_flaky(ctx: tether.Context, log: str) -> int:
    import asyncio

    ctx.step("a", control_pipelines.append, log, f"a@{ctx.tries}")
    control_pipelines.append(log, f"body@{ctx.tries}")
    if ctx.tries == 1:
        raise ConnectionError("try 1 fails")
    if ctx.tries == 2:
        await asyncio.sleep(30)  # cancelled by the timeout (the task's cancel)
    if ctx.tries == 3:
        while True:  # stopped by the timeout at a ctx call (RunCancelled)
            ctx.advance()
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # a stray cancel of try 3's timeout would land here
    return ctx.tries


def test_an_async_body_is_retried_after_a_failure_and_a_timeout(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    run = async_flaky.start(log=log)
    assert run.result(timeout=10) == 4
    assert control_pipelines.lines(log) == ["a@1", "body@1", "body@2", "body@3", "body@4"]
    assert [e.data["type"] for e in run.events(kinds=["retry"])] == [
        "ConnectionError",
        "TimeoutError",
        "TimeoutError",
    ]


# -- timeouts --------------------------------------------------------------------------------


@tether.pipeline(timeout=0.4)
def busy_forever(ctx: tether.Context) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ctx.advance()
        time.sleep(0.005)


@tether.pipeline(timeout=0.3, retries=1, retry_on=(TimeoutError,))
def slow_first_try(ctx: tether.Context) -> int:
    while ctx.tries == 1:
        ctx.advance()
        time.sleep(0.005)
    return ctx.tries


def test_a_timeout_stops_a_cooperative_body_and_fails_the_run(db: Path) -> None:
    t0 = time.monotonic()
    run = busy_forever.start()
    with pytest.raises(tether.RunFailed, match=r"TimeoutError: .*timeout of 0.4 s"):
        run.result(timeout=10)
    assert 0.4 <= time.monotonic() - t0 < 2
    assert run.status == "failed" and run.error["type"] == "TimeoutError"
    assert slow_first_try.start().result(timeout=10) == 2  # retried: retry_on covers it


@tether.pipeline(timeout=0.2)
def deaf(ctx: tether.Context, gate: str) -> str:
    control_pipelines.wait_file(gate)  # no ctx call: cannot be stopped in its thread
    return "late"


def test_a_body_that_makes_no_ctx_call_is_shown_past_its_timeout(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = tmp_path / "gate"
    run = deaf.start(gate=str(gate))
    wait_until(lambda: (run.overdue or 0) > 0.6, what="the run to be 0.6 s past its timeout")
    assert run.status == "running"
    cli.main(["show", run.id, "--db", str(db)])
    shown = capsys.readouterr().out
    assert "past its timeout by" in shown and "timeout   0.2 s" in shown
    cli.main(["ls", "--db", str(db)])
    assert "past its timeout by" in capsys.readouterr().out
    cli.main(["ls", "--json", "--db", str(db)])
    assert json.loads(capsys.readouterr().out)[0]["overdue"] > 0.6
    gate.touch()
    with pytest.raises(tether.RunFailed, match="TimeoutError"):
        run.result(timeout=10)
    assert run.overdue is None


@tether.pipeline(timeout=0.3)
def impatient_parent(ctx: tether.Context) -> None:
    spin_child.start(tag="orphaned-by-timeout").result()


def test_a_parents_timeout_stops_its_wait_and_cancels_its_child(db: Path) -> None:
    run = impatient_parent.start()
    with pytest.raises(tether.RunFailed, match="TimeoutError"):
        run.result(timeout=10)
    kid = run.children()[0]
    kid.wait(timeout=5)
    assert kid.status == "cancelled"


# -- concurrency= across processes -----------------------------------------------------------


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    tether.runs()  # the database exists (and is migrated) before any child starts
    kids = Children(child_env, tmp_path, control_pipelines.CHILD)
    yield kids
    kids.close()


class Sampler:
    """Reads the runs of one pipeline every 10 ms with plain sqlite3 or psycopg (one snapshot per
    read)."""

    def __init__(self, db: Path, pipeline: str) -> None:
        self.db, self.pipeline = db, pipeline
        self.samples: list[list[tuple[int, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        conn = connect(self.db)
        try:
            while not self._stop.is_set():
                self.samples.append(
                    conn.execute(
                        "SELECT rowid, status FROM runs WHERE pipeline = ? ORDER BY rowid", (self.pipeline,)
                    ).fetchall()
                )
                time.sleep(0.01)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_concurrency_caps_running_runs_across_processes_in_start_order(
    db: Path, children: Children, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    procs = [
        children.spawn(go=str(go), runs=[["limited", {"tag": f"p{p}r{r}"}] for r in range(4)])
        for p in range(3)
    ]
    sampler = Sampler(db, control_pipelines.limited.name)
    go.touch()
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        sampler.stop()
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["statuses"] == ["succeeded"] * 4
    running = [sum(s == "running" for _, s in sample) for sample in sampler.samples]
    assert len(sampler.samples) > 50 and max(running) == 2, max(running)
    for sample in sampler.samples:  # start order: no run started while an older one waits
        statuses = [s for _, s in sample]
        pending_from = statuses.index("pending") if "pending" in statuses else len(statuses)
        assert set(statuses[pending_from:]) <= {"pending"}, sample
    queued = raw(
        db,
        "SELECT count(*) FROM events e JOIN runs r ON r.id = e.run_id "
        "WHERE r.pipeline = ? AND e.kind = 'queued'",
        control_pipelines.limited.name,
    )[0][0]
    assert queued >= 6  # at least the runs of the last rounds waited in line


def test_a_queued_run_tells_how_many_are_ahead_of_it(db: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    runs = [control_pipelines.single.start(tag=f"t{i}", gate=str(gate)) for i in range(4)]
    wait_until(lambda: runs[0].status == "running", what="the first run")
    assert [r.ahead for r in runs] == [None, 0, 1, 2]
    assert [str(r.status) for r in runs[1:]] == ["pending"] * 3
    assert runs[3].events(kinds=["queued"])[0].data == {"ahead": 2, "concurrency": 1}
    gate.touch()
    assert [r.result(timeout=10)["tag"] for r in runs] == ["t0", "t1", "t2", "t3"]
    started = [r.snapshot().started_at for r in runs]
    assert started == sorted(started)


def _queued_behind_a_dead_starter(db: Path, children: Children, tmp_path: Path) -> tuple[str, str]:
    """A child starts two runs of ``single`` (concurrency=1): the first holds the slot, the
    second waits in line; then the child is killed. Returns the two run ids."""
    proc = children.spawn(
        runs=[["single", {"tag": "first", "gate": str(tmp_path / "never")}], ["single", {"tag": "second"}]],
        wait=False,
        hold=str(tmp_path / "no"),
    )
    first, second = json.loads(proc.stdout.readline())["ids"]  # type: ignore[union-attr]
    wait_until(
        lambda: (
            raw(db, "SELECT status FROM runs WHERE id IN (?, ?) ORDER BY rowid", first, second)
            == [("running",), ("pending",)]
        ),
        what="one running, one queued",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return first, second


def test_a_queued_run_whose_starter_was_killed_is_picked_up_by_a_worker(
    db: Path, children: Children, tmp_path: Path
) -> None:
    worker = children.popen("-m", "tether.cli", "worker", "helpers.control_pipelines", "--poll", "0.05")
    wait_until(
        lambda: raw(db, "SELECT count(*) FROM workers WHERE pipeline = ?", control_pipelines.single.name)[0][
            0
        ],
        what="the worker to register",
    )
    first, second = _queued_behind_a_dead_starter(db, children, tmp_path)
    tether.runs()  # whoever looks first (here: this process) finds the starter dead
    run = tether.get_run(second)
    assert run.result(timeout=20) == {"tag": "second", "pid": worker.pid}
    assert [e.kind for e in run.events()][:3] == ["created", "queued", "handed_over"]
    assert tether.get_run(first).status == "interrupted"  # it had started: not handed over
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert raw(db, "SELECT count(*) FROM workers")[0][0] == 0


def test_without_a_worker_a_queued_run_of_a_dead_starter_is_interrupted(
    db: Path, children: Children, tmp_path: Path
) -> None:
    first, second = _queued_behind_a_dead_starter(db, children, tmp_path)
    tether.runs()
    assert [tether.get_run(i).status for i in (first, second)] == ["interrupted", "interrupted"]


@tether.pipeline(concurrency=1)
def recursive(ctx: tether.Context, depth: int) -> int:
    return 1 + (recursive.start(depth=depth - 1).result() if depth else 0)


def test_a_parent_waiting_for_its_child_is_not_counted_by_its_limit(db: Path) -> None:
    """concurrency=1 and a body that starts a run of its own pipeline: the waiting parent is
    parked, so the child can start."""
    assert recursive.start(depth=3).result(timeout=20) == 4
    assert raw(db, "SELECT count(*) FROM runs WHERE parked != 0")[0][0] == 0


# -- done callbacks and await ----------------------------------------------------------------


def test_a_callback_on_a_run_of_another_process_is_called_when_it_ends(
    db: Path, children: Children, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    proc = children.spawn(runs=[["single", {"tag": "theirs", "gate": str(gate)}]])
    run = tether.get_run(json.loads(proc.stdout.readline())["ids"][0])  # type: ignore[union-attr]
    seen: list[tuple[str, str]] = []
    ended = threading.Event()
    run.add_done_callback(
        lambda r: (seen.append((threading.current_thread().name, str(r.status))), ended.set())
    )
    assert seen == []
    gate.touch()
    assert ended.wait(20)
    assert seen == [("tether-callbacks", "succeeded")]
    assert proc.wait(timeout=20) == 0


KERNEL_CELLS = [
    """
import asyncio, os, threading, time
import tether
tether.configure(db={db!r})

@tether.pipeline
def double(ctx, x: int) -> int:
    return 2 * x

@tether.pipeline
def gated(ctx, gate: str) -> str:
    while not os.path.exists(gate):
        ctx.advance()
        time.sleep(0.005)
    return "opened"

@tether.pipeline
def broken(ctx) -> None:
    raise ValueError("broken on purpose")

seen = []
ended = double.start(x=21)
ended.result(timeout=30)
ended.add_done_callback(lambda r: seen.append(("ended", threading.current_thread().name, r.result())))
assert seen == [("ended", "MainThread", 42)], seen   # at once, in this thread

def boom(run):
    raise RuntimeError("a callback that raises")

done = threading.Event()
run = gated.start(gate={gate!r})
run.add_done_callback(boom)
run.add_done_callback(lambda r: (seen.append(("later", threading.current_thread().name,
                                              str(r.status))), done.set()))
assert len(seen) == 1
open({gate!r}, "w").close()
assert done.wait(30)
assert seen[1][0] == "later" and seen[1][1].startswith("tether-run") and seen[1][2] == "succeeded", seen
time.sleep(0.2)
assert len(seen) == 2, seen   # once each
""",
    """
ticks = 0

async def ticker():
    global ticks
    while True:
        ticks += 1
        await asyncio.sleep(0.01)

task = asyncio.ensure_future(ticker())
slow = gated.start(gate={gate2!r})
threading.Timer(0.5, lambda: open({gate2!r}, "w").close()).start()
value = await slow
task.cancel()
assert value == "opened" and ticks >= 20, (value, ticks)   # the loop ran while it waited
try:
    await broken.start()
except tether.RunFailed as exc:
    assert "broken on purpose" in str(exc)
else:
    raise AssertionError("await of a failed run did not raise")
print("CONTROL-KERNEL-OK", ticks)
""",
]


def _run_cells(kc: Any, cells: list[str], timeout: float = 60) -> tuple[str, str]:
    """Execute each cell in the kernel, in order; (stdout, stderr) of them all. A cell that
    raises fails the test with the kernel's traceback."""
    out: list[str] = []
    err: list[str] = []
    for code in cells:
        msg_id = kc.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, "the kernel did not finish the cell"
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
    return "".join(out), "".join(err)


def test_callbacks_and_await_in_a_real_kernel(tmp_path: Path, child_env: dict[str, str]) -> None:
    from jupyter_client.manager import start_new_kernel

    env = dict(child_env)
    env.pop("TETHER_DB", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        names = {
            "db": str(tmp_path / "kernel.db"),
            "gate": str(tmp_path / "gate"),
            "gate2": str(tmp_path / "gate2"),
        }
        out, err = _run_cells(kc, [cell.format(**names) for cell in KERNEL_CELLS])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "CONTROL-KERNEL-OK" in out, (out, err)
    assert "a callback that raises" in err  # logged, never raised into tether


def test_a_schema_0002_database_migrates_and_its_runs_read_as_before(db: Path) -> None:
    if str(db).startswith("postgresql://"):
        pytest.skip("SQLite's migration path; PostgreSQL's is the store contract's (make_old)")
    import sqlite3
    from contextlib import closing

    from helpers.util import undo_control_migration

    old = leaf.start(i=7)
    assert old.result(timeout=10) == 7
    tether.workspace.default().close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN code")  # 0004_code, newer still
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_code'")
        undo_control_migration(conn)
        conn.commit()
    assert [r[0] for r in raw(db, "SELECT name FROM _sqlite_migrations")] == ["0001_initial", "0002_owner_ns"]
    again = tether.get_run(old.id)  # opens and migrates
    assert [r[0] for r in raw(db, "SELECT name FROM _sqlite_migrations")][-1] == "0005_active_index"
    assert (again.status, again.tries, again.max_tries, again.parent, again.children()) == (
        "succeeded",
        0,
        1,
        None,
        [],
    )
    assert leaf.start(i=7).id == old.id and leaf.start(i=8).result(timeout=10) == 8

"""``ctx.map``: fan-out over the default thread pool, a spawn process pool and a real Dask
``LocalCluster`` (as a ``Client`` and as ``client.get_executor()``); order, progress, failures,
cancel, and SIGKILL mid-map followed by a resume that skips the finished items.

Every execution of an item appends one line to ``<dir>/item-<i>`` (``helpers.checkpoint_pipelines.work``), in
whichever process or Dask worker it ran, so the tests count what really ran.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import checkpoint_pipelines
from helpers.checkpoint_pipelines import Children, executions, first_line, raw, wait_until
from helpers.postgres import BOTH_BACKENDS
from tether.fanout import _BATCH_S
from tether.workspace import Workspace

pytestmark = BOTH_BACKENDS

EXECUTORS = ["default", "threads", "processes", "dask-client", "dask-executor"]


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real LocalCluster: two worker processes of one thread each.

    They import helpers.checkpoint_pipelines."""
    distributed = pytest.importorskip("distributed")  # the "dask" extra
    with warnings.catch_warnings():  # its HTTP server falls back from a busy port 8787: fine
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``mapper(executor=...)`` spec for the executor named by the test's parameter."""
    kind = request.param
    pool = None
    if kind == "default":
        spec = "default"
    elif kind == "threads":
        pool = ThreadPoolExecutor(max_workers=2)
        spec = checkpoint_pipelines.lend(kind, pool)
    elif kind == "processes":
        spec = checkpoint_pipelines.lend(kind, request.getfixturevalue("process_pool"))
    elif kind == "dask-client":
        spec = checkpoint_pipelines.lend(kind, request.getfixturevalue("dask_client"))
    else:
        spec = checkpoint_pipelines.lend(kind, request.getfixturevalue("dask_client").get_executor())
    yield spec
    checkpoint_pipelines.EXECUTORS.pop(kind, None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    kids = Children(child_env, tmp_path)
    yield kids
    kids.close()


def expected(n: int) -> list[dict[str, int]]:
    return [{"i": i, "sq": i * i} for i in range(n)]


def item_checkpoints(db: Path, run_id: str) -> list[str]:
    return [
        r[0]
        for r in raw(
            db,
            "SELECT name FROM checkpoints WHERE run_id = ? AND name LIKE 'map:%' ORDER BY ts, name",
            run_id,
        )
    ]


def dask_settled(client: Any) -> bool:
    """The scheduler has no task left to run; each worker keeps at most its running task, as
    cancelled (tasks of earlier tests may linger, erred or in memory, until garbage collected)."""
    sched = client.run_on_scheduler(lambda dask_scheduler: [ts.state for ts in dask_scheduler.tasks.values()])
    states = client.run(lambda dask_worker: [ts.state for ts in dask_worker.state.tasks.values()])
    return not set(sched) & {"queued", "processing", "waiting", "no-worker"} and all(
        set(s) <= {"cancelled", "error", "memory"} and s.count("cancelled") <= 1 for s in states.values()
    )


def dask_idle(client: Any) -> bool:
    """No worker still runs a cancelled task."""
    states = client.run(lambda dask_worker: [ts.state for ts in dask_worker.state.tasks.values()])
    return all("cancelled" not in s for s in states.values())


# -- results, progress, checkpoints ----------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
def test_map_returns_results_in_item_order_and_records_each_item(
    db: Path, tmp_path: Path, executor: str
) -> None:
    n = 8
    # later items finish first (item i sleeps (n-1-i) * 30 ms), so the order comes from tether
    run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=executor, delay_step=0.03)
    assert run.result(timeout=60) == expected(n)
    assert executions(tmp_path, n) == [1] * n
    assert run.progress == (n, n)
    rows = raw(db, "SELECT name, value FROM checkpoints WHERE run_id = ?", run.id)
    assert sorted(rows) == sorted((f"map:work#1:{i}", f'{{"i":{i},"sq":{i * i}}}') for i in range(n))
    if executor != "default":
        pids = {int(p) for i in range(n) for p in checkpoint_pipelines.lines(tmp_path / f"item-{i}")}
        in_process = executor in ("reg:threads",)
        assert (pids == {os.getpid()}) == in_process, pids


@pytest.mark.parametrize("executor", ["default", "processes", "dask-client"], indirect=True)
def test_progress_counts_each_finished_item(db: Path, tmp_path: Path, executor: str) -> None:
    n = 4
    gate = str(tmp_path / "gate-{i}")  # item i waits for its own gate file
    run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=executor, gate=gate)
    released: set[int] = set()

    def started_item() -> int | None:
        running = [i for i, c in enumerate(executions(tmp_path, n)) if c and i not in released]
        return min(running) if running else None

    for k in range(n):
        i = wait_until(
            lambda: (started_item(),) if started_item() is not None else None,
            what=f"a {k + 1}th item to start",
        )[0]
        assert run.progress == (k, n)
        Path(gate.format(i=i)).touch()
        released.add(i)
        # the other items wait for their gates, so progress reaches k + 1 and stops there
        wait_until(lambda k=k: run.progress == (k + 1, n), what=f"progress {k + 1}/{n}")
        if k == 1:  # and the store has it too, within the flush interval (no read of live state)
            wait_until(
                lambda: raw(db, "SELECT done, total FROM runs WHERE id = ?", run.id) == [(2, n)],
                what="progress 2/4 in the store",
            )
    assert run.result(timeout=30) == expected(n)
    assert executions(tmp_path, n) == [1] * n


def test_map_with_checkpoint_false_stores_nothing_and_accepts_any_result(db: Path, tmp_path: Path) -> None:
    run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=3, checkpoint=False, bad_at=1)
    with pytest.raises(tether.RunFailed, match=r"result\[1\]\['rows'\]\[0\]: .*Opaque"):  # its result
        run.result(timeout=30)
    assert item_checkpoints(db, run.id) == []
    assert executions(tmp_path, 3) == [1, 1, 1]


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
def test_first_failure_raises_map_item_error_naming_the_item(db: Path, tmp_path: Path, executor: str) -> None:
    (tmp_path / "a").mkdir()
    caught = checkpoint_pipelines.mapper.start(
        dir=str(tmp_path / "a"), n=6, executor=executor, fail_at=3, catch=True
    )
    out = caught.result(timeout=60)
    assert out["index"] == 3 and out["cause"] == "ValueError"
    assert out["item"] == checkpoint_pipelines.make_items(str(tmp_path / "a"), 6, fail_at=3)[3]

    (tmp_path / "b").mkdir()
    run = checkpoint_pipelines.mapper.start(dir=str(tmp_path / "b"), n=6, executor=executor, fail_at=3)
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=60)
    error = info.value.error
    assert error is not None and error["type"] == "MapItemError"
    assert "item 3" in error["message"] and "item 3 is broken" in error["message"]
    assert "ValueError" in error["message"]
    assert "map:work#1:3" not in item_checkpoints(db, run.id)


def test_failure_cancels_the_items_not_started(db: Path, tmp_path: Path) -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    gate = tmp_path / "gate"
    try:
        spec = checkpoint_pipelines.lend("one-thread", pool)
        # item 0 fine, item 1 fails, item 2 is in flight (waits for the gate), 3..9 queued
        run = checkpoint_pipelines.mapper.start(
            dir=str(tmp_path), n=10, executor=spec, fail_at=1, gate=str(gate), gate_from=2
        )
        with pytest.raises(tether.RunFailed, match="item 1"):
            run.result(timeout=30)
        gate.touch()
    finally:
        gate.touch()
        pool.shutdown(wait=True)
        checkpoint_pipelines.EXECUTORS.pop("one-thread", None)
    assert executions(tmp_path, 10) == [1, 1, 1] + [0] * 7


@pytest.mark.parametrize("executor", ["default", "processes", "dask-client"], indirect=True)
def test_an_unstorable_item_result_fails_the_run_naming_the_item(
    db: Path, tmp_path: Path, executor: str
) -> None:
    run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=5, executor=executor, bad_at=2)
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=60)
    error = info.value.error
    assert error is not None and error["type"] == "ParamsError"
    assert "item 2: value['rows'][0]: " in error["message"] and "Opaque" in error["message"]
    assert "checkpoint=False" in error["message"]
    assert "map:work#1:2" not in item_checkpoints(db, run.id)


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_mid_map_cancels_the_items_not_started(db: Path, tmp_path: Path) -> None:
    pool = ThreadPoolExecutor(max_workers=2)
    gate = tmp_path / "gate"
    n = 10
    try:
        spec = checkpoint_pipelines.lend("two-threads", pool)
        run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=spec, gate=str(gate))
        wait_until(lambda: executions(tmp_path, n)[:2] == [1, 1], what="two items in flight")
        run.cancel()
        with pytest.raises(tether.RunCancelled):
            run.result(timeout=10)  # the map stops waiting although its items still run
        assert run.status == "cancelled"
        gate.touch()
    finally:
        gate.touch()
        pool.shutdown(wait=True)  # every item that was ever going to run has run now
        checkpoint_pipelines.EXECUTORS.pop("two-threads", None)
    assert executions(tmp_path, n) == [1, 1] + [0] * (n - 2)
    assert item_checkpoints(db, run.id) == []


def test_cancel_mid_map_on_dask_cancels_the_outstanding_tasks(
    db: Path, tmp_path: Path, dask_client: Any
) -> None:
    gate = tmp_path / "gate"
    n = 10
    spec = checkpoint_pipelines.lend("dask-cancel", dask_client.get_executor())
    try:
        run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=spec, gate=str(gate))
        # one task per worker thread is running, blocked on the gate
        wait_until(lambda: sum(executions(tmp_path, n)) == 2, what="two items in flight")
        run.cancel()
        with pytest.raises(tether.RunCancelled):
            run.result(timeout=10)

        wait_until(lambda: dask_settled(dask_client), what="Dask to drop the cancelled tasks")
        gate.touch()

        wait_until(lambda: dask_idle(dask_client), what="the two running tasks to end")
    finally:
        gate.touch()
        checkpoint_pipelines.EXECUTORS.pop("dask-cancel", None)
    counts = executions(tmp_path, n)
    assert sum(counts) == 2 and max(counts) == 1, counts  # the queued items never ran
    assert item_checkpoints(db, run.id) == []


# -- SIGKILL mid-map, then resume ------------------------------------------------------------


def test_sigkill_mid_map_then_resume_skips_the_finished_items(
    db: Path, children: Children, tmp_path: Path
) -> None:
    n, finished = 12, 6
    gate = tmp_path / "gate"
    params = {"dir": str(tmp_path), "n": n, "executor": "pool:2", "gate": str(gate), "gate_from": finished}
    proc = children.spawn(pipeline="mapper", params=params)
    run_id = first_line(proc)["id"]
    # items 0..5 are stored; 6 and 7 started (one per pool thread) and wait for the gate
    wait_until(
        lambda: (
            len(item_checkpoints(db, run_id)) == finished
            and executions(tmp_path, n)[finished : finished + 2] == [1, 1]
        ),
        what="six stored items and two in flight",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert sorted(item_checkpoints(db, run_id)) == sorted(f"map:work#1:{i}" for i in range(finished))

    gate.touch()
    old = tether.get_run(run_id)
    assert old.status == "interrupted"
    new = old.resume()
    assert new.result(timeout=30) == expected(n)
    counts = executions(tmp_path, n)
    assert counts[:finished] == [1] * finished  # finished items did not run again
    assert counts[finished : finished + 2] == [2, 2]  # in flight when the process died: ran again
    assert counts[finished + 2 :] == [1] * (n - finished - 2)
    assert new.progress == (n, n)
    assert len(item_checkpoints(db, new.id)) == n


# -- batched writes, a run taken over, SIGKILL on Dask ----------------------------------------


def test_dask_map_stores_finished_items_in_time_bounded_batches(
    db: Path, tmp_path: Path, dask_client: Any
) -> None:
    n = 100
    spec = checkpoint_pipelines.lend("dask-batches", dask_client)
    try:
        run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=spec)
        assert run.result(timeout=60) == expected(n)
    finally:
        checkpoint_pipelines.EXECUTORS.pop("dask-batches", None)
    assert executions(tmp_path, n) == [1] * n
    stamps = sorted(
        {ts for (ts,) in raw(db, "SELECT ts FROM checkpoints WHERE run_id = ? AND name LIKE 'map:%'", run.id)}
    )
    assert len(raw(db, "SELECT name FROM checkpoints WHERE run_id = ?", run.id)) == n
    # one transaction (one timestamp) per batch; a batch is written _BATCH_S after its first
    # result arrived, so batches are at least that far apart, but for the last one (the map's end)
    span = stamps[-1] - stamps[0]
    assert len(stamps) <= span / _BATCH_S + 2, (len(stamps), span)


@tether.pipeline(name="test_fanout.absolute")
def absolute(ctx: tether.Context, items: list[int], executor: str) -> list[int]:
    return ctx.map(abs, items, executor=checkpoint_pipelines.EXECUTORS[executor])


def test_equal_items_sharing_one_pure_dask_task_each_get_their_result(db: Path, dask_client: Any) -> None:
    # get_executor() submits with Dask's default pure=True: equal items become one task, one future
    checkpoint_pipelines.lend("dask-pure", dask_client.get_executor())
    try:
        items = [-1, -2, -1, -3, -2, -1]
        run = absolute.start(items=items, executor="dask-pure")
        assert run.result(timeout=60) == [1, 2, 1, 3, 2, 1]
    finally:
        checkpoint_pipelines.EXECUTORS.pop("dask-pure", None)
    assert run.progress == (6, 6)
    assert sorted(item_checkpoints(db, run.id)) == sorted(f"map:abs#1:{i}" for i in range(6))


def test_a_map_whose_run_another_process_took_over_stops_at_its_next_store(
    db: Path, tmp_path: Path, child_env: dict[str, str], workspace: Workspace
) -> None:
    # the flusher ticks once a minute here: only the map's own write can learn that the run is
    # no longer this process's
    workspace.configure(flush_interval=60)
    pool = ThreadPoolExecutor(max_workers=1)
    n = 6
    gate = str(tmp_path / "gate-{i}")  # item i waits for its own gate file
    try:
        spec = checkpoint_pipelines.lend("one-thread", pool)
        run = checkpoint_pipelines.mapper.start(dir=str(tmp_path), n=n, executor=spec, gate=gate)
        wait_until(lambda: executions(tmp_path, n)[0] == 1, what="item 0 in flight")
        # another process, believing this one dead, marks the run interrupted
        subprocess.run(
            [sys.executable, "-c", TAKE_OVER, str(db), run.id], env=child_env, check=True, timeout=60
        )
        Path(gate.format(i=0)).touch()
        runner = workspace.runner()
        wait_until(lambda: runner.live(run.id) is None, timeout=10, what="the body to stop")
        assert tether.get_run(run.id).status == "interrupted"
    finally:
        for i in range(n):
            Path(gate.format(i=i)).touch()
        pool.shutdown(wait=True)
        checkpoint_pipelines.EXECUTORS.pop("one-thread", None)
    counts = executions(tmp_path, n)
    assert counts[0] == 1 and counts[2:] == [0] * (n - 2), counts  # item 1 may have started
    assert item_checkpoints(db, run.id) == []  # the write that found the run taken over wrote nothing
    reason = raw(db, "SELECT error FROM runs WHERE id = ?", run.id)[0][0]
    assert "taken over by another process" in reason


# a second process marks run argv[2] of database argv[1] interrupted, as one that found its owner gone
TAKE_OVER = """
import sys
from tether.store import SQLiteStore
from tether.store.postgres import PostgresStore, is_url
store = PostgresStore(sys.argv[1]) if is_url(sys.argv[1]) else SQLiteStore(sys.argv[1])
marked = store.recover([store.get(sys.argv[2])], lambda owner, lease, now: "taken over by another process")
assert len(marked) == 1, marked
store.close()
"""


def test_sigkill_mid_map_on_dask_then_resume_skips_the_finished_items(
    db: Path, children: Children, tmp_path: Path, dask_client: Any
) -> None:
    n, finished = 12, 6
    gate = tmp_path / "gate"
    spec = f"dask:{dask_client.scheduler.address}"
    checkpoint_pipelines.EXECUTORS[spec] = dask_client  # the resume, in this process, uses ours
    params = {"dir": str(tmp_path), "n": n, "executor": spec, "gate": str(gate), "gate_from": finished}
    try:
        proc = children.spawn(pipeline="mapper", params=params)  # with a client of its own
        run_id = first_line(proc)["id"]
        # items 0..5 are stored; two later ones run (one per worker thread; Dask picks which)
        # and wait for the gate
        wait_until(
            lambda: (
                len(item_checkpoints(db, run_id)) == finished and sum(executions(tmp_path, n)) == finished + 2
            ),
            what="six stored items and two in flight",
        )
        flight = [i for i, count in enumerate(executions(tmp_path, n)) if i >= finished and count]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # the scheduler drops the dead client's tasks: the queued ones never run for it
        wait_until(lambda: dask_settled(dask_client), what="Dask to drop the dead client's tasks")
        assert sorted(item_checkpoints(db, run_id)) == sorted(f"map:work#1:{i}" for i in range(finished))

        gate.touch()
        wait_until(lambda: dask_idle(dask_client), what="the two orphaned tasks to end")
        old = tether.get_run(run_id)
        assert old.status == "interrupted"
        new = old.resume()
        assert new.result(timeout=60) == expected(n)
    finally:
        gate.touch()
        checkpoint_pipelines.EXECUTORS.pop(spec, None)
    counts = executions(tmp_path, n)
    assert counts[:finished] == [1] * finished  # finished items did not run again
    # in flight when the process died: ran again; the others once (never for the dead client)
    assert counts[finished:] == [2 if i in flight else 1 for i in range(finished, n)]
    assert new.progress == (n, n)
    assert len(item_checkpoints(db, new.id)) == n

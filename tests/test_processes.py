"""Several real processes sharing one database: racing start(), observing and cancelling each other.

Child processes run ``helpers.owner_pipelines.child`` (see there); they find the database through
``TETHER_DB`` (the ``child_env`` fixture).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import owner_pipelines
from helpers.util import Children, raw, wait_until


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    kids = Children(child_env, tmp_path, owner_pipelines.CHILD)
    yield kids
    kids.close()


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a child in mode "wait" and return what it printed."""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def only_run(pipe: tether.Pipeline) -> tether.Run:
    """The single run of ``pipe`` once some process has created it."""
    runs = wait_until(lambda: tether.runs(pipeline=pipe), what=f"a run of {pipe.name}")
    assert len(runs) == 1
    return runs[0]


def contiguous(events: list[tether.Event]) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("fresh_db", [False, True], ids=["existing-db", "fresh-db"])
def test_eight_processes_racing_start_make_exactly_one_run(
    db: Path, children: Children, tmp_path: Path, fresh_db: bool
) -> None:
    if not fresh_db:
        assert tether.runs() == []  # creates and migrates the database before the race
    marker, go = tmp_path / "executions.txt", tmp_path / "go"
    params = {"marker": str(marker), "hold": 0.5}
    procs = [
        children.spawn(pipeline="count_once", params=params, ready=str(tmp_path / f"ready{i}"), go=str(go))
        for i in range(8)
    ]
    wait_until(
        lambda: all((tmp_path / f"ready{i}").exists() for i in range(8)), what="every child to be ready"
    )
    go.touch()
    outs = [finish(p) for p in procs]

    assert len({o["id"] for o in outs}) == 1, outs
    assert {o["status"] for o in outs} == {"succeeded"}
    executions = marker.read_text().splitlines()
    assert len(executions) == 1, executions  # the body ran once, in one of the children
    assert int(executions[0]) in {o["pid"] for o in outs}

    runs = tether.runs(pipeline=owner_pipelines.count_once)
    assert [r.id for r in runs] == [outs[0]["id"]]
    # a finished run started by another process is returned here with its result, not executed
    here = owner_pipelines.count_once.start(**params)
    assert here.id == outs[0]["id"] and here.status == "succeeded"
    assert here.result(timeout=1) == {"pid": int(executions[0])}
    assert len(marker.read_text().splitlines()) == 1
    assert contiguous(here.events())


def test_a_run_started_in_another_process_is_seen_here(db: Path, children: Children, tmp_path: Path) -> None:
    tether.runs()
    gate = tmp_path / "gate"
    proc = children.spawn(pipeline="gated", params={"gate": str(gate), "lines": 3})
    run = only_run(owner_pipelines.gated)
    wait_until(lambda: run.phase == "applying", what="the child's run to reach phase applying")

    assert run.status == "running"
    assert run.snapshot().owner is not None and run.snapshot().owner.pid == proc.pid
    assert run.params == {"gate": str(gate), "lines": 3}
    events = run.events()
    assert contiguous(events)
    assert [e.kind for e in events] == ["created", "started", "phase", "log", "log", "log", "phase"]
    assert [e.data["message"] for e in events if e.kind == "log"] == ["line 0", "line 1", "line 2"]
    assert all(e.phase == "scanning" for e in events if e.kind == "log")
    assert run.logs() == ["line 0", "line 1", "line 2"]
    assert "scanning" in run.snapshot().phases_done
    newer = run.events(after=events[-1].seq)
    assert newer == []  # nothing new until the child moves on

    gate.touch()
    assert run.result(timeout=30) == {"lines": 3, "pid": proc.pid}
    assert run.status == "succeeded"
    assert [e.kind for e in run.events(after=events[-1].seq)] == ["succeeded"]
    assert finish(proc)["status"] == "succeeded"


def test_cancel_from_another_process(db: Path, children: Children) -> None:
    tether.runs()
    proc = children.spawn(pipeline="spinner", params={"tag": "cancel-me"})
    run = only_run(owner_pipelines.spinner)
    wait_until(
        lambda: run.status == "running" and run.progress.done > 0, what="the child's run to make progress"
    )

    t0 = time.monotonic()
    run.cancel()
    run.wait(timeout=30)
    elapsed = time.monotonic() - t0
    assert run.status == "cancelled"
    assert elapsed < 5, f"the owner took {elapsed:.1f} s to see the cancel"
    kinds = [e.kind for e in run.events()]
    assert "cancel_requested" in kinds and kinds[-1] == "cancelled"
    assert kinds.count("cancelled") == 1
    assert contiguous(run.events())
    with pytest.raises(tether.RunCancelled):
        run.result()
    assert finish(proc)["status"] == "cancelled"  # the owner itself saw it end that way


def test_a_run_owned_by_a_live_process_is_never_interrupted_from_here(
    db: Path, children: Children, tmp_path: Path
) -> None:
    # this process sweeps for orphans as often as it can, while the child's run stays quiet
    tether.configure(sweep_interval=0.05, flush_interval=0.05)
    tether.runs()
    gate = tmp_path / "gate"
    params = {"gate": str(gate), "lines": 2}
    proc = children.spawn(pipeline="gated", params=params)
    theirs = only_run(owner_pipelines.gated)
    wait_until(lambda: theirs.phase == "applying", what="the child's run to block")

    for _ in range(3):
        assert owner_pipelines.gated.start(**params).id == theirs.id
        assert tether.get_run(theirs.id).status == "running"
        assert [(r.id, r.status) for r in tether.runs()] == [(theirs.id, "running")]
    with pytest.raises(tether.KeyConflict):
        owner_pipelines.gated.start(**params, policy="fail")

    # let this process's runner tick (flush + sweep) many times while it runs a run of its own
    mine = owner_pipelines.spinner.start(tag="parent")
    seen: set[float] = set()

    def ticks() -> bool:
        seen.update(r[0] for r in raw(db, "SELECT updated_at FROM runs WHERE id = ?", mine.id))
        return len(seen) >= 8

    wait_until(ticks, what="eight flushes of this process's runner")
    mine.cancel()
    mine.wait(timeout=30)

    assert raw(db, "SELECT status FROM runs WHERE id = ?", theirs.id) == [("running",)]
    assert "interrupted" not in [e.kind for e in theirs.events()]
    assert len(tether.runs(key=theirs.key)) == 1
    gate.touch()
    assert theirs.result(timeout=30) == {"lines": 2, "pid": proc.pid}
    assert finish(proc)["status"] == "succeeded"
    assert contiguous(theirs.events())

"""The detached worker: ``start(..., detach=True)`` and ``tether worker``, run for real.

Workers are real processes (``python -m tether.cli worker helpers.checkpoint_pipelines``) that
find the database through ``TETHER_DB`` (the ``child_env`` fixture). Every execution of a run body
appends "<run id> <pid>" to a log file (``helpers.checkpoint_pipelines.job``), so the tests see
which process executed which run, and how many times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import checkpoint_pipelines
from helpers.checkpoint_pipelines import Children, first_line, lines, raw, wait_until
from helpers.postgres import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    kids = Children(child_env, tmp_path)
    yield kids
    kids.close()


def run_worker_once(children: Children, *args: str) -> str:
    """``tether worker helpers.checkpoint_pipelines --once``; returns its stdout (exit code 0 asserted)."""
    proc = children.worker("--once", "--poll", "0.05", *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def executed(log: Path) -> list[tuple[str, int]]:
    """(run id, pid) of every execution logged by ``checkpoint_pipelines.job``."""
    return [(run_id, int(pid)) for run_id, pid in (line.split() for line in lines(log))]


def test_detached_start_leaves_the_run_pending_for_a_worker(
    db: Path, children: Children, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    run = checkpoint_pipelines.job.start(log=str(log), detach=True)
    rec = run.snapshot()
    assert rec.status == "pending" and rec.target == "worker" and rec.owner is None
    assert not tether.workspace.default().runner().owns(run.id)  # this process will not execute it
    assert checkpoint_pipelines.job.start(log=str(log), detach=True).id == run.id  # idempotent, as ever
    assert [r.id for r in tether.runs()] == [run.id]  # a look (and orphan sweep) leaves it be
    assert run.status == "pending" and not log.exists()

    out = run_worker_once(children)
    assert "executed 1 run(s)" in out
    assert run.result(timeout=30) == {"run": run.id, "pid": executed(log)[0][1], "tag": 0}
    assert [(rid, pid != os.getpid()) for rid, pid in executed(log)] == [(run.id, True)]
    assert raw(db, "SELECT created_by, target FROM runs WHERE id = ?", run.id) == [("start", "worker")]


@pytest.mark.parametrize("death", ["exit", "kill"])
def test_a_detached_run_survives_the_death_of_the_process_that_started_it(
    db: Path, children: Children, tmp_path: Path, death: str
) -> None:
    log = tmp_path / "job.log"
    proc = children.spawn(pipeline="job", params={"log": str(log)}, detach=True, mode=death)
    run_id = first_line(proc)["id"]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (0 if death == "exit" else -signal.SIGKILL), err

    # neither the starter's exit (atexit) nor a recovery sweep here touches it: it waits for a worker
    assert raw(db, "SELECT status FROM runs WHERE id = ?", run_id) == [("pending",)]
    assert [(r.id, str(r.status)) for r in tether.runs()] == [(run_id, "pending")]
    assert tether.get_run(run_id).status == "pending"

    run_worker_once(children)
    run = tether.get_run(run_id)
    assert run.status == "succeeded"
    assert [rid for rid, _ in executed(log)] == [run_id]
    assert executed(log)[0][1] not in (os.getpid(), proc.pid)


def test_two_workers_never_execute_the_same_run(db: Path, children: Children, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    n = 20
    # the first runs wait until both workers have started one, so the two really race
    ids = [
        checkpoint_pipelines.job.start(log=str(log), tag=i, hold=0.05, pids=2, detach=True).id
        for i in range(n)
    ]
    go = tmp_path / "go"
    workers = [
        children.popen(
            *checkpoint_pipelines.GATED_WORKER,
            str(tmp_path / f"ready{w}"),
            str(go),
            "worker",
            "helpers.checkpoint_pipelines",
            "--once",
            "--concurrency",
            "3",
            "--poll",
            "0.02",
        )
        for w in range(2)
    ]
    wait_until(
        lambda: all((tmp_path / f"ready{w}").exists() for w in range(2)), what="both workers to be ready"
    )
    go.touch()  # both start claiming at the same moment
    outs = []
    for proc in workers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out.strip())

    done = executed(log)
    run_ids = [rid for rid, _ in done]
    assert len(run_ids) == len(set(run_ids)), "a run was executed twice"
    assert sorted(run_ids) == sorted(ids)
    assert raw(db, "SELECT status, count(*) FROM runs GROUP BY status") == [("succeeded", n)]
    pids = {pid for _, pid in done}
    assert pids <= {p.pid for p in workers}
    # both took part; a worker whose first claim lost the race to the other must not give up
    # (--once means "until no detached run is left", and 20 were left)
    assert len(pids) == 2, f"one worker executed every run; the workers said: {outs}"


def test_sigterm_stops_a_worker_mid_run_and_the_run_is_interrupted_then_resumable(
    db: Path, children: Children, tmp_path: Path
) -> None:
    log, gate = tmp_path / "spin.log", tmp_path / "gate"
    run = checkpoint_pipelines.spin.start(log=str(log), gate=str(gate), detach=True)
    worker = children.worker("--poll", "0.05")
    wait_until(
        lambda: (
            raw(db, "SELECT status, phase FROM runs WHERE id = ?", run.id) == [("running", "spin")]
            and len(lines(log)) == 2
        ),
        what="the run to be spinning",
    )
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "worker stopped; executed 1 run(s)" in out

    status, error = raw(db, "SELECT status, error FROM runs WHERE id = ?", run.id)[0]
    assert status == "interrupted", json.loads(error or "{}")
    assert "worker stopped" in json.loads(error)["message"]
    kinds = [r[0] for r in raw(db, "SELECT kind FROM events WHERE run_id = ? ORDER BY seq", run.id)]
    assert kinds[-1] == "interrupted" and "cancelled" not in kinds

    gate.touch()
    resumed = tether.get_run(run.id).resume()
    assert resumed.resumed_from == run.id
    run_worker_once(children)  # whoever executes the resumed attempt, it completes
    assert resumed.result(timeout=30)["attempt"] == 2
    assert lines(log)[0] == "prep" and lines(log).count("prep") == 1  # its step was not redone
    assert [line.split()[:2] for line in lines(log)[1:]] == [["spin", "1"], ["spin", "2"]]


def test_detach_of_a_pipeline_a_worker_cannot_import_is_a_clear_error(db: Path) -> None:
    @tether.pipeline
    def local_pipe(ctx: tether.Context) -> int:
        return 1

    with pytest.raises(tether.PipelineError) as info:
        local_pipe.start(detach=True)
    text = str(info.value)
    assert "inside another function" in text and "cannot import" in text
    assert "move it to a module" in text and "tether worker" in text

    ns: dict[str, object] = {"__name__": "__main__"}
    exec("def notebook_cell_pipe_c(ctx):\n    return 1\n", ns)  # what a notebook cell defines
    cell_pipe = tether.pipeline(ns["notebook_cell_pipe_c"])  # type: ignore[arg-type]
    with pytest.raises(tether.PipelineError) as info:
        cell_pipe.start(detach=True)
    text = str(info.value)
    assert "notebook cell" in text and "__main__" in text and "cannot import" in text
    assert "move it to a module" in text and "without detach=True" in text
    assert tether.runs() == []  # nothing was stored


def test_worker_of_a_module_that_does_not_exist_exits_1_with_a_one_line_error(
    child_env: dict[str, str], tmp_path: Path
) -> None:
    fresh = tmp_path / "never" / "runs.db"
    proc = subprocess.run(
        [sys.executable, "-m", "tether.cli", "worker", "nonexistent_module_c", "--once", "--db", str(fresh)],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("tether: error:") and "nonexistent_module_c" in err
    assert not fresh.exists()  # no database was created on the way


def failed_detached_run(children: Children, log: Path) -> tether.Run:
    """A detached run of ``steps`` whose first attempt a worker executed to failure."""
    run = checkpoint_pipelines.steps.start(log=str(log), n=2, fail_attempt=1, detach=True)
    run_worker_once(children)
    assert run.status == "failed" and lines(log) == ["prepare", "s0", "s1"]
    return run


def test_resume_of_a_detached_run_is_left_to_a_worker_and_not_claimed_here(
    db: Path, children: Children, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    run = failed_detached_run(children, log)
    resumed = run.resume()
    rec = resumed.snapshot()
    assert rec.target == "worker" and rec.status == "pending"  # it stays detached
    # ...so this process does not execute it, and must not present it as its own (a panel here
    # would follow it in "stream" mode, waiting for pushes from a runner that never runs it)
    assert not tether.workspace.default().runner().owns(resumed.id)
    run_worker_once(children)
    assert resumed.result(timeout=30)["attempt"] == 2
    assert lines(log) == ["prepare", "s0", "s1"]


def test_a_detached_run_can_be_resumed_from_a_process_that_does_not_define_its_pipeline(
    db: Path, children: Children, tmp_path: Path
) -> None:
    # e.g. the panel's Resume button in a fresh kernel: a worker executes the new attempt, so
    # this process needs no pipeline code (as for start(detach=True) it needs an importable one)
    log = tmp_path / "steps.log"
    run = failed_detached_run(children, log)
    proc = children.popen("-c", "import sys, tether; print(tether.get_run(sys.argv[1]).resume().id)", run.id)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    resumed = tether.get_run(out.strip())
    assert resumed.resumed_from == run.id and resumed.status == "pending"
    run_worker_once(children)
    assert resumed.result(timeout=30)["attempt"] == 2
    assert lines(log) == ["prepare", "s0", "s1"]

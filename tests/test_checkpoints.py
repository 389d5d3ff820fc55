"""Checkpoints and resume: ``ctx.step``, ``run.resume()``, ``start(policy="resume")`` and the cap on
automatic resumes, with real child processes killed by SIGKILL.

Every execution of a step body appends one line to a log file (see
``helpers.checkpoint_pipelines.record``), so the tests count what really ran, in whichever process
it ran.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import checkpoint_pipelines
from helpers.checkpoint_pipelines import Children, first_line, lines, raw, wait_until
from helpers.postgres import BOTH_BACKENDS
from helpers.util import counting_commits

pytestmark = BOTH_BACKENDS


@pytest.fixture
def children(child_env: dict[str, str], tmp_path: Path) -> Iterator[Children]:
    kids = Children(child_env, tmp_path)
    yield kids
    kids.close()


def names(values: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(v["name"], v["attempt"]) for v in values]


def checkpoint_names(db: Path, run_id: str) -> set[str]:
    return {r[0] for r in raw(db, "SELECT name FROM checkpoints WHERE run_id = ?", run_id)}


# -- in one process --------------------------------------------------------------------------


def test_a_step_runs_once_resume_skips_it_and_rerun_runs_it_again(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "steps.log")
    first = checkpoint_pipelines.steps.start(log=log, n=3, fail_attempt=1, twice=True)
    with pytest.raises(tether.RunFailed, match="planned failure of attempt 1"):
        first.result(timeout=30)
    # "s0" asked twice in one attempt: the body ran once, the second call got the stored value
    assert lines(log) == ["prepare", "s0", "s1", "s2"]
    assert checkpoint_names(db, first.id) == {"step:prepare", "step:s0", "step:s1", "step:s2"}

    resumed = first.resume()
    assert resumed.resumed_from == first.id and resumed.attempt == 2
    out = resumed.result(timeout=30)
    assert lines(log) == ["prepare", "s0", "s1", "s2"]  # nothing ran again
    assert names(out["values"]) == [("prepare", 1), ("s0", 1), ("s1", 1), ("s2", 1), ("s0", 1)]
    assert out["values"][1] == out["values"][-1]
    assert [e.kind for e in resumed.events()].count("checkpoint") == 0

    again = resumed.rerun()
    assert again.resumed_from is None and again.attempt == 3
    out = again.result(timeout=30)
    assert lines(log) == ["prepare", "s0", "s1", "s2"] * 2  # a rerun starts from scratch
    assert names(out["values"]) == [("prepare", 3), ("s0", 3), ("s1", 3), ("s2", 3), ("s0", 3)]
    assert [e.kind for e in again.events()].count("checkpoint") == 4
    assert [(r.attempt, str(r.status)) for r in again.attempts()] == [
        (1, "failed"),
        (2, "succeeded"),
        (3, "succeeded"),
    ]


def test_a_step_with_an_unstorable_value_fails_the_run_naming_the_step(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "bad.log")
    run = checkpoint_pipelines.bad_step.start(log=log)
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=30)
    error = info.value.error
    assert error is not None and error["type"] == "ParamsError"
    assert "step 'make_opaque': value['rows'][1]: " in error["message"]
    assert "Opaque" in error["message"] and "cannot be stored" in error["message"]
    assert "checkpoint=False" in error["message"]
    assert lines(log) == ["make_opaque"]
    assert checkpoint_names(db, run.id) == set()


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda ctx, fn: ctx.step("s\ud800", fn), "ctx.step() name 's\\ud800' holds a lone surrogate"),
        (lambda ctx, fn: ctx.step(5, fn), "ctx.step() needs a non-empty str name, got 5"),
        (lambda ctx, fn: ctx.step("", fn), "ctx.step() needs a non-empty str name, got ''"),
        (lambda ctx, fn: ctx.map(lambda i: fn(), [1], name="m\udc00"), "ctx.map() name 'm\\udc00' holds"),
    ],
    ids=["surrogate", "not-str", "empty", "map-surrogate"],
)
def test_a_step_name_that_cannot_name_a_checkpoint_fails_the_run_before_the_step_runs(
    db: Path, call: Any, said: str
) -> None:
    """BUG (before): a step named with a lone surrogate ran its function, then failed the run with a
    raw UnicodeEncodeError from sqlite3 (a non-str name: a raw TypeError)."""
    ran: list[str] = []

    @tether.pipeline(name=f"test_checkpoints.bad_name_{len(said)}")
    def body(ctx: tether.Context) -> None:
        call(ctx, lambda: ran.append("ran"))

    run = body.start()
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=30)
    error = info.value.error
    assert error is not None and error["type"] == "ParamsError", error
    assert said in error["message"]
    assert ran == []
    assert checkpoint_names(db, run.id) == set()


def test_checkpoint_false_opts_out_a_step_runs_again_on_resume(db: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "loose.log")
    first = checkpoint_pipelines.steps.start(log=log, n=1, fail_attempt=1, loose=True)
    with pytest.raises(tether.RunFailed):
        first.result(timeout=30)
    assert lines(log) == ["prepare", "s0", "loose"]
    assert "step:loose" not in checkpoint_names(db, first.id)

    out = first.resume().result(timeout=30)
    assert out["loose"] == [1, 2, 3]  # the set came back as it is, not through JSON
    assert lines(log) == ["prepare", "s0", "loose", "loose"]  # only the opted-out step ran again


# -- SIGKILL mid-run, then resume here -------------------------------------------------------


@pytest.mark.parametrize("how", ["run.resume", "start-policy-resume"])
def test_sigkill_mid_run_then_resume_skips_the_completed_steps(
    db: Path, children: Children, tmp_path: Path, how: str
) -> None:
    log = str(tmp_path / "steps.log")
    params = {"log": log, "n": 4, "hang_at": 2}
    proc = children.spawn(pipeline="steps", params=params)
    run_id = first_line(proc)["id"]
    # s2 has started (its line is logged) and blocks; prepare, s0 and s1 are stored
    wait_until(
        lambda: checkpoint_names(db, run_id) == {"step:prepare", "step:s0", "step:s1"} and "s2" in lines(log),
        what="three checkpoints and s2 in flight",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert raw(db, "SELECT status, phases_done FROM runs WHERE id = ?", run_id) == [
        ("running", '["prepare"]')
    ]

    if how == "run.resume":
        old = tether.get_run(run_id)
        assert old.status == "interrupted"
        new = old.resume()
    else:
        new = checkpoint_pipelines.steps.start(**params, policy="resume")
    assert new.id != run_id and new.attempt == 2 and new.resumed_from == run_id
    assert "prepare" in new.phases_done  # completed by the attempt it resumed, shown at once

    out = new.result(timeout=30)
    child_pid = out["values"][0]["pid"]
    assert child_pid != os.getpid()
    assert [(v["name"], v["attempt"], v["pid"] == child_pid) for v in out["values"]] == [
        ("prepare", 1, True),
        ("s0", 1, True),
        ("s1", 1, True),
        ("s2", 2, False),
        ("s3", 2, False),
    ]
    # completed steps ran once; s2 was in flight when the process died, so it ran again
    assert lines(log) == ["prepare", "s0", "s1", "s2", "s2", "s3"]
    assert new.phases_done == ["prepare", "steps", "finish"]
    assert tether.get_run(run_id).status == "interrupted"
    created_by = raw(db, "SELECT created_by FROM runs WHERE id = ?", new.id)[0][0]
    assert created_by == ("resume" if how == "run.resume" else "start:resume")


# -- the cap on automatic resumes ------------------------------------------------------------

CAP = 2


def start_in_child(children: Children, log: str, heal: str) -> tuple[int, list[str]]:
    """A child calls suicide.start(policy="resume") with max_auto_resumes=CAP; (exit code, stdout)."""
    proc = children.spawn(
        configure={"max_auto_resumes": CAP},
        pipeline="suicide",
        params={"log": log, "heal": heal},
        policy="resume",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode, out.splitlines()


def crash_until_capped(db: Path, children: Children, log: str, heal: str) -> str:
    """Start the self-killing pipeline from fresh processes until the cap stops it; the failed id."""
    codes = [start_in_child(children, log, heal)[0] for _ in range(CAP + 1)]
    assert codes == [-signal.SIGKILL] * (CAP + 1)  # attempt 1, then CAP automatic resumes
    code, out = start_in_child(children, log, heal)
    assert code == 0
    capped = json.loads(out[-1])
    assert capped["status"] == "failed"
    assert lines(log) == ["before"] + [f"body {a}" for a in range(1, CAP + 2)]
    return str(capped["id"])


def test_automatic_resumes_are_capped_and_a_manual_resume_is_not(
    db: Path, children: Children, tmp_path: Path
) -> None:
    log, heal = str(tmp_path / "suicide.log"), str(tmp_path / "heal")
    capped_id = crash_until_capped(db, children, log, heal)

    capped = tether.get_run(capped_id)
    assert capped.attempt == CAP + 2 and capped.status == "failed"
    assert capped.error is not None
    message = capped.error["message"]
    assert f"max_auto_resumes={CAP}" in message and "automatic resume stopped" in message
    assert "run.resume()" in message  # what to do next
    with pytest.raises(tether.RunFailed, match="automatic resume stopped"):
        capped.result(timeout=1)
    statuses = [(r.attempt, str(r.status)) for r in capped.attempts()]
    assert statuses == [(a, "interrupted") for a in range(1, CAP + 2)] + [(CAP + 2, "failed")]

    # run.resume() is manual: not capped, even when each of them dies too (more than CAP times)
    last = capped_id
    for _ in range(CAP + 1):
        proc = children.spawn(configure={"max_auto_resumes": CAP}, resume=last)
        _, err = proc.communicate(timeout=60)  # the body kills it, maybe before it prints
        assert proc.returncode == -signal.SIGKILL, err
        last = raw(db, "SELECT id FROM runs ORDER BY attempt DESC LIMIT 1")[0][0]
    manual = [f"body {a}" for a in range(CAP + 3, 2 * CAP + 4)]
    assert lines(log) == ["before"] + [f"body {a}" for a in range(1, CAP + 2)] + manual

    Path(heal).touch()  # the cause is fixed: a manual resume here completes the run
    final = tether.get_run(last).resume()
    assert final.result(timeout=30) == {"attempt": 2 * CAP + 4}
    assert lines(log)[-1] == f"body {2 * CAP + 4}"
    assert lines(log).count("before") == 1  # the first attempt's checkpoint served every resume


def test_after_the_cap_is_reached_a_later_start_with_policy_resume_does_not_resume_again(
    db: Path, children: Children, tmp_path: Path
) -> None:
    # The cap exists so that "a run that crashes its process every time ends as failed instead of
    # looping at every kernel start" (DESIGN, semantics 5). The next kernel start with
    # policy="resume" must therefore not crash the process again.
    log, heal = str(tmp_path / "suicide.log"), str(tmp_path / "heal")
    capped_id = crash_until_capped(db, children, log, heal)
    executed = lines(log)

    code, out = start_in_child(children, log, heal)
    assert lines(log) == executed, "the body ran again after the cap was reached"
    assert code == 0
    assert json.loads(out[-1]) == {"id": capped_id, "status": "failed"}


# -- what a step's checkpoint commits ---------------------------------------------------------------


@tether.pipeline(name="test_checkpoints.committed")
def _committed(ctx: tether.Context, db: str) -> list[Any]:
    """After each step returns, what another connection reads of it: the checkpoint, and the
    progress the step was taken at."""
    seen = []
    row = "SELECT last_seq, updated_at, done FROM runs WHERE id = ?"
    before = raw(db, row, ctx.run_id)
    ctx.step("alone", lambda: 1)  # nothing else changed since the start
    seen.append(raw(db, "SELECT name FROM checkpoints WHERE run_id = ?", ctx.run_id))
    seen.append(raw(db, row, ctx.run_id) == before)  # the run's row untouched: no event written
    ctx.advance(5)
    ctx.log("between")
    ctx.step("with progress", lambda: 2)
    seen.append(raw(db, "SELECT done FROM runs WHERE id = ?", ctx.run_id))
    seen.append(raw(db, "SELECT count(*) FROM checkpoints WHERE run_id = ?", ctx.run_id))
    return seen


def test_a_step_commits_its_checkpoint_before_it_returns_with_the_progress_of_its_moment(
    db: Path, workspace: tether.workspace.Workspace
) -> None:
    """A step with nothing else to write commits its checkpoint row alone (its ``checkpoint``
    event follows with the run's next write, in order); one taken after a change of progress
    commits that progress and the buffered log lines with it. Either way the checkpoint is
    committed when ``ctx.step`` returns, so a crash right after it never runs the step again."""
    with counting_commits(workspace.store()) as commits:
        run = _committed.start(db=str(db))
        alone, untouched, done, count = run.result(timeout=30)
    assert alone == [("step:alone",)] and untouched is True
    assert float(done[0][0]) == 5 and count == [(2,)]
    assert [op for op in commits if op != "flush"] == ["start", "put_checkpoint", "put_checkpoint", "finish"]
    events = run.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind, e.data.get("name") or e.data.get("message")) for e in events[2:]] == [
        ("checkpoint", "step:alone"),
        ("log", "between"),
        ("checkpoint", "step:with progress"),
        ("succeeded", None),
    ]


_ODD = 'a "quoted"\\ name, caf\u00e9 \u2603 \n'


@tether.pipeline(name="test_checkpoints.odd_name")
def _odd_name(ctx: tether.Context) -> int:
    return ctx.step(_ODD, lambda: 1)  # nothing else changed: its event is buffered, as text


def test_the_event_of_a_checkpoint_written_alone_is_canonical_json_of_its_name(db: Path) -> None:
    run = _odd_name.start()
    assert run.result(timeout=30) == 1
    rows = raw(db, "SELECT data FROM events WHERE run_id = ? AND kind = 'checkpoint'", run.id)
    assert rows == [(tether.codec.dumps({"name": "step:" + _ODD}),)]
    assert [e.data for e in run.events() if e.kind == "checkpoint"] == [{"name": "step:" + _ODD}]

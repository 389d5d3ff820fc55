"""Idempotent start(), start policies, attempts, the run listing and the typed errors of the engine.

Everything here runs in this process against a real SQLite file (the ``db`` fixture), except the
one test that needs a process without the pipeline; and again against a fresh PostgreSQL database
(``BOTH_BACKENDS``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers.postgres import BOTH_BACKENDS
from helpers.util import counting_commits, wait_until

pytestmark = BOTH_BACKENDS


@pytest.fixture
def gate(db: Path) -> Iterator[threading.Event]:
    """An event bodies can block on; always set at teardown so no body outlives its test."""
    event = threading.Event()
    yield event
    event.set()


# -- idempotent start ---------------------------------------------------------------------------


def test_repeated_start_with_same_params_returns_the_same_run(db: Path) -> None:
    calls: list[Any] = []

    @tether.pipeline
    def p(ctx: tether.Context, x: int, cfg: dict | None = None) -> int:
        calls.append(x)
        return x * 10

    first = p.start(x=1, cfg={"a": 1, "b": [1, 2]})
    again = [p.start(x=1, cfg={"b": [1, 2], "a": 1}) for _ in range(5)]  # dict order is irrelevant
    assert {r.id for r in again} == {first.id}
    assert all(r.key == first.key and r.attempt == 1 for r in again)
    assert first.result(timeout=20) == 10
    assert p.start(x=1, cfg={"a": 1, "b": [1, 2]}).id == first.id  # also once it has ended

    other = p.start(x=2, cfg={"a": 1, "b": [1, 2]})
    assert other.id != first.id and other.key != first.key
    assert other.result(timeout=20) == 20
    assert sorted(calls) == [1, 2]  # each distinct params executed exactly once
    assert first.params == {"x": 1, "cfg": {"a": 1, "b": [1, 2]}}
    assert len(tether.runs(pipeline=p)) == 2


def test_defaults_are_bound_before_hashing(db: Path) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context, n: int = 3, label: str = "x") -> int:
        calls.append(n)
        return n

    a = p.start()
    assert p.start(n=3).id == a.id
    assert p.start(3).id == a.id
    assert p.start(3, "x").id == a.id
    assert p.start(label="x").id == a.id
    assert a.params == {"n": 3, "label": "x"}
    assert a.result(timeout=20) == 3
    assert p.start(n=4).id != a.id
    p.start(n=4).wait(timeout=20)
    assert calls == [3, 4]


def test_explicit_key(db: Path) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context, x: int) -> int:
        calls.append(x)
        return x

    run = p.start(x=1, key="my-key")
    assert run.key == "my-key"
    assert p.start(x=1, key="my-key").id == run.id
    assert tether.runs(key="my-key") == [run]
    default = p.start(x=1)  # the default key is another key, hence another run
    assert default.id != run.id and default.key != "my-key"
    run.wait(timeout=20)
    default.wait(timeout=20)
    assert calls == [1, 1]
    with pytest.raises(tether.ParamsError):
        p.start(x=1, key="")


def test_params_mismatch_on_an_explicit_key_is_a_key_conflict(db: Path, gate: threading.Event) -> None:
    @tether.pipeline
    def p(ctx: tether.Context, x: int, mode: str = "fast") -> int:
        gate.wait(30)
        return x

    run = p.start(x=1, key="shared")
    # while the stored run is active
    with pytest.raises(tether.KeyConflict) as info:
        p.start(x=2, key="shared")
    text = str(info.value)
    assert "x=1" in text and "2" in text, text
    assert "mode" not in text, text  # only the difference is named
    assert info.value.run is not None and info.value.run.id == run.id
    gate.set()
    assert run.result(timeout=20) == 1
    # and once it has ended
    with pytest.raises(tether.KeyConflict) as info:
        p.start(x=1, mode="slow", key="shared")
    assert "mode" in str(info.value) and '"fast"' in str(info.value) and "slow" in str(info.value)
    assert [r.id for r in tether.runs(key="shared")] == [run.id]  # nothing new was created


def test_a_version_change_is_a_code_change_a_new_attempt(db: Path) -> None:
    name = "versioned-pipeline"

    @tether.pipeline(version=1, name=name)
    def v1(ctx: tether.Context, x: int) -> str:
        return "v1"

    first = v1.start(x=1)
    assert first.result(timeout=20) == "v1"

    @tether.pipeline(version=2, name=name)  # the code changed meaning: same name, new version
    def v2(ctx: tether.Context, x: int) -> str:
        return "v2"

    second = v2.start(x=1)  # never the ended run of version 1 as if it were version 2's
    assert second.attempt == 2 and second.key == first.key
    assert second.created_by == "start:code"
    assert second.result(timeout=20) == "v2"
    assert second.version == "2"
    assert v2.start(x=1) == second  # the same version again: attached
    assert tether.get_run(first.id).result() == "v1"


# -- policies -----------------------------------------------------------------------------------


def test_policy_attach_is_the_default_and_attaches_to_an_active_run(db: Path, gate: threading.Event) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context) -> str:
        calls.append(1)
        gate.wait(30)
        return "done"

    run = p.start()
    wait_until(lambda: run.status == "running", what="the run to start")
    assert p.start().id == run.id
    assert p.start(policy="attach").id == run.id
    try:  # whether rerun attaches or refuses here, a key never gets a second active run
        assert p.start(policy="rerun").id == run.id
    except (tether.RunActive, tether.KeyConflict):
        pass
    assert [r.id for r in tether.runs(key=run.key)] == [run.id]
    gate.set()
    assert run.result(timeout=20) == "done"
    assert calls == [1]
    with pytest.raises(ValueError):
        p.start(policy="bogus")  # type: ignore[arg-type]


def test_policy_fail_raises_on_an_active_run_and_returns_an_ended_one(
    db: Path, gate: threading.Event
) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context) -> str:
        calls.append(1)
        gate.wait(30)
        return "ok"

    run = p.start()
    with pytest.raises(tether.KeyConflict) as info:
        p.start(policy="fail")
    assert run.id in str(info.value)
    assert info.value.run is not None and info.value.run.id == run.id
    gate.set()
    run.wait(timeout=20)
    ended = p.start(policy="fail")
    assert ended.id == run.id and ended.status == "succeeded" and ended.result() == "ok"
    assert calls == [1]


def test_policy_rerun_makes_a_new_attempt_and_keeps_attempt_1(db: Path) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context, x: int) -> int:
        calls.append(x)
        return len(calls)

    first = p.start(x=5)
    assert first.result(timeout=20) == 1
    second = p.start(x=5, policy="rerun")
    assert second.id != first.id and second.key == first.key and second.attempt == 2
    assert second.resumed_from is None
    assert second.result(timeout=20) == 2
    assert [(r.attempt, r.status, r.result()) for r in first.attempts()] == [
        (1, "succeeded", 1),
        (2, "succeeded", 2),
    ]
    assert p.start(x=5).id == second.id  # "the run for a key" is its latest attempt


def test_policy_resume_reuses_step_results(db: Path) -> None:
    calls = {"a": 0, "b": 0, "body": 0}
    broken = {"b": True}

    def step_a() -> dict[str, int]:
        calls["a"] += 1
        return {"files": 7}

    def step_b(files: int) -> int:
        calls["b"] += 1
        if broken["b"]:
            raise RuntimeError("step b broke")
        return files * 2

    @tether.pipeline
    def p(ctx: tether.Context, repo: str) -> dict[str, Any]:
        calls["body"] += 1
        a = ctx.step("scan", step_a)
        b = ctx.step("double", step_b, a["files"])
        return {"a": a, "b": b, "resumed_from": ctx.resumed_from}

    first = p.start(repo="r")
    with pytest.raises(tether.RunFailed):
        first.result(timeout=20)
    assert calls == {"a": 1, "b": 1, "body": 1}

    broken["b"] = False
    second = p.start(repo="r", policy="resume")
    assert second.attempt == 2 and second.resumed_from == first.id
    assert second.result(timeout=20) == {"a": {"files": 7}, "b": 14, "resumed_from": first.id}
    assert calls == {"a": 1, "b": 2, "body": 2}  # the completed step was not called again
    assert tether.get_run(first.id).status == "failed"  # attempt 1 is kept as it was

    assert p.start(repo="r", policy="resume").id == second.id  # nothing to resume in a success

    third = p.start(repo="r", policy="rerun")  # rerun starts from scratch: every step again
    assert third.result(timeout=20)["resumed_from"] is None
    assert calls == {"a": 2, "b": 3, "body": 3}


def test_a_succeeded_run_is_returned_with_its_result_and_not_executed_again(db: Path, tmp_path: Path) -> None:
    marker = tmp_path / "executions.txt"

    @tether.pipeline
    def p(ctx: tether.Context, x: int) -> dict[str, int]:
        with open(marker, "a") as fh:
            fh.write("ran\n")
        return {"x": x}

    run = p.start(x=1)
    assert run.result(timeout=20) == {"x": 1}
    for policy in ("attach", "fail", "resume"):
        again = p.start(x=1, policy=policy)  # type: ignore[arg-type]
        assert again.id == run.id
        assert again.status == "succeeded"
        assert again.result(timeout=0.5) == {"x": 1}  # at once: nothing to wait for
    assert marker.read_text().splitlines() == ["ran"]
    assert len(tether.runs()) == 1


def test_sixteen_threads_racing_start_make_exactly_one_run(db: Path) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    @tether.pipeline
    def p(ctx: tether.Context, x: int) -> str:
        with lock:
            calls.append(x)
        time.sleep(0.2)  # stay active while the others attach (workload, not synchronisation)
        return "ok"

    barrier = threading.Barrier(16)
    ids: list[str] = []
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            barrier.wait(timeout=20)
            ids.append(p.start(x=1).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(ids) == 16 and len(set(ids)) == 1
    assert tether.get_run(ids[0]).result(timeout=20) == "ok"
    assert calls == [1]
    assert [r.id for r in tether.runs(pipeline=p)] == ids[:1]


# -- attempts -----------------------------------------------------------------------------------


def test_rerun_creates_attempt_2_and_keeps_attempt_1(db: Path) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context) -> int:
        calls.append(1)
        return len(calls)

    first = p.start()
    assert first.result(timeout=20) == 1
    second = first.rerun()
    assert second.attempt == 2 and second.key == first.key and second.id != first.id
    assert second.result(timeout=20) == 2
    attempts = second.attempts()
    assert [r.id for r in attempts] == [first.id, second.id]
    assert [r.attempt for r in attempts] == [1, 2]
    assert first.status == "succeeded" and first.result() == 1  # history kept
    assert len(calls) == 2
    assert {r.id for r in tether.runs(key=first.key)} == {first.id, second.id}


def test_rerun_while_active_raises_run_active(db: Path, gate: threading.Event) -> None:
    @tether.pipeline
    def p(ctx: tether.Context) -> str:
        gate.wait(30)
        return "ok"

    run = p.start()
    with pytest.raises(tether.RunActive):
        run.rerun()
    with pytest.raises(tether.RunActive):
        run.resume()
    assert len(run.attempts()) == 1
    gate.set()
    run.wait(timeout=20)
    assert run.rerun().result(timeout=20) == "ok"  # allowed once it has ended


def test_rerun_in_a_process_without_the_pipeline_raises_pipeline_not_found(
    db: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    code = (
        "import tether\n"
        "@tether.pipeline\n"
        "def defined_only_in_the_child(ctx):\n"
        "    return 42\n"
        "run = defined_only_in_the_child.start()\n"
        "assert run.result(timeout=30) == 42\n"
        "print(run.id)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    run = tether.get_run(proc.stdout.strip())
    assert run.pipeline == "defined_only_in_the_child"
    with pytest.raises(tether.PipelineNotFound) as info:
        run.rerun()
    assert "defined_only_in_the_child" in str(info.value)
    assert isinstance(info.value, LookupError)
    assert len(run.attempts()) == 1  # nothing was created


# -- listing and lookup -------------------------------------------------------------------------


def test_runs_lists_every_attempt_newest_first_with_filters(db: Path) -> None:
    @tether.pipeline
    def p(ctx: tether.Context, x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    @tether.pipeline
    def q(ctx: tether.Context) -> str:
        return "q"

    made = []
    for x in (1, 2, 3):
        made.append(p.start(x=x))
        made[-1].wait(timeout=20)
    made.append(q.start())
    made[-1].wait(timeout=20)
    made.append(made[0].rerun())
    made[-1].wait(timeout=20)
    newest_first = [r.id for r in reversed(made)]

    assert [r.id for r in tether.runs()] == newest_first
    assert all(isinstance(r, tether.Run) for r in tether.runs())
    assert [r.id for r in tether.runs(pipeline=p)] == [i for i in newest_first if i != made[3].id]
    assert [r.id for r in tether.runs(pipeline=q.name)] == [made[3].id]
    assert [r.id for r in tether.runs(status="failed")] == [made[2].id]
    assert [r.id for r in tether.runs(pipeline=p, status="succeeded")] == [made[4].id, made[1].id, made[0].id]
    assert [r.id for r in tether.runs(key=made[0].key)] == [made[4].id, made[0].id]
    assert [r.id for r in tether.runs(limit=2)] == newest_first[:2]
    assert tether.runs(pipeline="no-such-pipeline") == []


def test_get_run_of_an_unknown_id_raises_run_not_found(db: Path) -> None:
    with pytest.raises(tether.RunNotFound) as info:
        tether.get_run("does-not-exist")
    assert isinstance(info.value, LookupError)
    assert "does-not-exist" in str(info.value)

    @tether.pipeline
    def p(ctx: tether.Context) -> int:
        return 1

    run = p.start()
    assert tether.get_run(run.id) == run
    assert tether.get_run(run.id).result(timeout=20) == 1


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["ctx, key", "ctx, x, policy='attach'", "ctx, *, key=None"])
def test_reserved_parameter_names_are_rejected_at_decoration(db: Path, signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def reserved({signature}):\n    return None\n", namespace)
    reserved = "key" if "key" in signature else "policy"
    with pytest.raises(tether.PipelineError) as info:
        tether.pipeline(namespace["reserved"])
    assert repr(reserved) in str(info.value)
    with pytest.raises(tether.PipelineError):
        tether.pipeline(phases=["a"])(namespace["reserved"])


class Opaque:
    pass


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"payload": Opaque()}, "payload"),
        ({"payload": math.nan}, "payload"),
        ({"payload": math.inf}, "payload"),
        ({"payload": {1: "one"}}, "payload"),
        ({"payload": {"inner": [1, {"deep": Opaque()}]}}, "payload"),
        ({"payload": {1, 2}}, "payload"),
        ({"payload": b"bytes"}, "payload"),
        ({"ok": 1, "extra": Path("x")}, "extra"),  # through **kwargs
    ],
    ids=["object", "nan", "inf", "int-key", "nested", "set", "bytes", "kwargs"],
)
def test_non_json_params_raise_params_error_naming_the_parameter(
    db: Path, params: dict[str, Any], named: str
) -> None:
    calls: list[int] = []

    @tether.pipeline
    def p(ctx: tether.Context, payload: Any = None, **more: Any) -> None:
        calls.append(1)

    with pytest.raises(tether.ParamsError) as info:
        p.start(**params)
    assert isinstance(info.value, TypeError)
    assert repr(named) in str(info.value), str(info.value)
    assert tether.runs() == []
    assert calls == []


def test_nested_params_error_points_inside_the_parameter(db: Path) -> None:
    @tether.pipeline
    def p(ctx: tether.Context, payload: Any) -> None:
        return None

    with pytest.raises(tether.ParamsError) as info:
        p.start(payload={"inner": [1, {"deep": Opaque()}]})
    text = str(info.value)
    assert "'payload'" in text and "'inner'" in text and "'deep'" in text, text
    assert "Opaque" in text


# -- execution ----------------------------------------------------------------------------------


def test_max_concurrency_extra_runs_wait_as_pending_then_run(db: Path, gate: threading.Event) -> None:
    tether.configure(max_concurrency=1)
    order: list[str] = []

    @tether.pipeline
    def p(ctx: tether.Context, name: str) -> str:
        order.append(f"{name}-start")
        if name == "a":
            gate.wait(30)
        order.append(f"{name}-end")
        return name

    a = p.start(name="a")
    b = p.start(name="b")
    wait_until(lambda: a.status == "running", what="run a to start")
    assert b.status == "pending"
    assert order == ["a-start"]
    gate.set()
    assert b.result(timeout=20) == "b"
    assert a.result(timeout=20) == "a"
    assert order == ["a-start", "a-end", "b-start", "b-end"]
    assert [e.kind for e in b.events()][:2] == ["created", "started"]


def test_failure_stores_type_message_and_traceback(db: Path) -> None:
    class PipelineBroke(Exception):
        pass

    def inner_helper(n: int) -> None:
        raise PipelineBroke(f"cannot handle {n} files")

    @tether.pipeline
    def p(ctx: tether.Context, n: int) -> None:
        ctx.phase("work")
        inner_helper(n)

    run = p.start(n=9)
    with pytest.raises(tether.RunFailed) as info:
        run.result(timeout=20)
    assert isinstance(info.value, tether.RunError)
    assert "cannot handle 9 files" in str(info.value)
    assert run.status == "failed"
    for error in (run.error, info.value.error, tether.get_run(run.id).error):
        assert error is not None
        assert error["type"].endswith("PipelineBroke")
        assert error["message"] == "cannot handle 9 files"
        assert "inner_helper" in error["traceback"]
        assert "PipelineBroke: cannot handle 9 files" in error["traceback"]
    assert run.events()[-1].kind == "failed"


def test_status_is_a_str_enum_and_progress_a_named_tuple(db: Path, gate: threading.Event) -> None:
    @tether.pipeline(phases=["counting"])
    def p(ctx: tether.Context) -> str:
        ctx.phase("counting", total=10)
        ctx.advance(3)
        gate.wait(30)
        ctx.advance(7)
        return "ok"

    run = p.start()
    wait_until(lambda: run.progress == (3, 10), what="progress 3/10")
    progress = run.progress
    assert isinstance(progress, tuple) and progress.done == 3 and progress.total == 10
    assert type(progress)._fields == ("done", "total")
    assert run.status == "running" and run.phase == "counting"
    gate.set()
    assert run.result(timeout=20) == "ok"

    status = run.status
    assert isinstance(status, str) and isinstance(status, tether.Status)
    assert status == "succeeded" and status is tether.Status.SUCCEEDED
    assert str(status) == "succeeded" and f"{status}" == "succeeded" and f"{status:>10}" == " succeeded"
    assert json.dumps(status) == '"succeeded"'
    assert tether.get_run(run.id).progress == (10, 10)
    assert tuple(tether.get_run(run.id).progress) == (10, 10)


# -- a run this process executes at once: one transaction to start it, a thread ready -------------


@tether.pipeline(name="test_start.stepped")
def _stepped(ctx: tether.Context, i: int) -> list[int]:
    return [ctx.step(f"s{k}", lambda k=k: i * 10 + k) for k in range(3)]


def test_a_new_run_this_process_executes_is_started_and_claimed_in_one_commit(
    db: Path, workspace: tether.workspace.Workspace
) -> None:
    """start() creates the run already running for this process (no pending row is ever
    committed, no claim follows); with every slot taken it waits pending and is claimed later."""
    with counting_commits(workspace.store()) as commits:
        run = _stepped.start(i=1)
        assert run.result(timeout=30) == [10, 11, 12]
    ops = [op for op in commits if op != "flush"]  # the flusher's ticks come when they come
    # nothing but the step changed: each checkpoint is committed alone (see test_checkpoints)
    assert ops == ["start", "put_checkpoint", "put_checkpoint", "put_checkpoint", "finish"], commits
    kinds = [e.kind for e in run.events()]
    assert kinds == ["created", "started", "checkpoint", "checkpoint", "checkpoint", "succeeded"], kinds
    assert run.tries == 1 and run.attempts()[0].status == "succeeded"


def test_a_run_started_with_every_slot_taken_waits_pending_then_is_claimed(
    db: Path, gate: threading.Event
) -> None:
    tether.configure(max_concurrency=1)

    @tether.pipeline
    def blocker(ctx: tether.Context) -> int:
        gate.wait(30)
        return 1

    first = blocker.start()
    wait_until(lambda: first.status == "running", what="the first run to hold the only slot")
    second = _stepped.start(i=2)
    assert second.status == "pending"
    gate.set()
    assert second.result(timeout=30) == [20, 21, 22]
    assert [e.kind for e in second.events()][:2] == ["created", "started"]


def test_run_threads_persist_and_take_the_next_body_and_end_with_the_workspace(
    workspace: tether.workspace.Workspace,
) -> None:
    seen: list[int] = []

    @tether.pipeline
    def where(ctx: tether.Context, i: int) -> str:
        seen.append(threading.get_ident())
        return threading.current_thread().name

    names = [where.start(i=i).result(timeout=30) for i in range(20)]
    assert len(set(seen)) == 1, "one after the other, the runs share one run thread"
    assert names[-1].startswith("tether-run-")
    workspace.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("tether-run-")]


def test_result_of_a_run_that_succeeded_here_reads_no_row(workspace: tether.workspace.Workspace) -> None:
    """The body's result is decoded from the text its end committed, kept in memory: result()
    reads neither the run's row nor a checkpoint (a first attempt has none to look for)."""
    store = workspace.store()
    reads: list[str] = []
    for name in ("get", "checkpoint", "latest"):
        orig = getattr(store, name)

        def spy(*args: Any, _orig: Any = orig, _name: str = name, **kwargs: Any) -> Any:
            reads.append(_name)
            return _orig(*args, **kwargs)

        setattr(store, name, spy)
    try:
        run = _stepped.start(i=3)
        del reads[:]  # the start's own read (is the key new?)
        assert run.result(timeout=30) == [30, 31, 32]
        assert reads == []
        assert _stepped.start(i=3).result() == [30, 31, 32]  # attached: read from the store
        assert "latest" in reads
    finally:
        for name in ("get", "checkpoint", "latest"):
            delattr(store, name)
    assert workspace.get_run(run.id).result() == [30, 31, 32]


def test_idle_run_threads_end_and_a_body_handed_over_as_one_times_out_still_runs(
    workspace: tether.workspace.Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle run thread ends after its idle time; with that time tiny, bodies are handed over
    just as idle threads give up, many at once: every run still executes, none is stranded."""
    from tether.runner import _execute

    monkeypatch.setattr(_execute, "_IDLE_S", 0.0005)
    tether.configure(max_concurrency=4)

    @tether.pipeline
    def tiny(ctx: tether.Context, i: int) -> int:
        return i

    runs = [tiny.start(i=i) for i in range(200)]
    assert [r.result(timeout=60) for r in runs] == list(range(200))
    assert [tiny.start(i=1000 + i).result(timeout=30) for i in range(50)] == [1000 + i for i in range(50)]
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("tether-run-")],
        what="the idle run threads to end",
    )
    assert workspace.runner().slots == 0

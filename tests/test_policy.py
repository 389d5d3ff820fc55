"""tether.policy.decide: the start/resume policy as a pure function, over every decision kind.

No database: records are built in memory, so each row of the table says what a start() call means
for a key given its stored attempts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, get_args

import pytest

from tether.codec import dumps
from tether.model import Control, RunRecord, Status
from tether.pipeline import conflict_message
from tether.policy import Attach, Conflict, ConflictKind, Decision, NewAttempt, StartRequest, decide

CAP = json.dumps({"type": "ResumeCapReached", "message": "stopped", "traceback": ""})


def rec(
    status: str = "succeeded",
    attempt: int = 1,
    params: dict[str, Any] | None = None,
    pipeline: str = "p",
    version: str | None = None,
    code: str | None = "ast:1",
    **more: Any,
) -> RunRecord:
    return RunRecord(
        id=f"run{attempt}",
        key="k",
        attempt=attempt,
        pipeline=pipeline,
        version=version,
        params_json=dumps({"x": 1} if params is None else params),
        status=Status(status),
        phase=None,
        phases=[],
        done=0,
        total=None,
        message=None,
        error_json=more.pop("error_json", None),
        result_json=None,
        created_at=0.0,
        started_at=None,
        ended_at=None,
        updated_at=0.0,
        owner=None,
        target=None,
        lease_until=None,
        cancel_requested=False,
        resumed_from=None,
        last_seq=1,
        code=code,
        **more,
    )


def req(policy: str = "attach", params: dict[str, Any] | None = None, **more: Any) -> StartRequest:
    fields: dict[str, Any] = {"pipeline": "p", "key": "k", "version": None, "code": "ast:1"}
    fields.update(more)
    return StartRequest(params_json=dumps({"x": 1} if params is None else params), policy=policy, **fields)


LINEAGE = Control(parent="parent1", lineage=("parent1", "parent0"))
INTERRUPTED_RESUMES = [rec("interrupted", a, created_by="start:resume") for a in (4, 3, 2)]

# (name, existing newest first, request, expected decision)
CASES: list[tuple[str, list[RunRecord], StartRequest, Decision]] = [
    ("first start", [], req(), NewAttempt(1, "start", code="ast:1")),
    ("first start, any policy", [], req("fail"), NewAttempt(1, "start", code="ast:1")),
    ("ended run, same call: attach", [rec()], req(), Attach(rec())),
    ("ended run, policy fail: attach", [rec("failed")], req("fail"), Attach(rec("failed"))),
    ("running, attach", [rec("running")], req(), Attach(rec("running"))),
    ("running, other code: attach, saying so", [rec("running")], req(code="ast:2"),
     Attach(rec("running"), "code ast:1 -> ast:2")),
    ("running, policy fail: conflict", [rec("running")], req("fail"), Conflict("active", rec("running"))),
    ("pending, rerun: attach", [rec("pending")], req("rerun"), Attach(rec("pending"))),
    ("running, other params: conflict", [rec("running")], req(params={"x": 2}),
     Conflict("params", rec("running"), ("x=1, not 2",))),
    ("running, other pipeline: conflict", [rec("running")], req(pipeline="q"),
     Conflict("pipeline", rec("running"), ("pipeline 'p', not 'q'",))),
    ("ended, other pipeline, rerun: conflict", [rec()], req("rerun", pipeline="q"),
     Conflict("pipeline", rec(), ("pipeline 'p', not 'q'",))),
    ("ended, other params: conflict", [rec("failed")], req(params={"x": 1, "y": 2}),
     Conflict("params", rec("failed"), ("no parameter 'y'",))),
    ("ended, a param missing: conflict", [rec(params={"x": 1, "y": 2})], req(),
     Conflict("params", rec(params={"x": 1, "y": 2}), ("parameter 'y'=2 that this call lacks",))),
    ("resume, other params: conflict", [rec("failed")], req("resume", params={"x": 2}),
     Conflict("resume_params", rec("failed"), ("x=1, not 2",))),
    ("rerun, other params: new attempt", [rec()], req("rerun", params={"x": 2}),
     NewAttempt(2, "start:rerun", None, "ast:1")),
    ("rerun of a success", [rec()], req("rerun"), NewAttempt(2, "start:rerun", None, "ast:1")),
    ("resume of a failure", [rec("failed")], req("resume"), NewAttempt(2, "start:resume", "run1", "ast:1")),
    ("resume of a success: attach", [rec()], req("resume"), Attach(rec())),
    ("resume of the capped attempt: attach", [rec("failed", error_json=CAP)], req("resume"),
     Attach(rec("failed", error_json=CAP))),
    ("resume of a success by other code: new attempt", [rec()], req("resume", code="ast:2"),
     NewAttempt(2, "start:resume:code", "run1", "ast:2", "code ast:1 -> ast:2")),
    ("ended, other code: new attempt", [rec()], req(code="ast:2"),
     NewAttempt(2, "start:code", None, "ast:2", "code ast:1 -> ast:2")),
    ("ended, other version: new attempt", [rec(version="1")], req(version="2"),
     NewAttempt(2, "start:code", None, "ast:1", "version '1' -> '2'")),
    ("same version pins the code", [rec(version="1")], req(version="1", code="ast:9"),
     Attach(rec(version="1"))),
    ("unknown fingerprint is the same code", [rec(code=None)], req(code="ast:9"), Attach(rec(code=None))),
    ("resume cap reached: max_auto_resumes (3) resumes in a row were interrupted", INTERRUPTED_RESUMES,
     req("resume"), NewAttempt(5, "start:resume", "run4", "ast:1", give_up=True)),
    ("resume cap not yet reached", [*INTERRUPTED_RESUMES[1:], rec("interrupted")],
     req("resume"), NewAttempt(4, "start:resume", "run3", "ast:1")),
    ("resume cap: another run breaks the chain",
     [rec("interrupted", 5, created_by="start:resume"), rec("interrupted", 4), *INTERRUPTED_RESUMES[1:]],
     req("resume"), NewAttempt(6, "start:resume", "run5", "ast:1")),
    ("a child of the lineage that ended badly: resumed",
     [rec("failed", parent_id="parent0")], req(control=LINEAGE), NewAttempt(2, "start:child", "run1")),
    ("a child of the lineage that succeeded: attach",
     [rec(parent_id="parent0")], req(control=LINEAGE), Attach(rec(parent_id="parent0"))),
    ("a child of another parent: attach",
     [rec("failed", parent_id="other")], req(control=LINEAGE), Attach(rec("failed", parent_id="other"))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("existing", "request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(existing: list[RunRecord], request_: StartRequest, expected: Decision) -> None:
    assert decide(existing, request_) == expected


def test_every_conflict_kind_and_decision_type_is_in_the_table() -> None:
    kinds = {c[3].kind for c in CASES if isinstance(c[3], Conflict)}
    assert kinds == {"pipeline", "params", "resume_params", "active"}
    assert {type(c[3]) for c in CASES} == {Attach, NewAttempt, Conflict}


def test_many_differences_are_clipped_and_counted() -> None:
    stored = {f"n{i:04d}": i for i in range(1000)} | {"long": "v" * 500}
    decision = decide([rec("failed", params=stored)], req(params={"x": 1}))
    assert isinstance(decision, Conflict) and decision.kind == "params"
    assert len(decision.differences) == 6 and decision.differences[-1] == "and 997 more"
    assert all(len(d) < 200 for d in decision.differences)


def test_decide_is_pure() -> None:
    existing = [rec("interrupted", 2, created_by="start:resume"), rec("failed")]
    before = [replace(r) for r in existing]
    first = decide(existing, req("resume", max_auto_resumes=1))
    assert first == decide(existing, req("resume", max_auto_resumes=1))
    assert first == NewAttempt(3, "start:resume", "run2", "ast:1", give_up=True)
    assert existing == before


@pytest.mark.parametrize("kind", get_args(ConflictKind))
def test_every_conflict_kind_has_a_message_and_a_fix(kind: ConflictKind) -> None:
    text = conflict_message("k", Conflict(kind, rec("running"), ("x=1, not 2",)))
    assert "'k'" in text and "running" in text
    assert "policy=" in text or "another key=" in text, text
    if kind != "active":
        assert "x=1, not 2" in text

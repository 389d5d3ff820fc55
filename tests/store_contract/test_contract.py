"""The contract every store backend keeps, as the engine relies on it (tether.store.protocol)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tether.codec import dumps
from tether.model import Control, Owner, RunRecord, Status
from tether.store import FlushItem, Store, protocol

TESTS = Path(__file__).parent.parent
ME = Owner("contract-host", os.getpid(), 1.0, "me")
OTHER = Owner("contract-host", os.getpid(), 1.0, "other")


def alive(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
    return None


def gone(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
    return "its process ended"


def start(store: Store, key: str = "k", owner: Owner = ME, **more: Any) -> RunRecord:
    args: dict[str, Any] = {
        "pipeline": "p",
        "params_json": '{"x":1}',
        "version": None,
        "phases": [],
        "policy": "attach",
        "lease_s": 60.0,
        "gone": alive,
    }
    args.update(more)
    return store.start(key=key, owner=owner, **args).record


def running(store: Store, key: str = "k", owner: Owner = ME, **more: Any) -> RunRecord:
    rec = store.claim(start(store, key, owner, **more).id, owner, 60.0)
    assert isinstance(rec, RunRecord) and rec.status == Status.RUNNING
    return rec


def item(run_id: str, *events: tuple[float, str, str | None, str]) -> FlushItem:
    return FlushItem(run_id, "work", ["work"], [], 1, 10, "halfway", list(events))


def race(backend: ModuleType, location: Path, action: str, *args: str, n: int = 6) -> list[Any]:
    """Run ``action`` in ``n`` processes released at once; their printed outcomes."""
    gate = location / "gate"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    name = backend.__name__.rsplit("_", 1)[-1]
    cmd = [sys.executable, "-m", "store_contract.child", name, str(location), str(gate), action, *args]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        gate.touch()
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    return [json.loads(out) for out in outs]


# -- existence -------------------------------------------------------------------------------------


def test_exists_says_whether_the_database_is_there_and_asking_creates_nothing(
    backend: ModuleType, location: Path, store: Store
) -> None:
    assert store.exists() is False
    assert store.exists() is False  # asking made nothing
    start(store)
    assert store.exists() is True
    again = backend.open_store(location)
    try:
        assert again.exists() is True  # another store object sees it before it opens it
    finally:
        again.close()


# -- start and claim -------------------------------------------------------------------------------


def test_a_key_started_by_racing_processes_is_created_once_and_attached_by_the_rest(
    backend: ModuleType, location: Path, store: Store
) -> None:
    outcomes = race(backend, location, "start")
    assert len({run_id for run_id, _ in outcomes}) == 1
    assert sorted(created for _, created in outcomes) == [False] * 5 + [True]
    assert [r.id for r in store.list_runs(key="race")] == [outcomes[0][0]]


def test_start_attaches_to_the_same_call_and_reports_a_conflict_as_data(store: Store) -> None:
    first = store.start(
        pipeline="p", key="k", params_json='{"x":1}', version=None, phases=[], policy="attach",
        owner=ME, lease_s=60.0, gone=alive,
    )  # fmt: skip
    again = store.start(
        pipeline="p", key="k", params_json='{"x":1}', version=None, phases=[], policy="attach",
        owner=ME, lease_s=60.0, gone=alive,
    )  # fmt: skip
    other = store.start(
        pipeline="p", key="k", params_json='{"x":2}', version=None, phases=[], policy="attach",
        owner=ME, lease_s=60.0, gone=alive,
    )  # fmt: skip
    assert first.created and not again.created and again.record.id == first.record.id
    assert other.conflict is not None and other.conflict.kind == "params" and not other.created
    assert store.attempts("k") == [store.get(first.record.id)]


def test_a_detached_run_is_claimed_by_exactly_one_of_racing_processes(
    backend: ModuleType, location: Path, store: Store
) -> None:
    run_id = start(store, detach=True).id
    claimed = race(backend, location, "claim", run_id)
    winners = [c for c in claimed if c is not None]
    assert winners == [run_id]
    rec = store.get(run_id)
    assert rec.status == Status.RUNNING and rec.owner is not None and rec.owner.instance.startswith("child-")


def test_only_the_target_claims_a_run_and_only_once(store: Store) -> None:
    rec = start(store)
    assert store.claim(rec.id, OTHER, 60.0) is None  # meant for ME
    assert isinstance(store.claim(rec.id, ME, 60.0), RunRecord)
    assert store.claim(rec.id, ME, 60.0) is None  # running already


def test_a_start_with_claim_creates_the_run_claimed_by_its_owner_in_one_step(store: Store) -> None:
    """``claim=True``: a run the call creates is running for ``owner`` at once, as a claim
    leaves it (its first try started, ``created`` then ``started`` events); attaching, a worker's
    run and a run given up on are not claimed."""
    ctl = Control(max_tries=3, timeout=5)
    rec = start(store, claim=True, control=ctl)
    assert rec.status == Status.RUNNING and rec.owner == ME and rec.tries == 1
    assert rec.started_at is not None and rec.deadline == pytest.approx(rec.started_at + 5)
    assert store.get(rec.id) == rec
    assert [(e.seq, e.kind) for e in store.events(rec.id)] == [(1, "created"), (2, "started")]
    assert store.claim(rec.id, ME, 60.0) is None  # claimed already
    again = store.start(
        pipeline="p", key="k", params_json='{"x":1}', version=None, phases=[], policy="attach",
        owner=ME, lease_s=60.0, gone=alive, claim=True,
    )  # fmt: skip
    assert not again.created and again.record.id == rec.id
    detached = start(store, "w", detach=True, claim=True)
    assert detached.status == Status.PENDING and detached.target == "worker" and detached.owner is None


def test_the_record_start_returns_for_a_new_run_is_the_row_as_read_back(store: Store) -> None:
    ctl = Control("a", ("a",), 2, 1.5, 3)
    for rec in (
        start(store, "a"),
        start(store, "b", claim=True, phases=["x", "y"], control=ctl),
        start(store, "c", detach=True),
    ):
        assert store.get(rec.id) == rec, rec.id
    failed = store.get(store.attempts("b")[0].id)
    store.finish(item(failed.id), ME, Status.FAILED, result_json=None, error={"type": "E", "message": "m"})
    resumed = start(store, "b", policy="resume", claim=True, control=Control(timeout=2))
    assert resumed.resumed_from == failed.id and resumed.attempt == 2 and resumed.tries == 2
    assert store.get(resumed.id) == resumed


# -- events ----------------------------------------------------------------------------------------


def test_events_have_contiguous_seqs_and_read_incrementally(store: Store) -> None:
    rec = running(store)
    logs = [(1.0 + i, "log", "work", dumps({"i": i})) for i in range(5)]
    lost, _ = store.flush([item(rec.id, *logs[:3])], ME, None)
    assert not lost
    store.flush([item(rec.id, *logs[3:])], ME, None)
    events = store.events(rec.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == ["created", "started", *["log"] * 5]
    seen = events[3].seq
    assert [e.seq for e in store.events(rec.id, after=seen)] == [e.seq for e in events if e.seq > seen]
    assert len(store.events(rec.id, after=0, limit=2)) == 2
    assert [e.data["i"] for e in store.events(rec.id, kinds=["log"])] == [0, 1, 2, 3, 4]
    assert [e.data["i"] for e in store.tail(rec.id, "log", 2)] == [3, 4]
    assert store.events(rec.id, after=events[-1].seq) == []


# -- the owner's writes: checkpoints, flushes, the end ---------------------------------------------


def test_checkpoints_are_put_and_read_back_only_while_the_run_is_ours(store: Store) -> None:
    rec = running(store)
    assert store.put_checkpoint(item(rec.id), ME, "step a", dumps({"rows": [1, 2]}))
    assert store.put_checkpoints(rec.id, ME, [("map/0", "10"), ("map/1", "11")])
    assert store.checkpoint(rec.id, "step a") == (True, {"rows": [1, 2]})
    assert store.checkpoint(rec.id, "step b") == (False, None)
    assert store.checkpoints(rec.id, "map/") == {"map/0": 10, "map/1": 11}
    assert store.events(rec.id)[-1].kind == "checkpoint"
    # given the run's id alone: the checkpoint row, no event, the progress untouched
    last, before = store.events(rec.id)[-1].seq, store.get(rec.id)
    assert store.put_checkpoint(rec.id, ME, "step c", dumps([3]))
    assert store.checkpoint(rec.id, "step c") == (True, [3])
    after = store.get(rec.id)
    assert store.events(rec.id)[-1].seq == last == after.last_seq
    assert (after.done, after.message, after.updated_at) == (before.done, before.message, before.updated_at)
    # not ours: another owner, then nobody's once it ended
    assert not store.put_checkpoint(item(rec.id), OTHER, "step b", "1")
    assert not store.put_checkpoint(rec.id, OTHER, "step b", "1")
    assert not store.put_checkpoints(rec.id, OTHER, [("map/2", "12")])
    assert store.flush([item(rec.id)], OTHER, None)[0] == {rec.id}
    assert store.finish(item(rec.id), ME, Status.SUCCEEDED, result_json='"done"', error=None)
    assert not store.finish(item(rec.id), ME, Status.FAILED, result_json=None, error=None)
    assert not store.put_checkpoint(item(rec.id), ME, "step b", "1")
    assert store.flush([item(rec.id)], ME, None)[0] == {rec.id}
    assert store.next_try(item(rec.id), ME) is None
    assert not store.retry_wait(item(rec.id), ME, {"type": "E", "message": "m"}, 1.0)
    assert store.checkpoint(rec.id, "step b") == (False, None)
    ended = store.get(rec.id)
    assert (ended.status, ended.result, ended.message) == (Status.SUCCEEDED, "done", "halfway")


def test_a_resumed_attempt_starts_with_the_checkpoints_of_the_one_it_resumes(store: Store) -> None:
    rec = running(store)
    store.put_checkpoint(item(rec.id), ME, "step a", "1")
    store.finish(item(rec.id), ME, Status.FAILED, result_json=None, error={"type": "E", "message": "m"})
    new = start(store, policy="resume")
    assert (new.attempt, new.resumed_from) == (2, rec.id)
    assert store.checkpoint(new.id, "step a") == (True, 1)


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_flags_a_running_run_for_its_owner_and_ends_a_pending_one(store: Store) -> None:
    rec = running(store, "a")
    flagged = store.request_cancel(rec.id, alive, origin={"via": "api"})
    assert flagged.status == Status.RUNNING and flagged.cancel_requested
    assert store.cancel_requests(ME) == {rec.id}
    assert store.flush([item(rec.id)], ME, None)[1] == {rec.id}
    pending = start(store, "b", OTHER)
    ended = store.request_cancel(pending.id, alive)
    assert ended.status == Status.CANCELLED
    assert ended.error == {"type": "Cancelled", "message": "run cancelled", "traceback": ""}
    parent = running(store, "parent")
    kid = start(store, "kid", OTHER, control=Control(parent=parent.id, lineage=(parent.id,)))
    assert store.cancel_children(parent.id, alive) == [kid.id]
    assert store.get(kid.id).error == {
        "type": "Cancelled",
        "message": f"run cancelled with its parent run {parent.id}",
        "traceback": "",
    }
    done = running(store, "c")
    store.finish(item(done.id), ME, Status.SUCCEEDED, result_json="1", error=None)
    assert store.request_cancel(done.id, alive).status == Status.SUCCEEDED  # an end never changes


# -- recovery --------------------------------------------------------------------------------------


def test_orphans_are_marked_interrupted_once_and_live_runs_never(store: Store) -> None:
    orphan, live = running(store, "a"), running(store, "b")
    assert store.recover([orphan, live], alive) == []

    def undecided(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
        raise RuntimeError("cannot judge")  # proves nothing: the run is left as it is

    marked = store.recover([orphan], gone)
    assert [(r.id, why) for r, why in marked] == [(orphan.id, "its process ended")]
    assert store.get(orphan.id).status == Status.INTERRUPTED
    assert store.get(orphan.id).error == {
        "type": "Interrupted",
        "message": "run interrupted: its process ended",
        "traceback": "",
    }
    assert store.recover([orphan], gone) == []  # whoever notices first wins
    assert store.recover([live], undecided) == []
    assert store.get(live.id).status == Status.RUNNING
    assert store.interrupt_own(ME, "shutdown") == 1
    assert store.get(live.id).status == Status.INTERRUPTED
    assert store.active() == []


def test_a_start_over_an_orphan_interrupts_it_first(store: Store) -> None:
    orphan = running(store)
    out = store.start(
        key="k", pipeline="p", params_json='{"x":1}', version=None, phases=[], policy="resume",
        owner=OTHER, lease_s=60.0, gone=gone,
    )  # fmt: skip
    assert out.recovered == "its process ended" and out.created
    assert out.record.resumed_from == orphan.id and store.get(orphan.id).status == Status.INTERRUPTED


# -- lists -----------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_and_filtered(store: Store) -> None:
    a = start(store, "a", pipeline="p", params_json=dumps({"flag": True, "n": 3}))
    b = start(store, "b", pipeline="p", params_json=dumps({"flag": 1, "n": 3.0}))
    c = running(store, "c", pipeline="q", params_json=dumps({"tags": ["x", "y"]}))
    ids = [r.id for r in store.list_runs()]
    assert set(ids) == {a.id, b.id, c.id} and ids.index(c.id) < ids.index(a.id)
    assert {r.id for r in store.list_runs(pipeline="p")} == {a.id, b.id}
    assert [r.id for r in store.list_runs(status="running")] == [c.id]
    assert {r.id for r in store.list_runs(status=["pending", "running"])} == {a.id, b.id, c.id}
    assert [r.id for r in store.list_runs(key="b")] == [b.id]
    assert [r.id for r in store.list_runs(params={"flag": True})] == [a.id]  # True is not 1
    assert {r.id for r in store.list_runs(params={"n": 3})} == {a.id, b.id}  # 3 == 3.0
    assert [r.id for r in store.list_runs(params={"tags": ["x", "y"]})] == [c.id]
    assert len(store.list_runs(limit=2)) == 2
    assert store.newest(["a", "c", "none"]) == {"a": (a.id, 1, "pending"), "c": (c.id, 1, "running")}


def test_summaries_show_what_list_runs_lists_in_its_order(store: Store) -> None:
    """``summaries`` (what `tether ls` prints) lists the runs ``list_runs`` lists, in the same
    order and with the same filters, and each summary carries the record's shown fields."""
    a = start(store, "a", pipeline="p", params_json=dumps({"n": 1}))
    b = running(store, "b", pipeline="p", params_json=dumps({"n": 2}))
    store.flush([item(b.id)], ME, 60.0)
    c = running(store, "c", pipeline="q")
    store.finish(
        item(c.id), ME, Status.FAILED, result_json=None, error={"type": "E", "message": "m", "traceback": ""}
    )
    for filters in (
        {},
        {"pipeline": "p"},
        {"status": "running"},
        {"status": ["pending", "failed"]},
        {"limit": 2},
    ):
        recs, sums = store.list_runs(**filters), store.summaries(**filters)
        assert [s.id for s in sums] == [r.id for r in recs], filters
        for s, r in zip(sums, recs):
            shown = ("pipeline", "attempt", "status", "phase", "done", "total", "params_json")
            assert [getattr(s, n) for n in shown] == [getattr(r, n) for n in shown]
            times = ("created_at", "started_at", "ended_at", "lease_until", "retry_at", "deadline")
            assert [getattr(s, n) for n in times] == [getattr(r, n) for n in times]
            assert (s.owner, s.tries, s.max_tries, s.damaged) == (r.owner, r.tries, r.max_tries, ())
            assert s.params == r.params and s.status_text == r.status_text
    assert {s.id for s in store.summaries()} == {a.id, b.id, c.id}
    running_one = store.summaries(status="running")[0]
    assert (running_one.done, running_one.total, running_one.owner) == (1, 10, ME)


# -- damaged rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [("done", "lots", "done="), ("status", "exploded", "status="), ("params", "not json", "params=")],
)
def test_a_damaged_row_is_read_with_its_damage_named_and_never_breaks_a_list(
    backend: ModuleType, location: Path, store: Store, column: str, value: object, named: str
) -> None:
    bad, good = running(store, "bad"), running(store, "good")
    backend.damage(location, bad.id, column, value)
    rec = store.get(bad.id)
    assert any(entry.startswith(named) for entry in rec.damaged), rec.damaged
    assert {r.id for r in store.list_runs()} == {bad.id, good.id}
    shown = {s.id: s for s in store.summaries()}  # a listing names the same damage
    assert set(shown) == {bad.id, good.id}
    assert shown[bad.id].damaged == rec.damaged and shown[good.id].damaged == ()
    assert shown[bad.id].status_text == rec.status_text
    assert store.get(good.id).damaged == ()
    store.recover(store.active(), gone)  # acts on what it can prove, raises on nothing
    assert store.get(good.id).status == Status.INTERRUPTED


# -- migrations ------------------------------------------------------------------------------------


def test_a_database_of_an_old_schema_is_migrated_and_its_runs_read_as_before(
    backend: ModuleType, location: Path
) -> None:
    store = backend.open_store(location)
    old = running(store)
    store.finish(item(old.id), ME, Status.SUCCEEDED, result_json='"kept"', error=None)
    store.close()
    backend.make_old(location)
    store = backend.open_store(location)
    try:
        again = store.get(old.id)
        assert (again.status, again.result, again.tries, again.parent_id, again.code) == (
            Status.SUCCEEDED,
            "kept",
            0,
            None,
            None,
        )
        assert start(store).id == old.id  # the same call attaches
        assert start(store, "new").attempt == 1
    finally:
        store.close()


def test_every_protocol_method_is_implemented(store: Store) -> None:
    names = [n for n in vars(protocol.Store) if not n.startswith("_")]
    assert len(names) > 30
    assert [n for n in names if not hasattr(store, n)] == []

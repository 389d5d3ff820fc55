"""PostgreSQL's finer locks (docs/postgres.md, "Locking"): writes of different runs and keys do
not wait for each other, claims skip a run another claimer holds, and the guarantees the one
database-wide lock gave still hold under races of real processes: one run per key, a pipeline's
``concurrency`` never exceeded. A throwaway cluster (tests/conftest.py ``pg_cluster``)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from helpers.postgres import CLAIMER, race
from helpers.util import wait_until
from tether.model import Control, Owner, RunRecord, Status
from tether.store import BUSY_TIMEOUT_S, FlushItem
from tether.store._rows import Scope
from tether.store.postgres import PostgresStore, _locks

ME = Owner("pg-host", os.getpid(), 1.0, "me")
WORKER = Owner("pg-host", os.getpid(), 1.0, "worker-a")


def alive(owner: Owner | None, lease_until: float | None, now: float) -> str | None:
    return None


def start(store: PostgresStore, key: str, owner: Owner = ME, **more: Any) -> RunRecord:
    args: dict[str, Any] = {
        "pipeline": "p", "params_json": "{}", "version": None, "phases": [], "policy": "attach",
        "owner": owner, "lease_s": 60.0, "gone": alive,
    }  # fmt: skip
    args.update(more)
    return store.start(key=key, **args).record


@contextmanager
def holding(url: str, sql: str | None = None, scope: Scope | None = None) -> Iterator[None]:
    """Another session (another host's process) in the middle of a write: it holds what
    ``scope``'s write would hold (or what ``sql`` locks) until the block ends."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as other:
        if scope is not None:
            other.execute(_locks(other, scope, False))
        else:
            other.execute("BEGIN")
            assert sql is not None
            other.execute(sql)
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def item(run_id: str, message: str) -> FlushItem:
    return FlushItem(run_id, None, [], [], 0, None, message, [])


def waiting(url: str) -> bool:
    """Is a session of the database waiting for a lock (a row's, or an advisory one)?"""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


# a write that waited for a lock would wait BUSY_TIMEOUT_S and fail: one that returns well before
# did not wait (however slow a loaded machine is)
PROMPT = BUSY_TIMEOUT_S * 2 / 3


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call``'s result, which must come in ``seconds``."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s"
    assert out, "raised (see the thread's traceback above)"
    return out[0]


def test_flushes_of_different_runs_go_on_while_another_session_writes_another_key(pg_url: str) -> None:
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)  # two processes' sessions
    first = start(one, "a", claim=True)
    second = start(two, "b", owner=WORKER, claim=True)
    with holding(pg_url, scope=Scope(keys=["c"], runs=[])):  # a start() of "c" in progress
        lost, _ = within(PROMPT, lambda: one.flush([item(first.id, "one")], ME, time.time() + 60))
        assert lost == set()
        lost, _ = within(PROMPT, lambda: two.flush([item(second.id, "two")], WORKER, None))
        assert lost == set()
        assert within(PROMPT, lambda: start(one, "d")).key == "d"  # another key starts too
        # a write of the whole database (a cancel) does wait for it: the holder holds a real lock
        cancel = threading.Thread(target=two.request_cancel, args=(first.id, alive), daemon=True)
        cancel.start()
        wait_until(lambda: waiting(pg_url), PROMPT, "the cancel waiting for the lock")
        assert cancel.is_alive() and not one.get(first.id).cancel_requested
    cancel.join(PROMPT)
    assert one.get(first.id).cancel_requested
    assert (one.get(first.id).message, one.get(second.id).message) == ("one", "two")
    one.close()
    two.close()


def test_a_claim_skips_a_run_another_claimer_holds_and_never_waits_for_it(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    older = start(store, "k1", detach=True)
    newer = start(store, "k2", detach=True)
    with holding(pg_url, f"SELECT 1 FROM runs WHERE id = '{older.id}' FOR UPDATE"):
        rec = within(PROMPT, lambda: store.claim_next(WORKER, ["p"], 60.0))
        assert rec is not None and rec.id == newer.id  # the oldest was skipped, not waited for
        assert within(PROMPT, lambda: store.claim_next(WORKER, ["p"], 60.0)) is None  # nothing free
    rec = store.claim_next(WORKER, ["p"], 60.0)  # released: it is claimed now
    assert rec is not None and rec.id == older.id
    assert rec.status == Status.RUNNING and rec.owner == WORKER
    store.close()


def test_a_claim_waiting_for_a_cancel_of_its_run_finds_nothing_once_the_cancel_commits(pg_url: str) -> None:
    """cancel vs claim: the claim waits for the row, then sees the cancel and changes nothing."""
    import psycopg

    store = PostgresStore(pg_url)
    run = start(store, "k", detach=True)
    got: list[Any] = []
    with psycopg.connect(pg_url) as other:  # another host's cancel, not committed yet
        other.execute("UPDATE runs SET status = 'cancelled' WHERE id = %s", (run.id,))
        claim = threading.Thread(
            target=lambda: got.append(store.claim(run.id, WORKER, 60.0, "worker")), daemon=True
        )
        claim.start()
        wait_until(lambda: waiting(pg_url), PROMPT, "the claim waiting for the run's row")
        assert claim.is_alive()
    claim.join(PROMPT)  # the with block committed the cancel
    assert got == [None]
    assert store.get(run.id).status == Status.CANCELLED and store.get(run.id).owner is None
    store.close()


_START = """
import json, os, random, sys
from tether.model import Owner
from tether.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1])
me = Owner("host", os.getpid(), 1.0, "starter-" + sys.argv[2])
keys = [f"k{i}" for i in range(int(sys.argv[3]))]
random.Random(int(sys.argv[2])).shuffle(keys)
store.list_runs(limit=1)
print("ready", flush=True)
sys.stdin.readline()
got = {}
for key in keys:
    got[key] = store.start(pipeline="p", key=key, params_json="{}", version=None, phases=[],
        policy="attach", owner=me, lease_s=60.0, gone=lambda *a: None, claim=True).record.id
print(json.dumps(got), flush=True)
store.close()
"""


def test_sixteen_processes_racing_on_two_hundred_keys_make_one_run_per_key(pg_url: str) -> None:
    outs = race(_START, [[pg_url, str(i), "200"] for i in range(16)], timeout=300)
    seen = [json.loads(out) for out in outs]
    for key in seen[0]:
        assert len({got[key] for got in seen}) == 1, key  # every process attached to one run
    store = PostgresStore(pg_url)
    runs = store.list_runs(limit=None)
    assert len(runs) == 200 and {r.attempt for r in runs} == {1}
    assert {r.id for r in runs} == set(seen[0].values())
    store.close()


def test_a_pipelines_concurrency_holds_under_a_race_of_claimers(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    for i in range(20):
        start(store, f"k{i}", pipeline="capped", detach=True, control=Control(concurrency=3))
    outs = race(CLAIMER, [[pg_url, str(i), "capped", "2"] for i in range(8)])
    claimed = [run_id for out in outs for run_id in json.loads(out)]
    assert len(claimed) == 3 and len(set(claimed)) == 3  # three claimed, once each
    running = [r for r in store.list_runs(limit=None) if r.status == Status.RUNNING]
    assert sorted(r.id for r in running) == sorted(claimed)
    # the three oldest: the queue's order held too
    oldest = sorted(store.list_runs(limit=None), key=lambda r: r.created_at)[:3]
    assert {r.id for r in oldest} == set(claimed)
    assert Counter(r.status for r in store.list_runs(limit=None))[Status.PENDING] == 17
    store.close()


def test_a_start_that_finds_the_owner_gone_waits_for_its_flush_and_writes_its_event_after(
    pg_url: str,
) -> None:
    """start (orphan check) vs flush: the flush in progress commits first; the start then
    interrupts the run, its event numbered after the flush's."""
    import psycopg

    store = PostgresStore(pg_url)
    other = Owner("far-host", 4242, 1.0, "far")  # judged by its lease on another host
    run = start(store, "k", owner=other, claim=True)
    got: list[Any] = []
    with psycopg.connect(pg_url) as far:  # the owner's flush, in the middle of its transaction
        far.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run.id,))
        far.execute(
            "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (%s, %s, %s, 'log', NULL, '{}')",
            (run.id, run.last_seq + 1, time.time()),
        )
        far.execute("UPDATE runs SET last_seq = last_seq + 1 WHERE id = %s", (run.id,))
        starter = threading.Thread(
            target=lambda: got.append(store.start(
                pipeline="p", key="k", params_json="{}", version=None, phases=[], policy="attach",
                owner=ME, lease_s=60.0, gone=lambda *a: "lease expired",
            )),
            daemon=True,
        )  # fmt: skip
        starter.start()
        wait_until(lambda: waiting(pg_url), PROMPT, "the start waiting for the run's row")
    starter.join(PROMPT)  # the flush committed
    assert got and got[0].recovered == "lease expired"
    kinds = [(e.seq, e.kind) for e in store.events(run.id)]
    assert kinds[-2:] == [(run.last_seq + 1, "log"), (run.last_seq + 2, "interrupted")]
    assert store.get(run.id).status == Status.INTERRUPTED
    store.close()


def test_a_write_the_server_ended_to_break_a_deadlock_runs_again_and_others_errors_do_not() -> None:
    import psycopg

    from tether.errors import StoreError
    from tether.store.postgres import _RETRIES, _retried

    calls: list[str] = []

    def write(failure: type[Exception], times: int) -> str:
        calls.append("try")
        if len(calls) <= times:
            try:
                raise failure("the server's message")
            except Exception as exc:
                raise StoreError("a write failed") from exc
        return "done"

    again = _retried(write)
    assert again(psycopg.errors.DeadlockDetected, 2) == "done" and len(calls) == 3
    calls.clear()
    assert again(psycopg.errors.SerializationFailure, 1) == "done" and len(calls) == 2
    calls.clear()
    with pytest.raises(StoreError):  # bounded: the last one's error is the caller's
        again(psycopg.errors.DeadlockDetected, _RETRIES)
    assert len(calls) == _RETRIES
    calls.clear()
    with pytest.raises(StoreError):  # anything else is not retried
        again(psycopg.errors.UniqueViolation, 1)
    assert len(calls) == 1

"""Kill harness and load scenarios for tether (issue 6: "Faults" and "Load and races").

Importable as ``reliability.harness`` by the tests (pytest's ``pythonpath`` puts ``tests/`` on
``sys.path``), by ``bench/soak.py`` and ``bench/scale.py`` (through ``bench/_paths.py``), and by
the child processes they start (``child_env`` puts ``tests/`` on ``PYTHONPATH``), so the pipelines
below have the same names everywhere (explicit ``name=``).

Kill harness
------------
Child processes run the ``reliability.work`` pipeline (phases, logs, progress, ``ctx.step``
checkpoints, ``ctx.map`` items; every execution of a step body or of a map item appends one line to
the lineage's journal file) and are SIGKILLed:

- after a random delay (anywhere: opening the DB, ``start()``, a phase, a flush, a checkpoint, the
  end, the interpreter exit);
- at a *point* the body signals through a file (entering the body, inside a step body, inside a
  map item, about to return), after a short random delay;
- at a *trip*: the child wraps ``Store.tx`` (and ``Store.write_run``, a write of one statement
  committed on its own, which when tripped runs inside a transaction instead, so that it has the
  same two moments) and, at the n-th write transaction of one store
  operation (``start``, ``claim``, ``flush``, ``put_checkpoint``, ``put_checkpoints``,
  ``finish``, or ``recover`` / ``request_cancel`` in a recovering process), signals through a file
  and blocks, either before ``COMMIT`` (inside ``BEGIN IMMEDIATE``, rows written but not
  committed) or just after it. The parent SIGKILLs it there. ``start()`` claims the run it
  creates in its own transaction (``start`` trips cover the claim then); a ``claim`` of its own
  is the one of an attempt made by ``Run.resume()``, so ``claim`` trips go that way.

Each run child calls ``start(policy="resume")`` for its lineage's params, so successive attempts
resume each other; sometimes a second child races on the same key. After each round, recovery runs
in another process (``tether gc``, ``get_run()``, ``tether ls``, ``run.cancel()``, or, deferred,
the next round's ``start(policy="resume")``), sometimes itself killed mid-recovery, and the parent
checks the invariants on the database (read with plain sqlite3, so checking recovers nothing):

- no run stays active after recovery; at most one active run per key (also sampled mid-round);
- events: ``seq`` contiguous 1..n and ``runs.last_seq == n``; the body's log lines ``L0, L1, ...``
  without gap or duplicate; a terminal run's status event exactly once and last;
- ``PRAGMA integrity_check`` is ``ok``;
- events read before a kill (and at every earlier check) are a prefix of the events after;
- a terminal run's row and events never change;
- a checkpoint (step or map item) recorded by an ancestor attempt is never executed again by a
  resumed attempt (journal vs the ``checkpoints`` table); a recorded value was produced by an
  execution in the journal; checkpoints are copied unchanged to the resuming attempt;
- a step or item executes only in its run's owner process; a succeeded run's result agrees with
  its checkpoints and its stored log lines; a child that was not killed exits 0 and its own run
  succeeded (no error such as ``database is locked`` reaching the user, no live run taken over).

Other faults (issue 11)
-----------------------
``KillHarness(faults={"sigint": n, "fork": n, "sqlite": n, "pidns": n, "disk": n})`` adds, beside
the SIGKILLed children of a round, an episode of some of these kinds (spread over the rounds):

- ``sigint``: a child calls ``start()`` in a loop while a timer thread sends it SIGINT (one fault
  per ``KeyboardInterrupt`` raised inside ``start()``); a thread of it takes the write lock now and
  then through plain sqlite3. Then, still alive, it checks that another process can write, that
  every run it created ends, that max_concurrency ``reliability.gate`` runs execute at once (no
  leaked runner slot) and that new runs all execute;
- ``fork``: runs of ``reliability.forker``, whose body forks a child that leaves in one of
  FORK_HOWS; the parent checks each run ends with the parent's result and log lines, once;
- ``sqlite``: a child holds a plain sqlite3 connection to the database, opened before tether,
  through the round and its recovery while other processes come and go; -wal/-shm must keep their
  inodes, no error, no run lost;
- ``pidns``: a child under ``unshare --pid --fork --mount-proc`` (pid 1 or 2 there) runs a long
  run while recovery runs outside (and ``tether gc`` inside); its run must end succeeded;
- ``disk``: an epoch whose database is on a tmpfs that a filler fills and frees in every round;
  once there is space again, every live process's run ends (within ``settle`` s), and only typed
  errors reach a process.

A child reports the checks it makes from inside as ``violations``; every check tags its message
``[kind/what]`` (``violation_kind``). A read of the parent's that meets a damaged database (a
sabotage, or a real bug) is a violation too, ``[<action>/db-damaged]`` (``Checker.read``), never an
exception that ends the soak. pidns and disk need root (``capabilities()``).

Load scenarios
--------------
``start_race``: N processes x K keys starting at once; ``readers_writers``: runs writing logs and
progress while pollers, a dashboard query and ``tether ls`` hammer the database. Both return counts,
errors and figures; the tests assert the counts and errors, ``bench/scale.py`` prints the figures.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tether
from helpers.hosts import unshare_fails
from helpers.util import tx_caller
from tether import context as tether_context
from tether import errors as tether_errors
from tether.store import SQLiteStore as Store
from tether.store._rows import WHOLE, Scope

TESTS = Path(__file__).resolve().parent.parent
SAFETY_S = 120.0  # no child waits longer than this; a parent declares a child hung after it
PHASES = ["setup", "steps", "map", "finish"]
T = TypeVar("T")
# children find this module through PYTHONPATH (``child_env``)
BOOT = "from reliability.harness import serve; serve()"

# =============================================================================================
# child side
# =============================================================================================

_ARM: dict[str, Any] = {}  # what this child process was told to signal: trip / point
_SPEC: dict[str, Any] = {}  # the spec this child executes
_TRIPS: collections.Counter[str] = collections.Counter()
_ORIG_TX = Store.tx
_ORIG_WRITE_RUN = Store.write_run


def _append(path: str, text: str) -> None:
    """One line per call (a single O_APPEND write: atomic across processes and under SIGKILL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _signal(text: str) -> None:
    path = _ARM.get("signal") or _SPEC.get("signal")
    if path and not os.path.exists(path):
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)


def _block() -> None:
    """Wait to be killed (a parent that forgot us: exit after SAFETY_S)."""
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        time.sleep(0.005)
    os._exit(86)


def _await_go() -> None:
    """A watched moment: go on once the parent says so (e.g. when the disk is full)."""
    deadline = time.monotonic() + 10
    while not os.path.exists(_ARM["signal"] + ".go") and time.monotonic() < deadline:
        time.sleep(0.001)


def _point(name: str) -> None:
    if _ARM.get("point") == name:
        _signal(f"point {name}")
        if _ARM.get("wait"):
            _await_go()


def _tx(self: Store, scope: Scope = WHOLE) -> Any:
    return _tripping(self, tx_caller(), scope)


@contextlib.contextmanager
def _tripping(store: Store, op: str, scope: Scope) -> Iterator[sqlite3.Connection]:
    armed = op == _ARM.get("op")
    with _ORIG_TX(store, scope) as conn:
        yield conn
        if armed:
            _TRIPS[op] += 1
            if _ARM.get("when") == "pre" and _TRIPS[op] == _ARM.get("nth", 1):
                _signal(f"trip {op} pre-commit #{_TRIPS[op]}")
                _block()
    if armed and _ARM.get("when") == "post" and _TRIPS[op] == _ARM.get("nth", 1):
        _signal(f"trip {op} post-commit #{_TRIPS[op]}")
        if _ARM.get("wait"):
            _await_go()
        else:
            _block()


def _write_run(self: Store, run_id: str, sql: str, args: Sequence[Any]) -> int:
    op = tx_caller()
    if op != _ARM.get("op"):
        return _ORIG_WRITE_RUN(self, run_id, sql, args)
    with _tripping(self, op, Scope(runs=[run_id])) as conn:  # its row written, not yet committed
        return int(conn.execute(sql, args).rowcount)


def _arm(arm: dict[str, Any] | None) -> None:
    _ARM.clear()
    _ARM.update(arm or {})
    if _ARM.get("op"):
        Store.tx = _tx  # type: ignore[method-assign]
        Store.write_run = _write_run  # type: ignore[method-assign]


def _step_body(journal: str, name: str) -> dict[str, Any]:
    ctx = tether_context.current()
    assert ctx is not None
    _append(journal, f"step {name} {ctx.run_id} {ctx.attempt} {os.getpid()}")
    _point(f"step:{name}")
    time.sleep(0.004)
    return {"name": name, "run": ctx.run_id, "attempt": ctx.attempt, "pid": os.getpid()}


def _item_body(item: dict[str, Any]) -> dict[str, Any]:
    ctx = tether_context.current()
    assert ctx is not None
    i = item["i"]
    _append(item["journal"], f"item {i} {ctx.run_id} {ctx.attempt} {os.getpid()}")
    _point(f"item:{i}")
    time.sleep(item["pace"] * (1 + (i * 7) % 5) * 4)
    return {"i": i, "run": ctx.run_id, "attempt": ctx.attempt, "pid": os.getpid()}


@tether.pipeline(name="reliability.work", phases=PHASES)
def work(
    ctx: tether.Context,
    journal: str,
    n_steps: int = 4,
    n_items: int = 8,
    logs: int = 30,
    burst: int = 200,
    pace: float = 0.002,
) -> dict[str, Any]:
    """The kill harness's pipeline: logs L0, L1, ... in order, steps s0.., map items, a log burst."""
    count = 0

    def log() -> None:
        nonlocal count
        ctx.log("L%d", count)
        count += 1

    _point("body")
    ctx.phase("setup", total=logs)
    for _ in range(logs):
        log()
        ctx.advance()
        time.sleep(pace)
    ctx.phase("steps", total=n_steps)
    steps = []
    for k in range(n_steps):
        steps.append(ctx.step(f"s{k}", _step_body, journal, f"s{k}"))
        if k % 2 == 0 and k + 1 < n_steps:  # s1, s3 follow at once: nothing else to write, their
            continue  # checkpoints are written alone (Store.write_run) and tripped there
        log()
        ctx.advance(2 if k % 2 else 1)
    ctx.phase("map")
    items = [{"i": i, "journal": journal, "pace": pace} for i in range(n_items)]
    mapped = ctx.map(_item_body, items, name="items")
    ctx.phase("finish", total=burst)
    for _ in range(burst):  # a large flush
        log()
        ctx.advance()
    _point("return")
    return {"steps": steps, "items": mapped, "logs": count}


@tether.pipeline(name="reliability.quick", phases=["work"])
def quick(ctx: tether.Context, k: int, hold: float = 0.0) -> dict[str, Any]:
    """One short run per key of the start race (active for ``hold`` s, so starts attach to it)."""
    ctx.phase("work")
    ctx.log("key %d", k)
    end = time.monotonic() + hold
    while time.monotonic() < end:
        ctx.advance()
        time.sleep(0.01)
    return {"k": k, "pid": os.getpid()}


@tether.pipeline(name="reliability.writer", phases=["writing"])
def writer(ctx: tether.Context, w: int, lines: int, pace: float) -> dict[str, Any]:
    """Logs ``lines`` lines (and progress), ``pace`` s apart, for the readers/writers scenario."""
    ctx.phase("writing", total=lines)
    for i in range(lines):
        ctx.log("w%d line %d", w, i)
        ctx.advance()
        time.sleep(pace)
    return {"w": w, "lines": lines}


def _slow_item(item: dict[str, Any]) -> int:
    open(item["marker"], "a").close()
    time.sleep(item["hold"])
    return int(item["i"])


@tether.pipeline(name="reliability.two_maps", phases=["first", "second"])
def two_maps(ctx: tether.Context, marker: str, hold: float = 0.5) -> list[int]:
    """Two fan-outs in a row; the items of the first one take ``hold`` s."""
    ctx.phase("first")
    first = ctx.map(_slow_item, [{"i": i, "marker": marker, "hold": hold} for i in range(2)], name="first")
    ctx.phase("second")
    return first + ctx.map(_slow_item, [{"i": 2, "marker": marker, "hold": 0.0}], name="second")


def exit_in_map(spec_json: str) -> None:
    """A script that ends (normally) while its run is inside its first ``ctx.map``."""
    spec = json.loads(spec_json)
    tether.configure(db=spec["db"])
    run = two_maps.start(marker=spec["marker"], hold=spec.get("hold", 0.5))
    _out({"id": run.id})
    _wait_file(spec["marker"])  # an item of the first map is executing
    # falling off the end of the program: the run is in flight


def _out(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def serve() -> None:
    """A warm child: imported, says "ready", then executes the one spec read from stdin."""
    import tether.cli  # warm the imports before the clock starts

    _out("ready")
    line = sys.stdin.readline()
    if not line:
        return
    spec = json.loads(line)
    _SPEC.update(spec)
    _arm(spec.get("arm"))
    tether.configure(db=spec["db"], **spec.get("configure", {}))
    action = spec["action"]
    if spec.get("sabotage") == "drop_end":  # the disk check catches an end that is never stored

        def refuse(self: Store, *_args: Any, **_kwargs: Any) -> Any:
            raise tether.StoreError("the end of this run is never stored (sabotage)")

        Store.finish = refuse  # type: ignore[method-assign]
    if action == "run":
        run = _start_run(spec)
        _out({"id": run.id, "attempt": run.attempt, "pid": os.getpid()})
        if spec.get("exit"):  # leave with the run in flight: atexit marks it interrupted
            time.sleep(spec["linger"])
            _out({"id": run.id, "exit": spec["exit"]})
            if spec["exit"] == "sysexit":
                sys.exit(3)
            if spec["exit"] == "raise":
                raise RuntimeError("the main thread died with a run in flight")
            return
        if spec.get("settle"):  # the disk fills and frees meanwhile
            _settle(run, spec["settle"])
            return
        run.wait(timeout=SAFETY_S)
        _out({"id": run.id, "status": str(run.status)})
    elif action == "recover":
        _recover(spec)
    elif action == "storm":
        _storm(spec)
    elif action == "forks":
        _forks(spec)
    elif action == "hold":
        _hold(spec)
    elif action == "linger":
        _linger(spec)
    else:
        raise ValueError(f"unknown action {action!r}")


def _start_run(spec: dict[str, Any]) -> tether.Run:
    params = spec["params"]
    if spec.get("via") == "resume":  # Run.resume() of the latest attempt (Store.new_attempt)
        latest = tether.runs(key=work.key_for(work.bind(**params)), limit=1)
        if latest and latest[0].status in ("failed", "cancelled", "interrupted"):
            try:
                return latest[0].resume()
            except tether.RunActive:  # a racer started a newer attempt meanwhile: attach to it
                pass
    return work.start(**params, policy="resume")


def _recover(spec: dict[str, Any]) -> None:
    from tether import cli

    mode, db = spec["mode"], spec["db"]
    if spec.get("sabotage") == "presume_dead":  # the pidns check catches a live run taken over
        from tether import owner

        owner.gone_reason = lambda rec_owner, *_a, **_k: (  # type: ignore[assignment]
            "presumed dead (sabotage)" if rec_owner is not None else None
        )
    if mode == "gc":
        code = cli.main(["gc", "--db", db])
    elif mode == "ls":  # its table is not read: a large one must not fill the stdout pipe
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["ls", "--db", db, "--limit", "100000"])
    elif mode == "get_run":
        code = 0
        for run_id in spec["ids"]:
            _out({"id": run_id, "status": str(tether.get_run(run_id).status)})
    elif mode == "cancel":  # `tether cancel ID` (get_run() would find the orphan first)
        code = 0
        for run_id in spec["ids"]:
            code = code or cli.main(["cancel", run_id, "--db", db])
    else:
        raise ValueError(f"unknown recovery mode {mode!r}")
    if code:
        raise SystemExit(code)


# =============================================================================================
# child side: the other faults a kernel meets (issue 11)
# =============================================================================================
#
# Each action below is one child process; it reports what it saw as JSON lines, and the checks it
# can only make from inside (a transaction it left open, its own runs stranded, its runner's
# slots) as ``"violations"``, each tagged ``[kind/what]``. The parent checks the database.

FORK_WAIT_S = 10.0  # a fork child that has not exited by then is hung (killed, reported)
FORK_HOWS = ["sysexit", "return", "raise", "os_exit", "log-sysexit", "log-return", "log-os_exit", "mp"]
PROBE = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1], timeout=float(sys.argv[2]), isolation_level=None)\n"
    "try:\n"
    "    c.execute('BEGIN IMMEDIATE'); c.execute('ROLLBACK')\n"
    "except sqlite3.Error as exc:\n"
    "    print(exc); sys.exit(3)\n"
)


@tether.pipeline(name="reliability.forker", phases=["before", "after"])
def forker(
    ctx: tether.Context, token: str, how: str, before: int = 3, after: int = 2, flush: bool = False
) -> dict[str, Any]:
    """Logs F0.. (buffered, unless ``flush``), forks a child that leaves as ``how`` says, waits for
    it, logs P0.. and returns the parent's outcome. Nothing the fork child does may reach the run."""
    ctx.phase("before")
    for i in range(before):
        ctx.log("F%d", i)
    if flush:
        ctx.phase("after")  # a phase change is written at once: the F lines are stored first
    if how == "mp":
        import multiprocessing

        proc = multiprocessing.get_context("fork").Process(target=_mp_child, daemon=True)
        proc.start()
        proc.join(FORK_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
            outcome = "hung"
        else:
            outcome = f"exit {proc.exitcode}"
    else:
        pid = os.fork()
        if pid == 0:  # the fork child: leave as told (return: fall off the body like its parent)
            kind = how.removeprefix("log-")
            if how.startswith("log-"):
                ctx.log("C0")
                ctx.advance()
            if kind == "sysexit":
                sys.exit(0)
            if kind == "raise":
                raise RuntimeError("raised in a fork child")
            if kind == "os_exit":
                os._exit(0)
            return {"who": "child", "pid": os.getpid(), "token": token}
        outcome = _reap(pid)
    ctx.phase("after")
    for i in range(after):
        ctx.log("P%d", i)
        ctx.advance()
    return {"who": "parent", "pid": os.getpid(), "token": token, "child": outcome}


def _mp_child() -> None:
    ctx = tether_context.current()  # a multiprocessing 'fork' worker inherits the run thread
    if ctx is not None:
        ctx.log("C-mp")
        ctx.advance()


def _reap(pid: int) -> str:
    deadline = time.monotonic() + FORK_WAIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exit {os.waitstatus_to_exitcode(status)}"
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


@tether.pipeline(name="reliability.linger", phases=["linger"])
def linger(ctx: tether.Context, token: str, stop: str, max_s: float = SAFETY_S) -> dict[str, Any]:
    """Runs until the file ``stop`` exists (a long run of a process in another pid namespace)."""
    ctx.phase("linger")
    end = time.monotonic() + max_s
    n = 0
    while not os.path.exists(stop) and time.monotonic() < end:
        ctx.advance()
        if n % 10 == 0:
            ctx.log("tick %d", n)
        n += 1
        time.sleep(0.02)
    return {"token": token, "pid": os.getpid(), "ticks": n}


@tether.pipeline(name="reliability.gate", phases=["gate"])
def gate(ctx: tether.Context, token: int, n: int, folder: str, wait_s: float) -> dict[str, Any]:
    """Waits (up to ``wait_s``) until ``n`` gate runs have entered their bodies: they all run at
    once only if the runner has ``n`` free slots."""
    ctx.phase("gate")
    Path(folder, ctx.run_id).touch()
    closed = Path(folder, "closed")  # a run left without meeting all the others
    deadline = time.monotonic() + wait_s
    while True:
        met = not closed.exists() and len(os.listdir(folder)) >= n
        if met or closed.exists() or time.monotonic() > deadline:
            break
        ctx.advance()
        time.sleep(0.005)
    if not met:
        closed.touch()
    return {"token": token, "met": met}


_SIGINT: dict[str, Any] = {
    "armed": False,
    "ignored": 0,
    "where": collections.Counter(),
}  # where each interrupt landed


def _on_sigint(_signum: int, frame: Any) -> None:
    """A kernel interrupt, delivered only while the main thread is inside ``start()``."""
    if not _SIGINT["armed"]:
        _SIGINT["ignored"] += 1
        return
    _SIGINT["armed"] = False
    code = frame.f_code if frame is not None else None
    where = f"{Path(code.co_filename).name}:{code.co_name}" if code else "?"
    _SIGINT["where"][where] += 1
    raise KeyboardInterrupt


def _own_runs(db: str, pipeline: str) -> list[tuple[str, str, str | None]]:
    """(id, status, error type) of this process's runs of ``pipeline``, read with plain sqlite3."""
    conn = connect(Path(db))
    assert conn is not None
    try:
        rows = conn.execute(
            "SELECT id, status, error FROM runs WHERE owner_pid = ? AND pipeline = ?", (os.getpid(), pipeline)
        ).fetchall()
    finally:
        conn.close()
    return [(i, s, json.loads(e).get("type") if e else None) for i, s, e in rows]


def _settled(
    db: str, pipeline: str, ids: set[str] | None, within: float
) -> list[tuple[str, str, str | None]]:
    """Wait up to ``within`` s for every run of ours (or ``ids``) to end; returns those that did not."""
    deadline = time.monotonic() + within
    while True:
        rows = [r for r in _own_runs(db, pipeline) if ids is None or r[0] in ids]
        active = [r for r in rows if r[1] in ("pending", "running")]
        if not active or time.monotonic() > deadline:
            return active
        time.sleep(0.02)


def _storm(spec: dict[str, Any]) -> None:
    """SIGINTs at random moments while the main thread calls ``start()`` in a loop (the way a
    kernel interrupt lands), then the checks that need this process alive: another process can
    write (no transaction left open), every run created here ends (none stranded pending or
    running without a thread), and 2 x max_concurrency new runs all execute (no slot leaked)."""

    db = spec["db"]
    rng = random.Random(spec.get("seed"))
    settle = spec.get("settle", 10.0)
    viol: list[str] = []
    tether.runs(limit=1)  # open the database before the hog's connection (see _hold for why)
    stop = threading.Event()
    sent = [0]
    hog_waits = [0]

    def hog() -> None:  # another writer, so that start() often waits for the write lock
        conn = sqlite3.connect(db, timeout=2.0, isolation_level=None)
        try:
            while not stop.is_set():
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    time.sleep(rng.uniform(0, 0.01))
                    conn.execute("COMMIT")
                except sqlite3.OperationalError:
                    hog_waits[0] += 1  # locked out for 2 s
                time.sleep(rng.uniform(0, 0.01))
        finally:
            conn.close()

    def timer() -> None:
        me = os.getpid()
        while not stop.is_set():
            time.sleep(rng.uniform(0, spec.get("gap", 0.005)))
            os.kill(me, signal.SIGINT)
            sent[0] += 1

    signal.signal(signal.SIGINT, _on_sigint)
    threads = [threading.Thread(target=timer, daemon=True)]
    if spec.get("hog", True):
        threads.append(threading.Thread(target=hog, daemon=True))
    for t in threads:
        t.start()
    base, landed, starts, errors = spec["base"], 0, 0, collections.Counter()
    recent: list[tuple[int, float]] = []
    deadline = time.monotonic() + spec.get("max_s", 20.0)
    t0 = time.monotonic()
    if spec.get("sabotage"):  # a test of the checks below: no storm (and no real failure)
        stop.set()
    while (
        landed < spec["landings"]
        and time.monotonic() < deadline
        and sum(errors.values()) < 20
        and not stop.is_set()
    ):
        if recent and rng.random() < 0.2:
            k, hold = rng.choice(recent)  # attach to (or find) a run started before
        else:
            k, hold = base + starts, rng.choice([0.0, 0.005, 0.02])
            recent = [*recent, (k, hold)][-8:]
        starts += 1
        try:
            try:
                _SIGINT["armed"] = True
                quick.start(k=k, hold=hold)
                _SIGINT["armed"] = False
            except KeyboardInterrupt:
                landed += 1
            except Exception as exc:  # an error reaching the user (not the interrupt)
                _SIGINT["armed"] = False
                errors[f"{type(exc).__name__}: {str(exc)[:300]}"] += 1
        except KeyboardInterrupt:  # landed in this loop, outside start(): not ours to count
            pass
        _SIGINT["armed"] = False
    stop.set()
    for t in threads:
        t.join(timeout=10)
    t1 = time.monotonic()
    for text, n in errors.items():
        viol.append(f"[sigint/start-error] start() raised {n}x after interrupts: {text}")
    if spec.get("sabotage") == "open_tx":  # the checks catch a transaction left open
        tether.workspace.default().store().conn().execute("BEGIN IMMEDIATE")
    elif spec.get("sabotage") == "strand":  # ... a run created but never submitted
        own = tether.workspace.default().runner()
        params = quick.bind(k=-1, hold=0.0)
        tether.workspace.default().store().start(
            pipeline=quick.name,
            key=quick.key_for(params),
            params_json=json.dumps(params),
            version=None,
            phases=["work"],
            policy="attach",
            owner=own.owner,
            lease_s=30,
            gone=lambda *_: None,
        )
    elif spec.get("sabotage") == "slots":  # ... a runner slot used by nothing
        own = tether.workspace.default().runner()
        own._slots += 1
    # another process can write within a bound: no transaction stayed open here
    probe_s = spec.get("probe", 5.0)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, db, str(probe_s)], capture_output=True, text=True, timeout=probe_s + 30
    )
    if probe.returncode != 0:
        viol.append(
            f"[sigint/locked-out] another process could not write for {probe_s:.0f} s "
            f"after the interrupts (a write transaction stayed open here): "
            f"{(probe.stdout + probe.stderr).strip()[-300:]}"
        )
    if spec.get("sabotage") == "open_tx":  # caught: let the other processes go on
        tether.workspace.default().store().conn().execute("ROLLBACK")
    # every run this process created ends (bodies take <= 20 ms)
    stuck = _settled(db, quick.name, None, settle)
    if stuck:
        viol.append(
            f"[sigint/stranded] {len(stuck)} runs created by this live process still "
            f"{sorted({s for _, s, _ in stuck})} {settle:.0f} s after the interrupts "
            f"(e.g. {stuck[0][0]})"
        )
    failed = [r for r in _own_runs(db, quick.name) if r[1] == "failed"]
    if failed:
        viol.append(f"[sigint/failed] {len(failed)} runs failed ({failed[0][2]}), e.g. {failed[0][0]}")
    # no runner slot leaked: max_concurrency runs can execute at once
    slots = tether.workspace.default().settings.max_concurrency
    folder = tempfile.mkdtemp(prefix="gate-")
    try:
        gates = {gate.start(token=base + i, n=slots, folder=folder, wait_s=settle).id for i in range(slots)}
        _settled(db, gate.name, gates, 2 * settle + 5)
        conn = connect(Path(db))
        assert conn is not None
        try:
            results = [
                json.loads(r or "null") or {}
                for (r,) in conn.execute(
                    f"SELECT result FROM runs WHERE id IN ({', '.join('?' * len(gates))})", list(gates)
                )
            ]
        finally:
            conn.close()
        entered = sum(bool(r.get("met")) for r in results)
    except Exception as exc:
        entered = -1
        viol.append(
            f"[sigint/start-error] start() after the interrupts raised {type(exc).__name__}: {str(exc)[:300]}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if 0 <= entered < slots:
        viol.append(
            f"[sigint/slots-leaked] {slots} runs could not execute at once "
            f"(max_concurrency={slots}; {entered} saw all the others): runner slots are "
            "used by nothing"
        )
    # the runner still executes new runs
    fresh: set[str] = set()
    n = 2 * tether.workspace.default().settings.max_concurrency
    try:
        for i in range(n):
            fresh.add(quick.start(k=base + starts + 100 + i, hold=0.0).id)
    except Exception as exc:
        viol.append(
            f"[sigint/start-error] start() after the interrupts raised {type(exc).__name__}: {str(exc)[:300]}"
        )
    if fresh:
        left = _settled(db, quick.name, fresh, settle)
        if left:
            viol.append(
                f"[sigint/no-new-run] {len(left)} of {n} new runs never ended "
                f"({sorted({s for _, s, _ in left})}) {settle:.0f} s after start(): the "
                "runner executes nothing"
            )
    _out(
        {
            "storm": {
                "landed": landed,
                "sent": sent[0],
                "starts": starts,
                "ignored": _SIGINT["ignored"],
                "where": dict(_SIGINT["where"]),
                "hog_lockouts": hog_waits[0],
                "storm_s": round(t1 - t0, 2),
                "checks_s": round(time.monotonic() - t1, 2),
            },
            "violations": viol,
        }
    )


def _forks(spec: dict[str, Any]) -> None:
    """Runs of ``reliability.forker`` (each forks in its body), at once; reports their ends."""
    runs = [(f, forker.start(**f)) for f in spec["forks"]]
    for f, run in runs:
        try:
            run.wait(timeout=SAFETY_S)
            _out({"token": f["token"], "id": run.id, "status": str(run.status)})
        except Exception as exc:
            _out({"token": f["token"], "id": run.id, "error": f"{type(exc).__name__}: {exc}"})


def _inodes(db: str) -> tuple[int | None, int | None]:
    out = []
    for suffix in ("-wal", "-shm"):
        try:
            out.append(os.stat(db + suffix).st_ino)
        except FileNotFoundError:
            out.append(None)
    return out[0], out[1]


def _hold(spec: dict[str, Any]) -> None:
    """A user's plain sqlite3 connection to runs.db (as pandas.read_sql would use), opened before
    tether and held while this process uses tether and other processes come and go.

    SQLite's locks are per process: if anything in this process closes a descriptor of the file
    outside SQLite, this process holds no lock, and the next process to close the database thinks
    it is the last, checkpoints and deletes -wal and -shm under our connections."""
    db = spec["db"]
    rng = random.Random(spec.get("seed"))
    uri = "file:" + urllib.parse.quote(db) + f"?mode={spec.get('mode', 'rw')}"
    held = sqlite3.connect(uri, uri=True, timeout=SAFETY_S)
    held.execute("SELECT count(*) FROM runs").fetchone()  # WAL mode: -wal and -shm exist now
    before = _inodes(db)
    viol: dict[str, str] = {}
    if spec.get("sabotage") == "drop_locks":  # the checks catch a lock dropped by a stray close
        os.close(os.open(db, os.O_RDONLY))
    _signal("connected")
    done: list[str] = []
    i = 0
    deadline = time.monotonic() + SAFETY_S / 2
    while time.monotonic() < deadline:
        stopping = os.path.exists(spec["stop"])  # one more run after the stop: a write at the end
        try:
            run = quick.start(k=spec["base"] + i, hold=rng.choice([0.0, 0.01, 0.05]))
            i += 1
            run.wait(timeout=60)
            if run.status == "succeeded":
                done.append(run.id)
            else:
                viol.setdefault("run", f"[sqlite/run] run {run.id} ended {run.status}: {run.error}")
        except Exception as exc:
            tag = "io-error" if "disk I/O" in str(exc) else "error"
            viol.setdefault(tag, f"[sqlite/{tag}] {type(exc).__name__}: {str(exc)[:300]}")
        now = _inodes(db)
        if now != before:
            viol.setdefault(
                "wal-deleted",
                f"[sqlite/wal-deleted] -wal/-shm of the database were "
                f"deleted while this process held a connection "
                f"(inodes {before} -> {now})",
            )
        try:
            held.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.Error as exc:
            viol.setdefault("held-read", f"[sqlite/held-read] the user's connection: {exc}")
        if stopping:
            break
        time.sleep(rng.uniform(0.02, 0.15))  # a user's pace (and a database of a sane size)
    try:  # everything that succeeded is visible through the user's connection
        seen = {r[0] for r in held.execute("SELECT id FROM runs WHERE status = 'succeeded'")}
        lost = [r for r in done if r not in seen]
        if lost:
            viol.setdefault(
                "lost",
                f"[sqlite/lost] {len(lost)} succeeded runs not visible to the "
                f"user's connection, e.g. {lost[0]}",
            )
    except sqlite3.Error as exc:
        viol.setdefault("held-read", f"[sqlite/held-read] the user's connection: {exc}")
    held.close()
    _out(
        {
            "hold": {"runs": len(done), "ids": done, "mode": spec.get("mode", "rw")},
            "violations": list(viol.values()),
        }
    )


def _linger(spec: dict[str, Any]) -> None:
    """A long run (in another pid namespace, where this process may be pid 1), and, meanwhile,
    recovery passes from in here (``tether gc``), which see none of the host's processes."""
    from tether import cli

    db = spec["db"]
    run = linger.start(token=spec["token"], stop=spec["stop"])
    _out({"id": run.id, "ns_pid": os.getpid()})
    _signal("started")
    passes, errors = 0, []
    while not os.path.exists(spec["stop"]):
        if spec.get("sweep"):
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(["gc", "--db", db])
            passes += 1
            if code:
                errors.append(f"tether gc exited {code}")
        time.sleep(0.2)
    try:
        run.wait(timeout=SAFETY_S)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    _out({"id": run.id, "status": str(run.status), "passes": passes, "errors": errors[:5]})


def _settle(run: tether.Run, settle: dict[str, Any]) -> None:
    """Disk full: wait for the run's end; once the disk has space again (the parent creates the
    file ``settle["free"]``) its end must be stored within ``settle["after"]`` s."""
    free, after = settle["free"], settle["after"]
    t0 = time.monotonic()
    free_at: float | None = None
    raised = None

    def give_up() -> bool:
        nonlocal free_at
        if free_at is None and os.path.exists(free):
            free_at = time.monotonic()
        late = free_at is not None and time.monotonic() - free_at > after
        return late or time.monotonic() - t0 > SAFETY_S

    while True:
        try:
            run.wait(timeout=0.1)
            break
        except TimeoutError:
            pass
        except tether.TetherError as exc:  # e.g. "its end could not be stored": typed
            raised = f"{type(exc).__name__}: {exc}"
            break
        if give_up():
            break
    status = str(run.status)
    while status in ("pending", "running") and not give_up():
        time.sleep(0.05)
        status = str(run.status)
    _out(
        {
            "id": run.id,
            "status": status,
            "final": True,
            "raised": raised,
            "after_free": None if free_at is None else round(time.monotonic() - free_at, 2),
        }
    )


# =============================================================================================
# parent side: processes
# =============================================================================================


def child_env() -> dict[str, str]:
    """Environment for child processes: no TETHER_DB of the caller, ``tests/`` importable (so
    ``reliability.harness`` and ``helpers`` are, in the children of tests and of bench scripts)."""
    env = dict(os.environ)
    env.pop("TETHER_DB", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(TESTS), env.get("PYTHONPATH", "")] if p)
    return env


class Child:
    """One warm child process, used once."""

    def __init__(self, no: int, workdir: Path, env: dict[str, str], prefix: list[str] | None = None) -> None:
        self.no = no
        self.err_path = workdir / f"child-{no}.err"
        self.signal = workdir / f"child-{no}.sig"
        with open(self.err_path, "w") as err:  # prefix: e.g. unshare (self.pid is unshare's)
            self.proc = subprocess.Popen(
                [*(prefix or []), sys.executable, "-c", BOOT],
                env=env,
                cwd=workdir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.spec: dict[str, Any] = {}
        self.sent_at = 0.0
        self.kill_at: float | None = None
        self.killed = False  # a SIGKILL was sent
        self.out: list[Any] = []
        self.rc: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != '"ready"':
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"warm child {self.pid} failed to start: {line!r} {self.stderr()[-3000:]}")

    def send(self, spec: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.spec = spec
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.close()
        self.sent_at = time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.killed = True
        self.proc.wait()

    def collect(self) -> None:
        """After exit: returncode and the JSON lines printed."""
        self.rc = self.proc.wait()
        assert self.proc.stdout is not None
        for line in self.proc.stdout.read().splitlines():
            try:
                self.out.append(json.loads(line))
            except ValueError:
                self.out.append(line)
        self.proc.stdout.close()

    @property
    def was_killed(self) -> bool:
        return self.killed and self.rc == -signal.SIGKILL

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""


class WarmPool:
    """Children that have imported tether and wait for a spec on stdin (no import in the timing)."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.workdir, self.size = workdir, size
        self.env = child_env()
        self.count = 0
        self.idle: collections.deque[Child] = collections.deque()
        self.all: list[Child] = []
        self._fill()

    def _fill(self) -> None:
        while len(self.idle) < self.size:
            self.count += 1
            child = Child(self.count, self.workdir, self.env)
            self.idle.append(child)
            self.all.append(child)

    def take(self) -> Child:
        child = self.idle.popleft()
        self._fill()
        child.wait_ready()
        return child

    def close(self) -> None:
        for child in self.all:
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait()
            for stream in (child.proc.stdin, child.proc.stdout):
                if stream is not None and not stream.closed:
                    with contextlib.suppress(OSError):
                        stream.close()


# =============================================================================================
# parent side: reading and checking the database
# =============================================================================================


@dataclass
class RunRow:
    id: str
    key: str
    attempt: int
    status: str
    last_seq: int
    owner_pid: int | None
    resumed_from: str | None
    created_by: str
    result: str | None
    error: str | None
    ended_at: float | None
    pipeline: str = work.name

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running")


EventRow = tuple[int, str, str]  # (seq, kind, data)


@dataclass
class View:
    """One consistent read of the database (one read transaction)."""

    runs: dict[str, RunRow] = field(default_factory=dict)
    events: dict[str, list[EventRow]] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def connect(db: Path) -> sqlite3.Connection | None:
    """A plain sqlite3 connection to an existing database (never creates one)."""
    if not db.exists():
        return None
    uri = "file:" + urllib.parse.quote(str(db)) + "?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=SAFETY_S, isolation_level=None)


def read_view(db: Path, keys: set[str] | None = None) -> View:
    view = View()
    conn = connect(db)
    if conn is None:
        return view
    try:
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"runs", "events", "checkpoints"} <= tables:
            return view
        cols = (
            "SELECT id, key, attempt, status, last_seq, owner_pid, resumed_from, created_by, "
            "result, error, ended_at, pipeline FROM runs"
        )
        if keys is None:
            rows = conn.execute(cols).fetchall()
        else:  # a few keys: through the (key, attempt) index, not a scan of every table
            rows = [r for k in keys for r in conn.execute(cols + " WHERE key = ?", (k,))]
        for row in rows:
            view.runs[row[0]] = RunRow(*row)
        if keys is None:
            events = conn.execute("SELECT run_id, seq, kind, data FROM events ORDER BY run_id, seq")
            cps = conn.execute("SELECT run_id, name, value FROM checkpoints")
        else:
            ids = list(view.runs)
            events = (
                e
                for i in ids
                for e in conn.execute(
                    "SELECT run_id, seq, kind, data FROM events WHERE run_id = ? ORDER BY seq", (i,)
                )
            )
            cps = (
                c
                for i in ids
                for c in conn.execute("SELECT run_id, name, value FROM checkpoints WHERE run_id = ?", (i,))
            )
        for run_id, seq, kind, data in events:
            if run_id in view.runs:
                view.events.setdefault(run_id, []).append((seq, kind, data))
        for run_id, name, value in cps:
            if run_id in view.runs:
                view.checkpoints.setdefault(run_id, {})[name] = json.loads(value)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return view


def run_rows(db: Path, where: str = "", args: tuple[Any, ...] = ()) -> dict[str, RunRow]:
    """Rows of the runs table only (no events): ``where`` is an SQL condition."""
    conn = connect(db)
    if conn is None:
        return {}
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return {}
        return {
            r[0]: RunRow(*r)
            for r in conn.execute(
                "SELECT id, key, attempt, status, last_seq, owner_pid, resumed_from, created_by, "
                "result, error, ended_at, pipeline FROM runs" + (f" WHERE {where}" if where else ""),
                args,
            )
        }
    finally:
        conn.close()


def _has_runs(db: Path) -> bool:
    """A tether database is there (its creator may have been killed before the tables)."""
    conn = connect(db)
    if conn is None:
        return False
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def active_per_key(db: Path) -> list[tuple[str, int]]:
    """Keys with more than one active run (should be none)."""
    conn = connect(db)
    if conn is None:
        return []
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return []
        return conn.execute(
            "SELECT key, count(*) FROM runs WHERE status IN ('pending', 'running') "
            "GROUP BY key HAVING count(*) > 1"
        ).fetchall()
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = connect(db)
    if conn is None:
        return "ok"
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


Journal = list[tuple[str, str, str, int, int]]  # (kind "step"/"item", name, run id, attempt, pid)


def read_journal(path: Path) -> tuple[Journal, list[str]]:
    out: Journal = []
    bad: list[str] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out, bad
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("step", "item"):
            bad.append(line)
            continue
        kind, name, run_id, attempt, pid = parts
        out.append((kind, name if kind == "step" else f"{int(name)}", run_id, int(attempt), int(pid)))
    return out, bad


def cp_name(kind: str, name: str) -> str:
    """The checkpoint name of a journal entry (see Context.step and fanout.run_map)."""
    return f"step:{name}" if kind == "step" else f"map:items:{name}"


class Checker:
    """Invariant checks for one database; remembers what it saw to check later reads against."""

    def __init__(self, db: Path, *, typed_failures: bool = False) -> None:
        self.db = db
        self.typed_failures = typed_failures  # a disk that fills: a run may fail with a StoreError
        self.seen: dict[str, list[EventRow]] = {}  # events read so far (the longest read)
        self.terminal: dict[str, tuple[Any, ...]] = {}  # row fingerprint of runs seen terminal
        self.checks = 0
        self.violations: list[str] = []
        self._seen_violations: set[str] = set()
        self.reexecuted = 0  # executions of a step/item that was not recorded (allowed)
        self.skipped = 0  # recorded step/items a resumed attempt did not execute again

    def ok(self, cond: bool, what: str) -> bool:
        self.checks += 1
        if not cond and what not in self._seen_violations:  # a lasting one is reported once
            self._seen_violations.add(what)
            self.violations.append(f"{self.db.parent.name}/{self.db.name}: {what}")
        return cond

    def read(self, action: str, read: Callable[[], T], default: T, *, skip_operational: bool = False) -> T:
        """``read()`` of the database, by the parent, while judging ``action``. A sabotaged process
        (or a real bug) can damage the database under its readers ("database disk image is
        malformed"): that is a violation, ``[<action>/db-damaged]``, and the judging goes on with
        ``default``, so that the round still collects every child's report and the soak lives.
        ``skip_operational``: an ``OperationalError`` is expected (a disk that is full) and
        skipped without a word."""
        try:
            return read()
        except sqlite3.DatabaseError as exc:
            if not (skip_operational and isinstance(exc, sqlite3.OperationalError)):
                self.ok(False, f"[{action}/db-damaged] reading the database: {type(exc).__name__}: {exc}")
            return default

    # -- snapshots taken while children run (before a kill) ----------------------------------

    def absorb(self, view: View) -> None:
        """Events read now must extend what was read before; remember the longer read."""
        for run_id, evs in view.events.items():
            prev = self.seen.get(run_id, [])
            same = self.ok(
                evs[: len(prev)] == prev,
                f"run {run_id}: events read earlier are no longer a prefix "
                f"(had {len(prev)}, now {len(evs)}: {_first_diff(prev, evs)})",
            )
            if same and len(evs) > len(prev):
                self.seen[run_id] = evs

    def sample_active(self, *, skip_operational: bool = False) -> None:
        dup = self.read("sample", lambda: active_per_key(self.db), [], skip_operational=skip_operational)
        self.ok(not dup, f"more than one active run for a key: {dup}")

    # -- the full check -----------------------------------------------------------------------

    def check(self, journals: dict[str, Path], *, recovered: bool) -> View:
        """Every invariant. ``recovered``: every owner is dead and recovery ran: nothing active."""
        view = self.read("check", lambda: read_view(self.db), View())
        self.reexecuted = self.skipped = 0  # figures of this read (the last one is reported)
        check = self.read("check", lambda: integrity(self.db), "not read")  # once: it reads the whole file
        self.ok(check == "ok", f"PRAGMA integrity_check: {check}")
        per_key: dict[str, list[RunRow]] = collections.defaultdict(list)
        for run in view.runs.values():
            per_key[run.key].append(run)
        for key, runs in per_key.items():
            runs.sort(key=lambda r: r.attempt)
            active = [r.id for r in runs if r.active]
            self.ok(len(active) <= 1, f"key {key}: {len(active)} active runs {active}")
            self.ok(
                [r.attempt for r in runs] == list(range(1, len(runs) + 1)),
                f"key {key}: attempts {[r.attempt for r in runs]}",
            )
            for prev, run in itertools.pairwise(runs):
                # start(policy="resume") resumes the latest attempt; Run.resume() the attempt it
                # was called on, which another process may have followed with a newer one
                allowed = (
                    {prev.id}
                    if run.created_by == "start:resume"
                    else {r.id for r in runs if r.attempt < run.attempt}
                )
                self.ok(
                    run.resumed_from in allowed,
                    f"run {run.id} (attempt {run.attempt}, {run.created_by}) resumed from "
                    f"{run.resumed_from}, not from attempt {prev.attempt} ({prev.id})",
                )
        for run in view.runs.values():
            self._check_run(view, run, recovered)
        for key, path in journals.items():
            self._check_journal(view, per_key.get(key, []), path)
        self.absorb(view)
        return view

    def _check_run(self, view: View, run: RunRow, recovered: bool) -> None:
        evs = view.events.get(run.id, [])
        seqs = [e[0] for e in evs]
        self.ok(
            seqs == list(range(1, len(evs) + 1)) and run.last_seq == len(evs),
            f"run {run.id}: seqs not contiguous 1..last_seq={run.last_seq}: "
            f"{_gaps(seqs)} ({len(evs)} events)",
        )
        self.ok(bool(evs) and evs[0][1] == "created", f"run {run.id}: first event is not 'created'")
        if recovered:
            self.ok(
                not run.active,
                f"run {run.id} is still {run.status} after recovery (owner pid {run.owner_pid})",
            )
        ours = run.pipeline == work.name  # the checks of the work pipeline's outcome
        logs = [json.loads(d).get("message", "") for _, k, d in evs if k == "log"]
        body = [m for m in logs if m[:1] == "L" and m[1:].isdigit()] if ours else []
        self.ok(
            body == [f"L{i}" for i in range(len(body))],
            f"run {run.id}: log lines with a gap or duplicate: {_log_gaps(body)}",
        )
        fp = (run.status, run.result, run.error, run.ended_at, run.last_seq)
        if run.id in self.terminal:
            old = self.terminal[run.id]
            self.ok(
                fp == old,
                f"terminal run {run.id} changed: {old[0]} -> {fp[0]} (last_seq {old[4]} -> {fp[4]})",
            )
            self.ok(evs == self.seen.get(run.id), f"terminal run {run.id}: its events changed")
        if not run.active:
            self.terminal.setdefault(run.id, fp)
            kinds = [k for _, k, _ in evs]
            self.ok(
                kinds.count(run.status) == 1 and kinds[-1] == run.status,
                f"run {run.id} ({run.status}): status event not once and last: {kinds[-3:]}",
            )
        if run.status == "failed" and self.typed_failures:
            err = json.loads(run.error or "{}")
            self.ok(
                _typed(err.get("type")),
                f"[disk/untyped-failure] run {run.id} failed with {err.get('type')}: {err.get('message')}",
            )
        else:
            self.ok(
                run.status != "failed",
                f"run {run.id} failed, but the workload never fails: "
                f"{json.loads(run.error or '{}').get('message')}",
            )
        if run.status == "succeeded" and ours:
            result = json.loads(run.result or "null") or {}
            cps = view.checkpoints.get(run.id, {})
            steps = [cps.get(f"step:s{k}") for k in range(len(result.get("steps", [])))]
            items = [cps.get(f"map:items:{i}") for i in range(len(result.get("items", [])))]
            self.ok(
                result.get("steps") == steps and result.get("items") == items,
                f"run {run.id}: result disagrees with its checkpoints",
            )
            self.ok(
                result.get("logs") == len(body),
                f"run {run.id}: returned after {result.get('logs')} log lines, {len(body)} stored",
            )
        if run.resumed_from is not None and run.resumed_from in view.runs:
            parent = view.checkpoints.get(run.resumed_from, {})
            mine = view.checkpoints.get(run.id, {})
            self.ok(
                all(mine.get(n) == v for n, v in parent.items()),
                f"run {run.id}: checkpoints of {run.resumed_from} not copied unchanged",
            )

    def _check_journal(self, view: View, runs: list[RunRow], path: Path) -> None:
        entries, bad = read_journal(path)
        self.ok(not bad, f"{path.name}: unreadable journal lines {bad[:3]}")
        ids = {r.id for r in runs}
        done: collections.Counter[tuple[str, str]] = collections.Counter()
        executed: set[tuple[str, str]] = set()
        for kind, name, run_id, attempt, pid in entries:
            cp = cp_name(kind, name)
            run = view.runs.get(run_id)
            if not self.ok(
                run is not None and run_id in ids,
                f"{path.name}: {kind} {name} executed by unknown run {run_id}",
            ):
                continue
            assert run is not None
            done[(run_id, cp)] += 1
            executed.add((run_id, cp))
            self.ok(
                pid == run.owner_pid and attempt == run.attempt,
                f"run {run_id}: {cp} executed by pid {pid} attempt {attempt}, the owner is "
                f"pid {run.owner_pid} attempt {run.attempt}",
            )
            inherited = view.checkpoints.get(run.resumed_from or "", {})
            self.ok(
                cp not in inherited,
                f"run {run_id} (attempt {run.attempt}) executed {cp} again although "
                f"{run.resumed_from} recorded it",
            )
        by_attempt = {r.attempt: r.id for r in runs}
        for run_id, cp in executed:  # at-least-once: an unrecorded execution repeated on resume
            run = view.runs[run_id]
            if any((by_attempt.get(a), cp) in executed for a in range(1, run.attempt)):
                self.reexecuted += 1
        for (run_id, cp), n in done.items():
            self.ok(n == 1, f"run {run_id}: {cp} executed {n} times in one attempt")
        for run in runs:
            inherited = view.checkpoints.get(run.resumed_from or "", {})
            for cp, value in view.checkpoints.get(run.id, {}).items():
                if cp in inherited:
                    if (run.id, cp) not in executed:
                        self.skipped += 1
                    continue
                self.ok(
                    isinstance(value, dict) and value.get("run") == run.id and (run.id, cp) in executed,
                    f"run {run.id}: checkpoint {cp} = {value} not produced by its own journalled execution",
                )


def _typed(name: str | None) -> bool:
    """``name`` is one of tether's typed errors (tether.errors)."""
    cls = getattr(tether_errors, name or "", None)
    return isinstance(cls, type) and issubclass(cls, tether_errors.TetherError)


def _gaps(seqs: list[int]) -> str:
    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
    dups = [s for s, n in collections.Counter(seqs).items() if n > 1]
    return f"missing {missing[:10]} duplicated {dups[:10]}"


def _log_gaps(body: list[str]) -> str:
    nums = [int(m[1:]) for m in body]
    for i, n in enumerate(nums):
        if n != i:
            return f"position {i} holds L{n}"
    return "none"


def _first_diff(a: list[EventRow], b: list[EventRow]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"at {i}: {x} -> {y}"
    return f"lengths {len(a)} -> {len(b)}"


# =============================================================================================
# parent side: the kill harness
# =============================================================================================

# -- the other faults (issue 11): kinds, capabilities, pure checks ----------------------------

FAULT_KINDS = ("sigint", "fork", "sqlite", "pidns", "disk")
ROOT_KINDS = ("pidns", "disk")  # need root: unshare --pid, mount -t tmpfs
# faults one episode brings, on average (to spread the episodes over the soak's rounds)
PER_EPISODE = {"sigint": 20, "fork": 3.5, "sqlite": 1, "pidns": 1, "disk": 1}
DISK_MB = 48  # the tmpfs of a disk epoch (an epoch's database and WAL stay far below)
DISK_ROUNDS = 25  # rounds per disk epoch at most
SETTLE_S = 10.0  # once a fault is over, a run's end is stored within this
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
_CAPS: dict[str, str] | None = None


def capabilities() -> dict[str, str]:
    """Fault kinds that cannot be injected on this machine, with the reason (empty: all can)."""
    global _CAPS
    if _CAPS is not None:
        return _CAPS
    caps: dict[str, str] = {}
    if os.geteuid() != 0:
        for kind, what in (("pidns", "unshare --pid"), ("disk", "mounting a tmpfs")):
            caps[kind] = f"{what} needs root (this is uid {os.geteuid()})"
    else:
        why = unshare_fails(tuple(UNSHARE[1:]))
        if why:
            caps["pidns"] = why
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tmp],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode:
                caps["disk"] = f"mount -t tmpfs failed: {out.stderr.strip()[-300:]}"
            else:
                subprocess.run(["umount", tmp], capture_output=True, timeout=60)
    _CAPS = caps
    return caps


_GENERIC_KINDS = [  # violations of the kill harness's checks, by what they say
    ("after recovery", "active after recovery"),
    ("active runs", "two active runs for a key"),
    ("more than one active run", "two active runs for a key"),
    ("tether gc exited", "a recovery's error"),
    ("failed, but the workload never fails", "a run failed"),
    ("of live child", "a live run ended"),
    ("(not killed) exited", "a child's error"),
    ("hung for", "a hung child"),
    ("no longer a prefix", "lost events"),
    ("not contiguous", "seq gap"),
    ("gap or duplicate", "log gap"),
    ("integrity_check", "corruption"),
    ("changed", "a terminal run changed"),
    ("executed", "checkpoint re-executed"),
    ("recovery", "a recovery's error"),
    ("status event", "status event"),
    ("first event", "first event not 'created'"),
    ("resumed from", "resume chain"),
    ("attempts", "attempt numbers"),
    ("journal", "journal"),
    ("printed no end", "a child's error"),
    ("left (", "exit in flight"),
]


def violation_kind(text: str) -> str:
    tag = re.search(r"\[(\w+/[\w-]+)\]", text)
    if tag:
        return tag.group(1)
    for needle, kind in _GENERIC_KINDS:
        if needle in text:
            return kind
    return text.split(": ", 1)[-1][:40]


def fork_findings(run: RunRow | None, events: list[EventRow], entry: dict[str, Any]) -> list[str]:
    """What is wrong with the run of one ``forker`` call: its parent's outcome, every line logged
    by the parent once, nothing from the fork child."""
    how = entry["how"]
    if run is None:
        return [f"[fork/lost] no run for {entry['token']} ({how})"]
    out = []
    err = json.loads(run.error or "{}")
    result = json.loads(run.result or "null") or {}
    if run.status != "succeeded":
        out.append(
            f"[fork/parent-outcome] run {run.id} (fork child: {how}) ended {run.status} "
            f"({err.get('type')}: {str(err.get('message'))[:200]}), not with its parent's "
            "result"
        )
    elif result.get("who") != "parent" or result.get("pid") != run.owner_pid:
        out.append(
            f"[fork/child-result] run {run.id} (fork child: {how}) has the fork child's result {result}"
        )
    if result.get("child") == "hung":
        out.append(
            f"[fork/child-hung] the fork child ({how}) of run {run.id} had not exited "
            f"after {FORK_WAIT_S:.0f} s"
        )
    logs = [json.loads(d).get("message", "") for _, k, d in events if k == "log"]
    expected = [f"F{i}" for i in range(entry["before"])] + [f"P{i}" for i in range(entry["after"])]
    child = [m for m in logs if m.startswith("C")]
    dups = sorted({m for m in logs if logs.count(m) > 1})
    if child:
        out.append(
            f"[fork/child-wrote] run {run.id} ({how}): lines logged in the fork child were stored: {child}"
        )
    if dups:
        out.append(f"[fork/duplicated] run {run.id} ({how}): lines stored more than once: {dups}")
    if not out and logs != expected:
        out.append(f"[fork/logs] run {run.id} ({how}): log lines {logs}, expected {expected}")
    return out


@dataclass(eq=False)
class FaultRun:
    """One episode of a fault: its child process and what it was told."""

    kind: str
    child: Child
    spec: dict[str, Any]
    stop: Path | None = None  # lingering episodes end when this file exists
    exits: int = 0  # sqlite: other processes that closed the database while this one held it

    @property
    def lingering(self) -> bool:  # lives through the round's recovery
        return self.kind in ("sqlite", "pidns")


class DiskFiller(threading.Thread):
    """Fills the tmpfs under the database (ENOSPC for everyone), holds, frees it, then creates
    ``free`` (children wait for it before they judge their runs' ends)."""

    def __init__(
        self,
        mount: Path,
        free: Path,
        delay: float,
        hold: float,
        busy: Callable[[], bool],
        full: threading.Event,
        trigger: Path | None = None,
    ) -> None:
        super().__init__(daemon=True, name="disk-filler")
        self.mount, self.free, self.delay, self.hold, self.busy = mount, free, delay, hold, busy
        self.full = full  # set while the disk is full
        self.trigger = trigger  # fill once this file exists (a body about to return), not later
        # than ``delay``
        self.overlapped = False  # a child of the round was running while the disk was full
        self.filled = 0
        self.error: str | None = None
        self.triggered = self.emptied = False

    def run(self) -> None:
        path = self.mount / "filler"
        try:
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline and not (self.trigger and self.trigger.exists()):
                time.sleep(0.001)
            # SQLite reuses a WAL's pages after a checkpoint: empty it first, so that the next
            # writes need new space (as they do in a young database on a filling disk)
            self.triggered = bool(self.trigger and self.trigger.exists())
            with contextlib.suppress(sqlite3.Error):
                conn = connect(self.mount / "runs.db")
                if conn is not None:
                    conn.execute("PRAGMA busy_timeout = 200")
                    self.emptied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
                    conn.close()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for size in (1 << 20, 1 << 16, 4096, 512):
                    chunk = b"\0" * size
                    while True:
                        try:
                            self.filled += os.write(fd, chunk)
                        except OSError as exc:
                            if exc.errno != errno.ENOSPC:
                                raise
                            break
            finally:
                os.close(fd)
            self.full.set()
            if self.trigger is not None:  # the watched body returns now
                Path(f"{self.trigger}.go").touch()
            self.overlapped = self.busy()
            time.sleep(self.hold)
            self.overlapped = self.overlapped or self.busy()
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.full.clear()
            self.free.touch()
            if self.trigger is not None:
                Path(f"{self.trigger}.go").touch()


TRIP_OPS = ["start", "claim", "flush", "put_checkpoint", "put_checkpoints", "finish"]
POINTS = ["body", "step", "item", "return"]
RECOVERY_MODES = ["gc", "gc", "get_run", "ls", "cancel", "start", "start", "gc-cli"]


@dataclass(frozen=True)
class Plan:
    """When to kill one child."""

    kind: str  # "random" | "trip" | "point" | "none" | "watch" (signals at ``point``, not killed)
    delay: float = 0.0  # random: after the spec is sent; trip/point: after the signal
    op: str = ""
    when: str = ""  # "pre" | "post" (commit)
    nth: int = 1
    point: str = ""
    via: str = "start"  # "start": start(policy="resume"); "resume": the latest attempt's .resume()
    exit: str = ""  # the child leaves while its run is in flight: "return" | "sysexit" | "raise"
    linger: float = 0.0  # ... that long after start() returned

    @property
    def label(self) -> str:
        if self.kind == "trip":
            return f"trip {self.op} {self.when}-commit"
        if self.kind == "point":
            return f"point {self.point.split(':')[0]}"
        return self.kind

    def arm(self, signal_path: Path) -> dict[str, Any] | None:
        if self.kind == "watch" and self.op:  # after the commit of ``op``: wait for the parent
            return {"op": self.op, "when": "post", "nth": 1, "signal": str(signal_path), "wait": True}
        if self.kind == "trip":
            return {"op": self.op, "when": self.when, "nth": self.nth, "signal": str(signal_path)}
        if self.kind in ("point", "watch"):
            return {"point": self.point, "signal": str(signal_path), "wait": self.kind == "watch"}
        return None


@dataclass
class Lineage:
    """One key: successive attempts, each started with policy="resume" by a child process."""

    no: int
    journal: Path
    params: dict[str, Any]
    children: int = 0
    done: bool = False
    has_runs: bool = False  # an attempt is in the database


@dataclass
class Report:
    kills: int = 0
    kills_by: collections.Counter[str] = field(default_factory=collections.Counter)
    children: int = 0
    rounds: int = 0
    epochs: int = 0
    runs: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    lineages: int = 0
    lineages_succeeded: int = 0
    max_attempts: int = 0
    recoveries: collections.Counter[str] = field(default_factory=collections.Counter)
    orphans: collections.Counter[str] = field(default_factory=collections.Counter)  # found active
    exits: collections.Counter[str] = field(default_factory=collections.Counter)  # left in flight
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    reexecuted: int = 0
    skipped: int = 0
    seconds: float = 0.0
    seed: int = 0
    unfired: list[str] = field(default_factory=list)  # chosen moments never reached
    faults: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind
    fault_detail: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    faults_skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it cannot run here
    fault_runs: collections.Counter[str] = field(default_factory=collections.Counter)  # by status

    def violation_kinds(self) -> collections.Counter[str]:
        """Violations by kind: the ``[kind/what]`` tag of a fault's check, else a short name."""
        return collections.Counter(violation_kind(v) for v in self.violations)

    def fault_lines(self) -> list[str]:
        if not (self.faults or self.faults_skipped):
            return []
        total = sum(self.faults.values())
        out = [
            f"faults           {self.kills + total} ({self.kills} SIGKILLs, "
            + ", ".join(f"{k}: {self.faults[k]}" for k in FAULT_KINDS if k in self.faults)
            + ")"
        ]
        for kind in FAULT_KINDS:
            detail = self.fault_detail.get(kind)
            if detail:
                top = ", ".join(f"{k}: {v}" for k, v in detail.most_common(12))
                out.append(f"  {kind:<14} {top}")
        for kind, why in self.faults_skipped.items():
            out.append(f"  {kind:<14} SKIPPED: {why}")
        st = ", ".join(f"{k}: {v}" for k, v in sorted(self.fault_runs.items()))
        out.append(f"  their runs     {sum(self.fault_runs.values())} ({st})")
        return out

    def lines(self) -> list[str]:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(self.kills_by.items()))
        rec = ", ".join(f"{k}: {v}" for k, v in sorted(self.recoveries.items()))
        st = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return [
            f"seed             {self.seed}",
            f"kills            {self.kills}",
            f"  by moment      {by}",
            f"child processes  {self.children}",
            f"rounds / DBs     {self.rounds} / {self.epochs}",
            f"runs             {self.runs} ({st})",
            f"keys             {self.lineages} ({self.lineages_succeeded} succeeded in the end; "
            f"up to {self.max_attempts} attempts per key)",
            f"recoveries       {rec}",
            f"  runs found active by them: {', '.join(f'{k}: {v}' for k, v in sorted(self.orphans.items()))}",
            f"exits in flight  "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(self.exits.items())) or 'none'} "
            "(not killed: the process left with its run in flight)",
            f"resume skipped   {self.skipped} recorded steps/items; re-executed "
            f"{self.reexecuted} unrecorded ones",
            f"moments missed  {self.unfired or 'none'}",
            *self.fault_lines(),
            f"invariant checks {self.checks}",
            f"violations       {len(self.violations)}"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in self.violation_kinds().most_common())})"
                if self.violations
                else ""
            ),
            f"duration         {self.seconds:.1f} s",
        ]


class KillHarness:
    """Rounds of children killed at chosen and random moments, recovery, invariant checks."""

    def __init__(
        self,
        workdir: Path,
        *,
        kills: int,
        seed: int | None = None,
        parallel: int = 3,
        per_db: int = 100,
        race: float = 0.2,
        max_attempts: int = 10,
        say: Callable[[str], None] | None = None,
        faults: dict[str, int] | None = None,
        catalog: bool = True,
        sabotage: dict[str, str] | None = None,
        settle: float = SETTLE_S,
    ) -> None:
        """``faults``: how many faults of each kind of FAULT_KINDS to inject besides the SIGKILLs
        (kinds this machine cannot inject are skipped and listed in the report); ``catalog``:
        kill at every chosen moment once first; ``sabotage``: kind -> a deliberate bug the
        kind's checks must catch (tests of the checks)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.target = kills
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.parallel, self.per_db, self.race = parallel, per_db, race
        self.max_attempts = max_attempts
        self.say = say or (lambda _msg: None)
        self.report = Report(seed=self.seed)
        self.pool: WarmPool | None = None
        self.catalog = self._catalog() if catalog else []
        self.tries: collections.Counter[Plan] = collections.Counter()
        self.fresh_db = False  # the first round of a database: kill some children early
        self.lineage_no = 0
        unknown = sorted(set(faults or {}) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        self.targets = {k: n for k, n in (faults or {}).items() if n > 0}
        missing = capabilities() if any(k in ROOT_KINDS for k in self.targets) else {}
        for kind in list(self.targets):
            if kind in missing:
                self.report.faults_skipped[kind] = missing[kind]
                del self.targets[kind]
        self.sabotage = dict(sabotage or {})
        self.settle = settle
        self.fault_no = 0
        self.hows: list[str] = []  # fork variants still to use in this cycle
        self.holders: list[FaultRun] = []  # sqlite episodes holding their connection now
        self.mount: Path | None = None  # the tmpfs of the current disk epoch
        self.mounts: list[Path] = []
        self.disk_full = threading.Event()
        self.alive: list[Child] = []  # children of the current round still running
        self.pending: collections.Counter[str] = collections.Counter()  # lingering, not judged

    # -- plans --------------------------------------------------------------------------------

    def _catalog(self) -> list[Plan]:
        """Every chosen moment once (in random order), before random plans take over."""
        plans = [
            Plan(
                "trip",
                self.rng.uniform(0, 0.003),
                op,
                when,
                nth=self.rng.randint(1, 3) if op in ("flush", "put_checkpoint") else 1,
                via="resume" if op == "claim" else "start",
            )
            for op in TRIP_OPS
            for when in ("pre", "post")
        ]
        plans += [
            Plan("point", self.rng.uniform(0, 0.02), point=p) for p in ("body", "step:s1", "item:2", "return")
        ]
        plans += [Plan("random", self.rng.uniform(0.0, 0.05))]  # while opening / starting
        plans += [
            Plan("trip", self.rng.uniform(0, 0.003), "new_attempt", when, via="resume")
            for when in ("pre", "post")
        ]  # Run.resume()
        plans += [
            Plan(
                "trip",
                self.rng.uniform(0, 0.003),
                "interrupt_own",
                when,  # at exit
                exit=exit_,
                linger=self.rng.uniform(0, 0.3),
            )
            for when, exit_ in (("pre", "sysexit"), ("post", "raise"))
        ]
        self.rng.shuffle(plans)
        return plans

    def _plan(self, lineage: Lineage, racer: bool) -> tuple[Plan, bool]:
        """A plan for the next child of ``lineage``, and whether it comes from the catalog."""
        if lineage.children + 1 >= self.max_attempts:
            return Plan("none"), False  # let every key end some time
        if self.catalog and not racer and not self.fresh_db and self.mount is None:
            plan = self.catalog.pop()
            if plan.via != "resume" or lineage.has_runs:  # Run.resume() needs an ended attempt
                return plan, True
            self.catalog.insert(0, plan)
        plan = self._random_plan(lineage)
        if not racer and self.rng.random() < 0.25:  # (a racer could resume an older attempt)
            plan = dataclasses.replace(plan, via="resume")
        if plan.kind == "trip" and plan.op == "claim" and plan.via != "resume":
            # start() claims its new run in its own transaction: a claim of its own is made for
            # an attempt of Run.resume()
            plan = dataclasses.replace(plan, **({"op": "start"} if racer else {"via": "resume"}))
        return plan, False

    def _random_plan(self, lineage: Lineage) -> Plan:
        plan = self._random_kill(lineage)
        if self.rng.random() < 0.12:  # the process leaves with its run in flight
            exit_ = self.rng.choice(["return", "sysexit", "raise"])
            if self.rng.random() < 0.5:
                plan = Plan("none")  # a clean exit, checked as such
            elif plan.kind == "trip" and self.rng.random() < 0.5:
                plan = dataclasses.replace(plan, op="interrupt_own", nth=1)
            plan = dataclasses.replace(plan, exit=exit_, linger=self.rng.uniform(0, 0.4))
            if self.mount is not None:  # a disk epoch judges the ends of live children instead
                plan = dataclasses.replace(plan, exit="", linger=0.0)
        return plan

    def _random_kill(self, lineage: Lineage) -> Plan:
        if self.fresh_db and self.rng.random() < 0.67:
            return Plan("random", self.rng.uniform(0.0, 0.08))  # while creating the database
        r = self.rng.random()
        if r < 0.35:
            return Plan("random", self.rng.uniform(0.0, 0.9))
        if r < 0.75:
            op = self.rng.choice(TRIP_OPS)
            nth = 1
            if op == "flush":
                nth = self.rng.randint(1, 8)
            elif op == "put_checkpoint":
                nth = self.rng.randint(1, lineage.params["n_steps"])
            elif op == "put_checkpoints":
                nth = self.rng.randint(1, 3)
            return Plan("trip", self.rng.uniform(0, 0.003), op, self.rng.choice(["pre", "post"]), nth)
        if r < 0.92:
            p = self.rng.choice(POINTS)
            if p == "step":
                p = f"step:s{self.rng.randrange(lineage.params['n_steps'])}"
            elif p == "item":
                p = f"item:{self.rng.randrange(lineage.params['n_items'])}"
            return Plan("point", self.rng.uniform(0, 0.02), point=p)
        return Plan("none")

    def new_lineage(self, epoch_dir: Path) -> Lineage:
        self.lineage_no += 1
        rng = self.rng
        journal = epoch_dir / f"journal-{self.lineage_no}.txt"
        params = {
            "journal": str(journal),
            "n_steps": rng.randint(2, 5),
            "n_items": rng.randint(3, 10),
            "logs": rng.randint(5, 40),
            "burst": rng.randint(20, 400),
            "pace": rng.choice([0.001, 0.002, 0.004]),
        }
        self.report.lineages += 1
        return Lineage(self.lineage_no, journal, params)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> Report:
        t0 = time.monotonic()
        self.pool = WarmPool(self.workdir, self.parallel * 2 + 1)
        try:
            while self._want_more(disk=True):
                if self.report.rounds > 100 + 5 * (self.target + sum(self.targets.values())):
                    self.report.violations.append(  # e.g. every start() fails before a SIGINT
                        f"gave up after {self.report.rounds} rounds: faults left to inject "
                        f"{ {k: self._left(k) for k in self.targets if self._left(k) > 0} }"
                    )
                    break
                disk = self._left("disk") > 0 and (
                    not self._want_more(disk=False) or (self.report.epochs > 0 and self.rng.random() < 0.35)
                )
                self._epoch(disk)
        finally:
            self.pool.close()
            for mount in self.mounts:
                self._unmount(mount)
            self.report.seconds = time.monotonic() - t0
        return self.report

    def _left(self, kind: str) -> float:
        return self.targets.get(kind, 0) - self.report.faults[kind] - self.pending[kind]

    def _want_more(self, *, disk: bool) -> bool:
        kinds = [k for k in self.targets if disk or k != "disk"]
        return self.report.kills < self.target or bool(self.catalog) or any(self._left(k) > 0 for k in kinds)

    def _epoch(self, disk: bool = False) -> None:
        self.report.epochs += 1
        epoch_dir = self.workdir / f"db{self.report.epochs}"
        epoch_dir.mkdir()
        if disk:  # the database on a small tmpfs that a filler fills and frees in every round
            self.mount = epoch_dir / "tmpfs"
            self.mount.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(self.mount)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.mounts.append(self.mount)
        db = (self.mount or epoch_dir) / "runs.db"  # created by the first child (maybe killed)
        checker = Checker(db, typed_failures=disk)
        lineages = [self.new_lineage(epoch_dir) for _ in range(self.parallel)]
        journals: dict[str, Path] = {}
        kills0 = self.report.kills
        goal = kills0 + max(0, min(self.per_db, self.target - kills0))
        deferred = False
        self.fresh_db = True
        rounds = 0
        try:
            while True:
                self.report.rounds += 1
                rounds += 1
                before = self.report.kills
                kinds = self._round_faults(db) if not disk else ["disk"]
                lingering = self._round(db, checker, lineages, kinds, epoch_dir, rounds)
                self.fresh_db = False
                if disk:
                    over = self._left("disk") <= 0 or rounds >= DISK_ROUNDS
                else:
                    over = not self.catalog and (
                        self.report.kills >= kills0 + self.per_db or not self._want_more(disk=False)
                    )
                last = over or self.report.kills >= goal
                mode = self.rng.choice(RECOVERY_MODES)
                if deferred or last:
                    mode = mode if mode != "start" else "gc"
                deferred = mode == "start"
                self._recover(db, checker, mode)
                self._end_lingering(db, checker, lingering)
                journals = self._journals(lineages, journals)
                view = checker.check(journals, recovered=not deferred)
                keys = {r.key for r in view.runs.values()}
                for i, lin in enumerate(lineages):
                    lin.has_runs = work.key_for(work.bind(**lin.params)) in keys
                    if lin.done or lin.children >= self.max_attempts:
                        lineages[i] = self.new_lineage(epoch_dir)
                faults = sum(self.report.faults.values())
                self.say(
                    f"round {self.report.rounds}: kills {self.report.kills} (+"
                    f"{self.report.kills - before}), "
                    + (f"faults {faults} ({' '.join(kinds)}), " if self.targets else "")
                    + f"recovery {mode}, checks {self.report.checks + checker.checks}, "
                    f"violations {len(self.report.violations) + len(checker.violations)}"
                )
                if over:
                    break
            self._finish_epoch(db, checker, journals)
        finally:
            if self.mount is not None:
                self._unmount(self.mount, keep=epoch_dir / "from-tmpfs")
                self.mounts.remove(self.mount)
                self.mount = None

    def _unmount(self, mount: Path, keep: Path | None = None) -> None:
        """Copy the database off the tmpfs (for a look after the soak), then unmount it."""
        if keep is not None:
            keep.mkdir(exist_ok=True)
            for f in mount.glob("runs.db*"):
                shutil.copy2(f, keep / f.name)
        out = subprocess.run(["umount", str(mount)], capture_output=True, timeout=60)
        if out.returncode:  # a process still has a file open there: detach it now
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=60)

    @staticmethod
    def _journals(lineages: list[Lineage], journals: dict[str, Path]) -> dict[str, Path]:
        """Journal file of each key seen so far (keys are derived from params by tether)."""
        out = dict(journals)
        for lin in lineages:
            key = work.key_for(work.bind(**lin.params))
            out[key] = lin.journal
        return out

    def _finish_epoch(self, db: Path, checker: Checker, journals: dict[str, Path]) -> None:
        view = checker.read("finish", lambda: read_view(db), View())
        rep = self.report
        others = [r for r in view.runs.values() if r.pipeline != work.name]  # the faults' runs
        rep.fault_runs.update(r.status for r in others)
        view.runs = {i: r for i, r in view.runs.items() if r.pipeline == work.name}
        rep.runs += len(view.runs)
        rep.statuses.update(r.status for r in view.runs.values())
        per_key = collections.Counter(r.key for r in view.runs.values())
        rep.max_attempts = max([rep.max_attempts, *per_key.values()])
        latest: dict[str, RunRow] = {}
        for r in view.runs.values():
            if r.key not in latest or r.attempt > latest[r.key].attempt:
                latest[r.key] = r
        rep.lineages_succeeded += sum(r.status == "succeeded" for r in latest.values())
        rep.checks += checker.checks
        rep.violations += checker.violations
        rep.reexecuted += checker.reexecuted
        rep.skipped += checker.skipped

    def _round(
        self,
        db: Path,
        checker: Checker,
        lineages: list[Lineage],
        kinds: list[str] | None = None,
        epoch_dir: Path | None = None,
        no: int = 0,
    ) -> list[FaultRun]:
        """One round: the lineages' children (killed by their plans) and an episode of each fault
        kind in ``kinds``. Returns the lingering episodes (ended after the round's recovery)."""
        assert self.pool is not None
        epoch_dir = epoch_dir or db.parent
        faults = [
            self._start_fault(k, db, epoch_dir)
            for k in sorted(kinds or [], key=lambda k: k != "pidns")
            if k != "disk"
        ]  # pidns: a cold child first
        filler = None
        settle = None
        if "disk" in (kinds or []) and self.mount is not None:
            free = epoch_dir / f"free-{no}"
            settle = {"free": str(free), "after": self.settle}
            watch = self.rng.random() < 0.5  # fill as a body returns: its end meets a full disk
            filler = DiskFiller(
                self.mount,
                free,
                self.rng.uniform(0, 3.0 if watch else 0.25),
                self.rng.uniform(0.05, 1.2),
                lambda: any(c.proc.poll() is None for c in self.alive),
                self.disk_full,
            )
        running: list[tuple[Child, Lineage | None, Plan]] = []
        catalogued: list[tuple[Child, Plan]] = []
        for lin in lineages:
            if lin.done:
                continue
            copies = 2 if self.rng.random() < self.race else 1
            for copy in range(copies):
                plan, listed = self._plan(lin, racer=copy > 0)
                if filler is not None and watch and filler.trigger is None:
                    # the disk fills as the run ends, or right after start() committed it (created
                    # and claimed in that transaction: its first checkpoint is the next write)
                    plan = self.rng.choice(
                        [Plan("watch", point="return"), Plan("watch", op="start", when="post")]
                    )
                    listed = False
                child = self._send_run(db, lin, plan, settle)
                if plan.kind == "watch" and filler is not None:
                    filler.trigger = child.signal
                running.append((child, lin, plan))
                if listed:
                    catalogued.append((child, plan))
        finite = [f for f in faults if not f.lingering]
        self.alive = [c for c, _, _ in running]
        if filler is not None:
            filler.start()
        try:
            self._drive(db, checker, running + [(f.child, None, Plan("none")) for f in finite])
        finally:
            if filler is not None:
                filler.join()
                self._count_fill(checker, filler)
        for child, lin, plan in running:
            assert lin is not None
            if settle is not None:
                self._judge_disk_child(db, checker, child, lin)
            else:
                self._judge_run_child(db, checker, child, lin, plan)
        for f in finite:
            self._judge_fault(db, checker, f)
        for child, plan in catalogued:  # a chosen moment the child never reached: try again
            if not child.was_killed:
                self.tries[plan] += 1
                if self.tries[plan] < 8:
                    self.catalog.append(plan)
                else:
                    self.report.unfired.append(plan.label)
        return [f for f in faults if f.lingering]

    def _send_run(self, db: Path, lin: Lineage, plan: Plan, settle: dict[str, Any] | None = None) -> Child:
        assert self.pool is not None
        child = self.pool.take()
        lin.children += 1
        cfg = {"max_auto_resumes": 10_000, "flush_interval": self.rng.choice([0.25, 0.25, 0.05])}
        child.send(
            {
                "action": "run",
                "db": str(db),
                "params": lin.params,
                "configure": cfg,
                "arm": plan.arm(child.signal),
                "exit": plan.exit,
                "linger": plan.linger,
                "via": plan.via,
                "settle": settle,
                "sabotage": self.sabotage.get("disk") if settle else None,
            }
        )
        if plan.kind == "random":
            child.kill_at = child.sent_at + plan.delay
        return child

    def drive_one(self, db: Path, checker: Checker, lin: Lineage, plan: Plan) -> Child:
        """One child of ``lin`` with ``plan``, to its end (for scripted scenarios)."""
        if self.pool is None:
            self.pool = WarmPool(self.workdir, 1)
        child = self._send_run(db, lin, plan)
        self._drive(db, checker, [(child, lin, plan)])
        self._judge_run_child(db, checker, child, lin, plan)
        return child

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def _drive(self, db: Path, checker: Checker, running: list[tuple[Child, Lineage | None, Plan]]) -> None:
        """Kill the children by their plans; wait for all of them to end."""
        pending = list(running)
        next_sample = 0.0
        while pending:
            now = time.monotonic()
            for entry in list(pending):
                child, lin, plan = entry
                if child.proc.poll() is not None:
                    pending.remove(entry)
                    continue
                if child.kill_at is None and plan.kind in ("trip", "point") and child.signal.exists():
                    child.kill_at = now + plan.delay
                if child.kill_at is not None and now >= child.kill_at:
                    if lin is not None:  # what was flushed before the kill must survive it
                        key = work.key_for(work.bind(**lin.params))
                        view = self._reading(checker, lambda k=key: read_view(db, {k}))
                        checker.absorb(view)
                    child.kill()
                    pending.remove(entry)
                    if child.proc.returncode == -signal.SIGKILL:
                        self.report.kills += 1
                        self.report.kills_by[plan.label] += 1
                elif now - child.sent_at > SAFETY_S:
                    checker.ok(
                        False,
                        f"child {child.pid} ({plan.label}) hung for {SAFETY_S} s: {child.stderr()[-2000:]}",
                    )
                    child.kill()
                    pending.remove(entry)
            if now >= next_sample:
                if not self.disk_full.is_set():
                    checker.sample_active(skip_operational=self.mount is not None)
                next_sample = now + 0.05
            time.sleep(0.002)
        for child, _, _ in running:
            child.collect()
            self.report.children += 1
            if not child.was_killed:  # it closed the database: was it the last user?
                for holder in self.holders:
                    if holder.child is not child:
                        holder.exits += 1

    def _reading(self, checker: Checker, read: Callable[[], View]) -> View:
        """A read of the parent's while children run; on a full disk SQLite may be unable to
        create the -shm a reader needs: that read is skipped."""
        if self.disk_full.is_set():
            return View()
        return checker.read("absorb", read, View(), skip_operational=self.mount is not None)

    def _judge_run_child(self, db: Path, checker: Checker, child: Child, lin: Lineage, plan: Plan) -> None:
        if child.was_killed:
            return
        if plan.exit:
            self._judge_exit(db, checker, child, lin, plan)
            return
        ok = checker.ok(
            child.rc == 0, f"child {child.pid} (not killed) exited {child.rc}: {child.stderr()[-3000:]}"
        )
        ends = [o for o in child.out if isinstance(o, dict) and "status" in o]
        if not ok or not ends:
            checker.ok(bool(ends), f"child {child.pid} printed no end status: {child.out}")
            return
        end = ends[-1]
        key = work.key_for(work.bind(**lin.params))
        run = checker.read("judge", lambda: read_view(db, {key}), View()).runs.get(end["id"])
        if run is None:
            checker.ok(False, f"child {child.pid}: run {end['id']} not in the database")
            return
        if run.owner_pid == child.pid:  # its own run: a live owner's run always ends succeeded
            checker.ok(
                run.status == "succeeded",
                f"run {run.id} of live child {child.pid} ended {run.status}: {run.error}",
            )
        if run.status == "succeeded":
            lin.done = True

    def _judge_exit(self, db: Path, checker: Checker, child: Child, lin: Lineage, plan: Plan) -> None:
        """A child that left with its run in flight marked the run interrupted itself."""
        code = {"return": 0, "sysexit": 3, "raise": 1}[plan.exit]
        checker.ok(
            child.rc == code,
            f"child {child.pid} ({plan.exit}) exited {child.rc}, not {code}: {child.stderr()[-3000:]}",
        )
        ids = [o["id"] for o in child.out if isinstance(o, dict) and "exit" in o]
        if not checker.ok(bool(ids), f"child {child.pid} ({plan.exit}) never left: {child.out}"):
            return
        key = work.key_for(work.bind(**lin.params))
        run = checker.read("exit", lambda: read_view(db, {key}), View()).runs.get(ids[0])
        if run is None or run.owner_pid != child.pid:
            return  # it attached to another process's run: nothing of its own to mark
        reason = json.loads(run.error or "{}").get("message", "")
        self.report.exits[f"{plan.exit}: {run.status}"] += 1
        checker.ok(
            run.status == "succeeded"
            or (run.status == "interrupted" and "exited before the run ended" in reason),
            f"run {run.id}: its owner {child.pid} left ({plan.exit}) and the run is "
            f"{run.status} ({reason!r}), not interrupted by its own exit",
        )
        if run.status == "succeeded":
            lin.done = True

    # -- the other faults (issue 11) ----------------------------------------------------------

    def _round_faults(self, db: Path) -> list[str]:
        """The fault kinds of this round: spread over the rounds the SIGKILLs still need."""
        kinds = [k for k in ("sigint", "fork", "sqlite", "pidns") if self._left(k) > 0]
        if not kinds:
            return []
        rate = self.report.kills / max(1, self.report.rounds - 1) or 1.7  # kills per round
        rounds_left = max(1.0, (self.target - self.report.kills) / rate)
        out = []
        for kind in kinds:
            if kind == "sqlite" and not _has_runs(db):
                continue  # the user's connection reads an existing tether database
            episodes = -(-self._left(kind) // PER_EPISODE[kind])
            if self.rng.random() < episodes / rounds_left:
                out.append(kind)
        return out

    def _start_fault(self, kind: str, db: Path, epoch_dir: Path) -> FaultRun:
        assert self.pool is not None
        rng = self.rng
        self.fault_no += 1
        token = f"{kind}-{self.fault_no}"
        spec: dict[str, Any] = {
            "db": str(db),
            "seed": rng.randrange(1 << 30),
            "configure": {"flush_interval": rng.choice([0.25, 0.05])},
            "base": self.fault_no * 1_000_000,
            "settle": self.settle,
        }
        stop = epoch_dir / f"{token}.stop" if kind in ("sqlite", "pidns") else None
        if kind == "sigint":
            spec |= {
                "action": "storm",
                "landings": int(max(1, min(self._left(kind), rng.randint(10, 30)))),
                # mean gaps of 2 to 15 ms: many start() calls end untouched, the others
                # are hit anywhere in them
                "gap": rng.choice([0.004, 0.01, 0.03]),
                "hog": rng.random() < 0.75,
            }
        elif kind == "fork":
            forks = []
            for i in range(int(max(1, min(self._left(kind), rng.randint(2, 5))))):
                if not self.hows:  # every variant once per cycle, in random order
                    self.hows = rng.sample(FORK_HOWS, len(FORK_HOWS))
                forks.append(
                    {
                        "token": f"{token}.{i}",
                        "how": self.hows.pop(),
                        "before": rng.randint(1, 5),
                        "after": rng.randint(0, 3),
                        "flush": rng.random() < 0.3,
                    }
                )
            spec |= {"action": "forks", "forks": forks}
        elif kind == "sqlite":
            spec |= {"action": "hold", "stop": str(stop), "mode": rng.choice(["rw", "rw", "ro"])}
        elif kind == "pidns":
            shell = rng.random() < 0.3  # python is pid 2 there (under a shell), else pid 1
            spec |= {
                "action": "linger",
                "token": token,
                "stop": str(stop),
                "sweep": rng.random() < 0.7,
                "shell": shell,
            }
        if kind in self.sabotage and kind != "pidns":  # pidns: sabotages the outside pass
            spec["sabotage"] = self.sabotage[kind]
        spec["signal"] = ""  # set below, once the child (and its signal file) is known
        if kind == "pidns":
            self.pool.count += 1
            prefix = UNSHARE + (["sh", "-c", '"$@"; exit $?', "sh"] if spec["shell"] else [])
            child = Child(self.pool.count, self.workdir, self.pool.env, prefix)
            self.pool.all.append(child)
            child.wait_ready()
        else:
            child = self.pool.take()
        spec["signal"] = str(child.signal)
        child.send(spec)
        fault = FaultRun(kind, child, spec, stop)
        if fault.lingering:
            self.pending[kind] += 1
        if kind == "sqlite":
            self.holders.append(fault)
        return fault

    def _end_lingering(self, db: Path, checker: Checker, lingering: list[FaultRun]) -> None:
        """After the round's recovery: one more process uses the database and exits while the
        user's connection is held; more recovery from outside while each pid-namespaced run
        lives. Then stop the lingering episodes and judge them."""
        if any(f.kind == "sqlite" for f in lingering):
            self._outside_pass(db, checker, "ls", [])
        for f in lingering:
            if f.kind == "pidns":
                deadline = time.monotonic() + 30
                while (
                    not f.child.signal.exists()
                    and f.child.proc.poll() is None
                    and (time.monotonic() < deadline)
                ):
                    time.sleep(0.005)  # its run has started
                mode = self.rng.choice(["gc", "ls", "get_run"])
                key = linger.key_for(linger.bind(token=f.spec["token"], stop=f.spec["stop"]))
                ids = list(checker.read("pidns", lambda k=key: read_view(db, {k}), View()).runs)
                self._outside_pass(db, checker, mode, ids, self.sabotage.get("pidns"))
                self.report.fault_detail["pidns"][f"outside {mode}"] += 1
        for f in lingering:
            assert f.stop is not None
            f.stop.touch()
        self._drive(db, checker, [(f.child, None, Plan("none")) for f in lingering])
        for f in lingering:
            if f in self.holders:
                self.holders.remove(f)
            self.pending[f.kind] -= 1
            self._judge_fault(db, checker, f)

    def _outside_pass(
        self, db: Path, checker: Checker, mode: str, ids: list[str], sabotage: str | None = None
    ) -> None:
        assert self.pool is not None
        child = self.pool.take()
        child.send({"action": "recover", "mode": mode, "db": str(db), "ids": ids, "sabotage": sabotage})
        self._drive(db, checker, [(child, None, Plan("none"))])
        checker.ok(child.rc == 0, f"recovery {mode} exited {child.rc}: {child.stderr()[-3000:]}")

    def _judge_fault(self, db: Path, checker: Checker, f: FaultRun) -> None:
        child, kind = f.child, f.kind
        detail = self.report.fault_detail[kind]
        stderr = child.stderr()
        if not checker.ok(
            child.rc == 0, f"[{kind}/exit] child {child.pid} ({kind}) exited {child.rc}: {stderr[-3000:]}"
        ):
            return
        if kind != "fork":  # a fork child may print its own traceback (raise): that is Python's
            bad = [
                ln
                for ln in stderr.splitlines()
                if "Traceback" in ln or "Exception ignored" in ln or "Fatal Python" in ln
            ]
            checker.ok(not bad, f"[{kind}/stderr] child {child.pid} ({kind}) wrote errors: {stderr[-2000:]}")
        outs = [o for o in child.out if isinstance(o, dict)]
        for o in outs:
            for v in o.get("violations", []):
                checker.ok(False, f"{v} (child {child.pid})")
        if kind == "sigint":
            storm = next((o["storm"] for o in outs if "storm" in o), None)
            if not checker.ok(storm is not None, f"[sigint/exit] child {child.pid}: no report"):
                return
            assert storm is not None
            # a sabotaged episode (a test of the checks) has no storm: it counts once
            self.report.faults[kind] += storm["landed"] or int("sabotage" in f.spec)
            for where, n in storm["where"].items():
                detail[f"in {where}"] += n
            detail["start() calls"] += storm["starts"]
            detail["hog locked out 2 s"] += storm["hog_lockouts"]
        elif kind == "fork":
            entries = f.spec["forks"]
            keys = {forker.key_for(forker.bind(**e)): e for e in entries}
            view = checker.read("fork", lambda: read_view(db, set(keys)), View())
            by_key = {r.key: r for r in view.runs.values()}
            for key, e in keys.items():
                run = by_key.get(key)
                self.report.faults[kind] += 1
                detail[e["how"]] += 1
                for text in fork_findings(run, view.events.get(run.id, []) if run else [], e):
                    checker.ok(False, text)
        elif kind == "sqlite":
            hold = next((o["hold"] for o in outs if "hold" in o), None)
            if not checker.ok(hold is not None, f"[sqlite/exit] child {child.pid}: no report"):
                return
            assert hold is not None
            self.report.faults[kind] += 1
            detail[f"held {hold['mode']}"] += 1
            detail["processes that closed the database meanwhile"] += f.exits
            detail["runs of the holder"] += hold["runs"]
            runs = checker.read("sqlite", lambda: run_rows(db, "pipeline = ?", (quick.name,)), {})
            gone = [i for i in hold["ids"] if i not in runs or runs[i].status != "succeeded"]
            checker.ok(
                not gone,
                f"[sqlite/lost] {len(gone)} runs that succeeded in child "
                f"{child.pid} (holding a connection) are missing or changed in "
                f"the database, e.g. {gone[:1]}",
            )
        elif kind == "pidns":
            ends = [o for o in outs if "status" in o]
            start = next((o for o in outs if "ns_pid" in o), {})
            if not checker.ok(bool(ends), f"[pidns/exit] child {child.pid}: no end {child.out}"):
                return
            end = ends[-1]
            self.report.faults[kind] += 1
            detail[f"pid {start.get('ns_pid')} in its namespace"] += 1
            detail["sweeps from inside"] += end["passes"]
            run = checker.read("pidns", lambda: run_rows(db, "id = ?", (end["id"],)), {}).get(end["id"])
            reason = json.loads(run.error or "{}").get("message") if run else None
            checker.ok(
                end["status"] == "succeeded" and run is not None and run.status == "succeeded",
                f"[pidns/interrupted] run {end['id']} of a live process in another pid "
                f"namespace (pid {start.get('ns_pid')} there) ended {end['status']}: "
                f"{reason}",
            )
            for err in end["errors"]:
                checker.ok(False, f"[pidns/error] child {child.pid}: {err}")

    def _count_fill(self, checker: Checker, filler: DiskFiller) -> None:
        detail = self.report.fault_detail["disk"]
        checker.ok(filler.error is None, f"[disk/filler] the filler failed: {filler.error}")
        if filler.overlapped:
            self.report.faults["disk"] += 1
            detail[f"held full {'< 0.5 s' if filler.hold < 0.5 else '>= 0.5 s'}"] += 1
            detail["at a watched write (an end, a claim)"] += filler.triggered
            detail["WAL emptied first"] += filler.emptied
        else:
            detail["fills after the round's processes ended (not counted)"] += 1

    def _judge_disk_child(self, db: Path, checker: Checker, child: Child, lin: Lineage) -> None:
        """A disk epoch's child: only tether's typed errors reach it, and once the disk has space
        again its run's end is stored within the settle time."""
        if child.was_killed:
            return
        detail = self.report.fault_detail["disk"]
        if child.rc != 0:
            last = next((ln for ln in reversed(child.stderr().splitlines()) if ln.strip()), "")
            typed = re.match(r"tether\.errors\.(\w+): ", last)
            if checker.ok(
                bool(typed and _typed(typed.group(1))),
                f"[disk/untyped] child {child.pid} exited {child.rc} with an error that "
                f"is not one of tether's: {child.stderr()[-2000:]}",
            ):
                detail["typed errors that reached a process"] += 1
            return
        ends = [o for o in child.out if isinstance(o, dict) and o.get("final")]
        if not checker.ok(bool(ends), f"[disk/exit] child {child.pid} printed no end: {child.out}"):
            return
        end = ends[-1]
        if end["raised"]:
            detail["typed errors that reached a process"] += 1
        checker.ok(
            end["status"] not in ("pending", "running"),
            f"[disk/stuck] run {end['id']} of live child {child.pid} still {end['status']} "
            f"{end['after_free']} s after the disk had space again ({end['raised']})",
        )
        key = work.key_for(work.bind(**lin.params))
        run = checker.read("disk", lambda: read_view(db, {key}), View()).runs.get(end["id"])
        if run is not None and run.status == "succeeded":
            lin.done = True

    def _recover(self, db: Path, checker: Checker, mode: str) -> None:
        """Recovery from another process, maybe itself killed mid-recovery (then a plain gc)."""
        assert self.pool is not None
        self.report.recoveries[mode] += 1
        if mode == "start":
            return  # the next round's start(policy="resume") recovers
        if mode == "gc-cli":
            out = subprocess.run(
                [sys.executable, "-m", "tether.cli", "gc", "--db", str(db)],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=SAFETY_S,
                cwd=self.workdir,
            )
            checker.ok(out.returncode == 0, f"tether gc exited {out.returncode}: {out.stderr}")
            for holder in self.holders:
                holder.exits += 1
            return
        # the lineages' runs (a fault's lingering run is live: `tether cancel` would end it)
        active = "status IN ('pending', 'running') AND pipeline = ?"
        ids = list(checker.read("recover", lambda: run_rows(db, active, (work.name,)), {}))
        self.report.orphans[mode] += len(ids)
        plan = Plan("none")
        if self.rng.random() < 0.2 and ids:
            op = "request_cancel" if mode == "cancel" else "recover"
            plan = Plan("trip", self.rng.uniform(0, 0.003), op, "pre")
        child = self.pool.take()
        child.send(
            {"action": "recover", "mode": mode, "db": str(db), "ids": ids, "arm": plan.arm(child.signal)}
        )
        self._drive(db, checker, [(child, None, plan)])
        if child.was_killed:
            self.report.recoveries["killed, then gc"] += 1
            self._recover(db, checker, "gc")
            return
        checker.ok(child.rc == 0, f"recovery {mode} exited {child.rc}: {child.stderr()[-3000:]}")


# =============================================================================================
# load scenarios
# =============================================================================================


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _wait_file(path: str, timeout: float = SAFETY_S) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)


def starter(spec_json: str) -> None:
    """A start-race process: start() every key (in its own random order), wait for its own runs."""

    spec = json.loads(spec_json)
    tether.configure(db=spec["db"])
    keys = list(range(spec["keys"]))
    random.Random(spec["seed"]).shuffle(keys)
    open(spec["ready"], "w").close()
    _wait_file(spec["go"])
    errors: list[str] = []
    handles = []
    lat = []
    t0 = time.perf_counter()
    for k in keys:
        t = time.perf_counter()
        try:
            handles.append(quick.start(k=k, hold=spec["hold"]))
        except Exception as exc:
            errors.append(f"start(k={k}): {type(exc).__name__}: {exc}")
        lat.append(time.perf_counter() - t)
    started = time.perf_counter() - t0
    own = [h for h in handles if tether.workspace.default().runner(h.store).owns(h.id)]
    attached = sum(h._last.status.active for h in handles) - len(own)
    for h in own:
        try:
            h.wait(timeout=SAFETY_S)
        except Exception as exc:
            errors.append(f"wait({h.id}): {type(exc).__name__}: {exc}")
    _out(
        {
            "errors": errors,
            "created": len(own),
            "attached": attached,
            "seconds": started,
            "p50": _pct(lat, 0.5),
            "p99": _pct(lat, 0.99),
            "max": max(lat),
            "runner_errors": tether.workspace.default().runner().errors,
        }
    )


def start_race(workdir: Path, procs: int = 16, keys: int = 200, hold: float = 0.2) -> dict[str, Any]:
    """``procs`` processes start the same ``keys`` keys at once on a new database (each process in
    its own order); each run stays active ``hold`` s, so most calls attach to an active run."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "race.db"
    go = workdir / "go"
    env = child_env()
    children = []
    for i in range(procs):
        spec = {
            "db": str(db),
            "keys": keys,
            "seed": i,
            "ready": str(workdir / f"ready-{i}"),
            "go": str(go),
            "hold": hold,
        }
        code = "import sys; from reliability.harness import starter; starter(sys.argv[1])"
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)],
                env=env,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for i in range(procs):
            _wait_file(str(workdir / f"ready-{i}"))
        t0 = time.monotonic()
        go.touch()
        outs = []
        for proc in children:
            out, err = proc.communicate(timeout=SAFETY_S * 2)
            outs.append((proc.returncode, out, err))
        wall = time.monotonic() - t0
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    errors, reports = [], []
    for rc, out, err in outs:
        if rc != 0:
            errors.append(f"exit {rc}: {err[-3000:]}")
            continue
        rep = json.loads(out.strip().splitlines()[-1])
        reports.append(rep)
        errors += rep["errors"] + [f"runner: {e[-500:]}" for e in rep["runner_errors"]]
    conn = connect(db)
    assert conn is not None
    try:
        rows = conn.execute(
            "SELECT key, count(*), min(attempt), max(status), min(status) FROM runs GROUP BY key"
        ).fetchall()
        bad_seq = conn.execute(
            "SELECT r.id FROM runs r JOIN (SELECT run_id, count(*) n, max(seq) m FROM events "
            "GROUP BY run_id) e ON e.run_id = r.id WHERE e.n != r.last_seq OR e.m != r.last_seq"
        ).fetchall()
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return {
        "procs": procs,
        "keys": keys,
        "wall": wall,
        "errors": errors,
        "runs": sum(r[1] for r in rows),
        "keys_with_runs": len(rows),
        "keys_with_more_than_one_run": [r[0] for r in rows if r[1] != 1],
        "not_succeeded": [r[0] for r in rows if r[3] != "succeeded" or r[4] != "succeeded"],
        "created": sum(r["created"] for r in reports),
        "attached_to_active": sum(r["attached"] for r in reports),
        "start_p50": _pct([r["p50"] for r in reports], 0.5),
        "start_p99_worst": max((r["p99"] for r in reports), default=float("nan")),
        "start_max": max((r["max"] for r in reports), default=float("nan")),
        "bad_seq": bad_seq,
        "integrity": check,
    }


def writer_proc(spec_json: str) -> None:
    """Starts ``spec["runs"]`` writer runs in this process; reports the flush transaction times."""
    spec = json.loads(spec_json)
    tether.configure(db=spec["db"])
    times: list[float] = []
    orig = Store.flush

    def timed(self: Store, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - t)

    Store.flush = timed  # type: ignore[method-assign]
    open(spec["ready"], "w").close()
    _wait_file(spec["go"])
    runs = [writer.start(w=w, lines=spec["lines"], pace=spec["pace"]) for w in spec["ws"]]
    errors = []
    for run in runs:
        try:
            run.result(timeout=SAFETY_S)
        except Exception as exc:
            errors.append(f"{run.id}: {type(exc).__name__}: {exc}")

    _out(
        {
            "errors": errors + tether.workspace.default().runner().errors,
            "flush": times,
        }
    )


def reader_proc(spec_json: str) -> None:
    """A poller (store.get + store.events(after=)) or a dashboard (store.list_runs(limit=50))."""
    spec = json.loads(spec_json)
    store = tether.workspace.default().store(spec["db"])
    role, expect = spec["role"], spec["runs"]
    errors: list[str] = []
    lat: list[float] = []
    calls: list[float] = []
    seen: dict[str, int] = {}
    logs: dict[str, int] = {}
    open(spec["ready"], "w").close()
    _wait_file(spec["go"])
    deadline = time.monotonic() + SAFETY_S
    done = False
    while not done and time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            if role == "dashboard":
                recs = store.list_runs(limit=50)
                mine = [r for r in recs if r.pipeline == "reliability.writer"]
                done = len(mine) == expect and all(r.status.terminal for r in mine)
            else:
                recs = store.list_runs(pipeline="reliability.writer", limit=expect)
                done = len(recs) == expect
                for rec in recs:
                    rec = store.get(rec.id)
                    now = time.time()
                    for ev in store.events(rec.id, after=seen.get(rec.id, 0)):
                        seen[rec.id] = ev.seq
                        if ev.kind == "log":
                            logs[rec.id] = logs.get(rec.id, 0) + 1
                            lat.append(now - ev.ts)
                    done = done and rec.status.terminal and seen.get(rec.id) == rec.last_seq
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)
        calls.append(time.perf_counter() - t)
    if not done:
        errors.append(f"{role}: did not see every run end within {SAFETY_S} s")
    _out(
        {
            "role": role,
            "errors": errors,
            "lat": lat,
            "calls": len(calls),
            "call_p50": _pct(calls, 0.5),
            "call_p99": _pct(calls, 0.99),
            "logs": logs,
        }
    )


def readers_writers(
    workdir: Path,
    runs: int = 8,
    writer_procs: int = 4,
    lines: int = 400,
    pace: float = 0.005,
    pollers: int = 2,
    dashboard: bool = True,
    cli: bool = True,
) -> dict[str, Any]:
    """``runs`` runs (in ``writer_procs`` processes) log ``lines`` lines each while ``pollers``
    poller processes, a dashboard process and a ``tether ls`` loop read the database (readers
    off: the baseline of the writers' figures)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "rw.db"
    store = Store(db)
    store.list_runs(limit=1)  # create and migrate the database first
    store.close()
    go = workdir / "go"
    env = child_env()
    procs: list[tuple[str, subprocess.Popen[str]]] = []

    def spawn(fn: str, spec: dict[str, Any]) -> None:
        n = len(procs)
        spec |= {"db": str(db), "ready": str(workdir / f"ready-{n}"), "go": str(go)}
        code = f"import sys; from reliability.harness import {fn}; {fn}(sys.argv[1])"
        procs.append(
            (
                fn,
                subprocess.Popen(
                    [sys.executable, "-c", code, json.dumps(spec)],
                    env=env,
                    cwd=workdir,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )

    ws = list(range(runs))
    for i in range(writer_procs):
        spawn("writer_proc", {"ws": ws[i::writer_procs], "lines": lines, "pace": pace})
    for _ in range(pollers):
        spawn("reader_proc", {"role": "poller", "runs": runs})
    if dashboard:
        spawn("reader_proc", {"role": "dashboard", "runs": runs})
    cli_times: list[float] = []
    cli_errors: list[str] = []
    stop = threading.Event()
    script = Path(sys.executable).with_name("tether")
    ls = [str(script)] if script.exists() else [sys.executable, "-m", "tether.cli"]

    def cli_loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            out = subprocess.run(
                [*ls, "ls", "--db", str(db)], capture_output=True, text=True, env=env, timeout=SAFETY_S
            )
            cli_times.append(time.perf_counter() - t)
            if out.returncode != 0 or out.stderr:
                cli_errors.append(f"tether ls exited {out.returncode}: {out.stderr[-2000:]}")

    outs: list[tuple[str, int, str, str]] = []
    try:
        for i in range(len(procs)):
            _wait_file(str(workdir / f"ready-{i}"))
        t0 = time.monotonic()
        go.touch()
        thread = threading.Thread(target=cli_loop, daemon=True)
        if cli:
            thread.start()
        for fn, proc in procs:
            out, err = proc.communicate(timeout=SAFETY_S * 2)
            outs.append((fn, proc.returncode, out, err))
        wall = time.monotonic() - t0
        stop.set()
        if cli:
            thread.join(timeout=SAFETY_S)
    finally:
        stop.set()
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    errors = list(cli_errors)
    flush: list[float] = []
    lat: list[float] = []
    reader_logs: list[dict[str, int]] = []
    calls = {"poller": [], "dashboard": []}  # type: dict[str, list[float]]
    for fn, rc, out, err in outs:
        if rc != 0:
            errors.append(f"{fn} exited {rc}: {err[-3000:]}")
            continue
        rep = json.loads(out.strip().splitlines()[-1])
        errors += [f"{fn}: {e[-1000:]}" for e in rep["errors"]]
        if fn == "writer_proc":
            flush += rep["flush"]
        else:
            calls[rep["role"]].append(rep["call_p99"])
            if rep["role"] == "poller":
                lat += rep["lat"]
                reader_logs.append(rep["logs"])
    store = Store(db)
    try:
        recs = store.list_runs(pipeline="reliability.writer", limit=None)
        stored = {}
        bad_seq = []
        for rec in recs:
            evs = store.events(rec.id)
            stored[rec.id] = sum(e.kind == "log" for e in evs)
            if [e.seq for e in evs] != list(range(1, rec.last_seq + 1)):
                bad_seq.append(rec.id)
    finally:
        store.close()
    return {
        "runs": len(recs),
        "statuses": collections.Counter(str(r.status) for r in recs),
        "lines": lines,
        "stored_logs": stored,
        "reader_logs": reader_logs,
        "bad_seq": bad_seq,
        "errors": errors,
        "wall": wall,
        "flushes": len(flush),
        "flush_p50": _pct(flush, 0.5),
        "flush_p99": _pct(flush, 0.99),
        "flush_max": max(flush, default=float("nan")),
        "visible_p50": _pct(lat, 0.5),
        "visible_p99": _pct(lat, 0.99),
        "visible_max": max(lat, default=float("nan")),
        "visible_n": len(lat),
        "poll_call_p99": max(calls["poller"], default=float("nan")),
        "dashboard_call_p99": max(calls["dashboard"], default=float("nan")),
        "cli_runs": len(cli_times),
        "cli_median": statistics.median(cli_times) if cli_times else 0,
        "integrity": integrity(db),
    }

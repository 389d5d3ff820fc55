"""Pipelines and item functions for the checkpoint, fan-out and worker tests.

Importable as ``helpers.checkpoint_pipelines`` in the test process, in child processes (``child_env`` puts
tests/ on PYTHONPATH), in spawned process-pool workers and in Dask workers, so every name here
means the same pipeline (``helpers.checkpoint_pipelines.<name>``) or the same item function everywhere.

Side effects are counted in files (see helpers.files): every execution appends one line, so a test
can tell how often a step, an item or a run body really ran, in whichever process it ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tether
from helpers import util
from helpers.files import SAFETY_S, append, lines, wait_file
from helpers.util import raw, wait_until  # noqa: F401 - re-exported for the tests

# Executors a test (in this process) lends to a pipeline by name: ``executor="reg:<name>"``.
EXECUTORS: dict[str, Any] = {}

# argv for a child process: ``[sys.executable, *CHILD, json.dumps(spec)]`` (see ``child``)
CHILD = ["-c", "import sys; from helpers.checkpoint_pipelines import child; child(sys.argv[1])"]
# argv for a worker that waits for a go file: ``[*GATED_WORKER, ready, go, *cli_args]``
GATED_WORKER = [
    "-c",
    "import sys; from helpers.checkpoint_pipelines import gated_worker; gated_worker(sys.argv[1:])",
]


# -- test utilities (used by the test process) -----------------------------------------------


class Children(util.Children):
    """Child processes of one test (see helpers.util.Children), spawning this module's ``child``."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        super().__init__(env, cwd, CHILD)

    def worker(self, *args: str) -> subprocess.Popen[str]:
        """``tether worker helpers.checkpoint_pipelines ARGS`` (the database comes from TETHER_DB)."""
        return self.popen("-m", "tether.cli", "worker", "helpers.checkpoint_pipelines", *args)


def first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON line a ``child`` prints at once (its run id and pid)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"the child printed nothing (exit {proc.returncode}): {err[-2000:]}")
    return json.loads(line)  # type: ignore[no-any-return]


# -- steps -----------------------------------------------------------------------------------


def record(log: str, name: str, attempt: int, hang: bool = False) -> dict[str, Any]:
    """A step body: log one execution of ``name``; with ``hang``, then block (until killed)."""
    append(log, name)
    if hang:
        wait_file(log + ".never")
    return {"name": name, "attempt": attempt, "pid": os.getpid()}


def make_set(log: str, name: str) -> set[int]:
    """A step body whose result is not JSON (tether stores it all the same)."""
    append(log, name)
    return {1, 2, 3}


class Opaque:
    """A value tether cannot store (no codec); picklable, so process pools can return it."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Opaque({self.n})"


def make_opaque(log: str, name: str) -> dict[str, Any]:
    """A step body whose value tether cannot store: an Opaque at value['rows'][1]."""
    append(log, name)
    return {"rows": [1, Opaque()]}


@tether.pipeline(phases=["prepare", "steps", "finish"])
def steps(
    ctx: tether.Context,
    log: str,
    n: int = 4,
    hang_at: int = -1,
    fail_attempt: int = 0,
    twice: bool = False,
    loose: bool = False,
) -> dict[str, Any]:
    """Step "prepare", then steps s0..s{n-1} (each logs a line per execution).

    ``hang_at``: on attempt 1 the step s{hang_at} logs its line, then blocks until the process is
    killed. ``fail_attempt``: that attempt raises after every step. ``twice``: step "s0" is asked
    for again (under its name, with a body that would log "s0-again"). ``loose``: a step with
    ``checkpoint=False`` returning a set.
    """
    ctx.phase("prepare")
    values = [ctx.step("prepare", record, log, "prepare", ctx.attempt)]
    ctx.phase("steps", total=n)
    for k in range(n):
        values.append(
            ctx.step(f"s{k}", record, log, f"s{k}", ctx.attempt, hang=(k == hang_at and ctx.attempt == 1))
        )
        ctx.advance()
    if twice:
        values.append(ctx.step("s0", record, log, "s0-again", ctx.attempt))
    out: dict[str, Any] = {"attempt": ctx.attempt}
    if loose:
        out["loose"] = sorted(ctx.step("loose", make_set, log, "loose", checkpoint=False))
    ctx.phase("finish")
    if ctx.attempt == fail_attempt:
        raise RuntimeError(f"planned failure of attempt {ctx.attempt}")
    out["values"] = values
    return out


@tether.pipeline
def bad_step(ctx: tether.Context, log: str) -> None:
    """A checkpointed step that returns a value tether cannot store."""
    ctx.step("make_opaque", make_opaque, log, "make_opaque")


@tether.pipeline
def suicide(ctx: tether.Context, log: str, heal: str) -> dict[str, Any]:
    """Step "before" (logged), then log "body", then SIGKILL its own process unless ``heal`` exists."""
    ctx.step("before", record, log, "before", ctx.attempt)
    append(log, f"body {ctx.attempt}")
    if not os.path.exists(heal):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt}


# -- fan-out ---------------------------------------------------------------------------------


def work(item: dict[str, Any]) -> Any:
    """One map item: log a line in ``<dir>/item-<i>``, then wait/sleep/fail as the item says."""
    i = item["i"]
    append(os.path.join(item["dir"], f"item-{i}"), str(os.getpid()))
    if item.get("gate"):
        wait_file(item["gate"])
    if item.get("delay"):
        time.sleep(item["delay"])
    if item.get("fail"):
        raise ValueError(f"item {i} is broken")
    if item.get("bad"):
        return {"i": i, "rows": [Opaque(i)]}  # tether cannot store it
    return {"i": i, "sq": i * i}


def executions(directory: str | os.PathLike[str], n: int) -> list[int]:
    """How many times each of items 0..n-1 ran."""
    return [len(lines(os.path.join(directory, f"item-{i}"))) for i in range(n)]


def make_items(
    directory: str,
    n: int,
    gate: str = "",
    gate_from: int = 0,
    delay_step: float = 0.0,
    fail_at: int = -1,
    bad_at: int = -1,
) -> list[dict[str, Any]]:
    """Items for ``work``; ``gate`` may contain ``{i}`` (one gate file per item)."""
    return [
        {
            "i": i,
            "dir": directory,
            "gate": gate.format(i=i) if gate and i >= gate_from else "",
            "delay": round((n - 1 - i) * delay_step, 4),
            "fail": i == fail_at,
            "bad": i == bad_at,
        }
        for i in range(n)
    ]


def _executor(spec: str) -> tuple[Any, bool]:
    """(executor, owned): "default" -> None; "pool:N" -> a new thread pool; "reg:NAME" -> lent;
    "dask:ADDRESS" -> a Dask client of the scheduler at ADDRESS: the one lent under that spec (the
    test process's), else a new one kept for this process (a child's: it dies with the child)."""
    if spec == "default":
        return None, False
    if spec.startswith("pool:"):
        return ThreadPoolExecutor(int(spec[5:])), True
    if spec.startswith("reg:"):
        return EXECUTORS[spec[4:]], False
    if spec.startswith("dask:"):
        if spec not in EXECUTORS:
            import distributed

            EXECUTORS[spec] = distributed.Client(spec[5:])
        return EXECUTORS[spec], False
    raise ValueError(f"unknown executor spec {spec!r}")


@tether.pipeline(phases=["mapping"])
def mapper(
    ctx: tether.Context,
    dir: str,
    n: int,
    executor: str = "default",
    gate: str = "",
    gate_from: int = 0,
    delay_step: float = 0.0,
    fail_at: int = -1,
    bad_at: int = -1,
    catch: bool = False,
    checkpoint: bool = True,
) -> Any:
    """``ctx.map(work, items)`` on the executor named by ``executor`` (see ``_executor``).

    ``catch``: a MapItemError is returned as {"index", "item", "cause"} instead of raised.
    """
    ex, owned = _executor(executor)
    items = make_items(dir, n, gate, gate_from, delay_step, fail_at, bad_at)
    ctx.phase("mapping")
    try:
        return ctx.map(work, items, executor=ex, checkpoint=checkpoint)
    except tether.MapItemError as exc:
        if not catch:
            raise
        return {
            "index": exc.index,
            "item": exc.item,
            "cause": type(exc.__cause__).__name__,
            "message": str(exc),
        }
    finally:
        if owned:
            ex.shutdown(wait=False, cancel_futures=True)


# -- detached runs ---------------------------------------------------------------------------


@tether.pipeline(phases=["work"])
def job(ctx: tether.Context, log: str, tag: int = 0, hold: float = 0.0, pids: int = 0) -> dict[str, Any]:
    """Log "<run id> <pid>" once per execution, then report progress for ``hold`` seconds.

    ``pids``: first wait until executions by that many processes are logged, so that one worker
    cannot execute every run before another one starts claiming. After 10 s of waiting the file
    ``<log>.alone`` is created and no run waits any more (the test then fails, without hanging).
    """
    append(log, f"{ctx.run_id} {os.getpid()}")
    deadline = time.monotonic() + 10
    alone = log + ".alone"
    while len({line.split()[1] for line in lines(log)}) < pids and not os.path.exists(alone):
        if time.monotonic() > deadline:
            open(alone, "w").close()
        time.sleep(0.005)
    ctx.phase("work")
    end = time.monotonic() + hold
    while time.monotonic() < end:
        ctx.advance()
        time.sleep(0.005)
    return {"run": ctx.run_id, "pid": os.getpid(), "tag": tag}


@tether.pipeline(phases=["prep", "spin"])
def spin(ctx: tether.Context, log: str, gate: str) -> dict[str, Any]:
    """Step "prep" (logged), then call ctx.advance() until ``gate`` exists."""
    ctx.phase("prep")
    ctx.step("prep", record, log, "prep", ctx.attempt)
    ctx.phase("spin")
    append(log, f"spin {ctx.attempt} {os.getpid()}")
    deadline = time.monotonic() + SAFETY_S
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError("spin was never released")
        ctx.advance()
        time.sleep(0.005)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


PIPELINES = {"steps": steps, "suicide": suicide, "mapper": mapper, "job": job, "spin": spin}


def child(spec_json: str) -> None:
    """Entry point of a child process. ``spec``:

    - ``configure``: options for ``tether.configure`` (e.g. {"max_auto_resumes": 2});
    - ``pipeline``, ``params``, ``policy`` (default "attach"), ``detach``: what to start; or
      ``resume``: the id of a run to resume with ``run.resume()``;
    - prints {"id", "pid"} at once (flushed), then by ``mode``: "wait" (the default: wait for the
      run to end and print {"id", "status"}), "exit" (return at once), "kill" (SIGKILL itself).
    """
    spec = json.loads(spec_json)
    if spec.get("configure"):
        tether.configure(**spec["configure"])
    if spec.get("resume"):
        run = tether.get_run(spec["resume"]).resume()
    else:
        pipe = PIPELINES[spec["pipeline"]]
        run = pipe.start(
            **spec["params"], policy=spec.get("policy", "attach"), detach=spec.get("detach", False)
        )
    print(json.dumps({"id": run.id, "pid": os.getpid()}), flush=True)
    mode = spec.get("mode", "wait")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "wait":
        run.wait(timeout=SAFETY_S)
        print(json.dumps({"id": run.id, "status": str(run.status)}), flush=True)


def gated_worker(argv: list[str]) -> None:
    """``tether worker`` that creates ``argv[0]`` once imported, then waits for ``argv[1]``."""
    from tether import cli

    ready, go, *rest = argv
    open(ready, "w").close()
    wait_file(go)
    sys.exit(cli.main(rest))


def lend(name: str, executor: Executor | Any) -> str:
    """Register ``executor`` for ``mapper(executor="reg:<name>")``; returns that spec."""
    EXECUTORS[name] = executor
    return f"reg:{name}"

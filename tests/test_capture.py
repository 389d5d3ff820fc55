"""print() and tqdm in bodies (issue 13, items 5 and 6).

- writes to sys.stdout / sys.stderr from a run's own threads (the body, ctx.map items on a thread
  pool) are the run's log lines, split on newlines, bounded like the log; other threads' output
  is untouched; outside a kernel they are still passed on to the stream (a script still prints);
- a tqdm bar iterated in a run's thread feeds the run's progress and draws nothing; outside runs
  tqdm is untouched;
- in a real kernel, nothing of a run's output reaches the executing cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tqdm
import tqdm.asyncio
import tqdm.std

import tether
from helpers.util import raw
from tether.context import LOG_LINE_MAX


def levels(run: tether.Run) -> list[tuple[str, str]]:
    return [(e.data["level"], e.data["message"]) for e in run.events(kinds=["log"])]


# -- print() and stdout/stderr ------------------------------------------------------------------


def test_print_and_stderr_in_a_body_are_log_lines(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    @tether.pipeline
    def chatty(ctx: tether.Context) -> int:
        print("hello", 1)
        print("two\nlines")
        print("no end ", end="")
        print("until now")
        sys.stderr.write("to stderr\n")
        print("10%\r50%\r100%")  # what a terminal shows: the text after the last \r
        sys.stdout.writelines(["a\n", "b\n"])
        print("crlf\r")
        return 1

    run = chatty.start()
    assert run.result(timeout=20) == 1
    assert levels(run) == [
        ("stdout", "hello 1"),
        ("stdout", "two"),
        ("stdout", "lines"),
        ("stdout", "no end until now"),
        ("stderr", "to stderr"),
        ("stdout", "100%"),
        ("stdout", "a"),
        ("stdout", "b"),
        ("stdout", "crlf"),
    ]
    out = capsys.readouterr()  # not a kernel: the lines are passed on as well, as before
    assert "hello 1\ntwo\nlines\nno end until now\n" in out.out
    assert out.err == "to stderr\n"


def test_map_items_are_the_runs_and_other_threads_are_untouched(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = threading.Event()
    stop = threading.Event()

    def bystander() -> None:  # a thread of the notebook's, printing while the run prints
        while not stop.is_set():
            print("bystander")
            started.set()
            time.sleep(0.001)

    @tether.pipeline
    def fan(ctx: tether.Context) -> list[int]:
        started.wait(10)
        own = threading.Thread(target=lambda: print("own thread, no run context"))
        own.start()
        own.join()
        return ctx.map(lambda i: print(f"item {i}") or i, range(20))

    other = threading.Thread(target=bystander)
    other.start()
    try:
        run = fan.start()
        assert run.result(timeout=20) == list(range(20))
    finally:
        stop.set()
        other.join()
    print("the main thread")
    logs = run.logs()
    assert sorted(logs) == sorted(f"item {i}" for i in range(20))
    out = capsys.readouterr().out
    assert "bystander" in out and "the main thread" in out and "own thread" in out


def test_a_partial_line_is_logged_when_the_run_ends_even_by_failure(db: Path) -> None:
    @tether.pipeline
    def partial(ctx: tether.Context, fail: bool) -> None:
        print("done", end="")
        print("?", end="", file=sys.stderr)
        if fail:
            raise ValueError("boom")

    ok = partial.start(fail=False)
    ok.wait(20)
    assert sorted(levels(ok)) == [("stderr", "?"), ("stdout", "done")]
    failed = partial.start(fail=True)
    failed.wait(20)
    assert failed.status == "failed" and failed.logs() == ["done", "?"]


def test_an_overlong_line_is_clipped_and_a_line_without_end_holds_bounded_memory(db: Path) -> None:
    sizes: list[int] = []

    @tether.pipeline
    def long_lines(ctx: tether.Context) -> None:
        print("x" * 50_000)  # one write
        for _ in range(1_000):  # 1 MB in small pieces, then the end of the line
            print("y" * 1_000, end="")
            sizes.append(max(map(len, ctx._output.parts.values())))
        print()
        for _ in range(2_000):  # a progress display without newlines: only its last state
            print("\r", "z" * 20, end="")
        print("\rfinal")

    run = long_lines.start()
    run.wait(30)
    first, second, third = run.logs()
    assert first == "x" * LOG_LINE_MAX + "… [40,000 characters cut]"
    assert len(second) <= LOG_LINE_MAX and second.startswith("y" * 9_000)
    kept = second.index("…")
    assert second[kept:] == f"… [{1_000_000 - kept:,} characters cut]"
    assert max(sizes) <= LOG_LINE_MAX + 1_000
    assert third == "final"


def test_a_logging_record_is_logged_once(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("test_capture.once")
    handler = logging.StreamHandler()  # sys.stderr, as logging.basicConfig() makes it
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    @tether.pipeline
    def logs(ctx: tether.Context) -> None:
        logger.info("a record")
        print("a print")

    try:
        run = logs.start()
        run.wait(20)
        later = logging.StreamHandler()  # made after the capture was installed
        logger.addHandler(later)
        again = logs.start(policy="rerun")
        again.wait(20)
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(later)
    assert run.logs() == ["a record", "a print"]
    assert again.logs() == ["a record", "a print"]
    assert capsys.readouterr().err.count("a record") == 3  # the handlers still print (no kernel)


@pytest.mark.parametrize("printed", [True, False])
def test_output_of_a_thread_outliving_its_run_is_passed_on_not_logged(
    db: Path, capsys: pytest.CaptureFixture[str], printed: bool
) -> None:
    import contextvars

    go = threading.Event()
    holder: list[threading.Thread] = []

    def late() -> None:
        go.wait(20)
        print("after the end")

    @tether.pipeline
    def leaves_a_thread(ctx: tether.Context, printed: bool) -> None:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(late,))
        thread.start()
        holder.append(thread)
        if printed:
            print("during")

    run = leaves_a_thread.start(printed=printed)
    run.wait(20)
    go.set()
    holder[0].join(20)
    assert run.logs() == (["during"] if printed else [])
    assert "after the end" in capsys.readouterr().out


def test_a_stream_replaced_later_is_wrapped_at_the_next_run(db: Path) -> None:
    @tether.pipeline
    def say(ctx: tether.Context, word: str) -> None:
        print(word)

    say.start(word="first").wait(20)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run = say.start(word="second")
        run.wait(20)
    assert run.logs() == ["second"]
    assert buffer.getvalue() == "second\n"  # passed on to the stream that was there


FLOOD_CHILD = r"""
import json, sys, time
import tether

tether.configure(db=sys.argv[1])
n = int(sys.argv[2])


def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


@tether.pipeline
def flood(ctx, n, how):
    start = time.perf_counter()
    if how == "print":
        for i in range(n):
            print(f"L{i}")
    else:
        for i in range(n):
            ctx.log(f"L{i}")
    return n / (time.perf_counter() - start)


flood.start(n=10, how="print").result(timeout=60)  # warm: the runner, its threads, the store
before = status("VmRSS")
rates = {"print": flood.start(n=n, how="print").result(timeout=600)}
grew = status("VmHWM") - before  # (VmHWM: the peak of this process image)
rates["log"] = flood.start(n=n, how="log").result(timeout=600)
print(json.dumps({"rates": rates, "grew_kib": grew}), file=sys.stderr)
"""


@pytest.mark.slow
def test_a_million_line_print_flood_keeps_the_logs_limits(db: Path, child_env: dict[str, str]) -> None:
    """Every line stored, in order; memory bounded by the log buffer; a print costs about what
    a ctx.log does (print's own work on top)."""
    n = 1_000_000
    out = subprocess.run(
        [sys.executable, "-c", FLOOD_CHILD, str(db), str(n)],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stderr.strip().splitlines()[-1])
    (run_id,) = raw(db, "SELECT id FROM runs WHERE params LIKE '%print%' ORDER BY created_at DESC")[0]
    count, first, last = raw(
        db, "SELECT count(*), min(seq), max(seq) FROM events WHERE run_id = ? AND kind = 'log'", run_id
    )[0]
    assert count == n and last - first == n - 1  # every line, nothing dropped
    assert raw(db, "SELECT data FROM events WHERE run_id = ? AND seq = ?", run_id, first) == [
        ('{"level":"stdout","message":"L0"}',)
    ]
    assert raw(db, "SELECT data FROM events WHERE run_id = ? AND seq = ?", run_id, last) == [
        (f'{{"level":"stdout","message":"L{n - 1}"}}',)
    ]
    # an unbounded buffer of a million lines would hold ~150 MB
    assert report["grew_kib"] < 32 * 1024, report
    assert report["rates"]["print"] > 0.2 * report["rates"]["log"], report
    print(report)


# -- tqdm ----------------------------------------------------------------------------------------


def test_a_tqdm_loop_feeds_the_progress_and_draws_nothing(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[Any, ...]] = []

    @tether.pipeline
    def loop(ctx: tether.Context) -> int:
        total = 0
        for i in tqdm.tqdm(range(40), desc="scanning"):
            if i == 19:
                seen.append((ctx.phase_name, ctx.done, ctx.total))
            total += i
        seen.append((ctx.phase_name, ctx.done, ctx.total))
        for _ in tqdm.trange(10, desc="applying"):
            pass
        return total

    run = loop.start()
    assert run.result(timeout=20) == sum(range(40))
    assert seen == [("scanning", 19, 40), ("scanning", 40, 40)]
    assert run.phases == ["scanning", "applying"] and run.phases_done == ["scanning", "applying"]
    assert run.progress == (10, 10)
    assert capsys.readouterr().err == ""  # no bar drawn


def test_nested_bars_the_outer_one_feeds_and_a_manual_bar_counts_its_updates(db: Path) -> None:
    seen: list[tuple[Any, ...]] = []

    @tether.pipeline
    def nested(ctx: tether.Context) -> None:
        for _epoch in tqdm.tqdm(range(3), desc="epochs"):
            for _ in tqdm.tqdm(range(100), desc="batches", leave=False):
                pass
        seen.append((list(ctx.phases), ctx.done, ctx.total))
        with tqdm.tqdm(total=1000, desc="bytes") as bar:
            bar.update(250)
            bar.update(250)
            seen.append((ctx.phase_name, ctx.done, ctx.total, bar.n))
            bar.reset(total=10)
            bar.update(3)
            seen.append((ctx.done, ctx.total))

    run = nested.start()
    run.wait(20)
    assert run.status == "succeeded", run.error
    assert seen == [(["epochs"], 3, 3), ("bytes", 500, 1000, 500), (3, 10)]


def test_the_bodys_own_phase_is_kept_and_bars_in_map_items_leave_progress_to_the_map(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[Any, ...]] = []

    def item(i: int) -> int:
        return sum(tqdm.tqdm(range(i), desc="inside an item"))

    @tether.pipeline(phases=["load", "fan"])
    def own(ctx: tether.Context) -> list[int]:
        ctx.phase("load")
        for _ in tqdm.tqdm(range(7), desc="not a phase"):
            pass
        seen.append((ctx.phase_name, ctx.done, ctx.total))
        ctx.phase("fan")
        out = ctx.map(item, range(12))
        seen.append((ctx.phase_name, ctx.done, ctx.total))
        return out

    run = own.start()
    assert run.result(timeout=20) == [sum(range(i)) for i in range(12)]
    assert seen == [("load", 7, 7), ("fan", 12, 12)]
    assert run.phases == ["load", "fan"]
    assert capsys.readouterr().err == ""


def test_tqdm_outside_runs_is_untouched(db: Path) -> None:
    @tether.pipeline
    def noop(ctx: tether.Context) -> None:
        return None

    noop.start().wait(20)  # the runner is up: the hooks are installed
    out = io.StringIO()
    for _ in tqdm.tqdm(range(5), desc="outside", file=out, mininterval=0):
        pass
    assert "outside: 100%" in out.getvalue() and "5/5" in out.getvalue()
    bar = tqdm.tqdm(total=3, file=io.StringIO())
    bar.update(2)
    assert bar.n == 2 and not bar.disable
    bar.close()


def test_a_cancel_stops_a_tqdm_loop(db: Path) -> None:
    at = threading.Event()

    @tether.pipeline
    def endless(ctx: tether.Context) -> None:
        for i in tqdm.tqdm(iter(int, 1), desc="forever"):  # never ends by itself
            if i == 0:
                at.set()
            time.sleep(0.0005)

    run = endless.start()
    at.wait(20)
    run.cancel()
    run.wait(10)
    assert run.status == "cancelled" and run.phase == "forever"


def test_an_async_tqdm_in_an_async_body(db: Path) -> None:
    async def numbers() -> Any:
        for i in range(25):
            await asyncio.sleep(0)
            yield i

    @tether.pipeline
    async def async_body(ctx: tether.Context) -> int:
        total = 0
        async for i in tqdm.asyncio.tqdm(numbers(), desc="async", total=25):
            total += i
        return total

    run = async_body.start()
    assert run.result(timeout=20) == sum(range(25))
    assert run.phase == "async" and run.progress == (25, 25)


LATE_IMPORT_CHILD = r"""
import sys
import tether

tether.configure(db=sys.argv[1])
assert "tqdm" not in sys.modules, "import tether imported tqdm"


@tether.pipeline
def first(ctx):
    return "tqdm" in sys.modules


assert first.start().result(timeout=30) is False  # a runner is up; tqdm still not imported


@tether.pipeline
def late(ctx):
    from tqdm.auto import tqdm  # imported by the body, after the runner started

    for _ in tqdm(range(30), desc="late"):
        pass
    return [ctx.phase_name, ctx.done, ctx.total]


print(late.start().result(timeout=30))
"""


def test_tqdm_stays_optional_and_is_hooked_when_a_body_imports_it(
    db: Path, child_env: dict[str, str]
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LATE_IMPORT_CHILD, str(db)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['late', 30, 30]"
    assert out.stderr == ""  # no bar drawn


# -- in a real kernel -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from helpers.kernel import started

    with started(tmp_path_factory.mktemp("kernel")) as k:
        yield k


KERNEL_SETUP = """
import logging
logging.basicConfig(level=logging.INFO)  # a handler on the kernel's stderr, before tether
import sys, time, threading
import tether
tether.configure(db={db!r})
go = threading.Event()

@tether.pipeline
def chatty(ctx, n=30):
    from tqdm.notebook import tqdm as notebook_tqdm
    from tqdm.auto import tqdm as auto_tqdm

    go.wait(30)
    for i in notebook_tqdm(range(n), desc="notebook bar"):
        print("OUT", i)
        time.sleep(0.002)
    for i in auto_tqdm(range(n), desc="auto bar"):
        sys.stderr.write(f"ERR {{i}}\\n")
        logging.getLogger("body").info("REC %d", i)
    ctx.phase("fan")
    ctx.map(lambda i: print("ITEM", i), range(5))
    print("TAIL", end="")
    return n

run = chatty.start()
"""


def test_in_a_real_kernel_nothing_of_a_run_reaches_the_executing_cell(kernel: Any, tmp_path: Path) -> None:
    kernel.cell(KERNEL_SETUP.format(db=str(tmp_path / "k.db")))
    # the run prints while this cell executes: without capture its lines land here
    busy = kernel.cell(
        "go.set()\nfor i in range(3):\n    print('cell', i)\n    time.sleep(0.05)\n"
        "run.wait(60)\nprint('PROGRESS', run.phases, tuple(run.progress))"
    )
    assert busy.stderr == ""
    assert busy.stdout.splitlines() == [
        "cell 0",
        "cell 1",
        "cell 2",
        "PROGRESS ['notebook bar', 'auto bar', 'fan'] (5, 5)",
    ]
    logs = json.loads(kernel.cell("import json\nprint(json.dumps(run.logs()))").stdout)
    kernel.drain(0.5)
    assert logs[:30] == [f"OUT {i}" for i in range(30)]
    assert logs[30:90] == [x for i in range(30) for x in (f"ERR {i}", f"REC {i}")]
    assert sorted(logs[90:95]) == [f"ITEM {i}" for i in range(5)] and logs[95:] == ["TAIL"]
    every = kernel.all_stream_text()
    for marker in ("OUT", "ERR", "REC", "ITEM", "TAIL"):
        assert marker not in every.replace(json.dumps(logs), ""), marker
    kinds = {m["msg_type"] for m in kernel.messages}
    assert "comm_open" not in kinds and "display_data" not in kinds  # no bar widget anywhere


SAME_CELL_SETUP = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
import tether
tether.configure(db={db!r})
pool = ThreadPoolExecutor(2)  # its threads start in this cell (ipykernel 7: with its parent)
for f in [pool.submit(print, "warm") for _ in range(4)]:
    f.result()

@tether.pipeline
def waited(ctx):
    print("BODY")
    sys.stderr.write("BERR\\n")
    ctx.map(lambda i: print("POOLED", i) or i, range(4), executor=pool)
    return 1
"""

# the run starts and prints while the cell that started it is still executing: IPython 9 tees
# that cell's output into its history through a ``write`` set on the kernel's streams
SAME_CELL = """
r = waited.start()
print("before")
r.wait(60)
print("after", r.status)
"""

CELL_HISTORY = """
outputs = getattr(get_ipython().history_manager, "outputs", None)  # IPython 9 keeps outputs
print(json.dumps(outputs and ["".join(o.bundle["stream"]) for v in outputs.values() for o in v]))
"""


def test_in_a_real_kernel_a_run_printing_in_the_cell_that_started_it_and_on_a_cells_pool_is_captured(
    kernel: Any, tmp_path: Path
) -> None:
    kernel.cell(SAME_CELL_SETUP.format(db=str(tmp_path / "same.db")))
    cell = kernel.cell(SAME_CELL)
    assert (cell.stdout, cell.stderr) == ("before\nafter succeeded\n", "")
    history = json.loads(kernel.cell(CELL_HISTORY).stdout)
    if history is not None:  # the cell's own output is still in IPython's history, the run's is not
        assert "before\nafter succeeded\n" in history
        assert not any(marker in text for text in history for marker in ("BODY", "BERR", "POOLED"))
    logs = json.loads(kernel.cell("print(json.dumps(r.logs()))").stdout)
    assert logs[:2] == ["BODY", "BERR"] and sorted(logs[2:]) == [f"POOLED {i}" for i in range(4)]
    kernel.drain(0.5)
    every = kernel.all_stream_text().replace(json.dumps(logs), "")
    for marker in ("BODY", "BERR", "POOLED"):
        assert marker not in every, marker

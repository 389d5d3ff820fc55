"""Writes docs/performance.md for ``bench/run.py --write-docs`` (the page's only writer).

The table, the machine, the peers' versions and settings, and the list of missed goals come from
the run; the explanation of each figure and the profiles of the known misses are the text below.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import Row, say, table

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
# in the per-section line already
SKIP = {"CPU idle just before the start", "CPU used by other processes meanwhile"}

HEAD = """\
# Performance

Every figure on this page is measured by `bench/run.py`, side by side with a baseline or a peer
(tqdm, rich, raw `sqlite3`, `executor.map`, DBOS, Huey, ...) **in the same run on the same
machine**, so the ratios mean something even where the absolute numbers depend on the machine.
Each section runs in a subprocess of its own (fresh imports, memory and threads). The page is
written by the script itself:

```bash
pip install -e . -r bench/requirements.txt   # tether and the pinned peers, in a venv of their own
python bench/run.py --write-docs --wait-idle 300   # full run, < 10 min on 2 cores
python bench/run.py --quick                   # smoke run, < 2 min (figures are noisier)
python bench/run.py --only 5                  # one section (1 to 12; 7a, 7b; 12a-12d)
```

`bench/README.md` lists the scripts behind each section.

## Last run

{date}, `{command}`.

{machine}

{table}

{summary}

Time per section (and the share of the machine's CPU that other processes used meanwhile):
{per_section}.

{misses}

### Versions and settings of each section

{sections}

## What each figure means

Ratios are tether / baseline: for times, lower is better; for rates (4a, 4b, 2a, 2d) the ratio is
tether's rate over the baseline's, higher is better. Latencies are per call; `p50`/`p99` are
nearest-rank percentiles. A row marked `info` has no goal; `n/a` means a goal exists but the
figure could not be measured (the row says why).
"""

FIGURES = """\
### 1. Progress hot path

1a. **`ctx.track(range(N))` per item** vs `tqdm(range(N), file=devnull)` per item, both the only
work of an empty `for` loop (a bare `for` loop is shown for scale). Every loop runs *inside a real
tether run* (the pipeline body times its own loop with `perf_counter()` and returns the time), so
tether's runner and flusher threads are alive for every mode. Median of 5 repetitions, the modes
interleaved. Goal (from the design): tether costs at most half of tqdm.

1b. The same against **`rich.progress.track(range(N), console=Console(file=devnull))`**, rich's
defaults (a non-terminal console: rich updates its task from a thread every 0.1 s, the loop only
increments a counter). Goal: at most half of rich.

1c. **`ctx.advance()` per call** vs `tqdm.update(1)` per call, measured the same way. Goal: at most
half of tqdm.

1d. `ctx.advance()` vs **rich's `Progress.advance(task, 1)`** (its documented way to advance a bar
by hand, with `Progress(console=Console(file=devnull))`; fewer calls, as each takes ~2 us). Goal:
at most half of rich.

### 2-3. Durable runs: DBOS and Huey

Measured by `bench/peers.py` (its docstring gives every detail; the settings it found are listed
under "Versions and settings" above). Peers run with their documented defaults; where tether's
SQLite settings differ (WAL + `synchronous=NORMAL`, tether's default durability, against the
peers' default `FULL`), the settings line says so, and 2d compares both at `FULL`.

2a. **Durable trivial runs one after the other**: a pipeline of three checkpointed steps
(`ctx.step`) started and waited for, against a DBOS workflow of three `@DBOS.step`s; throughput
(median over interleaved batches) and latency. Goal: tether >= 30x DBOS's throughput.

2b. **One run, start to result**, a trivial body, against Huey (`SqliteHuey`, a consumer thread
in the same process, documented defaults: the consumer polls the queue). Goal: tether <= 0.2x.

2c. The same with Huey polling every millisecond: informative (what Huey costs without its
polling delay).

2d. **The runs of 2a at equal durability**: tether with `tether.configure(durability="full")`
(`synchronous=FULL`, an fsync of the WAL per commit, as DBOS and Huey run: see
[recovery](recovery.md#what-is-kept-after-a-crash)) against DBOS at its default, new runs on both
sides, interleaved batches as in 2a. Goal: tether >= 5x DBOS's throughput.

3. **Idempotent re-start of a finished run**: tether's `start()` with the same params (returns the
succeeded run) against DBOS's re-execution of a workflow id that has finished (the faster of its
two forms). Goal: tether <= 0.1x.

### 4. What the store absorbs

4a. **`ctx.log()` lines persisted per second**: a run logs N lines; the figure is N divided by the
wall time from the first `ctx.log()` call to the run being `succeeded` in the database (so every
line is committed), and the script checks that exactly N `log` events are stored. Baseline: the
same rows inserted with plain `sqlite3` (WAL, `synchronous=NORMAL`, `executemany` in transactions
of 1,000 rows, rows built beforehand): the storage floor. Tether and raw alternate, 5 times each.
Goal: >= 0.5x raw.

4b. **`ctx.advance()` updates persisted per second**: a run calls `ctx.advance()` N times and
ends; the figure is N over the wall time from the first call to the run being `succeeded` in the
database, and the stored `done` must equal N. Progress is *coalesced by design*: progress calls
touch memory only and the flusher writes the current value once per tick (`flush_interval`,
0.25 s), so every update is reflected in the store while only a few row writes happen. Baseline:
plain `sqlite3` writing *every* update (`UPDATE runs SET done = ?` per update, `executemany` in
transactions of 1,000, WAL, `synchronous=NORMAL`), what a progress store without coalescing pays.
Goal: >= 0.5x raw. The ratio is large because the designs differ; 4c shows what the coalescing
costs a reader.

4c. **Progress values a reader sees**: while a run calls `ctx.advance()` as fast as it can, a
reader on its own connection polls the run's row every 5 ms and counts the distinct values of
`done`: one new value per flusher tick. The flusher ticks at a fixed rate of `flush_interval`
(0.25 s; until this figure showed it, it waited 0.25 s *after* each write and values came
0.35-0.4 s apart), so the gap is ~0.25 s; while the body spins in Python the flusher needs the GIL back after
each of its SQLite calls (up to `sys.getswitchinterval()`, 5 ms, each time), which makes some gaps
longer (the row shows the median and the largest gap): that is how old the progress a panel of
another process shows can be, and what a crash can lose of it. A body that waits on I/O leaves
the flusher the GIL and gets ticks close to 0.25 s.
Informative.

### 5. Polling at scale

A database of 10,000 runs and ~1,000,000 events (1,000 `running` runs of 1,000 log events each,
owned by a live helper process, as a panel sees a run another kernel executes; 9,000 succeeded
runs), written with raw `executemany` after tether created the schema.

5a, 5b. **The panel's database reads**: `store.get(run_id)` + `store.events(run_id,
after=last_seq)`, for a panel that is caught up (no new event) and one 10 events behind (each
decoded from JSON), against the same two queries in raw SQL without decoding. Goal: <= 3x raw.

5c. **The panel's own poll** (`RunReader.read()`, what the poller thread runs every second per
open panel of a run another process owns): `run.snapshot()` (which proves the owner is alive: the
orphan check reads `/proc` through psutil) and the new events. Baseline: the same raw SQL plus
the same liveness check done with psutil directly (raw SQL alone in brackets). Goal: <= 3x.

5d. **`tether.runs(limit=50)`**: the newest 50 runs as `Run` handles, with the owner check of the
active ones, against the raw indexed query on an open connection (median of 5 interleaved
batches). Informative.

5e. **`tether ls` in-process**: `tether.cli.main(["ls", "--db", ...])` with its output captured:
parse the arguments, list 50 runs (`Store.summaries`: no `RunRecord` built), check the owners of
the running ones (once per owner), print the table. Against the raw indexed query of the same
columns (`SELECT <every column> FROM runs ORDER BY created_at DESC, attempt DESC LIMIT 50`: the
listing checks every column for damage) with its `sqlite3.connect`, the goal's baseline. 5e'
compares the same calls with the query alone on a connection kept open (tether's store keeps its
connection between calls, so 5e' is the stricter comparison). Each figure is the median of 5
interleaved batches. Goal: <= 3x raw.

5f. **`tether ls` as a user types it**: the `tether` console script in a new process (its module
`_tether_cli` runs `tether ls` without tether's package `__init__`: no engine, runs or pipelines
imported; the bench runs that module itself when the installed script is an older one), wall
time (median of 9 interleaved rounds), against a new `python -c` process that connects, runs the
same raw query and prints the rows. Goal: <= 3x. By `python -X importtime`, the lean process's
imports take ~2/3 of those of `tether.cli` (tether's own modules: ~55%); what is left is mostly
the store package as a whole (its write side with `codec`, `artifacts` and `policy`: ~half of
tether's part), the dataclasses of `tether.model`, `config` and `argparse`.

### 6. Fan-out

Measured by `bench/bench_fanout.py`.

6a, 6b. **`ctx.map(fn, items, executor=ex)`** inside a run against a plain
`list(ex.map(fn, items))` on the same executor, items that sleep 10 ms: a thread pool of 4, and a
Dask `LocalCluster` (2 worker processes x 2 threads, `client.get_executor()`). Timed by the
pipeline body around the call; every repetition maps fresh items; medians of 5 interleaved
repetitions. The CPU time of the calling thread per item is shown too. Goal: <= 1.1x. On this
2-core machine the Dask ratio moves between ~0.7 and ~1.3 from one run to the next (Dask's
scheduler, its workers and the run share the cores); the thread-pool ratio stays at 1.00.

6b', 6b''. Dask only, informative: against one plain `client.map` + `client.gather` (how
`ctx.map` submits: one call for every item), and `ctx.map(..., checkpoint=False)` (no checkpoint
writes).

6e. **Run thread CPU per `ctx.map` item on Dask**: `time.thread_time()` in the run's thread around
the `ctx.map` call of 6b, per item, median of the 5 repetitions; beside it the caller's CPU per
item for the plain `executor.map` and for `client.map` + `gather`. Goal: <= 0.3 ms. Before the
batched submits and writes (99ade3e) it was 1.37 ms: a `submit` per item, a
`concurrent.futures.wait` per batch of finished items (which arms a waiter on every pending
future) and two write transactions per such batch.

6c. **Resume with N finished items**: a run maps N trivial items (every item checkpointed), then
fails; `run.resume()` starts an attempt whose `ctx.map` finds every item stored. The time from
`resume()` until the resumed map returns, against a raw `SELECT` + `json.loads` of the N stored
rows; 6c' and 6c'' split it. 6d: the first attempt against a plain `executor.map` of the same
items on a 32-thread pool (the size of ctx.map's default pool). Informative.

### 7. Memory and disk

7a. **Kernel RSS growth per 1,000 finished runs**: one process starts and waits for small runs one
after the other (a phase, `ctx.track` over 10 items, 3 log lines), and reads its RSS (after
`gc.collect()` and glibc's `malloc_trim(0)`) after a warm-up of 100 runs, after 1,000 more and at
the end. The runner keeps the done-event of the last `_KEEP_ENDED` = 1,000 ended runs
(`tether/runner/_state.py`), so some growth over the first 1,000 runs (7a') is by design, and the
steady state after that should be flat. Baseline: the same body in plain threads. The open file
descriptors and the store's SQLite connections are counted too. Goal: <= 1 MiB per 1,000 runs in
the steady state (memory bounded by the window).

7a'', 7a'''. **Memory per open panel**: `tether.panel(run)` widgets created in a process with
ipywidgets and anywidget imported (no kernel: ipywidgets' dummy comm, the same for the peer), for
finished runs (static panels) and runs another live process owns (poll panels, refreshed by the
shared poller thread), each run with 100 log lines, all kept open: traced Python memory
(`tracemalloc`) and RSS growth per panel. Peer: `tqdm.notebook.tqdm` bars (an HBox of a progress
bar and two HTML widgets) kept open, each at 50%. Informative.

7b. **Database bytes per run** (by `bench/peers.py`): file + WAL size after a
`wal_checkpoint(TRUNCATE)`, growth per run over the runs of 2a, against DBOS's database after the
same number of its workflows. Goal: <= 1x.

### 8. Import time

8a. **`import tether`** in a fresh interpreter: the median wall time of `python -c "import
tether"` minus that of `python -c pass` (median of 9 rounds, the commands rotated each round,
bytecode caches warm), against `import tqdm.notebook` (plain `import tqdm` for scale). Goal:
<= 1x tqdm.notebook. 8b, 8c: against `import dbos` and `import rich.progress`, informative. The
`-X importtime` breakdown of `import tether` is listed under "Versions and settings". New
processes on this VM come in two speeds (~250 or ~350 ms for the same `import tether`), so these
medians move by up to a third between runs; the ratios less.

### 9. `start()` latency

9a. **`start()` of a run that exists** (a succeeded run with the same params is returned, not run
again): p50 and p99 of the call, against the single SQL lookup of the latest run of the key. Goal
(from the engine issue): p50 <= 0.15 ms.

9b. **From `start()` to the body's first line** for a new key: the body's first statement is
`return time.perf_counter()`; the figure is that value minus the time just before `start()`. It
includes the idempotent start's transaction (which claims the run too, when a slot is free) and
the hand-over to a run thread (an idle one, or a new one). Baseline:
starting a plain `threading.Thread` and reaching its first line. Goal: p50 <= 5 ms.

9c. **The claim with `concurrency=` checked** (issue 14): the transaction that turns a pending run
into a running one, for runs of a pipeline with `concurrency=4` (it counts the pipeline's running
runs and looks for an older pending run, in the same transaction), against the same claim of runs
of a pipeline without a limit, interleaved, each with as many pending runs queued behind it at
first as there are claims. Goal: ratio <= 1.5.

### 10. Values: arrays and frames

10a. **A 200 MB float64 array as a run's result**: a body returns a prepared array; timed from
`start()` until the run has ended (the array's buffer hashed with SHA-256, written to a temporary
file beside the database and renamed, the row committed), then `tether.get_run(id).result()` (a
fresh record: the file read whole into a new array and checked against its SHA-256). Baseline:
`np.save(allow_pickle=False)` to a new file in the same folder, then `np.load`. Each repetition
changes one element, so every write is a new file. The ratio is a speed ratio (baseline time /
tether time), median of 5 interleaved repetitions. Goal: >= 0.5.

10b. **A 1,000,000-row DataFrame** (int64, float64, str, datetime64, categorical) the same way
(tether stores it as an Arrow IPC stream), against Parquet written and read directly with pyarrow
(`pq.write_table(pa.Table.from_pandas(df))`, `pq.read_table(path).to_pandas()`, defaults). Goal:
>= 0.5.

10c. **The database file** (+ WAL) after 10a and 10b: values over 1 MiB keep their bulk in files
beside it (see [values and artifacts](values.md)). Goal: < 1 MiB.

### 11. Front ends: `tether serve` and `tether watch`

11a, 11b. **Many watchers of one run in the web app**, measured by `bench/serve_watchers.py`. A
child process owns a run that logs a line every ~2 ms; `tether serve` runs in a second process;
the benchmark opens the SSE streams of `/api/runs/<id>/events` from a third. One watcher for 10 s,
then 50 at once for 10 s, over the same run. 11a: store reads per second, the server's own count
(`/api/stats`: its hub counts each one), with 50 watchers against one; goal <= 2x. Each run has
one reader in the server (see [the web page](web.md#one-reader-per-run)), so the store reads do
not grow with the watchers (a reader per watcher would make ~50x as many). 11b: the latency of
each log event each watcher receives, its arrival time minus the time the pipeline called
`ctx.log` (same host clock); goal p50 <= 300 ms. Most of it is the owner's `flush_interval`
(0.25 s by default: a log line reaches the store at the owner's next flush, 125 ms later on
average), then the server's 0.1 s poll; a smaller `flush_interval` in the owner lowers it. With 50
watchers the extra is the server and the benchmark's own client sharing two cores.

11c. **`tether watch ID` CPU**, measured by `bench/watch_cpu.py`: a child process executes a busy
run (~1,000 `ctx.advance()` and ~50 log lines a second) and `tether watch` follows it from another
process, once under a pseudo-terminal (frames redrawn in place; the benchmark reads the terminal
all the time, as a terminal would) and once with its stdout on a pipe (plain lines). The figure is
the watcher's CPU time (psutil `cpu_times()`, user + system) over 20 s after a 2 s warm-up (its
start and imports not counted), as a share of one core. Goal: <= 2% of a core in both modes.

### 12. PostgreSQL: DBOS on the same server, races, hosts

Measured by `bench/bench_postgres.py` (its docstring gives every detail): a throwaway cluster
(`initdb` into a temporary folder, unix socket only) restarted with PostgreSQL's durability
defaults (`fsync=on`, `synchronous_commit=on`, `full_page_writes=on`; `--fast-server`: all three
off, as in the test suite), tether and DBOS each on a database of their own on that one server.
The issue states no goals for PostgreSQL: 12a and 12b are informative, 12c and 12d check
correctness.

12a. **Durable trivial runs one after the other** on PostgreSQL: the runs of 2a (three
checkpointed steps, a new key each time), tether with `db="postgresql://…"` against the DBOS
workflow of 2a with `system_database_url="postgresql://…"`; median of >= 5 interleaved batches.
Both sides wait mostly on the server (py-spy with `--fast-server`, 2026-11-30), and the server
counts the transactions (`pg_stat_database.xact_commit` over 100 runs, reads included): 5.4 per
tether run (start and claim in one, a checkpoint per step, the end; each `BEGIN` takes the
database's advisory lock in the same round trip), 16.9 per DBOS run (per step a read of its
recorded output and a write with an owner check, plus the workflow's insert and outcome, through
SQLAlchemy). With `fsync=on` each writing commit also waits for the WAL to reach the disk.

12b. **Idempotent re-start of a finished run** on PostgreSQL, as 3: tether's `start()` against the
faster of DBOS's two forms, in alternating blocks of 20 calls.

12c. **A race**: 16 processes each start the same 200 keys at once (released together) and wait
for their results. Checked: one run per key (200 rows, attempt 1 each), every process got the same
run of each key, no exception raised to any caller; the time is the whole race, results included
(and the slowest process's loop of `start()` calls alone). Where it goes (py-spy
over the 16 processes, 2026-11-30): 87% of the time inside `start()` is `BEGIN` waiting for the
database's write lock. Only a key whose run has ended is attached from a read; a start() that
finds the key's run still pending or running (here: another process's, nearly every call) decides
in a write transaction, so the 3,200 calls queue on the one lock with the runs' own writes.

12d. **A worker pool on 3 hosts**: 3 processes in their own UTS and pid namespaces (own host
name, pids from 1: [the other-host harness](postgres.md)) run `tether worker` on 1,000 pending
detached runs; each run's body appends its number and host name to one log with `O_APPEND`: a run
executed twice would leave two lines. Checked: 1,000 lines, none twice; shown: the runs per host
and runs/s from the hosts' launch (interpreter start-up included) to the last run's end.

## Reading the figures

On the 2-core VM this project runs on, absolute figures move by up to 2x between runs even when no
other process is busy (the raw baselines show it), and other processes' load makes it worse (the
summary and the per-section line say how much CPU they took; `--wait-idle` waits for a quiet
machine first). Ratios move much less, since each is measured within one subprocess with the
modes interleaved: judge a change by its ratio, and by runs of the old and new code alternated
within the same minutes.
"""

# Profiles of the goals tether missed when this page was last written, by figure. The page lists
# a note for each MISS of the run that wrote it (and says when a MISS has none yet).
NOTES: dict[str, str] = {
    "2a": """\
**2a (durable runs vs DBOS).** Blocked: the goal is beyond what any engine in Python can reach
with these guarantees on this machine. `bench/floor.py` is a minimal engine written straight on
`sqlite3` that does the durable work of a 3-step run and nothing else: the key read, five commits
(the start; each step's checkpoint, fenced on the run still being its owner's and committed before
the next step begins, as DESIGN.md's "nothing is lost" requires; the end) and two thread
hand-overs. Interleaved with tether and DBOS at 79bf53e (5 batches of 300 per side): the floor
1,667 runs/s, tether 941, DBOS 105; **floor / DBOS 15.9x**, tether / DBOS 9.0x, tether / floor
0.56. DBOS's own rate follows the disk's fsyncs (25-36 runs/s on a slow day, 74-122 on quick
ones), so the ratio moves with it, but not to 30x at the floor. The issue's other idea, step
checkpoints written in the flusher's batch, would let a crash lose a completed step's checkpoint,
which DESIGN.md rules out.

What tether costs was found with cProfile per thread, py-spy, strace and the WAL's frames read back
page by page:

- **48d10cf -> 204e892:** one writer connection per process (`pread64` per run 37 -> 5); a step's
  checkpoint committed alone when nothing else changed; schema 0005, one partial index of the
  active runs (WAL frames per run 28 -> 17). Quiet A/B: 640-690 -> 795-798 runs/s.
- **-> e8b017a:** such a checkpoint is one statement committed on its own (`Store.write_run`: no
  `BEGIN`/`COMMIT`, the owner's fence in its `WHERE EXISTS`; a write statement outside a
  transaction takes SQLite's write lock before it reads, as `BEGIN IMMEDIATE` does); `tx()` and
  the fence without context managers; a step's state taken once. Run thread per run: `execute`
  calls 16 -> 7, Python calls 486 -> 333, CPU ~20% less (512-732 -> 418-568 us, shared machine).
  In this table 894-928 runs/s against 696-738 before (DBOS 98-122 and 74-96).

Left: SQLite's WAL auto-checkpoint runs inside the run thread's commits (py-spy `--native`: 61% of
the run thread's samples; two `fdatasync` every ~35 runs). A background `PASSIVE` checkpoint with a
high auto-checkpoint as backstop gave 1,154-1,215 against 892-1,120 runs/s in one trial and was
inconclusive in another; not shipped (the WAL's growth needs a backstop, and a checkpointing
connection opened after the file was replaced could apply the old WAL to the new file). Time-ordered
run ids: 21.8 -> 20.2 frames per run in a trial, not adopted (ids alike, collisions across
processes).""",
    "2d": """\
**2d (durable runs vs DBOS, both at `synchronous=FULL`).** At `FULL` every commit waits for an
fsync of the WAL: a 3-step run commits five times on each side. `bench/floor.py --full` at 79bf53e
(the floor engine of 2a at `FULL`, interleaved): the floor 654 runs/s, tether 430, DBOS 116;
floor / DBOS 5.6x, tether / DBOS 3.7x, tether / floor 0.66. Unlike 2a the goal is under the floor
here, but only just: the fsyncs are not overlapped with tether's ~1 ms of CPU per run, so 5x needs
tether within 0.9 of the floor, i.e. most of its CPU per run gone; the levers are 2a's.""",
    "3": """\
**3 (idempotent re-start vs DBOS).** An attach takes no lock: `start()` reads the key's latest
attempt and returns an ended run it attaches to as it is (terminal statuses never change), without
the write lock, the interrupt guard or the runner. The SQLite store keeps, per thread, the rows of
the ended attempts it read (up to 4,096 rows and 4 Mi characters of text), with SQLite's
`data_version` read before each read: read again, an ended attempt costs one
`PRAGMA data_version` instead of its row, and any commit to the file since (another process, a
user's own connection, this process's writer) makes it read the row again. At 79bf53e, three
runs: this table's two full runs 0.043 ms against DBOS `start_workflow` 0.552 ms (0.078) and
0.049 against 0.586 (0.084), `bench/peers.py` alone 0.045 against 0.693 (0.065). Counted with
callgrind (instructions per `start()`, 1,000 calls, no tether thread running): 238.7k before,
156.9k for a key read again (-34%), 253.2k for a key read the first time (+6%: the PRAGMA is ~12k
instructions). A record is still made per call from the kept row (each caller gets its own);
keeping records and copying them was 136k again but +8% on a first read. A memo of 256 rows
cleared when full missed every read of this figure's 300 keys (0.082 ms in a full run): the cap is
now 4,096 rows.""",
    "4a": """\
**4a (`ctx.log()` vs raw insert).** Every line costs tether, beyond the raw insert: formatting,
building the JSON of `{"level", "message"}`, a lock to append to the run's buffer, and the
flusher's per-event bookkeeping (sequence numbers, the `runs` row update) in its transaction. The
ratio is near the goal (0.54-0.59 on an idle machine) and drops under load, when the flusher
thread and the logging thread compete for 2 cores.""",
    "5b": """\
**5b (panel poll with new events).** The extra cost over raw SQL is decoding each event's JSON
`data` into a `tether.Event`: ~0.01 ms per event here; the ratio is near 3 with 10 new events.""",
    "5e": """\
**5e (`tether ls` in-process).** The listing builds no `RunRecord`: `Store.summaries` reads the
same columns as `list_runs` and runs the same damage checks on each row (a row's column types are
checked once per distinct shape, `phases` texts once per distinct text), but makes a small
`RunSummary` of what the table shows; a damaged row alone goes through the full record, so the
damage named is the same. The owner check proves each owner alive once, not each run (one read
of `/proc/<pid>/stat`), and reads and recovers records only when one is gone. What is left,
cProfile of 300 calls on a 10,000-run database: fetching the rows ~12%, the summaries ~15%,
formatting the 50 rows ~45% (params decoded and written ~12%, `localtime`/`strftime` ~6%,
progress ~6%, escaping ~5%, the column widths and joins ~5%), argument parsing ~5%, the owner
check ~3%. Against the query alone on an open connection (5e') that is 3.5-4x on an idle machine;
a busy one stretches the longer call more (it is preempted more often).""",
    "5f": """\
**5f (`tether ls` in a new process).** `import tether.cli` loads the whole library (engine, runs,
pipelines, widgets' wiring: ~2/3 of the process's own time). The console script's module
`_tether_cli` (beside the package) loads tether's package without its `__init__` for `tether ls`
and runs `tether._ls`, which imports the store, the owner check and the table's formatting only
(`--json`, errors and the other commands run the full CLI). What it still imports (`-X
importtime`): the store package as a whole (its write side, `policy`, `codec` and `artifacts`
come with `tether.store`: ~1/3 of tether's part), `tether.model`'s dataclasses, `view.render`
(with `html`) for the time format, `argparse`; and opening the store runs its file checks
(header probe, permissions, the mount). A read-only store module would take the next third
off.""",
    "6b": """\
**6b (`ctx.map` on Dask).** This ratio moves between runs on this machine (0.7 to 1.3 with the same
code: Dask's scheduler, its 2 worker processes and the run share 2 cores, and the run's process
also hosts `LocalCluster`'s scheduler and the client's event loop). `ctx.map` submits every item in
one `client.map`, learns of each end through a done-callback into a queue, fetches the results of
a batch of finished items with one `client.gather`, and stores them in one transaction at most
0.1 s after the first of them finished: ~0.15 ms of run thread CPU per item (6e), of which ~0.04 ms
is encoding and storing the checkpoints (6b'' without them) and ~0.08 ms what a plain
`client.map` + `gather` costs its caller (6b').""",
    "7a": """\
**7a (RSS per 1,000 finished runs).** Met since 1d79608. Before it, every finished run leaked its
SQLite connection (2 file descriptors, ~140 KB): each run's thread opened its own connection and
`Store` kept every one until `close()`. Now an ending run thread gives its connection back for the
next run to reuse (up to 8 idle), and connections of other ended threads are closed.""",
}


def _sections_text(
    sections: Sequence[tuple[Sequence[str], str, dict[str, Any], str | None]], base: dict[str, str]
) -> str:
    out = []
    for refs, title, info, error in sections:
        extra = {k: v for k, v in info.items() if k not in SKIP and (k not in base or v != base[k])}
        lines = [f"- **{k}**: {v}" for k, v in extra.items()]
        if error:
            lines.append(f"- **not measured**: {error}")
        out.append(f"**{', '.join(refs)}: {title}**\n\n" + ("\n".join(lines) or "- (nothing to add)"))
    return "\n\n".join(out)


def _misses_text(rows: Sequence[Row]) -> str:
    missed = [r.ref for r in rows if r.ok is False]
    if not missed:
        return "Every goal was met in this run."
    parts = [f"### Missed goals: {', '.join(missed)}"]
    for ref in missed:
        key = re.sub(r"'+$", "", ref)
        note = NOTES.get(key) or NOTES.get(ref)
        parts.append(note or f"**{ref}.** No profile written for this figure yet.")
    return "\n\n".join(parts)


def write_doc(
    *,
    command: str,
    machine: dict[str, str],
    rows: Sequence[Row],
    summary: str,
    per_section: str,
    sections: Sequence[tuple[Sequence[str], str, dict[str, Any], str | None]],
) -> None:
    text = HEAD.format(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        command=command,
        machine="\n".join(f"- **{k}**: {v}" for k, v in machine.items()),
        table=table(rows),
        summary=summary,
        per_section=per_section,
        misses=_misses_text(rows),
        sections=_sections_text(sections, machine),
    )
    DOC.write_text(text + "\n" + FIGURES)
    say(f"wrote {DOC}")

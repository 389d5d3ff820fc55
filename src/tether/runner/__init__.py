"""The per-process runner: executes the runs this process owns, flushes, heartbeats, recovers.

Threads (all daemon, so interpreter exit is never blocked and ``atexit`` can mark unfinished runs
``interrupted``):
- run threads for sync bodies, one per body executing (at most ``max_concurrency`` at once,
  parked parents aside); a thread whose body ended takes the next one, and ends after
  ``_IDLE_S`` without one;
- one asyncio loop thread, started when the first async pipeline runs;
- one flusher thread: progress + events of every live run in one transaction per tick, lease
  renewal, cancel requests from other processes, and the orphan sweep.
The runner never prints; errors of its threads are kept in ``Runner.errors``.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before workspace.py's
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import _interrupts
from ..context import Context
from ..errors import PipelineNotFound
from ..model import RunRecord, Status
from ..store import FlushItem, Queued
from ._ends import Ending, _End
from ._execute import Executing
from ._flush import Flushing
from ._state import _RETRY_FIRST_S, _RETRY_MAX_S, Listener, _error, _transient

if TYPE_CHECKING:
    import asyncio

__all__ = ["Runner", "forked", "shutdown_all"]


class Runner(Executing, Ending, Flushing):
    """Executes runs whose target is this process, against one store: claims them, hands each
    to a thread or the loop (``Executing``), writes its end (``Ending``), flushes (``Flushing``)."""

    # -- submitting --------------------------------------------------------------------------

    def submit(self, rec: RunRecord) -> None:
        """Queue a pending run this process created; it starts as soon as a slot is free."""
        with _interrupts.critical(), self._lock:
            if self._closing or self._forked or rec.id in self._done:
                return
            self._done[rec.id] = threading.Event()
            self._queue.append(rec)
        self._ensure_flusher()
        self._pump()

    def reserve(self) -> bool:
        """Take a slot for a run ``start()`` creates and claims in one transaction (see
        ``Store.start(claim=True)``): only while one is free and no run waits in the queue before
        it. The caller gives it back with ``unreserve()`` unless it hands the claimed run to
        ``launch_claimed()``."""
        limit = self.workspace.settings.max_concurrency
        with self._lock:
            if self._closing or self._forked or self._queue or self._slots >= limit:
                return False
            if self._pump_due and time.monotonic() < self._pump_due:  # claims fail lately
                return False
            self._slots += 1
            return True

    def unreserve(self) -> None:
        """Give back a slot ``reserve()`` took for a run that was not created and claimed."""
        with self._lock:
            self._slots -= 1
        if self._queue:  # a run queued meanwhile may have found no slot
            self._pump()

    def launch_claimed(self, rec: RunRecord) -> None:
        """Execute a run ``start()`` created already claimed by this process, in the slot
        ``reserve()`` took for it."""
        with _interrupts.critical(), self._lock:
            if self._closing or self._forked:  # shutdown marks it interrupted, or recovery does
                self._slots -= 1
                return
            self._done[rec.id] = threading.Event()
        self._ensure_flusher()
        self._launch(rec)

    def claim_detached(self, pipelines: list[str]) -> int:
        """Worker mode: claim and start pending detached runs of ``pipelines`` while slots are free."""
        limit = self.workspace.settings.max_concurrency
        started = 0
        self._ensure_flusher()
        while True:
            with _interrupts.critical():
                with self._lock:
                    if self._closing or self._forked or self._slots >= limit:
                        return started
                    self._slots += 1
                try:
                    with _interrupts.holding(self._unslot):
                        rec = self.store.claim_next(self.owner, pipelines, self.workspace.settings.lease)
                except Exception:
                    self._record_error("claim")
                    rec = None
                if rec is None:
                    self._unslot()
                    return started
                with self._lock:
                    self._done[rec.id] = threading.Event()
                self._launch(rec)
                started += 1

    @property
    def busy(self) -> int:
        """Runs executing or queued in this process (and ends not written yet)."""
        return self._slots + len(self._queue) + len(self._ending) + len(self._waiting)

    @property
    def slots(self) -> int:
        """Runner slots in use: bodies executing (at most ``max_concurrency``)."""
        return self._slots

    def owns(self, run_id: str) -> bool:
        return run_id in self._done

    def live(self, run_id: str) -> Context | None:
        return self._live.get(run_id)

    def done_event(self, run_id: str) -> threading.Event | None:
        return self._done.get(run_id)

    def subscribe(self, run_id: str, fn: Listener) -> Callable[[], None]:
        """Call ``fn(run_id)`` after each flush of that run and when it ends. Returns unsubscribe."""
        with self._lock:
            self._listeners.setdefault(run_id, []).append(fn)

        def unsubscribe() -> None:
            with self._lock:
                fns = self._listeners.get(run_id, [])
                if fn in fns:
                    fns.remove(fn)

        return unsubscribe

    def _pump(self) -> None:
        """Start queued runs while slots are free. A claim that fails (disk full, a lock held
        too long) puts the run back at the head of the queue; the flusher tries again later."""
        limit = self.workspace.settings.max_concurrency
        while True:
            with _interrupts.critical():
                with self._lock:
                    if (
                        self._closing
                        or self._forked
                        or not self._queue
                        or self._slots >= limit
                        or time.monotonic() < self._pump_due
                    ):
                        return
                    rec = self._queue.popleft()
                    self._slots += 1
                try:
                    with _interrupts.holding(partial(self._unslot, rec)):
                        claimed = self.store.claim(rec.id, self.owner, self.workspace.settings.lease)
                except Exception as exc:
                    self._record_error("claim")
                    with self._lock:
                        self._slots -= 1
                        self.unstored[rec.id] = f"its start could not be written ({exc})"
                        if _transient(exc):  # e.g. the disk full: the same claim, later
                            self._queue.appendleft(rec)
                            self._pump_due = time.monotonic() + self._pump_delay
                            self._pump_delay = min(self._pump_delay * 2, _RETRY_MAX_S)
                            return
                    self._ended(rec.id)  # e.g. the database deleted: it can never start here
                    continue
                self._pump_delay = _RETRY_FIRST_S
                self.unstored.pop(rec.id, None)
                if isinstance(claimed, Queued):  # its pipeline's concurrency: waits in line
                    with self._lock:
                        self._slots -= 1
                        self._waiting[rec.id] = rec
                    self._wake.set()
                    continue
                if claimed is None:  # cancelled while pending, or not ours
                    self._free_slot(rec.id)
                    self._ended(rec.id)
                    continue
                self._launch(claimed)

    def _pump_waiting(self) -> None:
        """Claim the runs waiting for their pipeline's concurrency= that have room now (checked
        with a read first: a write only for a claim that will pass)."""
        if not self._waiting or self._closing or self._forked:
            return
        limit = self.workspace.settings.max_concurrency
        with self._lock:
            if self._slots >= limit:
                return
            ids = list(self._waiting)
        try:
            room = self.store.claimable(ids)
        except Exception:
            self._record_error("claimable")
            return
        for run_id in ids:
            if run_id not in room:  # no longer pending: cancelled, handed over, interrupted
                with self._lock:
                    gone = self._waiting.pop(run_id, None)
                if gone is not None:
                    self._ended(run_id)
                continue
            if not room[run_id]:
                continue
            with _interrupts.critical():
                with self._lock:
                    if self._closing or self._slots >= limit or run_id not in self._waiting:
                        return
                    rec = self._waiting.pop(run_id)
                    self._slots += 1
                try:
                    with _interrupts.holding(partial(self._unslot, rec, waiting=True)):
                        claimed = self.store.claim(rec.id, self.owner, self.workspace.settings.lease)
                except Exception:  # tried again at the next poll
                    self._record_error("claim")
                    self._unslot(rec, waiting=True)
                    return
                if isinstance(claimed, Queued):  # another process was quicker
                    self._unslot(rec, waiting=True)
                    continue
                if claimed is None:
                    self._free_slot(rec.id)
                    self._ended(rec.id)
                    continue
                self._launch(claimed)

    def _unslot(self, rec: RunRecord | None = None, *, waiting: bool = False) -> None:
        """A claim that claimed nothing: free the slot counted for it and put ``rec`` back where
        it came from (the head of the queue, or the runs waiting for their pipeline's room).
        Also what a claim gives back when a held-back interrupt lands while it waits for the
        write lock (``_interrupts.holding``): nothing was claimed then either."""
        with self._lock:
            self._slots -= 1
            if rec is None:
                return
            if waiting:
                self._waiting[rec.id] = rec
            else:
                self._queue.appendleft(rec)

    @contextmanager
    def parked(self, ctx: Context) -> Iterator[None]:
        """A body waits for another run (a child): its runner slot is given back meanwhile, so
        the child can start even with every slot taken by waiting parents (no deadlock at any
        depth), and it is not counted by its pipeline's concurrency= while it waits. Coming
        back it takes its slot again at once, even if that briefly makes one more than
        max_concurrency: waiting for a free slot there could deadlock."""
        with self._lock:
            mine = not ctx._parked and self._live.get(ctx.run_id) is ctx and not self._forked
            if mine:
                ctx._parked = True
                self._slots -= 1
        if not mine:
            yield
            return
        try:
            if ctx._concurrency is not None:
                self._park(ctx, True)
            self._pump_waiting()
            self._pump()
            yield
        finally:
            with self._lock:
                self._slots += 1
                ctx._parked = False
            if ctx._concurrency is not None:
                self._park(ctx, False)

    def map(self, ctx: Context, fn: Callable[[Any], Any], items: Any, **options: Any) -> list[Any]:
        """``ctx.map``: imported with the first map, not with tether."""
        from ..fanout import run_map

        results: list[Any] = run_map(ctx, fn, items, **options)
        return results

    def map_checkpoints(self, ctx: Context, items: Sequence[tuple[str, str]]) -> None:
        """Store finished ``ctx.map`` items, ``(name, JSON)`` pairs, in one transaction. If the
        run is no longer ours (another process recovered or ended it), its body is told to stop
        at its next ctx call, as after a step's checkpoint."""
        if self._forked:
            return
        if not self.store.put_checkpoints(ctx.run_id, self.owner, items):
            self._apply(({ctx.run_id}, set()))

    def _park(self, ctx: Context, parked: bool) -> None:
        try:
            self.store.park(ctx.run_id, self.owner, parked)
        except Exception:  # only the count of its pipeline's limit is off meanwhile
            self._record_error("park")

    def _launch(self, rec: RunRecord) -> None:
        """Hand a claimed run (its slot counted) to a thread; whatever fails ends the run."""
        try:
            ctx = Context(self, rec)
        except Exception as exc:  # a damaged row (its params): the run fails, the slot frees
            item = FlushItem(rec.id, None, [], [], 0, None, None, [])
            self._end(_End(item, Status.FAILED, None, _error(exc)))
            return
        with self._lock:
            self._live[rec.id] = ctx
        try:
            pipe = self.workspace.lookup(rec.pipeline, rec.code)  # the code that created the run
            if pipe is None:
                raise PipelineNotFound(f"pipeline {rec.pipeline!r} is not defined in this process")
            if pipe.is_async:
                loop = self._ensure_loop()
                import asyncio  # only with async pipelines: `import tether` stays quick without

                asyncio.run_coroutine_threadsafe(self._run_async(ctx, pipe), loop)
            else:
                with self._lock:
                    handed = self._idle > 0
                    if handed:  # an idle run thread takes it (see _next_job)
                        self._idle -= 1
                        self._jobs.put((ctx, pipe))
                if not handed:
                    # the thread registers itself in _threads: a thread in that set has started
                    threading.Thread(
                        target=self._run_sync, args=(ctx, pipe), daemon=True, name=f"tether-run-{rec.id}"
                    ).start()
        except Exception as exc:  # e.g. "can't start new thread": the run fails, the slot frees
            self._finish(ctx, Status.FAILED, None, _error(exc))

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="tether-loop").start()
                self.loop = loop
            return self.loop

    # -- cancel and shutdown -----------------------------------------------------------------

    def shutdown(self, reason: str = "the process exited before the run ended") -> None:
        """Flush, mark every unfinished run of this process interrupted, stop the threads."""
        with self._lock:
            if self._closing or self._forked:
                return
            self._closing = True
            ctxs = list(self._live.values())
            queued = [r.id for r in self._queue] + list(self._waiting)
            self._queue.clear()
            self._waiting.clear()
            ending = list(self._ending.values())
            idle, self._idle = self._idle, 0
            for _ in range(idle):  # idle run threads end
                self._jobs.put(None)
        self._stop.set()
        self._wake.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)
        for end in ending:  # a last try at ends that could not be written: the true outcome
            self._write_end(end)
        try:
            with self.store.write_lock:
                items = [it for c in ctxs if (it := c._flush_item()) is not None]
                if items:
                    self.store.flush(items, self.owner, None)
                self.store.interrupt_own(self.owner, reason)
        except Exception:
            self._record_error("shutdown")
        # only now ask the bodies to stop: their own finish can no longer overwrite "interrupted"
        for ctx in ctxs:
            ctx._request_cancel("interrupted: the process is shutting down", kind="shutdown")
        for run_id in [c.run_id for c in ctxs] + queued + [e.run_id for e in ending]:
            event = self._done.get(run_id)
            if event is not None:
                event.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


_EXIT_GRACE_S = 1.0  # how long shutdown_all waits for cancelled bodies to return


def shutdown_all(runners: list[Runner]) -> None:
    """Stop ``runners``, then close their stores (in that order).

    Bodies were asked to stop (their next ctx call raises); they get a short grace to return, so
    that few threads are still inside SQLite while the interpreter finalizes."""
    for runner in runners:
        runner.shutdown()
    deadline = time.monotonic() + _EXIT_GRACE_S
    for runner in runners:
        with runner._lock:
            threads = list(runner._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
    for runner in runners:
        runner.store.close()


def forked(runners: list[Runner]) -> None:
    """In a child forked while runs execute (multiprocessing 'fork', a library forking workers
    from a body): the child owns nothing. The runners it inherited stop doing anything (a body
    that returns or exits in the child ends nothing, flushes nothing, writes nothing); the
    stores it inherited drop the parent's connections (see store._after_fork)."""
    for r in runners:
        r._forked = True
        r._lock = threading.Lock()
        r._idle = 0  # the parent's threads are not here
        r.store.runner = None
        for ctx in r._live.values():  # a lock held by the parent's flusher stays held here
            ctx._ev_lock = threading.Lock()
            ctx._events = []  # the parent's lines: never written from here
            ctx._ev_cap = 0  # and the child's are dropped at once (see Context._wait_for_room)

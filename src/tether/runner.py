"""The per-process runner: executes the runs this process owns, flushes, heartbeats, recovers.

Threads (all daemon, so interpreter exit is never blocked and ``atexit`` can mark unfinished runs
``interrupted``):
- one thread per executing sync run (at most ``max_concurrency`` at once);
- one asyncio loop thread, started when the first async pipeline runs;
- one flusher thread: progress + events of every live run in one transaction per tick, lease
  renewal, cancel requests from other processes, and the orphan sweep.
The runner never prints; errors of its threads are kept in ``Runner.errors``.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before workspace.py's
import inspect
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from . import _interrupts, codec, owner
from .context import Context, _current, install_log_capture
from .errors import MapItemError, ParamsError, PipelineNotFound, RunCancelled, StoreError
from .model import RunRecord, Status
from .store import FlushItem, Queued, Store

if TYPE_CHECKING:
    import asyncio

    from .pipeline import Pipeline
    from .workspace import Workspace

__all__ = ["Runner", "forked", "shutdown_all"]

Listener = Callable[[str], None]
_KEEP_ENDED = 1000  # ended runs whose done-event is kept
_RETRY_FIRST_S = 0.25  # a failed claim or end write is tried again after this, doubling...
_RETRY_MAX_S = 5.0  # ...up to this, until it lands or the process exits
_QUEUE_POLL_S = 0.05  # how often runs queued by their pipeline's concurrency= look for room
# never retried, whatever retry_on says: a cancel, an interrupt, an exit
_NOT_RETRIED = (RunCancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


class _End:
    """A run's end whose write failed (disk full, a lock held too long): tried again later."""

    __slots__ = ("delay", "due", "error", "item", "reason", "result_json", "run_id", "status")

    def __init__(
        self, item: FlushItem, status: Status, result_json: str | None, error: dict[str, Any] | None
    ) -> None:
        self.run_id, self.item, self.status = item.run_id, item, status
        self.result_json, self.error = result_json, error
        self.reason = ""
        self.delay = _RETRY_FIRST_S
        self.due = 0.0


class Runner:
    """Executes runs whose target is this process, against one store."""

    def __init__(self, store: Store, workspace: Workspace) -> None:
        self.store = store
        # its settings (read at each use: configure() applies at once) and the pipelines it runs
        self.workspace = workspace
        self.owner = owner.current()
        self.errors: list[str] = []
        self.unstored: dict[str, str] = {}  # runs whose end is not written yet, and why
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._live: dict[str, Context] = {}
        self._threads: set[threading.Thread] = set()  # run threads of sync bodies
        self._queue: deque[RunRecord] = deque()
        # claims refused by their pipeline's concurrency=: pending, in line, polled for room
        self._waiting: dict[str, RunRecord] = {}
        self._done: dict[str, threading.Event] = {}
        self._ended_ids: deque[str] = deque()
        self._listeners: dict[str, list[Listener]] = {}
        self._slots = 0
        self._ending: dict[str, _End] = {}  # ends to write again
        self._pump_due = 0.0  # after a failed claim: when to try the queue again
        self._pump_delay = _RETRY_FIRST_S
        self._forked = False  # this object was inherited by a forked child: it does nothing
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._flusher: threading.Thread | None = None
        self._next_beat = 0.0
        self._next_sweep = 0.0

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

    def _notify(self, run_id: str) -> None:
        for fn in list(self._listeners.get(run_id, ())):
            try:
                fn(run_id)
            except Exception:
                self._record_error("listener")

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
        from .fanout import run_map

        return run_map(ctx, fn, items, **options)

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
                import asyncio  # only with async pipelines: it costs ~20 ms to import

                asyncio.run_coroutine_threadsafe(self._run_async(ctx, pipe), loop)
            else:
                # the thread registers itself in _threads: a thread in that set has started
                threading.Thread(
                    target=self._run_sync, args=(ctx, pipe), daemon=True, name=f"tether-run-{rec.id}"
                ).start()
        except Exception as exc:  # e.g. "can't start new thread": the run fails, the slot frees
            self._finish(ctx, Status.FAILED, None, _error(exc))

    # -- executing ---------------------------------------------------------------------------

    def _run_sync(self, ctx: Context, pipe: Pipeline) -> None:
        with self._lock:
            self._threads.add(threading.current_thread())
        token = _current.set(ctx)
        try:
            while True:  # one pass per try
                try:
                    out = pipe.fn(ctx, **ctx.params)
                    if inspect.isgenerator(out):
                        out = _drain(ctx, out)
                except BaseException as exc:  # SystemExit in a forked child leaves quietly too
                    if self._forked:
                        return
                    end = self._after_try(ctx, pipe, exc)
                else:
                    if self._forked:  # a child forked by the body returned: the run is the parent's
                        return
                    if ctx._cancel_kind != "timeout":
                        self._succeed(ctx, out)
                        return
                    end = self._after_try(ctx, pipe, None)  # returned past its timeout
                if isinstance(end, tuple):
                    self._finish(ctx, *end)
                    return
                if not self._between_tries(ctx, end):
                    self._finish(
                        ctx,
                        Status.CANCELLED,
                        None,
                        _error(
                            RunCancelled(f"run {ctx.run_id} was {ctx._cancel_reason} while waiting to retry")
                        ),
                    )
                    return
                if not self._next_try(ctx):
                    self._finish(ctx, Status.FAILED, None, ctx._last_error)
                    return
        finally:
            _current.reset(token)
            if not self._forked:
                self.store.release_conn()
                with self._lock:
                    self._threads.discard(threading.current_thread())

    async def _run_async(self, ctx: Context, pipe: Pipeline) -> None:
        _current.set(ctx)
        import asyncio

        while True:  # one pass per try
            task = ctx._task = asyncio.current_task()
            try:
                if ctx._cancel:
                    ctx._raise_cancelled()
                if inspect.isasyncgenfunction(pipe.fn):
                    out = None
                    async for _ in pipe.fn(ctx, **ctx.params):
                        ctx.advance()
                else:
                    out = await pipe.fn(ctx, **ctx.params)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and not ctx._cancel:
                    self._finish(ctx, Status.CANCELLED, None, None)  # the loop stopped it
                    return
                end = self._after_try(ctx, pipe, exc)
            else:
                if ctx._cancel_kind != "timeout":
                    self._succeed(ctx, out)
                    return
                end = self._after_try(ctx, pipe, None)
            if isinstance(end, tuple):
                self._finish(ctx, *end)
                return
            # the wait before the next try; the task.cancel() of a timeout may land here (it is
            # scheduled from the flusher): that one is not the run's, the wait goes on
            due = time.monotonic() + end
            while not ctx._cancel:
                if task is not None and hasattr(task, "uncancel"):
                    while task.cancelling():
                        task.uncancel()
                try:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await asyncio.sleep(0)  # a cancel scheduled meanwhile lands here, not in the body
                    break
                except asyncio.CancelledError:
                    continue
            if ctx._cancel:
                self._finish(
                    ctx,
                    Status.CANCELLED,
                    None,
                    _error(RunCancelled(f"run {ctx.run_id} was {ctx._cancel_reason} while waiting to retry")),
                )
                return
            if not self._next_try(ctx):
                self._finish(ctx, Status.FAILED, None, ctx._last_error)
                return

    # -- retries and timeouts ----------------------------------------------------------------

    def _after_try(
        self, ctx: Context, pipe: Pipeline, exc: BaseException | None
    ) -> tuple[Status, None, dict[str, Any] | None] | float:
        """A try ended without a result (``exc``; None: it returned past its timeout). Either
        the run's end (status, result, error) or, written already, the delay before the next
        try."""
        kind = ctx._cancel_kind
        if kind == "timeout":
            failure: BaseException = TimeoutError(
                f"run {ctx.run_id} passed its timeout of {_seconds(ctx.timeout)} "
                f"(try {ctx.tries} of {ctx.max_tries}); it was stopped at its next ctx call"
            )
            error = {
                "type": "TimeoutError",
                "message": str(failure),
                "traceback": _error(exc)["traceback"] if exc is not None else "",
            }
        elif isinstance(exc, RunCancelled) or _is_async_cancel(exc):
            return Status.CANCELLED, None, _error(exc) if ctx._cancel else None  # type: ignore[arg-type]
        else:
            assert exc is not None
            failure, error = exc, _error(exc)
        ctx._last_error = error
        if not self._retryable(ctx, pipe, failure):
            return Status.FAILED, None, error
        delay = pipe.retry_delay * pipe.retry_backoff ** (ctx.tries - 1)
        ctx._deadline = None  # the wait between tries is no try's time
        if kind == "timeout":  # that try's stop is over; a cancel meanwhile still ends the wait
            ctx._clear_timeout()
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
        assert item is not None
        try:
            ours = self.store.retry_wait(item, self.owner, error, delay)
        except Exception:  # the retry cannot be recorded: the run ends (the end write retries)
            self._record_error("retry")
            ctx._requeue(item.events)
            return Status.FAILED, None, error
        if not ours:
            return Status.FAILED, None, error
        self._notify(ctx.run_id)
        return delay

    def _retryable(self, ctx: Context, pipe: Pipeline, failure: BaseException) -> bool:
        if isinstance(failure, MapItemError) and failure.__cause__ is not None:
            failure = failure.__cause__  # retry_on names what the item raised
        return (
            not self._closing
            and not self._forked
            and ctx._cancel_kind in (None, "timeout")
            and ctx.tries < ctx.max_tries
            and not isinstance(failure, _NOT_RETRIED)
            and isinstance(failure, pipe.retry_on)
        )

    @staticmethod
    def _between_tries(ctx: Context, delay: float) -> bool:
        """Wait ``delay`` s before the next try; False if the run was cancelled meanwhile."""
        end = time.monotonic() + delay
        while not ctx._cancel:
            left = end - time.monotonic()
            if left <= 0:
                return True
            ctx._wakeup.wait(left)
        return False

    def _next_try(self, ctx: Context) -> bool:
        """Record the next try's start; False if that cannot be done (then the run ends)."""
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
        assert item is not None
        try:
            rec = self.store.next_try(item, self.owner)
        except Exception:
            self._record_error("retry")
            ctx._requeue(item.events)
            return False
        if rec is None or ctx._cancel:
            return False
        ctx._new_try(rec.tries)
        self._notify(ctx.run_id)
        return True

    def _check_timeouts(self, ctxs: list[Context]) -> None:
        """Stop the tries past their timeout (cooperatively: at their next ctx call), and the
        active runs their bodies started."""
        now = time.monotonic()
        for ctx in ctxs:
            if ctx._deadline is not None and now >= ctx._deadline and not ctx._cancel:
                ctx._deadline = None
                ctx._request_cancel(f"stopped: its timeout of {_seconds(ctx.timeout)} passed", kind="timeout")
                try:
                    kids = self.store.cancel_children(ctx.run_id, owner.gone_reason)
                except Exception:
                    self._record_error("timeout")
                    continue
                for kid in kids:
                    self.cancel_local(kid)

    def _succeed(self, ctx: Context, result: Any) -> None:
        # checked before the run is marked ended: a result tether cannot store fails the run
        # (its checkpoints kept, so a resume after the fix redoes only the last stretch)
        try:
            text = codec.encode(result, "result", pickle=ctx._pickles(), files=self.store.files)
        except ParamsError as exc:
            self._finish(
                ctx, Status.FAILED, None, {"type": "ParamsError", "traceback": "", "message": str(exc)}
            )
            return
        if ctx._cancel and ctx._cancel_kind != "timeout":  # it saw the cancel and returned early
            self._finish(ctx, Status.CANCELLED, text, None)
            return
        if ctx.phase_name is not None and ctx.phase_name not in ctx.phases_done:
            ctx.phases_done.append(ctx.phase_name)
        self._finish(ctx, Status.SUCCEEDED, text, None)

    def _finish(
        self, ctx: Context, status: Status, result_json: str | None, error: dict[str, Any] | None
    ) -> None:
        """Write a run's end. If the write fails, the run stays ``running`` in the store (its
        lease renewed: it is not an orphan) and the flusher writes the same end again later."""
        if self._forked:
            return
        if status == Status.CANCELLED and error is None:
            error = {"type": "Cancelled", "message": "run cancelled", "traceback": ""}
        from . import _capture

        _capture.end(ctx)  # its partial output lines, before the last flush
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
        assert item is not None
        self._end(_End(item, status, result_json, error))

    def _end(self, end: _End) -> None:
        written = self._write_end(end)
        self._free_slot(end.run_id)
        if written:
            self._ended(end.run_id)
        self._pump_waiting()
        self._pump()

    def _write_end(self, end: _End) -> bool:
        """One try at writing ``end``; False (and queued for another try) if it failed."""
        run_id = end.run_id
        try:
            self.store.finish(end.item, self.owner, end.status, result_json=end.result_json, error=end.error)
        except Exception as exc:
            self._record_error("finish")
            if not _transient(exc):  # e.g. the database deleted: no later try can store it
                with self._lock:
                    self._ending.pop(run_id, None)
                    self.unstored[run_id] = f"{type(exc).__name__}: {exc}"
                return True
            end.reason = f"{type(exc).__name__}: {exc}"
            end.due = time.monotonic() + end.delay
            end.delay = min(end.delay * 2, _RETRY_MAX_S)
            with self._lock:
                self._ending[run_id] = end
                self.unstored[run_id] = f"its end could not be written yet ({end.reason})"
            self._wake.set()
            return False
        with self._lock:
            self._ending.pop(run_id, None)
            self.unstored.pop(run_id, None)
        return True

    def retrying(self, run_id: str) -> str | None:
        """Why the end of ``run_id`` is not written yet, while it is being tried again."""
        end = self._ending.get(run_id)
        return end.reason if end is not None else None

    def _retry_ends(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [e for e in self._ending.values() if e.due <= now]
        for end in due:
            if self._write_end(end):
                self._ended(end.run_id)

    def _free_slot(self, run_id: str) -> None:
        with self._lock:
            self._slots -= 1
            self._live.pop(run_id, None)

    def _ended(self, run_id: str) -> None:
        """The run's end is in the store: wake waiters and listeners."""
        with self._lock:
            event = self._done.get(run_id)
        if event is not None:
            event.set()
        self._notify(run_id)
        with self._lock:
            self._listeners.pop(run_id, None)
            self._ended_ids.append(run_id)
            while len(self._ended_ids) > _KEEP_ENDED:  # forget the oldest ended runs (wait() polls)
                self._done.pop(self._ended_ids.popleft(), None)

    # -- flushing, heartbeats, recovery ------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def flush_run(self, ctx: Context) -> None:
        """Persist one run's state now (phase changes, checkpoints)."""
        if self._forked:
            return
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
            if item is not None:
                try:
                    self._apply(self.store.flush([item], self.owner, None))
                except BaseException:
                    ctx._requeue(item.events)  # not written: they go with the next write
                    raise
        self._notify(ctx.run_id)

    def checkpoint(self, ctx: Context, name: str, value_json: str) -> None:
        """Store a step's checkpoint with the run's pending state: one transaction."""
        if self._forked:
            return
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
            assert item is not None
            try:
                ours = self.store.put_checkpoint(item, self.owner, name, value_json)
            except BaseException:
                ctx._requeue(item.events)  # not written: they go with the next write
                raise
        if not ours:
            self._apply(({ctx.run_id}, set()))
        self._notify(ctx.run_id)

    def flush(self) -> None:
        """One flusher tick: every live run's changes, the lease, cancel requests, orphans."""
        if self._forked:
            return
        if self._ending:
            self._retry_ends()
        if self._waiting:
            self._pump_waiting()
        if self._queue:
            self._pump()
        now = time.time()
        cfg = self.workspace.settings
        beat = now >= self._next_beat
        with self._lock:
            ctxs = list(self._live.values())
            busy = bool(ctxs or self._queue or self._ending or self._waiting)
        if ctxs:
            self._check_timeouts(ctxs)
        if busy:
            with self.store.write_lock:
                items = [it for c in ctxs if (it := c._flush_item()) is not None]
                if items or beat:
                    try:
                        self._apply(self.store.flush(items, self.owner, now + cfg.lease if beat else None))
                    except BaseException:
                        for it in items:  # not written: they go with the next write (or the end)
                            if (c := self._live.get(it.run_id)) is not None:
                                c._requeue(it.events)
                        raise
                elif ctxs:  # nothing to write: still look for cancel requests, without a write
                    self._apply((set(), self.store.cancel_requests(self.owner)))
            if beat:
                self._next_beat = now + cfg.heartbeat_interval
            for it in items:
                self._notify(it.run_id)
        if now >= self._next_sweep:
            self._next_sweep = now + cfg.sweep_interval
            active = self.store.active()
            self.store.recover(active, owner.gone_reason)
            self._adopt(active)

    def _adopt(self, active: list[RunRecord]) -> None:
        """Queue pending runs meant for this process that it does not know: a start() whose
        caller died between the commit and the hand-over (it cannot happen through tether's
        own paths, which hold interrupts back; this keeps any such run from waiting forever)."""
        me = self.owner.instance
        for rec in active:
            if rec.status == Status.PENDING and rec.target == me and rec.id not in self._done:
                self.submit(rec)

    def _apply(self, outcome: tuple[set[str], set[str]]) -> None:
        lost, cancels = outcome
        for run_id in lost:
            ctx = self._live.get(run_id)
            if ctx is not None:
                ctx._request_cancel(
                    "taken over: the store no longer lists this process as owner", kind="lost"
                )
        for run_id in cancels:
            ctx = self._live.get(run_id)
            if ctx is not None:
                ctx._request_cancel("cancelled")

    def _ensure_flusher(self) -> None:
        from . import _capture  # imported with the first run, not with tether

        _capture.install()  # re-checked at each submit: sys.stdout may have been replaced since
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    install_log_capture()
                    self._flusher = threading.Thread(
                        target=self._flush_loop, daemon=True, name="tether-flusher"
                    )
                    self._flusher.start()

    def _flush_loop(self) -> None:
        # ticks at a fixed rate (not an interval after each write, which let a busy body see
        # ~0.35-0.4 s between progress writes for a 0.25 s interval); a burst wakes it early
        due = time.monotonic() + self.workspace.settings.flush_interval
        while not self._stop.is_set():
            wait = max(0.0, due - time.monotonic())
            woke = self._wake.wait(min(wait, _QUEUE_POLL_S) if self._waiting else wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if not woke and now < due:  # a poll of the runs queued by concurrency=, no flush
                try:
                    self._pump_waiting()
                except Exception:
                    self._record_error("queue")
                continue
            if now >= due:
                interval = self.workspace.settings.flush_interval
                due += interval
                if due <= now:  # a write longer than the interval: no catch-up burst
                    due = now + interval
            try:
                self.flush()
            except StoreError:
                self._record_error("flush")
            except Exception:
                self._record_error("flush")

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="tether-loop").start()
                self.loop = loop
            return self.loop

    def _record_error(self, where: str) -> None:
        self.errors.append(f"{where}: {traceback.format_exc()}")
        del self.errors[:-50]

    # -- cancel and shutdown -----------------------------------------------------------------

    def cancel_local(self, run_id: str) -> bool:
        """Set the cancel flag of a run executing here; True if it was."""
        ctx = self._live.get(run_id)
        if ctx is None:
            return False
        ctx._request_cancel("cancelled")
        return True

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


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and exc.transient


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _is_async_cancel(exc: BaseException | None) -> bool:
    asyncio = sys.modules.get("asyncio")  # imported only with async pipelines
    return exc is not None and asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _drain(ctx: Context, gen: Any) -> Any:
    """Run a generator pipeline: each yielded value advances progress; its return is the result."""
    try:
        while True:
            next(gen)
            ctx.advance()
    except StopIteration as stop:
        return stop.value


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


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
        r.store.runner = None
        for ctx in r._live.values():  # a lock held by the parent's flusher stays held here
            ctx._ev_lock = threading.Lock()
            ctx._events = []  # the parent's lines: never written from here
            ctx._ev_cap = 0  # and the child's are dropped at once (see Context._wait_for_room)

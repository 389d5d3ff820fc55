"""Executing run bodies: a thread per sync body, the loop for async ones, retries and timeouts."""

from __future__ import annotations

import inspect
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import owner
from .._text import duration
from ..context import Context, _current
from ..errors import MapItemError, RunCancelled
from ..model import Status, error_dict
from ._state import _IDLE_S, RunnerState, _error

if TYPE_CHECKING:
    from ..pipeline import Pipeline

# never retried, whatever retry_on says: a cancel, an interrupt, an exit
_NOT_RETRIED = (RunCancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


class Executing(RunnerState):
    def _run_sync(self, ctx: Context, pipe: Pipeline) -> None:
        """A run thread: executes ``ctx``'s body, then waits (up to ``_IDLE_S``) for the next
        body ``_launch`` hands it, so that a run does not pay for a new thread."""
        me = threading.current_thread()
        with self._lock:
            self._threads.add(me)
        job: tuple[Context, Pipeline] | None = (ctx, pipe)
        try:
            while job is not None:
                me.name = f"tether-run-{job[0].run_id}"
                self._run_body(*job)
                if self._forked:
                    return
                job = self._next_job()
        finally:
            if not self._forked:
                self.store.release_conn()
                with self._lock:
                    self._threads.discard(me)

    def _next_job(self) -> tuple[Context, Pipeline] | None:
        """Wait idle for the next body; None: none came in time, or the runner is closing.
        ``_idle`` counts the idle threads no body was handed to yet: ``_launch`` and this take
        it under ``_lock``, so a body is never put in ``_jobs`` with no thread left to take it."""
        with self._lock:
            if self._closing or self._forked:
                return None
            self._idle += 1
        try:
            return self._jobs.get(timeout=_IDLE_S)
        except queue.Empty:
            with self._lock:
                try:  # handed over just as the wait ended
                    return self._jobs.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return None

    def _run_body(self, ctx: Context, pipe: Pipeline) -> None:
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
                if task is not None and sys.version_info >= (3, 11):  # Task.uncancel is 3.11+
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
                f"run {ctx.run_id} passed its timeout of {duration(ctx.timeout, 'setting')} "
                f"(try {ctx.tries} of {ctx.max_tries}); it was stopped at its next ctx call"
            )
            error = error_dict(
                "TimeoutError", str(failure), _error(exc)["traceback"] if exc is not None else ""
            )
        elif isinstance(exc, RunCancelled) or _is_async_cancel(exc):
            return Status.CANCELLED, None, _error(exc) if ctx._cancel else None  # type: ignore[arg-type]
        else:
            assert exc is not None
            failure, error = exc, _error(exc)
        ctx._last_error = error
        if not self._retryable(ctx, pipe, failure):
            return Status.FAILED, None, error
        delay: float = pipe.retry_delay * pipe.retry_backoff ** (ctx.tries - 1)
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
                ctx._request_cancel(
                    f"stopped: its timeout of {duration(ctx.timeout, 'setting')} passed", kind="timeout"
                )
                try:
                    kids = self.store.cancel_children(ctx.run_id, owner.gone_reason)
                except Exception:
                    self._record_error("timeout")
                    continue
                for kid in kids:
                    self.cancel_local(kid)


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

"""``ctx.map``: fan work out to any ``concurrent.futures`` executor or a Dask client, checkpointing
each item.

Every item is submitted at once (a Dask client gets them all in one ``client.map``), and each
future reports its end through a queue, so the run's thread spends nothing per item still pending.
Finished results are stored in batches, one transaction each, written at most ``_BATCH_S`` after
the first of them finished (or once ``_BATCH_MAX`` wait): a crash loses the items in flight and at
most that last unwritten batch, never a written one. A resumed attempt skips every stored item.
"""

from __future__ import annotations

import contextvars
import queue
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import codec
from ._capture import IN_ITEM
from .errors import MapItemError

if TYPE_CHECKING:
    from .context import Context

__all__ = ["run_map"]

T = TypeVar("T")
R = TypeVar("R")
_POLL = 0.05  # how often a waiting map looks at the cancel flag
_BATCH_S = 0.1  # a finished item's result is stored at most this long after it arrives ...
_BATCH_MAX = 1000  # ... or as soon as this many results wait to be stored
_MISSING: Any = object()  # an item not finished yet (None is a result like any other)

# (future, exception or None, result): how a finished item ended
Outcome = tuple[Any, BaseException | None, Any]


class _Feed(Protocol):
    """How items reach an executor, and how their ends are read back."""

    def submit(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """One future per item, in item order (each has ``add_done_callback``)."""
        ...

    def outcomes(self, futures: list[Any]) -> list[Outcome]:
        """The end of each of ``futures`` (all finished)."""
        ...

    def cancel(self, futures: list[Any]) -> None: ...


class _Futures:
    """Any ``concurrent.futures`` executor: one ``submit`` per item (there is no batch call)."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool

    def submit(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        submit = self.pool.submit
        if not isinstance(self.pool, ThreadPoolExecutor):
            return [submit(fn, item) for item in items]
        # in threads, logging and print() inside items reach the run's log, and a tqdm bar in
        # an item leaves the progress to the map; each item runs in its own copy of that context
        base = contextvars.copy_context()
        base.run(IN_ITEM.set, True)
        return [submit(base.copy().run, fn, item) for item in items]

    def outcomes(self, futures: list[Any]) -> list[Outcome]:
        out: list[Outcome] = []
        for fut in futures:
            if fut.cancelled():  # e.g. the pool was shut down with cancel_futures=True
                out.append((fut, CancelledError("the executor cancelled it"), None))
                continue
            exc = fut.exception()
            out.append((fut, exc, None if exc is not None else fut.result()))
        return out

    def cancel(self, futures: list[Any]) -> None:
        for fut in futures:
            fut.cancel()


class _Dask:
    """A ``distributed.Client``: one ``client.map`` for every item, one ``client.gather`` per
    batch of finished ones, one ``client.cancel`` for the rest (each Dask call from this thread
    is a round trip to the client's event loop, so none is made per item)."""

    def __init__(self, client: Any, options: dict[str, Any]) -> None:
        self.client, self.options = client, options

    def submit(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures: list[Any] = self.client.map(fn, items, **self.options)
        return futures

    def outcomes(self, futures: list[Any]) -> list[Outcome]:
        states = [fut.status for fut in futures]
        ready = [fut for fut, state in zip(futures, states) if state == "finished"]
        values = iter(self.client.gather(ready) if ready else ())
        out: list[Outcome] = []
        for fut, state in zip(futures, states):
            if state == "finished":
                out.append((fut, None, next(values)))
            elif state == "cancelled":  # by the cluster (a closed client, a lost worker)
                out.append((fut, CancelledError(f"Dask cancelled task {fut.key}"), None))
            else:
                out.append((fut, fut.exception(), None))
        return out

    def cancel(self, futures: list[Any]) -> None:
        if futures:
            self.client.cancel(futures)


def _feed(executor: Any) -> _Feed:
    if isinstance(executor, Executor):
        client = getattr(executor, "_client", None)
        if type(executor).__module__.startswith("distributed") and client is not None:
            # client.get_executor(): the same tasks as its submit() would make, with its options
            # (pure=, workers=, retries=...), in one call
            if getattr(executor, "_shutdown", False):
                raise RuntimeError("cannot schedule new futures after shutdown")
            return _Dask(client, dict(getattr(executor, "_kwargs", {})))
        return _Futures(executor)
    if hasattr(executor, "get_executor") and hasattr(executor, "gather"):  # dask.distributed.Client
        # pure=False: equal items are separate calls, as with any other executor
        return _Dask(executor, {"pure": False})
    raise TypeError(
        f"ctx.map(executor=...) takes a concurrent.futures.Executor or a "
        f"dask.distributed.Client, got {type(executor).__name__}"
    )


def run_map(
    ctx: Context,
    fn: Callable[[T], R],
    items: Iterable[T],
    executor: Any = None,
    checkpoint: bool = True,
    name: str | None = None,
) -> list[R]:
    items = list(items)
    ctx._map_calls += 1
    label = name or f"{getattr(fn, '__qualname__', 'fn')}#{ctx._map_calls}"
    prefix = f"map:{label}:"
    runner = ctx._runner
    store = runner.store
    results: list[Any] = [_MISSING] * len(items)
    if checkpoint:
        for cp_name, value in store.checkpoints(ctx.run_id, prefix).items():
            at = int(cp_name[len(prefix) :])
            if at < len(items):
                results[at] = value
    todo = [i for i, value in enumerate(results) if value is _MISSING]
    pickles = checkpoint and ctx._pickles()
    if ctx.total is None:
        ctx.total = len(items)
    ctx.advance(len(items) - len(todo))
    if not todo:
        return results

    own_pool = executor is None
    pool = ThreadPoolExecutor(max_workers=min(32, len(todo))) if own_pool else None
    feed = _Futures(pool) if pool is not None else _feed(executor)
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()  # futures, as they finish
    pending: dict[Any, int] = {}  # future -> its item, until it finished
    twins: dict[Any, list[int]] = {}  # Dask with pure=True: equal items share one future
    finished: list[Any] = []
    unwritten: list[tuple[str, str]] = []  # (checkpoint name, JSON) of finished items
    due = 0.0  # when the unwritten results must be stored
    clock = time.monotonic
    try:
        for i, fut in zip(todo, feed.submit(fn, [items[i] for i in todo])):
            if fut in pending:
                twins.setdefault(fut, []).append(i)
            else:
                pending[fut] = i
                fut.add_done_callback(done.put)
        while pending:
            try:
                finished = [done.get(timeout=max(0.0, min(_POLL, due - clock())) if unwritten else _POLL)]
            except queue.Empty:
                finished = []
            while not done.empty():
                finished.append(done.get_nowait())
            failure: tuple[int, BaseException] | None = None
            count = 0
            for fut, exc, value in feed.outcomes(finished):
                first = pending.pop(fut)
                for i in (first, *twins.pop(fut)) if twins and fut in twins else (first,):
                    if exc is not None:
                        if failure is None or i < failure[0]:
                            failure = (i, exc)
                        continue
                    if checkpoint:
                        text = codec.encode(
                            value,
                            "value",
                            context=f"ctx.map({label}): item {i}: ",
                            fix="or pass checkpoint=False",
                            pickle=pickles,
                            files=store.files,
                        )
                        if not unwritten:
                            due = clock() + _BATCH_S
                        unwritten.append((f"{prefix}{i}", text))
                    results[i] = value
                    count += 1
            if unwritten and (
                failure is not None
                or ctx.cancelled
                or not pending
                or len(unwritten) >= _BATCH_MAX
                or clock() >= due
            ):
                runner.map_checkpoints(ctx, unwritten)  # may tell the run it is no longer ours
                unwritten = []
            if failure is not None:
                i, exc = failure
                raise MapItemError(
                    f"ctx.map({label}): item {i} ({items[i]!r:.80}) failed: {type(exc).__name__}: {exc}",
                    index=i,
                    item=items[i],
                ) from exc
            ctx.advance(count)  # raises RunCancelled once cancelled
    except BaseException:
        feed.cancel(list(pending))
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        # a traceback keeping this frame alive must not pin remote tasks
        pending.clear()
        twins.clear()
        finished, fut = [], None
    return results

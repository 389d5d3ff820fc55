"""``ctx.map``: fan work out to any ``concurrent.futures`` executor, checkpointing each item.

Each finished item's result is stored as it finishes (all items that finished together in one
transaction), so a crash loses only the items in flight; a resumed attempt skips stored items. A
``dask.distributed.Client`` is accepted and used through ``client.get_executor()``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from ._capture import IN_ITEM
from .errors import MapItemError

if TYPE_CHECKING:
    from .context import Context

__all__ = ["run_map"]

T = TypeVar("T")
R = TypeVar("R")
_POLL = 0.05  # how often a waiting map looks at the cancel flag


def _as_executor(executor: Any) -> Executor:
    if isinstance(executor, Executor):
        return executor
    if hasattr(executor, "get_executor"):  # dask.distributed.Client
        # pure=False: equal items are separate calls, as with any other executor
        wrapped: Executor = executor.get_executor(pure=False)
        return wrapped
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
    store, runner = ctx._runner.store, ctx._runner
    results: dict[int, Any] = {}
    if checkpoint:
        for cp_name, value in store.checkpoints(ctx.run_id, prefix).items():
            index = int(cp_name[len(prefix) :])
            if index < len(items):
                results[index] = value
    pickles = checkpoint and ctx._pickles()
    if ctx.total is None:
        ctx.total = len(items)
    ctx.advance(len(results))
    todo = [i for i in range(len(items)) if i not in results]
    if not todo:
        return [results[i] for i in range(len(items))]

    own_pool = executor is None
    pool = ThreadPoolExecutor(max_workers=min(32, len(todo))) if own_pool else _as_executor(executor)
    threads = isinstance(pool, ThreadPoolExecutor)
    futures: dict[Future[Any], int] = {}
    try:
        for i in todo:
            if threads:  # logging and print() inside items reach the run's log
                context = contextvars.copy_context()
                context.run(IN_ITEM.set, True)  # a tqdm bar in an item leaves progress to the map
                futures[pool.submit(context.run, fn, items[i])] = i
            else:
                futures[pool.submit(fn, items[i])] = i
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=_POLL, return_when=FIRST_COMPLETED)
            batch: list[tuple[str, str]] = []
            failure: tuple[int, BaseException] | None = None
            for fut in finished:
                i = futures[fut]
                exc = fut.exception()
                if exc is not None:
                    if failure is None or i < failure[0]:
                        failure = (i, exc)
                    continue
                value = fut.result()
                if checkpoint:
                    text = codec.encode(
                        value,
                        "value",
                        context=f"ctx.map({label}): item {i}: ",
                        fix="or pass checkpoint=False",
                        pickle=pickles,
                        files=store.files,
                    )
                    batch.append((f"{prefix}{i}", text))
                results[i] = value
            if batch:
                runner.flush_run(ctx)
                store.put_checkpoints(ctx.run_id, runner.owner, batch)
            if failure is not None:
                i, exc = failure
                raise MapItemError(
                    f"ctx.map({label}): item {i} ({items[i]!r:.80}) failed: {type(exc).__name__}: {exc}",
                    index=i,
                    item=items[i],
                ) from exc
            ctx.advance(len(finished))  # raises RunCancelled once cancelled
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
        futures.clear()  # a traceback keeping this frame alive must not pin remote tasks
    return [results[i] for i in range(len(items))]

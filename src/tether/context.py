"""``ctx``: what a pipeline body uses to report phases, progress and logs, and to see a cancel.

Progress calls touch memory only; the runner's flusher persists them. A phase change, a checkpoint
and the end of a run are written at once. Every progress call raises ``RunCancelled`` once the run
is cancelled, so a body that keeps reporting progress stops within the cancel bound.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from .errors import RunCancelled
from .store import FlushItem, dumps, json_str

if TYPE_CHECKING:
    from .model import RunRecord
    from .run import Run
    from .runner import Runner

__all__ = ["Context", "current"]

T = TypeVar("T")
_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("tether_ctx", default=None)

# ctx.track() hands items out in chunks through C iterators (itertools.chain), so the per-item cost
# is a C call; the chunk size adapts so that one chunk takes ~2-20 ms, which bounds how late a
# cancel or a progress update can be.
_CHUNK_FAST = 0.002
_CHUNK_SLOW = 0.020
_CHUNK_MAX = 1 << 14
_EVENT_BURST = 512  # buffered events that wake the flusher at once


def current() -> Context | None:
    """The ctx of the run executing in this thread or task, if any."""
    return _current.get()


class Context:
    """Given to a pipeline body as its first argument."""

    def __init__(self, runner: Runner, rec: RunRecord) -> None:
        self._runner = runner
        self.run_id = rec.id
        self.key = rec.key
        self.pipeline = rec.pipeline
        self.attempt = rec.attempt
        self.params = rec.params
        self.resumed_from = rec.resumed_from
        self.done: int | float = 0
        self.total: int | float | None = None
        self.phase_name: str | None = None
        self.phases: list[str] = list(rec.phases)
        self.phases_done: list[str] = list(rec.phases_done)
        self.message: str | None = None
        self.started = time.time()
        self._cancel = False
        self._cancel_reason = "cancelled"
        self._events: list[tuple[float, str, str | None, str]] = []
        self._ev_lock = threading.Lock()
        self._flushed: tuple[Any, ...] | None = None
        self._task: Any = None  # asyncio task of an async body
        self._map_calls = 0

    def __repr__(self) -> str:
        return f"<tether ctx run={self.run_id} phase={self.phase_name!r} {self.done}/{self.total}>"

    # -- the hot path ------------------------------------------------------------------------

    def advance(self, n: int | float = 1) -> None:
        """Add ``n`` to the current phase's progress (memory only)."""
        self.done += n
        if self._cancel:
            self._raise_cancelled()

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Iterate like tqdm, counting progress in the current phase.

        Sets the phase total from ``total`` or ``len(iterable)`` when the phase has none. Items
        are fetched a few at a time (at most one chunk ahead, sized to ~2-20 ms of work).
        """
        if self._cancel:
            self._raise_cancelled()
        if total is None and self.total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if total is not None:
            self.total = total
        return chain.from_iterable(self._chunks(iter(iterable)))

    def _chunks(self, it: Iterator[T]) -> Iterator[list[T]]:
        size = 1
        clock = time.perf_counter
        while True:
            chunk: list[T] = []
            failure: BaseException | None = None
            t0 = clock()
            try:
                chunk.extend(islice(it, size))  # keeps the items fetched before an error
            except BaseException as exc:  # re-raised after the items before it were consumed
                failure = exc
            if chunk:
                yield chunk  # resumed only once the consumer has taken every item of it
                self.done += len(chunk)
                if self._cancel:
                    self._raise_cancelled()
            if failure is not None:
                raise failure
            if len(chunk) < size:
                return
            spent = clock() - t0
            if spent < _CHUNK_FAST and size < _CHUNK_MAX:
                size *= 2
            elif spent > _CHUNK_SLOW and size > 1:
                size //= 2

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked for this run."""
        return self._cancel

    def _raise_cancelled(self) -> None:
        raise RunCancelled(f"run {self.run_id} was {self._cancel_reason}")

    # -- phases and logs ---------------------------------------------------------------------

    def phase(self, name: str, total: int | float | None = None) -> None:
        """Switch to phase ``name`` (undeclared names are appended); persisted at once."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"ctx.phase() needs a non-empty phase name, got {name!r}")
        if self._cancel:
            self._raise_cancelled()
        if name != self.phase_name:
            prev = self.phase_name
            if prev is not None and prev not in self.phases_done:
                self.phases_done.append(prev)
            if name not in self.phases:
                self.phases.append(name)
            self.phase_name = name
            self.done = 0
        self.total = total
        self._emit("phase", {"name": name, "total": total})
        self._runner.flush_run(self)

    def log(self, msg: object, *args: object, level: str = "info") -> None:
        """Record a log line (``%``-style args like ``logging``); the panel shows the last ones."""
        text = str(msg) % args if args else str(msg)
        self._log(text, level)
        if self._cancel:
            self._raise_cancelled()

    def _log(self, text: str, level: str) -> None:
        self.message = text
        # the hot path of logging: the canonical JSON of {"level", "message"}, built directly
        data = '{"level":' + json_str(level) + ',"message":' + json_str(text) + "}"
        ev = (time.time(), "log", self.phase_name, data)
        with self._ev_lock:
            self._events.append(ev)
            burst = len(self._events) == _EVENT_BURST  # wake once per burst
        if burst:
            self._runner.wake()

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        ev = (time.time(), kind, self.phase_name, dumps(data))
        with self._ev_lock:
            self._events.append(ev)
            burst = len(self._events) == _EVENT_BURST  # wake once per burst
        if burst:
            self._runner.wake()

    # -- checkpoints -------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., T], *args: Any, checkpoint: bool = True,
             **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` once per run lineage and store its value.

        On a resumed attempt a completed step returns its stored value without calling ``fn``.
        A value tether cannot store raises ParamsError here, naming its type and where it is.
        """
        if self._cancel:
            self._raise_cancelled()
        if not checkpoint:
            return fn(*args, **kwargs)
        cp = "step:" + name
        found, value = self._runner.store.checkpoint(self.run_id, cp)
        if found:
            return value  # type: ignore[no-any-return]
        value = fn(*args, **kwargs)
        text = codec.encode(value, "value", context=f"step {name!r}: ",
                            fix="or pass checkpoint=False", pickle=self._pickles(),
                            files=self._runner.store.files)
        self._runner.checkpoint(self, cp, text)
        return value

    def _pickles(self) -> bool:
        """Whether this run's pipeline opted in to pickle (``serializer="pickle"``)."""
        from .pipeline import lookup

        pipe = lookup(self.pipeline)
        return pipe is not None and pipe.serializer == "pickle"

    def map(self, fn: Callable[[Any], T], items: Iterable[Any], executor: Any = None,
            checkpoint: bool = True, name: str | None = None) -> list[T]:
        """``[fn(item) for item in items]`` on an executor, in item order, counting progress.

        ``executor``: any ``concurrent.futures.Executor`` (default: a thread pool) or a
        ``dask.distributed.Client``. With ``checkpoint=True`` each item's result is stored as it
        finishes and a resumed attempt skips finished items. The first failure cancels the
        rest and raises ``tether.MapItemError`` naming the item. ``name`` identifies the map
        across attempts (default: the function's name and the call's order in the run).
        """
        from .fanout import run_map

        return run_map(self, fn, items, executor=executor, checkpoint=checkpoint, name=name)

    # -- the run -----------------------------------------------------------------------------

    @property
    def run(self) -> Run:
        from .run import Run

        return Run(self._runner.store, self.run_id)

    def _request_cancel(self, reason: str = "cancelled") -> None:
        self._cancel_reason = reason
        self._cancel = True
        task, loop = self._task, self._runner.loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)

    def _requeue(self, events: list[tuple[float, str, str | None, str]]) -> None:
        """Events a failed write took: first in line again."""
        with self._ev_lock:
            self._events[:0] = events
        self._flushed = None

    def _flush_item(self, force: bool = False) -> FlushItem | None:
        """What changed since the last flush (taking the buffered events), or None."""
        state = (self.phase_name, self.done, self.total, self.message, len(self.phases),
                 len(self.phases_done))
        with self._ev_lock:
            events, self._events = self._events, []
        if not events and not force and state == self._flushed:
            return None
        self._flushed = state
        return FlushItem(self.run_id, self.phase_name, list(self.phases), list(self.phases_done),
                         self.done, self.total, self.message, events)


_factory_installed = False


def install_log_capture() -> None:
    """Capture ``logging`` records created inside a run into that run's log.

    Done with a chained log-record factory rather than a root handler: a root handler would
    silence ``logging.lastResort`` and turn ``logging.basicConfig()`` into a no-op.
    Records follow the usual level rules (a logger at WARNING drops ``info``).
    """
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = _current.get()
        if ctx is not None:
            try:
                ctx._log(record.getMessage(), record.levelname.lower())
            except Exception:  # a bad format string must not break the caller's logging
                pass
        return record

    logging.setLogRecordFactory(factory)

"""``ctx``: what a pipeline body uses to report phases, progress and logs, and to see a cancel.

Progress calls touch memory only; the runner's flusher persists them. A phase change, a checkpoint
and the end of a run are written at once. Every progress call raises ``RunCancelled`` once the run
is cancelled, so a body that keeps reporting progress stops within the cancel bound.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from ._text import storable
from .errors import ParamsError, RunCancelled
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

# Log floods (docs/reliability.md, "Floods and sizes"). A run buffers at most LOG_BUFFER_EVENTS
# slots of events between flushes: an event takes one slot, plus one per LOG_SLOT_CHARS
# characters of its JSON, so the buffer holds at most 5,000 lines and ~5 million characters. A
# logging thread that finds the buffer full wakes the flusher and waits until it has taken the
# buffer, so a flood runs at the speed the store writes and a crash loses at most the batch being
# written plus the buffer behind it (2 x LOG_BUFFER_EVENTS lines). The wait is bounded
# (LOG_WAIT_S): a line that still finds no room (the flusher is stuck), or finds the buffer full
# once the run is cancelled, is dropped and counted; so is a line pushed out when a failed write
# puts its batch back. One ``log`` event with a ``dropped`` count (level ``warning``) records each
# such gap, in place.
LOG_BUFFER_EVENTS = 5_000
LOG_SLOT_CHARS = 1_000
_BURST_AT = _EVENT_BURST - 1  # events buffered before the one that wakes the flusher
LOG_WAIT_S = 5.0
# One log line keeps at most this many characters (in its event and in the ``message`` column);
# the rest is replaced by a marker saying how many characters were cut.
LOG_LINE_MAX = 10_000
# ``ctx.phases`` (and the ``phases`` column) lists at most this many names: the declared phases,
# then the first undeclared ones entered. A phase entered beyond the list is still named in
# ``phase``; ``ctx.phases_unlisted`` (and the phase event's ``unlisted``) counts those phases.
PHASES_MAX = 100


def _checkpoint_name(name: Any, where: str) -> str:
    """``name`` if it can name stored checkpoints: a non-empty str SQLite can store as it is (a
    lone surrogate would be replaced, and two names could then find each other's values)."""
    if type(name) is not str or not name:
        raise ParamsError(f"{where}() needs a non-empty str name, got {name!r}")
    if not storable(name):
        raise ParamsError(
            f"{where}() name {name!r} holds a lone surrogate, which cannot be stored as "
            "text; use a name of valid text (the same one on every attempt)"
        )
    return name


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
        # step checkpoints this attempt wrote: a first attempt has no others (a resumed one has
        # its lineage's copies), so its steps need not look for a stored value first
        self._steps: set[str] | None = None if rec.resumed_from is not None else set()
        self.done: int | float = 0
        self.total: int | float | None = None
        self.phase_name: str | None = None
        self.phases: list[str] = list(rec.phases)
        self.phases_done: list[str] = list(rec.phases_done)
        self._unlisted: set[str] = set()  # phases entered that the capped list leaves out
        self.message: str | None = None
        self.tries: int = rec.tries  # this try's number, from 1 (a resumed attempt goes on counting)
        self.max_tries: int = rec.max_tries
        self.timeout: float | None = rec.timeout
        self.parent_id: str | None = rec.parent_id
        self._concurrency = rec.concurrency
        # when this try passes its timeout (monotonic clock); the flusher checks it
        self._deadline: float | None = None if rec.timeout is None else time.monotonic() + rec.timeout
        self._cancel = False
        self._cancel_reason = "cancelled"
        self._cancel_kind: str | None = None  # "cancel" | "timeout" | "lost" | "shutdown"
        self._wakeup = threading.Event()  # set on a cancel: ends a wait between tries at once
        self._parked = False  # waiting for a child: its runner slot is given back meanwhile
        self._lineage: tuple[str, ...] | None = None
        self._last_error: dict[str, Any] | None = None  # of the last try that failed
        self._events: list[tuple[float, str, str | None, str]] = []
        self._ev_cap = LOG_BUFFER_EVENTS  # room while len(_events) < _ev_cap (long events
        # lower it: see LOG_SLOT_CHARS)
        self._ev_lock = threading.Lock()
        self._room = threading.Event()  # set when the flusher took the buffer (or on cancel)
        self._stalled = False  # a logging thread waited LOG_WAIT_S in vain: drop until taken
        self._dropped = 0  # lines dropped since the buffer was last taken
        # the progress last written: at first, the row as the run's start wrote it
        self._flushed: tuple[Any, ...] | None = self._state()
        self._task: Any = None  # asyncio task of an async body
        self._map_calls = 0
        self._output: Any = None  # stdout/stderr and tqdm capture of this run (tether._capture)

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
            # phases_done holds only listed names, so both lists stay within PHASES_MAX
            if prev is not None and prev not in self.phases_done and prev in self.phases:
                self.phases_done.append(prev)
            if name not in self.phases:
                if len(self.phases) < PHASES_MAX:
                    self.phases.append(name)
                else:
                    self._unlisted.add(name)
            self.phase_name = name
            self.done = 0
        self.total = total
        data: dict[str, Any] = {"name": name, "total": total}
        if self._unlisted:
            data["unlisted"] = len(self._unlisted)
        self._emit("phase", data)
        self._runner.flush_run(self)

    @property
    def phases_unlisted(self) -> int:
        """How many phases this run entered beyond the ``PHASES_MAX`` names ``phases`` lists."""
        return len(self._unlisted)

    def log(self, msg: object, *args: object, level: str = "info") -> None:
        """Record a log line (``%``-style args like ``logging``); the panel shows the last ones."""
        text = str(msg) % args if args else str(msg)
        self._log(text, level)
        if self._cancel:
            self._raise_cancelled()

    def _log(self, text: str, level: str) -> None:
        # the hot path of logging: the canonical JSON of {"level", "message"}, built directly
        data = '{"level":' + json_str(level) + ',"message":' + json_str(text) + "}"
        size = len(data)
        if size > LOG_LINE_MAX and len(text) > LOG_LINE_MAX:  # the JSON is never shorter
            text = _clip_line(text)
            data = '{"level":' + json_str(level) + ',"message":' + json_str(text) + "}"
            size = len(data)
        self.message = text
        ev = (time.time(), "log", self.phase_name, data)
        with self._ev_lock:
            events = self._events
            n = len(events)
            if n < self._ev_cap:
                events.append(ev)
                if size >= LOG_SLOT_CHARS:
                    self._ev_cap -= size // LOG_SLOT_CHARS
            else:
                n = -1
        if n == _BURST_AT:  # wake once per burst
            self._runner.wake()
        elif n < 0:
            self._wait_for_room(ev)

    def _wait_for_room(self, ev: tuple[float, str, str | None, str]) -> None:
        """The buffer is full: wait (bounded) until the flusher takes it, else drop ``ev``.

        Holds no lock while waiting. Never waits on the flusher's own thread, once the run is
        cancelled (a cancel wakes the wait), or after a wait timed out until the buffer is taken.
        """
        runner = self._runner
        deadline = time.monotonic() + LOG_WAIT_S
        while True:
            with self._ev_lock:
                if len(self._events) < self._ev_cap:
                    self._events.append(ev)
                    self._ev_cap -= len(ev[3]) // LOG_SLOT_CHARS
                    return
                left = deadline - time.monotonic()
                if (
                    self._cancel
                    or self._stalled
                    or runner._forked
                    or threading.current_thread() is runner._flusher
                ):
                    self._dropped += 1
                    return
                if left <= 0:
                    self._stalled = True
                    self._dropped += 1
                    return
                self._room.clear()
            runner.wake()
            self._room.wait(left)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self._emit_text(kind, dumps(data))

    def _emit_text(self, kind: str, text: str) -> None:
        """An event whose data is ``text`` (JSON, as ``dumps`` writes it)."""
        # phase events are never dropped nor wait: each is followed by a write of the run at once
        ev = (time.time(), kind, self.phase_name, text)
        with self._ev_lock:
            self._events.append(ev)
            self._ev_cap -= len(text) // LOG_SLOT_CHARS
            burst = len(self._events) == _EVENT_BURST  # wake once per burst
        if burst:
            self._runner.wake()

    # -- checkpoints -------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., T], *args: Any, checkpoint: bool = True, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` once per run lineage and store its value.

        On a resumed attempt a completed step returns its stored value without calling ``fn``.
        A value tether cannot store raises ParamsError here, naming its type and where it is.
        """
        if self._cancel:
            self._raise_cancelled()
        if not checkpoint:
            return fn(*args, **kwargs)
        cp = "step:" + _checkpoint_name(name, "ctx.step")
        steps = self._steps
        if steps is None or cp in steps:
            found, value = self._runner.store.checkpoint(self.run_id, cp)
            if found:
                return value  # type: ignore[no-any-return]
        value = fn(*args, **kwargs)
        text = codec.encode(
            value,
            "value",
            context=f"step {name!r}: ",
            fix="or pass checkpoint=False",
            pickle=self._pickles(),
            files=self._runner.store.files,
        )
        self._runner.checkpoint(self, cp, text)
        if steps is not None:
            steps.add(cp)
        return value

    def _pickles(self) -> bool:
        """Whether this run's pipeline opted in to pickle (``serializer="pickle"``)."""
        pipe = self._runner.workspace.lookup(self.pipeline)
        return pipe is not None and pipe.serializer == "pickle"

    def map(
        self,
        fn: Callable[[Any], T],
        items: Iterable[Any],
        executor: Any = None,
        checkpoint: bool = True,
        name: str | None = None,
    ) -> list[T]:
        """``[fn(item) for item in items]`` on an executor, in item order, counting progress.

        ``executor``: any ``concurrent.futures.Executor`` (default: a thread pool) or a
        ``dask.distributed.Client``. With ``checkpoint=True`` each item's result is stored soon
        after it finishes (in batches, at most 0.1 s later) and a resumed attempt skips stored
        items. The first failure cancels the
        rest and raises ``tether.MapItemError`` naming the item. ``name`` identifies the map
        across attempts (default: the function's name and the call's order in the run).
        """
        # through the runner: fanout sits above this module (it reaches output capture)
        if name is not None:
            _checkpoint_name(name, "ctx.map")
        return self._runner.map(self, fn, items, executor=executor, checkpoint=checkpoint, name=name)

    # -- the run -----------------------------------------------------------------------------

    @property
    def run(self) -> Run:
        return self._runner.workspace.run(self._runner.store, self.run_id)

    def _request_cancel(self, reason: str = "cancelled", kind: str = "cancel") -> None:
        """Stop the body at its next ctx call. A timeout gives way to any other kind of stop
        (those end the run; a timeout may be retried), never the other way round."""
        if self._cancel and (kind == "timeout" or self._cancel_kind != "timeout"):
            return
        self._cancel_reason = reason
        self._cancel_kind = kind
        self._cancel = True
        self._room.set()  # a logging thread waiting for room stops waiting
        self._wakeup.set()
        task, loop = self._task, self._runner.loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)

    def _clear_timeout(self) -> None:
        """The stop of a try that passed its timeout is over (a cancel asked since then stays;
        one from the store is delivered again at the next flush anyway)."""
        if self._cancel_kind == "timeout":
            self._cancel = False
            self._cancel_kind = None
            self._wakeup.clear()

    def _new_try(self, tries: int) -> None:
        """State of the next try: the checkpoints stay (they are the run's), progress restarts."""
        self.tries = tries
        self._task = None
        self._map_calls = 0
        self.done, self.total = 0, None
        self._deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def lineage(self) -> tuple[str, ...]:
        """This run and the attempts it resumed, newest first (children of any of them are
        this run's to resume)."""
        if self._lineage is None:
            ids = [self.run_id]
            prev = self.resumed_from
            store = self._runner.store
            while prev is not None and len(ids) < 1000:
                ids.append(prev)
                prev = store.get(prev).resumed_from
            self._lineage = tuple(ids)
        return self._lineage

    def _requeue(self, events: list[tuple[float, str, str | None, str]]) -> None:
        """Events a failed write took: first in line again.

        The buffer stays within its caps: log lines beyond them (the newest) are dropped and
        counted in one drop note placed where they were; other events are always kept."""
        with self._ev_lock:
            merged = events + self._events
            cap = LOG_BUFFER_EVENTS - sum(len(ev[3]) // LOG_SLOT_CHARS for ev in merged)
            if len(merged) > cap:
                merged, cap = self._trim(merged)
            self._events, self._ev_cap = merged, cap
        self._flushed = None

    def _trim(
        self, events: list[tuple[float, str, str | None, str]]
    ) -> tuple[list[tuple[float, str, str | None, str]], int]:
        """``events`` within the buffer's slots, and its ``_ev_cap`` (``_ev_lock`` held).

        The newest log lines go; phase events and earlier drop notes stay. The lines dropped
        are counted in a note where the first of them was (or in the note just before it)."""
        kept: list[tuple[float, str, str | None, str]] = []
        cap = LOG_BUFFER_EVENTS
        dropped = 0
        gap_at, gap_ts = -1, 0.0
        for ev in events:
            if ev[1] == "log" and len(kept) >= cap and not _is_note(ev):
                if gap_at < 0:
                    gap_at, gap_ts = len(kept), ev[0]
                dropped += 1
            else:
                kept.append(ev)
                cap -= len(ev[3]) // LOG_SLOT_CHARS
        if dropped:
            before = kept[gap_at - 1] if gap_at > 0 else None
            if before is not None and _is_note(before):  # the same gap: one note
                kept[gap_at - 1] = self._drop_note(json.loads(before[3])["dropped"] + dropped, before[0])
            else:
                kept.insert(gap_at, self._drop_note(dropped, gap_ts))
        return kept, cap

    def _drop_note(self, n: int, ts: float) -> tuple[float, str, str | None, str]:
        data = dumps(
            {
                "dropped": n,
                "level": "warning",
                "message": f"{n:,} log lines dropped: the store did not take them in time "
                f"(a run buffers at most {LOG_BUFFER_EVENTS:,} lines)",
            }
        )
        return (ts, "log", self.phase_name, data)

    def _state(self) -> tuple[Any, ...]:
        """What a flush compares with the last one written (events aside)."""
        return (
            self.phase_name,
            self.done,
            self.total,
            self.message,
            len(self.phases),
            len(self.phases_done),
        )

    def _flush_item(self, force: bool = False, state: tuple[Any, ...] | None = None) -> FlushItem | None:
        """What changed since the last flush (taking the buffered events), or None. ``state``:
        ``_state()`` taken by the caller just now."""
        if state is None:
            state = self._state()
        with self._ev_lock:
            events, self._events, self._ev_cap = self._events, [], LOG_BUFFER_EVENTS
            dropped, self._dropped, self._stalled = self._dropped, 0, False
            if dropped:  # they came after the lines buffered until now
                events.append(self._drop_note(dropped, time.time()))
        self._room.set()
        if not events and not force and state == self._flushed:
            return None
        self._flushed = state
        return FlushItem(
            self.run_id,
            self.phase_name,
            list(self.phases),
            list(self.phases_done),
            self.done,
            self.total,
            self.message,
            events,
        )


def _is_note(ev: tuple[float, str, str | None, str]) -> bool:
    """A drop note (a log line's JSON starts with ``{"level":``)."""
    return ev[1] == "log" and ev[3].startswith('{"dropped":')


def _clip_line(text: str) -> str:
    cut = len(text) - LOG_LINE_MAX
    return f"{text[:LOG_LINE_MAX]}… [{cut:,} characters cut]"


# per process, not per workspace: the log-record factory it guards is the process's own
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

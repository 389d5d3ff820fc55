"""One reader per run, shared by every watcher of it.

A :class:`Feed` is an asyncio task that reads its run from the store every ``interval`` seconds
(one record read, plus one events read when the run's ``last_seq`` moved) and keeps the latest
state and a ring of the newest events. Watchers never read the store themselves, except a watcher
that comes back from further behind than the ring reaches: it reads the missing events once. So
50 browsers on one busy run cost about the reads of one.

A feed ends once its run has ended and every event was read; it is dropped ``grace`` seconds after
its last watcher left (a page reloading, or polling, finds it still there). Store reads run on a
small thread pool: SQLite calls never block the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import RunNotFound
from ..store import Store
from ._state import RunFeedReader, event_json, list_runs

__all__ = ["Feed", "Hub", "Message"]

T = TypeVar("T")

POLL_INTERVAL = 0.1  # seconds between reads of a watched run
GRACE = 10.0  # seconds a feed outlives its last watcher
RING = 4096  # newest events kept in memory per run
CHUNK = 500  # events per message at most
LIST_TTL = 0.5  # seconds a run list is reused
READ_THREADS = 4

# (id, message): the SSE id (the run's event seq the message brings the watcher up to) and
# {"since": seq or None, "seq": id, "events": [...], "state": {...} or None}.
# since None: a fresh start (the state's log tail replaces what the page shows).
Message = tuple[int, dict[str, Any]]


def dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"), default=str)


class Feed:
    """The shared reader of one run (see the module docstring)."""

    def __init__(self, hub: Hub, run_id: str) -> None:
        self.hub, self.run_id = hub, run_id
        self.state: dict[str, Any] | None = None
        self.seq = 0  # the state and the ring are up to this event
        self.ring: deque[dict[str, Any]] = deque(maxlen=RING)  # events (ring_from, seq], contiguous
        self.ring_from = 0
        self.ended = False
        self.error: Exception | None = None  # RunNotFound, or a store error that ended the feed
        self.watchers = 0
        self.last_seen = time.monotonic()
        self.publishes = 0
        self._tick = asyncio.Event()  # set (and replaced) at each publish
        self._task: asyncio.Task[None] | None = None
        # watchers at the same place get the same message, encoded once (until the next publish)
        self._messages: dict[tuple[int | None, int, int], dict[str, Any]] = {}
        self._texts: dict[int, tuple[dict[str, Any], str]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"tether-feed-{self.run_id}")

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def stale(self, now: float) -> bool:
        return self.watchers == 0 and now - self.last_seen > self.hub.grace

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._publish()

    # -- the reader task -------------------------------------------------------------------------

    async def _loop(self) -> None:
        hub = self.hub
        try:
            reader = await hub.call(RunFeedReader, hub.store, self.run_id, RING)
            while not hub.closed:
                before = reader.reads
                state, events, jumped = await hub.call(reader.read)
                hub.reads += reader.reads - before
                if jumped:
                    self.ring.clear()
                    self.ring_from = reader.seq
                else:
                    self.ring.extend(event_json(e) for e in events)
                    if len(self.ring) == RING:
                        self.ring_from = self.ring[0]["seq"] - 1
                self.seq = reader.seq
                if state is not None:
                    self.state = state
                ended = bool(reader.state and reader.state.get("terminal"))
                if state is not None or events or jumped or ended:
                    self.ended = ended
                    self._publish()
                if ended or (self.stale(time.monotonic()) and not hub.closed):
                    return
                await asyncio.sleep(hub.interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RunNotFound, an unreadable store: watchers are told
            self.error = exc
            hub.errors.append(f"{self.run_id}: {type(exc).__name__}: {exc}")
            del hub.errors[:-20]
        finally:
            self._publish()

    def _publish(self) -> None:
        self.publishes += 1
        self._messages, self._texts = {}, {}
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # -- watchers ----------------------------------------------------------------------------

    def _message(
        self, since: int | None, seq: int, events: list[dict[str, Any]], state: dict[str, Any] | None
    ) -> dict[str, Any]:
        key = (since, seq, 0 if state is None else id(state))
        msg = self._messages.get(key)
        if msg is None or msg["state"] is not state:
            msg = self._messages[key] = {"since": since, "seq": seq, "events": events, "state": state}
        return msg

    def encode(self, msg: dict[str, Any]) -> str:
        """``msg`` as JSON, encoded once for all the watchers that get it."""
        hit = self._texts.get(id(msg))
        if hit is not None and hit[0] is msg:  # the entry holds msg: its id is not reused meanwhile
            return hit[1]
        text = dumps(msg)
        self._texts[id(msg)] = (msg, text)
        return text

    async def ready(self) -> None:
        """Wait for the first state (or the error that ended the feed)."""
        while self.state is None and self.error is None and not self.done:
            await self._tick.wait()
        if self.state is None:
            raise self.error or RunNotFound(f"run {self.run_id!r} could not be read")

    async def events(self, after: int, upto: int) -> AsyncIterator[list[dict[str, Any]]]:
        """Events ``after < seq <= upto`` in chunks: from the ring, or read from the store for a
        watcher further behind than the ring reaches."""
        while after < upto:
            if after >= self.ring_from:
                chunk = [
                    e
                    for e in itertools.islice(
                        self.ring, after - self.ring_from, after - self.ring_from + CHUNK
                    )
                    if e["seq"] <= upto
                ]
            else:
                top = min(upto, self.ring_from)
                rows = await self.hub.call(self.hub.store.events, self.run_id, after, CHUNK)
                self.hub.reads += 1
                chunk = [event_json(e) for e in rows if e.seq <= top]
            if not chunk:
                return  # nothing where events should be: the caller sends the state
            after = chunk[-1]["seq"]
            yield chunk

    async def watch(self, after: int | None, keepalive: float | None = None) -> AsyncIterator[Message | None]:
        """Messages for one watcher that has seen events up to ``after`` (None: nothing yet),
        until the run has ended and the watcher has had its final state. None: nothing happened
        for ``keepalive`` seconds."""
        self.watchers += 1
        try:
            await self.ready()
            sent: dict[str, Any] | None = None
            while True:
                tick, state, seq = self._tick, self.state, self.seq
                assert state is not None
                if after is None or after > seq:  # fresh, or an id from another database
                    yield seq, self._message(None, seq, [], state)
                    after, sent = seq, state
                else:
                    async for chunk in self.events(after, seq):
                        last = chunk[-1]["seq"]
                        final = last >= seq
                        yield last, self._message(after, last, chunk, state if final else None)
                        after = last
                        if final:
                            sent = state
                    if sent is not state:
                        yield after, self._message(after, after, [], state)
                        sent = state
                if (self.ended and after >= self.seq) or self.error is not None or self.hub.closed:
                    return
                try:  # already set if a publish came while this watcher was sending
                    await asyncio.wait_for(tick.wait(), keepalive)
                except asyncio.TimeoutError:
                    yield None
        finally:
            self.watchers -= 1
            self.last_seen = time.monotonic()

    async def poll(self, after: int | None) -> dict[str, Any]:
        """One message for a polling page: the state, and the events after ``after`` (at most
        CHUNK of them; then ``state`` is None and ``seq`` says how far they go)."""
        self.last_seen = time.monotonic()
        self.watchers += 1
        try:
            await self.ready()
        finally:
            self.watchers -= 1
        state, seq = self.state, self.seq
        if after is None or after > seq:
            return {"since": None, "seq": seq, "events": [], "state": state}
        events: list[dict[str, Any]] = []
        async for chunk in self.events(after, seq):
            events = chunk
            break
        last = events[-1]["seq"] if events else after
        if not events or last >= seq:
            return {"since": after, "seq": seq, "events": events, "state": state}
        return {"since": after, "seq": last, "events": events, "state": None}


class Hub:
    """Feeds by run id, a cached run list, and the thread pool their store reads run on."""

    def __init__(self, store: Store, interval: float = POLL_INTERVAL, grace: float = GRACE) -> None:
        self.store = store
        self.interval, self.grace = interval, grace
        self.feeds: dict[str, Feed] = {}
        self.reads = 0  # store reads made (the benchmark's measure)
        self.errors: list[str] = []
        self.closed = False
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="tether-serve-read")
        self._lists: dict[tuple[Any, ...], tuple[float, list[dict[str, Any]]]] = {}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def feed(self, run_id: str) -> Feed:
        now = time.monotonic()
        for rid, f in list(self.feeds.items()):
            if f.stale(now) and (f.done or f.error is not None):
                del self.feeds[rid]
        feed = self.feeds.get(run_id)
        if feed is None or feed.error is not None or (feed.done and not feed.ended):
            feed = self.feeds[run_id] = Feed(self, run_id)
            feed.start()
        feed.last_seen = now
        return feed

    def forget(self, run_id: str) -> None:
        """Drop the feed of a run whose shown state an action made stale (its newer attempt)."""
        feed = self.feeds.pop(run_id, None)
        if feed is not None and feed.watchers == 0:
            feed.stop()

    async def runs(self, limit: int, status: str | None, pipeline: str | None) -> list[dict[str, Any]]:
        key = (limit, status, pipeline)
        hit = self._lists.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < LIST_TTL:
            return hit[1]
        rows = await self.call(list_runs, self.store, limit, status, pipeline)
        self.reads += 1
        if len(self._lists) > 64:
            self._lists.clear()
        self._lists[key] = (now, rows)
        return rows

    def stats(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "feeds": len(self.feeds),
            "watchers": sum(f.watchers for f in self.feeds.values()),
            "errors": list(self.errors),
        }

    def close(self) -> None:
        self.closed = True
        for feed in self.feeds.values():
            feed.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

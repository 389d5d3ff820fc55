"""One daemon thread per workspace (``workspace.state(Poller)``) that keeps every open panel and
dashboard current.

Targets are refreshed by calling their ``_feed_refresh()``, which returns False once there is
nothing left to follow (the run ended). Two ways in:

- **poll** (runs another process owns, dashboards): refreshed every ``interval`` seconds;
- **stream** (runs this process executes): refreshed when ``poke()``d by the runner's flush
  notifications, at most once per ``min_gap`` seconds per target (coalescing; a poke that arrives
  inside the gap is kept, so the last state is always sent), plus a slow safety poll.

The thread starts with the first target and exits when none is left. It never prints: errors of
targets are kept in ``errors`` and shown by the target itself.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Poller"]

POLL_INTERVAL = 1.0  # seconds between reads of a run another process owns
MIN_GAP = 0.1  # at most ~10 updates a second per target
SAFETY_FACTOR = 5  # a streamed target is also polled every SAFETY_FACTOR * interval


class Target(Protocol):
    def _feed_refresh(self) -> bool: ...


@dataclass(eq=False)
class _Entry:
    target: Target
    poll: bool
    dirty: bool = False
    last: float = float("-inf")
    next_poll: float = 0.0
    refreshes: int = field(default=0)


class Poller:
    """The shared refresher. ``interval``: poll period; ``min_gap``: per-target update spacing."""

    def __init__(self, interval: float = POLL_INTERVAL, min_gap: float = MIN_GAP) -> None:
        self.interval = interval
        self.min_gap = min_gap
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._entries: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"<tether.widget.Poller interval={self.interval} targets={len(self._entries)} alive={self.alive}>"
        )

    @property
    def alive(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def watching(self, target: Target) -> str | None:
        """``"poll"``, ``"stream"`` or None."""
        entry = self._entries.get(id(target))
        if entry is None or entry.target is not target:
            return None
        return "poll" if entry.poll else "stream"

    def watch(self, target: Target, *, poll: bool) -> None:
        """Follow ``target`` (poll=True: every interval; poll=False: when poked)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(id(target))
            if entry is None or entry.target is not target:
                entry = self._entries[id(target)] = _Entry(target, poll)
            entry.poll = poll
            entry.next_poll = now + (self.interval if poll else self.interval * SAFETY_FACTOR)
            self._ensure_thread()
        self._wake.set()

    def unwatch(self, target: Target) -> None:
        with self._lock:
            entry = self._entries.get(id(target))
            if entry is not None and entry.target is target:
                del self._entries[id(target)]
        self._wake.set()

    def poke(self, target: Target) -> None:
        """Something changed for ``target``: refresh it as soon as its gap allows. Thread-safe."""
        entry = self._entries.get(id(target))
        if entry is not None and entry.target is target:
            entry.dirty = True
            self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Forget every target and join the thread."""
        with self._lock:
            self._entries.clear()
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._stopping = False

    # -- the thread ----------------------------------------------------------------------------

    def _ensure_thread(self) -> None:  # called with the lock held
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="tether-panel-poller", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            due: list[_Entry] = []
            wait = None
            with self._lock:
                if self._stopping or not self._entries:
                    self._thread = None
                    return
                for entry in self._entries.values():
                    ready_at = entry.last + self.min_gap
                    if (entry.dirty and now >= ready_at) or now >= entry.next_poll:
                        entry.dirty = False
                        entry.last = now
                        gap = self.interval if entry.poll else self.interval * SAFETY_FACTOR
                        entry.next_poll = now + gap
                        due.append(entry)
                        continue
                    nxt = min(entry.next_poll, ready_at) if entry.dirty else entry.next_poll
                    wait = nxt - now if wait is None else min(wait, nxt - now)
            for entry in due:
                keep = self._refresh(entry)
                if not keep:
                    with self._lock:
                        if self._entries.get(id(entry.target)) is entry:
                            del self._entries[id(entry.target)]
            if due:
                continue  # re-plan at once: refreshing took time, pokes may have arrived
            self._wake.wait(None if wait is None else max(0.0, wait))

    def _refresh(self, entry: _Entry) -> bool:
        entry.refreshes += 1
        try:
            return bool(entry.target._feed_refresh())
        except Exception:
            self.errors.append(traceback.format_exc())
            del self.errors[:-20]
            return True

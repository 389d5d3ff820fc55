"""Done callbacks: each called once, and one thread per store polling runs other processes
execute until they end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .context import _current
from .store import Store

if TYPE_CHECKING:
    from .run import Run


_log = logging.getLogger("tether")


class _Once:
    """One done callback: called at most once, its exceptions logged."""

    __slots__ = ("called", "fn", "lock", "run")

    def __init__(self, run: Run, fn: Callable[[Run], Any]) -> None:
        self.run, self.fn = run, fn
        self.lock = threading.Lock()
        self.called = False

    def fire(self) -> None:
        with self.lock:
            if self.called:
                return
            self.called = True
        token = _current.set(None)  # not part of the run's log, whichever thread this is
        try:
            self.fn(self.run)
        except Exception:
            _log.exception("done callback %r of run %s raised", self.fn, self.run.id)
        finally:
            _current.reset(token)


class DoneWatcher:
    """One thread per store that polls runs other processes execute, for their callbacks."""

    POLL_S = 0.2

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.watched: list[tuple[Run, _Once]] = []
        self.thread: threading.Thread | None = None

    def add(self, run: Run, once: _Once) -> None:
        with self.lock:
            self.watched.append((run, once))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, daemon=True, name="tether-callbacks")
                self.thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.POLL_S)
            with self.lock:
                watched = list(self.watched)
            ended = []
            for run, once in watched:
                try:
                    if run.snapshot().status.terminal:  # an orphan is marked on the way
                        ended.append((run, once))
                except Exception:  # the store went away: nothing will end any more
                    ended.append((run, once))
            with self.lock:
                self.watched = [w for w in self.watched if w not in ended]
                last = not self.watched
                if last:  # the next add() starts a new thread
                    self.thread = None
            for _run, once in ended:
                once.fire()
            if last:
                self.store.release_conn()
                return

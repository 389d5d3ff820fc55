"""The state every part of a Runner shares, and the small steps they all take."""

from __future__ import annotations

import queue
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import owner
from ..context import Context
from ..errors import StoreError
from ..model import RunRecord, error_of
from ..store import Store

if TYPE_CHECKING:
    import asyncio

    from ..pipeline import Pipeline
    from ..workspace import Workspace
    from ._ends import _End

Listener = Callable[[str], None]
_KEEP_ENDED = 1000  # ended runs whose done-event is kept
_RETRY_FIRST_S = 0.25  # a failed claim or end write is tried again after this, doubling...
_RETRY_MAX_S = 5.0  # ...up to this, until it lands or the process exits
_IDLE_S = 30.0  # a run thread with no body to execute ends after this long
_KEEP_RESULTS = 256  # results of runs that succeeded here kept for result() (the newest)...
_RESULT_MAX = 16_384  # ...when their stored text is at most this long (characters)


class RunnerState:
    """What a Runner holds; its parts (claiming, executing, ending, flushing) are mixins over it."""

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
        self._threads: set[threading.Thread] = set()  # run threads of sync bodies, busy or idle
        # bodies handed to idle run threads (None: end)
        self._jobs: queue.SimpleQueue[tuple[Context, Pipeline] | None] = queue.SimpleQueue()
        self._idle = 0  # idle run threads no body was handed to yet
        self._queue: deque[RunRecord] = deque()
        # claims refused by their pipeline's concurrency=: pending, in line, polled for room
        self._waiting: dict[str, RunRecord] = {}
        self._done: dict[str, threading.Event] = {}
        self._ended_ids: deque[str] = deque()
        # the stored result text of runs that succeeded here lately: result() decodes it without
        # reading the run's row (the same text as the store's, committed before it is put here)
        self._results: dict[str, str | None] = {}
        self._result_ids: deque[str] = deque()
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

    if TYPE_CHECKING:  # the steps one part asks of another

        def submit(self, rec: RunRecord) -> None: ...
        def _pump(self) -> None: ...
        def _pump_waiting(self) -> None: ...
        def _ensure_loop(self) -> asyncio.AbstractEventLoop: ...
        def _check_timeouts(self, ctxs: list[Context]) -> None: ...
        def _retry_ends(self) -> None: ...
        def _finish(
            self, ctx: Context, status: Any, result_json: str | None, error: dict[str, Any] | None
        ) -> None: ...
        def _succeed(self, ctx: Context, result: Any) -> None: ...
        def _end(self, end: _End) -> None: ...

    def _notify(self, run_id: str) -> None:
        for fn in list(self._listeners.get(run_id, ())):
            try:
                fn(run_id)
            except Exception:
                self._record_error("listener")

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

    def _keep_result(self, run_id: str, result_json: str | None) -> None:
        if result_json is not None and len(result_json) > _RESULT_MAX:
            return
        if result_json is not None:
            result_json = str(result_json)  # as read back: plain text (codec.Encoded is a str subclass)
        with self._lock:
            self._results[run_id] = result_json
            self._result_ids.append(run_id)
            while len(self._result_ids) > _KEEP_RESULTS:
                self._results.pop(self._result_ids.popleft(), None)

    def stored_result(self, run_id: str) -> tuple[bool, str | None]:
        """(True, its stored result text) for a run that succeeded in this process lately, its
        end committed; (False, None) for any other run (read it from the store)."""
        try:
            return True, self._results[run_id]
        except KeyError:
            return False, None

    def _record_error(self, where: str) -> None:
        self.errors.append(f"{where}: {traceback.format_exc()}")
        del self.errors[:-50]

    def cancel_local(self, run_id: str) -> bool:
        """Set the cancel flag of a run executing here; True if it was."""
        ctx = self._live.get(run_id)
        if ctx is None:
            return False
        ctx._request_cancel("cancelled")
        return True


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and exc.transient


def _error(exc: BaseException) -> dict[str, Any]:
    return error_of(exc, traceback.format_exception(type(exc), exc, exc.__traceback__))

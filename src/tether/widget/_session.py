"""Front-end sessions: a Jupyter kernel serves one; ``marimo run`` serves several browser
sessions from one process, and a widget model lives in one session's comms."""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .panel import RunPanel

__all__ = ["Panels", "PerSession", "session"]

T = TypeVar("T")


class PerSession(Generic[T]):
    """One ``make()`` per front-end session (see ``session()``), dropped with its session."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._kernel = make()  # a Jupyter kernel: one session
        self._sessions: dict[int, T] = {}  # id(marimo runtime context) -> its own

    def of(self, session: object | None) -> T:
        if session is None:
            return self._kernel
        with self._lock:
            mine = self._sessions.get(id(session))
            if mine is None:
                mine = self._sessions[id(session)] = self._make()
                try:  # a closed session's go with it (and its id may be reused)
                    weakref.finalize(session, self._sessions.pop, id(session), None)
                except TypeError:  # not weakly referenceable: kept for the process's life
                    pass
            return mine

    def values(self) -> list[T]:
        with self._lock:
            return [self._kernel, *self._sessions.values()]


class Panels:
    """A workspace's panels (``workspace.state(Panels)``): per front-end session, (store path,
    run id) -> the panel showing that run, so re-executing a cell rebinds to the same widget.

    Per session, not per process: a widget model lives in one session's comms. Under ``marimo
    run`` several browser sessions share one process, and a widget of another session is
    "Model not found" there; each session gets its own widget of the same run."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._maps: PerSession[dict[tuple[str, str], RunPanel]] = PerSession(dict)

    def of(self, session: object | None) -> dict[tuple[str, str], RunPanel]:
        """The panels of ``session`` (see ``session()``), by (store path, run id)."""
        return self._maps.of(session)

    def every(self) -> list[tuple[tuple[str, str], RunPanel]]:
        with self.lock:
            return [item for m in self._maps.values() for item in m.items()]


def session() -> object | None:
    """The front-end session being served: marimo's runtime context of this thread (one per
    browser session in ``marimo run``, one per notebook in ``marimo edit``), else None (a Jupyter
    kernel serves one session)."""
    marimo_context = sys.modules.get("marimo._runtime.context")  # only once marimo is in use
    if marimo_context is None:
        return None
    try:
        return marimo_context.safe_get_context()  # type: ignore[no-any-return]
    except Exception:  # another marimo's internals: behave as one session
        return None

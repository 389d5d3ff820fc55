"""Kernel interrupts held back across tether's critical sections.

A kernel interrupt is SIGINT, turned into ``KeyboardInterrupt`` by Python's handler, and it can
land at any bytecode of the main thread: between ``BEGIN`` and ``COMMIT``, between committing a
new run and handing it to the runner, between counting a runner slot and starting the thread that
uses it. Each of those leaves something behind (an open write transaction that locks every other
process out, a pending run nobody will start, a slot used by nothing). Inside ``critical()`` the
main thread's Python-level handlers for SIGINT, SIGTERM and SIGHUP only record the signal; it is
delivered, by calling the handler that was in place, when the section ends or at a
``safe_point()`` inside it (a place where nothing is held, e.g. between two tries to get the
write lock), so the interrupt still lands promptly, just never halfway through.

A section that has taken something before such a wait (a runner slot counted for a claim that then
waits for another process's write lock) is ``holding(give_back)``: if an interrupt delivered
inside it raises, ``give_back()`` runs as the exception leaves the section, after everything
inside has unwound (the store's locks released), so the claim that never happened leaves nothing
taken. Deferring to the end of the section instead would make the interrupt wait for the other
process's lock (up to the busy timeout, 30 s).

Signals reach only the main thread, so other threads pay nothing. The raw ``_signal`` functions
are used because ``signal.signal`` converts to enums on every call (10x the cost).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

try:
    import _signal as _sig
except ImportError:  # pragma: no cover - not CPython
    import signal as _sig

__all__ = ["critical", "holding", "in_main_thread", "safe_point"]

_SIGNALS = tuple(
    s for s in (getattr(_sig, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)
_SIGINT = getattr(_sig, "SIGINT", None)
_MAIN = threading.main_thread().ident

# per process, not per workspace: signal handlers (and the signals they hold back) are the
# process's own
_depth = 0
_saved: dict[int, Callable[[int, FrameType | None], Any]] = {}
_pending: list[tuple[int, FrameType | None]] = []
_holding: list[_Holding] = []  # open holding() sections of the main thread, innermost last


def in_main_thread() -> bool:
    return threading.get_ident() == _MAIN


def _record(signum: int, frame: FrameType | None) -> None:
    _pending.append((signum, frame))


def _deliver() -> None:
    """Call the saved handler of each recorded signal, in order.

    One that raises does not keep the others from their handlers: they run as its exception
    leaves (Python too runs the rest at its next check), one that raises in turn replacing it, so
    a SIGTERM's handler still runs after a Ctrl-C's KeyboardInterrupt; more Ctrl-Cs add nothing
    to that. Taken one at a time, not copied and then cleared: a signal recorded in between (a
    trace function or a finalizer runs Python code there) would be lost."""
    if not _pending:
        return
    handlers = dict(_saved)
    while _pending:
        signum, frame = _pending.pop(0)
        handler = handlers.get(signum) or _sig.getsignal(signum)
        if not callable(handler) or handler is _record:
            continue
        try:
            handler(signum, frame)
        except BaseException as exc:
            for section in _holding:  # each gives back what it holds once this exception leaves it
                section.raised = exc
            if isinstance(exc, KeyboardInterrupt):
                _forget_ctrl_c()
            _deliver()
            raise


def _forget_ctrl_c() -> None:
    """A KeyboardInterrupt is already on its way out: the Ctrl-Cs recorded add nothing to it."""
    _pending[:] = [p for p in _pending if p[0] != _SIGINT]


def _settle(leaving: BaseException | None) -> None:
    """The outermost section has ended (``leaving``: the exception that leaves it) and the
    handlers are back: deliver what it recorded. Nothing stays recorded for a later section."""
    if isinstance(leaving, KeyboardInterrupt):
        _forget_ctrl_c()
    _deliver()


def safe_point() -> None:
    """Inside a critical section, at a place where nothing is held: deliver what was recorded."""
    if _pending and threading.get_ident() == _MAIN:
        _deliver()


def _restore() -> None:
    """Put the saved handlers back, every one of them: a signal that arrives as one comes back
    runs that handler at once, and may raise there; the others must not stay ``_record`` (their
    signals would be recorded, and lost, outside every section)."""
    try:
        for signum, handler in list(_saved.items()):
            if _sig.getsignal(signum) is _record:
                _sig.signal(signum, handler)
            del _saved[signum]  # only once it is back
    finally:
        if _saved:
            _restore()


class _Critical:
    """``with critical():`` defers the main thread's interrupts to the end of the block."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        if threading.get_ident() != _MAIN:
            return
        if _depth == 0:
            try:
                for signum in _SIGNALS:
                    handler = _sig.getsignal(signum)
                    if callable(handler) and handler is not _record:
                        _saved[signum] = handler
                        _sig.signal(signum, _record)
            except BaseException as exc:  # an interrupt while swapping: nothing has started yet
                _restore()
                _settle(exc)
                raise
        _depth += 1

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _depth
        if threading.get_ident() != _MAIN:
            return
        _depth -= 1
        if _depth:
            return
        try:
            _restore()
        except BaseException as exc:  # a signal that came as its handler was put back raised there
            _settle(exc)
            raise
        if _pending:
            _settle(ev)


_CRITICAL = _Critical()


def critical() -> _Critical:
    return _CRITICAL


class _Holding:
    """``with holding(give_back):`` a critical section whose ``give_back`` runs if an interrupt
    delivered inside it raises (see the module's docstring)."""

    __slots__ = ("give_back", "main", "raised")

    def __init__(self, give_back: Callable[[], object]) -> None:
        self.give_back = give_back
        self.raised: BaseException | None = None  # what a delivery inside raised
        self.main = False

    def __enter__(self) -> None:
        if threading.get_ident() != _MAIN:  # signals never reach other threads: nothing to do
            return
        _CRITICAL.__enter__()
        self.main = True
        _holding.append(self)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.main:
            return
        _holding.remove(self)
        raised, self.raised = self.raised, None
        try:
            if ev is not None and ev is raised:  # not some later error that replaced it
                self.give_back()
        finally:
            _CRITICAL.__exit__(et, ev, tb)


def holding(give_back: Callable[[], object]) -> _Holding:
    return _Holding(give_back)


def _after_fork() -> None:
    """A fork from inside a critical section: the child's main thread starts with none open."""
    global _depth, _MAIN
    _MAIN = threading.main_thread().ident
    _depth = 0
    _restore()
    _pending.clear()
    _holding.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

"""Typed errors raised by tether. Every message says what was wrong and how to fix it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Run

__all__ = [
    "KeyConflict",
    "MapItemError",
    "ParamsError",
    "PipelineError",
    "PipelineNotFound",
    "RunActive",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunInterrupted",
    "RunNotFound",
    "StoreError",
    "TetherError",
]


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""


class ParamsError(TetherError, TypeError):
    """A parameter is not JSON, or a result, step or map-item value cannot be stored; the message
    names its type and where it is."""


class PipelineError(TetherError, TypeError):
    """A function cannot be a pipeline as written (reserved parameter names, no ctx, ...)."""


class PipelineNotFound(TetherError, LookupError):
    """The pipeline a run needs is not defined or imported in this process."""


class RunNotFound(TetherError, LookupError):
    """No run has this id in the store."""


class StoreError(TetherError):
    """The database cannot be used: not SQLite, corrupt, newer schema, unwritable, ...

    ``transient`` is True for a write that may succeed later unchanged (the disk full, an I/O
    error, another process holding the lock too long): tether retries a run's claim and end
    after those, and gives up at once on the others (the file deleted, corrupt, read-only)."""

    transient: bool = False


class KeyConflict(TetherError):
    """A start() could not be reconciled with the runs already stored under its key."""

    def __init__(self, message: str, run: Run | None = None) -> None:
        super().__init__(message)
        self.run = run


class RunActive(TetherError):
    """rerun()/resume() was asked of a key whose run is still pending or running."""

    def __init__(self, message: str, run: Run | None = None) -> None:
        super().__init__(message)
        self.run = run


class RunError(TetherError):
    """Base of the errors result() raises when a run did not succeed."""

    def __init__(self, message: str, run: Run | None = None, error: dict[str, Any] | None = None):
        super().__init__(message)
        self.run = run
        self.error = error


class RunFailed(RunError):
    """The run's body raised; `.error` holds type, message and traceback."""


class RunCancelled(RunError):
    """The run was cancelled. Also raised inside a pipeline body by progress calls on cancel."""


class RunInterrupted(RunError):
    """The run's owner died (or exited) before the run ended."""


class MapItemError(TetherError):
    """An item of ``ctx.map`` failed; ``.index`` and ``.item`` name it, ``__cause__`` is the error."""

    def __init__(self, message: str, index: int, item: Any) -> None:
        super().__init__(message)
        self.index = index
        self.item = item

"""Typed errors raised by tether. Every message says what was wrong and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Mapping
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


# How the Python API names the settings a fix refers to (``{db}`` in a fix). A front end with
# its own way to set them passes its own words to StoreError.text() (the CLI: "--db PATH").
# The allow_* entries name the environment variable too: a front end may have no flag for them.
API_WORDING: Mapping[str, str] = {
    "db": "tether.configure(db=...)",
    "allow_foreign_db": "tether.configure(allow_foreign_db=True) or TETHER_ALLOW_FOREIGN_DB=1",
    "allow_network_fs": "tether.configure(allow_network_fs=True) or TETHER_ALLOW_NETWORK_FS=1",
}
_SETTING = re.compile(r"\{(\w+)\}")


class StoreError(TetherError):
    """The database cannot be used: not SQLite, corrupt, newer schema, unwritable, ...

    ``problem`` says what is wrong; ``fix``, how to fix it, names the settings to change as
    ``{db}``, ``{allow_foreign_db}`` or ``{allow_network_fs}`` (``settings`` lists them), which each
    front end words its own way through ``text()``; ``str()`` is the Python API's wording.

    ``transient`` is True for a write that may succeed later unchanged (the disk full, an I/O
    error, another process holding the lock too long): tether retries a run's claim and end
    after those, and gives up at once on the others (the file deleted, corrupt, read-only)."""

    transient: bool = False

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.text(API_WORDING))

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings the fix names (``("db",)``), in order."""
        return tuple(_SETTING.findall(self.fix))

    def text(self, wording: Mapping[str, str]) -> str:
        """The message, each setting in the fix named by ``wording`` (else by the Python API)."""
        if not self.fix:
            return self.problem
        fix = _SETTING.sub(lambda m: wording.get(m[1]) or API_WORDING.get(m[1], m[0]), self.fix)
        return f"{self.problem} {fix}"


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

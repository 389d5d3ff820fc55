"""Plain data: statuses, records and events. No I/O here."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from . import codec
from .errors import StoreError

__all__ = ["ACTIVE", "TERMINAL", "Event", "Owner", "Progress", "RunRecord", "Status"]


class Status(str, enum.Enum):
    """Status of a run. Equal to its plain string; ``str(status)`` is the value on every Python."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        return self in ACTIVE


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED})
ACTIVE = frozenset({Status.PENDING, Status.RUNNING})


class Progress(NamedTuple):
    """Progress of the current phase; ``total`` is None when unknown (indeterminate)."""

    done: int | float
    total: int | float | None


@dataclass(frozen=True)
class Owner:
    """The process executing (or, for a pending run, meant to execute) a run."""

    host: str
    pid: int
    started: float  # process start time (psutil create_time)
    instance: str  # random id of the tether runtime in that process
    # where ``pid`` means something: "<boot id>/<dev>:<inode of its pid namespace>" (Linux), or
    # None (unknown: recorded by an older tether, or not Linux). See tether.owner.
    ns: str | None = None


@dataclass
class RunRecord:
    """One row of the ``runs`` table, decoded.

    ``params``, ``error`` and ``result`` are decoded from their JSON text on first access: a
    listing or an attach does not pay for a result that nobody reads. ``files`` reads the files
    a large result keeps beside the database (set by the store that read the row)."""

    id: str
    key: str
    attempt: int
    pipeline: str
    version: str | None
    params_json: str
    status: Status
    phase: str | None
    phases: list[str]
    done: int | float
    total: int | float | None
    message: str | None
    error_json: str | None
    result_json: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    updated_at: float
    owner: Owner | None
    target: str | None
    lease_until: float | None
    cancel_requested: bool
    resumed_from: str | None
    last_seq: int
    phases_done: list[str] = field(default_factory=list)
    created_by: str = "start"
    files: Any = field(default=None, repr=False, compare=False)

    @property
    def progress(self) -> Progress:
        return Progress(self.done, self.total)

    @cached_property
    def params(self) -> dict[str, Any]:
        return decode_column(self.params_json, self.id, "params")  # type: ignore[no-any-return]

    @cached_property
    def error(self) -> dict[str, Any] | None:
        return decode_column(self.error_json, self.id, "error")  # type: ignore[no-any-return]

    @cached_property
    def result(self) -> Any:
        return codec.decode(self.result_json, self.id, "result", self.files)

    @cached_property
    def result_summary(self) -> Any:
        """The result as JSON data for displays, read without files, pickle, numpy or pandas:
        what JSON cannot show is a short text (``"<ndarray float64 (1000, 3)>"``)."""
        return codec.summary(self.result_json, self.id, "result")


_decode = json.JSONDecoder().decode


def decode_column(text: str | None, run_id: str, column: str) -> Any:
    """A JSON column of a run; a damaged one is a StoreError (the file is left untouched)."""
    if text is None:
        return None
    if text == "[]":  # phases_done of most runs
        return []
    try:
        return _decode(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreError(f"run {run_id}: its {column!r} column is not valid JSON "
                         f"({type(exc).__name__}); the database is damaged; it was left untouched"
                         ) from None


@dataclass(frozen=True)
class Event:
    """One stored event of a run. ``seq`` is contiguous per run, starting at 1."""

    run_id: str
    seq: int
    ts: float
    kind: str
    phase: str | None
    data: dict[str, Any]

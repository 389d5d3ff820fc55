"""Plain data: statuses, records and events. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


@dataclass
class RunRecord:
    """One row of the ``runs`` table, decoded."""

    id: str
    key: str
    attempt: int
    pipeline: str
    version: str | None
    params: dict[str, Any]
    status: Status
    phase: str | None
    phases: list[str]
    done: int | float
    total: int | float | None
    message: str | None
    error: dict[str, Any] | None
    result: Any
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

    @property
    def progress(self) -> Progress:
        return Progress(self.done, self.total)


@dataclass(frozen=True)
class Event:
    """One stored event of a run. ``seq`` is contiguous per run, starting at 1."""

    run_id: str
    seq: int
    ts: float
    kind: str
    phase: str | None
    data: dict[str, Any]

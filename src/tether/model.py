"""Plain data: statuses, records and events. No I/O here."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from . import codec
from .errors import StoreError

__all__ = ["ACTIVE", "TERMINAL", "Control", "Event", "Owner", "Progress", "RunRecord", "RunSummary", "Status"]


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


DAMAGED_STATUS = "damaged"  # how displays show a row whose status column is not a status


@dataclass(frozen=True)
class Control:
    """What a new run records of its pipeline's control options and of where it was started.

    ``parent``: the run whose body starts it; ``lineage``: that run and the attempts it resumed
    (a child of any of them that ended badly is resumed, not returned as it is)."""

    parent: str | None = None
    lineage: tuple[str, ...] = ()
    max_tries: int = 1
    timeout: float | None = None
    concurrency: int | None = None


class _Shown:
    """What displays read of a run, shared by :class:`RunRecord` and the lighter
    :class:`RunSummary` of listings."""

    __slots__ = ()

    id: str
    status: Status
    params_json: str
    retry_at: float | None
    deadline: float | None
    damaged: tuple[str, ...]

    def damage(self, column: str) -> str | None:
        """The ``column=<raw>`` entry of ``damaged`` for ``column``, or None if it is sound."""
        if self.damaged:
            for entry in self.damaged:
                if entry.startswith(column + "="):
                    return entry
        return None

    def need(self, *columns: str) -> None:
        """StoreError if one of ``columns`` is damaged: the caller needs its true value."""
        if self.damaged:
            for column in columns:
                entry = self.damage(column)
                if entry is not None:
                    raw = entry[len(column) + 1 :]
                    raise StoreError(damaged_message(self.id, column, f"holds {raw}"))

    def decoded(self, name: str) -> tuple[Any, str | None]:
        """``(value, None)`` of ``params``, ``error`` or ``result``; ``(None, "column=<raw>")``
        when that column is damaged (for displays, which show it instead of failing)."""
        try:
            return getattr(self, name), None
        except StoreError:
            return None, self.damage(name) or f"{name}={raw_text(getattr(self, name + '_json'))}"

    @property
    def status_text(self) -> str:
        """The status as displays show it: ``damaged`` when the column is not a status."""
        return DAMAGED_STATUS if self.damaged and self.damage("status") else str(self.status)

    def overdue(self, now: float) -> float | None:
        """Seconds a running try is past its timeout (a body that makes no ctx call cannot be
        stopped in a thread), or None."""
        if (
            self.status is Status.RUNNING
            and self.deadline is not None
            and now > self.deadline
            and self.retry_at is None
        ):
            return now - self.deadline
        return None

    def _params(self) -> dict[str, Any]:
        self.need("params")
        value = decode_column(self.params_json, self.id, "params")
        if type(value) is not dict:
            raise StoreError(damaged_message(self.id, "params", "is not a JSON object"))
        return value


@dataclass
class RunRecord(_Shown):
    """One row of the ``runs`` table, decoded.

    ``params``, ``error`` and ``result`` are decoded from their JSON text on first access: a
    listing or an attach does not pay for a result that nobody reads. ``files`` reads the files
    a large result keeps beside the database (set by the store that read the row).

    A row is never trusted: a column holding what tether never writes there (text in ``done``, an
    owner pid of -1, an unknown status, non-list ``phases`` ...) is replaced by a safe value (0,
    None, no owner, status ``failed``) and named in ``damaged`` as ``column=<raw value, clipped>``.
    A damaged owner is "no provable owner", so recovery never acts on the run. Readers that need
    a damaged value call :meth:`need`, which raises StoreError naming the run and the column."""

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
    # the fingerprint of the body's code that created the run (tether._code); None: unknown
    code: str | None = None
    damaged: tuple[str, ...] = ()
    # control (issue 14): see tether.Run for what each means
    parent_id: str | None = None
    tries: int = 0
    max_tries: int = 1
    retry_at: float | None = None
    timeout: float | None = None
    deadline: float | None = None
    concurrency: int | None = None
    parked: int = 0
    files: Any = field(default=None, repr=False, compare=False)

    @property
    def progress(self) -> Progress:
        return Progress(self.done, self.total)

    params = cached_property(_Shown._params)

    @cached_property
    def error(self) -> dict[str, Any] | None:
        self.need("error")
        value = decode_column(self.error_json, self.id, "error")
        if value is None:
            return None
        if type(value) is not dict or any(
            not isinstance(value.get(k), (str, type(None))) for k in ("type", "message", "traceback")
        ):
            raise StoreError(
                damaged_message(
                    self.id, "error", "is not a JSON object of text fields type, message, traceback"
                )
            )
        return value

    @cached_property
    def result(self) -> Any:
        self.need("result")
        return codec.decode(self.result_json, self.id, "result", self.files)

    @cached_property
    def result_summary(self) -> Any:
        """The result as JSON data for displays, read without files, pickle, numpy or pandas:
        what JSON cannot show is a short text (``"<ndarray float64 (1000, 3)>"``)."""
        return codec.summary(self.result_json, self.id, "result")


class RunSummary(_Shown):
    """What a listing shows of a run (``Store.summaries``), without the rest of its row decoded:
    no ``phases``, error or result read into objects. ``damaged`` and ``owner`` are those of
    the :class:`RunRecord` of the same row; ``params`` is decoded on access."""

    __slots__ = (
        "attempt",
        "created_at",
        "damaged",
        "deadline",
        "done",
        "ended_at",
        "id",
        "lease_until",
        "max_tries",
        "owner",
        "params_json",
        "phase",
        "pipeline",
        "retry_at",
        "started_at",
        "status",
        "total",
        "tries",
    )

    pipeline: str
    attempt: int
    phase: str | None
    done: int | float
    total: int | float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    owner: Owner | None
    lease_until: float | None
    tries: int
    max_tries: int

    def __init__(
        self,
        id: str,
        pipeline: str,
        attempt: int,
        status: Status,
        phase: str | None,
        done: int | float,
        total: int | float | None,
        params_json: str,
        created_at: float,
        started_at: float | None,
        ended_at: float | None,
        owner: Owner | None,
        lease_until: float | None,
        tries: int,
        max_tries: int,
        retry_at: float | None,
        deadline: float | None,
        damaged: tuple[str, ...] = (),
    ) -> None:
        self.id, self.pipeline, self.attempt, self.status = id, pipeline, attempt, status
        self.phase, self.done, self.total, self.params_json = phase, done, total, params_json
        self.created_at, self.started_at, self.ended_at = created_at, started_at, ended_at
        self.owner, self.lease_until, self.tries, self.max_tries = owner, lease_until, tries, max_tries
        self.retry_at, self.deadline, self.damaged = retry_at, deadline, damaged

    @classmethod
    def of(cls, rec: RunRecord) -> RunSummary:
        """The summary of a record (what a listing shows of it)."""
        return cls(
            rec.id,
            rec.pipeline,
            rec.attempt,
            rec.status,
            rec.phase,
            rec.done,
            rec.total,
            rec.params_json,
            rec.created_at,
            rec.started_at,
            rec.ended_at,
            rec.owner,
            rec.lease_until,
            rec.tries,
            rec.max_tries,
            rec.retry_at,
            rec.deadline,
            rec.damaged,
        )

    @property
    def params(self) -> dict[str, Any]:
        text = self.params_json
        if not self.damaged:  # the usual case, in a listing's loop: canonical JSON, one scan
            try:
                value, end = _scan(text, 0)
                if end == len(text) and type(value) is dict:
                    return value
            except (StopIteration, ValueError, RecursionError):
                pass
        return self._params()  # what it is not, named as RunRecord.params names it

    def __repr__(self) -> str:
        return f"RunSummary(id={self.id!r}, pipeline={self.pipeline!r}, status={self.status!r})"


_decode = json.JSONDecoder().decode
# one JSON value at an index: (value, end); typeshed does not declare it
_scan: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
MAX_RAW = 60  # characters of a damaged value quoted in messages and in ``damaged``


def error_dict(type_name: str, message: str, traceback: str = "") -> dict[str, Any]:
    """A run's stored error: what every writer of ``RunRecord.error`` builds."""
    return {"type": type_name, "message": message, "traceback": traceback}


def error_of(exc: BaseException, traceback_lines: Sequence[str] = ()) -> dict[str, Any]:
    """The stored error of ``exc`` (``traceback_lines`` from ``traceback.format_exception``)."""
    return error_dict(type(exc).__qualname__, str(exc), "".join(traceback_lines))


def raw_text(value: Any) -> str:
    """A damaged value as messages quote it: its repr (control characters escaped), clipped."""
    text = repr(value)
    return text if len(text) <= MAX_RAW else text[: MAX_RAW - 1] + "…"


def damaged_message(run_id: str, column: str, what: str) -> str:
    return (
        f"run {run_id}: its {column!r} column {what}; the database is damaged (edited by "
        "hand or by another tool?); it was left untouched: repair the row with sqlite3 or "
        "restore a backup"
    )


def decode_column(text: str | None, run_id: str, column: str) -> Any:
    """A JSON column of a run; a damaged one is a StoreError (the file is left untouched)."""
    if text is None:
        return None
    if text == "[]":  # phases_done of most runs
        return []
    try:
        return _decode(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreError(
            f"run {run_id}: its {column!r} column is not valid JSON "
            f"({type(exc).__name__}); the database is damaged; it was left untouched"
        ) from None


@dataclass(frozen=True)
class Event:
    """One stored event of a run. ``seq`` is contiguous per run, starting at 1.

    ``damaged`` says what was wrong with a stored row that is not a sound event (its ``data`` not
    a JSON object, a timestamp that is not a number ...); such an event has ``data == {}``."""

    run_id: str
    seq: int
    ts: float
    kind: str
    phase: str | None
    data: dict[str, Any]
    damaged: str | None = None


def event_of(row: Sequence[Any]) -> Event:
    """An Event from ``(run_id, seq, ts, kind, phase, data)``; a damaged row is a marked event."""
    run_id, seq, ts, kind, phase, text = row
    try:
        data = _decode(text)
    except (ValueError, TypeError, RecursionError):  # not JSON, or not text (a BLOB)
        data = None
    if (
        type(data) is dict
        and type(seq) is int
        and type(ts) is float
        and type(kind) is str
        and (phase is None or type(phase) is str)
    ):
        return Event(run_id, seq, ts, kind, phase, data)
    bad = []
    if type(data) is not dict:
        bad.append(f"data={raw_text(text)} is not a JSON object")
        data = {}
    if type(seq) is not int:
        bad.append(f"seq={raw_text(seq)}")
        seq = 0
    if not isinstance(ts, (int, float)):
        bad.append(f"ts={raw_text(ts)}")
        ts = 0.0
    if type(kind) is not str:
        bad.append(f"kind={raw_text(kind)}")
        kind = raw_text(kind)
    if phase is not None and type(phase) is not str:
        bad.append(f"phase={raw_text(phase)}")
        phase = raw_text(phase)
    return Event(str(run_id), seq, float(ts), kind, phase, data, "; ".join(bad) or None)


def log_text(event: Event) -> str:
    """The text of a ``log`` event; a damaged one says so instead of passing for a log line."""
    message = event.data.get("message", "")
    if type(message) is str and event.damaged is None:
        return message
    return f"<damaged event {event.seq}: {event.damaged or 'message=' + raw_text(message)}>"

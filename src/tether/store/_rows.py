"""Rows of the ``runs`` table as RunRecords (every column checked by name), and the small
values the store's methods take and return."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from operator import contains
from typing import Any, NamedTuple

from ..model import Owner, RunRecord, RunSummary, Status, _decode, raw_text
from ..policy import Conflict


class _Row(NamedTuple):
    """A row of ``runs`` as read, by column name: the SELECT lists these names (``_RUN_COLS``), so a
    column is read by its name whatever its position in the table. Values are unchecked
    (SQLite does not enforce declared types): ``_record`` checks each one."""

    id: Any
    key: Any
    attempt: Any
    pipeline: Any
    version: Any
    params: Any
    status: Any
    phase: Any
    phases: Any
    phases_done: Any
    done: Any
    total: Any
    message: Any
    error: Any
    result: Any
    created_at: Any
    started_at: Any
    ended_at: Any
    updated_at: Any
    owner_host: Any
    owner_pid: Any
    owner_started: Any
    owner_instance: Any
    target: Any
    lease_until: Any
    cancel_requested: Any
    resumed_from: Any
    last_seq: Any
    created_by: Any
    owner_ns: Any
    parent_id: Any
    tries: Any
    max_tries: Any
    retry_at: Any
    timeout: Any
    deadline: Any
    concurrency: Any
    parked: Any
    code: Any


_RUN_COLS = ", ".join(_Row._fields)  # the columns a RunRecord is read from, in _Row order
# The WHERE term of the partial index runs_active, word for word: a query of active runs states it
# (SQLite uses a partial index only then), even beside a narrower ``status = 'running'``.
ACTIVE = "status IN ('pending', 'running')"

json_str = json.JSONEncoder().encode  # a str as a JSON string literal


def _text(value: str | None) -> str | None:
    """A str SQLite can store as UTF-8 (lone surrogates replaced)."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _files(*texts: Any) -> dict[str, Any]:
    """The files (digest -> bytes) that encoded values carry (codec.Encoded), to write first."""
    out: dict[str, Any] = {}
    for text in texts:
        files = getattr(text, "files", None)
        if files:
            out.update(files)
    return out


def _num(x: Any) -> Any:
    """An int SQLite INTEGER cannot hold (beyond 64 bits) is stored as REAL."""
    if isinstance(x, int) and not -(2**63) <= x < 2**63:
        return float(x)
    return x


_STATUS = {s.value: s for s in Status}
_NONE = type(None)
_TEXT, _OPT_TEXT = frozenset({str}), frozenset({str, _NONE})
_INT, _NUM, _OPT_NUM = frozenset({int}), frozenset({int, float}), frozenset({int, float, _NONE})
_ANY = frozenset({str, int, float, bytes, _NONE})  # checked on its own (status, JSON, owner)
# The types each column may hold: SQLite does not enforce declared types. A column missing here
# (added to _RUN_COLS later) is passed on as it is read.
_KINDS = {
    "id": _TEXT,
    "key": _TEXT,
    "attempt": _INT,
    "pipeline": _TEXT,
    "version": _OPT_TEXT,
    "phase": _OPT_TEXT,
    "done": _NUM,
    "total": _OPT_NUM,
    "message": _OPT_TEXT,
    "result": _OPT_TEXT,
    "created_at": _NUM,
    "started_at": _OPT_NUM,
    "ended_at": _OPT_NUM,
    "updated_at": _NUM,
    "target": _OPT_TEXT,
    "lease_until": _OPT_NUM,
    "cancel_requested": _INT,
    "resumed_from": _OPT_TEXT,
    "last_seq": _INT,
    "created_by": _TEXT,
    "code": _OPT_TEXT,
    "parent_id": _OPT_TEXT,
    "tries": _INT,
    "max_tries": _INT,
    "retry_at": _OPT_NUM,
    "timeout": _OPT_NUM,
    "deadline": _OPT_NUM,
    "concurrency": frozenset({int, _NONE}),
    "parked": _INT,
}
_TYPES = tuple(_KINDS.get(name, _ANY) for name in _Row._fields)
_MAX_PID = 2**31 - 1  # pid_t


def _retype(row: _Row, bad: list[str]) -> _Row:
    """Replace every value of a type its column never holds by a safe one; name the columns."""
    fixes = {}
    for name, kinds in _KINDS.items():
        value = getattr(row, name)
        if type(value) not in kinds:
            bad.append(f"{name}={raw_text(value)}")
            fixes[name] = (
                raw_text(value) if kinds is _TEXT or kinds is _OPT_TEXT else None if _NONE in kinds else 0
            )
    return row._replace(**fixes)


def _name_list(text: Any) -> list[str] | None:
    """A JSON list of phase names, or None if ``text`` is not one."""
    try:
        value = _decode(text)
        if type(value) is list:
            "".join(value)  # TypeError unless every item is a str (the quickest check there is)
            return value
    except (ValueError, TypeError, RecursionError):  # not JSON, not text, not names
        pass
    return None


def _names(row: _Row, name: str, bad: list[str]) -> list[str]:
    """A JSON list of phase names; a damaged one is [] (and named in ``bad``)."""
    text = getattr(row, name)
    value = _name_list(text)
    if value is None:
        bad.append(f"{name}={raw_text(text)}")
        return []
    return value


# phases / phases_done texts found sound lately: the rows of a listing repeat a few of them. Per
# process (docs/architecture.md): whether a text is sound depends on the text alone; bounded.
_SOUND_NAMES: dict[str, None] = {"[]": None}


def _sound_names(text: Any) -> bool:
    if type(text) is str and text in _SOUND_NAMES:
        return True
    if _name_list(text) is None:
        return False
    if len(_SOUND_NAMES) >= 256:
        _SOUND_NAMES.clear()
        _SOUND_NAMES["[]"] = None
    _SOUND_NAMES[text] = None
    return True


# Owners read lately, by their columns: an Owner is immutable, and a frozen dataclass is slow to
# make (every attach reads one). Per process (docs/architecture.md): the Owner depends on the
# columns alone; bounded.
_OWNERS: dict[tuple[Any, ...], Owner] = {}


def _owner(row: _Row, bad: list[str]) -> Owner | None:
    """The owner of a row, or None: none recorded, or a damaged one (its columns named in
    ``bad``), which proves nothing: recovery never acts on a run without a provable owner."""
    instance, host, pid, started = row.owner_instance, row.owner_host, row.owner_pid, row.owner_started
    if instance is None:
        return None
    if (
        type(pid) is int
        and 0 < pid <= _MAX_PID
        and type(host) is str
        and host
        and type(started) in _NUM
        and type(instance) is str
        and instance
    ):
        key = (host, pid, started, instance, row.owner_ns)
        owner = _OWNERS.get(key)
        if owner is None:
            if len(_OWNERS) >= 256:
                _OWNERS.clear()
            ns = row.owner_ns
            owner = _OWNERS[key] = Owner(host, pid, float(started), instance, ns if type(ns) is str else None)
        return owner
    for name, ok in (
        ("owner_pid", type(pid) is int and 0 < pid <= _MAX_PID),
        ("owner_host", type(host) is str and host != ""),
        ("owner_started", type(started) in _NUM),
        ("owner_instance", type(instance) is str and instance != ""),
    ):
        if not ok:
            bad.append(f"{name}={raw_text(getattr(row, name))}")
    return None


def _out_of_range(row: _Row, bad: list[str]) -> None:
    """Name an attempt below 1 or a negative last_seq (unless already named for its type)."""
    for name, low in (("attempt", 1), ("last_seq", 0)):
        value = getattr(row, name)
        if value < low and not any(entry.startswith(name + "=") for entry in bad):
            bad.append(f"{name}={value}")


def _record(values: Sequence[Any]) -> RunRecord:
    """A RunRecord from a row of ``_RUN_COLS``, every column checked: a damaged one is replaced
    by a safe value and named in ``RunRecord.damaged`` (a row is never trusted: hand edits, other
    tools). Every attach reads a row: the checks are written for speed (one type test of all
    columns first, the slow path only for a damaged row)."""
    row = _Row._make(values)
    bad: list[str] = []
    if not all(map(contains, _TYPES, map(type, values))):
        row = _retype(row, bad)
    status = _STATUS.get(row.status)
    if status is None:  # unknown: ended, as far as anything that acts on runs is concerned
        bad.append(f"status={raw_text(row.status)}")
        status = Status.FAILED
    params, error = row.params, row.error
    if type(params) is not str or params[:1] != "{":  # canonical JSON objects
        bad.append(f"params={raw_text(params)}")
    if error is not None and (type(error) is not str or error[:1] != "{"):
        bad.append(f"error={raw_text(error)}")
    if row.attempt < 1 or row.last_seq < 0:
        _out_of_range(row, bad)
    phases, phases_done = row.phases, row.phases_done
    return RunRecord(
        id=row.id,
        key=row.key,
        attempt=row.attempt,
        pipeline=row.pipeline,
        version=row.version,
        params_json=params,
        status=status,
        phase=row.phase,
        phases=[] if phases == "[]" else _names(row, "phases", bad),
        done=row.done,
        total=row.total,
        message=row.message,
        error_json=error,
        result_json=row.result,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        updated_at=row.updated_at,
        owner=_owner(row, bad),
        target=row.target,
        lease_until=row.lease_until,
        cancel_requested=bool(row.cancel_requested),
        resumed_from=row.resumed_from,
        last_seq=row.last_seq,
        phases_done=[] if phases_done == "[]" else _names(row, "phases_done", bad),
        created_by=row.created_by,
        code=row.code,
        damaged=tuple(bad) if bad else (),
        parent_id=row.parent_id,
        tries=row.tries,
        max_tries=row.max_tries,
        retry_at=row.retry_at,
        timeout=row.timeout,
        deadline=row.deadline,
        concurrency=row.concurrency,
        parked=row.parked,
    )


# the column types of sound rows seen lately (a listing's rows share one or a few). Per process
# (docs/architecture.md): whether types are sound depends on the types alone; bounded.
_SOUND_TYPES: set[tuple[type, ...]] = set()


def _sound_types(values: Sequence[Any]) -> bool:
    """Does every column hold a type it may hold (as ``_record`` checks)?"""
    types = tuple(map(type, values))
    if types in _SOUND_TYPES:
        return True
    if not all(map(contains, _TYPES, types)):
        return False
    if len(_SOUND_TYPES) >= 64:
        _SOUND_TYPES.clear()
    _SOUND_TYPES.add(types)
    return True


def _summary(values: Sequence[Any]) -> RunSummary:
    """A RunSummary from a row of ``_RUN_COLS``: what a listing shows, with the ``damaged`` and
    ``owner`` its RunRecord would have. A sound row (the usual case) passes the same checks as
    in ``_record`` without building a record; any other is read through ``_record``."""
    row = _Row._make(values)
    status = _STATUS.get(row.status) if type(row.status) is str else None
    params, error = row.params, row.error
    if (
        status is None
        or not _sound_types(values)
        or type(params) is not str
        or params[:1] != "{"
        or (error is not None and (type(error) is not str or error[:1] != "{"))
        or row.attempt < 1
        or row.last_seq < 0
        or not _sound_names(row.phases)
        or not _sound_names(row.phases_done)
    ):
        return RunSummary.of(_record(values))
    owner = None
    if row.owner_instance is not None:
        bad: list[str] = []
        owner = _owner(row, bad)
        if bad:
            return RunSummary.of(_record(values))
    return RunSummary(
        row.id,
        row.pipeline,
        row.attempt,
        status,
        row.phase,
        row.done,
        row.total,
        params,
        row.created_at,
        row.started_at,
        row.ended_at,
        owner,
        row.lease_until,
        row.tries,
        row.max_tries,
        row.retry_at,
        row.deadline,
    )


@dataclass
class StartOutcome:
    record: RunRecord
    created: bool
    conflict: Conflict | None = None  # why the call cannot be honoured (raised by the caller)
    recovered: str | None = None  # the latest run was found orphaned and interrupted
    other_code: str | None = None  # the active run returned was made by other code: how


@dataclass
class FlushItem:
    """What the runner persists for one run it owns: progress and buffered events."""

    run_id: str
    phase: str | None
    phases: list[str]
    phases_done: list[str]
    done: int | float
    total: int | float | None
    message: str | None
    events: list[tuple[float, str, str | None, str]]  # (ts, kind, phase, data JSON)


class Queued(NamedTuple):
    """A claim refused by the pipeline's ``concurrency``: the run stays pending, in line."""

    ahead: int  # runs of the pipeline that start before it


class RowTaken(Exception):
    """A claim's run is locked by another claimer's transaction right now (PostgreSQL's ``FOR
    UPDATE SKIP LOCKED``): claim_next goes on to the next candidate instead of waiting."""


@dataclass(frozen=True)
class Scope:
    """What a write transaction touches, for a backend that locks finer than the whole database
    (SQLite's BEGIN IMMEDIATE ignores it). Empty: the whole database (exclusive).

    ``keys``: runs may be made for these keys; ``runs``: these rows change, conditional on their
    status and owner; ``claim``: this pending run is claimed (its pipeline's concurrency decided
    with it); ``skip_locked``: a claim locked by another claimer raises RowTaken instead of
    waiting; ``own``: only rows of the writer's own (its worker registration)."""

    keys: Sequence[str] = ()
    runs: Sequence[str] = ()
    claim: str | None = None
    skip_locked: bool = False
    own: bool = False

    @property
    def whole(self) -> bool:
        return not (self.keys or self.runs or self.claim or self.own)


WHOLE = Scope()

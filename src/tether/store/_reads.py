"""The store's reads: runs, events and checkpoints, one statement each."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import codec
from ..artifacts import Artifacts
from ..codec import dumps
from ..errors import RunNotFound
from ..model import Event, Owner, RunRecord, RunSummary, Status, event_of
from ._connection import _Connections, _guarded
from ._rows import _RUN_COLS, ACTIVE, _record, _summary

_MAX_TRY_TRACEBACK = 20_000
# A pending run that will start before the run of the outer query (its pipeline's queue, in start
# order: rowid, the order in which the start transactions committed) and has a claimant: meant for
# a process (the sweep takes those of dead ones away), or for a worker while one serves the
# pipeline. ?1 is the time now.
_BEFORE = (
    f"FROM runs AS o WHERE o.pipeline = runs.pipeline AND o.status = 'pending' AND o.{ACTIVE} "
    "AND o.concurrency IS NOT NULL AND o.rowid < runs.rowid AND (o.target != 'worker' OR "
    "EXISTS (SELECT 1 FROM workers AS w WHERE w.pipeline = o.pipeline AND w.lease_until > ?1))"
)
_AHEAD = f"(SELECT count(*) {_BEFORE})"
# A claim of the run passes its pipeline's concurrency check (parked parents are not counted)
_ROOM = (
    "(runs.concurrency IS NULL OR ((SELECT count(*) FROM runs AS o WHERE o.pipeline = "
    f"runs.pipeline AND o.status = 'running' AND o.{ACTIVE} AND o.parked = 0) < runs.concurrency "
    f"AND NOT EXISTS (SELECT 1 {_BEFORE})))"
)


def _param_test(value: Any) -> tuple[str, list[Any]]:
    """A ``json_each`` condition true where a param equals ``value`` as JSON values do:
    ``True`` is not ``1``, ``3 == 3.0``; a list or dict equals the same canonical JSON."""
    if value is None:
        return "j.type = 'null'", []
    if isinstance(value, bool):
        return "j.type = ?", ["true" if value else "false"]
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            value = float(value)  # as SQLite reads such a number
        return "j.type IN ('integer', 'real') AND j.value = ?", [value]
    if isinstance(value, str):
        return "j.type = 'text' AND j.value = ?", [value]
    if isinstance(value, (list, tuple, dict)):
        return "j.type IN ('array', 'object') AND j.value = ?", [dumps(value)]
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _listing(
    pipeline: str | None,
    status: str | Sequence[str] | None,
    key: str | None,
    limit: int | None,
    params: dict[str, Any] | None,
    param_where: Callable[[str, Any], tuple[str, list[Any]]] | None = None,
) -> tuple[str, list[Any]]:
    """The query of a listing (``list_runs``, ``summaries``): the runs matching every filter,
    newest first, and its arguments. ``param_where``: the backend's condition for one param
    (``_Reads._param_where``)."""
    where: list[str] = []
    args: list[Any] = []
    active = False
    if pipeline is not None:
        where.append("pipeline = ?")
        args.append(pipeline)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args.extend(str(Status(s)) for s in statuses)
        active = {str(Status(s)) for s in statuses} <= {"pending", "running"}
        if active:
            where.append(ACTIVE)  # the few active runs, through their index
    if key is not None:
        where.append("key = ?")
        args.append(key)
    for name, value in (params or {}).items():
        assert param_where is not None, "a params filter needs the backend's param_where"
        test, more = param_where(name, value)
        where.append(test)
        args.extend(more)
    sql = f"SELECT {_RUN_COLS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # the few active runs are found through runs_active and sorted; ``+created_at`` keeps the
    # order from choosing an index of every run (runs_created, runs_pipeline) instead
    sql += f" ORDER BY {'+' if active else ''}created_at DESC, attempt DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return sql, args


class _Reads(_Connections):
    files: Artifacts

    def _pipeline_of(self, run_id: str) -> str | None:
        row = self.conn().execute("SELECT pipeline FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _rec(self, row: Sequence[Any]) -> RunRecord:
        """A RunRecord that reads its result's files (if any) from this store."""
        rec = _record(row)
        rec.files = self.files
        return rec

    def _runs(
        self, where: str, args: Sequence[Any] = (), conn: sqlite3.Connection | None = None
    ) -> list[RunRecord]:
        """The runs of ``SELECT ... FROM runs WHERE <where>`` (``where`` may end in ORDER BY and
        LIMIT), read as RunRecords; ``conn``: inside a transaction of this thread."""
        rows = (conn or self.conn()).execute(f"SELECT {_RUN_COLS} FROM runs WHERE {where}", args).fetchall()
        return [self._rec(r) for r in rows]

    @_guarded
    def get(self, run_id: str) -> RunRecord:
        row = self.conn().execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(
                f"no run with id {run_id!r} in {str(self.path)!r}; "
                "list runs with tether.runs() or `tether ls`."
            )
        return self._rec(row)

    def latest(self, key: str, conn: sqlite3.Connection | None = None) -> RunRecord | None:
        row = self._latest_row(key, conn)
        return self._rec(row) if row else None

    @_guarded
    def _latest_row(self, key: str, conn: sqlite3.Connection | None = None) -> Sequence[Any] | None:
        row: Sequence[Any] | None = (
            (conn or self.conn())
            .execute(f"SELECT {_RUN_COLS} FROM runs WHERE key = ? ORDER BY attempt DESC LIMIT 1", (key,))
            .fetchone()
        )
        return row

    @_guarded
    def newest(self, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
        """``{key: (id, attempt, status)}`` of the latest attempt of each key (one light read:
        no params, results or errors), for panels that show an older attempt."""
        out: dict[str, tuple[str, int, str]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            # SQLite: the bare columns of an aggregate query come from the row holding the MAX;
            # a damaged row (an attempt that is no integer) is never the newest
            for key, attempt, run_id, status in self.conn().execute(
                "SELECT key, MAX(attempt), id, status FROM runs WHERE key IN "
                f"({','.join('?' * len(chunk))}) AND typeof(attempt) = 'integer' "
                "GROUP BY key",
                chunk,
            ):
                out[key] = (str(run_id), attempt, str(status))
        return out

    @_guarded
    def attempts(self, key: str) -> list[RunRecord]:
        return self._runs("key = ? ORDER BY attempt", (key,))

    @_guarded
    def list_runs(
        self,
        pipeline: str | None = None,
        status: str | Sequence[str] | None = None,
        key: str | None = None,
        limit: int | None = 100,
        params: dict[str, Any] | None = None,
    ) -> list[RunRecord]:
        sql, args = _listing(pipeline, status, key, limit, params, self._param_where)
        return [self._rec(r) for r in self.conn().execute(sql, args).fetchall()]

    @staticmethod
    def _param_where(name: str, value: Any) -> tuple[str, list[Any]]:
        """A condition on ``runs`` true where param ``name`` equals ``value`` as JSON values do,
        and its arguments (a backend's dialect may say it otherwise)."""
        test, more = _param_test(value)
        # CASE: json_each is never reached for a damaged (non-JSON) params column
        return (
            "CASE WHEN json_valid(params) THEN EXISTS (SELECT 1 FROM "
            f"json_each(runs.params) AS j WHERE j.key = ? AND {test}) ELSE 0 END",
            [name, *more],
        )

    @_guarded
    def summaries(
        self,
        pipeline: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 100,
    ) -> list[RunSummary]:
        sql, args = _listing(pipeline, status, None, limit, None)
        return [_summary(r) for r in self.conn().execute(sql, args).fetchall()]

    @_guarded
    def events(
        self, run_id: str, after: int = 0, limit: int | None = None, kinds: Sequence[str] | None = None
    ) -> list[Event]:
        sql = "SELECT run_id, seq, ts, kind, phase, data FROM events WHERE run_id = ? AND seq > ?"
        args: list[Any] = [run_id, after]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [event_of(r) for r in self.conn().execute(sql, args)]

    @_guarded
    def tail(self, run_id: str, kind: str, n: int) -> list[Event]:
        """The last ``n`` events of one kind, oldest first."""
        rows = (
            self.conn()
            .execute(
                "SELECT run_id, seq, ts, kind, phase, data FROM events WHERE run_id = ? AND kind = ? "
                "ORDER BY seq DESC LIMIT ?",
                (run_id, kind, n),
            )
            .fetchall()
        )
        return [event_of(r) for r in reversed(rows)]

    @_guarded
    def active(self) -> list[RunRecord]:
        return self._runs(ACTIVE)

    @_guarded
    def cancel_requests(self, owner: Owner) -> set[str]:
        return {
            r[0]
            for r in self.conn().execute(
                f"SELECT id FROM runs WHERE status = 'running' AND {ACTIVE} AND owner_instance = ? "
                "AND cancel_requested = 1",
                (owner.instance,),
            )
        }

    @_guarded
    def checkpoint(self, run_id: str, name: str) -> tuple[bool, Any]:
        row = (
            self.conn()
            .execute("SELECT value FROM checkpoints WHERE run_id = ? AND name = ?", (run_id, name))
            .fetchone()
        )
        if row is None:
            return False, None
        return True, codec.decode(row[0], run_id, f"checkpoint {name}", self.files)

    @_guarded
    def checkpoints(self, run_id: str, prefix: str = "") -> dict[str, Any]:
        rows = self.conn().execute(
            "SELECT name, value FROM checkpoints WHERE run_id = ? AND substr(name, 1, ?) = ?",
            (run_id, len(prefix), prefix),
        )
        return {name: codec.decode(value, run_id, f"checkpoint {name}", self.files) for name, value in rows}

    @_guarded
    def claimable(self, run_ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``run_ids`` still pending: would its claim pass the concurrency check now?
        (A read: a process polls its queued runs with it, and claims only when it may pass.)"""
        if not run_ids:
            return {}
        now = time.time()
        rows = (
            self.conn()
            .execute(
                f"SELECT id, {_ROOM} FROM runs WHERE status = 'pending' AND id IN "
                f"({','.join('?' * len(run_ids))})",
                (now, *run_ids),
            )
            .fetchall()
        )
        return {r[0]: bool(r[1]) for r in rows}

    @_guarded
    def queue_ahead(self, run_id: str) -> int | None:
        """Runs of the same pipeline that start before this pending run (its ``concurrency=``
        queue, start order across processes); None unless it waits in such a queue."""
        row = (
            self.conn()
            .execute(
                f"SELECT concurrency, {_AHEAD} FROM runs WHERE id = ? AND status = 'pending'",
                (time.time(), run_id),
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else int(row[1])

    @_guarded
    def children(self, run_id: str) -> list[RunRecord]:
        """Runs started by ``run_id``'s body (and those it attached to, once its events are
        flushed), oldest first."""
        return self._runs(
            "parent_id = ? OR id IN (SELECT json_extract(data, '$.id') FROM events WHERE run_id = ? "
            "AND kind = 'child') ORDER BY created_at, rowid",
            (run_id, run_id),
        )

    def _descendants(self, conn: sqlite3.Connection, run_id: str) -> list[RunRecord]:
        """The active runs below ``run_id`` (children, theirs, ...), parents first."""
        return self._runs(
            "id IN (WITH RECURSIVE below(id, depth) AS (SELECT id, 1 FROM runs WHERE parent_id = ? "
            "UNION SELECT r.id, below.depth + 1 FROM runs r JOIN below ON r.parent_id = below.id "
            "WHERE below.depth < 100) SELECT id FROM below) "
            f"AND {ACTIVE} ORDER BY created_at",
            (run_id,),
            conn,
        )

    @_guarded
    def descendants(self, run_id: str) -> list[RunRecord]:
        return self._descendants(self.conn(), run_id)

"""The SQLite store: a tether database file in WAL mode, one connection per thread.

Every state change is one committed transaction (``BEGIN IMMEDIATE``, or for a step's checkpoint
row alone one statement committed on its own, see ``write_run``); every status change is
conditional on the status (and owner) it replaces, so a terminal status never changes and whoever
notices an orphan first wins."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import Artifacts
from ..codec import dumps
from ..errors import TetherError
from ..model import Owner, RunRecord, Status, error_dict
from ._connection import _guarded
from ._rows import _RUN_COLS, ACTIVE, Scope, _Row
from ._writes import _Writes
from .protocol import GoneCheck

# start()'s read of a key's newest attempt (the ended ones a thread read lately are kept: see
# SQLiteStore.latest)
_LATEST = f"SELECT {_RUN_COLS} FROM runs WHERE key = ? ORDER BY attempt DESC LIMIT 1"
_STATUS_AT = _Row._fields.index("status")
_ENDED = frozenset(str(s) for s in Status if s.terminal)
# Per thread, at most: rows (a notebook's keys: a sweep's cell run again re-attaches all of them,
# so more than a few hundred), and characters of params, result and error text in all (a row with
# more than _ROW_TEXT of them is read each time); when either is reached the memo starts afresh.
_MEMO_ROWS = 4096
_MEMO_TEXT = 4 * 1024 * 1024
_ROW_TEXT = 16_384
_TEXTS_AT = tuple(_Row._fields.index(name) for name in ("params", "result", "error"))


@dataclass(slots=True)
class _Memo:
    """A thread's kept rows of ended attempts, valid while its connection's data_version is."""

    conn: sqlite3.Connection
    version: int
    rows: dict[str, Sequence[Any]] = field(default_factory=dict)
    text: int = 0  # characters of params, result and error in rows


def _text_size(row: Sequence[Any]) -> int:
    """The characters of a row's params, result and error texts (a damaged one: more than a row
    may keep, so it is read each time, as anything unusual). A result of up to the codec's inline
    limit would otherwise be held per thread, and reading it is cheap beside decoding it."""
    size = 0
    for i in _TEXTS_AT:
        value = row[i]
        if type(value) is str:
            size += len(value)
        elif value is not None:
            return _ROW_TEXT + 1
    return size


class SQLiteStore(_Writes):
    """A tether database file. Cheap to create; opens (and migrates) on first use."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        allow_foreign: Callable[[], bool] | None = None,
        allow_network_fs: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(path, allow_foreign, allow_network_fs)
        self.files = Artifacts(self.path, self._pipeline_of)  # large values, beside the database

    def latest(self, key: str, conn: sqlite3.Connection | None = None) -> RunRecord | None:
        """The newest attempt of ``key``, or None.

        Outside a write transaction, the row of an ended attempt this thread read before is kept
        for as long as SQLite's ``data_version`` says no other connection has committed anything
        to the file since: an ended row never changes, and whatever could make it stale (a newer
        attempt, ``tether gc``, a hand edit, this process's own writes, which go through the
        writer connection) is a commit. ``data_version`` is read before the row, so a row is
        never kept under a version older than the row itself. Each call gets a record of its
        own, made from the row."""
        if conn is not None or getattr(self._local, "tx", None) is not None:
            return super().latest(key, conn)
        row = self._latest_kept(key)
        return None if row is None else self._rec(row)

    @_guarded
    def _latest_kept(self, key: str) -> Sequence[Any] | None:
        conn = self.conn()
        local = self._local
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        memo: _Memo | None = getattr(local, "ended", None)
        if memo is None or memo.conn is not conn or memo.version != version:
            memo = local.ended = _Memo(conn, version)  # something was committed since: forget
        rows = memo.rows
        row = rows.get(key)
        if row is None:
            row = conn.execute(_LATEST, (key,)).fetchone()
            if row is not None and row[_STATUS_AT] in _ENDED:
                size = _text_size(row)
                if size <= _ROW_TEXT:
                    if len(rows) >= _MEMO_ROWS or memo.text + size > _MEMO_TEXT:
                        memo = local.ended = _Memo(conn, version)
                        rows = memo.rows
                    rows[key] = row
                    memo.text += size
        return row

    def exists(self) -> bool:
        return self._stat() is not None  # the file alone: os.stat opens nothing

    def request_cancel(self, run_id: str, gone: GoneCheck, origin: dict[str, Any] | None = None) -> RunRecord:
        """Cancel: a pending run (or one whose owner is gone) ends at once; a running one is
        flagged. Its active descendants (runs its body started, and theirs) are cancelled too.

        ``origin`` (who asked: ``{"via": "panel" | "cli" | "api", "pid": ..., ...}``) is kept in
        the cancel's event, for displays to say where the cancel came from."""
        extra = {"origin": origin} if origin else {}
        now = time.time()
        with self.tx() as conn:
            rec = self.get(run_id)
            if rec.status.terminal:
                return rec
            self._cancel_one(conn, rec, gone, now, {"by": "request", **extra})
            for child in self._descendants(conn, run_id):
                self._cancel_one(conn, child, gone, now, {"by": "parent", "parent": run_id})
            return self.get(run_id)

    def cancel_children(self, run_id: str, gone: GoneCheck) -> list[str]:
        """Cancel the active descendants of ``run_id`` (its timeout passed). Returns their ids."""
        now = time.time()
        with self.tx() as conn:
            kids = self._descendants(conn, run_id)
            for child in kids:
                self._cancel_one(conn, child, gone, now, {"by": "parent", "parent": run_id})
        return [k.id for k in kids]

    def _cancel_one(
        self, conn: sqlite3.Connection, rec: RunRecord, gone: GoneCheck, now: float, data: dict[str, Any]
    ) -> None:
        ends_now = rec.status == Status.PENDING or gone(rec.owner, rec.lease_until, now)
        if ends_now:
            by_parent = data.get("by") == "parent"
            error = error_dict(
                "Cancelled",
                f"run cancelled with its parent run {data['parent']}" if by_parent else "run cancelled",
            )
            cur = conn.execute(
                "UPDATE runs SET status = 'cancelled', cancel_requested = 1, ended_at = ?, "
                "updated_at = ?, error = ? WHERE id = ? AND status = ?",
                (now, now, dumps(error), rec.id, str(rec.status)),
            )
            if cur.rowcount == 1:
                self._event(conn, rec, "cancelled", data, now)
        elif not rec.cancel_requested:
            conn.execute("UPDATE runs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, rec.id))
            asked = {k: v for k, v in data.items() if k != "by"} if data.get("by") == "request" else data
            self._event(conn, rec, "cancel_requested", asked, now)

    def recover(self, records: Sequence[RunRecord], gone: GoneCheck) -> list[tuple[RunRecord, str]]:
        """Mark the orphans among ``records`` interrupted. Returns those marked, with the reason.

        Each run on its own: one whose owner check raises, or whose write fails (a damaged row),
        is left as it was, and the others are still marked."""
        now = time.time()
        suspects = []
        for rec in records:
            if not rec.status.active:
                continue
            try:
                why = gone(rec.owner, rec.lease_until, now)
            except Exception:  # a check that cannot decide proves nothing: this run is left
                continue
            if why:
                suspects.append((rec, why))
        marked = []
        if suspects:
            with self.tx() as conn:
                for rec, why in suspects:
                    # one run's failure (a damaged row whose write breaks a constraint, a row
                    # deleted meanwhile) undoes that run's writes only; the others go on
                    conn.execute("SAVEPOINT tether_recover")
                    try:
                        fresh = self.get(rec.id)
                        same = fresh.status == rec.status and fresh.owner == rec.owner
                        if (
                            same
                            and fresh.status == Status.PENDING
                            and self._hand_over(conn, fresh, why, now, gone)
                        ):
                            done = False
                        else:
                            done = same and self._interrupt(conn, fresh, why, now)
                    except (sqlite3.DatabaseError, TetherError):
                        if not conn.in_transaction:  # SQLite ended the transaction: stop here
                            raise
                        conn.execute("ROLLBACK TO tether_recover")
                        done = False
                    conn.execute("RELEASE tether_recover")
                    if done:
                        marked.append((fresh, why))
        return marked

    def interrupt_own(self, owner: Owner, reason: str) -> int:
        """Mark every active run of ``owner`` interrupted (clean shutdown). Returns the count."""
        now = time.time()
        n = 0
        with self.tx() as conn:
            for rec in self._runs(f"{ACTIVE} AND owner_instance = ?", (owner.instance,), conn):
                n += self._interrupt(conn, rec, reason, now)
        return n

    def register_worker(self, owner: Owner, pipelines: Sequence[str], lease_until: float) -> None:
        """A ``tether worker`` serves ``pipelines`` (renewed with the same call, dropped with
        ``unregister_worker``)."""
        with self.tx(Scope(own=True)) as conn:
            conn.execute("DELETE FROM workers WHERE instance = ?", (owner.instance,))
            conn.executemany(
                "INSERT INTO workers (instance, pipeline, host, pid, started, ns, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (owner.instance, p, owner.host, owner.pid, owner.started, owner.ns, lease_until)
                    for p in pipelines
                ],
            )
            conn.execute("DELETE FROM workers WHERE lease_until < ?", (time.time() - 3600,))

    def unregister_worker(self, owner: Owner) -> None:
        with self.tx(Scope(own=True)) as conn:
            conn.execute("DELETE FROM workers WHERE instance = ?", (owner.instance,))

    def _hand_over(
        self, conn: sqlite3.Connection, rec: RunRecord, why: str, now: float, gone: GoneCheck
    ) -> bool:
        """A pending run whose starter is gone goes to a live worker serving its pipeline, if
        there is one (it never started, so nothing of it ran): True if handed over."""
        if rec.target == "worker":
            return False
        rows = conn.execute(
            "SELECT host, pid, started, instance, ns, lease_until FROM workers "
            "WHERE pipeline = ? AND lease_until > ?",
            (rec.pipeline, now),
        ).fetchall()
        if not any(gone(Owner(h, p, s, i, ns), lease, now) is None for h, p, s, i, ns, lease in rows):
            return False
        cur = conn.execute(
            "UPDATE runs SET target = 'worker', owner_host = NULL, owner_pid = NULL, "
            "owner_started = NULL, owner_instance = NULL, owner_ns = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND status = 'pending' AND owner_instance IS ?",
            (now, rec.id, rec.owner.instance if rec.owner else None),
        )
        if cur.rowcount != 1:
            return False
        self._event(conn, rec, "handed_over", {"to": "worker", "reason": why}, now)
        return True

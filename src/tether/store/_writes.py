"""The writes of a run's owner: claims, progress, checkpoints, retries and its end."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from .. import codec
from ..codec import dumps
from ..model import Owner, RunRecord, Status
from ._reads import _AHEAD, _ROOM
from ._rows import _RUN_COLS, ACTIVE, FlushItem, Queued, RowTaken, Scope, _files, _num, _text
from ._starts import _Starts

_MAX_TRY_TRACEBACK = 20_000
# a step's checkpoint row alone, written only while the run runs under the owner (?5): the fence
# and the write in one statement
_LEAN_CHECKPOINT = (
    "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) SELECT ?1, ?2, ?3, ?4 WHERE EXISTS "
    "(SELECT 1 FROM runs WHERE id = ?1 AND status = 'running' AND owner_instance = ?5)"
)


class _Writes(_Starts):
    @staticmethod
    def _progress(
        conn: sqlite3.Connection,
        item: FlushItem,
        seq: int,
        now: float,
        more: str = "",
        args: Sequence[Any] = (),
    ) -> None:
        """Write ``item``'s progress and ``seq`` (the run's last event) and, with ``more``, other
        columns (``", name = ?, ..."``, their values in ``args``)."""
        conn.execute(
            "UPDATE runs SET phase = ?, phases = ?, phases_done = ?, done = ?, total = ?, message = ?, "
            f"updated_at = ?, last_seq = ?{more} WHERE id = ?",
            (
                _text(item.phase),
                dumps(item.phases) if item.phases else "[]",
                dumps(item.phases_done) if item.phases_done else "[]",
                _num(item.done),
                _num(item.total),
                _text(item.message),
                now,
                seq,
                *args,
                item.run_id,
            ),
        )

    def claim_next(self, owner: Owner, pipelines: Sequence[str], lease_s: float) -> RunRecord | None:
        """A worker claims the oldest pending detached run of one of ``pipelines``, if any."""
        if not pipelines:
            return None
        marks = ",".join("?" * len(pipelines))
        while True:  # a claim lost to another worker is no reason to stop: try the next run
            rows = (
                self.conn()
                .execute(  # only runs whose pipeline's concurrency has room
                    f"SELECT id FROM runs WHERE {_ROOM} AND status = 'pending' AND {ACTIVE} "
                    "AND target = 'worker' "  # +created_at: the order may not pick runs_pipeline
                    f"AND pipeline IN ({marks}) ORDER BY +created_at, rowid LIMIT 16",
                    [time.time(), *pipelines],
                )
                .fetchall()
            )
            if not rows:
                return None
            lost = False
            for (run_id,) in rows:
                try:  # never wait for a run another worker is claiming: take the next one
                    rec = self.claim(run_id, owner, lease_s, target="worker", skip_locked=True)
                except RowTaken:
                    continue
                if isinstance(rec, RunRecord):
                    return rec
                lost = lost or rec is None
            if not lost:  # each one waits for its pipeline's limit: nothing to claim now
                return None

    def claim(
        self,
        run_id: str,
        owner: Owner,
        lease_s: float,
        target: str | None = None,
        skip_locked: bool = False,
    ) -> RunRecord | Queued | None:
        """pending -> running, only for the run's target (process, or 'worker'). None if not
        claimable; ``Queued`` if its pipeline's ``concurrency`` has no room for it yet, or older
        runs of the pipeline wait before it (start order, across processes). ``skip_locked``: raise
        RowTaken rather than wait while another transaction holds the run (PostgreSQL)."""
        now = time.time()
        with self.tx(Scope(claim=run_id, skip_locked=skip_locked)) as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'running', started_at = ?, updated_at = ?, "
                "owner_host = ?, owner_pid = ?, owner_started = ?, owner_instance = ?, "
                "owner_ns = ?, lease_until = ?, last_seq = last_seq + 1, tries = tries + 1, "
                "retry_at = NULL, deadline = ? + timeout "
                f"WHERE id = ? AND status = 'pending' AND target = ? AND {_ROOM}",
                (
                    now,
                    now,
                    owner.host,
                    owner.pid,
                    owner.started,
                    owner.instance,
                    owner.ns,
                    now + lease_s,
                    now,
                    run_id,
                    target or owner.instance,
                ),
            )
            if cur.rowcount != 1:
                return self._queued(conn, run_id, target or owner.instance, now)
            rec = self._rec(conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone())
            self._append(
                conn,
                run_id,
                rec.last_seq - 1,
                [(now, "started", None, dumps({"pid": owner.pid, "host": owner.host}))],
            )
            return rec

    def flush(
        self, items: Sequence[FlushItem], owner: Owner, lease_until: float | None
    ) -> tuple[set[str], set[str]]:
        """Persist progress and events of runs ``owner`` executes, in one transaction.

        Returns (runs no longer ours, runs with a cancel request).
        """
        now = time.time()
        lost: set[str] = set()
        with self.tx(Scope(runs=[it.run_id for it in items], own=True)) as conn:
            for it in items:
                row = conn.execute(
                    "SELECT last_seq FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                    (it.run_id, owner.instance),
                ).fetchone()
                if row is None:
                    lost.add(it.run_id)
                    continue
                seq = self._append(conn, it.run_id, row[0], it.events) if it.events else row[0]
                self._progress(conn, it, seq, now)
            if lease_until is not None:
                conn.execute(
                    f"UPDATE runs SET lease_until = ? WHERE owner_instance = ? AND {ACTIVE}",
                    (lease_until, owner.instance),
                )
            cancels = {
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM runs WHERE status = 'running' AND {ACTIVE} "
                    "AND owner_instance = ? AND cancel_requested = 1",
                    (owner.instance,),
                )
            }
        return lost, cancels

    def finish(
        self,
        item: FlushItem,
        owner: Owner,
        status: Status,
        *,
        result_json: str | None,
        error: dict[str, Any] | None,
    ) -> bool:
        """running -> terminal, with the last progress and events. False if no longer ours."""
        now = time.time()
        data: dict[str, Any] = {}
        if error is not None:
            data = {"type": error.get("type"), "message": error.get("message")}
        files = self._put_files(result_json)
        with self.tx(Scope(runs=[item.run_id])) as conn:
            last_seq = self._fence(conn, item.run_id, owner, files)
            if last_seq is None:
                return False
            events = [*item.events, (now, str(status), item.phase, dumps(data))]
            seq = self._append(conn, item.run_id, last_seq, events)
            self._progress(
                conn,
                item,
                seq,
                now,
                ", status = ?, result = ?, error = ?, ended_at = ?",
                (str(status), result_json, dumps(error) if error else None, now),
            )
        return True

    def put_checkpoint(self, item: FlushItem | str, owner: Owner, name: str, value_json: str) -> bool:
        """A step's checkpoint with the run's pending progress and events, in one transaction
        (a ``checkpoint`` event follows them); given the run's id alone, the checkpoint row
        alone (one page: the runner buffers its event when nothing else changed). False if the
        run is no longer ours. The files an encoded value carries (codec.Encoded) are written
        first."""
        now = time.time()
        if isinstance(item, str) and not _files(value_json):  # one statement, its own commit
            return self.write_run(item, _LEAN_CHECKPOINT, (item, name, value_json, now, owner.instance)) == 1
        run_id = item if isinstance(item, str) else item.run_id
        files = self._put_files(value_json)
        with self.tx(Scope(runs=[run_id])) as conn:
            last_seq = self._fence(conn, run_id, owner, files)
            if last_seq is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) VALUES (?, ?, ?, ?)",
                (run_id, name, value_json, now),
            )
            if not isinstance(item, str):
                events = [*item.events, (now, "checkpoint", item.phase, dumps({"name": name}))]
                seq = self._append(conn, run_id, last_seq, events)
                self._progress(conn, item, seq, now)
        return True

    def put_checkpoints(self, run_id: str, owner: Owner, items: Sequence[tuple[str, str]]) -> bool:
        """Store several (name, JSON) checkpoints at once (ctx.map items); no events."""
        now = time.time()
        files = self._put_files(*(text for _, text in items))
        with self.tx(Scope(runs=[run_id])) as conn:
            if self._fence(conn, run_id, owner, files) is None:
                return False
            conn.executemany(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) VALUES (?, ?, ?, ?)",
                [(run_id, n, v, now) for n, v in items],
            )
        return True

    def _put_files(self, *values: str | None) -> dict[str, Any]:
        """Before an owner's write that stores ``values``: the files they carry (codec.Encoded),
        written now, outside the write lock (``_fence`` checks them again inside)."""
        files = _files(*values)
        if files:
            self.files.put(files)
        return files

    def _fence(
        self, conn: sqlite3.Connection, run_id: str, owner: Owner, files: dict[str, Any]
    ) -> int | None:
        """First in an owner's write transaction: ``files`` written again if a ``tether gc``
        removed them meanwhile, then the run's ``last_seq`` while it runs under ``owner``, or
        None (no longer ours: write nothing)."""
        if files:
            self.files.ensure(files)
        row = conn.execute(
            "SELECT last_seq FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
            (run_id, owner.instance),
        ).fetchone()
        return None if row is None else int(row[0])

    def collect_files(self) -> tuple[int, int]:
        """Remove the value files no run or checkpoint refers to (``tether gc``), in a write
        transaction so that no write can commit a reference meanwhile (writers check their files
        again inside theirs). Returns (files removed, bytes freed)."""
        if self.files.empty():
            return 0, 0
        with self.tx() as conn:
            referenced: set[str] = set()
            for sql in (
                "SELECT result FROM runs WHERE instr(result, ?) > 0",
                "SELECT value FROM checkpoints WHERE instr(value, ?) > 0",
            ):
                for (text,) in conn.execute(sql, (codec.TAG_TEXT,)):
                    referenced |= codec.references(text)
            return self.files.collect(referenced)

    def _queued(self, conn: sqlite3.Connection, run_id: str, target: str, now: float) -> Queued | None:
        """After a claim that changed nothing: Queued if the run waits for its pipeline's limit
        (a ``queued`` event the first time), else None."""
        row = conn.execute(
            f"SELECT concurrency, last_seq, phase, {_AHEAD} FROM runs WHERE id = ? "
            "AND status = 'pending' AND target = ?",
            (now, run_id, target),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        concurrency, last_seq, phase, ahead = row
        first = (
            conn.execute(
                "SELECT 1 FROM events WHERE run_id = ? AND kind = 'queued' LIMIT 1", (run_id,)
            ).fetchone()
            is None
        )
        if first:
            seq = self._append(
                conn,
                run_id,
                last_seq,
                [(now, "queued", phase, dumps({"ahead": ahead, "concurrency": concurrency}))],
            )
            conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq, run_id))
        return Queued(ahead)

    def retry_wait(self, item: FlushItem, owner: Owner, error: dict[str, Any], delay: float) -> bool:
        """A try failed and another follows after ``delay`` s: its error kept in a ``retry``
        event, ``retry_at`` set. False if the run is no longer ours."""
        now = time.time()
        with self.tx(Scope(runs=[item.run_id])) as conn:
            row = conn.execute(
                "SELECT last_seq, tries, max_tries FROM runs WHERE id = ? AND status = 'running' "
                "AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return False
            last_seq, tries, max_tries = row
            data = {
                "try": tries,
                "of": max_tries,
                "type": error.get("type"),
                "message": error.get("message"),
                "traceback": (error.get("traceback") or "")[-_MAX_TRY_TRACEBACK:],
                "delay": delay,
                "at": now + delay,
            }
            seq = self._append(
                conn, item.run_id, last_seq, [*item.events, (now, "retry", item.phase, dumps(data))]
            )
            self._progress(conn, item, seq, now, ", retry_at = ?, deadline = NULL", (now + delay,))
        return True

    def next_try(self, item: FlushItem, owner: Owner) -> RunRecord | None:
        """The next try starts now (a ``try`` event). None if the run is no longer ours."""
        now = time.time()
        with self.tx(Scope(runs=[item.run_id])) as conn:
            row = conn.execute(
                "SELECT last_seq, tries FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return None
            seq = self._append(
                conn,
                item.run_id,
                row[0],
                [*item.events, (now, "try", item.phase, dumps({"try": row[1] + 1}))],
            )
            self._progress(
                conn, item, seq, now, ", tries = tries + 1, retry_at = NULL, deadline = ? + timeout", (now,)
            )
            return self._rec(
                conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (item.run_id,)).fetchone()
            )

    def park(self, run_id: str, owner: Owner, parked: bool) -> None:
        """A parent waits for a child (parked: not counted by its pipeline's concurrency) or
        goes on."""
        with self.tx(Scope(runs=[run_id])) as conn:
            conn.execute(
                "UPDATE runs SET parked = ? WHERE id = ? AND owner_instance = ? AND status = 'running'",
                (int(parked), run_id, owner.instance),
            )

"""Runs made: start() (what a call means for its key), new attempts, and their rows."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..codec import dumps
from ..errors import RunActive
from ..model import Control, Owner, RunRecord, Status, error_dict
from ..policy import Attach, Conflict, StartRequest, decide, lookback, other_code
from ._reads import _Reads
from ._rows import Scope, StartOutcome, _text
from .protocol import GoneCheck


class _Starts(_Reads):
    # -- writes ------------------------------------------------------------------------------

    @staticmethod
    def _append(
        conn: sqlite3.Connection,
        run_id: str,
        last_seq: int,
        events: Sequence[tuple[float, str, str | None, str]],
    ) -> int:
        conn.executemany(
            "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, last_seq + i, ts, kind, _text(phase), data)
                for i, (ts, kind, phase, data) in enumerate(events, 1)
            ],
        )
        return last_seq + len(events)

    def _event(
        self, conn: sqlite3.Connection, rec: RunRecord, kind: str, data: dict[str, Any], now: float
    ) -> int:
        seq = self._append(conn, rec.id, rec.last_seq, [(now, kind, rec.phase, dumps(data))])
        conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq, rec.id))
        return seq

    def _interrupt(self, conn: sqlite3.Connection, rec: RunRecord, reason: str, now: float) -> bool:
        error = error_dict("Interrupted", f"run interrupted: {reason}")
        cur = conn.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = ?, updated_at = ?, error = ? "
            "WHERE id = ? AND status = ? AND owner_instance IS ?",
            (now, now, dumps(error), rec.id, str(rec.status), rec.owner.instance if rec.owner else None),
        )
        if cur.rowcount != 1:
            return False
        # the row's last event as of now, the row ours: on PostgreSQL ``rec`` may be older than
        # a flush that committed while this transaction waited for the row
        (last_seq,) = conn.execute("SELECT last_seq FROM runs WHERE id = ?", (rec.id,)).fetchone()
        seq = self._append(
            conn, rec.id, last_seq, [(now, "interrupted", rec.phase, dumps({"reason": reason}))]
        )
        conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq, rec.id))
        return True

    def start(
        self,
        *,
        pipeline: str,
        key: str,
        params_json: str,
        version: str | None,
        phases: list[str],
        policy: str,
        owner: Owner,
        lease_s: float,
        gone: GoneCheck,
        detach: bool = False,
        max_auto_resumes: int = 3,
        control: Control | None = None,
        code: str | None = None,
        claim: bool = False,
    ) -> StartOutcome:
        """Decide (``tether.policy.decide``) and apply, in one transaction, what a start() call
        means for ``key``.

        ``control``: the pipeline's control options, and the parent run when a body starts it.
        ``version`` and ``code`` (the body's fingerprint) say which code asks. ``claim``: a run
        this call creates is claimed by ``owner`` in the same transaction (see ``_create``)."""
        request = StartRequest(pipeline, key, params_json, version, code, policy, control, max_auto_resumes)
        now = time.time()
        with self.tx(Scope(keys=[key])) as conn:
            existing = self._newest(conn, key, lookback(request))
            recovered = None
            if existing and existing[0].status.active:
                latest = existing[0]
                reason = gone(latest.owner, latest.lease_until, now)
                if reason:
                    # read again either way: on PostgreSQL the run may have ended meanwhile
                    # (its row was another writer's while this one waited for it)
                    if self._interrupt(conn, latest, reason, now):
                        recovered = reason
                    existing = self._newest(conn, key, lookback(request))
            decision = decide(existing, request)
            if isinstance(decision, Attach):
                return StartOutcome(decision.run, False, None, recovered, decision.other_code)
            if isinstance(decision, Conflict):
                return StartOutcome(decision.run, False, decision, recovered)
            rec = self._create(
                conn,
                pipeline,
                key,
                decision.attempt,
                params_json,
                version,
                phases,
                owner,
                lease_s,
                now,
                decision.created_by,
                decision.resumed_from,
                detach,
                control,
                code=decision.code,
                changed=decision.changed,
                claim=claim and not detach and not decision.give_up,
            )
            if decision.give_up:
                rec = self._give_up(conn, rec, max_auto_resumes, now)
            return StartOutcome(rec, True, None, recovered)

    def _newest(self, conn: sqlite3.Connection, key: str, n: int) -> list[RunRecord]:
        """The ``n`` newest attempts of ``key``, newest first."""
        return self._runs("key = ? ORDER BY attempt DESC LIMIT ?", (key, n), conn)

    def new_attempt(
        self,
        run_id: str,
        *,
        owner: Owner,
        lease_s: float,
        resume: bool,
        gone: GoneCheck,
        control: Control | None = None,
        code: tuple[str | None, str | None] | None = None,
    ) -> RunRecord:
        """A new attempt of ``run_id``'s key (rerun, or resume reusing its checkpoints).

        ``control``: the pipeline's options as defined now (default: those of ``run_id``); the new
        attempt keeps ``run_id``'s parent. ``code``: ``(version, fingerprint)`` of the pipeline
        that will execute it, when known here; else the attempt records those of ``run_id``."""
        now = time.time()
        with self.tx(Scope(keys=[self.get(run_id).key])) as conn:  # a run's key never changes
            base = self.get(run_id)
            latest = self.latest(base.key, conn)
            assert latest is not None
            if latest.status.active:
                reason = gone(latest.owner, latest.lease_until, now)
                if not (reason and self._interrupt(conn, latest, reason, now)):
                    raise RunActive(
                        f"run {latest.id} (attempt {latest.attempt} of key {base.key!r}) is still "
                        f"{latest.status}; cancel it or wait for it to end before a new attempt."
                    )
            ctl = control or Control(
                max_tries=base.max_tries, timeout=base.timeout, concurrency=base.concurrency
            )
            ctl = Control(base.parent_id, (), ctl.max_tries, ctl.timeout, ctl.concurrency)
            version, fingerprint = code if code is not None else (base.version, base.code)
            return self._create(
                conn,
                base.pipeline,
                base.key,
                latest.attempt + 1,
                dumps(base.params),
                version,
                base.phases,
                owner,
                lease_s,
                now,
                "resume" if resume else "rerun",
                base.id if resume else None,
                detach=base.target == "worker",
                control=ctl,
                code=fingerprint,
                changed=other_code(base, version, fingerprint),
            )

    def _give_up(self, conn: sqlite3.Connection, rec: RunRecord, cap: int, now: float) -> RunRecord:
        error = error_dict(
            "ResumeCapReached",
            f"automatic resume stopped: {cap} resumed attempts in a row were interrupted "
            f"(max_auto_resumes={cap}), so the run may be crashing its process; fix the cause, "
            "then call run.resume() or start(..., policy='rerun')",
        )
        conn.execute(
            "UPDATE runs SET status = 'failed', ended_at = ?, updated_at = ?, error = ?, "
            "target = NULL WHERE id = ?",
            (now, now, dumps(error), rec.id),
        )
        self._event(conn, rec, "failed", {"type": error["type"], "message": error["message"]}, now)
        return self.get(rec.id)

    def _create(
        self,
        conn: sqlite3.Connection,
        pipeline: str,
        key: str,
        attempt: int,
        params_json: str,
        version: str | None,
        phases: list[str],
        owner: Owner,
        lease_s: float,
        now: float,
        created_by: str,
        resumed_from: str | None,
        detach: bool = False,
        control: Control | None = None,
        code: str | None = None,
        changed: str | None = None,
        claim: bool = False,
    ) -> RunRecord:
        """Insert a new attempt, pending for ``owner`` (or a worker: ``detach``), with its
        ``created`` event; with ``claim``, already claimed by ``owner`` as ``claim()`` would
        (running, its first try started, a ``started`` event): one commit fewer for a run this
        process executes at once."""
        run_id = os.urandom(6).hex()  # what secrets.token_hex does, without its imports
        phases_done: list[str] = []
        control = control or _NO_CONTROL
        tries = 0
        if resumed_from is not None:
            prev = self.get(resumed_from)
            phases_done = prev.phases_done
            tries = prev.tries  # a resumed attempt goes on counting its lineage's tries
            conn.execute(
                "INSERT INTO checkpoints (run_id, name, value, ts) "
                "SELECT ?, name, value, ts FROM checkpoints WHERE run_id = ?",
                (run_id, resumed_from),
            )
        conn.execute(
            "INSERT INTO runs (id, key, attempt, pipeline, version, params, status, phases, "
            "phases_done, created_at, updated_at, owner_host, owner_pid, owner_started, "
            "owner_instance, target, lease_until, resumed_from, last_seq, created_by, owner_ns, "
            "parent_id, tries, max_tries, timeout, concurrency, code, started_at, deadline) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                key,
                attempt,
                pipeline,
                version,
                params_json,
                "running" if claim else "pending",
                dumps(phases),
                dumps(phases_done),
                now,
                now,
                None if detach else owner.host,
                None if detach else owner.pid,
                None if detach else owner.started,
                None if detach else owner.instance,
                "worker" if detach else owner.instance,
                None if detach else now + lease_s,
                resumed_from,
                2 if claim else 1,
                created_by,
                None if detach else owner.ns,
                control.parent,
                tries + 1 if claim else tries,
                control.max_tries,
                control.timeout,
                control.concurrency,
                code,
                now if claim else None,
                now + control.timeout if claim and control.timeout is not None else None,
            ),
        )
        data: dict[str, Any] = {"by": created_by}
        if changed:
            data["code_changed"] = changed
        if detach:
            data["detached"] = True
        if resumed_from:
            data["resumed_from"] = resumed_from
        if control.parent:
            data["parent"] = control.parent
        events = [(now, "created", None, dumps(data))]
        if claim:  # as claim() writes it
            events.append((now, "started", None, dumps({"pid": owner.pid, "host": owner.host})))
        self._append(conn, run_id, 0, events)
        # the row just written, as a read of it gives it back (REAL columns as floats), without
        # reading it
        return RunRecord(
            id=run_id,
            key=key,
            attempt=attempt,
            pipeline=pipeline,
            version=version,
            params_json=params_json,
            status=Status.RUNNING if claim else Status.PENDING,
            phase=None,
            phases=list(phases),
            done=0,
            total=None,
            message=None,
            error_json=None,
            result_json=None,
            created_at=now,
            started_at=now if claim else None,
            ended_at=None,
            updated_at=now,
            owner=None if detach else owner,
            target="worker" if detach else owner.instance,
            lease_until=None if detach else now + lease_s,
            cancel_requested=False,
            resumed_from=resumed_from,
            last_seq=len(events),
            phases_done=list(phases_done),
            created_by=created_by,
            code=code,
            parent_id=control.parent,
            tries=tries + 1 if claim else tries,
            max_tries=control.max_tries,
            timeout=None if control.timeout is None else float(control.timeout),
            deadline=now + control.timeout if claim and control.timeout is not None else None,
            concurrency=control.concurrency,
            files=self.files,
        )


_NO_CONTROL = Control()

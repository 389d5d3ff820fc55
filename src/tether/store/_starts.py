"""Runs made: start() (what a call means for its key), new attempts, and their rows."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..codec import dumps
from ..errors import RunActive
from ..model import Control, Owner, RunRecord, Status, raw_text
from ._reads import _Reads
from ._rows import _CODE_AT, _PARAMS_AT, _RUN_COLS, _VERSION_AT, StartOutcome, _text
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
        error = {"type": "Interrupted", "message": f"run interrupted: {reason}", "traceback": ""}
        cur = conn.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = ?, updated_at = ?, error = ? "
            "WHERE id = ? AND status = ? AND owner_instance IS ?",
            (now, now, dumps(error), rec.id, str(rec.status), rec.owner.instance if rec.owner else None),
        )
        if cur.rowcount != 1:
            return False
        self._event(conn, rec, "interrupted", {"reason": reason}, now)
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
    ) -> StartOutcome:
        """Decide, in one transaction, what a start() call means for ``key``.

        ``control``: the pipeline's control options, and the parent run when a body starts it.
        ``version`` and ``code`` (the body's fingerprint) say which code asks: an ended run made
        by other code is never returned (a new attempt is made instead); an active one is, with
        ``other_code`` saying so (see ``_other_code``)."""
        now = time.time()
        # fast path, no write: an ended run returned as it is (terminal statuses never change);
        # the params and code compared as stored text first
        row = self._latest_row(key)
        latest = None if row is None else self._rec(row)
        if (
            row is not None
            and latest is not None
            and latest.status.terminal
            and _same_code(row[_VERSION_AT], row[_CODE_AT], version, code)
            and _difference(latest, params_json, pipeline, row[_PARAMS_AT]) is None
            and (
                (policy == "fail" or (policy == "attach" and not _child_resume(latest, control)))
                or (policy == "resume" and (latest.status == Status.SUCCEEDED or _capped(latest)))
            )
        ):
            return StartOutcome(latest, False)
        with self.tx() as conn:
            latest = self.latest(key, conn)
            recovered = None
            if latest is not None and latest.status.active:
                reason = gone(latest.owner, latest.lease_until, now)
                if reason and self._interrupt(conn, latest, reason, now):
                    recovered = reason
                    latest = self.latest(key, conn)
            if latest is None:
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start",
                    None,
                    detach,
                    control,
                    code=code,
                )
                return StartOutcome(rec, True)
            assert latest is not None
            mismatch = _difference(latest, params_json, pipeline)
            changed = _other_code(latest, version, code)
            if latest.status.active:
                if mismatch:
                    return StartOutcome(
                        latest, False, f"the {latest.status} run for key {key!r} has {mismatch}", recovered
                    )
                if policy == "fail":
                    return StartOutcome(
                        latest,
                        False,
                        f"a run for key {key!r} is already {latest.status} (id {latest.id})",
                        recovered,
                    )
                return StartOutcome(latest, False, None, recovered, other_code=changed)
            # the latest attempt has ended
            resumable = latest.status != Status.SUCCEEDED and not _capped(latest)
            if mismatch and mismatch.startswith("pipeline"):
                return StartOutcome(latest, False, f"the run for key {key!r} has {mismatch}", recovered)
            if policy == "resume" and changed and not mismatch:
                resumable = True  # the code changed: resume it, cap or success notwithstanding
            if policy == "rerun" or (policy == "resume" and resumable):
                if mismatch and policy == "resume":
                    return StartOutcome(
                        latest,
                        False,
                        f"the run for key {key!r} has {mismatch}; resume continues the same work",
                        recovered,
                    )
                resumed = latest.id if policy == "resume" else None
                by = f"start:{policy}" + (":code" if changed and policy == "resume" else "")
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    by,
                    resumed,
                    detach,
                    control,
                    code=code,
                    changed=changed,
                )
                if policy == "resume" and not changed and self._auto_resumes(conn, key) > max_auto_resumes:
                    rec = self._give_up(conn, rec, max_auto_resumes, now)
                return StartOutcome(rec, True, None, recovered)
            if policy == "attach" and not mismatch and _child_resume(latest, control):
                # the parent's new try (or resumed attempt) goes on where its child stopped
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start:child",
                    latest.id,
                    detach,
                    control,
                )
                return StartOutcome(rec, True, None, recovered)
            if mismatch:
                return StartOutcome(
                    latest, False, f"the {latest.status} run for key {key!r} has {mismatch}", recovered
                )
            if changed:  # never an ended run of other code as if it were this code's
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start:code",
                    None,
                    detach,
                    control,
                    code=code,
                    changed=changed,
                )
                return StartOutcome(rec, True, None, recovered)
            return StartOutcome(latest, False, None, recovered)

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
        with self.tx() as conn:
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
                changed=_other_code(base, version, fingerprint),
            )

    @staticmethod
    def _auto_resumes(conn: sqlite3.Connection, key: str) -> int:
        """Automatic resumes in a row for ``key``: the new one plus those that were interrupted."""
        rows = conn.execute(
            "SELECT created_by, status FROM runs WHERE key = ? ORDER BY attempt DESC", (key,)
        ).fetchall()
        count = 1
        for created_by, status in rows[1:]:
            if created_by != "start:resume" or status != "interrupted":
                break
            count += 1
        return count

    def _give_up(self, conn: sqlite3.Connection, rec: RunRecord, cap: int, now: float) -> RunRecord:
        error = {
            "type": "ResumeCapReached",
            "traceback": "",
            "message": (
                f"automatic resume stopped: {cap} resumed attempts in a row were interrupted "
                f"(max_auto_resumes={cap}), so the run may be crashing its process; fix the cause, "
                "then call run.resume() or start(..., policy='rerun')"
            ),
        }
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
    ) -> RunRecord:
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
            "parent_id, tries, max_tries, timeout, concurrency, code) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, "
            "?, ?, ?, ?, ?, ?)",
            (
                run_id,
                key,
                attempt,
                pipeline,
                version,
                params_json,
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
                created_by,
                None if detach else owner.ns,
                control.parent,
                tries,
                control.max_tries,
                control.timeout,
                control.concurrency,
                code,
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
        self._append(conn, run_id, 0, [(now, "created", None, dumps(data))])
        row = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._rec(row)


def _capped(rec: RunRecord) -> bool:
    """The attempt that recorded the end of automatic resumes (only a manual resume goes on)."""
    return rec.status == Status.FAILED and (rec.error or {}).get("type") == "ResumeCapReached"


def _same_code(stored_version: Any, stored_code: Any, version: str | None, code: str | None) -> bool:
    """Whether a stored run was made by the code asking (versions and fingerprints as text).

    An explicit ``version`` pins the code: equal versions are the same code whatever the
    fingerprints. A fingerprint unknown on either side (a run recorded before tether kept them,
    a callable without code) is taken as the same code."""
    if stored_version != version:
        return False
    return version is not None or stored_code is None or code is None or stored_code == code


def _other_code(rec: RunRecord, version: str | None, code: str | None) -> str | None:
    """How the code of a start() call differs from the stored run's, or None if it is the same."""
    if _same_code(rec.version, rec.code, version, code):
        return None
    if rec.version != version:
        return f"version {raw_text(rec.version)} -> {raw_text(version)}"
    return f"code {rec.code} -> {code}"


def _difference(
    rec: RunRecord, params_json: str, pipeline: str | None = None, stored_json: str | None = None
) -> str | None:
    """A readable description of how a new start() differs from a stored run, or None.

    ``stored_json``: the run's params column as stored; both are canonical JSON, so equal text
    means equal params (the common case of an idempotent start, without decoding). The text names
    at most ``shown`` differences (then "and N more"), each name and value clipped to ``clip``
    characters, so that a conflict over thousands of ``**kwargs`` stays a readable line."""
    shown, clip = 5, 60

    def cut(text: str) -> str:
        return text if len(text) <= clip else text[: clip - 1] + "…"

    if pipeline is not None and rec.pipeline != pipeline:
        return f"pipeline {cut(repr(rec.pipeline))}, not {cut(repr(pipeline))}"
    if stored_json is not None and stored_json == params_json:
        return None
    new = json.loads(params_json)
    if new == rec.params:
        return None
    parts: list[str] = []
    more = 0
    for name in sorted(set(new) | set(rec.params)):
        if name in new and name in rec.params and new[name] == rec.params[name]:
            continue
        if len(parts) == shown:
            more += 1
            continue
        if name not in rec.params:
            parts.append(f"no parameter {cut(repr(name))}")
        elif name not in new:
            parts.append(f"parameter {cut(repr(name))}={cut(dumps(rec.params[name]))} that this call lacks")
        else:
            parts.append(f"{cut(name)}={cut(dumps(rec.params[name]))}, not {cut(dumps(new[name]))}")
    if more:
        parts.append(f"and {more:,} more")
    return "different params: " + "; ".join(parts)


_NO_CONTROL = Control()


def _child_resume(latest: RunRecord, control: Control | None) -> bool:
    """A child started (policy "attach") from the body of a run of the lineage that started it
    before, whose run ended badly: resumed (within the parent's retry or resume), not returned."""
    return (
        control is not None
        and latest.parent_id is not None
        and latest.parent_id in control.lineage
        and latest.status.terminal
        and latest.status != Status.SUCCEEDED
        and not _capped(latest)
    )

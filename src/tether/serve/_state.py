"""What the web app sends: a run's state (the panel's snapshot plus children and attempts), its
events as JSON, and the rows of the run list. Synchronous: called on the hub's reader threads.

Reads go through ``Run`` and the store methods the CLI and the panel's reader use (``get``,
``events``, ``tail``, ``children``, ``attempts``, ``list_runs``, ``recover``); no SQL here.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from .. import owner
from .. import workspace as _workspace
from ..errors import StoreError
from ..model import Event, RunRecord, log_text
from ..run import params_text
from ..store import Store
from ..view.reader import CATCH_UP_LIMIT, RateMeter
from ..view.snapshot import LOG_LINES, MAX_LINE, build, cancel_origin, same, waiting_text

__all__ = ["RunFeedReader", "brief", "event_json", "list_runs"]

EXTRAS_EVERY = 1.0  # seconds between reads of a running run's children and attempts
MAX_KIDS = 200  # children listed in a state (the others are counted)
_CANCEL_KINDS = ("cancel_requested", "cancelled")


def _clip(text: str, limit: int = MAX_LINE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_json(ev: Event) -> dict[str, Any]:
    """One event as the page gets it: a log line's text, or the event's data as compact JSON."""
    if ev.kind == "log":
        text = log_text(ev)
    else:
        text = json.dumps(ev.data, ensure_ascii=False, default=str, separators=(",", ":"))
    return {"seq": ev.seq, "ts": ev.ts, "kind": ev.kind, "phase": ev.phase, "text": _clip(text)}


def brief(rec: RunRecord) -> dict[str, Any]:
    """A run in a list (children, attempts, the run list): no log, no result value."""
    percent = None
    try:
        if rec.total:
            percent = max(0.0, min(100.0, 100.0 * float(rec.done) / float(rec.total)))
    except (TypeError, ValueError):
        pass
    params, bad = rec.decoded("params")
    return {
        "id": rec.id,
        "pipeline": rec.pipeline,
        "attempt": rec.attempt,
        "status": rec.status_text,
        "phase": rec.phase,
        "done": rec.done,
        "total": rec.total,
        "percent": percent,
        "params": "(damaged)" if bad is not None else params_text(params),
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "created_by": rec.created_by,
        "parent": rec.parent_id,
    }


class RunFeedReader:
    """Reads one run for the hub: its record each time, and only the events it has not seen.

    Like view.reader.RunReader (whose rate meter it uses), but it hands the new events back,
    because the web page streams every event, not only the tail. ``reads`` counts store reads.
    """

    def __init__(self, store: Store, run_id: str, ring: int) -> None:
        self.run = _workspace.default().run(store, run_id)  # RunNotFound for an unknown id
        self.ring = ring
        self.seq = 0
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.cancel: dict[str, Any] | None = None
        self.meter = RateMeter()
        self.reads = 1
        self.state: dict[str, Any] | None = None
        self._extras: dict[str, Any] = {"children": [], "children_more": 0, "attempts": [], "newer": None}
        self._extras_at = float("-inf")
        self._extras_seq = -1

    def read(self) -> tuple[dict[str, Any] | None, list[Event], bool]:
        """``(state or None if unchanged, new events, jumped)``; jumped: events before the new
        ones were skipped (far behind: only the tails were read)."""
        run, store = self.run, self.run.store
        rec = run.snapshot()
        self.reads += 1
        events: list[Event] = []
        jumped = False
        bound = rec.last_seq  # rows committed after the record was read wait for the next read
        if bound > self.seq:
            self.reads += 1
            if self.seq == 0 or bound - self.seq > max(self.ring, CATCH_UP_LIMIT):
                jumped = True
                self._tails(store, rec)
            else:
                events = [
                    e for e in store.events(run.id, after=self.seq, limit=bound - self.seq) if e.seq <= bound
                ]
                for ev in events:
                    self._take(ev)
            self.seq = bound
        now = time.time()
        if rec.status.active:
            self.meter.add(rec, now)
        moved = rec.last_seq != self._extras_seq
        if moved and (rec.status.terminal or now - self._extras_at >= EXTRAS_EVERY):
            self._read_extras(rec, now)
        state = self._state(rec, now)
        if self.state is not None and not jumped and same(state, self.state):
            return None, events, jumped
        self.state = state
        return state, events, jumped

    def _tails(self, store: Store, rec: RunRecord) -> None:
        bound = rec.last_seq
        self.log.clear()
        self.log.extend(_clip(log_text(e)) for e in store.tail(rec.id, "log", LOG_LINES) if e.seq <= bound)
        if rec.cancel_requested or str(rec.status) == "cancelled":
            for kind in _CANCEL_KINDS:
                self.reads += 1
                for ev in store.tail(rec.id, kind, 1):
                    if ev.seq <= bound:
                        self._take(ev)

    def _take(self, ev: Event) -> None:
        if ev.kind == "log":
            self.log.append(_clip(log_text(ev)))
        elif ev.kind in _CANCEL_KINDS and self.cancel is None:
            origin = ev.data.get("origin")
            if isinstance(origin, dict):
                self.cancel = {"origin": cancel_origin(origin, {}), "at": ev.ts}

    def _read_extras(self, rec: RunRecord, now: float) -> None:
        kids = self.run.children()
        attempts = self.run.attempts()
        self.reads += 2
        latest = attempts[-1]._last if attempts else rec
        self._extras = {
            "children": [brief(k._last) for k in kids[:MAX_KIDS]],
            "children_more": max(0, len(kids) - MAX_KIDS),
            "attempts": [brief(a._last) for a in attempts],
            "newer": (
                {"id": latest.id, "attempt": latest.attempt, "status": latest.status_text}
                if latest.attempt > rec.attempt
                else None
            ),
        }
        self._extras_at, self._extras_seq = now, rec.last_seq

    def _state(self, rec: RunRecord, now: float) -> dict[str, Any]:
        extras = self._extras
        try:
            snap = build(
                rec,
                mode="poll",
                log=self.log,
                rate=self.meter.rate(now),
                now=now,
                newer=extras["newer"],
                cancel=self.cancel,
                # this process runs nothing: a pending run waits for a worker or its creator
                waiting=waiting_text(rec, str(self.run.store.path), None, False),
            )
        except StoreError as exc:  # a row no snapshot can be made of: say so, keep streaming
            snap = {
                "id": rec.id,
                "pipeline": rec.pipeline,
                "attempt": rec.attempt,
                "status": "damaged",
                "damaged": [_clip(str(exc))],
                "log": list(self.log),
                "now": now,
            }
        owner_ = rec.owner
        return {
            **snap,
            "seq": self.seq,
            "terminal": rec.status.terminal,
            "parent": rec.parent_id,
            "owner": None if owner_ is None else {"pid": owner_.pid, "host": owner_.host},
            "children": extras["children"],
            "children_more": extras["children_more"],
            "attempts": extras["attempts"],
        }


def list_runs(store: Store, limit: int, status: str | None, pipeline: str | None) -> list[dict[str, Any]]:
    """The run list (newest first), orphans marked interrupted on the way, as `tether ls` does."""
    recs = store.list_runs(pipeline=pipeline, status=status, limit=limit)
    if store.recover([r for r in recs if r.status.active], owner.gone_reason):
        recs = store.list_runs(pipeline=pipeline, status=status, limit=limit)
    return [brief(r) for r in recs]

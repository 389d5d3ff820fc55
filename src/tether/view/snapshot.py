"""The full snapshot a panel renders from (its static renderings are in :mod:`tether.view.render`).

A snapshot is a plain JSON dict built from a ``RunRecord`` plus what the reader gathered (log tail,
when the current phase started). The panel's JS renders only from it, never from a diff, so a page
reload or a rebinding shows the truth at once. No I/O here.

A snapshot is sent whole on every update, so every part of it is capped (see the MAX_* limits and
docs/panel.md): a run with 100,000 phases or a 50 MB log line still makes a snapshot of a few
tens of KiB. The text/plain rendering escapes terminal control characters; the text/html one
escapes every field.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from typing import Any

from ..errors import StoreError
from ..model import RunRecord, Status, raw_text
from ..run import params_text
from .render import (
    Snapshot,
    children_text,
    control_notes,
    fmt_duration,
    fmt_time,
    html_snapshot,
    notes,
    progress_text,
    stored_text,
    text_snapshot,
)
from .render import _hidden_text as _hidden_text  # watch.py's phases line

__all__ = [
    "Snapshot",
    "build",
    "cancel_origin",
    "child_entry",
    "children_text",
    "control_notes",
    "fmt_duration",
    "fmt_time",
    "html_snapshot",
    "notes",
    "phase_states",
    "percent_done",
    "progress_text",
    "same",
    "stored_text",
    "text_snapshot",
    "VOLATILE",
    "waiting_text",
]


LOG_LINES = 20
CONFIRM_RERUN_AFTER = 60.0  # seconds: Re-run of a run that took longer asks once
MAX_LINE = 500  # characters of one log line / message shown
MAX_TRACEBACK = 20_000
MAX_RESULT = 300
MAX_PHASES = 40  # phases listed; the others are counted (phases_hidden), around the current one
MAX_NAME = 200  # characters of a name shown: pipeline, phase, key, error type
MAX_ID = 64  # characters of a run id shown (tether's are 12)
MAX_DAMAGED = 10  # damaged columns named
MAX_PARAMS = 120  # characters of the params shown (each value clipped to 40 first)
MAX_PARAMS_FULL = 2000  # characters of the params in the tooltip
MAX_CHILDREN = 20  # children listed (the latest); the others are counted (children_hidden)
MAX_CHILD_PARAMS = 60  # characters of a child's params
MAX_TRY_ERRORS = 5  # earlier tries' errors listed (the latest); the others are counted
# keys that change with the clock alone; two snapshots equal but for these need not be re-sent
VOLATILE = frozenset({"now", "elapsed", "rate", "eta", "overdue"})
ETA_DRIFT = 5.0  # seconds (or 20 %) an ETA may move from the front end's countdown unsent
_FAILED_END = (Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def percent_done(rec: RunRecord) -> float | None:
    """The current phase's percent done, 0 to 100; None without a total. A total of 0 is 100 %
    (nothing to do is all done), and so is a succeeded run's, whatever its last phase counted."""
    if rec.total:
        return max(0.0, min(100.0, 100.0 * float(rec.done) / float(rec.total)))
    if rec.status == Status.SUCCEEDED or rec.total == 0:
        return 100.0
    return None


def phase_states(rec: RunRecord, limit: int | None = None) -> list[dict[str, str]]:
    """Every declared (then seen) phase with its state: done / current / upcoming / failed.

    With ``limit``, at most that many, around the current phase (see :func:`phase_window`)."""
    return phase_window(rec, limit)[0]


def phase_window(
    rec: RunRecord, limit: int | None = MAX_PHASES
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Phase states (at most ``limit``, the current phase among them, names clipped) and the
    number of phases left out before and after them."""
    names = rec.phases
    if rec.phase and rec.phase not in names:
        names = [*names, rec.phase]
    start, end = 0, len(names)
    if limit is not None and len(names) > limit:
        at = names.index(rec.phase) if rec.phase in names else _first_not_done(rec, names)
        start = max(0, min(at - limit // 2, len(names) - limit))
        end = start + limit
    done = set(rec.phases_done)
    out = []
    for name in names[start:end]:
        if name == rec.phase and rec.status.active:
            state = "current"
        elif name == rec.phase and rec.status == Status.CANCELLED and name not in done:
            state = "stopped"  # neutral: the user asked for it
        elif name == rec.phase and rec.status in _FAILED_END and name not in done:
            state = "failed"
        elif name in done:
            state = "done"
        else:
            state = "upcoming"
        out.append({"name": _clip(name, MAX_NAME) or "", "state": state})
    return out, {"before": start, "after": len(names) - end}


def _first_not_done(rec: RunRecord, names: list[str]) -> int:
    done = set(rec.phases_done)
    return next((i for i, name in enumerate(names) if name not in done), len(names) - 1)


def result_preview(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return _clip(text, MAX_RESULT) or ""


def actions(rec: RunRecord) -> dict[str, bool]:
    """Which buttons apply to the run as it is now."""
    ended = rec.status.terminal
    return {
        "cancel": rec.status.active,
        "rerun": ended,
        "resume": rec.status in _FAILED_END,
    }


def build(
    rec: RunRecord,
    *,
    mode: str,
    log: Sequence[str] = (),
    rate: float | None = None,
    now: float | None = None,
    stored: bool = False,
    newer: dict[str, Any] | None = None,
    cancel: dict[str, Any] | None = None,
    waiting: str | None = None,
    ahead: int | None = None,
    parent: dict[str, Any] | None = None,
    children: Sequence[RunRecord] = (),
    try_errors: Sequence[dict[str, Any]] = (),
) -> Snapshot:
    """The full snapshot of ``rec`` as a panel shows it in ``mode`` (stream | poll | static).

    ``rate``: items/s of the current phase from recent progress (see reader.RateMeter), or None;
    ``stored``: the run had ended when its handle was made (start() gave back a stored outcome);
    ``newer``: ``{id, attempt, status}`` of a newer attempt of the key; ``cancel``: ``{origin,
    at}``, where the cancel came from as text (:func:`cancel_origin`); ``waiting``: what a
    pending run waits for; ``ahead``: runs of its pipeline that start before this queued one
    (``concurrency=``); ``parent``: ``{id, pipeline, attempt}`` of the run whose body started
    it; ``children``: the runs its body started, oldest first; ``try_errors``: the ``data`` of
    its ``retry`` events (one per failed try that was retried), oldest first."""
    now = time.time() if now is None else now
    status = rec.status
    done, total = rec.done, rec.total
    percent = percent_done(rec)
    elapsed = None
    if rec.started_at is not None:
        elapsed = max(0.0, (rec.ended_at if rec.ended_at is not None else now) - rec.started_at)
    eta = None
    if status != Status.RUNNING or not rate or rate <= 0:
        rate = None
    elif total:
        eta = max(0.0, (float(total) - float(done)) / rate)
    # a damaged column is named in "damaged" (shown above everything else), not shown as a value
    damaged = list(rec.damaged)
    error = None
    err, bad = rec.decoded("error")
    if bad is not None:
        damaged.append(bad)
    elif err and status != Status.CANCELLED:  # a cancel is no error: its origin is shown instead
        error = {
            "type": _clip(str(err.get("type") or "Error"), MAX_NAME),
            "message": _clip(err.get("message") or "", 4 * MAX_LINE),
            "traceback": _clip(err.get("traceback") or "", MAX_TRACEBACK),
        }
    result = None
    if status == Status.SUCCEEDED:  # a summary: never reads value files, never unpickles
        try:
            result = result_preview(rec.result_summary)
        except StoreError:
            damaged.append(rec.damage("result") or f"result={raw_text(rec.result_json)}")
    params, bad = rec.decoded("params")
    if bad is not None:
        damaged.append(bad)
    phases, hidden = phase_window(rec)
    last_phase = bool(rec.phases) and rec.phase == rec.phases[-1]
    if status == Status.CANCELLED and cancel is None:
        cancel = {"origin": "", "at": rec.ended_at}
    return {
        "id": _clip(rec.id, MAX_ID),
        "key": _clip(rec.key, MAX_NAME),
        "attempt": rec.attempt,
        "pipeline": _clip(rec.pipeline, MAX_NAME),
        "params": _clip(params_text(params), MAX_PARAMS) if params else "",
        "params_full": _clip(params_text(params, clip=False), MAX_PARAMS_FULL) if params else "",
        "status": rec.status_text,
        "mode": mode,
        "phase": _clip(rec.phase, MAX_NAME),
        "phases": phases,
        "phases_hidden": hidden,
        "done": done,
        "total": total,
        "percent": percent,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "elapsed": elapsed,
        "rate": rate,
        "eta": eta,
        # the ETA covers the current phase; in the last declared phase that is the whole run
        "eta_scope": "run" if last_phase else "phase",
        "message": _clip(rec.message, MAX_LINE),
        "log": [_clip(line, MAX_LINE) for line in list(log)[-LOG_LINES:]],
        "error": error,
        "result": result,
        "actions": actions(rec),
        "confirm_rerun": elapsed is not None and elapsed > CONFIRM_RERUN_AFTER,
        "cancel_requested": rec.cancel_requested and status.active,
        "cancel": cancel if status == Status.CANCELLED or (rec.cancel_requested and status.active) else None,
        "stored": stored and status.terminal,
        "newer": newer,
        "waiting": _clip(waiting, MAX_LINE) if status == Status.PENDING else None,
        "resumed_from": _clip(rec.resumed_from, MAX_ID),
        # why start() made this attempt by itself: the body's code (or version) changed
        "why": "code changed" if rec.created_by.endswith(":code") else None,
        "damaged": [_clip(d, MAX_NAME) for d in damaged[:MAX_DAMAGED]],
        **_control(rec, now, ahead, parent, children, try_errors),
        "now": now,
    }


def _control(
    rec: RunRecord,
    now: float,
    ahead: int | None,
    parent: dict[str, Any] | None,
    children: Sequence[RunRecord],
    try_errors: Sequence[dict[str, Any]],
) -> Snapshot:
    """The snapshot's part for retries, timeouts, the queue and nesting (issue 14)."""
    status = rec.status
    kids = list(children)
    counts: dict[str, int] = {}
    for kid in kids:
        counts[kid.status_text] = counts.get(kid.status_text, 0) + 1
    shown_errors = list(try_errors)[-MAX_TRY_ERRORS:]
    return {
        "tries": rec.tries,
        "max_tries": rec.max_tries,
        # while it waits to retry: when the next try starts (the front end counts down to it)
        "retry_at": rec.retry_at if status == Status.RUNNING else None,
        "try_errors": [
            {
                "try": e.get("try") if isinstance(e.get("try"), int) else None,
                "type": _clip(str(e.get("type") or "Error"), MAX_NAME),
                "message": _clip(str(e.get("message") or ""), MAX_LINE),
            }
            for e in shown_errors
            if isinstance(e, dict)
        ],
        "try_errors_hidden": len(try_errors) - len(shown_errors),
        "timeout": rec.timeout,
        "overdue": rec.overdue(now),
        "ahead": ahead if status == Status.PENDING else None,
        "concurrency": rec.concurrency,
        "parent": parent,
        "children": [child_entry(k) for k in kids[-MAX_CHILDREN:]],
        "children_hidden": max(0, len(kids) - MAX_CHILDREN),
        "children_count": counts,
    }


def child_entry(rec: RunRecord) -> dict[str, Any]:
    """One child as a parent's panel lists it: name, status, progress."""
    percent = percent_done(rec)
    params, bad = rec.decoded("params")
    return {
        "id": _clip(rec.id, MAX_ID),
        "pipeline": _clip(rec.pipeline, MAX_NAME),
        "attempt": rec.attempt,
        # what tells two children of one pipeline apart
        "params": "(damaged)"
        if bad is not None
        else _clip(params_text(params, limit=MAX_CHILD_PARAMS), MAX_NAME),
        "status": rec.status_text,
        "phase": _clip(rec.phase, MAX_NAME),
        "done": rec.done,
        "total": rec.total,
        "percent": percent,
        "tries": rec.tries,
        "max_tries": rec.max_tries,
    }


def cancel_origin(origin: dict[str, Any] | None, here: dict[str, Any]) -> str:
    """Where a cancel came from, as the panel says it ("from this panel", "by `tether cancel`
    (pid 123)" ...). ``here``: ``{"instance": <this process's tether instance>, "panel": <the
    asking panel's id>}``."""
    if not isinstance(origin, dict):
        return ""
    via, pid = origin.get("via"), origin.get("pid")
    same = origin.get("instance") is not None and origin.get("instance") == here.get("instance")
    where = "in this kernel" if same else (f"in pid {pid}" if isinstance(pid, int) else "")
    if via == "panel":
        if same and here.get("panel") and origin.get("panel") == here.get("panel"):
            return "from this panel"
        return f"from another panel {where}".rstrip()
    if via == "cli":
        return f"by `tether cancel`{f' (pid {pid})' if isinstance(pid, int) else ''}"
    if via == "api":
        return f"by run.cancel() {where}".rstrip()
    return _clip(f"by {via}", MAX_NAME) or ""


def waiting_text(rec: RunRecord, db: str, module: str | None, here: bool) -> str | None:
    """What a pending run waits for: a `tether worker` (with the command), or a slot here."""
    if rec.status != Status.PENDING:
        return None
    if rec.target == "worker":
        if module is None:
            module = rec.pipeline.rpartition(".")[0] or rec.pipeline
        return (
            f"waiting for a tether worker to take it; in a shell, run: tether worker "
            f"{shlex.quote(module)} --db {shlex.quote(db)}"
        )
    if here:
        return (
            "waiting to start: this kernel runs at most max_concurrency runs at once "
            "(tether.configure(max_concurrency=...))"
        )
    return "waiting to start in the process that created it"


def same(a: Snapshot, b: Snapshot) -> bool:
    """Equal but for the clock-driven keys, whose change the front end predicts (it counts the
    elapsed time up and the ETA down): an ETA that moved away from that countdown, or a rate
    that came or went, is a change."""
    if a.keys() != b.keys():
        return False
    if not all(a[k] == b[k] for k in a if k not in VOLATILE):
        return False
    for key in ("rate", "overdue"):  # came or went
        if (a.get(key) is None) != (b.get(key) is None):
            return False
    ea, eb = a.get("eta"), b.get("eta")
    if (ea is None) != (eb is None):
        return False
    if ea is not None and eb is not None:
        predicted = eb - (a.get("now", 0.0) - b.get("now", 0.0))
        if abs(ea - predicted) > max(ETA_DRIFT, 0.2 * ea):
            return False
    return True

"""The full snapshot a panel renders from, and the static text/html and text/plain made from it.

A snapshot is a plain JSON dict built from a ``RunRecord`` plus what the reader gathered (log tail,
when the current phase started). The panel's JS renders only from it, never from a diff, so a page
reload or a rebinding shows the truth at once. No I/O here.

A snapshot is sent whole on every update, so every part of it is capped (see the MAX_* limits and
docs/panel.md): a run with 100,000 phases or a 50 MB log line still makes a snapshot of a few
tens of KiB. The text/plain rendering escapes terminal control characters; the text/html one
escapes every field.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from typing import Any

from .._text import safe
from ..errors import StoreError
from ..model import RunRecord, Status, raw_text

__all__ = ["Snapshot", "build", "html_snapshot", "phase_states", "text_snapshot", "VOLATILE"]

Snapshot = dict[str, Any]

LOG_LINES = 20
MAX_LINE = 500  # characters of one log line / message shown
MAX_TRACEBACK = 20_000
MAX_RESULT = 300
MAX_PHASES = 40  # phases listed; the others are counted (phases_hidden), around the current one
MAX_NAME = 200  # characters of a name shown: pipeline, phase, key, error type
MAX_ID = 64  # characters of a run id shown (tether's are 12)
MAX_DAMAGED = 10  # damaged columns named
# keys that change with the clock alone; two snapshots equal but for these need not be re-sent
VOLATILE = frozenset({"now", "elapsed", "rate", "eta"})
_FAILED_END = (Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_key(key: str) -> str:
    """A readable short form of an idempotency key: the hash part of ``name:hash``, else a prefix."""
    head, sep, tail = key.rpartition(":")
    if sep and head and 8 <= len(tail) <= 64 and all(c in "0123456789abcdef" for c in tail):
        return tail[:8]
    return _clip(key, 24) or ""


def phase_states(rec: RunRecord, limit: int | None = None) -> list[dict[str, str]]:
    """Every declared (then seen) phase with its state: done / current / upcoming / failed.

    With ``limit``, at most that many, around the current phase (see :func:`phase_window`)."""
    return phase_window(rec, limit)[0]


def phase_window(rec: RunRecord, limit: int | None = MAX_PHASES
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


def build(rec: RunRecord, *, mode: str, log: Sequence[str] = (), phase_started: float | None = None,
          now: float | None = None) -> Snapshot:
    """The full snapshot of ``rec`` as a panel shows it in ``mode`` (stream | poll | static)."""
    now = time.time() if now is None else now
    status = rec.status
    done, total = rec.done, rec.total
    percent: float | None = None
    if total:
        percent = max(0.0, min(100.0, 100.0 * float(done) / float(total)))
    elif status == Status.SUCCEEDED or total == 0:
        percent = 100.0
    elapsed = None
    if rec.started_at is not None:
        elapsed = max(0.0, (rec.ended_at if rec.ended_at is not None else now) - rec.started_at)
    rate = eta = None
    if status == Status.RUNNING and done:
        since = phase_started if phase_started is not None else rec.started_at
        if since is not None and now - since > 0.05:
            rate = float(done) / (now - since)
            if total and rate > 0:
                eta = max(0.0, (float(total) - float(done)) / rate)
    # a damaged column is named in "damaged" (shown above everything else), not shown as a value
    damaged = list(rec.damaged)
    error = None
    err, bad = rec.decoded("error")
    if bad is not None:
        damaged.append(bad)
    elif err:
        error = {"type": _clip(str(err.get("type") or "Error"), MAX_NAME),
                 "message": _clip(err.get("message") or "", 4 * MAX_LINE),
                 "traceback": _clip(err.get("traceback") or "", MAX_TRACEBACK)}
    result = None
    if status == Status.SUCCEEDED:  # a summary: never reads value files, never unpickles
        try:
            result = result_preview(rec.result_summary)
        except StoreError:
            damaged.append(rec.damage("result") or f"result={raw_text(rec.result_json)}")
    phases, hidden = phase_window(rec)
    return {
        "id": _clip(rec.id, MAX_ID),
        "key": _clip(rec.key, MAX_NAME),
        "key_short": short_key(rec.key),
        "attempt": rec.attempt,
        "pipeline": _clip(rec.pipeline, MAX_NAME),
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
        "message": _clip(rec.message, MAX_LINE),
        "log": [_clip(line, MAX_LINE) for line in list(log)[-LOG_LINES:]],
        "error": error,
        "result": result,
        "actions": actions(rec),
        "cancel_requested": rec.cancel_requested and status.active,
        "resumed_from": _clip(rec.resumed_from, MAX_ID),
        # why start() made this attempt by itself: the body's code (or version) changed
        "why": "code changed" if rec.created_by.endswith(":code") else None,
        "damaged": [_clip(d, MAX_NAME) for d in damaged[:MAX_DAMAGED]],
        "now": now,
    }


def same(a: Snapshot, b: Snapshot) -> bool:
    """Equal but for the clock-driven keys."""
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] for k in a if k not in VOLATILE)


# -- static renderings (front ends without widgets) ---------------------------------------------

def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(x: float | int | None) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}"


def progress_text(snap: Snapshot) -> str:
    done, total = snap["done"], snap["total"]
    text = f"{_num(done)}/{_num(total)}" if total is not None else f"{_num(done)}"
    if snap["percent"] is not None and total is not None:
        text += f" ({snap['percent']:.0f}%)"
    return text


def _hidden_text(snap: Snapshot) -> tuple[str, str]:
    hidden = snap.get("phases_hidden") or {}
    before, after = hidden.get("before", 0), hidden.get("after", 0)
    return (f"{before:,} more phases" if before else "", f"{after:,} more phases" if after else "")


def text_snapshot(snap: Snapshot) -> str:
    """The text/plain rendering (terminals, consoles, nbval): run text with every terminal
    control character shown escaped."""
    why = f" ({snap['why']})" if snap.get("why") else ""
    lines = [f"{safe(snap['pipeline'])} #{snap['attempt']}{why} [{snap['status']}] "
             f"id={safe(snap['id'])} key={safe(snap['key_short'])}"]
    if snap.get("damaged"):
        lines.append(f"damaged: {safe('; '.join(snap['damaged']))}")
    before, after = _hidden_text(snap)
    steps = " > ".join([*([before] if before else []),
                        *(f"{safe(p['name'])}({p['state']})" for p in snap["phases"]),
                        *([after] if after else [])])
    if steps:
        lines.append(f"phases: {steps}")
    lines.append(f"phase: {safe(snap['phase'] or '-')} {progress_text(snap)} "
                 f"elapsed {fmt_duration(snap['elapsed'])}")
    if snap["message"]:
        lines.append(f"last: {safe(snap['message'])}")
    if snap["error"]:
        lines.append(f"error: {safe(snap['error']['type'])}: {safe(snap['error']['message'])}")
    if snap["result"] is not None:
        lines.append(f"result: {safe(snap['result'])}")
    return "\n".join(lines)


_BADGE = {"pending": "#6e7781", "running": "#0969da", "succeeded": "#1a7f37",
          "failed": "#cf222e", "cancelled": "#9a6700", "interrupted": "#bc4c00"}


def html_snapshot(snap: Snapshot) -> str:
    """A static text/html rendering: plain elements, every run text escaped."""
    e = html.escape
    color = _BADGE.get(snap["status"], "#6e7781")
    before, after = _hidden_text(snap)
    steps = " &rsaquo; ".join([*([e(before)] if before else []), *(
        (f"<b>{e(p['name'])}</b>" if p["state"] == "current" else
         f"<s>{e(p['name'])}</s>" if p["state"] == "failed" else e(p["name"]))
        + ("&nbsp;✓" if p["state"] == "done" else "")
        for p in snap["phases"]), *([e(after)] if after else [])])
    parts = [
        f'<div class="tether-static" data-run-id="{e(snap["id"])}" '
        f'data-status="{e(snap["status"])}" data-mode="static" '
        'style="font-family:system-ui,sans-serif;font-size:13px;line-height:1.4;'
        'border:1px solid #8885;border-radius:6px;padding:8px 10px;max-width:60em">',
        f"<div><strong>{e(snap['pipeline'])}</strong> #{e(str(snap['attempt']))} "
        + (f"<i>{e(snap['why'])}</i> " if snap.get("why") else "") +
        f"<code>{e(snap['key_short'])}</code> "
        f'<span style="color:#fff;background:{color};border-radius:8px;padding:0 6px">'
        f"{e(snap['status'])}</span></div>",
    ]
    if snap.get("damaged"):
        parts.append('<div class="tether-damaged" style="color:#cf222e">damaged row: '
                     f"{e('; '.join(snap['damaged']))}</div>")
    if steps:
        parts.append(f"<div>{steps}</div>")
    parts.append(f"<div>{e(snap['phase'] or '-')}: {e(progress_text(snap))} · elapsed "
                 f"{e(fmt_duration(snap['elapsed']))}</div>")
    if snap["message"]:
        parts.append(f"<div>{e(snap['message'])}</div>")
    if snap["error"]:
        parts.append(f"<pre style=\"white-space:pre-wrap;color:#cf222e;margin:4px 0\">"
                     f"{e(snap['error']['type'])}: {e(snap['error']['message'] or '')}</pre>")
    if snap["result"] is not None:
        parts.append(f"<div>result: <code>{e(snap['result'])}</code></div>")
    parts.append("</div>")
    return "".join(parts)

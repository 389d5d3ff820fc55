"""The full snapshot a panel renders from, and the static text/html and text/plain made from it.

A snapshot is a plain JSON dict built from a ``RunRecord`` plus what the reader gathered (log tail,
when the current phase started). The panel's JS renders only from it, never from a diff, so a page
reload or a rebinding shows the truth at once. No I/O here.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from typing import Any

from ..model import RunRecord, Status

__all__ = ["Snapshot", "build", "html_snapshot", "phase_states", "text_snapshot", "VOLATILE"]

Snapshot = dict[str, Any]

LOG_LINES = 20
MAX_LINE = 500  # characters of one log line / message shown
MAX_TRACEBACK = 20_000
MAX_RESULT = 300
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
    if sep and head and len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail[:8]
    return _clip(key, 24) or ""


def phase_states(rec: RunRecord) -> list[dict[str, str]]:
    """Every declared (then seen) phase with its state: done / current / upcoming / failed."""
    names = list(rec.phases)
    if rec.phase and rec.phase not in names:
        names.append(rec.phase)
    done = set(rec.phases_done)
    out = []
    for name in names:
        if name == rec.phase and rec.status.active:
            state = "current"
        elif name == rec.phase and rec.status in _FAILED_END and name not in done:
            state = "failed"
        elif name in done:
            state = "done"
        else:
            state = "upcoming"
        out.append({"name": name, "state": state})
    return out


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
    error = None
    if rec.error:
        error = {"type": str(rec.error.get("type") or "Error"),
                 "message": _clip(rec.error.get("message") or "", 4 * MAX_LINE),
                 "traceback": _clip(rec.error.get("traceback") or "", MAX_TRACEBACK)}
    return {
        "id": rec.id,
        "key": rec.key,
        "key_short": short_key(rec.key),
        "attempt": rec.attempt,
        "pipeline": rec.pipeline,
        "status": str(status),
        "mode": mode,
        "phase": rec.phase,
        "phases": phase_states(rec),
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
        "result": result_preview(rec.result_summary) if status == Status.SUCCEEDED else None,
        "actions": actions(rec),
        "cancel_requested": rec.cancel_requested and status.active,
        "resumed_from": rec.resumed_from,
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


def text_snapshot(snap: Snapshot) -> str:
    """The text/plain rendering (terminals, consoles, nbval)."""
    lines = [f"{snap['pipeline']} #{snap['attempt']} [{snap['status']}] id={snap['id']} "
             f"key={snap['key_short']}"]
    steps = " > ".join(f"{p['name']}({p['state']})" for p in snap["phases"])
    if steps:
        lines.append(f"phases: {steps}")
    lines.append(f"phase: {snap['phase'] or '-'} {progress_text(snap)} "
                 f"elapsed {fmt_duration(snap['elapsed'])}")
    if snap["message"]:
        lines.append(f"last: {snap['message']}")
    if snap["error"]:
        lines.append(f"error: {snap['error']['type']}: {snap['error']['message']}")
    if snap["result"] is not None:
        lines.append(f"result: {snap['result']}")
    return "\n".join(lines)


_BADGE = {"pending": "#6e7781", "running": "#0969da", "succeeded": "#1a7f37",
          "failed": "#cf222e", "cancelled": "#9a6700", "interrupted": "#bc4c00"}


def html_snapshot(snap: Snapshot) -> str:
    """A static text/html rendering: plain elements, every run text escaped."""
    e = html.escape
    color = _BADGE.get(snap["status"], "#6e7781")
    steps = " &rsaquo; ".join(
        (f"<b>{e(p['name'])}</b>" if p["state"] == "current" else
         f"<s>{e(p['name'])}</s>" if p["state"] == "failed" else e(p["name"]))
        + ("&nbsp;✓" if p["state"] == "done" else "")
        for p in snap["phases"])
    parts = [
        f'<div class="tether-static" data-run-id="{e(snap["id"])}" '
        f'data-status="{e(snap["status"])}" data-mode="static" '
        'style="font-family:system-ui,sans-serif;font-size:13px;line-height:1.4;'
        'border:1px solid #8885;border-radius:6px;padding:8px 10px;max-width:60em">',
        f"<div><strong>{e(snap['pipeline'])}</strong> #{snap['attempt']} "
        f"<code>{e(snap['key_short'])}</code> "
        f'<span style="color:#fff;background:{color};border-radius:8px;padding:0 6px">'
        f"{e(snap['status'])}</span></div>",
    ]
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

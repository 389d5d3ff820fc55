"""The static renderings of a snapshot (text/plain and text/html, for front ends without
widgets) and the text pieces every display shares: durations, times, progress, the notes.

The text/plain rendering escapes terminal control characters; the text/html one escapes every
field."""

from __future__ import annotations

import html
from typing import Any

from .._text import duration, safe
from .._text import fmt_time as fmt_time  # re-exported: the displays import it from here

Snapshot = dict[str, Any]


def control_notes(snap: Snapshot) -> list[str]:
    """What retries, timeouts, the queue and nesting add to a panel, as text, at ``snap["now"]``
    (panel.js says the same, with a live countdown)."""
    out = []
    status = snap.get("status")
    if snap.get("ahead") is not None:
        limit = snap.get("concurrency")
        out.append(f"queued — {snap['ahead']} ahead" + (f" (concurrency={limit})" if limit else ""))
    tries, most = snap.get("tries") or 0, snap.get("max_tries") or 1
    if snap.get("retry_at") is not None:
        out.append(
            f"try {tries + 1} of {most} — next in {duration(snap['retry_at'] - snap['now'], 'seconds')}"
        )
    elif most > 1 or tries > 1:
        if status == "running":
            out.append(f"try {tries} of {most}")
        elif status == "failed" and tries >= most:
            out.append(f"failed after {tries} tries")
        elif status in ("succeeded", "failed") and tries:
            out.append(f"{status} on try {tries} of {most}")
    for e in snap.get("try_errors") or []:
        out.append(f"try {e['try']}: {e['type']}: {e['message']}")
    if snap.get("overdue") is not None:
        out.append(
            f"past its timeout by {duration(snap['overdue'], 'seconds')} "
            f"(timeout {duration(snap['timeout'], 'setting')} per try): "
            "it stops at its next ctx call"
        )
    parent = snap.get("parent")
    if parent:
        out.append(f"started by {parent['pipeline']} #{parent['attempt']} (id {parent['id']})")
    return out


def children_text(snap: Snapshot) -> list[str]:
    """The children lines of the static renderings: ``name #1  status  6/40 (15%)``."""
    kids = snap.get("children") or []
    if not kids:
        return []
    total = len(kids) + (snap.get("children_hidden") or 0)
    counts = ", ".join(f"{n} {status}" for status, n in sorted((snap.get("children_count") or {}).items()))
    lines = [f"children: {total} ({counts})"]
    if snap.get("children_hidden"):
        lines.append(f"  {snap['children_hidden']:,} earlier children not shown")
    for k in kids:
        progress = progress_text(k)
        params = f" ({k['params']})" if k.get("params") else ""
        lines.append(
            f"  {k['pipeline']} #{k['attempt']}{params}  {k['status']}{'  ' + progress if progress else ''}"
        )
    return lines


# -- static renderings (front ends without widgets) ---------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    """A run's elapsed time or ETA as the panel writes it (``0:03``): the clock style of
    ``_text.duration``, which says why each display writes durations the way it does."""
    return duration(seconds, "clock")


def _num(x: float | int | None) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}"


def progress_text(snap: Snapshot) -> str:
    """``6/40 (15%)``; a phase without a total: ``12 done``, or nothing before the first item."""
    done, total = snap["done"], snap["total"]
    if total is None:
        return f"{_num(done)} done" if done else ""
    text = f"{_num(done)}/{_num(total)}"
    if snap["percent"] is not None:
        text += f" ({snap['percent']:.0f}%)"
    return text


def _hidden_text(snap: Snapshot) -> tuple[str, str]:
    hidden = snap.get("phases_hidden") or {}
    before, after = hidden.get("before", 0), hidden.get("after", 0)
    return (f"{before:,} more phases" if before else "", f"{after:,} more phases" if after else "")


def notes(snap: Snapshot) -> list[str]:
    """The lines that say what kind of truth the panel shows: a stored outcome, a cancel's
    origin, a newer attempt, what a pending run waits for (shared by both static renderings)."""
    out = []
    if snap.get("waiting"):
        out.append(snap["waiting"])
    out.extend(control_notes(snap))
    cancel = snap.get("cancel")
    if cancel is not None and snap["status"] == "cancelled":
        out.append(
            " ".join(
                x
                for x in (
                    "cancelled",
                    cancel.get("origin") or "",
                    f"at {fmt_time(cancel['at'])}" if cancel.get("at") else "",
                )
                if x
            )
        )
    elif cancel is not None:
        out.append(f"cancel requested {cancel.get('origin') or ''}".rstrip())
    if snap.get("stored"):
        out.append(stored_text(snap, fmt_time(snap["ended_at"])))
    newer = snap.get("newer")
    if newer:
        out.append(f"a newer attempt exists: #{newer['attempt']} ({newer['status']}) id={newer['id']}")
    return out


def stored_text(snap: Snapshot, when: str) -> str:
    """The label of a stored outcome, and how to compute it again."""
    if snap["status"] == "succeeded":
        return (
            f"stored result from {when}, not computed now; to compute again: Re-run, or "
            "start(..., policy='rerun')"
        )
    if snap["actions"].get("resume"):
        return (
            f"stored outcome from {when}, not run now; to try again: Re-run or Resume, or "
            "start(..., policy='rerun' or 'resume')"
        )
    return f"stored outcome from {when}, not run now; to try again: Re-run"


def _outcome(snap: Snapshot, progress_sep: str) -> list[tuple[str, str]]:
    """The rows both static renderings show after the phases, as ``(kind, text)`` (plain text:
    each rendering escapes it and wraps it by kind, _TEXT_ROW / _HTML_ROW): where the run is
    (``crunch 6/40 (15%) · elapsed 0:03``, ``progress_sep`` before the progress), its last
    message, its error, its result."""
    progress = progress_text(snap)
    where = f"{snap['phase'] or '-'}{progress_sep + progress if progress else ''}"
    rows = [("phase", f"{where} · elapsed {fmt_duration(snap['elapsed'])}")]
    if snap["message"]:
        rows.append(("message", snap["message"]))
    if snap["error"]:
        rows.append(("error", f"{snap['error']['type']}: {snap['error']['message'] or ''}"))
    if snap["result"] is not None:
        rows.append(("result", snap["result"]))
    return rows


_TEXT_ROW = {"phase": "phase: {}", "message": "last: {}", "error": "error: {}", "result": "result: {}"}
_HTML_ROW = {
    "phase": "<div>{}</div>",
    "message": "<div>{}</div>",
    "error": '<pre style="white-space:pre-wrap;color:#cf222e;margin:4px 0">{}</pre>',
    "result": "<div>result: <code>{}</code></div>",
}


def text_snapshot(snap: Snapshot) -> str:
    """The text/plain rendering (terminals, consoles, nbval): run text with every terminal
    control character shown escaped."""
    why = f" ({snap['why']})" if snap.get("why") else ""
    lines = [f"{safe(snap['pipeline'])} #{snap['attempt']}{why} [{snap['status']}] id={safe(snap['id'])}"]
    if snap.get("params"):
        lines.append(f"params: {safe(snap['params'])}")
    if snap.get("damaged"):
        lines.append(f"damaged: {safe('; '.join(snap['damaged']))}")
    lines.extend(safe(n) for n in notes(snap))
    before, after = _hidden_text(snap)
    steps = " > ".join(
        [
            *([before] if before else []),
            *(f"{safe(p['name'])}({p['state']})" for p in snap["phases"]),
            *([after] if after else []),
        ]
    )
    if steps:
        lines.append(f"phases: {steps}")
    lines.extend(_TEXT_ROW[kind].format(safe(text)) for kind, text in _outcome(snap, " "))
    lines.extend(safe(line) for line in children_text(snap))
    return "\n".join(lines)


_BADGE = {
    "pending": "#6e7781",
    "running": "#0969da",
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "cancelled": "#6e7781",
    "interrupted": "#bc4c00",
}


def html_snapshot(snap: Snapshot) -> str:
    """A static text/html rendering: plain elements, every run text escaped."""
    e = html.escape
    color = _BADGE.get(snap["status"], "#6e7781")
    before, after = _hidden_text(snap)
    steps = " &rsaquo; ".join(
        [
            *([e(before)] if before else []),
            *(
                (
                    f"<b>{e(p['name'])}</b>"
                    if p["state"] == "current"
                    else f"<s>{e(p['name'])}</s>"
                    if p["state"] == "failed"
                    else e(p["name"])
                )
                + ("&nbsp;✓" if p["state"] == "done" else "")
                for p in snap["phases"]
            ),
            *([e(after)] if after else []),
        ]
    )
    parts = [
        f'<div class="tether-static" data-run-id="{e(snap["id"])}" '
        f'data-status="{e(snap["status"])}" data-attempt="{e(str(snap["attempt"]))}" '
        'data-mode="static" '
        'style="font-family:system-ui,sans-serif;font-size:13px;line-height:1.4;'
        'border:1px solid #8885;border-radius:6px;padding:8px 10px;max-width:60em">',
        f"<div><strong>{e(snap['pipeline'])}</strong> #{e(str(snap['attempt']))} "
        + (f"<i>{e(snap['why'])}</i> " if snap.get("why") else "")
        + f'<span style="color:#fff;background:{color};border-radius:8px;padding:0 6px">'
        f"{e(snap['status'])}</span> <small>id <code>{e(snap['id'])}</code></small></div>",
    ]
    if snap.get("params"):
        parts.append(f"<div><small>{e(snap['params'])}</small></div>")
    if snap.get("damaged"):
        parts.append(
            '<div class="tether-damaged" style="color:#cf222e">damaged row: '
            f"{e('; '.join(snap['damaged']))}</div>"
        )
    for note in notes(snap):
        parts.append(f"<div><em>{e(note)}</em></div>")
    if steps:
        parts.append(f"<div>{steps}</div>")
    parts.extend(_HTML_ROW[kind].format(e(text)) for kind, text in _outcome(snap, ": "))
    kids = children_text(snap)
    if kids:
        parts.append(
            f'<div class="tether-children">{e(kids[0])}<br>'
            + "<br>".join(e(line.strip()) for line in kids[1:])
            + "</div>"
        )
    parts.append("</div>")
    return "".join(parts)

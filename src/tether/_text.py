"""Run text made safe for a terminal: one function for the CLI, reprs and text/plain outputs.

Anything a run stores (names, phases, log lines, errors, keys, even a crafted row's columns) may
hold terminal control sequences: ESC starts sequences that retitle or clear the terminal, move the
cursor or (OSC 52) write the clipboard; CR and BS overwrite what was printed; BEL rings. Every C0
character but TAB, DEL and every C1 character is shown escaped as ``\\xNN``, so nothing is lost and
nothing is interpreted. Also the time format every display writes (here rather than in
view.render, so that `tether ls` imports no html). No imports from tether: any module may use it.
"""

from __future__ import annotations

import time

__all__ = ["clip", "fmt_time", "safe", "safe_lines"]

# C0 (but TAB), DEL and C1; a newline is escaped too unless the caller means lines
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x09}
_CONTROL_LINES = {c: v for c, v in _CONTROL.items() if c != 0x0A}


def safe(text: object) -> str:
    """``text`` on one line with every control character shown escaped (``\\x1b``, ``\\x0a``)."""
    text = str(text)
    # every character escaped here is one isprintable() rejects: most text is returned at once
    # (a translate() through the table costs ~25x more: listings escape four columns per row)
    return text if text.isprintable() else text.translate(_CONTROL)


def safe_lines(text: object) -> str:
    """Like :func:`safe`, but newlines stay newlines (a traceback, a multi-line message)."""
    return str(text).translate(_CONTROL_LINES)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def fmt_time(ts: float | None) -> str:
    """A time as every tether display writes it: local, 24-hour (the CLI's form)."""
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (a crafted row)
        return repr(ts)

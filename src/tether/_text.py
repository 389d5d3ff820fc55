"""Run text made safe for a terminal: one function for the CLI, reprs and text/plain outputs. And
durations as every display writes them (:func:`duration`).

Anything a run stores (names, phases, log lines, errors, keys, even a crafted row's columns) may
hold terminal control sequences: ESC starts sequences that retitle or clear the terminal, move the
cursor or (OSC 52) write the clipboard; CR and BS overwrite what was printed; BEL rings. Every C0
character but TAB, DEL and every C1 character is shown escaped as ``\\xNN``, so nothing is lost and
nothing is interpreted. Also the time format every display writes (here rather than in
view.render, so that `tether ls` imports no html). No imports from tether: any module may use it.
"""

from __future__ import annotations

import time
from typing import Literal

__all__ = ["DurationStyle", "clip", "duration", "fmt_time", "safe", "safe_lines", "storable"]


def storable(text: str) -> bool:
    """``text`` is valid Unicode text (no lone surrogate), as a name or key must be to be stored."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


# Where each style is used, and why they differ:
# - "clock": a run's elapsed time and ETA in the panel, the dashboard, `tether watch` and the
#   static renderings (``0:03``, ``1:02:03``; cut to whole seconds). widget/static/common.js and
#   serve/static/common.js write the same in the browser, live between two snapshots; tests keep
#   them equal (tests/test_panel.py).
# - "compact": the DURATION column of `tether ls` and `tether show`: narrow, with a tenth of a
#   second for a short run, where a clock's ``0:00`` would say nothing (``4.2s``, ``3m05s``,
#   ``1h02m``).
# - "seconds": a wait or an overrun, whole seconds, never below 0 (``8 s``): a countdown in a
#   sentence.
# - "setting": a duration the user set (a timeout), exactly as set (``0.5 s``, ``90 s``).
DurationStyle = Literal["clock", "compact", "seconds", "setting"]


def duration(seconds: float | None, style: DurationStyle = "clock") -> str:
    """``seconds`` written in ``style`` (see DurationStyle); None (not known) is ``-``."""
    if seconds is None:
        return "-"
    if style == "seconds":
        return f"{max(0.0, seconds):.0f} s"  # a wait: one already over is 0 s
    if style == "setting":
        return f"{seconds:g} s"
    if style == "compact" and seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(max(0, int(seconds)), 60)  # as the JS: a clock skew is 0:00
    hours, minutes = divmod(minutes, 60)
    if style == "compact":
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_time(ts: float | None) -> str:
    """A time as every tether display writes it: local, 24-hour (the CLI's form)."""
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (a crafted row)
        return repr(ts)

"""``tether watch``: a live terminal view of one run, read from the store whichever process owns it.

On a terminal the view (phases, a bar, rate, ETA, tries, parent and children, the last log lines)
is redrawn in place with plain ANSI sequences; otherwise (a pipe, a CI log) it prints one line per
meaningful change, without any escape sequence. It renders the same snapshot as the Jupyter panel
(:mod:`tether.view.snapshot`, read by :class:`tether.view.reader.RunReader`) and only reads: it
never starts, restarts, cancels or changes a run. Like every reader, it marks a run whose owner is
*proven* gone ``interrupted`` (see docs/recovery.md); a live run is never written to.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from . import owner
from . import workspace as _workspace
from ._text import clip, duration, safe
from .errors import RunNotFound
from .model import RunRecord, Status
from .run import Run
from .store import Store
from .view import snapshot as snap_
from .view.reader import RunReader

__all__ = ["EXIT_CODES", "NOTHING_TO_WATCH", "Watch", "pick"]

# The owner flushes every 0.25 s (flush_interval): reading faster would show nothing new.
TICK_S = 0.25
PLAIN_GAP_S = 1.0  # non-terminal output: at most one progress line a second (plus changes of state)
RELATIVES_EVERY_S = 1.0  # parent and children are read at most once a second
MESSAGE_CHARS = 120  # the last message on a plain progress line

EXIT_CODES = {
    Status.SUCCEEDED: 0,
    Status.FAILED: 1,
    Status.CANCELLED: 2,
    Status.INTERRUPTED: 2,
}
NOTHING_TO_WATCH = 3  # unknown id, no run of the pipeline, no database: not a run's outcome
INTERRUPTED_BY_USER = 130

_SGR = {
    "pending": "2",
    "running": "1;34",
    "succeeded": "1;32",
    "failed": "1;31",
    "cancelled": "1;2",
    "interrupted": "1;33",
    "damaged": "1;31",
}
_MARK_UNICODE = {"done": "✓", "current": "▸", "upcoming": "·", "failed": "✗", "stopped": "■"}
_MARK_ASCII = {"done": "+", "current": ">", "upcoming": ".", "failed": "!", "stopped": "#"}


class NothingToWatch(RunNotFound):
    """No run matches what ``tether watch`` was asked to watch."""


def pick(store: Store, run_id: str | None, *, latest: bool = False, pipeline: str | None = None) -> str:
    """The id of the run to watch: ``run_id``, the newest run (``latest``), or the newest run of
    ``pipeline``. RunNotFound (with the fix) when there is none."""
    if run_id is not None:
        return store.get(run_id).id
    recs = store.list_runs(pipeline=pipeline, limit=1)
    if recs:
        return recs[0].id
    if pipeline is not None:
        known = sorted({r.pipeline for r in store.list_runs(limit=200)})
        hint = f"; pipelines with runs: {', '.join(known[:10])}" if known else ""
        raise NothingToWatch(
            f"no run of pipeline {pipeline!r} in {str(store.path)!r}{hint}; "
            "`tether ls` lists runs with their pipeline's full name"
        )
    raise NothingToWatch(f"no runs in {str(store.path)!r} yet; start one, or pass --db PATH")


class _WatchedRun(Run):
    """A run as a watcher reads it: from the store only. ``Run.snapshot`` asks this process's
    runner for live progress, which creates one, and a runner takes the write lock at exit to mark
    its own runs interrupted; a watcher executes nothing, so it has no runner and no write lock.
    A run whose owner is proven gone is still marked interrupted, as `tether show` does."""

    def snapshot(self) -> RunRecord:
        store = self.store
        rec = store.get(self.id)
        if rec.status.active and store.recover([rec], owner.gone_reason):
            rec = store.get(self.id)
        self._last = rec
        return rec


# -- formatting (no I/O) ------------------------------------------------------------------------


def rate_text(rate: float | None) -> str:
    """Items per second as people read them: ``1,234/s``, ``35.2/s``, ``12.0/min``."""
    if not rate:
        return ""
    if rate >= 100:
        return f"{rate:,.0f}/s"
    if rate >= 1:
        return f"{rate:.1f}/s"
    return f"{rate * 60:.1f}/min"


def bar(percent: float | None, width: int, unicode: bool) -> str:
    if percent is None or width < 3:
        return ""
    full, empty = ("█", "░") if unicode else ("#", "-")
    filled = round(width * max(0.0, min(100.0, percent)) / 100.0)
    return full * filled + empty * (width - filled)


def tries_text(rec: RunRecord, now: float) -> str:
    """``try 2 of 4 — next in 8 s`` while a retrying run waits; ``try 2 of 4`` while it runs
    again; a timeout passed; or ''."""
    parts = []
    if rec.status == Status.RUNNING and (rec.max_tries > 1 or rec.tries > 1):
        if rec.retry_at is not None:
            parts.append(
                f"try {rec.tries + 1} of {rec.max_tries} — next in {duration(rec.retry_at - now, 'seconds')}"
            )
        elif rec.tries > 1:
            parts.append(f"try {rec.tries} of {rec.max_tries}")
    overdue = rec.overdue(now)
    if overdue is not None:
        parts.append(f"past its timeout by {duration(overdue, 'seconds')} (it stops at its next ctx call)")
    return " · ".join(parts)


def progress_line(snap: snap_.Snapshot) -> str:
    """``crunch 6/40 (15%) · 35.2/s · ETA 0:14 · elapsed 1:02`` (no bar)."""
    parts = [safe(snap["phase"] or "-")]
    progress = snap_.progress_text(snap)
    if progress:
        parts[0] += " " + progress
    parts.extend(_speed(snap))
    return " · ".join(parts)


def _speed(snap: snap_.Snapshot) -> list[str]:
    out = []
    if snap["rate"]:
        out.append(rate_text(snap["rate"]))
    if snap["eta"] is not None:
        out.append(
            f"ETA {snap_.fmt_duration(snap['eta'])}" + (" (phase)" if snap["eta_scope"] == "phase" else "")
        )
    out.append(f"elapsed {snap_.fmt_duration(snap['elapsed'])}")
    return out


def end_line(snap: snap_.Snapshot) -> str:
    """The last line: how the run ended."""
    status, took = snap["status"], snap_.fmt_duration(snap["elapsed"])
    if snap["error"]:
        return f"{status} after {took}: {safe(snap['error']['type'])}: {safe(snap['error']['message'])}"
    if snap["result"] is not None:
        return f"{status} in {took} · result: {safe(snap['result'])}"
    return f"{status} after {took}"


@dataclass
class Relatives:
    """The parent and children of a run, as one line each (or '')."""

    parent: str = ""
    children: str = ""


def relatives(store: Store, rec: RunRecord) -> Relatives:
    out = Relatives()
    if rec.parent_id:
        try:
            parent = store.get(rec.parent_id)
            out.parent = (
                f"parent {safe(parent.id)} ({safe(parent.pipeline)} #{parent.attempt}, {parent.status_text})"
            )
        except RunNotFound:
            out.parent = f"parent {safe(rec.parent_id)} (not in this database)"
    kids = store.children(rec.id)
    if kids:
        counts = Counter(k.status_text for k in kids)
        order = [s.value for s in Status] + sorted(set(counts) - {s.value for s in Status})
        out.children = f"children {len(kids)}: " + ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    return out


# -- the terminal ------------------------------------------------------------------------------


class Screen:
    """Draws frames in place at the bottom of a terminal: each frame overwrites the last one."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.drawn = 0  # lines of the last frame; the cursor sits at the end of its last line
        self.size = shutil.get_terminal_size()
        self.resized = False
        self.last: list[str] = []
        self.hidden = False

    def style(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}\x1b[0m" if self.color and sgr else text

    def draw(self, lines: list[tuple[str, str]]) -> None:
        """``lines``: (text already made safe, SGR style); clipped to the terminal's width."""
        if self.resized:
            self.resized = False
            old, self.size = self.size, shutil.get_terminal_size()
            if self.size.columns < old.columns and self.drawn:
                # the terminal may have re-wrapped the old frame: start again at the top of a clear screen
                self.out.write("\x1b[H\x1b[2J")
                self.drawn = 0
                self.last = []
        width, height = max(10, self.size.columns - 1), max(3, self.size.lines - 1)
        rows = [self.style(clip(text, width), sgr) for text, sgr in lines[:height]]
        if rows == self.last:
            return
        parts = ["\r" + (f"\x1b[{self.drawn - 1}A" if self.drawn > 1 else "")] if self.drawn else []
        parts.append("\x1b[K\n".join(rows) + "\x1b[K\x1b[J")
        self.out.write("".join(parts))
        self.out.flush()
        self.drawn, self.last = len(rows), rows

    def begin(self) -> None:
        self.out.write("\x1b[?25l")  # hide the cursor while frames are drawn
        self.hidden = True

    def end(self) -> None:
        """Leave the last frame on screen, the cursor below it and shown again."""
        if self.hidden or self.drawn:
            self.out.write("\n\x1b[?25h" if self.drawn else "\x1b[?25h")
            self.out.flush()
        self.drawn, self.hidden = 0, False


# -- the watch ---------------------------------------------------------------------------------


class Watch:
    """Follows one run until it ends; :meth:`run` returns the exit code."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        out: TextIO,
        *,
        tty: bool | None = None,
        tick: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.reader = RunReader(_WatchedRun(_workspace.default(), store, run_id))
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.tick = tick
        self.clock = clock
        enc = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        self.unicode = enc.startswith("utf")
        self.screen = Screen(out, color=self.tty and not os.environ.get("NO_COLOR")) if self.tty else None
        self._relatives = Relatives()
        self._relatives_at = float("-inf")
        self._plain_key: tuple[Any, ...] | None = None
        self._plain_state: tuple[Any, ...] | None = None
        self._plain_at = float("-inf")

    # one look at the store
    def read(self) -> tuple[RunRecord, snap_.Snapshot]:
        now = self.clock()
        rec = self.reader.read(now=now)
        mono = time.monotonic()
        if rec.status.terminal or mono - self._relatives_at >= RELATIVES_EVERY_S:
            self._relatives, self._relatives_at = relatives(self.store, rec), mono
        cancel = None
        if self.reader.cancel is not None:
            origin = snap_.cancel_origin(self.reader.cancel["origin"], {"instance": None, "panel": None})
            cancel = {"origin": origin, "at": self.reader.cancel["ts"]}
        waiting = snap_.waiting_text(rec, str(self.store.path), None, here=False)
        newer = None
        if rec.status.terminal:
            newest = self.store.list_runs(key=rec.key, limit=1)
            if newest and newest[0].id != rec.id and newest[0].attempt > rec.attempt:
                n = newest[0]
                newer = {"id": n.id, "attempt": n.attempt, "status": n.status_text}
        snap = snap_.build(
            rec,
            mode="poll",
            log=self.reader.log,
            rate=self.reader.rate(now),
            now=now,
            newer=newer,
            cancel=cancel,
            waiting=waiting,
        )
        return rec, snap

    def run(self) -> int:
        restore = self._signals()
        if self.screen is not None:
            self.screen.begin()
        try:
            while True:
                rec, snap = self.read()
                if self.screen is not None:
                    self.screen.draw(self.frame(rec, snap))
                else:
                    self.plain(rec, snap)
                if rec.status.terminal:
                    return EXIT_CODES.get(rec.status, 1)
                time.sleep(self.tick)
        except KeyboardInterrupt:
            self._stopped()
            return INTERRUPTED_BY_USER
        finally:
            if self.screen is not None:
                self.screen.end()
            restore()

    def _stopped(self) -> None:
        if self.screen is not None:
            self.screen.end()
        self._write(f"stopped watching; run {safe(self.reader.run.id)} goes on")

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def _signals(self) -> Callable[[], None]:
        """SIGWINCH: redraw at the next tick; SIGTERM/SIGHUP: leave like Ctrl-C (the cursor shown
        again). Only in the main thread (where Python runs handlers)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        saved: dict[int, Any] = {}

        def resized(_signum: int, _frame: Any) -> None:
            if self.screen is not None:
                self.screen.resized = True

        def leave(_signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        wanted = {"SIGWINCH": resized, "SIGTERM": leave, "SIGHUP": leave}
        for name, handler in wanted.items():
            num = getattr(signal, name, None)
            if num is not None:
                saved[num] = signal.signal(num, handler)

        def restore() -> None:
            for num, handler in saved.items():
                signal.signal(num, handler)

        return restore

    # -- the frame on a terminal ---------------------------------------------------------------

    def frame(self, rec: RunRecord, snap: snap_.Snapshot) -> list[tuple[str, str]]:
        screen = self.screen
        assert screen is not None
        width = max(10, screen.size.columns - 1)
        status = snap["status"]
        why = f" ({snap['why']})" if snap.get("why") else ""
        lines: list[tuple[str, str]] = [
            (
                f"{safe(snap['pipeline'])} #{snap['attempt']}{why}  {status}  id {safe(snap['id'])}",
                _SGR.get(status, "1"),
            )
        ]
        if snap["params"]:
            lines.append((f"params  {safe(snap['params'])}", ""))
        if snap["damaged"]:
            lines.append((f"damaged {safe('; '.join(snap['damaged']))}", "31"))
        lines.extend((safe(note), "2") for note in snap_.notes(snap))
        phases = self._phases(snap)
        if phases:
            lines.append((phases, ""))
        lines.append((self._bar_line(snap, width), ""))
        extra = [tries_text(rec, snap["now"]), self._relatives.parent, self._relatives.children]
        lines.extend((x, "33" if i == 0 else "") for i, x in enumerate(extra) if x)
        if snap["error"]:
            lines.append((f"error   {safe(snap['error']['type'])}: {safe(snap['error']['message'])}", "31"))
        if snap["result"] is not None:
            lines.append((f"result  {safe(snap['result'])}", ""))
        footer = [("Ctrl-C stops watching; the run goes on", "2")] if rec.status.active else []
        room = max(0, screen.size.lines - 1 - len(lines) - len(footer) - 1)
        log = [safe(line) for line in snap["log"]][-room:] if room else []
        if log:
            lines.append(("log", "2"))
            lines.extend(("  " + line, "") for line in log)
        return lines + footer

    def _phases(self, snap: snap_.Snapshot) -> str:
        marks = _MARK_UNICODE if self.unicode else _MARK_ASCII
        before, after = snap_._hidden_text(snap)
        parts = [before] if before else []
        parts += [f"{marks.get(p['state'], '?')} {safe(p['name'])}" for p in snap["phases"]]
        parts += [after] if after else []
        return "phases  " + "  ".join(parts) if parts else ""

    def _bar_line(self, snap: snap_.Snapshot, width: int) -> str:
        head = safe(snap["phase"] or "-")
        tail = "  ".join(x for x in [snap_.progress_text(snap), *_speed(snap)] if x)
        if snap["total"]:
            room = width - len(head) - len(tail) - 6
            drawn = bar(snap["percent"], min(40, room), self.unicode)
            if drawn:
                return f"{head}  [{drawn}]  {tail}"
        return f"{head}  {tail}"

    # -- plain lines (not a terminal) ----------------------------------------------------------

    def plain(self, rec: RunRecord, snap: snap_.Snapshot) -> None:
        """One line per meaningful change: at once when the status, phase, try or cancel
        changes; at most one a second when only the progress or the message moved; the clock
        alone (elapsed, ETA) is no change. The end: the notes (a cancel's origin, a newer
        attempt), then how it ended."""
        if self._plain_key is None:
            self._write(f"watching {safe(snap['pipeline'])} #{snap['attempt']} id={safe(snap['id'])}")
        if rec.status.terminal:
            for note in snap_.notes(snap):
                self._write(safe(note))
            self._write(end_line(snap))
            return
        key = (snap["status"], snap["phase"], rec.tries, rec.retry_at is not None, snap["cancel_requested"])
        state = (snap["done"], snap["total"], snap["message"])
        now = time.monotonic()
        if key == self._plain_key and (state == self._plain_state or now - self._plain_at < PLAIN_GAP_S):
            return
        parts = [time.strftime("%H:%M:%S"), snap["status"], progress_line(snap)]
        parts += [x for x in (tries_text(rec, snap["now"]), snap["waiting"]) if x]
        if snap["cancel_requested"]:
            parts.append("cancel requested")
        if snap["message"] and (self._plain_state is None or snap["message"] != self._plain_state[2]):
            parts.append("last: " + clip(safe(snap["message"]), MESSAGE_CHARS))
        self._write(" · ".join(safe(p) for p in parts))
        self._plain_key, self._plain_state, self._plain_at = key, state, now

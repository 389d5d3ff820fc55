"""Reads one run through the ``Run``/``Store`` API, fetching only the events it has not seen."""

from __future__ import annotations

from collections import deque
from typing import Any

from ..model import Event, RunRecord, log_text
from ..run import Run
from .snapshot import LOG_LINES, MAX_LINE

__all__ = ["RateMeter", "RunReader"]

# more new events than this since the last read: take the tails instead of every row
CATCH_UP_LIMIT = 256
_CANCEL_KINDS = ("cancel_requested", "cancelled")


class RateMeter:
    """The rate of the current phase, from recent progress only.

    Samples ``(time, done)`` are kept for the last ``WINDOW`` seconds of one phase of one attempt.
    No rate is given until progress was seen over ``MIN_SPAN`` seconds, so a panel opened in the
    middle of a phase never divides all the phase's work by the few seconds it has watched. In
    a resumed attempt the first progress of a phase is not counted: items reused from
    checkpoints arrive there at once (``ctx.map`` skips them in one step) and are no speed.
    The rate is measured up to *now*, so a stalled run's rate falls and its ETA grows.
    """

    WINDOW = 30.0
    MIN_SPAN = 1.0

    def __init__(self) -> None:
        self.where: tuple[str, str | None] | None = None  # (run id, phase)
        self.samples: deque[tuple[float, float]] = deque()
        self.skip_jump = False

    def add(self, rec: RunRecord, now: float) -> None:
        where = (rec.id, rec.phase)
        try:
            done = float(rec.done)
        except (TypeError, ValueError):
            return
        samples = self.samples
        if where != self.where or (samples and done < samples[-1][1]):
            # another phase or attempt, or the count restarted (ctx.phase(same name, ...))
            self.where = where
            samples.clear()
            self.skip_jump = rec.resumed_from is not None
        if samples and done > samples[-1][1] and self.skip_jump:
            self.skip_jump = False
            samples.clear()  # measure from after the first step of a resumed phase
        if samples and done == samples[-1][1] and len(samples) > 1:
            return  # no progress: the last sample with this count is enough
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] > self.WINDOW:
            samples.popleft()

    def rate(self, now: float) -> float | None:
        samples = self.samples
        if len(samples) < 2:
            return None
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        if d1 <= d0 or t1 - t0 < self.MIN_SPAN:
            return None
        return (d1 - d0) / max(now - t0, t1 - t0)


class RunReader:
    """Keeps the log tail, the rate, and where a cancel came from, of one run, up to date.

    ``read()`` costs one record read; events are read only when ``last_seq`` moved, and then only
    rows with ``seq > last seen`` (or the last ``LOG_LINES`` log lines when far behind).
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.seq = 0
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.phase_started: float | None = None
        self.phase_name: str | None = None
        self.cancel: dict[str, Any] | None = None  # {"origin": {...}, "ts": ...} of the request
        self.meter = RateMeter()
        self.reads = 0  # event queries made (for tests and the benchmark)

    def read(self, now: float | None = None) -> RunRecord:
        rec = self.run.snapshot()
        if rec.last_seq > self.seq:
            self._catch_up(rec)
        if self.cancel is None and (rec.cancel_requested or str(rec.status) == "cancelled"):
            # asked here, and the run ended before the request (with its origin) was written
            self.cancel = self.run.workspace.cancel_origin(rec.id)
        if now is not None and rec.status.active:
            self.meter.add(rec, now)
        return rec

    def rate(self, now: float) -> float | None:
        return self.meter.rate(now)

    def _catch_up(self, rec: RunRecord) -> None:
        store, run_id = self.run.store, self.run.id
        self.reads += 1
        if self.seq == 0 or rec.last_seq - self.seq > CATCH_UP_LIMIT:
            # The two tails are separate reads: keep only rows up to the record's last_seq, so a
            # row committed between them is read by the next events(after=...) instead of being
            # skipped (a phase change flushed between the reads used to hide the logs before it).
            bound = rec.last_seq
            logs = [e for e in store.tail(run_id, "log", LOG_LINES) if e.seq <= bound]
            phases = [e for e in store.tail(run_id, "phase", 1) if e.seq <= bound]
            self.log.clear()
            self.log.extend(_line(e) for e in logs)
            if phases:
                self.phase_started = phases[-1].ts
                self.phase_name = phases[-1].data.get("name")
            if self.cancel is None and (rec.cancel_requested or str(rec.status) == "cancelled"):
                for kind in _CANCEL_KINDS:
                    for ev in store.tail(run_id, kind, 1):
                        if ev.seq <= bound:
                            self._saw_cancel(ev)
            self.seq = bound
            return
        for ev in store.events(run_id, after=self.seq):
            if ev.kind == "log":
                self.log.append(_line(ev))
            elif ev.kind == "phase" and ev.data.get("name") != self.phase_name:
                self.phase_started = ev.ts  # ctx.phase(same name) only resets the total
                self.phase_name = ev.data.get("name")
            elif ev.kind in _CANCEL_KINDS:
                self._saw_cancel(ev)
            self.seq = ev.seq

    def _saw_cancel(self, ev: Event) -> None:
        origin = ev.data.get("origin")
        if self.cancel is None and isinstance(origin, dict):
            self.cancel = {"origin": origin, "ts": ev.ts}


def _line(event: Event) -> str:
    """A log line as the panel keeps it: clipped (a 50 MB line is not held 20 times over)."""
    text = log_text(event)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"

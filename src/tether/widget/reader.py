"""Reads one run through the ``Run``/``Store`` API, fetching only the events it has not seen."""

from __future__ import annotations

from collections import deque

from ..model import Event, RunRecord, log_text
from ..run import Run
from .snapshot import LOG_LINES, MAX_LINE

__all__ = ["RunReader"]

# more new events than this since the last read: take the tails instead of every row
CATCH_UP_LIMIT = 256


class RunReader:
    """Keeps the log tail and the current phase's start time of one run up to date.

    ``read()`` costs one record read; events are read only when ``last_seq`` moved, and then only
    rows with ``seq > last seen`` (or the last ``LOG_LINES`` log lines when far behind).
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.seq = 0
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.phase_started: float | None = None
        self.phase_name: str | None = None
        self.reads = 0  # event queries made (for tests and the benchmark)

    def read(self) -> RunRecord:
        rec = self.run.snapshot()
        if rec.last_seq > self.seq:
            self._catch_up(rec)
        return rec

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
            self.seq = bound
            return
        for ev in store.events(run_id, after=self.seq):
            if ev.kind == "log":
                self.log.append(_line(ev))
            elif ev.kind == "phase" and ev.data.get("name") != self.phase_name:
                self.phase_started = ev.ts  # ctx.phase(same name) only resets the total
                self.phase_name = ev.data.get("name")
            self.seq = ev.seq


def _line(event: Event) -> str:
    """A log line as the panel keeps it: clipped (a 50 MB line is not held 20 times over)."""
    text = log_text(event)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"

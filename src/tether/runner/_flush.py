"""The flusher: one thread writing every live run's progress and events per tick, renewing the
lease, reading cancel requests from other processes, and sweeping orphans."""

from __future__ import annotations

import threading
import time

from .. import owner
from ..codec import dumps
from ..context import Context, install_log_capture
from ..model import RunRecord, Status
from ._state import RunnerState

_QUEUE_POLL_S = 0.05  # how often runs queued by their pipeline's concurrency= look for room


class Flushing(RunnerState):
    def wake(self) -> None:
        self._wake.set()

    def flush_run(self, ctx: Context) -> None:
        """Persist one run's state now (phase changes, checkpoints)."""
        if self._forked:
            return
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
            if item is not None:
                try:
                    self._apply(self.store.flush([item], self.owner, None))
                except BaseException:
                    ctx._requeue(item.events)  # not written: they go with the next write
                    raise
        self._notify(ctx.run_id)

    def checkpoint(self, ctx: Context, name: str, value_json: str) -> None:
        """Store a step's checkpoint, committed before the step returns. With the run's pending
        state in the same transaction when there is some; when there is none, the checkpoint row
        alone, its ``checkpoint`` event buffered like a log line (written with the next write,
        within a flush interval): two pages fewer per step."""
        if self._forked:
            return
        with self.store.write_lock:
            state = ctx._state()  # the progress as last written (buffered events aside)?
            item = None if state == ctx._flushed else ctx._flush_item(force=True, state=state)
            try:
                ours = self.store.put_checkpoint(item or ctx.run_id, self.owner, name, value_json)
                if ours and item is None:  # dumps({"name": name}), without building the dict
                    ctx._emit_text("checkpoint", '{"name":' + dumps(name) + "}")
            except BaseException:
                if item is not None:
                    ctx._requeue(item.events)  # not written: they go with the next write
                raise
        if not ours:
            self._apply(({ctx.run_id}, set()))
        self._notify(ctx.run_id)

    def flush(self) -> None:
        """One flusher tick: every live run's changes, the lease, cancel requests, orphans."""
        if self._forked:
            return
        if self._ending:
            self._retry_ends()
        if self._waiting:
            self._pump_waiting()
        if self._queue:
            self._pump()
        now = time.time()
        cfg = self.workspace.settings
        beat = now >= self._next_beat
        with self._lock:
            ctxs = list(self._live.values())
            busy = bool(ctxs or self._queue or self._ending or self._waiting)
        if ctxs:
            self._check_timeouts(ctxs)
        if busy:
            with self.store.write_lock:
                items = [it for c in ctxs if (it := c._flush_item()) is not None]
                if items or beat:
                    try:
                        self._apply(self.store.flush(items, self.owner, now + cfg.lease if beat else None))
                    except BaseException:
                        for it in items:  # not written: they go with the next write (or the end)
                            if (c := self._live.get(it.run_id)) is not None:
                                c._requeue(it.events)
                        raise
                elif ctxs:  # nothing to write: still look for cancel requests, without a write
                    self._apply((set(), self.store.cancel_requests(self.owner)))
            if beat:
                self._next_beat = now + cfg.heartbeat_interval
            for it in items:
                self._notify(it.run_id)
        if now >= self._next_sweep:
            self._next_sweep = now + cfg.sweep_interval
            active = self.store.active()
            self.store.recover(active, owner.gone_reason)
            self._adopt(active)

    def _adopt(self, active: list[RunRecord]) -> None:
        """Queue pending runs meant for this process that it does not know: a start() whose
        caller died between the commit and the hand-over (it cannot happen through tether's
        own paths, which hold interrupts back; this keeps any such run from waiting forever)."""
        me = self.owner.instance
        for rec in active:
            if rec.status == Status.PENDING and rec.target == me and rec.id not in self._done:
                self.submit(rec)

    def _apply(self, outcome: tuple[set[str], set[str]]) -> None:
        lost, cancels = outcome
        for run_id in lost:
            ctx = self._live.get(run_id)
            if ctx is not None:
                ctx._request_cancel(
                    "taken over: the store no longer lists this process as owner", kind="lost"
                )
        for run_id in cancels:
            ctx = self._live.get(run_id)
            if ctx is not None:
                ctx._request_cancel("cancelled")

    def _ensure_flusher(self) -> None:
        from .. import _capture  # imported with the first run, not with tether

        _capture.install()  # re-checked at each submit: sys.stdout may have been replaced since
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    install_log_capture()
                    self._flusher = threading.Thread(
                        target=self._flush_loop, daemon=True, name="tether-flusher"
                    )
                    self._flusher.start()

    def _flush_loop(self) -> None:
        # ticks at a fixed rate, not an interval after each write: a run's progress is written
        # every flush_interval however long each write takes; a burst of events wakes it early
        due = time.monotonic() + self.workspace.settings.flush_interval
        while not self._stop.is_set():
            wait = max(0.0, due - time.monotonic())
            woke = self._wake.wait(min(wait, _QUEUE_POLL_S) if self._waiting else wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if not woke and now < due:  # a poll of the runs queued by concurrency=, no flush
                try:
                    self._pump_waiting()
                except Exception:
                    self._record_error("queue")
                continue
            if now >= due:
                interval = self.workspace.settings.flush_interval
                due += interval
                if due <= now:  # a write longer than the interval: no catch-up burst
                    due = now + interval
            try:
                self.flush()
            except Exception:
                self._record_error("flush")

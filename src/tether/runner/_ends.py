"""A run's end: its result checked, its end written, and written again later if that failed."""

from __future__ import annotations

import time
from typing import Any

from .. import codec
from ..context import Context
from ..errors import ParamsError
from ..model import Status, error_dict
from ..store import FlushItem
from ._state import _RETRY_FIRST_S, _RETRY_MAX_S, RunnerState, _transient


class _End:
    """A run's end whose write failed (disk full, a lock held too long): tried again later."""

    __slots__ = ("delay", "due", "error", "item", "reason", "result_json", "run_id", "status")

    def __init__(
        self, item: FlushItem, status: Status, result_json: str | None, error: dict[str, Any] | None
    ) -> None:
        self.run_id, self.item, self.status = item.run_id, item, status
        self.result_json, self.error = result_json, error
        self.reason = ""
        self.delay = _RETRY_FIRST_S
        self.due = 0.0


class Ending(RunnerState):
    def _succeed(self, ctx: Context, result: Any) -> None:
        # checked before the run is marked ended: a result tether cannot store fails the run
        # (its checkpoints kept, so a resume after the fix redoes only the last stretch)
        try:
            text = codec.encode(result, "result", pickle=ctx._pickles(), files=self.store.files)
        except ParamsError as exc:
            self._finish(ctx, Status.FAILED, None, error_dict("ParamsError", str(exc)))
            return
        if ctx._cancel and ctx._cancel_kind != "timeout":  # it saw the cancel and returned early
            self._finish(ctx, Status.CANCELLED, text, None)
            return
        if ctx.phase_name is not None and ctx.phase_name not in ctx.phases_done:
            ctx.phases_done.append(ctx.phase_name)
        self._finish(ctx, Status.SUCCEEDED, text, None)

    def _finish(
        self, ctx: Context, status: Status, result_json: str | None, error: dict[str, Any] | None
    ) -> None:
        """Write a run's end. If the write fails, the run stays ``running`` in the store (its
        lease renewed: it is not an orphan) and the flusher writes the same end again later."""
        if self._forked:
            return
        if status == Status.CANCELLED and error is None:
            error = error_dict("Cancelled", "run cancelled")
        from .. import _capture  # imported with the first run, not with tether

        _capture.end(ctx)  # its partial output lines, before the last flush
        with self.store.write_lock:
            item = ctx._flush_item(force=True)
        assert item is not None
        self._end(_End(item, status, result_json, error))

    def _end(self, end: _End) -> None:
        written = self._write_end(end)
        self._free_slot(end.run_id)
        if written:
            self._ended(end.run_id)
        self._pump_waiting()
        self._pump()

    def _write_end(self, end: _End) -> bool:
        """One try at writing ``end``; False (and queued for another try) if it failed."""
        run_id = end.run_id
        try:
            ours = self.store.finish(
                end.item, self.owner, end.status, result_json=end.result_json, error=end.error
            )
        except Exception as exc:
            self._record_error("finish")
            if not _transient(exc):  # e.g. the database deleted: no later try can store it
                with self._lock:
                    self._ending.pop(run_id, None)
                    self.unstored[run_id] = f"{type(exc).__name__}: {exc}"
                return True
            end.reason = f"{type(exc).__name__}: {exc}"
            end.due = time.monotonic() + end.delay
            end.delay = min(end.delay * 2, _RETRY_MAX_S)
            with self._lock:
                self._ending[run_id] = end
                self.unstored[run_id] = f"its end could not be written yet ({end.reason})"
            self._wake.set()
            return False
        with self._lock:
            self._ending.pop(run_id, None)
            self.unstored.pop(run_id, None)
        if ours and end.status == Status.SUCCEEDED:
            self._keep_result(run_id, end.result_json)
        return True

    def retrying(self, run_id: str) -> str | None:
        """Why the end of ``run_id`` is not written yet, while it is being tried again."""
        end = self._ending.get(run_id)
        return end.reason if end is not None else None

    def _retry_ends(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [e for e in self._ending.values() if e.due <= now]
        for end in due:
            if self._write_end(end):
                self._ended(end.run_id)

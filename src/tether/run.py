"""``tether.Run``: a handle on one run (one attempt), read through the store."""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import _interrupts, config, owner, runner
from ._text import safe
from .errors import ParamsError, PipelineNotFound, RunCancelled, RunFailed, RunInterrupted, StoreError
from .model import Event, Progress, RunRecord, Status, log_text
from .store import Store, dumps

__all__ = ["Run", "display_run", "get_run", "params_text", "runs"]


# run id -> {"origin", "ts"} of the cancels asked in this process (the newest 256), for displays
_cancel_origins: dict[str, dict[str, Any]] = {}


class Run:
    """One attempt of a pipeline with given params. Every property reads the current state."""

    def __init__(self, store: Store, run_id: str, record: RunRecord | None = None) -> None:
        self._store = store
        self.id = run_id
        rec = record if record is not None else store.get(run_id)
        self.key: str = rec.key
        self.attempt: int = rec.attempt
        self.pipeline: str = rec.pipeline
        self._params: dict[str, Any] | None = None  # decoded on first use: see params
        self._last = rec
        # ended before this handle was made (start() or get_run() gave back a stored outcome):
        # its panel says so
        self._found_ended = rec.status.terminal

    # -- state -------------------------------------------------------------------------------

    def snapshot(self) -> RunRecord:
        """The run's record now: from the store, with live progress when this process runs it.

        A run whose owner is proven gone is marked ``interrupted`` on the way.
        """
        rec = self._store.get(self.id)
        if rec.status.active:
            live = runner.get(self._store).live(self.id)
            if live is not None:
                rec.phase, rec.done, rec.total = live.phase_name, live.done, live.total
                rec.message = live.message
                rec.phases, rec.phases_done = list(live.phases), list(live.phases_done)
            elif owner.gone_reason(rec.owner, rec.lease_until, time.time()):
                self._store.recover([rec], owner.gone_reason)
                rec = self._store.get(self.id)
        self._last = rec
        return rec

    # A value read from a damaged column (see RunRecord.damaged) is a StoreError naming the run
    # and the column, never the stand-in value the record holds instead.

    @property
    def params(self) -> dict[str, Any]:
        params = self._params
        if params is None:
            params = self._params = self._last.params
        return params

    @property
    def damaged(self) -> tuple[str, ...]:
        """The damaged columns of the run's row as ``column=<raw value>`` (empty for a sound row).

        A row edited by hand or by another tool may hold what tether never writes; listings show
        it as damaged and reading such a value raises StoreError."""
        return self._last.damaged

    @property
    def status(self) -> Status:
        rec = self.snapshot()
        rec.need("status")
        return rec.status

    @property
    def phase(self) -> str | None:
        rec = self.snapshot()
        rec.need("phase")
        return rec.phase

    @property
    def progress(self) -> Progress:
        rec = self.snapshot()
        rec.need("done", "total")
        return rec.progress

    @property
    def error(self) -> dict[str, Any] | None:
        return self.snapshot().error

    @property
    def message(self) -> str | None:
        """The last log line."""
        rec = self.snapshot()
        rec.need("message")
        return rec.message

    @property
    def phases(self) -> list[str]:
        """Declared phases, then the undeclared ones the run entered, in order."""
        rec = self.snapshot()
        rec.need("phases")
        return rec.phases

    @property
    def phases_done(self) -> list[str]:
        """Phases the run (or the attempt it resumed) completed."""
        rec = self.snapshot()
        rec.need("phases_done")
        return rec.phases_done

    @property
    def version(self) -> str | None:
        self._last.need("version")
        return self._last.version

    @property
    def resumed_from(self) -> str | None:
        self._last.need("resumed_from")
        return self._last.resumed_from

    @property
    def store(self) -> Store:
        return self._store

    def events(self, after: int = 0, kinds: list[str] | None = None) -> list[Event]:
        """Stored events (seq, ts, kind, phase, data), oldest first; only ``seq > after``."""
        return self._store.events(self.id, after=after, kinds=kinds)

    def logs(self, n: int | None = None) -> list[str]:
        """The log lines stored so far (the last ``n`` if given)."""
        if n is None:
            return [log_text(e) for e in self._store.events(self.id, kinds=["log"])]
        return [log_text(e) for e in self._store.tail(self.id, "log", n)]

    def attempts(self) -> list[Run]:
        """Every attempt of this run's key, oldest first."""
        return [Run(self._store, r.id, r) for r in self._store.attempts(self.key)]

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Run:
        """Return once the run has ended; TimeoutError if it has not within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        run_ = runner.get(self._store)
        event = run_.done_event(self.id)
        if event is not None:
            warned = False

            def unstored() -> None:  # say once why a run that ran to its end is not ended yet
                nonlocal warned
                why = run_.unstored.get(self.id)
                if why and not warned:
                    warned = True
                    warnings.warn(f"run {self.id}: {why}; tether tries again until it is written "
                                  "(free some space?), and this wait goes on meanwhile",
                                  RuntimeWarning, stacklevel=4)

            if not _wait_event(event, deadline, unstored):
                why = run_.unstored.get(self.id)
                raise TimeoutError(f"run {self.id} has not ended after {timeout} s"
                                   + (f" ({why})" if why else ""))
            if self.id in run_.unstored:  # ended here, and its end can never be stored
                raise StoreError(f"run {self.id} ended in this process but its end could not be "
                                 f"stored ({run_.unstored[self.id]})")
        pause = 0.005
        while not self.snapshot().status.terminal:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"run {self.id} has not ended after {timeout} s "
                                   f"(status {self._last.status})")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.25)
        return self

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run and return its result, or raise RunFailed/RunCancelled/RunInterrupted."""
        rec = self.wait(timeout)._last
        rec.need("status")
        if rec.status == Status.SUCCEEDED:
            return rec.result
        err = rec.error or {}
        text = f"run {self.id} ({self.pipeline}, attempt {self.attempt}) {rec.status}"
        if err.get("message"):
            text += f": {err.get('type', 'Error')}: {err['message']}"
        cls = {Status.FAILED: RunFailed, Status.CANCELLED: RunCancelled}.get(
            rec.status, RunInterrupted)
        if rec.status == Status.FAILED and err.get("traceback"):
            text += "\n\nTraceback of the run:\n" + err["traceback"]
        raise cls(text, run=self, error=rec.error)

    # -- actions -----------------------------------------------------------------------------

    def cancel(self) -> Run:
        """Ask the run to stop. Pending runs (and runs whose owner is gone) end at once."""
        return self._cancel("api")

    def _cancel(self, via: str, **origin: Any) -> Run:
        """Cancel, recording where it came from (``via``: api, panel ...) for displays."""
        run_ = runner.get(self._store)
        me = run_.owner
        who = {"via": via, "pid": me.pid, "host": me.host, "instance": me.instance, **origin}
        # kept here too: a body that sees the local flag may end the run before the request
        # (and the origin in its event) is written, and then nothing more is written
        _cancel_origins[self.id] = {"origin": who, "ts": time.time()}
        while len(_cancel_origins) > 256:
            del _cancel_origins[next(iter(_cancel_origins))]
        with _interrupts.critical():
            # the local flag first: it stops a body here even while the store is locked
            run_.cancel_local(self.id)
            self._store.request_cancel(self.id, owner.gone_reason, origin=who)
        return self

    def rerun(self) -> Run:
        """A new attempt from scratch, executed in this process (or, for a detached run, by a
        worker). Refused while the key is active."""
        return self._new_attempt(resume=False)

    def resume(self) -> Run:
        """A new attempt reusing this attempt's checkpoints, executed in this process (or, for a
        detached run, by a worker). Manual resumes are not capped."""
        return self._new_attempt(resume=True)

    def _new_attempt(self, resume: bool) -> Run:
        from .pipeline import lookup

        if self._last.target != "worker" and lookup(self.pipeline) is None:
            raise PipelineNotFound(
                f"pipeline {self.pipeline!r} is not defined in this process, so run {self.id} "
                "cannot be executed here; run the cell that defines it (or import its module) "
                "and try again")
        run_ = runner.get(self._store)
        with _interrupts.critical():  # see Pipeline.start: never a committed run left unstarted
            rec = self._store.new_attempt(self.id, owner=run_.owner, resume=resume,
                                          lease_s=config.settings().lease, gone=owner.gone_reason)
            if rec.target != "worker":  # a detached run's new attempt is for a worker too
                run_.submit(rec)
        return Run(self._store, rec.id, rec)

    # -- display -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        rec = self._last
        damaged = f" damaged: {', '.join(rec.damaged)}" if rec.damaged else ""
        return safe(f"<tether.Run {self.pipeline} #{self.attempt} id={self.id} "
                    f"status={rec.status_text} phase={rec.phase!r}{damaged}>")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id and other._store is self._store

    def __hash__(self) -> int:
        return hash(self.id)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .widget import repr_bundle

        return repr_bundle(self, include, exclude)

    def _ipython_display_(self) -> None:
        # IPython prefers this to _repr_mimebundle_: the panel is shown with a display id, so
        # the static snapshot stored in the notebook is replaced by the end state when it ends
        from .widget import show

        show(self)


def _wait_event(event: threading.Event, deadline: float | None,
                each: Callable[[], None] | None = None) -> bool:
    # short waits keep KeyboardInterrupt responsive in the main thread
    while not event.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        event.wait(0.1 if left is None else min(0.1, left))
        if each is not None:
            each()
    return True


PARAM_VALUE_CHARS = 40  # characters of one param value shown in a clipped params text
PARAMS_CHARS = 120  # characters of a clipped params text


def params_text(params: dict[str, Any] | None, clip: bool = True, limit: int = PARAMS_CHARS) -> str:
    """Params as listings show them: ``repo='./app', files=40`` (Python reprs, names sorted as
    stored). Clipped (each value, then the whole, an ellipsis marking a cut) unless ``clip`` is
    False. Run text is not escaped here: each display escapes it its own way."""
    if not params:
        return ""
    parts = []
    for name, value in params.items():
        text = repr(value)
        if clip and len(text) > PARAM_VALUE_CHARS:
            text = text[: PARAM_VALUE_CHARS - 1] + "…"
        parts.append(f"{name}={text}")
    text = ", ".join(parts)
    if clip and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def display_run(run: Run) -> None:
    """Show ``run`` in a notebook (no-op outside IPython kernels)."""
    if "ipykernel" not in sys.modules:
        return
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or not hasattr(ip, "kernel"):
        return
    display(run)


def get_run(run_id: str) -> Run:
    """The run with this id (RunNotFound if none). An orphan is marked interrupted on the way."""
    store = config.store()
    run = Run(store, run_id)
    run.snapshot()
    return run


def runs(pipeline: Any = None, status: str | list[str] | None = None, key: str | None = None,
         limit: int | None = 100, params: dict[str, Any] | None = None) -> list[Run]:
    """Every attempt matching the filters, newest first. ``pipeline``: a name or a Pipeline.

    ``params``: only runs whose params include each given name with an equal value, compared
    as JSON values (``True`` is not ``1``, ``3 == 3.0``; lists and dicts compare whole), e.g.
    ``tether.runs(params={"repo": "./app"})``."""
    store = config.store()
    name = getattr(pipeline, "name", pipeline)
    if params is not None:
        params = _params_filter(params)
    recs = store.list_runs(pipeline=name, status=status, key=key, limit=limit, params=params)
    orphans = store.recover([r for r in recs if r.status.active], owner.gone_reason)
    if orphans:
        recs = store.list_runs(pipeline=name, status=status, key=key, limit=limit, params=params)
    return [Run(store, r.id, r) for r in recs]


def _params_filter(params: Any) -> dict[str, Any]:
    """``params=`` of runs(): a dict of str names to JSON values, else ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError(f"tether.runs(params=...) takes a dict of parameter values, e.g. "
                          f"params={{'repo': './app'}}; got {type(params).__name__}")
    for k, v in params.items():
        if not isinstance(k, str):
            raise ParamsError(f"tether.runs(params=...): the name {k!r} is not a str")
        try:
            dumps(v)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"tether.runs(params=...): {k!r} is {type(v).__name__} "
                              f"({safe(repr(v))[:80]}), not a JSON value ({exc})") from None
    return params

"""``tether.Run``: a handle on one run (one attempt), read through the store."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _interrupts, codec, owner
from ._done import DoneWatcher, _Once
from ._params import params_filter, params_text
from ._text import safe
from .context import Context, current
from .errors import (
    PipelineError,
    PipelineNotFound,
    RunCancelled,
    RunFailed,
    RunInterrupted,
    StoreError,
)
from .model import Event, Progress, RunRecord, Status, log_text
from .store import Store

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["DoneWatcher", "Run", "display_run", "params_filter", "params_text"]


class Run:
    """One attempt of a pipeline with given params. Every property reads the current state."""

    def __init__(
        self, workspace: Workspace, store: Store, run_id: str, record: RunRecord | None = None
    ) -> None:
        self._ws = workspace  # its runner, settings and pipelines; the store is the one it lives in
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
            live = self._ws.runner(self._store).live(self.id)
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
    def code(self) -> str | None:
        """The fingerprint of the body's code that made this attempt (``ast:<hex>``), or None."""
        self._last.need("code")
        return self._last.code

    @property
    def created_by(self) -> str:
        """What made this attempt: ``start``, ``start:code`` (the code changed), ``start:rerun``,
        ``start:resume``, ``start:resume:code``, ``rerun`` or ``resume``."""
        self._last.need("created_by")
        return self._last.created_by

    @property
    def resumed_from(self) -> str | None:
        self._last.need("resumed_from")
        return self._last.resumed_from

    @property
    def workspace(self) -> Workspace:
        """The workspace this handle was made in (its runner, settings and pipelines)."""
        return self._ws

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
        return [Run(self._ws, self._store, r.id, r) for r in self._store.attempts(self.key)]

    # -- control: tries, timeout, queue, parent and children ---------------------------------

    @property
    def tries(self) -> int:
        """Tries started so far (retries happen within the run; a resumed attempt goes on
        counting from the attempt it resumes). 0 while pending."""
        return self.snapshot().tries

    @property
    def max_tries(self) -> int:
        """1 + the pipeline's ``retries``."""
        return self._last.max_tries

    @property
    def retry_at(self) -> float | None:
        """While the run waits to retry: when the next try starts (epoch seconds), else None."""
        return self.snapshot().retry_at

    @property
    def timeout(self) -> float | None:
        """The pipeline's ``timeout`` (seconds per try), or None."""
        return self._last.timeout

    @property
    def overdue(self) -> float | None:
        """Seconds the current try is past its timeout while its body makes no ctx call (it
        stops at its next one), else None."""
        return self.snapshot().overdue(time.time())

    @property
    def ahead(self) -> int | None:
        """For a pending run of a pipeline with ``concurrency=``: how many runs of it start
        before this one (start order, across processes); else None."""
        return self._store.queue_ahead(self.id)

    @property
    def parent(self) -> Run | None:
        """The run whose body started this one, or None."""
        parent_id = self._last.parent_id
        return None if parent_id is None else Run(self._ws, self._store, parent_id)

    def children(self) -> list[Run]:
        """Runs this run's body started (or attached to), oldest first, every attempt."""
        return [Run(self._ws, self._store, r.id, r) for r in self._store.children(self.id)]

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Run:
        """Return once the run has ended; TimeoutError if it has not within ``timeout`` s.

        Called from a run's body (a parent waiting for its child), the parent gives its runner
        slot back while it waits, and a cancel (or the timeout) of the parent ends the wait."""
        ctx = current()
        if ctx is None or ctx.run_id == self.id or ctx._runner.store is not self._store:
            return self._wait(timeout, None)
        if self._ended_here():
            return self._wait(timeout, None)
        if _on_loop(ctx):
            raise PipelineError(
                f"run {self.id}: result()/wait() inside an async pipeline would block the event "
                "loop its child may need; use `await run` (or `await asyncio.to_thread(run.wait)`)"
            )
        with ctx._runner.parked(ctx):
            return self._wait(timeout, ctx)

    def _ended_here(self) -> bool:
        event = self._ws.runner(self._store).done_event(self.id)
        if event is not None:
            return event.is_set()
        return self._store.get(self.id).status.terminal

    def _wait(self, timeout: float | None, parent: Context | None) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        run_ = self._ws.runner(self._store)
        event = run_.done_event(self.id)
        if event is not None:
            warned = False

            def unstored() -> None:  # say once why a run that ran to its end is not ended yet
                nonlocal warned
                if parent is not None and parent._cancel:
                    parent._raise_cancelled()
                why = run_.retrying(self.id)
                if why and not warned:
                    warned = True
                    warnings.warn(
                        f"run {self.id}: its end could not be written yet ({why}); "
                        "tether tries again until it is written "
                        "(free some space?), and this wait goes on meanwhile",
                        RuntimeWarning,
                        stacklevel=5,
                    )

            if not _wait_event(event, deadline, unstored):
                why = run_.retrying(self.id)
                raise TimeoutError(
                    f"run {self.id} has not ended after {timeout} s"
                    + (f" (its end could not be written yet: {why})" if why else "")
                )
            if self.id in run_.unstored:  # ended here, and its end can never be stored
                raise StoreError(
                    f"run {self.id} ended in this process but its end could not be "
                    f"stored ({run_.unstored[self.id]})"
                )
            if run_.stored_result(self.id)[0]:  # succeeded here: result() needs no read
                return self
        if self._last.status.terminal:  # read ended already (an attach): that never changes
            return self
        pause = 0.005
        while not self.snapshot().status.terminal:
            if parent is not None and parent._cancel:
                parent._raise_cancelled()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"run {self.id} has not ended after {timeout} s (status {self._last.status})"
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.25)
        return self

    # -- callbacks and await -----------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[Run], Any]) -> None:
        """Call ``fn(run)`` once when the run ends, as ``concurrent.futures`` does: at once (in
        this thread) if it has ended already, else in a tether thread. What ``fn`` raises is
        logged (logger ``tether``), never raised into tether."""
        if not callable(fn):
            raise TypeError(f"add_done_callback() takes a callable, got {fn!r}")
        once = _Once(self, fn)
        run_ = self._ws.runner(self._store)
        event = run_.done_event(self.id)
        if event is not None:  # executed by this process: called at its end
            if not event.is_set():

                def fire_if_ended(_run_id: str) -> None:
                    if event.is_set():
                        once.fire()

                run_.subscribe(self.id, fire_if_ended)
            if event.is_set():
                once.fire()
            return
        if self.snapshot().status.terminal:
            once.fire()
            return
        self._ws.watcher(self._store).add(self, once)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await run``: the result, or the error ``result()`` raises; the event loop runs on
        meanwhile. Awaited in an async run body (a parent), its runner slot is given back."""
        return self._await().__await__()

    async def _await(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def ended(_run: Run) -> None:
            loop.call_soon_threadsafe(_resolve, future)

        self.add_done_callback(ended)
        ctx = current()
        parked: Any = contextlib.nullcontext()
        if ctx is not None and ctx.run_id != self.id and ctx._runner.store is self._store:
            parked = ctx._runner.parked(ctx)
        with parked:
            await future
        return self.result()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run and return its result, or raise RunFailed/RunCancelled/RunInterrupted."""
        self.wait(timeout)
        if not self._last.status.terminal:  # else the record read at its end has it (damaged or not)
            found, text = self._ws.runner(self._store).stored_result(self.id)
            if found:  # succeeded in this process: the text its end committed, decoded as a read would
                return codec.decode(text, self.id, "result", self._store.files)
        rec = self._last if self._last.status.terminal else self.snapshot()
        rec.need("status")
        if rec.status == Status.SUCCEEDED:
            return rec.result
        err = rec.error or {}
        text = f"run {self.id} ({self.pipeline}, attempt {self.attempt}) {rec.status}"
        if err.get("message"):
            text += f": {err.get('type', 'Error')}: {err['message']}"
        cls = {Status.FAILED: RunFailed, Status.CANCELLED: RunCancelled}.get(rec.status, RunInterrupted)
        if rec.status == Status.FAILED and err.get("traceback"):
            text += "\n\nTraceback of the run:\n" + err["traceback"]
        raise cls(text, run=self, error=rec.error)

    # -- actions -----------------------------------------------------------------------------

    def cancel(self) -> Run:
        """Ask the run to stop. Pending runs (and runs whose owner is gone) end at once. The
        active runs its body started (children, theirs, ...) are cancelled with it."""
        return self._cancel("api")

    def _cancel(self, via: str, **origin: Any) -> Run:
        """Cancel, recording where it came from (``via``: api, panel ...) for displays."""
        run_ = self._ws.runner(self._store)
        me = run_.owner
        who = {"via": via, "pid": me.pid, "host": me.host, "instance": me.instance, **origin}
        # kept here too: a body that sees the local flag may end the run before the request
        # (and the origin in its event) is written, and then nothing more is written
        self._ws.note_cancel(self.id, {"origin": who, "ts": time.time()})
        with _interrupts.critical():
            # the local flag first: it stops a body here even while the store is locked
            run_.cancel_local(self.id)
            self._store.request_cancel(self.id, owner.gone_reason, origin=who)
        for child in self._store.descendants(self.id):  # those executing here stop at once
            run_.cancel_local(child.id)
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
        pipe = self._ws.lookup(self.pipeline)
        if self._last.target != "worker" and pipe is None:
            raise PipelineNotFound(
                f"pipeline {self.pipeline!r} is not defined in this process, so run {self.id} "
                "cannot be executed here; run the cell that defines it (or import its module) "
                "and try again"
            )
        run_ = self._ws.runner(self._store)
        pipe = self._ws.lookup(self.pipeline)
        with _interrupts.critical():  # see Pipeline.start: never a committed run left unstarted
            rec = self._store.new_attempt(
                self.id,
                owner=run_.owner,
                resume=resume,
                lease_s=self._ws.settings.lease,
                gone=owner.gone_reason,
                control=None if pipe is None else pipe._control,
                code=None if pipe is None else (pipe.version, pipe.code),
            )
            if rec.target != "worker":  # a detached run's new attempt is for a worker too
                run_.submit(rec)
        return Run(self._ws, self._store, rec.id, rec)

    # -- display -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        rec = self._last
        damaged = f" damaged: {', '.join(rec.damaged)}" if rec.damaged else ""
        return safe(
            f"<tether.Run {self.pipeline} #{self.attempt} id={self.id} "
            f"status={rec.status_text} phase={rec.phase!r}{damaged}>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id and other._store is self._store

    def __hash__(self) -> int:
        return hash(self.id)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # the front end (tether.widget) is wired in by the workspace: this layer never imports it
        front = self._ws.front_end()
        if front is None:
            return {"text/plain": repr(self)}
        return front.repr_bundle(self, include, exclude)

    def _ipython_display_(self) -> None:
        # IPython prefers this to _repr_mimebundle_: the panel is shown with a display id, so
        # the static snapshot stored in the notebook is replaced by the end state when it ends
        front = self._ws.front_end()
        if front is None:
            print(repr(self))
            return
        front.show(self)


def _wait_event(
    event: threading.Event, deadline: float | None, each: Callable[[], None] | None = None
) -> bool:
    # short waits keep KeyboardInterrupt responsive in the main thread
    while not event.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        event.wait(0.1 if left is None else min(0.1, left))
        if each is not None:
            each()
    return True


def _on_loop(ctx: Context) -> bool:
    """True on the runner's event loop thread (an async body)."""
    loop = ctx._runner.loop
    asyncio = sys.modules.get("asyncio")
    return loop is not None and asyncio is not None and asyncio._get_running_loop() is loop


def _resolve(future: Any) -> None:
    if not future.done():
        future.set_result(None)


def display_run(run: Run) -> None:
    """Show ``run`` in a notebook (no-op outside IPython kernels)."""
    if "ipykernel" not in sys.modules:
        return
    try:
        from IPython.core.getipython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or not hasattr(ip, "kernel"):
        return
    display(run)

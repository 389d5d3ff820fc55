"""``tether.panel(run)``: the run panel, one widget model per run (attempt) per front-end session.

The panel's state is one traitlet, ``snapshot``: the full state of the run (see snapshot.py), so a
re-render, a page reload or a rebinding shows the truth at once. Every update, from any thread,
goes through ``RunPanel.refresh()``. Buttons send ``{id, action}`` custom messages; the reply is
``{id, ok, error}`` and a failed action also lands in the ``notice`` traitlet, so it is never lost.

A panel shows the attempt it was given. When the key has a newer attempt, the snapshot says so
(``newer``) and the front end offers it; only a click in the panel (Re-run, Resume, or the newer
attempt's link) moves a panel to another attempt.

Saved notebooks: the static text/plain and text/html of each display of the panel (its
*fallback*) are replaced when the run ends, by ``update_display_data`` on the display's id from
the kernel, and by the front end itself in JupyterLab / Notebook 7 (see panel.js), so a saved or
exported notebook shows how the run ended, not how it was when the cell ran.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

from .._text import safe
from ..errors import RunNotFound, StoreError
from ..model import RunRecord
from ..run import Run
from ..view import snapshot as _snap
from ..view.control import ControlReader
from ..view.reader import RunReader
from . import poller as _poller
from ._displays import STATIC, _parent_header, _update_displays, _widget_bundle, esm, show
from ._session import Panels, PerSession, session

__all__ = ["Panels", "PerSession", "RunPanel", "panel", "session"]

ACTIONS = ("cancel", "rerun", "resume", "refresh", "newer")
MAX_DISPLAYS = 16  # displays of one panel whose fallback is kept current
# an active run's snapshot is re-sent at least this often (the poller's pace permitting: every
# POLL_INTERVAL for a polled run, every SAFETY_FACTOR * POLL_INTERVAL for a streamed one)
BEAT_S = 3.0


class RunPanel(anywidget.AnyWidget):
    """The progress panel of one run. Create it with ``tether.panel(run)``."""

    _esm = esm("panel.js")
    _css = STATIC / "panel.css"

    snapshot = traitlets.Dict().tag(sync=True)
    notice = traitlets.Dict().tag(sync=True)
    # the static text/plain + text/html of the panel, for the front end to keep saved outputs
    # current: {"model_id", "final", "text/plain", "text/html"}
    fallback = traitlets.Dict().tag(sync=True)

    def __init__(self, run: Run, *, poller: _poller.Poller | None = None) -> None:
        if not isinstance(run, Run):
            raise TypeError(
                f"tether.panel() takes a tether.Run, got {type(run).__name__} "
                f"({run!r:.80}); get one with pipeline.start(...) or tether.get_run(id)"
            )
        super().__init__()
        self._plock = threading.RLock()
        self._panels = run.workspace.state(Panels)
        self._by_id = self._panels.of(session())  # this session's panels
        self._poller = poller or run.workspace.state(_poller.Poller)
        self._run = run
        self._reader = RunReader(run)
        self._control = ControlReader(run.store)
        self._child_subs: dict[str, Callable[[], None]] = {}  # child run id -> unsubscribe
        self._mode = ""
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._stored = bool(getattr(run, "_found_ended", False))
        self._rec: RunRecord | None = None
        self._newer: dict[str, Any] | None = None
        self._displays: list[tuple[str, dict[str, Any]]] = []  # (display id, parent header)
        self._finals = 0  # final fallbacks made (under _plock): a display rendered before one
        self._fallback_key: Any = None
        self._sent_at = 0.0  # when the last snapshot was sent (time.time())
        self.updates = 0  # snapshots actually sent (tests, benchmark)
        self.on_msg(self._on_custom)
        self.refresh()

    def __repr__(self) -> str:
        snap = self.snapshot or {}
        return safe(
            f"<tether.panel {snap.get('pipeline')} #{snap.get('attempt')} "
            f"id={snap.get('id')} status={snap.get('status')} mode={snap.get('mode')}>"
        )

    @property
    def run(self) -> Run:
        """The run (attempt) the panel shows now."""
        return self._run

    @property
    def mode(self) -> str:
        """``stream`` (this process runs it), ``poll`` (another process does) or ``static``."""
        return self._mode

    # -- the one way in for updates ---------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Read the run, pick the mode, send the snapshot if it changed. Returns: still live."""
        was = (self.snapshot or {}).get("status")
        live = self._refresh(force)
        if was in ("pending", "running") and not live and not self._closed:
            _tell_key(self._run, self)  # its end changes what the key's other panels offer
        return live

    def _refresh(self, force: bool) -> bool:
        with self._plock:
            if self._closed:
                return False
            rec = self._rec
            if force or rec is None or not rec.status.terminal:
                try:
                    rec = self._reader.read(now=_now())
                except (RunNotFound, StoreError) as exc:  # gone, or the store was closed
                    self.notice = {"level": "error", "text": f"{type(exc).__name__}: {exc}"}
                    self._follow("static")
                    return False
                self._rec = rec
            mode = self._mode_for(rec)
            self._follow(mode)
            if rec.status.terminal:
                self._check_newer(rec)
            snap = self._build(rec, mode)
            # while the run is active the snapshot is sent at least every BEAT_S seconds, even
            # unchanged: a front end that hears nothing for long says so (panel.js QUIET_MS)
            beat = mode != "static" and snap["now"] - self._sent_at >= BEAT_S
            if force or beat or not _snap.same(snap, self.snapshot):
                self.snapshot = snap
                self._sent_at = snap["now"]
                self.updates += 1
                self._keep_fallback(snap)
            return mode != "static"

    def _build(self, rec: RunRecord, mode: str) -> _snap.Snapshot:
        now = _now()
        reader = self._reader
        cancel = None
        if reader.cancel is not None:
            here = {
                "instance": self._run.workspace.runner(self._run.store).owner.instance,
                "panel": self.model_id,
            }
            cancel = {"origin": _snap.cancel_origin(reader.cancel["origin"], here), "at": reader.cancel["ts"]}
        waiting = None
        if rec.status.active and rec.status.value == "pending":
            waiting = _snap.waiting_text(
                rec,
                str(self._run.store.path),
                _module_of(self._run, rec.pipeline),
                here=self._run.workspace.runner(self._run.store).owns(rec.id),
            )
        if self._control.store is not self._run.store:
            self._control = ControlReader(self._run.store)
        control = self._control.read(rec)
        self._watch_children(self._control.active_children())
        return _snap.build(
            rec,
            mode=mode,
            log=reader.log,
            rate=reader.rate(now),
            now=now,
            stored=self._stored,
            newer=self._newer,
            cancel=cancel,
            waiting=waiting,
            **control,
        )

    def _watch_children(self, active: list[str]) -> None:
        """Active children this process executes poke this panel when they flush, so a parent
        that sits waiting for them (no flush of its own) still lists their progress live."""
        if not active and not self._child_subs:
            return
        runner = self._run.workspace.runner(self._run.store)
        want = set() if self._closed else {i for i in active if runner.owns(i)}
        for run_id in [i for i in self._child_subs if i not in want]:
            self._child_subs.pop(run_id)()
        poller, control = self._poller, self._control

        def changed(_id: str) -> None:
            control.child_changed()
            poller.poke(self)

        for run_id in want - self._child_subs.keys():
            self._child_subs[run_id] = runner.subscribe(run_id, changed)

    def _check_newer(self, rec: RunRecord) -> None:
        """Look (one light read) for a newer attempt of the run's key."""
        try:
            found = self._run.store.newest([rec.key]).get(rec.key)
        except StoreError:
            return
        newer = None
        if found is not None and isinstance(rec.attempt, int) and found[1] > rec.attempt:
            newer = {
                "id": _snap._clip(found[0], _snap.MAX_ID),
                "attempt": found[1],
                "status": _snap._clip(found[2], _snap.MAX_NAME),
            }
        self._newer = newer

    def _feed_refresh(self) -> bool:  # called by the poller thread
        return self.refresh()

    def _mode_for(self, rec: RunRecord) -> str:
        if rec.status.terminal:
            return "static"
        if self._run.workspace.runner(self._run.store).owns(rec.id):
            return "stream"
        return "poll"

    def _follow(self, mode: str) -> None:
        """Attach to the feed the mode needs (called with the panel lock held)."""
        if mode == self._mode:
            return
        self._mode = mode
        if mode != "stream" and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if mode == "static":
            self._poller.unwatch(self)
        elif mode == "poll":
            self._poller.watch(self, poll=True)
        else:
            self._poller.watch(self, poll=False)
            poller = self._poller
            self._unsubscribe = self._run.workspace.runner(self._run.store).subscribe(
                self._run.id, lambda _id: poller.poke(self)
            )
            poller.poke(self)  # in case the run ended before the subscription

    def bind(self, run: Run) -> None:
        """Show another attempt (e.g. after Re-run) in this same widget."""
        by_id = self._by_id
        with self._panels.lock, self._plock:
            old = self._run
            if run.id == old.id and run.store is old.store:
                return
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._poller.unwatch(self)
            self._mode = ""
            if by_id.get((str(old.store.path), old.id)) is self:
                del by_id[(str(old.store.path), old.id)]
            by_id.setdefault((str(run.store.path), run.id), self)
            self._run = run
            self._reader = RunReader(run)
            self._rec = None
            self._newer = None
            self._stored = bool(getattr(run, "_found_ended", False))
        self.refresh(force=True)  # outside the registry lock: refreshing may tell other panels

    def _mark_stored(self) -> None:
        """The run was handed out as a stored outcome (start() found it ended): say so."""
        with self._plock:
            if not self._stored:
                self._stored = True
                self.refresh(force=True)

    # -- buttons ----------------------------------------------------------------------------

    def _on_custom(self, _widget: Any, content: Any, _buffers: Any) -> None:
        reply = self.handle(content)
        if reply is not None:
            self.send(reply)

    def handle(self, content: Any) -> dict[str, Any] | None:
        """Carry out a ``{id, action}`` request from the front end; returns the reply."""
        if not isinstance(content, dict) or "action" not in content:
            return None
        req_id, action = content.get("id"), content.get("action")
        try:
            if action not in ACTIONS:
                raise ValueError(f"unknown panel action {action!r}; expected one of {', '.join(ACTIONS)}")
            if action == "refresh":
                with self._plock:
                    if self._rec is not None and self._rec.status.terminal:
                        self.refresh()  # an ended run does not change: only look for a newer one
                    else:
                        self.refresh(force=True)
            elif action == "cancel":
                self._run._cancel("panel", panel=self.model_id)
                self.refresh()
            elif action == "newer":
                self._open_newer()
            else:
                new = self._run.rerun() if action == "rerun" else self._run.resume()
                self.bind(new)
                _tell_key(new, self)
        except Exception as exc:
            text = f"{_label(action)} failed: {type(exc).__name__}: {exc}"
            self.notice = {
                "level": "error",
                "text": text,
                "action": str(action),
                "detail": traceback.format_exc(limit=5),
            }
            return {"id": req_id, "ok": False, "error": text}
        if action != "refresh":
            self.notice = {}
        return {"id": req_id, "ok": True, "error": None}

    def _open_newer(self) -> None:
        store = self._run.store
        found = store.newest([self._run.key]).get(self._run.key)
        if found is None or found[1] <= self._run.attempt:
            self.refresh(force=True)
            return
        self.bind(self._run.workspace.run(store, found[0]))

    # -- display ----------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view plus a static text/html and text/plain snapshot for other front ends."""
        self.refresh()
        out = super()._repr_mimebundle_(**kwargs)
        data, meta = out if isinstance(out, tuple) else (out, {})
        snap = self.snapshot
        data = dict(data or {})
        data["text/plain"] = _snap.text_snapshot(snap)
        data["text/html"] = _snap.html_snapshot(snap)
        return data, meta

    def _ipython_display_(self, **kwargs: Any) -> None:
        """Display with a display id, so the static snapshot saved with the notebook can be
        replaced when the run ends (see ``_keep_fallback``)."""
        finals = self._finals
        data, meta = self._repr_mimebundle_()
        display_id = uuid.uuid4().hex
        parent = _parent_header()
        with self._plock:  # _keep_fallback replaces displays under this lock: after this one
            self._displays.append((display_id, parent))
            del self._displays[:-MAX_DISPLAYS]
            show(data, raw=True, metadata=meta, display_id=display_id)
            fb = self.fallback
            if self._finals != finals and fb.get("final") and fb["text/plain"] != data["text/plain"]:
                # the run ended while this display was rendered and before it was registered, so
                # _keep_fallback had no display to replace: replace this one now
                bundle, bmeta = _widget_bundle(self, RunPanel)
                static = {"text/plain": fb["text/plain"], "text/html": fb["text/html"]}
                _update_displays([(display_id, parent)], {**bundle, **static}, bmeta)

    def _keep_fallback(self, snap: _snap.Snapshot) -> None:
        """Keep the static renderings of the panel's displays current where it matters: when the
        run ends (or, ended, changes what it says: a newer attempt, a stored outcome)."""
        final = snap["status"] not in ("pending", "running")
        key = (
            snap["id"],
            snap["status"],
            snap["stored"],
            snap["newer"],
            snap["cancel"],
            tuple(snap["damaged"]),
        )
        if key == self._fallback_key:
            return
        self._fallback_key = key
        text, html = _snap.text_snapshot(snap), _snap.html_snapshot(snap)
        self.fallback = {"model_id": self.model_id, "final": final, "text/plain": text, "text/html": html}
        self._finals += final
        if final and self._displays:
            data, meta = _widget_bundle(self, RunPanel)
            _update_displays(self._displays, {**data, "text/plain": text, "text/html": html}, meta)

    def close(self) -> None:
        """Stop following the run and close the widget model."""
        by_id = self._by_id
        with self._panels.lock, self._plock:
            self._closed = True
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._poller.unwatch(self)
            self._watch_children([])
            for k in [k for k, v in by_id.items() if v is self]:
                del by_id[k]
        super().close()


def _now() -> float:
    import time

    return time.time()


def _label(action: Any) -> str:
    return {
        "cancel": "Cancel",
        "rerun": "Re-run",
        "resume": "Resume",
        "newer": "Showing the newer attempt",
    }.get(str(action), str(action))


def _module_of(run: Run, pipeline: str) -> str | None:
    """The module a worker imports for ``pipeline``, when it is registered in ``run``'s workspace."""
    found = run.workspace.lookup(pipeline)
    module = getattr(getattr(found, "fn", None), "__module__", None)
    return module if isinstance(module, str) and module != "__main__" else None


def _tell_key(run: Run, source: RunPanel) -> None:
    """A new attempt of ``run``'s key was made here: the key's other panels show the link now."""
    panels = run.workspace.state(Panels)
    with panels.lock:
        others = [
            w
            for (path, _id), w in panels.every()
            if w is not source and not w._closed and path == str(run.store.path) and w.run.key == run.key
        ]
    for w in others:
        try:
            w.refresh()
        except Exception:  # one panel's trouble is shown by that panel, not raised here
            pass


def panel(run: Run) -> RunPanel:
    """The panel widget of ``run``: the same widget every time for the same run in this session
    (a Jupyter kernel; a browser session of ``marimo run``).

    A panel shows the attempt it was given; a newer attempt of the key is offered in it, never
    swapped in behind your back."""
    if not isinstance(run, Run):
        raise TypeError(
            f"tether.panel() takes a tether.Run, got {type(run).__name__} "
            f"({run!r:.80}); get one with pipeline.start(...) or tether.get_run(id)"
        )
    path = str(run.store.path)
    panels = run.workspace.state(Panels)
    with panels.lock:
        by_id = panels.of(session())
        found = by_id.get((path, run.id))
        if found is not None and not found._closed and getattr(found.comm, "_closed", False):
            found.close()  # marimo closes a widget's comm when the cell that made it runs again
        if found is None or found._closed:
            found = None
            widget = RunPanel(run)
            by_id[(path, run.id)] = widget
    if found is not None:
        if getattr(run, "_found_ended", False):
            found._mark_stored()
        return found
    if run.attempt > 1:
        _tell_key(run, widget)
    return widget

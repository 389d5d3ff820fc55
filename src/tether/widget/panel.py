"""``tether.panel(run)``: the run panel, one widget model per run per kernel.

The panel's state is one traitlet, ``snapshot``: the full state of the run (see snapshot.py), so a
re-render, a page reload or a rebinding shows the truth at once. Every update, from any thread,
goes through ``RunPanel.refresh()``. Buttons send ``{id, action}`` custom messages; the reply is
``{id, ok, error}`` and a failed action also lands in the ``notice`` traitlet, so it is never lost.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from .. import runner as _runner
from .._text import safe
from ..errors import RunNotFound, StoreError
from ..model import RunRecord
from ..run import Run
from . import poller as _poller
from . import snapshot as _snap
from .reader import RunReader

__all__ = ["RunPanel", "panel"]

STATIC = Path(__file__).parent / "static"
ACTIONS = ("cancel", "rerun", "resume", "refresh")

_lock = threading.RLock()
# (store path, key) -> the panel following that key's newest attempt it was shown;
# (store path, run id) -> the panel bound to that run (older attempts shown on purpose too)
_by_key: dict[tuple[str, str], RunPanel] = {}
_by_id: dict[tuple[str, str], RunPanel] = {}


class RunPanel(anywidget.AnyWidget):
    """The progress panel of one run. Create it with ``tether.panel(run)``."""

    _esm = STATIC / "panel.js"
    _css = STATIC / "panel.css"

    snapshot = traitlets.Dict().tag(sync=True)
    notice = traitlets.Dict().tag(sync=True)

    def __init__(self, run: Run, *, poller: _poller.Poller | None = None) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"tether.panel() takes a tether.Run, got {type(run).__name__} "
                            f"({run!r:.80}); get one with pipeline.start(...) or tether.get_run(id)")
        super().__init__()
        self._plock = threading.RLock()
        self._poller = poller or _poller.get()
        self._run = run
        self._reader = RunReader(run)
        self._mode = ""
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self.updates = 0  # snapshots actually sent (tests, benchmark)
        self.on_msg(self._on_custom)
        self.refresh()

    def __repr__(self) -> str:
        snap = self.snapshot or {}
        return safe(f"<tether.panel {snap.get('pipeline')} #{snap.get('attempt')} "
                    f"id={snap.get('id')} status={snap.get('status')} mode={snap.get('mode')}>")

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
        with self._plock:
            if self._closed:
                return False
            try:
                rec = self._reader.read()
            except (RunNotFound, StoreError) as exc:  # gone, or the store was closed
                self.notice = {"level": "error", "text": f"{type(exc).__name__}: {exc}"}
                self._follow("static")
                return False
            mode = self._mode_for(rec)
            self._follow(mode)
            snap = _snap.build(rec, mode=mode, log=self._reader.log,
                               phase_started=self._reader.phase_started)
            if force or not _snap.same(snap, self.snapshot):
                self.snapshot = snap
                self.updates += 1
            return mode != "static"

    def _feed_refresh(self) -> bool:  # called by the poller thread
        return self.refresh()

    def _mode_for(self, rec: RunRecord) -> str:
        if rec.status.terminal:
            return "static"
        if _runner.get(self._run.store).owns(rec.id):
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
            self._unsubscribe = _runner.get(self._run.store).subscribe(
                self._run.id, lambda _id: poller.poke(self))
            poller.poke(self)  # in case the run ended before the subscription

    def bind(self, run: Run) -> None:
        """Show another attempt (e.g. after Re-run) in this same widget."""
        with _lock, self._plock:
            old = self._run
            if run.id == old.id and run.store is old.store:
                return
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._poller.unwatch(self)
            self._mode = ""
            path = str(run.store.path)
            if _by_id.get((str(old.store.path), old.id)) is self:
                del _by_id[(str(old.store.path), old.id)]
            _by_id[(path, run.id)] = self
            if run.key == old.key:
                _by_key[(path, run.key)] = self
            self._run = run
            self._reader = RunReader(run)
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
                raise ValueError(f"unknown panel action {action!r}; expected one of "
                                 f"{', '.join(ACTIONS)}")
            if action == "refresh":
                self.refresh(force=True)
            elif action == "cancel":
                self._run.cancel()
                self.refresh()
            else:
                new = self._run.rerun() if action == "rerun" else self._run.resume()
                self.bind(new)
        except Exception as exc:
            text = f"{_label(action)} failed: {type(exc).__name__}: {exc}"
            self.notice = {"level": "error", "text": text, "action": str(action),
                           "detail": traceback.format_exc(limit=5)}
            return {"id": req_id, "ok": False, "error": text}
        if action != "refresh":
            self.notice = {}
        return {"id": req_id, "ok": True, "error": None}

    # -- display ----------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view plus a static text/html and text/plain snapshot for other front ends."""
        self.refresh()
        out = super()._repr_mimebundle_(**kwargs)
        data, meta = out if isinstance(out, tuple) else (out, {})
        snap = self.snapshot
        data = dict(data)
        data["text/plain"] = _snap.text_snapshot(snap)
        data["text/html"] = _snap.html_snapshot(snap)
        return data, meta

    def close(self) -> None:
        """Stop following the run and close the widget model."""
        with _lock, self._plock:
            self._closed = True
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._poller.unwatch(self)
            for reg in (_by_key, _by_id):
                for k in [k for k, v in reg.items() if v is self]:
                    del reg[k]
        super().close()


def _label(action: Any) -> str:
    return {"cancel": "Cancel", "rerun": "Re-run", "resume": "Resume"}.get(str(action), str(action))


def panel(run: Run) -> RunPanel:
    """The panel widget of ``run``; the same widget every time for the same run in this kernel.

    Showing a newer attempt of a key whose panel exists rebinds that panel to it.
    """
    if not isinstance(run, Run):
        raise TypeError(f"tether.panel() takes a tether.Run, got {type(run).__name__} "
                        f"({run!r:.80}); get one with pipeline.start(...) or tether.get_run(id)")
    path = str(run.store.path)
    with _lock:
        found = _by_id.get((path, run.id))
        if found is not None and not found._closed:
            return found
        by_key = _by_key.get((path, run.key))
        if by_key is not None and not by_key._closed and by_key.run.attempt < run.attempt:
            by_key.bind(run)
            return by_key
        widget = RunPanel(run)
        _by_id[(path, run.id)] = widget
        if by_key is None or by_key._closed or by_key.run.attempt < run.attempt:
            _by_key[(path, run.key)] = widget
        return widget

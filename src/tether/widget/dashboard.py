"""``tether.dashboard()``: a live table of recent runs; selecting a row shows its panel below."""

from __future__ import annotations

import threading
import time
from typing import Any

import anywidget
import ipywidgets
import traitlets

from .. import config, owner
from .. import runner as _runner
from .._text import safe
from ..model import RunRecord, Status
from ..run import Run
from ..store import Store
from . import poller as _poller
from .panel import STATIC, panel
from .snapshot import MAX_DAMAGED, MAX_ID, MAX_NAME, _clip, short_key

__all__ = ["Dashboard", "DashboardTable", "dashboard"]

SWEEP_EVERY = 5.0  # seconds between orphan checks of the listed active runs
_STATUSES = [str(s) for s in Status]
_dashboards: dict[str, Dashboard] = {}
_lock = threading.Lock()


class DashboardTable(anywidget.AnyWidget):
    """The table part of the dashboard (rows are plain dicts; run text rendered as text)."""

    _esm = STATIC / "dashboard.js"
    _css = STATIC / "panel.css"

    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    status_filter = traitlets.Unicode("").tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    limit = traitlets.Int(50).tag(sync=True)
    db = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    @traitlets.validate("status_filter")
    def _check_filter(self, proposal: Any) -> str:
        value = str(proposal["value"] or "")
        if value and value not in _STATUSES:
            raise traitlets.TraitError(f"status filter {value!r} is not a status; use one of "
                                       f"{', '.join(_STATUSES)} or '' for all")
        return value

    def __repr__(self) -> str:
        return f"<tether.dashboard table rows={len(self.rows)} filter={self.status_filter!r}>"


class Dashboard(ipywidgets.VBox):  # type: ignore[misc]
    """Recent runs of one store, refreshed by the shared poller; the selected run's panel below."""

    def __init__(self, store: Store, *, status: str | None = None, limit: int = 50,
                 poller: _poller.Poller | None = None) -> None:
        self.store = store
        self.table = DashboardTable(status_filter=status or "", limit=limit, db=str(store.path))
        self.holder = ipywidgets.VBox()
        super().__init__([self.table, self.holder])
        self._dlock = threading.RLock()
        self._poller = poller or _poller.get()
        self._next_sweep = 0.0
        self._closed = False
        self.table.observe(self._on_select, names=["selected"])
        self.table.observe(self._on_filter, names=["status_filter", "limit"])
        self.refresh()
        self._poller.watch(self, poll=True)

    def __repr__(self) -> str:
        return safe(f"<tether.dashboard {str(self.store.path)!r} rows={len(self.table.rows)}>")

    def refresh(self) -> None:
        """Re-read the runs and send the rows if anything but the clock changed."""
        with self._dlock:
            if self._closed:
                return
            t = self.table
            status = t.status_filter or None
            recs = self.store.list_runs(status=status, limit=t.limit)
            now = time.time()
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_EVERY
                active = [r for r in recs if r.status.active]
                if active and self.store.recover(active, owner.gone_reason):
                    recs = self.store.list_runs(status=status, limit=t.limit)
            run_ = _runner.get(self.store)
            rows = [_row(r, now, run_.owns(r.id)) for r in recs]
            if not _same_rows(rows, t.rows):
                t.rows = rows
            if t.error:
                t.error = ""

    def _feed_refresh(self) -> bool:
        self.refresh()
        return not self._closed

    def select(self, run_id: str | None) -> None:
        """Show the panel of ``run_id`` under the table (None or '' hides it)."""
        self.table.selected = run_id or ""

    def _on_select(self, change: dict[str, Any]) -> None:
        run_id = change["new"]
        if not run_id:
            self.holder.children = ()
            return
        try:
            self.holder.children = (panel(Run(self.store, run_id)),)
        except Exception as exc:
            self.table.error = f"cannot show run {run_id}: {type(exc).__name__}: {exc}"

    def _on_filter(self, _change: dict[str, Any]) -> None:
        try:
            self.refresh()
        except Exception as exc:
            self.table.error = f"cannot list runs: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        with self._dlock:
            self._closed = True
        self._poller.unwatch(self)
        with _lock:
            for k in [k for k, v in _dashboards.items() if v is self]:
                del _dashboards[k]
        self.table.close()
        self.holder.close()
        super().close()


def _row(rec: RunRecord, now: float, here: bool) -> dict[str, Any]:
    percent = None
    if rec.total:
        percent = max(0.0, min(100.0, 100.0 * float(rec.done) / float(rec.total)))
    elif rec.status == Status.SUCCEEDED:
        percent = 100.0
    elapsed = None
    if rec.started_at is not None:
        elapsed = max(0.0, (rec.ended_at if rec.ended_at is not None else now) - rec.started_at)
    return {
        "id": _clip(rec.id, MAX_ID),
        "key_short": short_key(rec.key),
        "attempt": rec.attempt,
        "pipeline": _clip(rec.pipeline, MAX_NAME),
        "status": rec.status_text,
        "phase": _clip(rec.phase, MAX_NAME),
        "done": rec.done,
        "total": rec.total,
        "percent": percent,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "elapsed": elapsed,
        "here": here,
        "damaged": [_clip(d, MAX_NAME) for d in rec.damaged[:MAX_DAMAGED]],
    }


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    return all({k: v for k, v in x.items() if k != "elapsed"} ==
               {k: v for k, v in y.items() if k != "elapsed"} for x, y in zip(a, b))


def dashboard(status: str | None = None, limit: int = 50, db: Any = None) -> Dashboard:
    """A live table of the recent runs of the configured database (or ``db``).

    ``status`` filters by status (also changeable in the table). One dashboard per database per
    kernel: calling this again returns the same widget with the new filter.
    """
    store = config.store(db)
    key = str(store.path)
    with _lock:
        found = _dashboards.get(key)
        if found is not None and not found._closed and found.store is store:
            found.table.status_filter = status or ""
            found.table.limit = limit
            return found
        made = _dashboards[key] = Dashboard(store, status=status, limit=limit)
        return made

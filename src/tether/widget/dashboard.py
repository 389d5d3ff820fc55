"""``tether.dashboard()``: a live table of recent runs; selecting a row shows its panel below.

Every call is its own widget with its own filter. Re-executing the cell that made a dashboard
closes the dashboard that cell made before (its output is gone): one cell does not pile up
dashboards that poll the store. At most MAX_LIVE dashboards stay open in a process.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
import weakref
from typing import Any

import anywidget
import ipywidgets
import traitlets

from .. import workspace as _workspace
from .._text import safe
from ..model import RunRecord, Status
from ..run import params_text
from ..store import Store
from ..view.snapshot import MAX_DAMAGED, MAX_ID, MAX_NAME, _clip, fmt_duration, fmt_time, percent_done
from . import poller as _poller
from ._displays import STATIC, _parent_header, _update_displays, _widget_bundle, esm, shell, show
from ._session import PerSession, session
from .panel import panel

__all__ = ["Dashboard", "DashboardTable", "Dashboards", "dashboard"]

SWEEP_EVERY = 5.0  # seconds between orphan checks of the listed active runs
ROW_PARAMS = 80  # characters of a row's params shown
_STATUSES = [str(s) for s in Status]
MAX_LIVE = 16  # dashboards open at once in a front-end session; the oldest beyond are closed


class Dashboards:
    """A workspace's open dashboards (``workspace.state(Dashboards)``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # per session: under marimo run, one session's new dashboards never close another's
        self.live: PerSession[list[weakref.ref[Dashboard]]] = PerSession(list)
        # cell id -> (the request that executed it last, the dashboards that execution made)
        self.by_cell: dict[str, tuple[str, list[weakref.ref[Dashboard]]]] = {}


class DashboardTable(anywidget.AnyWidget):
    """The table part of the dashboard (rows are plain dicts; run text rendered as text)."""

    _esm = esm("dashboard.js")
    _css = STATIC / "panel.css"

    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    status_filter = traitlets.Unicode("").tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    limit = traitlets.Int(50).tag(sync=True)
    db = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    # the static text/plain + text/html of the dashboard (see panel.RunPanel.fallback)
    fallback = traitlets.Dict().tag(sync=True)

    @traitlets.validate("status_filter")
    def _check_filter(self, proposal: Any) -> str:
        value = str(proposal["value"] or "")
        if value and value not in _STATUSES:
            raise traitlets.TraitError(
                f"status filter {value!r} is not a status; use one of {', '.join(_STATUSES)} or '' for all"
            )
        return value

    def __repr__(self) -> str:
        return f"<tether.dashboard table rows={len(self.rows)} filter={self.status_filter!r}>"


class Dashboard(ipywidgets.VBox):  # type: ignore[misc]
    """Recent runs of one store, refreshed by the shared poller; the selected run's panel below."""

    def __init__(
        self,
        store: Store,
        *,
        status: str | None = None,
        limit: int = 50,
        poller: _poller.Poller | None = None,
        workspace: _workspace.Workspace | None = None,
    ) -> None:
        self.workspace = workspace or _workspace.default()
        self.store = store
        self.table = DashboardTable(status_filter=status or "", limit=limit, db=str(store.path))
        self.holder = ipywidgets.VBox()
        super().__init__([self.table, self.holder])
        self._dlock = threading.RLock()
        self._poller = poller or self.workspace.state(_poller.Poller)
        self._next_sweep = 0.0
        self._closed = False
        self._displays: list[tuple[str, dict[str, Any]]] = []
        self._settles = 0  # settled fallbacks made (under _dlock): a display rendered before one
        self._shown_static: tuple[str, str] | None = None
        self.table.observe(self._on_select, names=["selected"])
        self.table.observe(self._on_filter, names=["status_filter", "limit"])
        self.refresh()
        self._poller.watch(self, poll=True)

    def __repr__(self) -> str:
        flt = self.table.status_filter or "all"
        return safe(f"<tether.dashboard {str(self.store.path)!r} rows={len(self.table.rows)} status={flt}>")

    def refresh(self) -> None:
        """Re-read the runs and send the rows if anything but the clock changed."""
        with self._dlock:
            if self._closed:
                return
            t = self.table
            status = t.status_filter or None
            now = time.time()
            sweep = now >= self._next_sweep  # orphans are looked for every SWEEP_EVERY seconds
            if sweep:
                self._next_sweep = now + SWEEP_EVERY
            recs = self.workspace.records(self.store, status=status, limit=t.limit, recover=sweep)
            run_ = self.workspace.runner(self.store)
            rows = [_row(r, now, run_.owns(r.id)) for r in recs]
            if not _same_rows(rows, t.rows):
                t.rows = rows
                self._keep_fallback(rows)
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
            self.holder.children = (panel(self.workspace.run(self.store, run_id)),)
        except Exception as exc:
            self.table.error = f"cannot show run {run_id}: {type(exc).__name__}: {exc}"

    def _on_filter(self, _change: dict[str, Any]) -> None:
        try:
            self.refresh()
        except Exception as exc:
            self.table.error = f"cannot list runs: {type(exc).__name__}: {exc}"

    # -- static renderings and saved notebooks -----------------------------------------------

    def static(self) -> dict[str, str]:
        """text/plain and text/html of the table as it is now (every run text escaped)."""
        rows = self.table.rows
        flt = self.table.status_filter
        title = f"tether runs ({flt or 'all statuses'}, {len(rows)} shown) in {self.store.path}"
        return {"text/plain": table_text(rows, title), "text/html": table_html(rows, title)}

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        out = super()._repr_mimebundle_(**kwargs)
        data, meta = out if isinstance(out, tuple) else (out, {})
        return {**data, **self.static()}, meta

    def _ipython_display_(self, **kwargs: Any) -> None:
        settles = self._settles
        data, meta = self._repr_mimebundle_()
        display_id = uuid.uuid4().hex
        with self._dlock:  # _keep_fallback replaces displays under this lock: after this one
            self._displays.append((display_id, _parent_header()))
            del self._displays[:-8]
            show(data, raw=True, metadata=meta, display_id=display_id)
            fb = self.table.fallback
            if self._settles != settles and fb.get("final") and fb["text/plain"] != data["text/plain"]:
                # the runs settled between the rendering above and this display's registration:
                # _keep_fallback had no display to replace
                self._shown_static = (fb["text/plain"], fb["text/html"])
                bundle, bmeta = _widget_bundle(self, Dashboard)
                static = {"text/plain": fb["text/plain"], "text/html": fb["text/html"]}
                _update_displays(self._displays[-1:], {**bundle, **static}, bmeta)

    def _keep_fallback(self, rows: list[dict[str, Any]]) -> None:
        """Once no listed run is active (the table settled), the saved table is replaced by it:
        a notebook saved or exported afterwards shows how the runs ended. Not on every change:
        each replacement re-creates the live view in JupyterLab."""
        settled = not any(r["status"] in ("pending", "running") for r in rows)
        static = self.static()
        self.table.fallback = {"model_id": self.model_id, "final": settled, **static}
        self._settles += settled
        if settled and self._displays and (static["text/plain"], static["text/html"]) != self._shown_static:
            self._shown_static = (static["text/plain"], static["text/html"])
            data, meta = _widget_bundle(self, Dashboard)
            _update_displays(self._displays, {**data, **static}, meta)

    def close(self) -> None:
        with self._dlock:
            self._closed = True
        self._poller.unwatch(self)
        self.table.close()
        self.holder.close()
        super().close()


def _row(rec: RunRecord, now: float, here: bool) -> dict[str, Any]:
    percent = percent_done(rec)
    elapsed = None
    if rec.started_at is not None:
        elapsed = max(0.0, (rec.ended_at if rec.ended_at is not None else now) - rec.started_at)
    params, bad = rec.decoded("params")
    damaged = list(rec.damaged)
    if bad is not None and bad not in damaged:
        damaged.append(bad)
    return {
        "id": _clip(rec.id, MAX_ID),
        "attempt": rec.attempt,
        "pipeline": _clip(rec.pipeline, MAX_NAME),
        "params": params_text(params, limit=ROW_PARAMS) if params else "",
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
        "damaged": [_clip(d, MAX_NAME) for d in damaged[:MAX_DAMAGED]],
    }


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        {k: v for k, v in x.items() if k != "elapsed"} == {k: v for k, v in y.items() if k != "elapsed"}
        for x, y in zip(a, b)
    )


def _progress(r: dict[str, Any]) -> str:
    if r["total"]:
        return f"{r['done']:g}/{r['total']:g}"
    return f"{r['done']:g}" if r["done"] else ""


def _cells(r: dict[str, Any]) -> list[str]:
    status = r["status"] + (" (damaged)" if r["damaged"] and r["status"] != "damaged" else "")
    return [
        f"{r['pipeline']} #{r['attempt']}",
        r["params"],
        status,
        r["phase"] or "",
        _progress(r),
        fmt_time(r["started_at"] or r["created_at"]),
        fmt_duration(r["elapsed"]) if r["elapsed"] is not None else "",
        r["id"],
    ]


_HEAD = ["run", "params", "status", "phase", "progress", "started", "duration", "id"]


def table_text(rows: list[dict[str, Any]], title: str) -> str:
    """The dashboard as text/plain: one line per run, run text escaped for terminals."""
    if not rows:
        return safe(f"{title}: no runs")
    table = [_HEAD, *([safe(c) for c in _cells(r)] for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEAD))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    return "\n".join([safe(title), *lines])


def table_html(rows: list[dict[str, Any]], title: str) -> str:
    """The dashboard as a plain HTML table (nbconvert, GitHub): every field escaped."""
    e = html.escape
    style = "text-align:left;padding:2px 8px;border-bottom:1px solid #8884"
    head = "".join(f'<th style="{style}">{e(h)}</th>' for h in _HEAD)
    body = "".join(
        f'<tr data-run-id="{e(r["id"])}" data-status="{e(r["status"])}">'
        + "".join(f'<td style="{style}">{e(c)}</td>' for c in _cells(r))
        + "</tr>"
        for r in rows
    )
    return (
        f'<div class="tether-static-dashboard" style="font-family:system-ui,sans-serif;'
        f'font-size:13px;max-width:100%;overflow-x:auto"><div><strong>{e(title)}</strong></div>'
        + (
            f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
            if rows
            else "<div>no runs</div>"
        )
        + "</div>"
    )


def _cell_request() -> tuple[str, str] | None:
    """(cell id, request id) of the cell executing now (JupyterLab and Notebook 7 send the cell
    id with each execution), or None."""
    try:
        parent = shell().kernel.get_parent() or {}
        cell = parent.get("metadata", {}).get("cellId")
        request = parent.get("header", {}).get("msg_id")
        if isinstance(cell, str) and cell and isinstance(request, str):
            return cell, request
    except Exception:
        pass
    return None


def dashboard(status: str | None = None, limit: int = 50, db: Any = None) -> Dashboard:
    """A live table of the recent runs of the configured database (or ``db``).

    ``status`` filters by status (also changeable in the table). Each call makes its own
    dashboard with its own filter; re-executing a cell closes the dashboards it made before."""
    ws = _workspace.default()
    made = Dashboard(ws.store(db), status=status, limit=limit, workspace=ws)
    where = _cell_request()
    old: list[Dashboard | None] = []
    mine = ws.state(Dashboards)
    by_cell, live = mine.by_cell, mine.live.of(session())
    with mine.lock:
        if where is not None:
            cell, request = where
            before, refs = by_cell.get(cell, ("", []))
            old = [r() for r in refs] if before != request else []
            by_cell[cell] = (request, [*(refs if before == request else []), weakref.ref(made)])
        # a front end that sends no cell id: the oldest dashboards beyond MAX_LIVE are closed,
        # so re-executing a cell does not pile up dashboards that poll the store
        live[:] = [r for r in live if (d := r()) is not None and not d._closed]
        live.append(weakref.ref(made))
        while len(live) > MAX_LIVE:
            old.append(live.pop(0)())
    for d in old:
        if d is not None and not d._closed:
            d.close()
    return made

"""The run panel and the dashboard (anywidget), and how a ``Run`` shows itself in a notebook.

- ``panel(run)``: the progress panel of one run (one widget model per run per kernel);
- ``dashboard()``: a live table of recent runs; selecting a row shows its panel;
- ``repr_bundle(run)``: what ``Run._repr_mimebundle_`` returns: in a kernel, the panel's widget view
  plus a static text/html and text/plain snapshot (for nbconvert, GitHub, consoles); elsewhere the
  static snapshot only;
- ``show(run)``: what ``Run._ipython_display_`` does (the same, displayed with a display id so the
  saved static snapshot is replaced when the run ends).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .dashboard import Dashboard, dashboard
from .panel import RunPanel, panel

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["Dashboard", "RunPanel", "dashboard", "panel", "repr_bundle", "show"]


def _in_kernel() -> bool:
    """True inside an IPython kernel (where widgets have a comm to talk through)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def static_bundle(run: Run) -> dict[str, Any]:
    """text/plain + text/html of the run as it is now (no widget)."""
    import time

    from ..view.reader import RunReader
    from ..view.snapshot import build, cancel_origin, html_snapshot, text_snapshot, waiting_text
    from .panel import _module_of

    reader = RunReader(run)
    rec = reader.read()
    here = run.workspace.runner(run.store)
    cancel = None
    if reader.cancel is not None:
        cancel = {
            "origin": cancel_origin(reader.cancel["origin"], {"instance": here.owner.instance}),
            "at": reader.cancel["ts"],
        }
    waiting = waiting_text(rec, str(run.store.path), _module_of(run, rec.pipeline), here.owns(rec.id))
    snap = build(
        rec,
        mode="static",
        log=reader.log,
        now=time.time(),
        stored=bool(getattr(run, "_found_ended", False)),
        cancel=cancel,
        waiting=waiting,
    )
    return {"text/plain": text_snapshot(snap), "text/html": html_snapshot(snap)}


def repr_bundle(run: Run, include: Any = None, exclude: Any = None) -> Any:
    """The mimebundle a Run shows itself with (see the module docstring).

    A dict of mime type -> data, or ``(data, metadata)`` when the widget needs metadata (Colab).
    """
    meta: dict[str, Any] = {}
    if _in_kernel():
        data, meta = panel(run)._repr_mimebundle_()
    else:
        data = static_bundle(run)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return (data, meta) if meta else data


def show(run: Run) -> None:
    """What ``Run._ipython_display_`` does: in a kernel, display the run's panel with a display
    id (so the saved static snapshot is replaced when the run ends); elsewhere the static one."""
    if _in_kernel():
        panel(run)._ipython_display_()
        return
    from IPython.display import display

    display(static_bundle(run), raw=True)

"""The run panel and the dashboard (anywidget). Filled in by the panel work (issue 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["repr_bundle"]


def repr_bundle(run: Run, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The mimebundle a Run shows itself with (static text/html + text/plain for now)."""
    from ..run import _html, _text

    rec = run.snapshot()
    return {"text/plain": _text(rec), "text/html": _html(rec)}

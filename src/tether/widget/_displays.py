"""What the widgets share outside the widget model: their ES modules, and the display ids
whose static fallback is replaced when a run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"


def esm(name: str) -> str:
    """The ES module of a widget: static/common.js (the helpers its widgets share), then
    static/``name``, read when the widget class is defined (no bundler, nothing generated)."""
    return "\n".join((STATIC / f).read_text(encoding="utf-8") for f in ("common.js", name))


def shell() -> Any:
    """The IPython shell of this kernel (None outside IPython); raises ImportError without IPython."""
    from IPython.core.getipython import get_ipython

    return get_ipython()  # IPython is read as untyped ([tool.mypy] follow_imports = skip)


def show(obj: Any, **kwargs: Any) -> None:
    """``IPython.display.display``."""
    from IPython.display import display

    display(obj, **kwargs)


def _parent_header() -> dict[str, Any]:
    """The header of the request (cell) being executed, as the kernel's display publisher has it."""
    try:
        pub = shell().display_pub
        return dict(pub.parent_header or {})
    except Exception:
        return {}


def _update_displays(
    displays: list[tuple[str, dict[str, Any]]], data: dict[str, Any], meta: dict[str, Any]
) -> None:
    """``update_display_data`` of each ``(display id, parent header)`` with ``data``.

    Sent twice: once as from the cell that displayed it (JupyterLab and Notebook 7 route a
    message by the request it answers, and that cell's output area applies it, even after the
    cell finished), and once as from the cell executing now, if another (nbclient, behind
    ``nbconvert --execute`` and nbval, keeps only the messages of the cell it executes, and
    updates any output of the notebook with that display id)."""
    try:
        pub = shell().display_pub
    except Exception:
        return
    for display_id, parent in list(displays):
        transient = {"display_id": display_id}
        try:
            set_parent = getattr(pub, "set_thread_parent", None)
            if set_parent is not None and parent:
                token = set_parent(parent)
                try:
                    pub.publish(data, metadata=meta, transient=transient, update=True)
                finally:
                    pub.reset_thread_parent(token)
            now = (pub.parent_header or {}).get("msg_id")
            if set_parent is None or not parent or now != parent.get("msg_id"):
                pub.publish(data, metadata=meta, transient=transient, update=True)
        except Exception:  # no kernel (tests), or a front end gone: the live view still shows it
            continue


def _widget_bundle(widget: Any, cls: type[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain ipywidgets bundle of ``widget`` (the view reference), metadata apart."""
    out = super(cls, widget)._repr_mimebundle_()
    return out if isinstance(out, tuple) else (out, {})

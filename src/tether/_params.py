"""Params as listings show them, and the ``params=`` filter of ``tether.runs``."""

from __future__ import annotations

from typing import Any

from ._text import safe
from .errors import ParamsError
from .store import dumps

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


def params_filter(params: Any) -> dict[str, Any]:
    """``params=`` of runs(): a dict of str names to JSON values, else ParamsError."""
    if not isinstance(params, dict):
        raise ParamsError(
            f"tether.runs(params=...) takes a dict of parameter values, e.g. "
            f"params={{'repo': './app'}}; got {type(params).__name__}"
        )
    for k, v in params.items():
        if not isinstance(k, str):
            raise ParamsError(f"tether.runs(params=...): the name {k!r} is not a str")
        try:
            dumps(v)
        except (TypeError, ValueError) as exc:
            raise ParamsError(
                f"tether.runs(params=...): {k!r} is {type(v).__name__} "
                f"({safe(repr(v))[:80]}), not a JSON value ({exc})"
            ) from None
    return params

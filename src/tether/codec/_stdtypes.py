"""Encoding the standard library's types, looked up by type name (their modules stay unimported)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._base import (
    _PAIR,
    TAG,
)

if TYPE_CHECKING:
    from ._encode import _Encoder


class _Unstorable(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []  # innermost first


def _refuse(obj: Any, why: str = "") -> _Unstorable:
    t = type(obj)
    name = (
        t.__qualname__ if t.__module__ in ("builtins", "__main__") else (f"{t.__module__}.{t.__qualname__}")
    )
    try:
        shown = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real message
        shown = "?"
    if len(shown) > 80:
        shown = shown[:79] + "…"
    reason = why or (
        "tether stores JSON data, numpy, pandas, datetime, Decimal, UUID, paths, "
        "bytes, sets and tuples; convert it, give its type a codec with "
        "tether.register_codec(), or use @tether.pipeline(serializer='pickle')"
    )
    return _Unstorable(f"{name} ({shown}) cannot be stored: {reason}")


def _tz_node(tz: Any) -> Any:
    """A tzinfo as JSON data; _Unstorable for a kind of tzinfo tether cannot name."""
    import datetime as dt

    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        plain = dt.timezone(offset)
        return {"offset": offset.total_seconds(), "name": None if name == plain.tzname(None) else name}
    module = type(tz).__module__
    if module == "zoneinfo" and type(tz).__name__ == "ZoneInfo" and tz.key:
        return {"zone": tz.key}
    if module.startswith("pytz") and getattr(tz, "zone", None):
        return {"pytz": tz.zone}
    raise _refuse(
        tz,
        "only datetime.timezone, zoneinfo.ZoneInfo and pytz time zones can be "
        "stored; convert it, e.g. .astimezone(zoneinfo.ZoneInfo(...))",
    )


# -- stdlib types, looked up by name: encoding imports none of their modules ---------------------


def _enc_datetime(enc: _Encoder, obj: Any, depth: int) -> Any:
    node: dict[str, Any] = {TAG: "datetime", "v": obj.replace(tzinfo=None, fold=0).isoformat()}
    if obj.fold:
        node["fold"] = 1
    tz = obj.tzinfo
    if tz is not None:
        node["tz"] = _tz_node(tz)
        if "pytz" in node["tz"]:  # pytz zones are attached by localizing the UTC instant
            node["utc"] = obj.utcoffset().total_seconds()
    return node


def _enc_time(enc: _Encoder, obj: Any, depth: int) -> Any:
    node: dict[str, Any] = {TAG: "time", "v": obj.replace(tzinfo=None, fold=0).isoformat()}
    if obj.fold:
        node["fold"] = 1
    if obj.tzinfo is not None:
        node["tz"] = _tz_node(obj.tzinfo)
    return node


def _enc_date(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: "date", "v": obj.isoformat()}


def _enc_timedelta(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: "timedelta", "v": [obj.days, obj.seconds, obj.microseconds]}


def _enc_timezone(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: "tz", "v": _tz_node(obj)}


def _enc_str_of(tag: str) -> Callable[[_Encoder, Any, int], Any]:
    def enc_str(enc: _Encoder, obj: Any, depth: int) -> Any:
        return {TAG: tag, "v": str(obj)}

    return enc_str


def _enc_path(enc: _Encoder, obj: Any, depth: int) -> Any:
    text = str(obj)
    return {
        TAG: "path",
        "kind": type(obj).__name__,
        "v": text if text.isascii() or not _PAIR(text) else enc.value(text, depth + 1),
    }


def _enc_bytes(enc: _Encoder, obj: Any, depth: int) -> Any:
    return enc.blob({TAG: type(obj).__name__}, obj)


def _enc_complex(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: "complex", "v": [enc.value(obj.real, depth), enc.value(obj.imag, depth)]}


def _enc_range(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: "range", "v": [obj.start, obj.stop, obj.step]}


def _enc_ordered(enc: _Encoder, obj: Any, depth: int) -> Any:
    return {TAG: type(obj).__name__, "items": enc.pairs(obj, depth)}


# (module, qualname) -> encoder; the class found under that name must be the very type
_NAMED: dict[tuple[str, str], Callable[[_Encoder, Any, int], Any]] = {
    ("datetime", "datetime"): _enc_datetime,
    ("datetime", "date"): _enc_date,
    ("datetime", "time"): _enc_time,
    ("datetime", "timedelta"): _enc_timedelta,
    ("datetime", "timezone"): _enc_timezone,
    ("zoneinfo", "ZoneInfo"): _enc_timezone,
    ("decimal", "Decimal"): _enc_str_of("decimal"),
    ("uuid", "UUID"): _enc_str_of("uuid"),
    ("builtins", "bytes"): _enc_bytes,
    ("builtins", "bytearray"): _enc_bytes,
    ("builtins", "complex"): _enc_complex,
    ("builtins", "range"): _enc_range,
    ("collections", "OrderedDict"): _enc_ordered,
    ("collections", "Counter"): _enc_ordered,
}
_PATHS = ("PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath", "WindowsPath")


def _builtin(t: type) -> Callable[[_Encoder, Any, int], Any] | None:
    module, name = t.__module__, t.__qualname__
    handler = _NAMED.get((module, name))
    if handler is not None:
        mod = sys.modules.get(module)
        found = getattr(mod, name, None) if mod is not None else None
        return handler if found is t else None
    if name in _PATHS and module.startswith("pathlib"):
        import pathlib

        return _enc_path if getattr(pathlib, name, None) is t else None
    return None

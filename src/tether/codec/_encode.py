"""Encoding: a value to its stored text (plain JSON as it is, anything else tagged)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import ParamsError, StoreError
from ._base import (
    _BY_NAME,
    _BY_TYPE,
    _ENCODER,
    _LEAVES,
    _PAIR,
    FILE_MIN,
    INLINE_MAX,
    MAX_DEPTH,
    TAG,
    Encoded,
    Files,
    _bytes_of,
)
from ._stdtypes import _builtin, _refuse, _tz_node, _Unstorable


def register_codec(
    cls: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any], *, name: str | None = None
) -> None:
    """Let tether store instances of ``cls`` (exactly that class, not its subclasses).

    ``encode(obj)`` returns a value tether can store (JSON data, numpy, pandas, other registered
    types ...); ``decode(that value)`` rebuilds the object. ``name`` (default
    ``"module.QualName"`` of ``cls``) is written with each value: a process reading the value
    must have registered a codec under the same name. Registering a name again replaces it.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_codec() takes a class, got {cls!r}")
    if not callable(encode) or not callable(decode):
        raise TypeError("register_codec(cls, encode, decode): encode and decode must be callables")
    if cls in _LEAVES or cls in (list, dict) or _builtin(cls) is not None:
        raise TypeError(f"tether stores {cls.__name__} values itself; register_codec() is for other types")
    key = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(key, str) or not key:
        raise TypeError(f"register_codec(name=...) must be a non-empty str, got {key!r}")
    for other, (other_name, _) in list(_BY_TYPE.items()):
        if other_name == key and other is not cls:  # a re-executed cell's new class replaces it
            del _BY_TYPE[other]
    _BY_TYPE[cls] = (key, encode)
    _BY_NAME[key] = decode


# -- encoding ----------------------------------------------------------------------------------


def _plain(value: Any) -> bool:
    """True when ``value`` is JSON data of exact JSON types, with str keys, no tag key and
    bounded nesting. (NaN and ints JSON cannot print are caught by the encoder itself; strings
    JSON would not read back, by _no_pair.)"""
    t = type(value)
    if t is not list and t is not dict:
        return t in _LEAVES
    leaves = _LEAVES
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        obj, depth = pop()
        if depth > MAX_DEPTH:
            return False
        if type(obj) is dict:
            if TAG in obj:
                return False
            for k in obj:
                if type(k) is not str:
                    return False
            obj = obj.values()
        for v in obj:
            t = type(v)
            if t is list or t is dict:
                push((v, depth + 1))
            elif t not in leaves:
                return False
    return True


def _no_pair(value: Any) -> bool:
    """No str in ``value`` holds a lone high surrogate followed by a lone low one, which JSON
    reads back as one other character. Asked only when the JSON text has a ``\\ud`` escape."""
    stack = [value]
    while stack:
        obj = stack.pop()
        t = type(obj)
        if t is str:
            if not obj.isascii() and _PAIR(obj):
                return False
        elif t is dict:
            stack.extend(obj)
            stack.extend(obj.values())
        elif t is list:
            stack.extend(obj)
    return True


def encode(
    value: Any,
    root: str = "result",
    *,
    context: str = "",
    fix: str = "",
    pickle: bool = False,
    files: Files | None = None,
) -> str:
    """The stored text of ``value`` (an ``Encoded`` when it refers to files).

    ParamsError when tether cannot store it, naming the type and where it is inside the value:
    ``{context}{root}['rows'][3]: Foo ...``. ``pickle``: pickle what nothing else can store.
    ``files``: where the files of a large value are written now, hashed while they are written
    (without it they are only hashed, and the store writes them before the row).
    """
    if _plain(value):
        try:
            text = _ENCODER.encode(value)
        except ValueError:  # NaN or infinity, or an int too long to print: tagged below
            pass
        else:
            if "\\ud" not in text or _no_pair(value):  # else a surrogate pair: tagged below
                return text if len(text) <= INLINE_MAX else _Encoder(pickle, files).whole(text)
    enc = _Encoder(pickle, files)
    try:
        skeleton = enc.value(value, 1)
    except _Unstorable as exc:
        path = "".join(reversed(exc.path))
        tail = f"; {fix}" if fix else ""
        raise ParamsError(f"{context}{root}{path}: {exc.what}{tail}") from exc.__cause__
    return enc.finish(skeleton)


class _Encoder:
    """The slow path: a value with something other than JSON data in it."""

    def __init__(self, pickle: bool, files: Files | None = None) -> None:
        self.pickle = pickle
        self.files = files
        self.blobs: list[tuple[dict[str, Any], Any]] = []  # (node, bytes-like), placed in finish()

    def blob(self, node: dict[str, Any], data: Any) -> dict[str, Any]:
        self.blobs.append((node, data))
        return node

    def items(self, values: Any, depth: int, where: Callable[[int, Any], str]) -> list[Any]:
        out = []
        for i, v in enumerate(values):
            try:
                out.append(self.value(v, depth))
            except _Unstorable as exc:
                exc.path.append(where(i, v))
                raise
        return out

    def value(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t is str:
            if obj.isascii() or not _PAIR(obj):
                return obj
            return self.blob({TAG: "str"}, obj.encode("utf-8", "surrogatepass"))
        if t is int:
            if obj.bit_length() > 13_000:  # near the 4300 digits int->str allows by default
                try:
                    str(obj)
                except ValueError:
                    return {TAG: "int", "hex": hex(obj)}
            return obj
        if t is float:
            if math.isfinite(obj):
                return obj
            return {TAG: "float", "v": repr(obj)}
        if obj is None or t is bool:
            return obj
        if depth > MAX_DEPTH:
            raise _Unstorable(f"{t.__name__} nested deeper than {MAX_DEPTH} levels cannot be stored")
        if t is list:
            return self.items(obj, depth + 1, lambda i, v: f"[{i}]")
        if t is dict:
            keys = list(obj)
            if TAG not in obj and all(type(k) is str and (k.isascii() or not _PAIR(k)) for k in keys):
                out = {}
                for k, v in obj.items():
                    try:
                        out[k] = self.value(v, depth + 1)
                    except _Unstorable as exc:
                        exc.path.append(f"[{k!r}]")
                        raise
                return out
            return {TAG: "dict", "items": self.pairs(obj, depth)}
        if t is tuple:
            return {TAG: "tuple", "items": self.items(obj, depth + 1, lambda i, v: f"[{i}]")}
        if t is set or t is frozenset:
            items = self.items(obj, depth + 1, lambda i, v: f" (the item {v!r:.60})")
            items.sort(key=_ENCODER.encode)  # canonical: the same set, the same text
            return {TAG: t.__name__, "items": items}
        user = _BY_TYPE.get(t)
        if user is not None:
            return self.user(obj, user, depth)
        handler = _builtin(t)
        if handler is not None:
            return handler(self, obj, depth)
        module = t.__module__
        if module == "numpy":
            return self.numpy(obj)
        if module == "pandas" or module.startswith("pandas."):
            return self.pandas(obj, depth)
        return self.last_resort(obj)

    def last_resort(self, obj: Any, why: str = "") -> dict[str, Any]:
        if not self.pickle:
            raise _refuse(obj, why)
        import pickle

        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise _refuse(obj, f"even pickle cannot store it ({type(exc).__name__}: {exc})") from exc
        t = type(obj)
        return self.blob({TAG: "pickle", "type": f"{t.__module__}.{t.__qualname__}"}, data)

    def pairs(self, obj: Any, depth: int) -> list[list[Any]]:
        """The items of a mapping as [key, value] pairs (keys of any storable type)."""
        out = []
        for k, v in obj.items():
            try:
                key = self.value(k, depth + 1)
            except _Unstorable as exc:
                exc.path.append(f" (the key {k!r:.60})")
                raise
            try:
                out.append([key, self.value(v, depth + 1)])
            except _Unstorable as exc:
                exc.path.append(f"[{k!r:.60}]")
                raise
        return out

    def user(self, obj: Any, codec: tuple[str, Callable[[Any], Any]], depth: int) -> dict[str, Any]:
        name, fn = codec
        try:
            payload = fn(obj)
        except Exception as exc:
            raise _refuse(obj, f"its codec {name!r} raised {type(exc).__name__}: {exc}") from exc
        if type(payload) is type(obj):
            raise _refuse(
                obj,
                f"its codec {name!r} returned the same type; return something "
                "tether stores (e.g. a dict of JSON data)",
            )
        try:
            inner = self.value(payload, depth + 1)
        except _Unstorable as exc:
            exc.path.append(f" (encoded by {name!r})")
            raise
        return {TAG: "codec", "name": name, "v": inner}

    # -- numpy ---------------------------------------------------------------------------------

    def numpy(self, obj: Any) -> dict[str, Any]:
        import numpy as np
        from numpy.lib import format as npformat

        if type(obj) is np.ndarray:
            if obj.dtype.hasobject:
                return self.last_resort(
                    obj,
                    "an array of dtype object holds Python objects; "
                    "convert it (e.g. .astype(str) or .astype(float)), or use "
                    "@tether.pipeline(serializer='pickle')",
                )
            descr = npformat.dtype_to_descr(obj.dtype)
            fortran = obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous
            flat = (obj.T if fortran else np.ascontiguousarray(obj)).reshape(-1)
            node = {TAG: "ndarray", "dtype": descr, "shape": list(obj.shape)}
            if fortran:
                node["order"] = "F"
            return self.blob(node, _bytes_of(flat.view(np.uint8)) if flat.dtype.itemsize else b"")
        if isinstance(obj, np.generic) and not obj.dtype.hasobject:
            dtype = obj.dtype
            descr = npformat.dtype_to_descr(dtype)
            if dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8 and math.isfinite(obj)):
                return {TAG: "numpy", "dtype": descr, "v": obj.item()}
            return self.blob(
                {TAG: "numpy", "dtype": descr}, np.array(obj).reshape(1).view(np.uint8).tobytes()
            )
        return self.last_resort(obj)

    # -- pandas --------------------------------------------------------------------------------

    def pandas(self, obj: Any, depth: int) -> dict[str, Any]:
        import pandas as pd  # type: ignore[import-untyped, unused-ignore]

        t = type(obj)
        if t is pd.Timestamp:
            return self.timestamp(obj)
        if t is pd.Timedelta:
            return {TAG: "pd.Timedelta", "ns": int(obj.value), "unit": obj.unit}
        if obj is pd.NaT:
            return {TAG: "pd.NaT"}
        if obj is pd.NA:
            return {TAG: "pd.NA"}
        node: dict[str, Any]
        if t is pd.DataFrame:
            frame, node = obj, {TAG: "pd.DataFrame"}
        elif t is pd.Series:
            frame = obj.to_frame(name="__series__")
            node = {TAG: "pd.Series"}
            try:
                node["name"] = self.value(obj.name, depth + 1)
            except _Unstorable as exc:
                exc.path.append(".name")
                raise
        elif isinstance(obj, pd.Index):
            frame, node = pd.DataFrame(index=obj), {TAG: "pd.Index"}
        else:
            return self.last_resort(obj)
        node["shape"] = list(obj.shape)
        if isinstance(frame.index, (pd.DatetimeIndex, pd.TimedeltaIndex)) and frame.index.freq:
            node["freq"] = frame.index.freqstr
        try:
            import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            return self.last_resort(
                obj,
                "pandas values are stored through pyarrow, which is not "
                "installed: pip install 'tether[data]' (or pyarrow)",
            )
        try:
            table = pa.Table.from_pandas(frame)  # a RangeIndex as metadata, others as columns
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            data = sink.getvalue()
        except Exception as exc:  # mixed object columns, duplicate column names ...
            return self.last_resort(
                obj,
                f"Arrow cannot hold it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); convert the columns named "
                "there, or use @tether.pipeline(serializer='pickle')",
            )
        return self.blob(node, memoryview(data))

    def timestamp(self, ts: Any) -> dict[str, Any]:
        node: dict[str, Any] = {TAG: "pd.Timestamp", "unit": ts.unit}
        if ts.tzinfo is not None:
            node["tz"] = _tz_node(ts.tzinfo)
            ts = ts.tz_convert(None)  # the instant in UTC, whatever the zone's rules
        node["v"] = ts.isoformat()
        return node

    # -- placing payloads ----------------------------------------------------------------------

    def finish(self, skeleton: Any) -> str:
        import base64

        files: dict[str, Any] = {}
        sizes = [memoryview(data).nbytes for _, data in self.blobs]
        inline = sum(sizes) * 4 // 3
        if inline > INLINE_MAX:  # the largest payloads go to files until the row is small
            for i in sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True):
                if inline <= INLINE_MAX or sizes[i] < FILE_MIN:
                    break
                node, data = self.blobs[i]
                digest = self.digest(data)
                node["file"], node["size"] = digest, sizes[i]
                files[digest] = data
                inline -= sizes[i] * 4 // 3
        for node, data in self.blobs:
            if "file" not in node:
                node["b64"] = base64.b64encode(data).decode("ascii")
        text = _ENCODER.encode(skeleton)
        if len(text) > INLINE_MAX:
            return self.whole(text, files)
        if not files:
            return text
        out = Encoded(text)
        out.files = files
        return out

    def whole(self, text: str, files: dict[str, Any] | None = None) -> Encoded:
        """A JSON text too large for a row: to a file of its own (``refs``: the files it names)."""
        files = dict(files or {})
        data = text.encode("ascii")
        digest = self.digest(data)
        row = {TAG: "json", "file": digest, "size": len(data), "refs": sorted(files)}
        files[digest] = data
        out = Encoded(_ENCODER.encode(row))
        out.files = files
        return out

    def digest(self, data: Any) -> str:
        """The SHA-256 of a payload that goes to a file (written now when ``files`` is given)."""
        if self.files is not None:
            try:
                return self.files.write(data)
            except StoreError:  # e.g. the disk full: the store writes it before the row, and
                pass  # says why there (a run's end is then written again later)
        import hashlib

        return hashlib.sha256(data).hexdigest()

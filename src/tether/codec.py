"""The values tether stores: results, ``ctx.step`` values and ``ctx.map`` item results.

A stored value is canonical JSON text (sorted keys, compact, ASCII). Plain JSON data (str, int,
float, bool, None, lists, dicts with str keys) is stored as that JSON, exactly as it reads. Every
other value tether knows becomes a *tagged* object ``{"$tether": "<tag>", ...}``: tuples, sets,
dicts with other keys, NaN, big ints, datetime/date/time/timedelta, Decimal, UUID, paths, bytes,
numpy scalars and arrays (raw buffers, never pickle), pandas frames, series and indexes (Arrow IPC),
types with a registered codec (``register_codec``) and, for pipelines that opt in, pickles.

Binary payloads (array buffers, Arrow streams, bytes) are base64 in the row while the value stays
under ``INLINE_MAX`` (1 MiB); above it, the largest payloads move to content-addressed files beside
the database (``Encoded.files``, written by the store, see ``tether.artifacts``) and the row keeps
their SHA-256 and size; a JSON text still too large moves to a file as a whole.

numpy, pandas and pyarrow are never imported here unless such a value is encoded or decoded, and
reading never unpickles anything but a ``pickle`` node of a database the reader owns.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any, Protocol

from .errors import ParamsError, StoreError

__all__ = ["Encoded", "check_json", "decode", "dumps", "encode", "references", "register_codec", "summary"]

TAG = "$tether"
_QUOTED_TAG = '"$tether"'  # present in the text of every tagged value (and in few others)
TAG_TEXT = _QUOTED_TAG
INLINE_MAX = 1 << 20  # bytes of a row's value; larger values keep their bulk in files
FILE_MIN = 64 << 10  # a payload smaller than this stays in the row
MAX_DEPTH = 200  # nesting of a stored value: any reader's stack can decode it

# One encoder for the process: json.dumps() with options builds a new encoder per call (~8 us).
# ASCII output: any Python str survives, lone surrogates (from surrogateescape'd file names)
# included, which SQLite's UTF-8 would refuse.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
_decode_json = json.JSONDecoder().decode
# A lone high surrogate followed by a lone low one: JSON reads the pair back as one character.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]").search
_LEAVES = frozenset({str, int, float, bool, type(None)})


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no NaN, compact. Raises TypeError/ValueError on non-JSON."""
    return _ENCODER.encode(value)


class Encoded(str):
    """The JSON text of a value whose bulk lives in files: ``files`` maps each file's SHA-256 (hex)
    to its bytes. The store writes them before the row that refers to them."""

    files: dict[str, Any]


def _module(name: str) -> Any:
    """An optional dependency (pandas, pyarrow), imported when a value needs it; ImportError if
    it is not installed. Typed Any: neither ships type information."""
    return importlib.import_module(name)


def _bytes_of(array: Any) -> memoryview:
    """The buffer of a contiguous numpy array, without a copy."""
    return memoryview(array)


# -- pickle, opted in per pipeline ---------------------------------------------------------------

_PICKLERS: set[str] = set()  # pipelines defined in this process with serializer="pickle"


def allow_pickle(pipeline: str, allowed: bool) -> None:
    """Record whether ``pipeline``, as defined in this process, opted in to pickle. A reader
    unpickles a run's value only if its pipeline opted in here too (and the database is its)."""
    if allowed:
        _PICKLERS.add(pipeline)
    else:
        _PICKLERS.discard(pipeline)


def pickle_allowed(pipeline: str | None) -> bool:
    return pipeline in _PICKLERS


# -- user codecs -------------------------------------------------------------------------------

_BY_TYPE: dict[type, tuple[str, Callable[[Any], Any]]] = {}
_BY_NAME: dict[str, Callable[[Any], Any]] = {}


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


# -- params: plain JSON only -------------------------------------------------------------------


def check_json(value: Any, path: str, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` (tuples become lists), or ParamsError naming ``path``.

    For a run's params: they are its key, stored and compared as canonical JSON, so only plain JSON
    data that reads back equal passes (a NaN, an int JSON cannot print, a str with a surrogate
    pair, a non-str key, another type or a nesting beyond ``MAX_DEPTH`` is refused). Results, steps
    and map items take any value ``encode`` stores."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not value.isascii() and _PAIR(value):
            raise ParamsError(
                f"{path} holds a lone high surrogate followed by a low one, which "
                "JSON reads back as one other character; encode it first"
            )
        return value
    if isinstance(value, int):
        digits = sys.get_int_max_str_digits()
        if digits and value.bit_length() > 3 * digits:
            try:
                str(value)
            except ValueError:
                raise ParamsError(
                    f"{path} is an int of more than {digits} digits, which JSON "
                    "cannot hold here; pass it as a str"
                ) from None
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(f"{path} is {value!r}, which JSON cannot hold; pass a finite number or None")
        return float(value)
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise ParamsError(f"{path} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        return [check_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ParamsError(
                    f"{path} has the key {k!r} ({type(k).__name__}); JSON object keys must be str"
                )
            out[k] = check_json(v, f"{path}[{k!r}]", depth + 1)
        return out
    raise ParamsError(
        f"{path} has type {type(value).__name__} ({value!r:.80}), which is not JSON; "
        "pass str, int, float, bool, None, or lists/dicts of them (e.g. str(path))"
    )


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
        pd = _module("pandas")

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
            pa = _module("pyarrow")
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


# -- reading -----------------------------------------------------------------------------------


class Files(Protocol):
    """Where values' files are written and read (tether.artifacts.Artifacts)."""

    def write(self, data: Any) -> str: ...

    def read(self, digest: str, size: int, where: str, into: Any = None) -> Any: ...

    def check_pickle(self, where: str, run_id: str, digest: str | None = None) -> None: ...


def _not_json(where: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"{where} is not valid JSON ({type(exc).__name__}); the database is damaged; it was left untouched"
    )


def decode(text: Any, run_id: str, column: str = "result", files: Files | None = None) -> Any:
    """The value stored as ``text`` in ``column`` of run ``run_id``; StoreError if it cannot be
    read back exactly (damaged JSON, a missing or damaged file, an unknown codec ...)."""
    if text is None:
        return None
    if type(text) is not str:
        raise StoreError(
            f"{_where(run_id, column)} holds {type(text).__name__}, not JSON text; "
            "the database is damaged; it was left untouched"
        )
    if _QUOTED_TAG not in text:
        try:
            return _decode_json(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _not_json(_where(run_id, column), exc) from None
    return _Decoder(files, _where(run_id, column), run_id=run_id).decode(text)


def summary(text: Any, run_id: str, column: str = "result") -> Any:
    """JSON data that shows the stored value without reading files, unpickling, or importing
    numpy/pandas: each value JSON cannot show becomes a short text, e.g. ``"<ndarray float64
    (1000, 3)>"``. For displays (panel, ``tether show``)."""
    if text is None or type(text) is not str or _QUOTED_TAG not in text:
        return decode(text, run_id, column)
    return _shown(_Decoder(None, _where(run_id, column), summary=True).decode(text))


def _where(run_id: str, column: str) -> str:
    if column.startswith("checkpoint "):
        return f"run {run_id}: its checkpoint {column[len('checkpoint ') :]!r}"
    return f"run {run_id}: its {column!r} column"


class _Shown:
    """A value in a summary: shown as its text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(value: Any) -> Any:
    t = type(value)
    if t in _LEAVES and (t is not float or math.isfinite(value)):
        return value
    if t is list:
        return [_shown(v) for v in value]
    if t is dict and all(type(k) is str for k in value):
        return {k: _shown(v) for k, v in value.items()}
    text = repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


class _Decoder:
    def __init__(self, files: Files | None, where: str, summary: bool = False, run_id: str = "") -> None:
        self.files = files
        self.where = where
        self.run_id = run_id
        self.summary = summary

    def decode(self, text: str) -> Any:
        try:
            return json.JSONDecoder(object_hook=self.hook).decode(text)
        except StoreError:
            raise
        except (ValueError, TypeError, RecursionError) as exc:
            if isinstance(exc, _Damaged):
                raise StoreError(
                    f"{self.where} holds a damaged value ({exc}); it was left untouched"
                ) from None
            raise _not_json(self.where, exc) from None

    def hook(self, node: dict[str, Any]) -> Any:
        tag = node.get(TAG)
        if tag is None:
            return node
        fn = _DECODERS.get(tag) if type(tag) is str else None
        if fn is None:
            raise _Damaged(f"an unknown kind of value {tag!r:.40}: written by a newer tether?")
        try:
            return fn(self, node)
        except (StoreError, _Damaged, MemoryError):
            raise
        except Exception as exc:
            raise _Damaged(f"its {tag} value cannot be read: {type(exc).__name__}: {exc}") from exc

    def data(self, node: dict[str, Any], into: Any = None) -> Any:
        """The payload of ``node``: bytes from the row, or a bytearray (or ``into``) from a file."""
        if "file" in node:
            if self.files is None:
                raise StoreError(
                    f"{self.where} refers to a file beside the database, which this reader cannot reach"
                )
            return self.files.read(node["file"], int(node["size"]), self.where, into)
        import base64

        raw = base64.b64decode(node["b64"], validate=True)
        if into is not None:
            into[:] = raw
            return into
        return raw

    def placeholder(self, node: dict[str, Any], what: str) -> _Shown:
        where = f" in a file, {_size(int(node['size']))}" if "file" in node else ""
        return _Shown(f"<{what}{where}>")


class _Damaged(ValueError):
    pass


def _tz(node: Any) -> Any:
    import datetime as dt

    if node is None:
        return None
    if "offset" in node:
        offset = dt.timedelta(seconds=node["offset"])
        return dt.timezone(offset) if node["name"] is None else dt.timezone(offset, node["name"])
    if "zone" in node:
        import zoneinfo

        return zoneinfo.ZoneInfo(node["zone"])
    import pytz  # type: ignore[import-untyped]

    return pytz.timezone(node["pytz"])


def _dec_datetime(dec: _Decoder, node: dict[str, Any]) -> Any:
    import datetime as dt

    value = dt.datetime.fromisoformat(node["v"]).replace(fold=node.get("fold", 0))
    if "tz" not in node:
        return value
    tz = _tz(node["tz"])
    if "utc" in node:  # pytz: localize the instant
        utc = (value - dt.timedelta(seconds=node["utc"])).replace(tzinfo=dt.timezone.utc)
        return utc.astimezone(tz)
    return value.replace(tzinfo=tz)


def _dec_time(dec: _Decoder, node: dict[str, Any]) -> Any:
    import datetime as dt

    value = dt.time.fromisoformat(node["v"]).replace(fold=node.get("fold", 0))
    return value.replace(tzinfo=_tz(node["tz"])) if "tz" in node else value


def _dec_date(dec: _Decoder, node: dict[str, Any]) -> Any:
    import datetime as dt

    return dt.date.fromisoformat(node["v"])


def _dec_timedelta(dec: _Decoder, node: dict[str, Any]) -> Any:
    import datetime as dt

    days, seconds, micros = node["v"]
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _dec_decimal(dec: _Decoder, node: dict[str, Any]) -> Any:
    from decimal import Decimal

    return Decimal(node["v"])


def _dec_uuid(dec: _Decoder, node: dict[str, Any]) -> Any:
    from uuid import UUID

    return UUID(node["v"])


def _dec_path(dec: _Decoder, node: dict[str, Any]) -> Any:
    import pathlib

    cls = getattr(pathlib, node["kind"]) if node["kind"] in _PATHS else None
    if cls is None:
        raise _Damaged(f"an unknown kind of path {node['kind']!r:.40}")
    try:
        return cls(node["v"])
    except NotImplementedError:  # a WindowsPath read on POSIX (or the reverse)
        return (pathlib.PureWindowsPath if "Windows" in node["kind"] else pathlib.PurePosixPath)(node["v"])


def _dec_bytes(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary and "file" in node:
        return dec.placeholder(node, node[TAG])
    data = dec.data(node)
    return bytes(data) if node[TAG] == "bytes" else bytearray(data)


def _dec_str(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary and "file" in node:
        return dec.placeholder(node, "str")
    return bytes(dec.data(node)).decode("utf-8", "surrogatepass")


def _dec_items(cls: Callable[[Any], Any]) -> Callable[[_Decoder, dict[str, Any]], Any]:
    def dec_items(dec: _Decoder, node: dict[str, Any]) -> Any:
        items = node["items"]
        if dec.summary and cls in (set, frozenset):
            try:
                return cls(items)
            except TypeError:  # items shown as text (lists are not hashable)
                return _Shown(f"{cls.__name__}({items!r})")
        if cls is dict:
            return {k: v for k, v in items}
        return cls(items)

    return dec_items


def _ordered(items: Any) -> Any:
    from collections import OrderedDict

    return OrderedDict((k, v) for k, v in items)


def _counter(items: Any) -> Any:
    from collections import Counter

    return Counter({k: v for k, v in items})


def _dec_int(dec: _Decoder, node: dict[str, Any]) -> Any:
    return int(node["hex"], 16)


def _dec_float(dec: _Decoder, node: dict[str, Any]) -> Any:
    if node["v"] not in ("nan", "inf", "-inf"):
        raise _Damaged(f"a float {node['v']!r:.40}")
    return float(node["v"])


def _dec_complex(dec: _Decoder, node: dict[str, Any]) -> Any:
    re_, im = node["v"]
    return complex(float(re_), float(im))


def _dec_range(dec: _Decoder, node: dict[str, Any]) -> Any:
    return range(*node["v"])


def _dec_tz(dec: _Decoder, node: dict[str, Any]) -> Any:
    return _tz(node["v"])


def _dec_json(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return dec.placeholder(node, "a large value")
    data = dec.data(node)
    return dec.decode(bytes(data).decode("ascii"))


def _dec_codec(dec: _Decoder, node: dict[str, Any]) -> Any:
    name = node["name"]
    fn = _BY_NAME.get(name)
    if fn is None or dec.summary:
        if dec.summary:
            return _Shown(f"<{name}>")
        raise StoreError(
            f"{dec.where} holds a {name!r} value, and no codec of that name is "
            "registered in this process: call tether.register_codec(...) for it "
            "(as the process that stored it did) before reading"
        )
    return fn(node["v"])


def _dec_pickle(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return dec.placeholder(node, f"pickled {node['type']}")
    if dec.files is None:
        raise StoreError(
            f"{dec.where} holds a pickle, which tether unpickles only from a database it can check you own"
        )
    dec.files.check_pickle(dec.where, dec.run_id, node.get("file"))
    import pickle

    return pickle.loads(dec.data(node))


def _dec_numpy(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown(
            f"<numpy {node['dtype']!s:.40}: {node['v']!r}>"
            if "v" in node
            else f"<numpy {node['dtype']!s:.40}>"
        )
    import numpy as np
    from numpy.lib import format as npformat

    dtype = npformat.descr_to_dtype(node["dtype"])
    if "v" in node:
        return np.array(node["v"], dtype=dtype)[()]
    return np.frombuffer(bytearray(dec.data(node)), dtype=dtype, count=1)[0]


def _dec_ndarray(dec: _Decoder, node: dict[str, Any]) -> Any:
    shape = tuple(int(n) for n in node["shape"])
    if dec.summary:
        return dec.placeholder(node, f"ndarray {node['dtype']!s:.40} {shape}")
    import numpy as np
    from numpy.lib import format as npformat

    dtype = npformat.descr_to_dtype(node["dtype"])
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size == 0:
        return np.empty(shape, dtype=dtype, order=node.get("order", "C"))
    flat = np.empty(size, dtype=np.uint8)
    if "file" in node and int(node["size"]) != size:
        raise _Damaged(f"an array of {size} bytes stored as {node['size']}")
    got = dec.data(node, into=_bytes_of(flat))
    if got is not None and len(got) != size:
        raise _Damaged(f"an array of {size} bytes stored as {len(got)}")
    order = node.get("order", "C")
    if order == "F":
        return flat.view(dtype).reshape(shape[::-1]).T
    return flat.view(dtype).reshape(shape)


def _dec_pandas(dec: _Decoder, node: dict[str, Any]) -> Any:
    kind = node[TAG]
    if dec.summary:
        shape = " x ".join(str(n) for n in node.get("shape", ()))
        return dec.placeholder(node, f"{kind.removeprefix('pd.')} {shape}")
    try:
        pa = _module("pyarrow")
    except ImportError:
        raise StoreError(
            f"{dec.where} holds a {kind} stored through pyarrow, which is not "
            "installed here: pip install 'tether[data]' (or pyarrow)"
        ) from None
    pd = _module("pandas")

    raw = dec.data(node)
    frame = pa.ipc.open_stream(pa.py_buffer(raw)).read_all().to_pandas()
    if "freq" in node:
        frame.index = type(frame.index)(frame.index, freq=node["freq"])
    if kind == "pd.DataFrame":
        return frame
    if kind == "pd.Series":
        return frame["__series__"].rename(node["name"])
    return frame.index if kind == "pd.Index" else pd.Index([])


def _dec_timestamp(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown(f"Timestamp({node['v']!r}{', UTC' if 'tz' in node else ''})")
    pd = _module("pandas")

    ts = pd.Timestamp(node["v"]).as_unit(node["unit"])
    if "tz" in node:
        ts = ts.tz_localize("UTC").tz_convert(_tz(node["tz"]))
    return ts


def _dec_timedelta_pd(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown(f"Timedelta({node['ns']} ns)")
    pd = _module("pandas")

    return pd.Timedelta(node["ns"], unit="ns").as_unit(node["unit"])


def _dec_nat(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown("NaT")
    pd = _module("pandas")

    return pd.NaT


def _dec_na(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown("<NA>")
    pd = _module("pandas")

    return pd.NA


_DECODERS: dict[str, Callable[[_Decoder, dict[str, Any]], Any]] = {
    "tuple": _dec_items(tuple),
    "set": _dec_items(set),
    "frozenset": _dec_items(frozenset),
    "dict": _dec_items(dict),
    "OrderedDict": _dec_items(_ordered),
    "Counter": _dec_items(_counter),
    "int": _dec_int,
    "float": _dec_float,
    "complex": _dec_complex,
    "range": _dec_range,
    "str": _dec_str,
    "bytes": _dec_bytes,
    "bytearray": _dec_bytes,
    "datetime": _dec_datetime,
    "date": _dec_date,
    "time": _dec_time,
    "timedelta": _dec_timedelta,
    "tz": _dec_tz,
    "decimal": _dec_decimal,
    "uuid": _dec_uuid,
    "path": _dec_path,
    "json": _dec_json,
    "codec": _dec_codec,
    "pickle": _dec_pickle,
    "numpy": _dec_numpy,
    "ndarray": _dec_ndarray,
    "pd.DataFrame": _dec_pandas,
    "pd.Series": _dec_pandas,
    "pd.Index": _dec_pandas,
    "pd.Timestamp": _dec_timestamp,
    "pd.Timedelta": _dec_timedelta_pd,
    "pd.NaT": _dec_nat,
    "pd.NA": _dec_na,
}


def references(text: Any) -> set[str]:
    """The files (SHA-256, hex) a stored text may refer to: a superset, for garbage collection."""
    if type(text) is not str or _QUOTED_TAG not in text:
        return set()
    return set(re.findall(r'"([0-9a-f]{64})"', text))

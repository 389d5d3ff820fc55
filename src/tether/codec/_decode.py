"""Decoding: a stored text back to its value; a damaged one is a StoreError naming where."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from ..errors import StoreError
from ._base import (
    _BY_NAME,
    _LEAVES,
    _QUOTED_TAG,
    TAG,
    Files,
    _bytes_of,
    _decode_json,
)
from ._stdtypes import _PATHS


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
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise StoreError(
            f"{dec.where} holds a {kind} stored through pyarrow, which is not "
            "installed here: pip install 'tether[data]' (or pyarrow)"
        ) from None
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

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
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    ts = pd.Timestamp(node["v"]).as_unit(node["unit"])
    if "tz" in node:
        ts = ts.tz_localize("UTC").tz_convert(_tz(node["tz"]))
    return ts


def _dec_timedelta_pd(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown(f"Timedelta({node['ns']} ns)")
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    return pd.Timedelta(node["ns"], unit="ns").as_unit(node["unit"])


def _dec_nat(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown("NaT")
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    return pd.NaT


def _dec_na(dec: _Decoder, node: dict[str, Any]) -> Any:
    if dec.summary:
        return _Shown("<NA>")
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

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

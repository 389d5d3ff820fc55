"""Values of every type tether stores (docs/values.md), and an exact comparison of two values.

Imported by the test process and by the reading child processes: ``samples()`` builds the same
values in both (nothing random), so a child can check what it reads without being sent them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import pathlib
import uuid
import zoneinfo
from collections import Counter, OrderedDict
from typing import Any

import tether

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def samples() -> dict[str, Any]:
    """name -> value, one or more of each type the issue lists (and a few more)."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {
        "json": {"a": [1, 2.5, "x", None, True], "b": {"c": []}},
        "tuple": (1, "two", (3.0, None)),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a", "b"}),
        "empty-set": set(),
        "non-str-keys": {1: "int", (1, 2): "tuple", None: "none", 2.5: "float", False: "bool"},
        "tag-key": {"$tether": "not a tag", "x": 1},
        "nan-inf": [math.nan, math.inf, -math.inf, -0.0],
        "big-int": 10**5000,
        "surrogates": "\ud800\udc00 and a lone \udcff",
        "bytes": b"\x00\x01\xff" * 10,
        "bytearray": bytearray(b"mutable"),
        "complex": 1.5 - 2j,
        "datetime-naive": dt.datetime(2024, 2, 29, 12, 30, 15, 123456),
        "datetime-utc": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "datetime-offset": dt.datetime(
            2024, 1, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
        ),
        "datetime-zone-fold": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
        "date": dt.date(1999, 12, 31),
        "time": dt.time(23, 59, 59, 999999),
        "time-tz": dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        "timedelta": dt.timedelta(days=-2, seconds=5, microseconds=7),
        "decimal": decimal.Decimal("3.14159265358979323846264338327950288"),
        "decimal-special": [decimal.Decimal("-0.00"), decimal.Decimal("Infinity")],
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "path": pathlib.Path("/data/run 1/out.csv"),
        "pure-paths": [pathlib.PurePosixPath("a/b"), pathlib.PureWindowsPath(r"C:\x\y")],
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "counter": Counter("hello"),
        "range": range(3, 30, 4),
        "np-scalars": [
            np.int8(-5),
            np.uint64(2**64 - 1),
            np.float32(0.1),
            np.float64(np.nan),
            np.bool_(False),
            np.complex128(1 + 1j),
            np.datetime64("2024-01-01T00:00", "m"),
            np.timedelta64(5, "ns"),
            np.str_("é"),
            np.longdouble(1) / 3,
        ],
        "np-arrays": [
            np.arange(12, dtype=np.int32).reshape(3, 4),
            np.asfortranarray(np.linspace(0, 1, 12).reshape(3, 4)),
            np.arange(20)[::3],
            np.zeros((0, 5)),
            np.array(7.5),
            np.array([1, 2, 3], dtype=">u2"),
            np.array(["ab", "c"]),
            np.array(["2024-01-01", "NaT"], dtype="M8[D]"),
            np.array([True, False]),
            np.array([np.nan, 1.0]),
            np.zeros(2, dtype=[("id", "<i4"), ("xy", "<f8", (2,))]),
        ],
        "np-large": np.arange(300_000, dtype=np.float64),  # 2.4 MB: a file beside the DB
        "frame": pd.DataFrame(
            {
                "i": [1, 2, 3],
                "f": [0.5, np.nan, 2.0],
                "s": ["x", None, "z"],
                "cat": pd.Categorical(["a", "b", "a"], categories=["b", "a"], ordered=True),
                "t": pd.date_range("2024-01-01", periods=3, tz="Europe/Paris"),
                "n": pd.array([1, None, 3], dtype="Int64"),
            },
            index=pd.Index(["p", "q", "r"], name="key"),
        ),
        "frame-multi": pd.DataFrame(
            [[1, 2], [3, 4]],
            columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")]),
            index=pd.MultiIndex.from_tuples([("k", 1), ("k", 2)], names=["l1", "l2"]),
        ),
        "frame-freq": pd.DataFrame({"v": [1.0, 2.0]}, index=pd.date_range("2024", periods=2, freq="D")),
        "frame-large": pd.DataFrame({"a": np.arange(200_000), "b": np.arange(200_000) * 0.5}),
        "series": pd.Series([1.5, 2.5], name=("named", 1), index=pd.Index([10, 20], name="at")),
        "series-unnamed": pd.Series(["a", "b"]),
        "index": pd.Index([3, 1, 2], name="n"),
        "range-index": pd.RangeIndex(2, 20, 3, name="r"),
        "datetime-index": pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC", name="when"),
        "pd-scalars": [
            pd.Timestamp("2024-03-30 02:30:00.000000001", tz="Europe/Paris"),
            pd.Timestamp("2024-01-01"),
            pd.Timedelta("1 day 3ns"),
            pd.NaT,
        ],
    }
    out["nested"] = {
        "rows": [out["tuple"], {"when": out["date"], "vals": out["np-arrays"][0]}],
        "meta": {"frame": out["frame"], "ids": frozenset({out["uuid"]})},
    }
    return out


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (numpy: dtype and shape; pandas: the testing
    asserts; NaN equals NaN; -0.0 is not 0.0; datetimes: same fields, zone and fold)."""
    import numpy as np
    import pandas as pd

    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.names:
            return bool(a.tobytes() == b.tobytes())
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fcmM"))
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()  # bit for bit
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, check_freq=True)
        return True
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
        return True
    if isinstance(a, pd.Index):
        pd.testing.assert_index_equal(a, b, exact=True)
        return a.freq == b.freq if hasattr(a, "freq") else True
    if isinstance(a, pd.Timestamp):
        return a == b and a.unit == b.unit and str(a.tz) == str(b.tz) and a.isoformat() == b.isoformat()
    if a is pd.NaT or a is pd.NA:
        return b is a
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and repr(a) == repr(b) and a.fold == b.fold
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):  # OrderedDict and Counter keep their order
        if isinstance(a, OrderedDict) and list(a) != list(b):
            return False
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


class Point:
    """A user type, stored through ``register_point()``."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is Point and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


class Plain(Point):
    """A user type with no codec: stored only by ``serializer="pickle"``."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Plain({self.x}, {self.y})"


def register_point() -> None:
    tether.register_codec(
        Point, lambda p: {"x": p.x, "y": p.y}, lambda d: Point(d["x"], d["y"]), name="tests.Point"
    )


def pick(name: str) -> Any:
    """A ``ctx.map`` item function (module-level: process pools pickle it by name)."""
    return samples()[name]


@tether.pipeline
def carry(ctx: tether.Context, name: str) -> dict[str, Any]:
    """The sample ``name`` as a ctx.step value, a ctx.map item result and the result. The first
    attempt fails after the step and the map, so a resumed attempt reads those two back."""
    value = samples()[name]
    stepped = ctx.step("make", lambda: value)
    mapped = ctx.map(pick, [name], name="pick")[0]
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails after its step and its map")
    return {"result": value, "step": stepped, "map": mapped}


@tether.pipeline(serializer="pickle")
def pickled(ctx: tether.Context) -> dict[str, Any]:
    """Opted in to pickle: a Plain (no codec) is pickled, the rest stored as usual."""
    return {"p": Plain(1, 2), "n": 3}


def block_pickle() -> None:
    """Make any unpickling in this process fail loudly: pickle's and _pickle's loaders replaced,
    and an audit hook on ``pickle.find_class`` (which every unpickled class goes through)."""
    import pickle
    import sys

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    for mod in (pickle, sys.modules.get("_pickle")):
        if mod is not None:
            mod.loads = mod.load = mod.Unpickler = refused  # type: ignore[attr-defined]

    def audit(event: str, args: Any) -> None:
        if event == "pickle.find_class":
            raise AssertionError(f"something was unpickled: {args}")

    sys.addaudithook(audit)

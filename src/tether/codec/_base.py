"""The codec's shared parts: canonical JSON, limits, the registries, and the params check."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ParamsError

TAG = "$tether"
_QUOTED_TAG = '"$tether"'  # present in the text of every tagged value (and in few others)
TAG_TEXT = _QUOTED_TAG
INLINE_MAX = 1 << 20  # bytes of a row's value; larger values keep their bulk in files
FILE_MIN = 64 << 10  # a payload smaller than this stays in the row
MAX_DEPTH = 200  # nesting of a stored value: any reader's stack can decode it

# One encoder for the process: json.dumps() with options builds a new encoder on every call.
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


# -- where files are written and read -----------------------------------------------------------


class Files(Protocol):
    """Where values' files are written and read (tether.artifacts.Artifacts)."""

    def write(self, data: Any) -> str: ...

    def read(self, digest: str, size: int, where: str, into: Any = None) -> Any: ...

    def check_pickle(self, where: str, run_id: str, digest: str | None = None) -> None: ...

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

from ._base import (
    FILE_MIN,
    INLINE_MAX,
    MAX_DEPTH,
    TAG,
    TAG_TEXT,
    Encoded,
    Files,
    allow_pickle,
    check_json,
    dumps,
    pickle_allowed,
)
from ._decode import decode, references, summary
from ._encode import encode, register_codec

__all__ = [
    "FILE_MIN",
    "INLINE_MAX",
    "MAX_DEPTH",
    "TAG",
    "TAG_TEXT",
    "Encoded",
    "Files",
    "allow_pickle",
    "check_json",
    "decode",
    "dumps",
    "encode",
    "pickle_allowed",
    "references",
    "register_codec",
    "summary",
]

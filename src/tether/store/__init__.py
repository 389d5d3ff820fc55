"""The store: the only part of tether that speaks SQL.

``Store`` (tether.store.protocol) is what the engine, runs, pipelines, the CLI and the widgets
call; ``SQLiteStore`` (tether.store.sqlite) implements it over a SQLite file in WAL mode; ``migrate``
copies one into a PostgresStore (tether.store.postgres).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codec import MAX_DEPTH, dumps
from ._connection import BUSY_TIMEOUT_S, _after_fork
from ._migrate import Migration, migrate
from ._rows import FlushItem, Queued, StartOutcome, json_str
from ._safety import missing_database
from .protocol import GoneCheck, Store
from .sqlite import SQLiteStore

__all__ = [
    "BUSY_TIMEOUT_S",
    "MAX_DEPTH",
    "FlushItem",
    "GoneCheck",
    "Migration",
    "Queued",
    "SQLiteStore",
    "StartOutcome",
    "Store",
    "_after_fork",
    "dumps",
    "json_str",
    "migrate",
    "missing_database",
]

if TYPE_CHECKING:  # mypy proves the SQLite class implements the protocol

    def _implements(store: SQLiteStore) -> Store:
        return store

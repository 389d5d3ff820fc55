"""The whole schema of a tether database, as forward migrations (sqlite-utils ``Migrations``).

A migration is never edited once released: add a new one (and its name to ``KNOWN``). A database
that records a migration this module does not know was written by a newer tether and is refused,
untouched.

sqlite-utils is imported only to apply a migration (a new or older database): checking that a
database is current is one read of sqlite-utils' migrations table, and importing sqlite-utils
(with click, dateutil, pluggy) costs more than the rest of ``import tether`` together.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database

MIGRATION_SET = "tether"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite_utils.migrations.Migrations.migrations_table
KNOWN = ["0001_initial", "0002_owner_ns", "0003_control", "0004_code", "0005_active_index"]  # in order

# Times are unix epoch seconds (REAL): datetime(created_at, 'unixepoch') reads them in the shell.
_V1 = [
    """
    CREATE TABLE runs (
        id               TEXT PRIMARY KEY,
        key              TEXT NOT NULL,
        attempt          INTEGER NOT NULL,
        pipeline         TEXT NOT NULL,
        version          TEXT,
        params           TEXT NOT NULL,          -- canonical JSON
        status           TEXT NOT NULL,          -- pending|running|succeeded|failed|cancelled|interrupted
        phase            TEXT,
        phases           TEXT NOT NULL DEFAULT '[]',   -- JSON list: declared, then seen
        phases_done      TEXT NOT NULL DEFAULT '[]',   -- JSON list of completed phases
        done             NUMERIC NOT NULL DEFAULT 0,   -- progress of the current phase
        total            NUMERIC,                      -- NULL: indeterminate
        message          TEXT,                         -- last log line
        error            TEXT,                         -- JSON {type, message, traceback}
        result           TEXT,                         -- JSON
        created_at       REAL NOT NULL,
        started_at       REAL,
        ended_at         REAL,
        updated_at       REAL NOT NULL,
        owner_host       TEXT,
        owner_pid        INTEGER,
        owner_started    REAL,
        owner_instance   TEXT,
        target           TEXT,                         -- instance that may start it, or 'worker'
        lease_until      REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        resumed_from     TEXT REFERENCES runs(id),
        created_by       TEXT NOT NULL DEFAULT 'start',  -- start|start:rerun|start:resume|rerun|resume
        last_seq         INTEGER NOT NULL DEFAULT 0,
        UNIQUE (key, attempt)
    )
    """,
    "CREATE INDEX runs_created ON runs (created_at)",
    "CREATE INDEX runs_status ON runs (status, created_at)",
    "CREATE INDEX runs_pipeline ON runs (pipeline, created_at)",
    """
    CREATE TABLE events (
        run_id  TEXT NOT NULL REFERENCES runs(id),
        seq     INTEGER NOT NULL,                -- contiguous per run, from 1
        ts      REAL NOT NULL,
        kind    TEXT NOT NULL,                   -- created|started|phase|log|cancel_requested|<status>|...
        phase   TEXT,
        data    TEXT NOT NULL DEFAULT '{}',      -- JSON object
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE checkpoints (
        run_id  TEXT NOT NULL REFERENCES runs(id),
        name    TEXT NOT NULL,
        value   TEXT NOT NULL,                   -- JSON
        ts      REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID
    """,
]


# where the owner's pid means something: "<boot id>/<st_dev>:<st_ino> of its pid namespace"
# (tether.owner); NULL for runs recorded before (judged by host and pid alone)
_OWNER_NS = ["ALTER TABLE runs ADD COLUMN owner_ns TEXT"]


_CONTROL = [
    # a child run records the run whose body started it (tether.Run.parent / children())
    "ALTER TABLE runs ADD COLUMN parent_id TEXT",
    "CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL",
    # retries within one run: tries started so far (a resumed attempt carries its predecessor's
    # on), how many are allowed, and when the next one starts while the run waits to retry
    "ALTER TABLE runs ADD COLUMN tries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN max_tries INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE runs ADD COLUMN retry_at REAL",
    # timeout of one try (seconds) and when the current try passes it (epoch seconds)
    "ALTER TABLE runs ADD COLUMN timeout REAL",
    "ALTER TABLE runs ADD COLUMN deadline REAL",
    # concurrency=k of the pipeline: at most k of its runs running (checked in the claim); a
    # parent waiting for a child is parked, and not counted while it waits
    "ALTER TABLE runs ADD COLUMN concurrency INTEGER",
    "ALTER TABLE runs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0",
    # the claim's check: running runs of the pipeline, and pending ones before it (by rowid,
    # which an index entry ends with), without a scan of every pending run
    "CREATE INDEX runs_queue ON runs (pipeline, status)",
    # `tether worker` processes and the pipelines they serve, renewed by lease: a pending run
    # whose starter died is handed to a live worker serving its pipeline
    """
    CREATE TABLE workers (
        instance     TEXT NOT NULL,
        pipeline     TEXT NOT NULL,
        host         TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        started      REAL NOT NULL,
        ns           TEXT,
        lease_until  REAL NOT NULL,
        PRIMARY KEY (pipeline, instance)
    ) WITHOUT ROWID
    """,
]


# the fingerprint of the body's code that created the run (tether._code: "ast:<hex>", or
# "bytecode:<hex>"); NULL for runs recorded before, or of a callable without code
_CODE = ["ALTER TABLE runs ADD COLUMN code TEXT"]

# Active runs (pending, running) are few; ended ones pile up. One index of the active runs alone
# (partial) replaces the two indexes of every run by status: a run's start adds one entry, its
# end removes it, and an ended run keeps none (WAL frames per 3-step run 21 -> 18). SQLite uses a
# partial index only for a query that states the index's WHERE term itself: the store's queries
# of active runs say ``_rows.ACTIVE``, this exact text.
_ACTIVE_INDEX = [
    "DROP INDEX runs_status",
    "DROP INDEX runs_queue",
    "CREATE INDEX runs_active ON runs (pipeline, status) WHERE status IN ('pending', 'running')",
]

# Each migration's statements, in SQLite's dialect: the one description of the schema
# (tether.store._pg_schema derives PostgreSQL's from it).
STATEMENTS = {
    "0001_initial": _V1,
    "0002_owner_ns": _OWNER_NS,
    "0003_control": _CONTROL,
    "0004_code": _CODE,
    "0005_active_index": _ACTIVE_INDEX,
}


def _step(statements: list[str]) -> Any:
    def run(db: Database) -> None:
        for statement in statements:
            db.execute(statement)

    return run


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the tether migrations recorded in the database, in the order applied."""
    rows = conn.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY rowid", (MIGRATION_SET,)
    ).fetchall()
    return [r[0] for r in rows]


def apply(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations with sqlite-utils (the caller holds the transaction)."""
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    migrations: Any = Migrations(MIGRATION_SET)
    assert migrations.migrations_table == MIGRATIONS_TABLE
    for name in KNOWN:
        migrations(name=name)(_step(STATEMENTS[name]))
    migrations.apply(Database(conn, execute_plugins=False, recursive_triggers=False))

"""The dialect seam: the store's statements are written once, in SQLite's dialect; PostgreSQL runs
them translated here (once per distinct statement, cached), and its schema is derived from the
SQLite one (tether.store._schema.STATEMENTS).

What changes between the two:

- placeholders: ``?`` and ``?N`` (SQLite numbers a ``?`` after ``?N`` as N+1) become psycopg's
  ``%s``, with the arguments put in the order the placeholders appear;
- ``IS ?`` (SQLite's null-safe equality) becomes ``IS NOT DISTINCT FROM``;
- ``INSERT OR REPLACE`` becomes ``INSERT ... ON CONFLICT (<primary key>) DO UPDATE``;
- ``instr(a, b)`` becomes ``strpos(a, b)``, ``json_extract(x, '$.name')`` becomes
  ``tether_jsonb(x) ->> 'name'`` (tether_jsonb: NULL for text that is not JSON, as SQLite);
- ``rowid`` is a column of ``runs`` (an identity) in PostgreSQL;
- types: REAL -> DOUBLE PRECISION, INTEGER -> BIGINT; ``WITHOUT ROWID`` and the foreign keys
  (which SQLite does not enforce here) are left out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from . import _schema

# the primary key of each table written with INSERT OR REPLACE
_CONFLICT_KEYS = {"checkpoints": ("run_id", "name"), "workers": ("pipeline", "instance")}

_IS_PARAM = re.compile(r"\bIS\s+(?=\?)")
_REPLACE = re.compile(r"^\s*INSERT OR REPLACE INTO (\w+) \(([^)]*)\)", re.S)
_JSON_EXTRACT = re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)")
_INSTR = re.compile(r"\binstr\(")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """PostgreSQL's text of a statement written for SQLite, and the order of the arguments its
    placeholders take (None: as given)."""
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ", sql)
    sql = _INSTR.sub("strpos(", sql)
    sql = _JSON_EXTRACT.sub(r"(tether_jsonb(\1) ->> '\2')", sql)
    conflict = ""
    m = _REPLACE.match(sql)
    if m:
        table, cols = m.group(1), [c.strip() for c in m.group(2).split(",")]
        keys = _CONFLICT_KEYS[table]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keys)
        sql = f"INSERT INTO {table} ({m.group(2)})" + sql[m.end() :]
        conflict = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    out: list[str] = []
    order: list[int] = []
    top = 0  # the highest argument number used so far (SQLite's numbering of a bare ?)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'":  # a string literal: copied as it is
            j = sql.index("'", i + 1)
            while j + 1 < n and sql[j + 1] == "'":
                j = sql.index("'", j + 2)
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
            continue
        if c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            number = int(sql[i + 1 : j]) if j > i + 1 else top + 1
            top = max(top, number)
            order.append(number - 1)
            out.append("%s")
            i = j
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    text = "".join(out) + conflict
    same = order == list(range(len(order)))
    return text, None if same else tuple(order)


def arguments(order: tuple[int, ...] | None, args: Sequence[Any]) -> Sequence[Any]:
    return args if order is None else [args[k] for k in order]


# -- the schema ------------------------------------------------------------------------------------

MIGRATIONS_TABLE = "tether_migrations"
FILES_TABLE = "tether_files"

_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"))
_FOREIGN = re.compile(r"\s+REFERENCES \w+\(\w+\)")
_NO_ROWID = re.compile(r"\)\s*WITHOUT ROWID\s*$")

# PostgreSQL's own additions, applied with the first migration: what SQLite has built in
_PG_EXTRA = {
    "0001_initial": [
        # SQLite's rowid: the order in which runs were made (the concurrency queue's order)
        "ALTER TABLE runs ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY",
        "CREATE UNIQUE INDEX runs_rowid ON runs (rowid)",
        # JSON text as jsonb, NULL when it is not JSON (SQLite's json functions never raise on
        # a damaged row either)
        """
        CREATE FUNCTION tether_jsonb(t TEXT) RETURNS JSONB LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            RETURN t::jsonb;
        EXCEPTION WHEN others THEN
            RETURN NULL;
        END $$
        """,
        # large values (SQLite keeps them as files beside the database): content-addressed rows
        # every host reaches
        f"""
        CREATE TABLE {FILES_TABLE} (
            digest      TEXT PRIMARY KEY,
            size        BIGINT NOT NULL,
            data        BYTEA NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL
        )
        """,
    ]
}


def pg_statement(statement: str) -> str:
    """A schema statement of tether.store._schema in PostgreSQL's dialect."""
    for pattern, pg_type in _TYPES:
        statement = pattern.sub(pg_type, statement)
    statement = _FOREIGN.sub("", statement)
    return _NO_ROWID.sub(")", statement.rstrip())


def pg_migration(name: str) -> list[str]:
    """The PostgreSQL statements of migration ``name`` (one of _schema.KNOWN)."""
    return [pg_statement(s) for s in _schema.STATEMENTS[name]] + _PG_EXTRA.get(name, [])

"""The PostgreSQL backend for the store contract: a fresh database per test on the session's
throwaway cluster (tests/helpers/postgres.py); its URL is kept in ``<location>/url`` for the
race's child processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.store import Store


def prepare(location: Path, request: pytest.FixtureRequest) -> None:
    """Give the test a database of its own (dropped at its end)."""
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    request.addfinalizer(lambda: cluster.drop_database(url))
    (location / "url").write_text(url)


def open_store(location: Path) -> Store:
    from tether.store.postgres import PostgresStore

    return PostgresStore((location / "url").read_text())


def _connect(location: Path) -> Any:
    import psycopg

    return psycopg.connect((location / "url").read_text(), autocommit=True)


def damage(location: Path, run_id: str, column: str, value: object) -> None:
    """Write ``value`` into ``column`` of the run behind the store's back (a hand edit)."""
    if column in ("done", "total", "attempt", "last_seq") and not isinstance(value, (int, float)):
        pytest.skip(f"PostgreSQL enforces the type of {column}: no hand edit can store {value!r} there")
    with _connect(location) as conn:
        conn.execute(f"UPDATE runs SET {column} = %s WHERE id = %s", (value, run_id))


def make_old(location: Path) -> None:
    """Take the database back to the oldest schema a current tether migrates (0001_initial and
    0002_owner_ns), as backend_sqlite does."""
    from helpers.util import undo_control_migration

    with _connect(location) as conn, conn.transaction():
        conn.execute("ALTER TABLE runs DROP COLUMN code")
        conn.execute("DELETE FROM tether_migrations WHERE name = '0004_code'")
        undo_control_migration(conn, "tether_migrations")

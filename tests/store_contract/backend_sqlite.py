"""The SQLite backend for the store contract: how to open one, damage a row, make an old one."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from tether.store import SQLiteStore, Store


def open_store(location: Path) -> Store:
    return SQLiteStore(location / "runs.db")


def damage(location: Path, run_id: str, column: str, value: object) -> None:
    """Write ``value`` into ``column`` of the run behind the store's back (a hand edit)."""
    with closing(sqlite3.connect(location / "runs.db", timeout=30)) as conn:
        conn.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, run_id))
        conn.commit()


def make_old(location: Path) -> None:
    """Take the database at ``location`` back to the oldest schema a current tether migrates
    (0001_initial and 0002_owner_ns: what the first released tether wrote)."""
    from helpers.util import undo_control_migration

    with closing(sqlite3.connect(location / "runs.db", timeout=30)) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN code")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_code'")
        undo_control_migration(conn)
        conn.commit()

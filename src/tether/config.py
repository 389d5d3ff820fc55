"""Process-wide settings and the store they point at. ``import tether`` opens nothing."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import StoreError
from .store import SQLiteStore

__all__ = ["Settings", "configure", "existing_store", "settings", "store"]

DEFAULT_DB = Path(".tether") / "runs.db"


@dataclass(frozen=True)
class Settings:
    """What ``tether.configure()`` sets. Times are in seconds."""

    db: str | None = None  # None: $TETHER_DB, else ./.tether/runs.db (resolved at first use)
    max_concurrency: int = 4  # runs executing at once in this process; extra runs wait pending
    flush_interval: float = 0.25  # progress and buffered events reach the store at least this often
    heartbeat_interval: float = 2.0  # lease renewal period
    lease: float = 30.0  # a run whose lease is this old is an orphan on any host
    sweep_interval: float = 5.0  # how often the runner looks for orphans
    max_auto_resumes: int = 3  # automatic resumes allowed per key
    # use a database (or -wal/-shm) owned by another user; None: $TETHER_ALLOW_FOREIGN_DB (1/0)
    allow_foreign_db: bool | None = None


_settings = Settings()
_stores: dict[Path, SQLiteStore] = {}
_lock = threading.Lock()


def settings() -> Settings:
    return _settings


def configure(db: str | os.PathLike[str] | None = None, **options: float | int | bool) -> Settings:
    """Set where runs are stored and how the runner behaves; returns the settings in force.

    ``tether.configure(db="runs.db")``; options: max_concurrency, flush_interval,
    heartbeat_interval, lease, sweep_interval, max_auto_resumes, allow_foreign_db. Runs already
    started keep the store they were started in.
    """
    global _settings
    known = {f.name for f in fields(Settings)} - {"db"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"tether.configure() got unknown option(s) {', '.join(unknown)}; "
            f"known options: db, {', '.join(sorted(known))}"
        )
    if "allow_foreign_db" in options and not isinstance(options["allow_foreign_db"], bool):
        raise TypeError(
            "tether.configure(allow_foreign_db=...) must be True or False, got "
            f"{options['allow_foreign_db']!r}"
        )
    for name, value in options.items():
        if name == "allow_foreign_db":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"tether.configure({name}=...) must be a positive number, got {value!r}")
    if (
        options.get("max_concurrency") is not None
        and int(options["max_concurrency"]) != options["max_concurrency"]
    ):
        raise ValueError("tether.configure(max_concurrency=...) must be a whole number")
    new = replace(_settings, **options)  # type: ignore[arg-type]
    if db is not None:
        _not_a_url(os.fspath(db), "tether.configure(db=...)")
        new = replace(new, db=os.fspath(db))
    _settings = new
    return _settings


_resolved: dict[tuple[str, str], Path] = {}


def db_path() -> Path:
    if _settings.db:
        return _resolve(_settings.db, "tether.configure(db=...)")
    env = os.environ.get("TETHER_DB")
    if env:
        return _resolve(env, "TETHER_DB")
    return _resolve(str(DEFAULT_DB), "")


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _not_a_url(raw: str, where: str) -> None:
    """A URL (``postgresql://...``) is refused: as a path it would create a folder named
    ``postgresql:`` in the cwd. The message shows the scheme only (a URL may hold a password)."""
    m = _URL.match(raw)
    if m is None:
        return
    scheme = m.group(1)
    what = f"{where} = '{scheme}://...'" if where else f"'{scheme}://...'"
    if scheme.lower().startswith("postgres"):
        raise StoreError(
            f"{what} is not a file path; PostgreSQL is not supported yet: tether "
            "keeps runs in a SQLite file. Pass a file path such as .tether/runs.db."
        )
    raise StoreError(
        f"{what} is not a file path ({scheme}:// URL); a file path is expected, "
        "the SQLite file tether keeps runs in, such as .tether/runs.db."
    )


def _resolve(raw: str, where: str = "the database path") -> Path:
    expanded = os.path.expanduser(raw)
    # a relative path means the cwd of the call; an absolute one must not depend on it (the cwd
    # may have been deleted)
    absolute = os.path.isabs(expanded)
    try:
        key = (raw, "" if absolute else os.getcwd())
    except FileNotFoundError:
        raise StoreError(
            f"{where} = {raw!r} is relative, and the current folder no longer exists; "
            "pass an absolute path to tether.configure(db=...) or TETHER_DB."
        ) from None
    p = _resolved.get(key)
    if p is None:
        _not_a_url(raw, where)
        p = _resolved[key] = Path(os.path.abspath(expanded))
    return p


def _foreign_db_allowed() -> bool:
    """tether.configure(allow_foreign_db=...), else $TETHER_ALLOW_FOREIGN_DB (read at open)."""
    if _settings.allow_foreign_db is not None:
        return _settings.allow_foreign_db
    raw = os.environ.get("TETHER_ALLOW_FOREIGN_DB", "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise StoreError(
        f"TETHER_ALLOW_FOREIGN_DB={raw!r} must be 1 (use a database another user "
        "owns) or 0; unset it to refuse such databases."
    )


def store(path: str | os.PathLike[str] | None = None) -> SQLiteStore:
    """The store for ``path`` (default: the configured database), one object per file."""
    p = _resolve(os.fspath(path)) if path else db_path()
    s = _stores.get(p)
    if s is None or s._closed:
        with _lock:
            s = _stores.get(p)
            if s is None or s._closed:
                s = _stores[p] = SQLiteStore(p, allow_foreign=_foreign_db_allowed)
    return s


def existing_store(path: str | os.PathLike[str] | None = None) -> SQLiteStore:
    """store(path) for a database that must exist already (the CLI's reads: a typo must not create
    an empty one). StoreError if it does not exist or cannot be reached."""
    p = _resolve(os.fspath(path)) if path else db_path()
    s = store(p)
    if s._stat() is None:
        raise StoreError(
            f"tether database {str(p)!r} does not exist; pass --db PATH "
            "(or set TETHER_DB) to point at the runs.db your notebook uses"
        )
    return s


def _after_fork() -> None:
    # connections and threads do not survive fork: the child starts afresh
    global _lock
    _lock = threading.Lock()
    _stores.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

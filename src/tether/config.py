"""Process-wide settings and the store they point at. ``import tether`` opens nothing."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .store import Store

__all__ = ["Settings", "configure", "settings", "store"]

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


_settings = Settings()
_stores: dict[Path, Store] = {}
_lock = threading.Lock()


def settings() -> Settings:
    return _settings


def configure(db: str | os.PathLike[str] | None = None, **options: float | int) -> Settings:
    """Set where runs are stored and how the runner behaves; returns the settings in force.

    ``tether.configure(db="runs.db")``; options: max_concurrency, flush_interval,
    heartbeat_interval, lease, sweep_interval, max_auto_resumes. Runs already started keep the
    store they were started in.
    """
    global _settings
    known = {f.name for f in fields(Settings)} - {"db"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"tether.configure() got unknown option(s) {', '.join(unknown)}; "
                        f"known options: db, {', '.join(sorted(known))}")
    for name, value in options.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"tether.configure({name}=...) must be a positive number, got {value!r}")
    if options.get("max_concurrency") is not None and int(options["max_concurrency"]) != options[
            "max_concurrency"]:
        raise ValueError("tether.configure(max_concurrency=...) must be a whole number")
    new = replace(_settings, **options)  # type: ignore[arg-type]
    if db is not None:
        new = replace(new, db=os.fspath(db))
    _settings = new
    return _settings


_resolved: dict[tuple[str, str], Path] = {}


def db_path() -> Path:
    raw = _settings.db or os.environ.get("TETHER_DB") or str(DEFAULT_DB)
    return _resolve(raw)


def _resolve(raw: str) -> Path:
    expanded = os.path.expanduser(raw)
    # a relative path means the cwd of the call; an absolute one must not depend on it (the cwd
    # may have been deleted)
    where = (raw, "" if os.path.isabs(expanded) else os.getcwd())
    p = _resolved.get(where)
    if p is None:
        p = _resolved[where] = Path(os.path.abspath(expanded))
    return p


def store(path: str | os.PathLike[str] | None = None) -> Store:
    """The store for ``path`` (default: the configured database), one object per file."""
    p = _resolve(os.fspath(path)) if path else db_path()
    s = _stores.get(p)
    if s is None or s._closed:
        with _lock:
            s = _stores.get(p)
            if s is None or s._closed:
                s = _stores[p] = Store(p)
    return s


def _after_fork() -> None:
    # connections and threads do not survive fork: the child starts afresh
    global _lock
    _lock = threading.Lock()
    _stores.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

"""Settings: what they hold, how ``configure()`` checks them, which file they name. No state:
a workspace (tether.workspace) holds the settings in force."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import StoreError

__all__ = [
    "DURABILITY",
    "Settings",
    "db_setting",
    "durability",
    "foreign_db_allowed",
    "network_fs_allowed",
    "resolve",
    "updated",
]

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
    # use a database on a network filesystem (NFS, SMB, sshfs...); None: $TETHER_ALLOW_NETWORK_FS
    allow_network_fs: bool | None = None
    # "normal" or "full" (see DURABILITY); None: $TETHER_DURABILITY, else "normal"
    durability: str | None = None


_FLAGS = ("allow_foreign_db", "allow_network_fs")  # True / False / None options


# What each level survives without losing a committed transaction, and SQLite's
# ``PRAGMA synchronous`` that gives it (in WAL mode).
DURABILITY = {
    "normal": "a crash of the process or the kernel",  # synchronous=NORMAL: fsync at checkpoints
    "full": "an OS crash or a power cut too",  # synchronous=FULL: an fsync of the WAL per commit
}


def _durability_error(where: str, value: object) -> str:
    return f"{where} must be {' or '.join(repr(k) for k in DURABILITY)}, got {value!r}"


def updated(
    current: Settings, db: str | os.PathLike[str] | None = None, **options: float | int | bool | str
) -> Settings:
    """``current`` with ``db`` and ``options`` applied, each checked (TypeError / ValueError
    naming the option and the fix). What ``tether.configure()`` does to a workspace's settings."""
    known = {f.name for f in fields(Settings)} - {"db"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"tether.configure() got unknown option(s) {', '.join(unknown)}; "
            f"known options: db, {', '.join(sorted(known))}"
        )
    for flag in _FLAGS:
        if flag in options and not isinstance(options[flag], bool):
            raise TypeError(f"tether.configure({flag}=...) must be True or False, got {options[flag]!r}")
    level = options.get("durability", "normal")
    if not (isinstance(level, str) and level in DURABILITY):
        raise ValueError(_durability_error("tether.configure(durability=...)", level))
    for name, value in options.items():
        if name in _FLAGS or name == "durability":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"tether.configure({name}=...) must be a positive number, got {value!r}")
    if (
        options.get("max_concurrency") is not None
        and int(options["max_concurrency"]) != options["max_concurrency"]
    ):
        raise ValueError("tether.configure(max_concurrency=...) must be a whole number")
    checked: dict[str, Any] = options  # each name and value checked above against its field
    new = replace(current, **checked)
    if db is not None:
        not_a_url(os.fspath(db), "tether.configure(db=...)")
        new = replace(new, db=os.fspath(db))
    return new


def db_setting(settings: Settings) -> tuple[str, str]:
    """The database path in force and where it came from (for messages): the configured one,
    else $TETHER_DB, else ./.tether/runs.db."""
    if settings.db:
        return settings.db, "tether.configure(db=...)"
    env = os.environ.get("TETHER_DB")
    if env:
        return env, "TETHER_DB"
    return str(DEFAULT_DB), ""


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def is_postgres(raw: str) -> bool:
    """Does ``raw`` name a PostgreSQL database (``postgresql://...``, the PostgresStore's)?"""
    return raw.startswith(("postgresql://", "postgres://"))


def not_a_url(raw: str, where: str) -> None:
    """A URL other than PostgreSQL's is refused: as a path it would create a folder named
    ``<scheme>:`` in the cwd. The message shows the scheme only (a URL may hold a password)."""
    m = _URL.match(raw)
    if m is None or is_postgres(raw):
        return
    scheme = m.group(1)
    what = f"{where} = '{scheme}://...'" if where else f"'{scheme}://...'"
    raise StoreError(
        f"{what} is not a file path ({scheme}:// URL); a file path is expected, "
        "the SQLite file tether keeps runs in, such as .tether/runs.db, or a "
        "postgresql://user@host/database URL."
    )


def resolve(
    raw: str, where: str = "the database path", cache: dict[tuple[str, str], Path] | None = None
) -> Path:
    """The absolute path ``raw`` names (a URL or a vanished cwd: StoreError). ``cache``: the
    caller's memo of earlier answers, keyed by the text and the cwd it was relative to."""
    expanded = os.path.expanduser(raw)
    # a relative path means the cwd of the call; an absolute one must not depend on it (the cwd
    # may have been deleted)
    absolute = os.path.isabs(expanded)
    try:
        key = (raw, "" if absolute else os.getcwd())
    except FileNotFoundError:
        raise StoreError(
            f"{where} = {raw!r} is relative, and the current folder no longer exists;",
            "pass an absolute path to {db} or TETHER_DB.",
        ) from None
    p = None if cache is None else cache.get(key)
    if p is None:
        not_a_url(raw, where)
        p = Path(os.path.abspath(expanded))
        if cache is not None:
            cache[key] = p
    return p


def _allowed(setting: bool | None, env: str, what: str) -> bool:
    """A True/False/None option: its setting, else the environment variable ``env`` (1/0)."""
    if setting is not None:
        return setting
    raw = os.environ.get(env, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise StoreError(f"{env}={raw!r} must be 1 ({what}) or 0; unset it to refuse such databases.")


def foreign_db_allowed(settings: Settings) -> bool:
    """tether.configure(allow_foreign_db=...), else $TETHER_ALLOW_FOREIGN_DB (read at open)."""
    return _allowed(settings.allow_foreign_db, "TETHER_ALLOW_FOREIGN_DB", "use a database another user owns")


def network_fs_allowed(settings: Settings) -> bool:
    """tether.configure(allow_network_fs=...), else $TETHER_ALLOW_NETWORK_FS (read at open)."""
    return _allowed(
        settings.allow_network_fs, "TETHER_ALLOW_NETWORK_FS", "use a database on a network filesystem"
    )


def durability(settings: Settings) -> str:
    """tether.configure(durability=...), else $TETHER_DURABILITY, else "normal" (read when a
    store is made or the setting changes)."""
    if settings.durability is not None:
        return settings.durability
    raw = os.environ.get("TETHER_DURABILITY", "").strip().lower()
    if not raw:
        return "normal"
    if raw in DURABILITY:
        return raw
    raise StoreError(_durability_error("TETHER_DURABILITY", raw) + "; unset it for 'normal'.")

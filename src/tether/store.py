"""The only module that speaks SQL. SQLite in WAL mode, one connection per thread.

Every state change is one committed ``BEGIN IMMEDIATE`` transaction; every status change is
conditional on the status (and owner) it replaces, so a terminal status never changes and whoever
notices an orphan first wins.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import contains
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from . import _interrupts, _schema, codec
from .artifacts import Artifacts
from .codec import MAX_DEPTH, dumps
from .errors import RunNotFound, StoreError, TetherError
from .model import Control, Event, Owner, RunRecord, Status, _decode, decode_column, event_of, raw_text

__all__ = ["FlushItem", "MAX_DEPTH", "StartOutcome", "Store", "dumps"]

BUSY_TIMEOUT_S = 30.0

# issue 14 (control): columns of migration 0003_control, in RunRecord field names
_CONTROL_FIELDS = (
    "parent_id",
    "tries",
    "max_tries",
    "retry_at",
    "timeout",
    "deadline",
    "concurrency",
    "parked",
)
_RUN_COLS = (
    "id, key, attempt, pipeline, version, params, status, phase, phases, phases_done, done, total, "
    "message, error, result, created_at, started_at, ended_at, updated_at, owner_host, owner_pid, "
    "owner_started, owner_instance, target, lease_until, cancel_requested, resumed_from, last_seq, "
    "created_by, owner_ns, " + ", ".join(_CONTROL_FIELDS) + ", code"
)
_ACTIVE = ("pending", "running")


json_str = json.JSONEncoder().encode  # a str as a JSON string literal


def _text(value: str | None) -> str | None:
    """A str SQLite can store as UTF-8 (lone surrogates replaced)."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _files(*texts: Any) -> dict[str, Any]:
    """The files (digest -> bytes) that encoded values carry (codec.Encoded), to write first."""
    out: dict[str, Any] = {}
    for text in texts:
        files = getattr(text, "files", None)
        if files:
            out.update(files)
    return out


def _num(x: Any) -> Any:
    """An int SQLite INTEGER cannot hold (beyond 64 bits) is stored as REAL."""
    if isinstance(x, int) and not -(2**63) <= x < 2**63:
        return float(x)
    return x


_json = decode_column  # a JSON column; a damaged one is a StoreError


def _errname(exc: sqlite3.Error) -> str:
    """SQLite's primary result code name of ``exc`` (Python < 3.11 only has the message)."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return "_".join(str(name).split("_")[:2])  # SQLITE_CANTOPEN_ISDIR -> SQLITE_CANTOPEN
    text = str(exc)
    for fragment, code in (
        ("not a database", "SQLITE_NOTADB"),
        ("malformed", "SQLITE_CORRUPT"),
        ("unable to open", "SQLITE_CANTOPEN"),
    ):
        if fragment in text:
            return code
    return "SQLITE_ERROR"


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _close_quietly(conns: Sequence[sqlite3.Connection]) -> None:
    for conn in conns:
        try:
            conn.close()
        except sqlite3.Error:
            pass


# A row by column name: a column added to _RUN_COLS is one more attribute.
_Row = namedtuple("_Row", [name.strip() for name in _RUN_COLS.split(",")])  # type: ignore[misc]
_STATUS = {s.value: s for s in Status}
_NONE = type(None)
_TEXT, _OPT_TEXT = frozenset({str}), frozenset({str, _NONE})
_INT, _NUM, _OPT_NUM = frozenset({int}), frozenset({int, float}), frozenset({int, float, _NONE})
_ANY = frozenset({str, int, float, bytes, _NONE})  # checked on its own (status, JSON, owner)
# The types each column may hold: SQLite does not enforce declared types. A column missing here
# (added to _RUN_COLS later) is passed on as it is read.
_KINDS = {
    "id": _TEXT,
    "key": _TEXT,
    "attempt": _INT,
    "pipeline": _TEXT,
    "version": _OPT_TEXT,
    "phase": _OPT_TEXT,
    "done": _NUM,
    "total": _OPT_NUM,
    "message": _OPT_TEXT,
    "result": _OPT_TEXT,
    "created_at": _NUM,
    "started_at": _OPT_NUM,
    "ended_at": _OPT_NUM,
    "updated_at": _NUM,
    "target": _OPT_TEXT,
    "lease_until": _OPT_NUM,
    "cancel_requested": _INT,
    "resumed_from": _OPT_TEXT,
    "last_seq": _INT,
    "created_by": _TEXT,
    "code": _OPT_TEXT,
    "parent_id": _OPT_TEXT,
    "tries": _INT,
    "max_tries": _INT,
    "retry_at": _OPT_NUM,
    "timeout": _OPT_NUM,
    "deadline": _OPT_NUM,
    "concurrency": frozenset({int, _NONE}),
    "parked": _INT,
}
_TYPES = tuple(_KINDS.get(name, _ANY) for name in _Row._fields)
_PARAMS_AT, _VERSION_AT, _CODE_AT = (_Row._fields.index(n) for n in ("params", "version", "code"))
_MAX_PID = 2**31 - 1  # pid_t


def _retype(row: _Row, bad: list[str]) -> _Row:
    """Replace every value of a type its column never holds by a safe one; name the columns."""
    fixes = {}
    for name, kinds in _KINDS.items():
        value = getattr(row, name)
        if type(value) not in kinds:
            bad.append(f"{name}={raw_text(value)}")
            fixes[name] = (
                raw_text(value) if kinds is _TEXT or kinds is _OPT_TEXT else None if _NONE in kinds else 0
            )
    return row._replace(**fixes)


def _names(row: _Row, name: str, bad: list[str]) -> list[str]:
    """A JSON list of phase names; a damaged one is [] (and named in ``bad``)."""
    text = getattr(row, name)
    try:
        value = _decode(text)
        if type(value) is list:
            "".join(value)  # TypeError unless every item is a str (the quickest check there is)
            return value  # type: ignore[no-any-return]
    except (ValueError, TypeError, RecursionError):  # not JSON, not text, not names
        pass
    bad.append(f"{name}={raw_text(text)}")
    return []


def _owner(row: _Row, bad: list[str]) -> Owner | None:
    """The owner of a row, or None: none recorded, or a damaged one (its columns named in
    ``bad``), which proves nothing: recovery never acts on a run without a provable owner."""
    instance, host, pid, started = row.owner_instance, row.owner_host, row.owner_pid, row.owner_started
    if instance is None:
        return None
    if (
        type(pid) is int
        and 0 < pid <= _MAX_PID
        and type(host) is str
        and host
        and type(started) in _NUM
        and type(instance) is str
        and instance
    ):
        ns = row.owner_ns
        return Owner(host, pid, float(started), instance, ns if type(ns) is str else None)
    for name, ok in (
        ("owner_pid", type(pid) is int and 0 < pid <= _MAX_PID),
        ("owner_host", type(host) is str and host != ""),
        ("owner_started", type(started) in _NUM),
        ("owner_instance", type(instance) is str and instance != ""),
    ):
        if not ok:
            bad.append(f"{name}={raw_text(getattr(row, name))}")
    return None


def _out_of_range(row: _Row, bad: list[str]) -> None:
    """Name an attempt below 1 or a negative last_seq (unless already named for its type)."""
    for name, low in (("attempt", 1), ("last_seq", 0)):
        value = getattr(row, name)
        if value < low and not any(entry.startswith(name + "=") for entry in bad):
            bad.append(f"{name}={value}")


def _record(values: Sequence[Any]) -> RunRecord:
    """A RunRecord from a row of ``_RUN_COLS``, every column checked: a damaged one is replaced
    by a safe value and named in ``RunRecord.damaged`` (a row is never trusted: hand edits, other
    tools). The checks cost ~2 us (a quarter of the whole): this is on the attach path."""
    row = _Row._make(values)
    bad: list[str] = []
    if not all(map(contains, _TYPES, map(type, values))):
        row = _retype(row, bad)
    status = _STATUS.get(row.status)
    if status is None:  # unknown: ended, as far as anything that acts on runs is concerned
        bad.append(f"status={raw_text(row.status)}")
        status = Status.FAILED
    params, error = row.params, row.error
    if type(params) is not str or params[:1] != "{":  # canonical JSON objects
        bad.append(f"params={raw_text(params)}")
    if error is not None and (type(error) is not str or error[:1] != "{"):
        bad.append(f"error={raw_text(error)}")
    if row.attempt < 1 or row.last_seq < 0:
        _out_of_range(row, bad)
    phases, phases_done = row.phases, row.phases_done
    return RunRecord(
        id=row.id,
        key=row.key,
        attempt=row.attempt,
        pipeline=row.pipeline,
        version=row.version,
        params_json=params,
        status=status,
        phase=row.phase,
        phases=[] if phases == "[]" else _names(row, "phases", bad),
        done=row.done,
        total=row.total,
        message=row.message,
        error_json=error,
        result_json=row.result,
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        updated_at=row.updated_at,
        owner=_owner(row, bad),
        target=row.target,
        lease_until=row.lease_until,
        cancel_requested=bool(row.cancel_requested),
        resumed_from=row.resumed_from,
        last_seq=row.last_seq,
        phases_done=[] if phases_done == "[]" else _names(row, "phases_done", bad),
        created_by=row.created_by,
        code=row.code,
        damaged=tuple(bad) if bad else (),
        parent_id=row.parent_id,
        tries=row.tries,
        max_tries=row.max_tries,
        retry_at=row.retry_at,
        timeout=row.timeout,
        deadline=row.deadline,
        concurrency=row.concurrency,
        parked=row.parked,
    )


@dataclass
class StartOutcome:
    record: RunRecord
    created: bool
    conflict: str | None = None  # why the call cannot be honoured (raised by the caller)
    recovered: str | None = None  # the latest run was found orphaned and interrupted
    other_code: str | None = None  # the active run returned was made by other code: how


@dataclass
class FlushItem:
    """What the runner persists for one run it owns: progress and buffered events."""

    run_id: str
    phase: str | None
    phases: list[str]
    phases_done: list[str]
    done: int | float
    total: int | float | None
    message: str | None
    events: list[tuple[float, str, str | None, str]]  # (ts, kind, phase, data JSON)


_SLICE_MS = 50  # the main thread's wait for another process's write lock, between interrupt checks


def _busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class _Busy(Exception):
    """Opening hit a lock another process holds; try again."""


GoneCheck = Callable[[Owner | None, float | None, float], str | None]
F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    """Read methods: SQLite errors become StoreError."""

    @functools.wraps(fn)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self.guard():
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Store:
    """A tether database file. Cheap to create; opens (and migrates) on first use."""

    def __init__(self, path: str | os.PathLike[str], allow_foreign: Callable[[], bool] | None = None) -> None:
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        # asked when the file is opened: may a file owned by another user be used?
        self._allow_foreign = allow_foreign or (lambda: False)
        self.write_lock = threading.RLock()
        self._local = threading.local()
        self._conns: dict[sqlite3.Connection, threading.Thread] = {}  # connection -> its thread
        self._idle: list[sqlite3.Connection] = []  # given back by ended run threads, for reuse
        self._open_lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file we opened
        self.runner: Any = None  # set by tether.runner
        self.files = Artifacts(self.path, self._pipeline_of)  # large values, beside the database
        _stores.add(self)

    def __repr__(self) -> str:
        return f"<tether.Store {str(self.path)!r}>"

    # -- opening -----------------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException | None = None, fix: str = "") -> StoreError:
        detail = f": {exc}" if exc else ""
        tail = f" {fix}" if fix else ""
        return StoreError(f"tether database {str(self.path)!r} {what}{detail}.{tail}")

    def _new_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise self._fail("is closed", fix="Call tether.configure() again to reopen it.")
        if self._stat() is None:
            raise self._fail(
                "no longer exists (was it deleted?)",
                fix="tether never recreates a database behind your back; "
                "restart the process to start a new one.",
            )
        with self._open_lock:
            # connections of threads that ended without giving theirs back (a user's threads)
            dead = [c for c, t in self._conns.items() if not t.is_alive()]
            for c in dead:
                del self._conns[c]
            reused = self._idle.pop() if self._idle else None  # given back by an ended thread
            if reused is not None:
                self._conns[reused] = threading.current_thread()
        _close_quietly(dead)
        if reused is not None:
            return reused
        conn = None
        try:
            conn = sqlite3.connect(
                self._uri("mode=rw"),
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._fail("cannot be opened", exc) from exc
        with self._open_lock:
            self._conns[conn] = threading.current_thread()
        return conn

    def _stat(self, suffix: str = "") -> os.stat_result | None:
        """os.stat of the file (or of its ``suffix`` companion), None if there is none. A folder
        on the way the user may not enter is a StoreError that says so."""
        try:
            return os.stat(f"{self.path}{suffix}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise self._fail(
                "cannot be reached (permission denied)",
                exc,
                fix="Every folder on its path must be open to you (chmod u+x, or ask its owner); "
                "or choose another path with tether.configure(db=...) or TETHER_DB.",
            ) from None
        except OSError as exc:
            raise self._fail(
                "cannot be reached",
                exc,
                fix="Choose another path with tether.configure(db=...) or TETHER_DB.",
            ) from None

    def _check_owner(self) -> None:
        """Refuse a database, -wal, -shm or -journal owned by another user (root included): its
        owner can read and change the runs (and what a pipeline returns), and a -wal is applied to
        the file beside it. Checked by the effective uid, the one that opens files."""
        if not hasattr(os, "geteuid") or self._allow_foreign():
            return
        me = os.geteuid()
        for suffix in ("", "-wal", "-shm", "-journal"):
            st = self._stat(suffix)
            if st is None or st.st_uid == me:
                continue
            where = "" if not suffix else f" (its {suffix} file {f'{self.path}{suffix}'!r})"
            raise self._fail(
                f"is owned by another user{where} ({_user(st.st_uid)}), not by you ({_user(me)}); "
                "it was left untouched",
                fix="Whoever owns it can read and change your runs. Use your own file with "
                "tether.configure(db=...) or TETHER_DB, or if you trust its owner allow it with "
                "tether.configure(allow_foreign_db=True) or TETHER_ALLOW_FOREIGN_DB=1.",
            )

    def _uri(self, mode: str) -> str:
        return "file:" + urllib.parse.quote(str(self.path)) + "?" + mode

    def _create_file(self) -> None:
        parent = self.path.parent
        try:
            missing = []
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):  # mkdir(parents=True) gives the umask's mode
                folder.mkdir(mode=0o700, exist_ok=True)
            # The only descriptor of a database tether opens and closes outside SQLite (SQLite
            # would create the file with the umask's mode). Closing it cannot drop a lock of
            # this process's SQLite connections (POSIX locks belong to the process and the
            # inode): O_EXCL proves the inode is new, so no connection of this process had it
            # open before (an open descriptor keeps an unlinked file's inode from being reused),
            # and within the microseconds until os.close() another thread could only have begun
            # reading an empty file (a statement's SHARED lock in rollback mode, with nothing to
            # protect): tether opens its first connection after this returns.
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self._fail(
                "cannot be created",
                exc,
                fix="Choose a writable location with tether.configure(db=...) or TETHER_DB.",
            ) from exc

    def _sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(size, mtime) of the file and of its WAL ((0, 0): none). os.stat opens no descriptor."""
        main, wal = self._stat(), self._stat("-wal")
        return (
            (main.st_size, main.st_mtime_ns) if main else (0, 0),
            (wal.st_size, wal.st_mtime_ns) if wal else (0, 0),
        )

    def _check_header(self) -> None:
        """Refuse a file that is not a whole SQLite database, reading it through SQLite only.

        Never open() the file (or its -wal/-shm) here: closing any descriptor of it drops every
        POSIX lock this process holds on it, those of the user's own sqlite3 connections and of
        another store's included (SQLite's "How To Corrupt An SQLite Database File", 2.2); another
        process would then believe itself the last user and delete the WAL under them. SQLite's
        own close keeps a descriptor open while the process holds locks on the file. The probe is
        ``immutable``: it takes no lock, creates no -wal/-shm and reads only the main file, which
        is what these checks are about."""
        before = self._sizes()
        probe = None
        try:
            # mode=rw: no O_CREAT (a file deleted meanwhile is not recreated), and the descriptor
            # SQLite keeps after close is reused by the next connection (a read-only file still
            # opens: SQLite falls back to read-only)
            probe = sqlite3.connect(
                self._uri("mode=rw&immutable=1"), uri=True, isolation_level=None, check_same_thread=False
            )
            try:
                probe.execute("PRAGMA page_count").fetchone()
                counted_pages_missing = False
            except sqlite3.DatabaseError as exc:
                # SQLITE_CORRUPT from reading page 1: its header counts more pages than the file
                # holds (SQLite read the page size already)
                if _errname(exc) != "SQLITE_CORRUPT":
                    raise
                counted_pages_missing = True
            page = probe.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if _errname(exc) == "SQLITE_NOTADB":
                raise self._fail(
                    "is not a SQLite database (wrong file header); it was left untouched",
                    fix="Point tether at another file with tether.configure(db=...).",
                ) from exc
            if _errname(exc) == "SQLITE_CANTOPEN":
                raise self._fail(
                    "cannot be read (permission denied?)",
                    exc,
                    fix="It must be readable and writable by you (chmod u+rw); or "
                    "choose another path with tether.configure(db=...).",
                ) from exc
            raise self._fail("is corrupt or unreadable; it was left untouched", exc) from exc
        finally:
            if probe is not None:
                probe.close()
        (size, _), (wal_size, _) = before
        # SQLite writes whole pages: a size that is not a multiple of the page size is a cut file.
        # A file shorter than its header's page count is cut too, unless a WAL may still hold the
        # missing pages (a checkpoint interrupted by a crash writes page 1 first).
        if size % page or (counted_pages_missing and wal_size == 0):
            if self._sizes() != before:  # another process wrote meanwhile: look again
                raise _Busy
            raise self._fail(
                f"is truncated ({size} bytes, pages of {page}); it was left untouched",
                fix="Restore a backup or use tether.configure(db=...).",
            )

    def _open(self) -> None:
        # Switching to WAL and migrating need locks that SQLite may refuse at once (SQLITE_BUSY
        # without the busy handler) while other processes open the same new file: retry.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return self._open_once()
            except _Busy as busy:
                if time.monotonic() > deadline:
                    raise self._fail(
                        f"stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s", busy.__cause__
                    ) from busy.__cause__
                time.sleep(0.02)
                _interrupts.safe_point()  # nothing is held here: a held-back interrupt lands

    def _open_once(self) -> None:
        st = self._stat()
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise self._fail("is a directory", fix="Pass the path of a file, e.g. .tether/runs.db.")
            self._check_owner()
            self._check_header()
        else:
            self._create_file()
            self._check_owner()  # O_EXCL may have lost a race: the file may be someone else's
        conn = self._new_conn()
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            applied: list[str] = []
            if tables:
                if _schema.MIGRATIONS_TABLE not in tables or "runs" not in tables:
                    raise self._fail(
                        "is a SQLite database but not a tether one; it was left untouched",
                        fix="Point tether at another file with tether.configure(db=...).",
                    )
                applied = _schema.applied(conn)
                if not applied:
                    raise self._fail(
                        "is a SQLite database but not a tether one; it was left untouched",
                        fix="Point tether at another file with tether.configure(db=...).",
                    )
            unknown = [name for name in applied if name not in _schema.KNOWN]
            if unknown:
                raise self._fail(
                    f"was written by a newer tether (schema {unknown[-1]!r}); it was left untouched",
                    fix="Upgrade tether (pip install -U tether) to use it.",
                )
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            if len(applied) < len(_schema.KNOWN):
                with self.write_lock:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        _schema.apply(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
        except StoreError:
            self._drop(conn)
            raise
        except sqlite3.OperationalError as exc:
            self._drop(conn)
            if "locked" in str(exc) or "busy" in str(exc):
                raise _Busy from exc
            raise self._write_error(exc) from exc
        except sqlite3.DatabaseError as exc:
            self._drop(conn)
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise self._fail(
                    "is not writable", exc, fix="Fix its permissions or choose another path."
                ) from exc
            raise self._fail("is corrupt or unreadable; it was left untouched", exc) from exc
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._local.conn = conn

    def _drop(self, conn: sqlite3.Connection) -> None:
        with self._open_lock:
            self._conns.pop(conn, None)
        conn.close()

    def release_conn(self) -> None:
        """Give back this thread's connection (a run thread about to end). The next thread that
        needs one reuses it; without this every run left an open connection (2 file descriptors)
        behind until the store was closed."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._open_lock:
            mine = self._conns.pop(conn, None) is not None
            keep = mine and not self._closed and not conn.in_transaction and len(self._idle) < 8
            if keep:
                self._idle.append(conn)
        if mine and not keep:
            _close_quietly([conn])

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opening and migrating the database on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        if not self._ready:
            with self.write_lock:
                if not self._ready:
                    self._open()
                    self._ready = True
                    return self._local.conn
        conn = self._new_conn()
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close the connections of this thread and of threads that have ended.

        A connection of a thread still alive (a run body that ignored its cancel, at interpreter
        exit) is left to that thread: closing it under a statement in flight can crash CPython's
        sqlite3 module. It closes when the thread ends; the store refuses new work meanwhile."""
        with self.write_lock:  # a write in flight (a run's final write) completes first
            self._closed = True
            with self._open_lock:
                conns, self._conns = self._conns, {}
                idle, self._idle = self._idle, []
            me = threading.current_thread()
            _close_quietly(idle + [c for c, t in conns.items() if t is me or not t.is_alive()])

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn SQLite's errors into StoreError with a message that says what to do."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT / SQLITE_NOTADB
                raise self._fail(
                    "is corrupt; it was left untouched",
                    exc,
                    fix="Restore a backup or use tether.configure(db=...).",
                ) from exc
            raise

    def _check_same_file(self) -> None:
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except PermissionError:
            self._stat()  # raises: a folder on the way was closed to this user
            same = False
        except OSError:
            same = False
        if not same:
            self._empty_wal()
            raise self._fail(
                "was deleted or replaced while in use; nothing more is written to it",
                fix="tether never recreates a database behind your back; restart "
                "the process (or call tether.configure(db=...)) to start afresh.",
            )

    def _empty_wal(self) -> None:
        """SQLite keeps the WAL of a database moved or unlinked while open (no checkpoint on
        close), and the next connection to the path would apply it to whatever file is there now:
        checkpoint it into the old file (gone or renamed) and truncate it."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.in_transaction:
            return
        with self.write_lock:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), serialised within the process.

        A kernel interrupt is held back from the moment the write lock is ours until COMMIT or
        ROLLBACK has run (tether._interrupts); while waiting for the lock it lands at once.
        Otherwise an interrupt right after BEGIN would leave the transaction open, and every
        other process locked out, for as long as this process lives."""
        conn = self.conn()
        self._check_same_file()
        with _interrupts.critical():
            self._lock_for_write()
            try:
                if conn.in_transaction:  # never build on a transaction some failure left open
                    conn.execute("ROLLBACK")
                self._begin(conn)
                try:
                    with self.guard():
                        yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise self._write_error(exc) from exc
            finally:
                self.write_lock.release()

    def _lock_for_write(self) -> None:
        """Take the process's write lock; the main thread waits in slices, so that a kernel
        interrupt recorded meanwhile is delivered while nothing is held."""
        if not _interrupts.in_main_thread():
            self.write_lock.acquire()
            return
        while not self.write_lock.acquire(timeout=0.05):
            _interrupts.safe_point()

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to BUSY_TIMEOUT_S for another process's write lock.

        SQLite's busy handler sleeps in C, where no Python signal handler runs: the main thread
        waits in short slices instead and delivers a recorded interrupt between them."""
        try:
            if not _interrupts.in_main_thread():
                conn.execute("BEGIN IMMEDIATE")
                return
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            conn.execute(f"PRAGMA busy_timeout = {_SLICE_MS}")
            try:
                while True:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        return
                    except sqlite3.OperationalError as exc:
                        if not _busy(exc) or time.monotonic() > deadline:
                            raise
                    _interrupts.safe_point()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            err = self._fail(f"stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s", exc)
        elif "full" in text:
            err = self._fail("cannot grow: the disk is full", exc)
        elif "readonly" in text:
            return self._fail("is not writable", exc, fix="Fix its permissions or choose another path.")
        elif "disk I/O" in text:  # also what a file size limit (EFBIG) looks like
            err = self._fail("could not be written (an I/O error)", exc)
        else:
            return self._fail("could not be written", exc)
        err.transient = True
        return err

    # -- reads -------------------------------------------------------------------------------

    def _pipeline_of(self, run_id: str) -> str | None:
        row = self.conn().execute("SELECT pipeline FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def _rec(self, row: Sequence[Any]) -> RunRecord:
        """A RunRecord that reads its result's files (if any) from this store."""
        rec = _record(row)
        rec.files = self.files
        return rec

    @_guarded
    def get(self, run_id: str) -> RunRecord:
        row = self.conn().execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(
                f"no run with id {run_id!r} in {str(self.path)!r}; "
                "list runs with tether.runs() or `tether ls`."
            )
        return self._rec(row)

    def latest(self, key: str, conn: sqlite3.Connection | None = None) -> RunRecord | None:
        row = self._latest_row(key, conn)
        return self._rec(row) if row else None

    @_guarded
    def _latest_row(self, key: str, conn: sqlite3.Connection | None = None) -> Sequence[Any] | None:
        return (
            (conn or self.conn())
            .execute(  # type: ignore[no-any-return]
                f"SELECT {_RUN_COLS} FROM runs WHERE key = ? ORDER BY attempt DESC LIMIT 1", (key,)
            )
            .fetchone()
        )

    @_guarded
    def newest(self, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
        """``{key: (id, attempt, status)}`` of the latest attempt of each key (one light read:
        no params, results or errors), for panels that show an older attempt."""
        out: dict[str, tuple[str, int, str]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            # SQLite: the bare columns of an aggregate query come from the row holding the MAX;
            # a damaged row (an attempt that is no integer) is never the newest
            for key, attempt, run_id, status in self.conn().execute(
                "SELECT key, MAX(attempt), id, status FROM runs WHERE key IN "
                f"({','.join('?' * len(chunk))}) AND typeof(attempt) = 'integer' "
                "GROUP BY key",
                chunk,
            ):
                out[key] = (str(run_id), attempt, str(status))
        return out

    @_guarded
    def attempts(self, key: str) -> list[RunRecord]:
        rows = (
            self.conn()
            .execute(f"SELECT {_RUN_COLS} FROM runs WHERE key = ? ORDER BY attempt", (key,))
            .fetchall()
        )
        return [self._rec(r) for r in rows]

    @_guarded
    def list_runs(
        self,
        pipeline: str | None = None,
        status: str | Sequence[str] | None = None,
        key: str | None = None,
        limit: int | None = 100,
        params: dict[str, Any] | None = None,
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(str(Status(s)) for s in statuses)
        if key is not None:
            where.append("key = ?")
            args.append(key)
        for name, value in (params or {}).items():
            test, more = _param_test(value)
            # CASE: json_each is never reached for a damaged (non-JSON) params column
            where.append(
                "CASE WHEN json_valid(params) THEN EXISTS (SELECT 1 FROM "
                f"json_each(runs.params) AS j WHERE j.key = ? AND {test}) ELSE 0 END"
            )
            args.extend([name, *more])
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, attempt DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._rec(r) for r in self.conn().execute(sql, args).fetchall()]

    @_guarded
    def events(
        self, run_id: str, after: int = 0, limit: int | None = None, kinds: Sequence[str] | None = None
    ) -> list[Event]:
        sql = "SELECT run_id, seq, ts, kind, phase, data FROM events WHERE run_id = ? AND seq > ?"
        args: list[Any] = [run_id, after]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [event_of(r) for r in self.conn().execute(sql, args)]

    @_guarded
    def tail(self, run_id: str, kind: str, n: int) -> list[Event]:
        """The last ``n`` events of one kind, oldest first."""
        rows = (
            self.conn()
            .execute(
                "SELECT run_id, seq, ts, kind, phase, data FROM events WHERE run_id = ? AND kind = ? "
                "ORDER BY seq DESC LIMIT ?",
                (run_id, kind, n),
            )
            .fetchall()
        )
        return [event_of(r) for r in reversed(rows)]

    @_guarded
    def active(self) -> list[RunRecord]:
        rows = (
            self.conn()
            .execute(f"SELECT {_RUN_COLS} FROM runs WHERE status IN ('pending', 'running')")
            .fetchall()
        )
        return [self._rec(r) for r in rows]

    @_guarded
    def cancel_requests(self, owner: Owner) -> set[str]:
        return {
            r[0]
            for r in self.conn().execute(
                "SELECT id FROM runs WHERE status = 'running' AND owner_instance = ? "
                "AND cancel_requested = 1",
                (owner.instance,),
            )
        }

    @_guarded
    def checkpoint(self, run_id: str, name: str) -> tuple[bool, Any]:
        row = (
            self.conn()
            .execute("SELECT value FROM checkpoints WHERE run_id = ? AND name = ?", (run_id, name))
            .fetchone()
        )
        if row is None:
            return False, None
        return True, codec.decode(row[0], run_id, f"checkpoint {name}", self.files)

    @_guarded
    def checkpoints(self, run_id: str, prefix: str = "") -> dict[str, Any]:
        rows = self.conn().execute(
            "SELECT name, value FROM checkpoints WHERE run_id = ? AND substr(name, 1, ?) = ?",
            (run_id, len(prefix), prefix),
        )
        return {name: codec.decode(value, run_id, f"checkpoint {name}", self.files) for name, value in rows}

    # -- writes ------------------------------------------------------------------------------

    @staticmethod
    def _append(
        conn: sqlite3.Connection,
        run_id: str,
        last_seq: int,
        events: Sequence[tuple[float, str, str | None, str]],
    ) -> int:
        conn.executemany(
            "INSERT INTO events (run_id, seq, ts, kind, phase, data) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, last_seq + i, ts, kind, _text(phase), data)
                for i, (ts, kind, phase, data) in enumerate(events, 1)
            ],
        )
        return last_seq + len(events)

    def _event(
        self, conn: sqlite3.Connection, rec: RunRecord, kind: str, data: dict[str, Any], now: float
    ) -> int:
        seq = self._append(conn, rec.id, rec.last_seq, [(now, kind, rec.phase, dumps(data))])
        conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq, rec.id))
        return seq

    def _interrupt(self, conn: sqlite3.Connection, rec: RunRecord, reason: str, now: float) -> bool:
        error = {"type": "Interrupted", "message": f"run interrupted: {reason}", "traceback": ""}
        cur = conn.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = ?, updated_at = ?, error = ? "
            "WHERE id = ? AND status = ? AND owner_instance IS ?",
            (now, now, dumps(error), rec.id, str(rec.status), rec.owner.instance if rec.owner else None),
        )
        if cur.rowcount != 1:
            return False
        self._event(conn, rec, "interrupted", {"reason": reason}, now)
        return True

    def start(
        self,
        *,
        pipeline: str,
        key: str,
        params_json: str,
        version: str | None,
        phases: list[str],
        policy: str,
        owner: Owner,
        lease_s: float,
        gone: GoneCheck,
        detach: bool = False,
        max_auto_resumes: int = 3,
        control: Control | None = None,
        code: str | None = None,
    ) -> StartOutcome:
        """Decide, in one transaction, what a start() call means for ``key``.

        ``control``: the pipeline's control options, and the parent run when a body starts it.
        ``version`` and ``code`` (the body's fingerprint) say which code asks: an ended run made
        by other code is never returned (a new attempt is made instead); an active one is, with
        ``other_code`` saying so (see ``_other_code``)."""
        now = time.time()
        # fast path, no write: an ended run returned as it is (terminal statuses never change);
        # the params and code compared as stored text first
        row = self._latest_row(key)
        latest = None if row is None else self._rec(row)
        if (
            latest is not None
            and latest.status.terminal
            and _same_code(row[_VERSION_AT], row[_CODE_AT], version, code)
            and _difference(latest, params_json, pipeline, row[_PARAMS_AT]) is None
            and (
                (policy == "fail" or (policy == "attach" and not _child_resume(latest, control)))
                or (policy == "resume" and (latest.status == Status.SUCCEEDED or _capped(latest)))
            )
        ):
            return StartOutcome(latest, False)
        with self.tx() as conn:
            latest = self.latest(key, conn)
            recovered = None
            if latest is not None and latest.status.active:
                reason = gone(latest.owner, latest.lease_until, now)
                if reason and self._interrupt(conn, latest, reason, now):
                    recovered = reason
                    latest = self.latest(key, conn)
            if latest is None:
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start",
                    None,
                    detach,
                    control,
                    code=code,
                )
                return StartOutcome(rec, True)
            assert latest is not None
            mismatch = _difference(latest, params_json, pipeline)
            changed = _other_code(latest, version, code)
            if latest.status.active:
                if mismatch:
                    return StartOutcome(
                        latest, False, f"the {latest.status} run for key {key!r} has {mismatch}", recovered
                    )
                if policy == "fail":
                    return StartOutcome(
                        latest,
                        False,
                        f"a run for key {key!r} is already {latest.status} (id {latest.id})",
                        recovered,
                    )
                return StartOutcome(latest, False, None, recovered, other_code=changed)
            # the latest attempt has ended
            resumable = latest.status != Status.SUCCEEDED and not _capped(latest)
            if mismatch and mismatch.startswith("pipeline"):
                return StartOutcome(latest, False, f"the run for key {key!r} has {mismatch}", recovered)
            if policy == "resume" and changed and not mismatch:
                resumable = True  # the code changed: resume it, cap or success notwithstanding
            if policy == "rerun" or (policy == "resume" and resumable):
                if mismatch and policy == "resume":
                    return StartOutcome(
                        latest,
                        False,
                        f"the run for key {key!r} has {mismatch}; resume continues the same work",
                        recovered,
                    )
                resumed = latest.id if policy == "resume" else None
                by = f"start:{policy}" + (":code" if changed and policy == "resume" else "")
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    by,
                    resumed,
                    detach,
                    control,
                    code=code,
                    changed=changed,
                )
                if policy == "resume" and not changed and self._auto_resumes(conn, key) > max_auto_resumes:
                    rec = self._give_up(conn, rec, max_auto_resumes, now)
                return StartOutcome(rec, True, None, recovered)
            if policy == "attach" and not mismatch and _child_resume(latest, control):
                # the parent's new try (or resumed attempt) goes on where its child stopped
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start:child",
                    latest.id,
                    detach,
                    control,
                )
                return StartOutcome(rec, True, None, recovered)
            if mismatch:
                return StartOutcome(
                    latest, False, f"the {latest.status} run for key {key!r} has {mismatch}", recovered
                )
            if changed:  # never an ended run of other code as if it were this code's
                rec = self._create(
                    conn,
                    pipeline,
                    key,
                    latest.attempt + 1,
                    params_json,
                    version,
                    phases,
                    owner,
                    lease_s,
                    now,
                    "start:code",
                    None,
                    detach,
                    control,
                    code=code,
                    changed=changed,
                )
                return StartOutcome(rec, True, None, recovered)
            return StartOutcome(latest, False, None, recovered)

    def new_attempt(
        self,
        run_id: str,
        *,
        owner: Owner,
        lease_s: float,
        resume: bool,
        gone: GoneCheck,
        control: Control | None = None,
        code: tuple[str | None, str | None] | None = None,
    ) -> RunRecord:
        """A new attempt of ``run_id``'s key (rerun, or resume reusing its checkpoints).

        ``control``: the pipeline's options as defined now (default: those of ``run_id``); the new
        attempt keeps ``run_id``'s parent. ``code``: ``(version, fingerprint)`` of the pipeline
        that will execute it, when known here; else the attempt records those of ``run_id``."""
        from .errors import RunActive

        now = time.time()
        with self.tx() as conn:
            base = self.get(run_id)
            latest = self.latest(base.key, conn)
            assert latest is not None
            if latest.status.active:
                reason = gone(latest.owner, latest.lease_until, now)
                if not (reason and self._interrupt(conn, latest, reason, now)):
                    raise RunActive(
                        f"run {latest.id} (attempt {latest.attempt} of key {base.key!r}) is still "
                        f"{latest.status}; cancel it or wait for it to end before a new attempt."
                    )
            ctl = control or Control(
                max_tries=base.max_tries, timeout=base.timeout, concurrency=base.concurrency
            )
            ctl = Control(base.parent_id, (), ctl.max_tries, ctl.timeout, ctl.concurrency)
            version, fingerprint = code if code is not None else (base.version, base.code)
            return self._create(
                conn,
                base.pipeline,
                base.key,
                latest.attempt + 1,
                dumps(base.params),
                version,
                base.phases,
                owner,
                lease_s,
                now,
                "resume" if resume else "rerun",
                base.id if resume else None,
                detach=base.target == "worker",
                control=ctl,
                code=fingerprint,
                changed=_other_code(base, version, fingerprint),
            )

    @staticmethod
    def _auto_resumes(conn: sqlite3.Connection, key: str) -> int:
        """Automatic resumes in a row for ``key``: the new one plus those that were interrupted."""
        rows = conn.execute(
            "SELECT created_by, status FROM runs WHERE key = ? ORDER BY attempt DESC", (key,)
        ).fetchall()
        count = 1
        for created_by, status in rows[1:]:
            if created_by != "start:resume" or status != "interrupted":
                break
            count += 1
        return count

    def _give_up(self, conn: sqlite3.Connection, rec: RunRecord, cap: int, now: float) -> RunRecord:
        error = {
            "type": "ResumeCapReached",
            "traceback": "",
            "message": (
                f"automatic resume stopped: {cap} resumed attempts in a row were interrupted "
                f"(max_auto_resumes={cap}), so the run may be crashing its process; fix the cause, "
                "then call run.resume() or start(..., policy='rerun')"
            ),
        }
        conn.execute(
            "UPDATE runs SET status = 'failed', ended_at = ?, updated_at = ?, error = ?, "
            "target = NULL WHERE id = ?",
            (now, now, dumps(error), rec.id),
        )
        self._event(conn, rec, "failed", {"type": error["type"], "message": error["message"]}, now)
        return self.get(rec.id)

    def _create(
        self,
        conn: sqlite3.Connection,
        pipeline: str,
        key: str,
        attempt: int,
        params_json: str,
        version: str | None,
        phases: list[str],
        owner: Owner,
        lease_s: float,
        now: float,
        created_by: str,
        resumed_from: str | None,
        detach: bool = False,
        control: Control | None = None,
        code: str | None = None,
        changed: str | None = None,
    ) -> RunRecord:
        run_id = os.urandom(6).hex()  # what secrets.token_hex does, without its imports
        phases_done: list[str] = []
        control = control or _NO_CONTROL
        tries = 0
        if resumed_from is not None:
            prev = self.get(resumed_from)
            phases_done = prev.phases_done
            tries = prev.tries  # a resumed attempt goes on counting its lineage's tries
            conn.execute(
                "INSERT INTO checkpoints (run_id, name, value, ts) "
                "SELECT ?, name, value, ts FROM checkpoints WHERE run_id = ?",
                (run_id, resumed_from),
            )
        conn.execute(
            "INSERT INTO runs (id, key, attempt, pipeline, version, params, status, phases, "
            "phases_done, created_at, updated_at, owner_host, owner_pid, owner_started, "
            "owner_instance, target, lease_until, resumed_from, last_seq, created_by, owner_ns, "
            "parent_id, tries, max_tries, timeout, concurrency, code) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, "
            "?, ?, ?, ?, ?, ?)",
            (
                run_id,
                key,
                attempt,
                pipeline,
                version,
                params_json,
                dumps(phases),
                dumps(phases_done),
                now,
                now,
                None if detach else owner.host,
                None if detach else owner.pid,
                None if detach else owner.started,
                None if detach else owner.instance,
                "worker" if detach else owner.instance,
                None if detach else now + lease_s,
                resumed_from,
                created_by,
                None if detach else owner.ns,
                control.parent,
                tries,
                control.max_tries,
                control.timeout,
                control.concurrency,
                code,
            ),
        )
        data: dict[str, Any] = {"by": created_by}
        if changed:
            data["code_changed"] = changed
        if detach:
            data["detached"] = True
        if resumed_from:
            data["resumed_from"] = resumed_from
        if control.parent:
            data["parent"] = control.parent
        self._append(conn, run_id, 0, [(now, "created", None, dumps(data))])
        row = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._rec(row)

    def claim_next(self, owner: Owner, pipelines: Sequence[str], lease_s: float) -> RunRecord | None:
        """A worker claims the oldest pending detached run of one of ``pipelines``, if any."""
        if not pipelines:
            return None
        marks = ",".join("?" * len(pipelines))
        while True:  # a claim lost to another worker is no reason to stop: try the next run
            rows = (
                self.conn()
                .execute(  # only runs whose pipeline's concurrency has room
                    f"SELECT id FROM runs WHERE {_ROOM} AND status = 'pending' AND target = 'worker' "
                    f"AND pipeline IN ({marks}) ORDER BY created_at, rowid LIMIT 16",
                    [time.time(), *pipelines],
                )
                .fetchall()
            )
            if not rows:
                return None
            lost = False
            for (run_id,) in rows:
                rec = self.claim(run_id, owner, lease_s, target="worker")
                if isinstance(rec, RunRecord):
                    return rec
                lost = lost or rec is None
            if not lost:  # each one waits for its pipeline's limit: nothing to claim now
                return None

    def claim(
        self, run_id: str, owner: Owner, lease_s: float, target: str | None = None
    ) -> RunRecord | Queued | None:
        """pending -> running, only for the run's target (process, or 'worker'). None if not
        claimable; ``Queued`` if its pipeline's ``concurrency`` has no room for it yet, or older
        runs of the pipeline wait before it (start order, across processes)."""
        now = time.time()
        with self.tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'running', started_at = ?, updated_at = ?, "
                "owner_host = ?, owner_pid = ?, owner_started = ?, owner_instance = ?, "
                "owner_ns = ?, lease_until = ?, last_seq = last_seq + 1, tries = tries + 1, "
                "retry_at = NULL, deadline = ? + timeout "
                f"WHERE id = ? AND status = 'pending' AND target = ? AND {_ROOM}",
                (
                    now,
                    now,
                    owner.host,
                    owner.pid,
                    owner.started,
                    owner.instance,
                    owner.ns,
                    now + lease_s,
                    now,
                    run_id,
                    target or owner.instance,
                ),
            )
            if cur.rowcount != 1:
                return self._queued(conn, run_id, target or owner.instance, now)
            rec = self._rec(conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone())
            self._append(
                conn,
                run_id,
                rec.last_seq - 1,
                [(now, "started", None, dumps({"pid": owner.pid, "host": owner.host}))],
            )
            return rec

    def flush(
        self, items: Sequence[FlushItem], owner: Owner, lease_until: float | None
    ) -> tuple[set[str], set[str]]:
        """Persist progress and events of runs ``owner`` executes, in one transaction.

        Returns (runs no longer ours, runs with a cancel request).
        """
        now = time.time()
        lost: set[str] = set()
        with self.tx() as conn:
            for it in items:
                row = conn.execute(
                    "SELECT last_seq FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                    (it.run_id, owner.instance),
                ).fetchone()
                if row is None:
                    lost.add(it.run_id)
                    continue
                seq = self._append(conn, it.run_id, row[0], it.events) if it.events else row[0]
                conn.execute(
                    "UPDATE runs SET phase = ?, phases = ?, phases_done = ?, done = ?, total = ?, "
                    "message = ?, updated_at = ?, last_seq = ? WHERE id = ?",
                    (
                        _text(it.phase),
                        dumps(it.phases),
                        dumps(it.phases_done),
                        _num(it.done),
                        _num(it.total),
                        _text(it.message),
                        now,
                        seq,
                        it.run_id,
                    ),
                )
            if lease_until is not None:
                conn.execute(
                    "UPDATE runs SET lease_until = ? WHERE owner_instance = ? "
                    "AND status IN ('pending', 'running')",
                    (lease_until, owner.instance),
                )
            cancels = {
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE status = 'running' AND owner_instance = ? "
                    "AND cancel_requested = 1",
                    (owner.instance,),
                )
            }
        return lost, cancels

    def finish(
        self,
        item: FlushItem,
        owner: Owner,
        status: Status,
        *,
        result_json: str | None,
        error: dict[str, Any] | None,
    ) -> bool:
        """running -> terminal, with the last progress and events. False if no longer ours."""
        now = time.time()
        data: dict[str, Any] = {}
        if error is not None:
            data = {"type": error.get("type"), "message": error.get("message")}
        files = _files(result_json)
        if files:  # before the row that refers to them, outside the write lock
            self.files.put(files)
        with self.tx() as conn:
            if files:
                self.files.ensure(files)
            row = conn.execute(
                "SELECT last_seq FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return False
            events = [*item.events, (now, str(status), item.phase, dumps(data))]
            seq = self._append(conn, item.run_id, row[0], events)
            conn.execute(
                "UPDATE runs SET status = ?, phase = ?, phases = ?, phases_done = ?, done = ?, "
                "total = ?, message = ?, result = ?, error = ?, ended_at = ?, updated_at = ?, "
                "last_seq = ? WHERE id = ?",
                (
                    str(status),
                    _text(item.phase),
                    dumps(item.phases),
                    dumps(item.phases_done),
                    _num(item.done),
                    _num(item.total),
                    _text(item.message),
                    result_json,
                    dumps(error) if error else None,
                    now,
                    now,
                    seq,
                    item.run_id,
                ),
            )
        return True

    def put_checkpoint(self, item: FlushItem, owner: Owner, name: str, value_json: str) -> bool:
        """A step's checkpoint with the run's pending progress and events, in one transaction
        (a ``checkpoint`` event follows them). False if the run is no longer ours. The files an
        encoded value carries (codec.Encoded) are written first."""
        now = time.time()
        files = _files(value_json)
        if files:
            self.files.put(files)
        with self.tx() as conn:
            if files:
                self.files.ensure(files)
            row = conn.execute(
                "SELECT last_seq FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) VALUES (?, ?, ?, ?)",
                (item.run_id, name, value_json, now),
            )
            events = [*item.events, (now, "checkpoint", item.phase, dumps({"name": name}))]
            seq = self._append(conn, item.run_id, row[0], events)
            conn.execute(
                "UPDATE runs SET phase = ?, phases = ?, phases_done = ?, done = ?, total = ?, "
                "message = ?, updated_at = ?, last_seq = ? WHERE id = ?",
                (
                    _text(item.phase),
                    dumps(item.phases),
                    dumps(item.phases_done),
                    _num(item.done),
                    _num(item.total),
                    _text(item.message),
                    now,
                    seq,
                    item.run_id,
                ),
            )
        return True

    def put_checkpoints(self, run_id: str, owner: Owner, items: Sequence[tuple[str, str]]) -> bool:
        """Store several (name, JSON) checkpoints at once (ctx.map items); no events."""
        now = time.time()
        files = _files(*(text for _, text in items))
        if files:
            self.files.put(files)
        with self.tx() as conn:
            if files:
                self.files.ensure(files)
            row = conn.execute(
                "SELECT 1 FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                (run_id, owner.instance),
            ).fetchone()
            if row is None:
                return False
            conn.executemany(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, value, ts) VALUES (?, ?, ?, ?)",
                [(run_id, n, v, now) for n, v in items],
            )
        return True

    def collect_files(self) -> tuple[int, int]:
        """Remove the value files no run or checkpoint refers to (``tether gc``), in a write
        transaction so that no write can commit a reference meanwhile (writers check their files
        again inside theirs). Returns (files removed, bytes freed)."""
        if not self.files.root.exists():
            return 0, 0
        with self.tx() as conn:
            referenced: set[str] = set()
            for sql in (
                "SELECT result FROM runs WHERE instr(result, ?) > 0",
                "SELECT value FROM checkpoints WHERE instr(value, ?) > 0",
            ):
                for (text,) in conn.execute(sql, (codec.TAG_TEXT,)):
                    referenced |= codec.references(text)
            return self.files.collect(referenced)

    def request_cancel(self, run_id: str, gone: GoneCheck, origin: dict[str, Any] | None = None) -> RunRecord:
        """Cancel: a pending run (or one whose owner is gone) ends at once; a running one is
        flagged. Its active descendants (runs its body started, and theirs) are cancelled too.

        ``origin`` (who asked: ``{"via": "panel" | "cli" | "api", "pid": ..., ...}``) is kept in
        the cancel's event, for displays to say where the cancel came from."""
        extra = {"origin": origin} if origin else {}
        now = time.time()
        with self.tx() as conn:
            rec = self.get(run_id)
            if rec.status.terminal:
                return rec
            self._cancel_one(conn, rec, gone, now, {"by": "request", **extra})
            for child in self._descendants(conn, run_id):
                self._cancel_one(conn, child, gone, now, {"by": "parent", "parent": run_id})
            return self.get(run_id)

    def cancel_children(self, run_id: str, gone: GoneCheck) -> list[str]:
        """Cancel the active descendants of ``run_id`` (its timeout passed). Returns their ids."""
        now = time.time()
        with self.tx() as conn:
            kids = self._descendants(conn, run_id)
            for child in kids:
                self._cancel_one(conn, child, gone, now, {"by": "parent", "parent": run_id})
        return [k.id for k in kids]

    def _cancel_one(
        self, conn: sqlite3.Connection, rec: RunRecord, gone: GoneCheck, now: float, data: dict[str, Any]
    ) -> None:
        ends_now = rec.status == Status.PENDING or gone(rec.owner, rec.lease_until, now)
        if ends_now:
            error = {"type": "Cancelled", "message": "run cancelled", "traceback": ""}
            if data.get("by") == "parent":
                error["message"] = f"run cancelled with its parent run {data['parent']}"
            cur = conn.execute(
                "UPDATE runs SET status = 'cancelled', cancel_requested = 1, ended_at = ?, "
                "updated_at = ?, error = ? WHERE id = ? AND status = ?",
                (now, now, dumps(error), rec.id, str(rec.status)),
            )
            if cur.rowcount == 1:
                self._event(conn, rec, "cancelled", data, now)
        elif not rec.cancel_requested:
            conn.execute("UPDATE runs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, rec.id))
            asked = {k: v for k, v in data.items() if k != "by"} if data.get("by") == "request" else data
            self._event(conn, rec, "cancel_requested", asked, now)

    def recover(self, records: Sequence[RunRecord], gone: GoneCheck) -> list[tuple[RunRecord, str]]:
        """Mark the orphans among ``records`` interrupted. Returns those marked, with the reason.

        Each run on its own: one whose owner check raises, or whose write fails (a damaged row),
        is left as it was, and the others are still marked."""
        now = time.time()
        suspects = []
        for rec in records:
            if not rec.status.active:
                continue
            try:
                why = gone(rec.owner, rec.lease_until, now)
            except Exception:  # a check that cannot decide proves nothing: this run is left
                continue
            if why:
                suspects.append((rec, why))
        marked = []
        if suspects:
            with self.tx() as conn:
                for rec, why in suspects:
                    # one run's failure (a damaged row whose write breaks a constraint, a row
                    # deleted meanwhile) undoes that run's writes only; the others go on
                    conn.execute("SAVEPOINT tether_recover")
                    try:
                        fresh = self.get(rec.id)
                        same = fresh.status == rec.status and fresh.owner == rec.owner
                        if (
                            same
                            and fresh.status == Status.PENDING
                            and self._hand_over(conn, fresh, why, now, gone)
                        ):
                            done = False
                        else:
                            done = same and self._interrupt(conn, fresh, why, now)
                    except (sqlite3.DatabaseError, TetherError):
                        if not conn.in_transaction:  # SQLite ended the transaction: stop here
                            raise
                        conn.execute("ROLLBACK TO tether_recover")
                        done = False
                    conn.execute("RELEASE tether_recover")
                    if done:
                        marked.append((fresh, why))
        return marked

    def interrupt_own(self, owner: Owner, reason: str) -> int:
        """Mark every active run of ``owner`` interrupted (clean shutdown). Returns the count."""
        now = time.time()
        n = 0
        with self.tx() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE status IN ('pending', 'running') AND owner_instance = ?",
                (owner.instance,),
            ).fetchall()
            for row in rows:
                n += self._interrupt(conn, self._rec(row), reason, now)
        return n

    # -- control (issue 14): limits, retries, parents and children, workers -------------------

    def _queued(self, conn: sqlite3.Connection, run_id: str, target: str, now: float) -> Queued | None:
        """After a claim that changed nothing: Queued if the run waits for its pipeline's limit
        (a ``queued`` event the first time), else None."""
        row = conn.execute(
            f"SELECT concurrency, last_seq, phase, {_AHEAD} FROM runs WHERE id = ? "
            "AND status = 'pending' AND target = ?",
            (now, run_id, target),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        concurrency, last_seq, phase, ahead = row
        first = (
            conn.execute(
                "SELECT 1 FROM events WHERE run_id = ? AND kind = 'queued' LIMIT 1", (run_id,)
            ).fetchone()
            is None
        )
        if first:
            seq = self._append(
                conn,
                run_id,
                last_seq,
                [(now, "queued", phase, dumps({"ahead": ahead, "concurrency": concurrency}))],
            )
            conn.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (seq, run_id))
        return Queued(ahead)

    @_guarded
    def claimable(self, run_ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``run_ids`` still pending: would its claim pass the concurrency check now?
        (A read: a process polls its queued runs with it, and claims only when it may pass.)"""
        if not run_ids:
            return {}
        now = time.time()
        rows = (
            self.conn()
            .execute(
                f"SELECT id, {_ROOM} FROM runs WHERE status = 'pending' AND id IN "
                f"({','.join('?' * len(run_ids))})",
                (now, *run_ids),
            )
            .fetchall()
        )
        return {r[0]: bool(r[1]) for r in rows}

    @_guarded
    def queue_ahead(self, run_id: str) -> int | None:
        """Runs of the same pipeline that start before this pending run (its ``concurrency=``
        queue, start order across processes); None unless it waits in such a queue."""
        row = (
            self.conn()
            .execute(
                f"SELECT concurrency, {_AHEAD} FROM runs WHERE id = ? AND status = 'pending'",
                (time.time(), run_id),
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else int(row[1])

    def retry_wait(self, item: FlushItem, owner: Owner, error: dict[str, Any], delay: float) -> bool:
        """A try failed and another follows after ``delay`` s: its error kept in a ``retry``
        event, ``retry_at`` set. False if the run is no longer ours."""
        now = time.time()
        with self.tx() as conn:
            row = conn.execute(
                "SELECT last_seq, tries, max_tries FROM runs WHERE id = ? AND status = 'running' "
                "AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return False
            last_seq, tries, max_tries = row
            data = {
                "try": tries,
                "of": max_tries,
                "type": error.get("type"),
                "message": error.get("message"),
                "traceback": (error.get("traceback") or "")[-_MAX_TRY_TRACEBACK:],
                "delay": delay,
                "at": now + delay,
            }
            seq = self._append(
                conn, item.run_id, last_seq, [*item.events, (now, "retry", item.phase, dumps(data))]
            )
            conn.execute(
                "UPDATE runs SET phase = ?, phases = ?, phases_done = ?, done = ?, total = ?, "
                "message = ?, updated_at = ?, last_seq = ?, retry_at = ?, deadline = NULL "
                "WHERE id = ?",
                (
                    _text(item.phase),
                    dumps(item.phases),
                    dumps(item.phases_done),
                    _num(item.done),
                    _num(item.total),
                    _text(item.message),
                    now,
                    seq,
                    now + delay,
                    item.run_id,
                ),
            )
        return True

    def next_try(self, item: FlushItem, owner: Owner) -> RunRecord | None:
        """The next try starts now (a ``try`` event). None if the run is no longer ours."""
        now = time.time()
        with self.tx() as conn:
            row = conn.execute(
                "SELECT last_seq, tries FROM runs WHERE id = ? AND status = 'running' AND owner_instance = ?",
                (item.run_id, owner.instance),
            ).fetchone()
            if row is None:
                return None
            seq = self._append(
                conn,
                item.run_id,
                row[0],
                [*item.events, (now, "try", item.phase, dumps({"try": row[1] + 1}))],
            )
            conn.execute(
                "UPDATE runs SET phase = ?, phases = ?, phases_done = ?, done = ?, total = ?, "
                "message = ?, updated_at = ?, last_seq = ?, tries = tries + 1, retry_at = NULL, "
                "deadline = ? + timeout WHERE id = ?",
                (
                    _text(item.phase),
                    dumps(item.phases),
                    dumps(item.phases_done),
                    _num(item.done),
                    _num(item.total),
                    _text(item.message),
                    now,
                    seq,
                    now,
                    item.run_id,
                ),
            )
            return self._rec(
                conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (item.run_id,)).fetchone()
            )

    def park(self, run_id: str, owner: Owner, parked: bool) -> None:
        """A parent waits for a child (parked: not counted by its pipeline's concurrency) or
        goes on."""
        with self.tx() as conn:
            conn.execute(
                "UPDATE runs SET parked = ? WHERE id = ? AND owner_instance = ? AND status = 'running'",
                (int(parked), run_id, owner.instance),
            )

    @_guarded
    def children(self, run_id: str) -> list[RunRecord]:
        """Runs started by ``run_id``'s body (and those it attached to, once its events are
        flushed), oldest first."""
        rows = (
            self.conn()
            .execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE parent_id = ? OR id IN (SELECT json_extract("
                "data, '$.id') FROM events WHERE run_id = ? AND kind = 'child') "
                "ORDER BY created_at, rowid",
                (run_id, run_id),
            )
            .fetchall()
        )
        return [self._rec(r) for r in rows]

    def _descendants(self, conn: sqlite3.Connection, run_id: str) -> list[RunRecord]:
        """The active runs below ``run_id`` (children, theirs, ...), parents first."""
        rows = conn.execute(
            "WITH RECURSIVE below(id, depth) AS (SELECT id, 1 FROM runs WHERE parent_id = ? "
            "UNION SELECT r.id, below.depth + 1 FROM runs r JOIN below ON r.parent_id = below.id "
            "WHERE below.depth < 100) "
            f"SELECT {_RUN_COLS} FROM runs WHERE id IN (SELECT id FROM below) "
            "AND status IN ('pending', 'running') ORDER BY created_at",
            (run_id,),
        ).fetchall()
        return [self._rec(r) for r in rows]

    @_guarded
    def descendants(self, run_id: str) -> list[RunRecord]:
        return self._descendants(self.conn(), run_id)

    def register_worker(self, owner: Owner, pipelines: Sequence[str], lease_until: float) -> None:
        """A ``tether worker`` serves ``pipelines`` (renewed with the same call, dropped with
        ``unregister_worker``)."""
        with self.tx() as conn:
            conn.execute("DELETE FROM workers WHERE instance = ?", (owner.instance,))
            conn.executemany(
                "INSERT INTO workers (instance, pipeline, host, pid, started, ns, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (owner.instance, p, owner.host, owner.pid, owner.started, owner.ns, lease_until)
                    for p in pipelines
                ],
            )
            conn.execute("DELETE FROM workers WHERE lease_until < ?", (time.time() - 3600,))

    def unregister_worker(self, owner: Owner) -> None:
        with self.tx() as conn:
            conn.execute("DELETE FROM workers WHERE instance = ?", (owner.instance,))

    def _hand_over(
        self, conn: sqlite3.Connection, rec: RunRecord, why: str, now: float, gone: GoneCheck
    ) -> bool:
        """A pending run whose starter is gone goes to a live worker serving its pipeline, if
        there is one (it never started, so nothing of it ran): True if handed over."""
        if rec.target == "worker":
            return False
        rows = conn.execute(
            "SELECT host, pid, started, instance, ns, lease_until FROM workers "
            "WHERE pipeline = ? AND lease_until > ?",
            (rec.pipeline, now),
        ).fetchall()
        if not any(gone(Owner(h, p, s, i, ns), lease, now) is None for h, p, s, i, ns, lease in rows):
            return False
        cur = conn.execute(
            "UPDATE runs SET target = 'worker', owner_host = NULL, owner_pid = NULL, "
            "owner_started = NULL, owner_instance = NULL, owner_ns = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND status = 'pending' AND owner_instance IS ?",
            (now, rec.id, rec.owner.instance if rec.owner else None),
        )
        if cur.rowcount != 1:
            return False
        self._event(conn, rec, "handed_over", {"to": "worker", "reason": why}, now)
        return True


class Queued(NamedTuple):
    """A claim refused by the pipeline's ``concurrency``: the run stays pending, in line."""

    ahead: int  # runs of the pipeline that start before it


_MAX_TRY_TRACEBACK = 20_000
# A pending run that will start before the run of the outer query (its pipeline's queue, in start
# order: rowid, the order in which the start transactions committed) and has a claimant: meant for
# a process (the sweep takes those of dead ones away), or for a worker while one serves the
# pipeline. ?1 is the time now.
_BEFORE = (
    "FROM runs AS o WHERE o.pipeline = runs.pipeline AND o.status = 'pending' "
    "AND o.concurrency IS NOT NULL AND o.rowid < runs.rowid AND (o.target != 'worker' OR "
    "EXISTS (SELECT 1 FROM workers AS w WHERE w.pipeline = o.pipeline AND w.lease_until > ?1))"
)
_AHEAD = f"(SELECT count(*) {_BEFORE})"
# A claim of the run passes its pipeline's concurrency check (parked parents are not counted)
_ROOM = (
    "(runs.concurrency IS NULL OR ((SELECT count(*) FROM runs AS o WHERE o.pipeline = "
    "runs.pipeline AND o.status = 'running' AND o.parked = 0) < runs.concurrency "
    f"AND NOT EXISTS (SELECT 1 {_BEFORE})))"
)


def _param_test(value: Any) -> tuple[str, list[Any]]:
    """A ``json_each`` condition true where a param equals ``value`` as JSON values do:
    ``True`` is not ``1``, ``3 == 3.0``; a list or dict equals the same canonical JSON."""
    if value is None:
        return "j.type = 'null'", []
    if isinstance(value, bool):
        return "j.type = ?", ["true" if value else "false"]
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            value = float(value)  # as SQLite reads such a number
        return "j.type IN ('integer', 'real') AND j.value = ?", [value]
    if isinstance(value, str):
        return "j.type = 'text' AND j.value = ?", [value]
    if isinstance(value, (list, tuple, dict)):
        return "j.type IN ('array', 'object') AND j.value = ?", [dumps(value)]
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _capped(rec: RunRecord) -> bool:
    """The attempt that recorded the end of automatic resumes (only a manual resume goes on)."""
    return rec.status == Status.FAILED and (rec.error or {}).get("type") == "ResumeCapReached"


def _same_code(stored_version: Any, stored_code: Any, version: str | None, code: str | None) -> bool:
    """Whether a stored run was made by the code asking (versions and fingerprints as text).

    An explicit ``version`` pins the code: equal versions are the same code whatever the
    fingerprints. A fingerprint unknown on either side (a run recorded before tether kept them,
    a callable without code) is taken as the same code."""
    if stored_version != version:
        return False
    return version is not None or stored_code is None or code is None or stored_code == code


def _other_code(rec: RunRecord, version: str | None, code: str | None) -> str | None:
    """How the code of a start() call differs from the stored run's, or None if it is the same."""
    if _same_code(rec.version, rec.code, version, code):
        return None
    if rec.version != version:
        return f"version {raw_text(rec.version)} -> {raw_text(version)}"
    return f"code {rec.code} -> {code}"


def _difference(
    rec: RunRecord, params_json: str, pipeline: str | None = None, stored_json: str | None = None
) -> str | None:
    """A readable description of how a new start() differs from a stored run, or None.

    ``stored_json``: the run's params column as stored; both are canonical JSON, so equal text
    means equal params (the common case of an idempotent start, without decoding). The text names
    at most ``shown`` differences (then "and N more"), each name and value clipped to ``clip``
    characters, so that a conflict over thousands of ``**kwargs`` stays a readable line."""
    shown, clip = 5, 60

    def cut(text: str) -> str:
        return text if len(text) <= clip else text[: clip - 1] + "…"

    if pipeline is not None and rec.pipeline != pipeline:
        return f"pipeline {cut(repr(rec.pipeline))}, not {cut(repr(pipeline))}"
    if stored_json is not None and stored_json == params_json:
        return None
    new = json.loads(params_json)
    if new == rec.params:
        return None
    parts = []
    more = 0
    for name in sorted(set(new) | set(rec.params)):
        if name in new and name in rec.params and new[name] == rec.params[name]:
            continue
        if len(parts) == shown:
            more += 1
            continue
        if name not in rec.params:
            parts.append(f"no parameter {cut(repr(name))}")
        elif name not in new:
            parts.append(f"parameter {cut(repr(name))}={cut(dumps(rec.params[name]))} that this call lacks")
        else:
            parts.append(f"{cut(name)}={cut(dumps(rec.params[name]))}, not {cut(dumps(new[name]))}")
    if more:
        parts.append(f"and {more:,} more")
    return "different params: " + "; ".join(parts)


_NO_CONTROL = Control()


def _child_resume(latest: RunRecord, control: Control | None) -> bool:
    """A child started (policy "attach") from the body of a run of the lineage that started it
    before, whose run ended badly: resumed (within the parent's retry or resume), not returned."""
    return (
        control is not None
        and latest.parent_id is not None
        and latest.parent_id in control.lineage
        and latest.status.terminal
        and latest.status != Status.SUCCEEDED
        and not _capped(latest)
    )


# Every Store of this process, for the fork hook below.
_stores: weakref.WeakSet[Store] = weakref.WeakSet()
# Connections inherited from the parent by a forked child: never used, never closed (closing
# would run SQLite's close path, checkpoint and unlink included, on the parent's files), kept
# referenced so that garbage collection does not close them either.
_inherited: list[sqlite3.Connection] = []


def _after_fork() -> None:
    """In a forked child, every Store forgets the parent's connections and locks.

    SQLite connections must not cross a fork: the child holds none of the parent's POSIX locks,
    so writing through them would corrupt the file. The child opens its own on first use."""
    for st in list(_stores):
        _inherited.extend(st._conns)
        _inherited.extend(st._idle)
        conn = getattr(st._local, "conn", None)  # the forking thread's, carried into the child
        if conn is not None:
            _inherited.append(conn)
        st._local = threading.local()
        st._conns = {}
        st._idle = []
        st.write_lock = threading.RLock()
        st._open_lock = threading.Lock()
        st.runner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

"""SQLite connections: one per thread, opened (and migrated) on first use, write transactions
that wait for another process's lock in slices an interrupt can land between, and a forked
child that never touches its parent's connections."""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .. import _interrupts
from ..errors import StoreError
from . import _schema
from ._rows import WHOLE, Scope
from ._safety import (
    SQLITE_BUSY,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_LOCKED,
    SQLITE_READONLY,
    _Busy,
    _FileChecks,
    _primary,
)

BUSY_TIMEOUT_S = 30.0


_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}  # tether.config.DURABILITY -> SQLite's


def _synchronous(durability: str) -> str:
    try:
        return _SYNCHRONOUS[durability]
    except KeyError:
        raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}") from None


def _close_quietly(conns: Sequence[sqlite3.Connection]) -> None:
    for conn in conns:
        try:
            conn.close()
        except sqlite3.Error:
            pass


# The main thread's connection waits at most this long for a lock in one statement (its busy
# timeout): SQLite's busy handler sleeps in C, where no Python signal handler runs, so the main
# thread waits in slices and a recorded kernel interrupt is delivered between them. Other threads'
# connections wait up to BUSY_TIMEOUT_S in one go.
_SLICE_MS = 50
_WAIT_MS = int(BUSY_TIMEOUT_S * 1000)


SQLITE_BUSY_SNAPSHOT = SQLITE_BUSY | (2 << 8)


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock. Not SQLITE_BUSY_SNAPSHOT:
    this connection's own read snapshot is older than the file (a statement left unfinished on
    it), and waiting never ends that."""
    return _primary(exc) in (SQLITE_BUSY, SQLITE_LOCKED) and _stale(exc) is False


def _stale(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY_SNAPSHOT (Python >= 3.11 gives the extended code)."""
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_BUSY_SNAPSHOT


F = TypeVar("F", bound=Callable[..., Any])


def _busy_cause(exc: StoreError) -> bool:
    """The StoreError of a statement that found a lock held (SQLITE_BUSY or SQLITE_LOCKED)."""
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and _busy(cause)


def _guarded(fn: F) -> F:
    """Read methods: SQLite errors become StoreError."""

    @functools.wraps(fn)
    def wrapper(self: _Connections, *args: Any, **kwargs: Any) -> Any:
        try:
            try:  # guard() written out: every attach reads through here
                return fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                self._raise_store_error(exc)
        except StoreError as exc:
            if not (_interrupts.in_main_thread() and _busy_cause(exc)):
                raise
        # The main thread's statements wait for a lock one slice at a time (_SLICE_MS): a read
        # that found one held (a WAL being recovered by another process) tries again until
        # BUSY_TIMEOUT_S, delivering a recorded interrupt in between (a read holds nothing).
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            _interrupts.safe_point()
            try:
                with self.guard():
                    return fn(self, *args, **kwargs)
            except StoreError as exc:
                if not _busy_cause(exc) or time.monotonic() > deadline:
                    raise

    return wrapper  # type: ignore[return-value]


class _Connections(_FileChecks):
    """A tether database file's connections and transactions."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        allow_foreign: Callable[[], bool] | None = None,
        allow_network_fs: Callable[[], bool] | None = None,
        durability: str = "normal",
    ) -> None:
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self._fspath = str(self.path)  # stat'ed before every write: no Path to convert each time
        # asked when the file is opened: may a file owned by another user be used? one on a
        # network filesystem?
        self._allow_foreign = allow_foreign or (lambda: False)
        self._allow_network_fs = allow_network_fs or (lambda: False)
        self._sync = _synchronous(durability)  # PRAGMA synchronous of every connection
        self.write_lock = threading.RLock()
        self._local = threading.local()
        self._conns: dict[sqlite3.Connection, threading.Thread] = {}  # connection -> its thread
        self._idle: list[sqlite3.Connection] = []  # given back by ended run threads, for reuse
        self._open_lock = threading.Lock()
        # the one connection every write transaction of this process uses, under write_lock:
        # with a connection per writing thread each commit made the others' caches stale
        self._writer: sqlite3.Connection | None = None
        self._writer_sync = ""  # its PRAGMA synchronous
        self._ready = False
        self._closed = False
        self._identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file we opened
        self.runner: Any = None  # set by tether.runner
        _stores.add(self)

    def __repr__(self) -> str:
        return f"<tether.Store {str(self.path)!r}>"

    def set_durability(self, durability: str) -> None:
        """ "normal" or "full" (tether.config.DURABILITY): each thread's connection switches before
        its next statement outside a transaction."""
        self._sync = _synchronous(durability)

    def _use(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """Make ``conn`` this thread's connection, at the durability in force."""
        sync = self._sync
        conn.execute(f"PRAGMA synchronous = {sync}")
        self._local.conn = conn
        self._local.sync = sync
        return conn

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
        wait_ms = _SLICE_MS if _interrupts.in_main_thread() else _WAIT_MS
        if reused is not None:
            reused.execute(f"PRAGMA busy_timeout = {wait_ms}")
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
            conn.execute(f"PRAGMA busy_timeout = {wait_ms}")  # synchronous: set by _use
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._fail("cannot be opened", exc) from exc
        with self._open_lock:
            self._conns[conn] = threading.current_thread()
        return conn

    def _open(self) -> None:
        # Switching to WAL and migrating need locks that SQLite may refuse at once (SQLITE_BUSY
        # without the busy handler) while other processes open the same new file: retry.
        self._check_filesystem()
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
                        fix="Point tether at another file with {db}.",
                    )
                applied = _schema.applied(conn)
                if not applied:
                    raise self._fail(
                        "is a SQLite database but not a tether one; it was left untouched",
                        fix="Point tether at another file with {db}.",
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
            if _busy(exc):
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
        self._use(conn)

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
        local = self._local
        held: sqlite3.Connection | None = getattr(local, "tx", None)
        if held is not None:  # inside this thread's write transaction: read what it wrote
            return held
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and not self._closed:
            # durability changed since this connection was set up: switch it, never inside a
            # transaction (the level of a commit is the one in force at BEGIN)
            if local.sync is not self._sync and not conn.in_transaction:
                self._use(conn)
            return conn
        if not self._ready:
            with self.write_lock:
                if not self._ready:
                    self._open()
                    self._ready = True
                    opened: sqlite3.Connection = self._local.conn
                    return opened
        return self._use(self._new_conn())

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
                if self._writer is not None:
                    idle.append(self._writer)
                    self._writer = None
            me = threading.current_thread()
            _close_quietly(idle + [c for c, t in conns.items() if t is me or not t.is_alive()])

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn SQLite's errors into StoreError with a message that says what to do."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._raise_store_error(exc)

    def _raise_store_error(self, exc: sqlite3.DatabaseError) -> NoReturn:
        """Raise ``exc`` as the StoreError ``guard()`` raises for it, or as it is."""
        err = self._store_error(exc)
        if err is None:
            raise exc
        raise err from exc

    def _store_error(self, exc: sqlite3.DatabaseError) -> StoreError | None:
        """The StoreError ``guard()`` raises for ``exc``; None: raised as it is (a constraint, a
        misuse)."""
        if isinstance(exc, sqlite3.OperationalError):
            return self._write_error(exc)
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT / SQLITE_NOTADB
            return self._fail("is corrupt; it was left untouched", exc, fix="Restore a backup or use {db}.")
        return None

    def _check_same_file(self) -> None:
        """Before every write: the path still names the file opened (one stat)."""
        try:
            st = os.stat(self._fspath)
            dev, ino = self._identity
            if st.st_ino == ino and st.st_dev == dev:
                return
        except PermissionError:
            self._stat()  # raises: a folder on the way was closed to this user
        except OSError:
            pass
        self._empty_wal()
        raise self._fail(
            "was deleted or replaced while in use; nothing more is written to it",
            fix="tether never recreates a database behind your back; restart "
            "the process (or use {db}) to start afresh.",
        )

    def _empty_wal(self) -> None:
        """SQLite keeps the WAL of a database moved or unlinked while open (no checkpoint on
        close), and the next connection to the path would apply it to whatever file is there now:
        checkpoint it into the old file (gone or renamed) and truncate it. Through the writer,
        which holds the old file open whichever thread noticed (a run thread that only wrote has
        no connection of its own)."""
        with self.write_lock:
            conn = self._writer or getattr(self._local, "conn", None)
            if conn is None or conn.in_transaction:
                return
            slice_ = conn is self._writer or _interrupts.in_main_thread()
            try:
                conn.execute(f"PRAGMA busy_timeout = {_WAIT_MS}")  # wait for readers, as any thread
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            finally:
                try:
                    conn.execute(f"PRAGMA busy_timeout = {_SLICE_MS if slice_ else _WAIT_MS}")
                except sqlite3.Error:
                    pass

    @contextmanager
    def tx(self, scope: Scope = WHOLE) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), serialised within the process and with
        every other writer of the file (``scope``, what it touches, is for PostgreSQL's finer locks).

        A kernel interrupt is held back from the moment the write lock is ours until COMMIT or
        ROLLBACK has run (tether._interrupts); while waiting for the lock it lands at once.
        Otherwise an interrupt right after BEGIN would leave the transaction open, and every
        other process locked out, for as long as this process lives."""
        if not self._ready:
            self.conn()  # opens (and migrates) the file
        self._check_same_file()
        local = self._local
        with _interrupts.critical():
            self._lock_for_write()
            try:
                conn = local.tx = self._writing()
                if conn.in_transaction:  # never build on a transaction some failure left open
                    conn.execute("ROLLBACK")
                self._begin(conn)
                try:
                    try:  # guard() written out: one context manager fewer on every write
                        yield conn
                    except sqlite3.DatabaseError as exc:
                        self._raise_store_error(exc)
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
                local.tx = None
                self.write_lock.release()

    def write_run(self, run_id: str, sql: str, args: Sequence[Any]) -> int:
        """One statement writing rows of the run ``run_id``, fenced by its own condition (the
        run's status and owner), as a transaction of its own: the number of rows it changed.

        What ``tx`` keeps, without BEGIN and COMMIT: the file checked to be the one opened, the
        process's write lock, a kernel interrupt held back throughout, the writer connection,
        another process's lock waited for in slices up to BUSY_TIMEOUT_S, SQLite's errors as
        StoreError. A statement outside a transaction takes SQLite's write lock before it reads
        anything, exactly as BEGIN IMMEDIATE does (the same opcode), so it waits in the busy
        handler and never meets a stale snapshot (SQLITE_BUSY_SNAPSHOT is the upgrade of an open
        read transaction, which there is none of); one that fails (BUSY included) is rolled
        back whole, so trying it again is safe. No value files: ``files.ensure`` needs ``tx``."""
        if not self._ready:
            self.conn()  # opens (and migrates) the file
        self._check_same_file()
        with _interrupts.critical():
            self._lock_for_write()
            try:
                conn = self._writing()
                if conn.in_transaction:  # never build on a transaction some failure left open
                    conn.execute("ROLLBACK")
                return int(self._locking(conn, sql, args).rowcount)
            finally:
                self.write_lock.release()

    def _writing(self) -> sqlite3.Connection:
        """The writer connection (under write_lock), at the durability in force. Its busy timeout
        is the main thread's slice whichever thread writes: ``_begin`` waits in slices."""
        conn = self._writer
        if conn is None:
            if self._closed:
                raise self._fail("is closed", fix="Call tether.configure() again to reopen it.")
            conn = self._new_conn()
            with self._open_lock:  # no thread's: closed with the store
                self._conns.pop(conn, None)
            conn.execute(f"PRAGMA busy_timeout = {_SLICE_MS}")
            self._writer, self._writer_sync = conn, ""
        if self._sync != self._writer_sync:
            conn.execute(f"PRAGMA synchronous = {self._sync}")
            self._writer_sync = self._sync
        return conn

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
        Once it holds the lock, no statement of the transaction waits."""
        self._locking(conn, "BEGIN IMMEDIATE")

    def _locking(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """``sql`` on the writer, a statement that takes SQLite's write lock first (BEGIN
        IMMEDIATE, or a write outside a transaction), tried again while another process holds
        the lock, up to BUSY_TIMEOUT_S.

        SQLite's busy handler sleeps in C, where no Python signal handler runs: the writer
        connection waits at most _SLICE_MS per try (its busy timeout), so the first try is all an
        uncontended write costs, and in the main thread a recorded interrupt is delivered between
        tries. A statement that failed took no lock and wrote nothing: trying it again is safe."""
        deadline = 0.0
        while True:
            try:
                return conn.execute(sql, args)
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                deadline = deadline or now + BUSY_TIMEOUT_S
                if not _busy(exc) or now > deadline:
                    raise self._write_error(exc) from exc
            except sqlite3.DatabaseError as exc:
                self._raise_store_error(exc)
            if _interrupts.in_main_thread():
                _interrupts.safe_point()

    def _write_error(self, exc: sqlite3.Error) -> StoreError:
        code = _primary(exc)
        if _stale(exc):
            return self._fail(
                "could not be written: tether's writing connection reads an old snapshot of it (a "
                "statement was left unfinished on that connection)",
                exc,
                fix="This is a bug in tether: please report it; restarting the process clears it.",
            )
        if code in (SQLITE_BUSY, SQLITE_LOCKED):
            err = self._fail(f"stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s", exc)
        elif code == SQLITE_FULL:
            err = self._fail("cannot grow: the disk is full", exc)
        elif code == SQLITE_READONLY:
            return self._fail("is not writable", exc, fix="Fix its permissions or choose another path.")
        elif code == SQLITE_IOERR:  # also what a file size limit (EFBIG) looks like
            err = self._fail("could not be written (an I/O error)", exc)
        else:
            return self._fail("could not be written", exc)
        err.transient = True
        return err


# Every Store of this process, for the fork hook below.
_stores: weakref.WeakSet[_Connections] = weakref.WeakSet()
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
        if st._writer is not None:
            _inherited.append(st._writer)
            st._writer = None
        st._local = threading.local()
        st._conns = {}
        st._idle = []
        st.write_lock = threading.RLock()
        st._open_lock = threading.Lock()
        st.runner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

"""The PostgreSQL store: a team's tether database on a PostgreSQL server (``tether[postgres]``:
psycopg 3 and its connection pool).

It runs the very statements of the SQLite store (the mixins of tether.store), translated by the
dialect seam (tether.store._pg_dialect). Each thread holds one pooled connection in autocommit
(a read is one statement); a write is one READ COMMITTED transaction that first takes the locks
of what it touches (its ``Scope``), always in one order, so that writers on every host that
touch different runs and keys never wait for each other, and no two wait in a cycle (_locks):

1. the database's advisory lock: exclusive for a write of the whole database (cancels, recovery
   and hand-over, a shutdown's interrupts, gc: as SQLite's ``BEGIN IMMEDIATE``), shared otherwise;
2. a start's key (advisory, ``hash('k:' + key)``): one decision per key at a time, with
   ``UNIQUE (key, attempt)`` as the backstop of "one creator per key";
3. a claim's pipeline (advisory, ``hash('p:' + pipeline)``) when ``concurrency`` limits it: the
   count of its running runs and the claim are one decision;
4. the rows it changes, ``FOR UPDATE`` in id order; a worker's claim ``SKIP LOCKED``.

Each status change stays conditional on the status and owner it replaces, checked after its row is
locked (READ COMMITTED reads the row's newest committed version then). A transaction the server
ends to break a deadlock (40P01) or a serialization failure (40001) is run again (_retried).

Large values are rows of ``tether_files`` (content-addressed bytea) that every host reaches.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from .. import _interrupts, codec
from ..artifacts import Artifacts
from ..errors import StoreError
from . import _pg_dialect, _schema
from ._connection import BUSY_TIMEOUT_S
from ._pg_dialect import FILES_TABLE, MIGRATIONS_TABLE, arguments, translate
from ._reads import _param_test
from ._rows import WHOLE, RowTaken, Scope
from ._writes import _Writes
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from .protocol import Store

# pg_advisory_xact_lock keys: the database (shared by a scoped write, exclusive for a write of
# the whole database), and migrations
_WRITE_LOCK = 0x746574686572
_SCHEMA_LOCK = 0x746574686573
_INSTALL = "pip install 'tether[postgres]'"
_SLICE_MS = 100  # the main thread's wait for the write locks, per try
_WAIT_MS = int(BUSY_TIMEOUT_S * 1000)
_RETRIES = 5  # a transaction chosen as a deadlock's (or serialization failure's) victim is run again
_P = ParamSpec("_P")
_T = TypeVar("_T")
IDLE_IN_WRITE_S = 10.0  # a session idle this long inside a transaction is ended by the server


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise StoreError(
            f"a postgresql:// database needs psycopg 3 and psycopg_pool ({exc}); install them with "
            f"{_INSTALL}."
        ) from None
    return psycopg


def redact(url: str) -> str:
    """``url`` without its password (the store's name in messages, panels and the CLI)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_url(db: object) -> bool:
    """Is ``db`` a PostgreSQL URL (rather than a SQLite file's path)?"""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class _URLPath(PosixPath):
    """A store's ``path`` (its identity where a Path is expected) that prints as its URL."""

    _url = ""

    def __str__(self) -> str:
        return self._url

    def __fspath__(self) -> str:
        return self._url


def _identity(location: str) -> Path:
    if sys.platform == "win32":  # PosixPath cannot be made there
        return Path(location)
    path = _URLPath(location)
    path._url = location
    return path


def _no_nul(args: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL's text holds no U+0000 (SQLite's does): it becomes U+FFFD, which tether
    renders the same way (never as a control character)."""
    for a in args:
        if type(a) is str and "\x00" in a:
            return [a.replace("\x00", "\ufffd") if type(a) is str else a for a in args]
    return args


class _Conn:
    """A psycopg connection that takes the store's statements in SQLite's dialect: the calls of
    sqlite3.Connection the mixins make (execute, executemany, in_transaction)."""

    __slots__ = ("raw", "store")

    def __init__(self, raw: psycopg.Connection[Any], store: PostgresStore) -> None:
        self.raw = raw
        self.store = store

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        text, order = translate(sql)
        params = _no_nul(arguments(order, args))
        alone = self.raw.info.transaction_status == 0  # outside a transaction: its own commit
        try:
            return self.raw.execute(text, params)
        except Exception as exc:
            # The session was gone before the statement (a server restart or failover, an idle
            # connection dropped by the network): a statement of its own (a read, an idempotent
            # insert of a value) is sent again once, on a new connection from the pool.
            if not (alone and self.raw.closed and self.store._reconnect(self)):
                raise self.store._error(exc) from exc
        try:
            return self.raw.execute(text, params)
        except Exception as exc:
            raise self.store._error(exc) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        text, order = translate(sql)
        cur = self.raw.cursor()
        try:
            cur.executemany(text, [_no_nul(arguments(order, r)) for r in rows])
        except Exception as exc:
            raise self.store._error(exc) from exc
        return cur

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.info.transaction_status != 0)  # pq.TransactionStatus.IDLE

    def rollback(self) -> None:
        """End whatever transaction is open; a broken connection is left to the pool to drop."""
        try:
            if not self.raw.closed and self.in_transaction:
                self.raw.execute("ROLLBACK")
        except Exception:
            pass


def _configure(raw: psycopg.Connection[Any]) -> None:
    """Every new connection: NUMERIC read back as int or float (as SQLite's NUMERIC keeps them),
    no lock waited for longer than the SQLite store waits, no transaction left idle."""
    from psycopg.adapt import Loader

    class _Number(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            if text.lstrip("-").isdigit():
                return int(text)
            return float(text)

    raw.adapters.register_loader("numeric", _Number)
    raw.execute(f"SET lock_timeout = '{_WAIT_MS}ms'")
    # A process stopped (SIGSTOP, a host that froze or lost its network) inside a write would
    # hold the write lock of every host: the server ends such a session after this long, well
    # within the time others wait for the lock; its transaction is rolled back.
    raw.execute(f"SET idle_in_transaction_session_timeout = '{int(IDLE_IN_WRITE_S * 1000)}ms'")
    raw.execute("SET application_name = 'tether'")


class _PGFiles(Artifacts):
    """Large values as rows of ``tether_files`` (digest, size, bytea): what the SQLite store keeps
    as files beside the database, reachable here from every host."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store.path, store._pipeline_of)
        self.store = store

    def _insert(self, files: Mapping[str, Any]) -> None:
        conn = self.store.conn()
        now = time.time()
        for digest, data in files.items():
            view = memoryview(data).cast("B")
            conn.execute(
                f"INSERT INTO {FILES_TABLE} (digest, size, data, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO NOTHING",
                (digest, view.nbytes, view, now),  # psycopg sends a buffer as bytea, uncopied
            )

    def put(self, files: Mapping[str, Any]) -> None:
        with self.store.guard():
            have = self._present(list(files))
            self._insert({d: v for d, v in files.items() if d not in have})

    def _present(self, digests: list[str]) -> set[str]:
        if not digests:
            return set()
        rows = self.store.conn().execute(
            f"SELECT digest FROM {FILES_TABLE} WHERE digest IN ({','.join('?' * len(digests))})", digests
        )
        return {r[0] for r in rows}

    def ensure(self, files: Mapping[str, Any]) -> None:
        self.put(files)  # inside the write transaction: a row gc removed meanwhile comes back

    def write(self, data: Any) -> str:
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()
        self.put({digest: view})
        return digest

    def read(self, digest: str, size: int, where: str, into: Any = None) -> Any:
        fix = "the value cannot be read back; start a new attempt with run.rerun()"
        with self.store.guard():
            row = (
                self.store.conn()
                .execute(f"SELECT size, data FROM {FILES_TABLE} WHERE digest = ?", (digest,))
                .fetchone()
            )
        if row is None:
            raise StoreError(
                f"{where} refers to the stored value {digest!r:.80} ({size} bytes), which is missing; {fix}"
            )
        data = row[1]
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(
                f"{where} refers to the stored value {digest!r:.80}, whose content does not match "
                f"its size and SHA-256 (damaged or altered); {fix}"
            )
        out = into if into is not None else bytearray(size)
        memoryview(out).cast("B")[:] = data
        return out

    def empty(self) -> bool:
        return False  # a question for the database: collect() asks it

    def check_pickle(self, where: str, run_id: str, digest: str | None = None) -> None:
        # Unpickling runs code, and a team database is written by others: never from here.
        raise StoreError(
            f"{where} holds a pickle, and tether does not unpickle values from a shared PostgreSQL "
            "database (anyone who may write to it could run code in your process); use another "
            "serializer for this pipeline"
        )

    def collect(self, referenced: set[str], now: float | None = None) -> tuple[int, int]:
        rows = (
            self.store.conn()
            .execute(
                f"DELETE FROM {FILES_TABLE} WHERE NOT (digest = ANY(?)) RETURNING size",
                (list(referenced),),
            )
            .fetchall()
        )
        return len(rows), sum(r[0] for r in rows)


def _victim(exc: BaseException) -> bool:
    """Was ``exc`` the server ending a transaction to break a deadlock (40P01) or a
    serialization failure (40001)? Nothing of it was committed: it may run again."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    return getattr(cause, "sqlstate", None) in ("40001", "40P01")


def _retried(write: Callable[_P, _T]) -> Callable[_P, _T]:
    """``write`` run again (up to _RETRIES times) while the server picks its transaction as a
    deadlock's victim: writers lock in one order (_locks), but statements of a write may still
    meet, e.g. two flushes renewing leases, or value rows two writers insert."""

    @functools.wraps(write)
    def again(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for n in range(1, _RETRIES + 1):
            try:
                return write(*args, **kwargs)
            except StoreError as exc:
                if n == _RETRIES or not _victim(exc):
                    raise
                time.sleep(random.uniform(0, 0.002 * n))  # not again in lockstep with the other
        raise AssertionError("unreachable")

    return again


class PostgresStore(_Writes):
    """A tether database on PostgreSQL, named by its URL (``postgresql://user@host/db``).
    Cheap to create; connects (and migrates) on first use."""

    # the writes the SQLite store defines itself run unchanged here (same statements, same dialect)
    request_cancel = _retried(SQLiteStore.request_cancel)
    cancel_children = _retried(SQLiteStore.cancel_children)
    _cancel_one = SQLiteStore._cancel_one
    recover = _retried(SQLiteStore.recover)
    interrupt_own = _retried(SQLiteStore.interrupt_own)
    register_worker = _retried(SQLiteStore.register_worker)
    unregister_worker = _retried(SQLiteStore.unregister_worker)
    _hand_over = SQLiteStore._hand_over
    # and the others' writes, run again when the server ends one to break a deadlock
    start = _retried(_Writes.start)
    new_attempt = _retried(_Writes.new_attempt)
    claim = _retried(_Writes.claim)
    flush = _retried(_Writes.flush)
    finish = _retried(_Writes.finish)
    put_checkpoint = _retried(_Writes.put_checkpoint)
    put_checkpoints = _retried(_Writes.put_checkpoints)
    retry_wait = _retried(_Writes.retry_wait)
    next_try = _retried(_Writes.next_try)
    park = _retried(_Writes.park)
    collect_files = _retried(_Writes.collect_files)

    def __init__(self, url: str, pool_size: int = 32) -> None:  # no super().__init__: no file here
        _psycopg()  # missing: say how to install it now, not at the first use
        self.url = url
        self.location = redact(url)
        """The database's URL without its password: its identity (``str(store.path)`` too)."""
        self.path = _identity(self.location)
        self.write_lock = threading.RLock()
        self.runner: Any = None
        self._pool_size = pool_size
        self._pool: ConnectionPool[Any] | None = None
        self._local = threading.local()
        self._conns: dict[Any, threading.Thread] = {}  # raw connection -> the thread holding it
        self._open_lock = threading.Lock()
        self._ready = False
        self._closed = False
        self.files = _PGFiles(self)
        _pg_stores.add(self)

    def __repr__(self) -> str:
        return f"<tether.Store {self.location!r}>"

    def set_durability(self, durability: str) -> None:
        """Accepted for the SQLite store's sake: a PostgreSQL commit is as durable as the
        server's ``synchronous_commit`` makes it."""
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")

    def _fail(self, what: str, exc: BaseException | str | None = None, fix: str = "") -> StoreError:
        detail = f": {exc}" if exc else ""
        tail = f" {fix}" if fix else ""
        return StoreError(f"tether database {self.location!r} {what}{detail}.{tail}")

    def _error(self, exc: BaseException) -> StoreError:
        """A psycopg error as a StoreError that says what to do (transient: worth retrying)."""
        if isinstance(exc, StoreError):
            return exc
        psycopg = _psycopg()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            err = self._fail(f"stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s", text)
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return self._fail(
                "refused a statement", text, fix="Grant the user the privileges docs/postgres.md lists."
            )
        elif isinstance(exc, psycopg.OperationalError):
            err = self._fail(
                "could not be reached",
                text,
                fix="Check that the server runs and the URL (host, port, user, database) is right.",
            )
        elif getattr(exc, "sqlstate", None) in ("40001", "40P01"):
            err = self._fail("ended this write, which met another writer's locks in a cycle", text)
        elif isinstance(exc, psycopg.errors.DiskFull):
            err = self._fail("cannot grow: the server's disk is full", text)
        else:
            return self._fail("could not be used", text)
        err.transient = True
        return err

    def exists(self) -> bool:
        """Is there a tether database at this URL, asked without creating or migrating it: the
        server's database exists and holds tether's tables. An unreachable server (or one that
        refuses the user) is a StoreError."""
        psycopg = _psycopg()
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=int(BUSY_TIMEOUT_S)) as raw:
                row = raw.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
        except psycopg.errors.InvalidCatalogName:
            return False  # no such database on the server
        except psycopg.Error as exc:
            if "does not exist" in str(exc) and "database" in str(exc):  # libpq's connect message
                return False
            raise self._error(exc) from exc
        return bool(row and row[0])

    # -- connections ---------------------------------------------------------------------------

    def _open(self) -> None:
        """Connect once, check and migrate the schema, then start the pool."""
        psycopg = _psycopg()
        from psycopg_pool import ConnectionPool

        if self._closed:
            raise self._fail("is closed", fix="Call tether.configure() again to reopen it.")
        try:
            raw = psycopg.connect(self.url, autocommit=True, connect_timeout=int(BUSY_TIMEOUT_S))
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        try:
            with self.guard():
                _configure(raw)
                _migrate(self, _Conn(raw, self))
        finally:
            raw.close()
        self._pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True},
            configure=_configure,
            check=ConnectionPool.check_connection,
            timeout=BUSY_TIMEOUT_S,
            name=f"tether {self.location}",
            open=True,
        )

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (connecting and migrating on first use).

        Typed as sqlite3's: it takes the same calls in the same dialect (_Conn)."""
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed and not conn.raw.closed:
            return cast(sqlite3.Connection, conn)
        if conn is not None:  # broken (the server went away): the pool drops it
            self.release_conn()
        if self._closed:
            raise self._fail("is closed", fix="Call tether.configure() again to reopen it.")
        if not self._ready or self._pool is None:
            with self.write_lock:
                if not self._ready or self._pool is None:
                    self._open()
                    self._ready = True
        return cast(sqlite3.Connection, self._checkout())

    def _checkout(self) -> _Conn:
        pool = self._pool
        assert pool is not None
        with self._open_lock:  # connections of threads that ended without giving theirs back
            dead = [c for c, t in self._conns.items() if not t.is_alive()]
            for c in dead:
                del self._conns[c]
        for c in dead:
            self._give_back(c)
        try:
            raw = pool.getconn()
        except Exception as exc:
            err = self._fail(
                f"had no free connection for {BUSY_TIMEOUT_S:.0f} s", exc, fix="Raise the pool size."
            )
            err.transient = True
            raise err from exc
        with self._open_lock:
            self._conns[raw] = threading.current_thread()
        conn = _Conn(raw, self)
        self._local.conn = conn
        return conn

    def _give_back(self, raw: Any) -> None:
        """Return a connection to the pool: one left in a transaction is rolled back (the pool
        does so), a broken one is dropped."""
        pool = self._pool
        try:
            if pool is not None:
                pool.putconn(raw)
            else:
                raw.close()
        except Exception:
            pass

    def _reconnect(self, conn: _Conn) -> bool:
        """Give ``conn``'s broken session back (the pool drops it) and put a new one in it."""
        pool = self._pool
        if pool is None or self._closed:
            return False
        with self._open_lock:
            self._conns.pop(conn.raw, None)
        self._give_back(conn.raw)
        try:
            raw = pool.getconn()
        except Exception:
            return False
        with self._open_lock:
            self._conns[raw] = threading.current_thread()
        conn.raw = raw
        return True

    def release_conn(self) -> None:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._open_lock:
            mine = self._conns.pop(conn.raw, None) is not None
        if mine:
            self._give_back(conn.raw)

    def close(self) -> None:
        """Give back every connection and close the pool; the store refuses work afterwards.
        A connection a live thread still holds is closed when that thread gives it back."""
        with self.write_lock:
            self._closed = True
            self.release_conn()
            with self._open_lock:
                conns, self._conns = self._conns, {}
            for raw, t in conns.items():
                if not t.is_alive():
                    self._give_back(raw)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close(timeout=5)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """psycopg's errors become StoreError with a message that says what to do."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("psycopg", "psycopg_pool")):
                raise self._error(exc) from exc
            raise

    @contextmanager
    def tx(self, scope: Scope = WHOLE) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the locks of ``scope`` (what it touches; see
        ``_locks``), serialised with the writes of this process.

        A kernel interrupt is held back from the moment the process's write lock is ours until
        COMMIT or ROLLBACK ran (tether._interrupts): the connection never goes back to the pool,
        nor stays with this thread, inside a transaction."""
        conn = cast(_Conn, self.conn())
        with _interrupts.critical():
            self._lock_for_write()
            try:
                conn.rollback()  # never build on a transaction some failure left open
                try:
                    self._begin_write(conn, scope)
                    yield cast(sqlite3.Connection, conn)
                except BaseException:
                    conn.rollback()
                    raise
                try:
                    conn.raw.execute("COMMIT")
                except Exception as exc:
                    conn.rollback()
                    raise self._error(exc) from exc
            finally:
                self.write_lock.release()

    def write_run(self, run_id: str, sql: str, args: Sequence[Any]) -> int:
        """One statement writing rows of the run ``run_id`` (fenced by its own condition), in a
        transaction of its own holding the run's lock: the number of rows it changed."""
        with self.tx(Scope(runs=[run_id])) as conn:
            return int(conn.execute(sql, args).rowcount)

    def _begin_write(self, conn: _Conn, scope: Scope) -> None:
        """BEGIN and the locks of ``scope``, in one round trip (a claim: two). Waiting for a
        lock is queued in the server (woken as soon as it is free); the main thread waits in
        slices (a transaction-local lock_timeout) so that a recorded interrupt is delivered
        between them, while nothing is held."""
        psycopg = _psycopg()
        main = _interrupts.in_main_thread()
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        fresh = False  # a session found gone at BEGIN is replaced once (nothing was sent in it)
        while True:
            try:
                conn.raw.execute(_locks(conn.raw, scope, main))
                if scope.claim is not None:
                    self._lock_claim(conn, scope, main)
                return
            except RowTaken:
                conn.rollback()
                raise
            except psycopg.errors.LockNotAvailable as exc:
                conn.rollback()
                if not main or time.monotonic() > deadline:
                    raise self._error(exc) from exc
            except Exception as exc:
                conn.rollback()
                if fresh or not (conn.raw.closed and self._reconnect(conn)):
                    raise self._error(exc) from exc
                fresh = True
            _interrupts.safe_point()

    @staticmethod
    def _lock_claim(conn: _Conn, scope: Scope, main: bool) -> None:
        """A claim's row, after its pipeline's lock (_locks): another claimer of it is waited
        for, or with ``skip_locked`` left to it (RowTaken: claim another run)."""
        raw = conn.raw
        skip = " SKIP LOCKED" if scope.skip_locked else ""
        got = raw.execute(f"SELECT 1 FROM runs WHERE id = %s FOR UPDATE{skip}", (scope.claim,)).fetchone()
        if got is None and scope.skip_locked:
            raise RowTaken(scope.claim)
        if main:  # the body's statements wait as long as any thread's
            raw.execute(f"SET LOCAL lock_timeout = '{_WAIT_MS}ms'")

    # -- what PostgreSQL says otherwise --------------------------------------------------------

    @staticmethod
    def _param_where(name: str, value: Any) -> tuple[str, list[Any]]:
        """jsonb equality is JSON's: ``true`` is not ``1``, ``3 == 3.0``; damaged params (not
        JSON) read as NULL and match nothing."""
        _param_test(value)  # the same TypeError as SQLite's for a value that is no JSON value
        return "(tether_jsonb(params) -> ?) = CAST(? AS jsonb)", [name, codec.dumps(value)]

    def newest(self, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
        out: dict[str, tuple[str, int, str]] = {}
        keys = list(dict.fromkeys(keys))
        with self.guard():
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = self.conn().execute(
                    "SELECT DISTINCT ON (key) key, attempt, id, status FROM runs WHERE key IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY key, attempt DESC",
                    chunk,
                )
                for key, attempt, run_id, status in rows:
                    out[key] = (str(run_id), attempt, str(status))
        return out


def _locks(raw: psycopg.Connection[Any], scope: Scope, main: bool) -> bytes:
    """The statements that begin a write transaction of ``scope`` and take its locks, always in
    this order (so that two writers never wait for each other in a cycle): the database's lock,
    exclusive for a write of the whole database (``Scope()``: cancels, recovery, ``tether gc``),
    shared otherwise; then one lock per key a start may make a run for (``hash('k:' + key)``);
    then a claim's pipeline lock (``hash('p:' + pipeline)``), if a ``concurrency`` limits it: the
    count of its running runs and the claim are one decision among claimers; then the rows the
    write changes, ``FOR UPDATE`` in id order (a claim's: PostgresStore._lock_claim). Sent as one
    simple query: literals, not parameters."""
    from psycopg import sql

    parts = ["BEGIN"]
    if main:
        parts.append(f"SET LOCAL lock_timeout = '{_SLICE_MS}ms'")
    shared = "" if scope.whole else "_shared"
    parts.append(f"SELECT pg_advisory_xact_lock{shared}({_WRITE_LOCK})")
    for key in sorted(set(scope.keys)):
        name = sql.Literal(("k:" + key).replace("\x00", "\ufffd")).as_string(raw)
        parts.append(f"SELECT pg_advisory_xact_lock(hashtextextended({name}, 0))")
    if scope.claim is not None:  # a run's pipeline and concurrency never change
        run = sql.Literal(scope.claim).as_string(raw)
        parts.append(
            "SELECT pg_advisory_xact_lock(hashtextextended('p:' || pipeline, 0)) FROM runs "
            f"WHERE id = {run} AND concurrency IS NOT NULL"
        )
    ids = sorted(set(scope.runs))
    if ids:
        listed = ", ".join(sql.Literal(i).as_string(raw) for i in ids)
        parts.append(f"SELECT 1 FROM runs WHERE id IN ({listed}) ORDER BY id FOR UPDATE")
    if main and scope.claim is None:  # the body's statements wait as long as any thread's
        parts.append(f"SET LOCAL lock_timeout = '{_WAIT_MS}ms'")
    return "; ".join(parts).encode()


def _migrate(store: PostgresStore, conn: _Conn) -> None:
    """Check the schema and apply the migrations it lacks, in one transaction under the
    schema's advisory lock (processes opening a new database at once apply them once)."""
    raw = conn.raw
    raw.execute("BEGIN")
    try:
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        tables = {
            r[0]
            for r in raw.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        }
        if "runs" in tables and MIGRATIONS_TABLE not in tables:
            raise store._fail(
                "has a table named runs but is not a tether database; it was left untouched",
                fix="Use another database or schema (e.g. ?options=-csearch_path%3Dtether in the URL).",
            )
        raw.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (seq BIGINT GENERATED ALWAYS AS IDENTITY, "
            "migration_set TEXT NOT NULL, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL, "
            "PRIMARY KEY (migration_set, name))"
        )
        applied = [
            r[0]
            for r in raw.execute(
                f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = %s ORDER BY seq",
                (_schema.MIGRATION_SET,),
            )
        ]
        unknown = [n for n in applied if n not in _schema.KNOWN]
        if unknown:
            raise store._fail(
                f"was written by a newer tether (schema {unknown[-1]!r}); it was left untouched",
                fix="Upgrade tether (pip install -U tether) to use it.",
            )
        for name in _schema.KNOWN:
            if name in applied:
                continue
            for statement in _pg_dialect.pg_migration(name):
                raw.execute(statement)
            raw.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (migration_set, name, applied_at) VALUES (%s, %s, %s)",
                (_schema.MIGRATION_SET, name, time.time()),
            )
        raw.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


# Every PostgresStore of this process, for the fork hook below.
_pg_stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
# What a forked child inherited: never used, never closed, never collected (a collected psycopg
# connection ends its session, which is the parent's).
_inherited: list[Any] = []


def _after_fork() -> None:
    """In a forked child, every PostgresStore forgets the parent's pool and connections (their
    sockets are the parent's sessions); the child makes its own pool on first use."""
    for st in list(_pg_stores):
        _inherited.extend([st._pool, st._local, *st._conns])
        st._pool = None
        st._local = threading.local()
        st._conns = {}
        st.write_lock = threading.RLock()
        st._open_lock = threading.Lock()
        st.runner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


if TYPE_CHECKING:  # mypy proves the PostgreSQL class implements the protocol

    def _implements(store: PostgresStore) -> Store:
        return store

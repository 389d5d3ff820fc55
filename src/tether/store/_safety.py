"""File safety: what a tether database file must be before SQLite writes to it (a regular
file of this user, a whole SQLite database, not recreated behind anyone's back), checked
without ever opening a descriptor of it outside SQLite."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError

# SQLite's primary result codes (sqlite3.h) that tether tells apart
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL = 5, 6, 8, 10, 13
_BY_TEXT = (  # Python 3.10 gives only the message: the code by a fragment of SQLite's text
    ("locked", SQLITE_BUSY),
    ("busy", SQLITE_BUSY),
    ("full", SQLITE_FULL),
    ("readonly", SQLITE_READONLY),
    ("disk I/O", SQLITE_IOERR),
)


def _primary(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (None: not known, or not SQLite's error)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return int(code) & 0xFF
    text = str(exc)
    for fragment, primary in _BY_TEXT:
        if fragment in text:
            return primary
    return None


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


class _Busy(Exception):
    """Opening hit a lock another process holds; try again."""


class _FileChecks:
    """The checks of the database file at ``path``, before and while it is used."""

    path: Path
    _allow_foreign: Callable[[], bool]

    def _fail(self, what: str, exc: BaseException | None = None, fix: str = "") -> StoreError:
        detail = f": {exc}" if exc else ""
        tail = f" {fix}" if fix else ""
        return StoreError(f"tether database {str(self.path)!r} {what}{detail}.{tail}")

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

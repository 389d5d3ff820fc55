"""File safety: what a tether database file must be before SQLite writes to it (a regular
file of this user, a whole SQLite database, on a local filesystem, not recreated behind anyone's
back), checked without ever opening a descriptor of it outside SQLite."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
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


# Filesystem types (as /proc/self/mountinfo and psutil name them) on which SQLite's WAL is unsafe:
# its index is shared memory (an mmap of the -shm file) that processes on different hosts do not
# share, and POSIX locks there are missing, local to one client or unreliable. SQLite's WAL page:
# "WAL does not work over a network filesystem". A module constant, read at each open: tests
# extend it (in a child process) to exercise the refusal on a filesystem they can mount.
NETWORK_FS = frozenset(
    {
        "nfs", "nfs4",  # Linux, macOS
        "cifs", "smb3", "smbfs",  # SMB: Linux (cifs, smb3), macOS (smbfs)
        "ncpfs", "afpfs", "webdav", "davfs",
        "9p",  # also WSL2's drvfs (/mnt/c) and some VM shares
        "afs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "orangefs", "pvfs2",
        "fuse.sshfs", "sshfs", "fuse.ceph-fuse", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse",
        "fuse.rclone", "fuse.juicefs", "fuse.mountpoint-s3",
        "remote",  # Windows: a network drive (psutil's "remote" option; _mounts names it so)
    }
)  # fmt: skip

_ESCAPED = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """A mountinfo field: the kernel writes space, tab, newline and backslash as octal (\\040)."""
    return os.fsdecode(_ESCAPED.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(text: bytes) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of /proc/<pid>/mountinfo, in its order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        # id parent major:minor root mount-point options [optional fields...] - type source super
        try:
            sep = fields.index(b"-", 6)
            mounts.append((_unescape(fields[4]), _unescape(fields[sep + 1])))
        except (ValueError, IndexError):
            continue
    return mounts


def _mounts() -> list[tuple[str, str]]:
    """This process's mounts: /proc/self/mountinfo on Linux (exact, this mount namespace's),
    else psutil's. [] when neither answers: nothing is refused then."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                return parse_mountinfo(f.read())
        except OSError:
            pass
    return _psutil_mounts()


def _psutil_mounts() -> list[tuple[str, str]]:
    """psutil's mount table: macOS and BSD (the fstype of getfsstat; os.statvfs has none),
    Windows (a drive with the "remote" option is a network one), Linux without /proc."""
    try:
        import psutil

        return [
            (p.mountpoint, "remote" if "remote" in p.opts.split(",") else p.fstype)
            for p in psutil.disk_partitions(all=True)
        ]
    except Exception:  # psutil has no answer on this platform, or a mount table it can't read
        return []


def _under(path: str, mount_point: str) -> bool:
    if path == mount_point:
        return True
    return path.startswith(mount_point if mount_point.endswith(os.sep) else mount_point + os.sep)


def mount_of(
    path: str | os.PathLike[str], mounts: list[tuple[str, str]] | None = None
) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding ``path`` (which need not exist yet:
    its nearest existing folder decides), symbolic links resolved. The longest mount point that
    is a prefix wins; of equal ones the last (a mount stacked over another). None: not known."""
    real = os.path.normcase(os.path.realpath(path))
    best: tuple[str, str] | None = None
    for mount_point, fstype in _mounts() if mounts is None else mounts:
        if _under(real, os.path.normcase(mount_point)) and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, fstype)
    return best


def missing_database(path: object) -> StoreError:
    """The error of a read that needs an existing database (the CLI's): a typo must not create
    an empty one."""
    return StoreError(
        f"tether database {str(path)!r} does not exist;",
        "pass {db} (or set TETHER_DB) to point at the runs.db your notebook uses",
    )


class _Busy(Exception):
    """Opening hit a lock another process holds; try again."""


class _FileChecks:
    """The checks of the database file at ``path``, before and while it is used."""

    path: Path
    _allow_foreign: Callable[[], bool]
    _allow_network_fs: Callable[[], bool]

    def _fail(self, what: str, exc: BaseException | None = None, fix: str = "") -> StoreError:
        """``fix`` names settings as ``{db}`` (see StoreError): each front end words them."""
        detail = f": {exc}" if exc else ""
        return StoreError(f"tether database {str(self.path)!r} {what}{detail}.", fix)

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
                "or choose another path with {db} or TETHER_DB.",
            ) from None
        except OSError as exc:
            raise self._fail(
                "cannot be reached",
                exc,
                fix="Choose another path with {db} or TETHER_DB.",
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
                "{db} or TETHER_DB, or if you trust its owner allow it with "
                "{allow_foreign_db}.",
            )

    def _check_filesystem(self) -> None:
        """Refuse a database on a network filesystem (NETWORK_FS), before anything is created or
        opened there. Once per store open: one read of the mount table."""
        if self._allow_network_fs():
            return
        mount = mount_of(self.path)
        if mount is None or mount[1] not in NETWORK_FS:
            return
        mount_point, fstype = mount
        raise self._fail(
            f"is on a network filesystem ({fstype}, mounted at {mount_point!r}); nothing was written there",
            fix="SQLite's locks and the shared memory of its WAL do not work across machines on "
            "such a filesystem: processes on two hosts using the file can corrupt it or lose runs. "
            "Keep it on a local disk: {db} or TETHER_DB=/local/path/runs.db "
            "or, to share runs across machines, a PostgreSQL server: "
            "TETHER_DB=postgresql://user@host/database (pip install 'tether[postgres]'). If "
            "every process that uses this file runs on this one machine, allow it with "
            "{allow_network_fs}.",
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
                fix="Choose a writable location with {db} or TETHER_DB.",
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
                    fix="Point tether at another file with {db}.",
                ) from exc
            if _errname(exc) == "SQLITE_CANTOPEN":
                raise self._fail(
                    "cannot be read (permission denied?)",
                    exc,
                    fix="It must be readable and writable by you (chmod u+rw); or "
                    "choose another path with {db}.",
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
                fix="Restore a backup or use {db}.",
            )

"""Large values beside the database: content-addressed files in ``<db>.artifacts/``.

A value larger than ``codec.INLINE_MAX`` keeps its bulk (array buffers, Arrow streams, a large
JSON text) in files named by the SHA-256 of their content, ``<db>.artifacts/ab/cdef…``; the row
keeps the digest and the size. A file is written to a temporary name and renamed, mode 0600 in
0700 folders; two values with the same content share one file. Reading checks the size and the
digest: a missing, cut or altered file is a StoreError naming the run and the file, never a
wrong value.

Files are written before the transaction that stores the row referring to them, and checked
again inside it: ``tether gc`` deletes unreferenced files inside a write transaction, so a file it
deleted meanwhile is written again before the row is committed.

The database runs with ``synchronous=NORMAL`` by default (no fsync per commit; ``durability="full"``
gives one), and files are not fsynced at either level: after a power cut the newest rows may be
rolled back, and a file that did not reach the
disk reads as damaged (a StoreError), never as another value.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import StoreError

__all__ = ["Artifacts"]

_CHUNK = 64 << 20  # bytes per write() call
_READ_CHUNK = 8 << 20  # bytes per readinto(): hashed by a helper thread while the next is read
_TMP = ".tmp-"
TMP_GRACE_S = 3600.0  # a temporary file older than this is a crashed writer's: gc removes it
_TRANSIENT = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EAGAIN}


class _Overlapped:
    """SHA-256 of chunks given in order, each hashed by a helper thread while the caller reads the
    next one: hashing and reading both release the GIL, so a large file costs about the longer
    of the two rather than their sum. Small inputs are hashed inline."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._busy: threading.Thread | None = None

    def update(self, chunk: memoryview) -> None:
        if self._busy is not None:
            self._busy.join()
            self._busy = None
        if len(chunk) < _READ_CHUNK:
            self._hash.update(chunk)
            return
        self._busy = threading.Thread(
            target=self._hash.update, args=(chunk,), daemon=True, name="tether-hash"
        )
        self._busy.start()

    def hexdigest(self) -> str:
        if self._busy is not None:
            self._busy.join()
            self._busy = None
        return self._hash.hexdigest()


def _hex(name: str) -> bool:
    return all(c in "0123456789abcdef" for c in name)


class Artifacts:
    """The files of one database (``<db>.artifacts``). Holds no state but its paths."""

    def __init__(self, db_path: Path, pipeline_of: Callable[[str], str | None] | None = None) -> None:
        self.db_path = db_path
        self.root = Path(f"{db_path}.artifacts")
        self.pipeline_of = pipeline_of  # run id -> its pipeline's name (the store's lookup)

    def empty(self) -> bool:
        """Is there certainly no file to collect (no folder of them yet)?"""
        return not self.root.exists()

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    # -- writing -------------------------------------------------------------------------------

    def _error(self, what: str, exc: OSError) -> StoreError:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        err = StoreError(
            f"tether could not {what} in {str(self.root)!r}"
            + (f": the disk is full ({exc})" if full else f": {exc}")
            + ". Free some space, or make the folder writable by you."
        )
        err.transient = exc.errno in _TRANSIENT
        return err

    def put(self, files: Mapping[str, Any]) -> None:
        """Write each (digest -> bytes) file that is not there yet (or has the wrong size)."""
        for digest, data in files.items():
            final = self.path(digest)
            size = memoryview(data).nbytes
            try:
                if os.stat(final).st_size == size:
                    continue  # the same content, stored by this or another run
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._error("reach a value's file", exc) from exc
            self._write(final, data)

    def write(self, data: Any) -> str:
        """Write a new file of ``data``, hashing it while it is written; returns its SHA-256.
        Content already stored is not stored twice."""
        view = memoryview(data).cast("B")
        tmp = self.root / f"{_TMP}{os.getpid()}-{os.urandom(4).hex()}"
        hasher = _Overlapped()
        try:
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                done = 0
                while done < len(view):
                    chunk = view[done : done + _READ_CHUNK]
                    hasher.update(chunk)  # hashed by a helper thread meanwhile
                    while chunk:
                        n = os.write(fd, chunk)
                        chunk = chunk[n:]
                    done += _READ_CHUNK
            finally:
                os.close(fd)
            digest = hasher.hexdigest()
            final = self.path(digest)
            try:
                if os.stat(final).st_size == len(view):
                    os.unlink(tmp)  # the same content is there already
                    return digest
            except FileNotFoundError:
                pass
            try:
                os.mkdir(final.parent, 0o700)
            except FileExistsError:
                pass
            os.replace(tmp, final)
            return digest
        except OSError as exc:
            hasher.hexdigest()  # the helper thread is done with the buffer
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._error("store a value's file", exc) from exc

    def ensure(self, files: Mapping[str, Any]) -> None:
        """Inside the write transaction that refers to ``files``: write again any that a
        ``tether gc`` removed after put() (gc deletes inside a write transaction too)."""
        missing = {d: data for d, data in files.items() if not os.path.exists(self.path(d))}
        if missing:
            self.put(missing)

    def _write(self, final: Path, data: Any) -> None:
        folder = final.parent
        tmp = folder / f"{_TMP}{os.getpid()}-{os.urandom(4).hex()}"
        try:
            for where in (self.root, folder):
                try:
                    os.mkdir(where, 0o700)
                except FileExistsError:
                    pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                view = memoryview(data).cast("B")
                while view:
                    n = os.write(fd, view[:_CHUNK])
                    view = view[n:]
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._error("store a value's file", exc) from exc

    # -- reading -------------------------------------------------------------------------------

    def read(self, digest: str, size: int, where: str, into: Any = None) -> Any:
        """The content of file ``digest`` (a bytearray, or ``into`` filled), checked against its
        size and digest; StoreError naming ``where`` and the file otherwise."""
        if len(digest) != 64 or not _hex(digest):
            raise StoreError(
                f"{where} refers to a file named {digest!r:.80}, which is not a "
                "SHA-256; the database is damaged; it was left untouched"
            )
        path = self.path(digest)
        fix = (
            "the value cannot be read back; restore the file from a backup, or start a "
            "new attempt with run.rerun()"
        )
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise StoreError(
                f"{where} refers to the file {str(path)!r} ({size} bytes), which is missing; {fix}"
            ) from None
        except OSError as exc:
            raise StoreError(
                f"{where} refers to the file {str(path)!r}, which cannot be read: {exc}"
            ) from None
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise StoreError(
                    f"{where} refers to the file {str(path)!r}, which holds {actual} "
                    f"bytes, not {size} (cut or altered); {fix}"
                )
            out = into if into is not None else bytearray(size)
            view = memoryview(out).cast("B")
            hasher = _Overlapped()
            got = 0
            with open(fd, "rb", buffering=0, closefd=False) as f:
                while got < size:
                    n = f.readinto(view[got : got + _READ_CHUNK])
                    if not n:
                        break
                    hasher.update(view[got : got + n])
                    got += n
            if got != size:
                raise StoreError(
                    f"{where} refers to the file {str(path)!r}, which ended after "
                    f"{got} of {size} bytes; {fix}"
                )
        except OSError as exc:
            raise StoreError(
                f"{where} refers to the file {str(path)!r}, which cannot be read: {exc}"
            ) from None
        finally:
            os.close(fd)
        if hasher.hexdigest() != digest:
            raise StoreError(
                f"{where} refers to the file {str(path)!r}, whose content does not "
                f"match its SHA-256 (damaged or altered); {fix}"
            )
        return out

    def check_pickle(self, where: str, run_id: str, digest: str | None = None) -> None:
        """Unpickling runs code: only a value of a pipeline that this process defined with
        ``serializer="pickle"``, from a database (and file) owned by the current user."""
        from . import codec

        pipeline = self.pipeline_of(run_id) if self.pipeline_of is not None else None
        if not codec.pickle_allowed(pipeline):
            raise StoreError(
                f"{where} holds a pickle, and tether unpickles only the values of a pipeline "
                f"defined in this process with serializer='pickle': define pipeline "
                f"{pipeline!r} (run the cell or import the module that defines it) first"
            )
        if not hasattr(os, "geteuid"):
            return
        me = os.geteuid()
        for path in (self.db_path, *([self.path(digest)] if digest else [])):
            try:
                uid = os.stat(path).st_uid
            except OSError as exc:
                raise StoreError(
                    f"{where} holds a pickle, and {str(path)!r} cannot be checked: {exc}"
                ) from None
            if uid != me:
                raise StoreError(
                    f"{where} holds a pickle, and {str(path)!r} is owned by another user (uid "
                    f"{uid}), not by you (uid {me}): tether unpickles only what you own, since "
                    "unpickling runs code (allow_foreign_db does not change this)"
                )

    # -- garbage collection --------------------------------------------------------------------

    def collect(self, referenced: set[str], now: float | None = None) -> tuple[int, int]:
        """Remove the files no digest in ``referenced`` names, and temporary files older than
        TMP_GRACE_S. Call inside a write transaction. Returns (files removed, bytes freed)."""
        now = time.time() if now is None else now
        removed = freed = 0
        try:
            folders = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return 0, 0
        for sub in ["", *folders]:  # temporary files of write() are in the root
            if sub and (len(sub) != 2 or not _hex(sub)):
                continue
            folder = self.root / sub
            try:
                names = os.listdir(folder)
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                path = folder / name
                if name.startswith(_TMP):
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    if now - st.st_mtime < TMP_GRACE_S:
                        continue  # being written
                elif not sub or len(name) != 62 or not _hex(name) or sub + name in referenced:
                    continue
                else:
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed += 1
                freed += st.st_size
        return removed, freed

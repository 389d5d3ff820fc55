"""Copying a SQLite store into a PostgreSQL one (``tether migrate --to postgresql://...``).

What is copied: every run (all its columns), its events and checkpoints (map items too), and the
value files its result and checkpoints refer to (``<db>.artifacts/`` beside the SQLite file) as
rows of ``tether_files``. Not copied: the ``workers`` table (a worker registers itself where it
serves). The SQLite store is only read, except that runs whose owners are gone are first marked
interrupted there (recovery), so that both stores say the same.

Each run is copied in one PostgreSQL transaction (its row, events, checkpoints and files): a run
is in the target whole or not at all. One transaction for the whole store would hold the team
database's write lock (every writer of every host waits for it) for as long as the copy of
gigabytes of events and files takes; per run, others wait for one run's copy at most, and a copy
cut short (a lost connection, Ctrl-C) leaves only whole runs behind, which the next migrate skips.

Before anything is written, every run is compared with the target: a run already there is skipped
(a second migrate copies nothing), also when it changed there since (same id, key, attempt,
pipeline, params and creation time, updated there no earlier than in the file: a pending run a
worker on PostgreSQL executed); one there with other content (another run under its id, or
under its key and attempt, or one the file has changed since) stops the migrate with a
StoreError, nothing written.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .. import codec
from ..errors import StoreError
from ..model import Owner, RunRecord
from .protocol import GoneCheck

if TYPE_CHECKING:
    from .postgres import PostgresStore, _Conn, _PGFiles
    from .sqlite import SQLiteStore

__all__ = ["Migration", "migrate"]

_EVENT_COLS = "run_id, seq, ts, kind, phase, data"
_CHECKPOINT_COLS = "run_id, name, value, ts"
_SHOWN = 10  # runs named in an error's message
# what makes a run the same run: a target's row that differs in any other column is the same run
# changed there since it was copied (a pending run a worker there executed), if it is newer
_IDENTITY = {"id", "key", "attempt", "pipeline", "params", "created_at"}


@dataclass
class Migration:
    """What ``migrate()`` did: counts of what it copied, and what it did not copy and why."""

    runs: int = 0
    events: int = 0
    checkpoints: int = 0
    files: int = 0
    bytes: int = 0
    present: int = 0
    """Runs already in the target with the same content (not copied again)."""
    interrupted: list[tuple[str, str]] = field(default_factory=list)
    """(run id, why): active runs whose owners are gone, marked interrupted before the copy."""
    pending: list[str] = field(default_factory=list)
    """Ids of pending runs no process owns (waiting for a ``tether worker``), copied as pending."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(run id, or ``file <sha256>``, why): what was not copied (a damaged row the target
    refuses, a value file missing beside the SQLite database)."""


def _fix_text(value: Any) -> Any:
    """A value as PostgreSQL stores it (its text holds no U+0000: tether stores U+FFFD)."""
    return value.replace("\x00", "\ufffd") if type(value) is str else value


def _at_least(there: Any, here: Any) -> bool:
    """Was the target's row written at or after the SQLite one (a damaged time: no)?"""
    return isinstance(there, (int, float)) and isinstance(here, (int, float)) and there >= here


def _live(src: SQLiteStore, gone: GoneCheck) -> tuple[list[RunRecord], list[str]]:
    """Active runs of ``src`` whose owner may be alive, and live ``tether worker``s serving it
    (they would go on writing to the SQLite file)."""
    now = time.time()
    runs = [r for r in src.active() if r.owner is not None and not gone(r.owner, r.lease_until, now)]
    workers = []
    for host, pid, started, instance, ns, lease, pipeline in src.conn().execute(
        "SELECT host, pid, started, instance, ns, lease_until, pipeline FROM workers WHERE lease_until > ?",
        (now,),
    ):
        if not gone(Owner(host, pid, started, instance, ns), lease, now):
            workers.append(f"pid {pid} on {host} (pipeline {pipeline})")
    return runs, workers


def _refuse_live(src: SQLiteStore, runs: list[RunRecord], workers: list[str]) -> StoreError:
    named = [f"{r.id} ({r.pipeline}, {r.status}, pid {r.owner.pid if r.owner else '?'})" for r in runs]
    named += [f"tether worker {w}" for w in dict.fromkeys(workers)]
    more = f" and {len(named) - _SHOWN} more" if len(named) > _SHOWN else ""
    return StoreError(
        f"tether cannot migrate {str(src.path)!r} yet: processes still write to it: "
        + "; ".join(named[:_SHOWN])
        + more
        + ".",
        "Let those runs end (or cancel them with `tether cancel ID`) and stop those processes and "
        "workers, then migrate again; runs whose owners are gone are copied as interrupted.",
    )


def migrate(src: SQLiteStore, dst: PostgresStore, gone: GoneCheck) -> Migration:
    """Copy the runs of the SQLite store ``src`` (with their events, checkpoints and value files)
    into the PostgreSQL store ``dst``; ``gone`` judges owners (``tether.owner.gone_reason``).

    Idempotent: runs already in ``dst`` with the same content are skipped. StoreError, before
    anything is written, when ``src`` has active runs whose owners are alive (or live workers),
    or when ``dst`` holds a run of the same id (or key and attempt) with other content."""
    report = Migration()
    with src.guard():
        report.interrupted = [(rec.id, why) for rec, why in src.recover(src.active(), gone)]
        runs, workers = _live(src, gone)
    if runs or workers:
        raise _refuse_live(src, runs, workers)
    with src.guard():
        conn = src.conn()
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM runs ORDER BY rowid").fetchall()
    id_at, status_at, owner_at = (cols.index(c) for c in ("id", "status", "owner_instance"))
    todo = []
    for row in rows:
        if type(row[id_at]) is not str:
            report.skipped.append((repr(row[id_at]), "its id is not text (a damaged row)"))
            continue
        todo.append(row)
    todo = _compare(dst, cols, todo, report)
    for row in todo:
        try:
            copied = _copy_run(src, dst, cols, row, report)
        except StoreError as exc:
            if exc.transient:
                raise
            report.skipped.append((row[id_at], exc.problem))
            continue
        if copied and row[status_at] == "pending" and row[owner_at] is None:
            report.pending.append(row[id_at])
    return report


def _compare(dst: PostgresStore, cols: list[str], rows: list[Any], report: Migration) -> list[Any]:
    """The rows not yet in ``dst`` (counting those already there in ``report.present``);
    StoreError naming every run ``dst`` holds with other content, before anything is written."""
    id_at, key_at, attempt_at = cols.index("id"), cols.index("key"), cols.index("attempt")
    updated_at = cols.index("updated_at")
    conflicts: list[str] = []
    todo = []
    conn = dst.conn()
    with dst.guard():
        for i in range(0, len(rows), 500):
            chunk = rows[i : i + 500]
            ids = [r[id_at] for r in chunk]
            marks = ",".join("?" * len(ids))
            there = {
                r[0]: r
                for r in conn.execute(f"SELECT {', '.join(cols)} FROM runs WHERE id IN ({marks})", ids)
            }
            for row in chunk:
                have = there.get(row[id_at])
                if have is None:
                    todo.append(row)
                    continue
                changed = [c for c, a, b in zip(cols, row, have, strict=True) if _fix_text(a) != b]
                if changed and (set(changed) & _IDENTITY or not _at_least(have[updated_at], row[updated_at])):
                    conflicts.append(f"{row[id_at]} (differs in {', '.join(changed[:4])})")
                else:  # the same run; changed there since (run by a worker there, say) if at all
                    report.present += 1
        for row in todo:
            if type(row[key_at]) is not str or type(row[attempt_at]) is not int:
                continue  # a damaged row: its insert fails, and the run is reported not copied
            other = conn.execute(
                "SELECT id FROM runs WHERE key = ? AND attempt = ? AND id <> ?",
                (_fix_text(row[key_at]), row[attempt_at], row[id_at]),
            ).fetchone()
            if other is not None:
                conflicts.append(
                    f"{row[id_at]} (attempt {row[attempt_at]} of its key is run {other[0]} there)"
                )
    if conflicts:
        more = f" and {len(conflicts) - _SHOWN} more" if len(conflicts) > _SHOWN else ""
        raise StoreError(
            f"tether database {dst.location!r} already holds other runs under the ids or keys of "
            f"runs to copy: {'; '.join(conflicts[:_SHOWN])}{more}; nothing was copied.",
            "Migrate into an empty database (or schema), or delete those runs there first.",
        )
    return todo


def _copy_run(src: SQLiteStore, dst: PostgresStore, cols: list[str], row: Any, report: Migration) -> bool:
    """One run, its events, checkpoints and value files, in one transaction of ``dst``. False if
    it was there already. The run's files are held in memory meanwhile."""
    run_id = row[cols.index("id")]
    with src.guard():
        conn = src.conn()
        events = conn.execute(
            f"SELECT {_EVENT_COLS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
        checkpoints = conn.execute(
            f"SELECT {_CHECKPOINT_COLS} FROM checkpoints WHERE run_id = ?", (run_id,)
        ).fetchall()
    files, missing = _files(src, run_id, [row[cols.index("result")], *(c[2] for c in checkpoints)])
    with dst.tx() as out:
        if out.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None:
            report.present += 1  # another migrate copied it meanwhile (compared before)
            return False
        out.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})", row)
        _copy_rows(dst, out, "events", _EVENT_COLS, events)
        _copy_rows(dst, out, "checkpoints", _CHECKPOINT_COLS, checkpoints)
        have = cast("_PGFiles", dst.files)._present(list(files))
        new = {d: v for d, v in files.items() if d not in have}
        if new:
            dst.files.put(new)
    report.runs += 1
    report.events += len(events)
    report.checkpoints += len(checkpoints)
    report.files += len(new)
    report.bytes += sum(len(v) for v in new.values())
    report.skipped += missing
    return True


def _copy_rows(dst: PostgresStore, out: sqlite3.Connection, table: str, cols: str, rows: list[Any]) -> None:
    """``rows`` into ``table`` inside ``out``'s transaction, with COPY: a run's log may be
    millions of events, and COPY takes them faster than one INSERT each."""
    if not rows:
        return
    from .postgres import _no_nul

    raw = cast("_Conn", out).raw
    with dst.guard(), raw.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(_no_nul(row))


def _files(src: SQLiteStore, run_id: str, texts: list[Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The value files ``texts`` refer to, read and checked; and those that cannot be read
    (their references are copied as they are: reading them fails on PostgreSQL as on SQLite)."""
    found: dict[str, Any] = {}
    missing: list[tuple[str, str]] = []
    digests: set[str] = set()
    for text in texts:
        digests |= codec.references(text)
    for digest in sorted(digests):
        path = src.files.path(digest)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            missing.append((f"file {digest}", f"run {run_id} refers to it, and it is missing"))
            continue
        except OSError as exc:
            missing.append((f"file {digest}", f"run {run_id} refers to it, and it cannot be read: {exc}"))
            continue
        try:
            found[digest] = src.files.read(digest, size, f"run {run_id}")  # a checked bytearray
        except StoreError as exc:
            missing.append((f"file {digest}", exc.problem))
    return found, missing

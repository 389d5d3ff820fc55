"""`tether ls`: the listing table, and the lean process behind it.

A ``tether ls`` process starts through ``_tether_cli`` (the console script), which runs
:func:`main` here without tether's package ``__init__``: only the store, the owner check and the
table's formatting are imported, not the engine, pipelines or runs (~half of ``tether.cli``'s
import time). Everything else (``--json``, errors, the other commands) goes through ``tether.cli``.
The formatting helpers are the CLI's: ``tether show`` uses them too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from . import _text, config, owner
from ._params import params_text
from ._text import fmt_time, safe
from .errors import StoreError
from .model import ACTIVE, Owner, RunRecord, RunSummary, Status
from .store import SQLiteStore, Store, missing_database

__all__ = ["add_arguments", "duration", "existing_store", "listing", "main", "progress", "status_text"]

LS_PARAMS_CHARS = 60
DB_HELP = "database file (default: $TETHER_DB or ./.tether/runs.db)"
HEADER = ["ID", "PIPELINE", "#", "STATUS", "PHASE", "PROGRESS", "STARTED", "DURATION", "PARAMS"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `tether ls` (the full CLI's parser and the lean one share them)."""
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--pipeline")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--wide",
        action="store_true",
        help="show every param in full (the PARAMS column is clipped otherwise)",
    )


def existing_store(path: str | None, settings: config.Settings | None = None) -> Store:
    """A store of ``path`` (default: $TETHER_DB, else ./.tether/runs.db) that must exist already:
    a typo must not create an empty database. StoreError if it does not exist or cannot be
    reached. A ``postgresql://`` URL is a PostgresStore (psycopg loads only then)."""
    settings = settings or config.Settings()
    raw = path or config.db_setting(settings)[0]
    if config.is_postgres(raw):
        from .store.postgres import PostgresStore

        pg = PostgresStore(raw)
        if not pg.exists():
            raise missing_database(pg.path)
        return pg
    p = config.resolve(path) if path else config.resolve(*config.db_setting(settings))
    store = SQLiteStore(
        p,
        allow_foreign=lambda: config.foreign_db_allowed(settings),
        allow_network_fs=lambda: config.network_fs_allowed(settings),
    )
    store.set_durability(config.durability(settings))
    if not store.exists():
        raise missing_database(p)
    return store


# -- the listing ---------------------------------------------------------------------------------


def listing(store: Store, pipeline: str | None, status: str | None, limit: int | None) -> list[RunSummary]:
    """The listing's rows, newest first; listed active runs whose owner is proven gone are
    marked ``interrupted`` first (as ``Workspace.records`` does), so a dead run never shows as
    running. The owner check is a read: the records are read and recovered only when it finds one
    gone."""
    recs = store.summaries(pipeline=pipeline, status=status, limit=limit)
    if _any_gone([r for r in recs if r.status in ACTIVE]):
        listed = store.list_runs(pipeline=pipeline, status=status, limit=limit)
        if store.recover([r for r in listed if r.status in ACTIVE], owner.gone_reason):
            recs = store.summaries(pipeline=pipeline, status=status, limit=limit)
    return recs


def _any_gone(active: list[RunSummary]) -> bool:
    """Is the owner of one of ``active`` proven gone? Each owner is checked once (a kernel owns
    many runs); a check that cannot decide proves nothing, as in ``Store.recover``."""
    now = time.time()
    alive: set[tuple[Owner | None, float | None]] = set()
    for rec in active:
        if (rec.owner, rec.lease_until) in alive:
            continue
        try:
            if owner.gone_reason(rec.owner, rec.lease_until, now) is not None:
                return True
        except Exception:
            pass
        alive.add((rec.owner, rec.lease_until))
    return False


def table_text(recs: list[RunSummary], wide: bool) -> str:
    """The table `tether ls` prints (and its note on damaged rows), or ``no runs``."""
    if not recs:
        return "no runs"
    now = time.time()
    rows = [HEADER]
    rows += [
        [
            safe(r.id),
            safe(r.pipeline),
            str(r.attempt),
            status_text(r, now),
            safe(r.phase or "-"),
            progress(r),
            fmt_time(r.started_at or r.created_at),
            duration(r),
            _params(r, wide),
        ]
        for r in recs
    ]
    line = "  ".join(f"{{:<{max(map(len, column))}}}" for column in zip(*rows)).format
    text = "\n".join([line(*r).rstrip() for r in rows])
    damaged = sum(1 for r in recs if r.damaged)
    if damaged:
        text += (
            f"\n{damaged} damaged row(s) (edited by hand or by another tool?): "
            "`tether show ID` names the damaged columns"
        )
    return text


def _params(rec: RunSummary, wide: bool) -> str:
    """The PARAMS column: clipped (``--wide``: whole); a damaged column says so."""
    try:
        params = rec.params
    except StoreError:
        return "(damaged)"
    return safe(params_text(params, clip=not wide, limit=LS_PARAMS_CHARS)) or "-"


# -- columns `tether show` writes too --------------------------------------------------------------


def duration(rec: RunRecord | RunSummary) -> str:
    if rec.started_at is None:
        return "-"
    return _text.duration((rec.ended_at or time.time()) - rec.started_at, "compact")


def progress(rec: RunRecord | RunSummary) -> str:
    done, total = rec.done, rec.total
    if total:
        return f"{_g(done)}/{_g(total)} ({100 * done / total:.0f}%)"
    return _g(done) if done else "-"


def _g(x: int | float) -> str:
    """``format(x, "g")``; an int below a million (what ``g`` writes in full) as ``str`` does, faster."""
    return str(x) if type(x) is int and -1_000_000 < x < 1_000_000 else f"{x:g}"


def status_text(rec: RunRecord | RunSummary, now: float) -> str:
    """The status as displays show it (damaged rows named), and what control adds to it: a wait
    before a retry, a timeout passed."""
    damaged = rec.damaged and rec.status_text != "damaged"
    text = f"{rec.status} (damaged)" if damaged else rec.status_text
    if rec.status == Status.RUNNING and rec.retry_at is not None:
        wait = _text.duration(rec.retry_at - now, "seconds")
        text += f" (try {rec.tries + 1} of {rec.max_tries} in {wait})"
    overdue = rec.overdue(now)
    if overdue is not None:
        text += f" (past its timeout by {_text.duration(overdue, 'seconds')})"
    return text


# -- the lean process ----------------------------------------------------------------------------


def streams() -> None:
    """Stored text may hold lone surrogates: written escaped, not an error."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def closed_pipe() -> int:
    """`tether ls | head`: the reader left; nothing more to write, and no error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv: Sequence[str]) -> int | None:
    """`tether ls ARGS` (``argv``: what follows ``ls``) in a process of its own; its exit status,
    or None where the full CLI must answer: JSON output and every error (a missing database, a
    bad option), which it prints as it always does."""
    parser = argparse.ArgumentParser(prog="tether ls")
    add_arguments(parser)
    parser.add_argument("--db", help=DB_HELP)
    args, extra = parser.parse_known_args(argv)
    if args.json or extra:
        return None
    streams()
    try:
        text = table_text(listing(existing_store(args.db), args.pipeline, args.status, args.limit), args.wide)
        print(text)
    except StoreError:
        return None
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return closed_pipe()
    return 0

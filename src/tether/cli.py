"""tether ls | show | watch | cancel | gc | worker | migrate: look at and act on tether databases.

The CLI never executes code named by the database; ``worker`` imports only the modules named on
its command line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import _ls, owner
from . import workspace as _workspace
from ._text import duration, fmt_time, safe_lines
from ._text import safe as _safe
from .errors import StoreError, TetherError
from .model import RunRecord, Status, log_text, raw_text
from .store import Store

__all__ = ["main"]


def _existing_store(path: str | None) -> Store:
    """Commands that read need an existing database: a typo must not create an empty one."""
    return _workspace.default().existing_store(path)


def cmd_ls(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    if args.json:
        recs = _workspace.default().records(
            store, pipeline=args.pipeline, status=args.status, limit=args.limit
        )
        print(json.dumps([_as_dict(r) for r in recs], indent=1))
        return 0
    print(_ls.table_text(_ls.listing(store, args.pipeline, args.status, args.limit), args.wide))
    return 0


def _decoded(rec: RunRecord, name: str, damaged: list[str]) -> Any:
    """params / error / result, or None (and the column named in ``damaged``) when damaged."""
    value, bad = rec.decoded(name)
    if bad is not None and bad not in damaged:
        damaged.append(bad)
    return value


def _summary(rec: RunRecord, damaged: list[str]) -> Any:
    """The result as displays show it (no value file read, nothing unpickled), or None (and the
    column named in ``damaged``) when damaged."""
    try:
        return rec.result_summary
    except StoreError:
        bad = rec.damage("result") or f"result={raw_text(rec.result_json)}"
        if bad not in damaged:
            damaged.append(bad)
        return None


def _as_dict(rec: RunRecord) -> dict[str, object]:
    damaged = list(rec.damaged)
    params, error = _decoded(rec, "params", damaged), _decoded(rec, "error", damaged)
    result = _summary(rec, damaged)
    return {
        "id": rec.id,
        "key": rec.key,
        "attempt": rec.attempt,
        "pipeline": rec.pipeline,
        "status": rec.status_text,
        "phase": rec.phase,
        "done": rec.done,
        "total": rec.total,
        "params": params,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "error": error,
        "result": result,
        "damaged": damaged,
        "parent": rec.parent_id,
        "tries": rec.tries,
        "max_tries": rec.max_tries,
        "retry_at": rec.retry_at,
        "timeout": rec.timeout,
        "overdue": rec.overdue(time.time()),
    }


def cmd_show(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    rec = store.get(args.id)
    if rec.status.active and store.recover([rec], owner.gone_reason):
        rec = store.get(args.id)
    if args.json:
        print(json.dumps(_as_dict(rec), indent=1))
        return 0
    damaged = list(rec.damaged)
    params, error = _decoded(rec, "params", damaged), _decoded(rec, "error", damaged)
    result = _summary(rec, damaged) if rec.status == Status.SUCCEEDED else None
    phases = []
    done = set(rec.phases_done)
    for p in rec.phases:
        mark = "x" if p in done else (">" if p == rec.phase else " ")
        if p == rec.phase and rec.status in (Status.FAILED, Status.INTERRUPTED, Status.CANCELLED):
            mark = "!"
        phases.append(f"[{mark}] {_safe(p)}")
    print(f"run       {_safe(rec.id)}  ({_safe(rec.pipeline)}, attempt {rec.attempt})")
    print(f"key       {_safe(rec.key)}")
    print(f"status    {_ls.status_text(rec, time.time())}")
    if damaged:
        print(f"damaged   {_safe('; '.join(damaged))} (edited by hand or by another tool?)")
    if params is not None:
        print(f"params    {_safe(json.dumps(params, ensure_ascii=False))}")
    print(f"phase     {_safe(rec.phase or '-')}  progress {_ls.progress(rec)}")
    if phases:
        print("phases    " + "  ".join(phases))
    print(f"started   {fmt_time(rec.started_at)}  duration {_ls.duration(rec)}")
    if rec.owner:
        print(f"owner     pid {rec.owner.pid} on {_safe(rec.owner.host)}")
    _show_control(store, rec)
    logs = store.tail(rec.id, "log", args.lines)
    if logs:
        print(f"last {len(logs)} log lines:")
        for ev in logs:
            print(f"  {fmt_time(ev.ts)}  {_safe(log_text(ev))}")
    if error:
        print(f"error     {_safe(error.get('type'))}: {_safe(error.get('message'))}")
        if error.get("traceback"):
            print(safe_lines(error["traceback"].rstrip()))
    if rec.status == Status.SUCCEEDED and not any(d.startswith("result=") for d in damaged):
        print("result    " + _safe(json.dumps(result, ensure_ascii=False)[:2000]))
    return 0


def _show_control(store: Store, rec: RunRecord) -> None:
    """Lines of `tether show` for issue 14's control: queue, tries, timeout, parent, children."""
    now = time.time()
    ahead = store.queue_ahead(rec.id) if rec.status == Status.PENDING else None
    if ahead is not None:
        print(f"queued    {ahead} ahead (concurrency={rec.concurrency})")
    if rec.max_tries > 1 or rec.tries > 1:
        line = f"tries     {rec.tries} of {rec.max_tries}"
        if rec.status == Status.RUNNING and rec.retry_at is not None:
            line += f"  next in {duration(rec.retry_at - now, 'seconds')}"
        print(line)
        for ev in store.events(rec.id, kinds=["retry"]):
            print(
                f"  try {ev.data.get('try')}: {_safe(ev.data.get('type'))}: {_safe(ev.data.get('message'))}"
            )
    if rec.timeout is not None:
        overdue = rec.overdue(now)
        print(
            f"timeout   {duration(rec.timeout, 'setting')} per try"
            + (
                f"  (past its timeout by {duration(overdue, 'seconds')}: it stops at its next ctx call)"
                if overdue is not None
                else ""
            )
        )
    if rec.parent_id:
        print(f"parent    {rec.parent_id}")
    kids = store.children(rec.id)
    if kids:
        print(f"children  {len(kids)}")
        for kid in kids:
            print(f"  {kid.id}  {_safe(kid.pipeline)} #{kid.attempt}  {kid.status}  {_ls.progress(kid)}")


def cmd_cancel(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    rec = store.request_cancel(
        args.id, owner.gone_reason, origin={"via": "cli", "pid": os.getpid(), "host": owner.current().host}
    )
    if rec.status.terminal:
        print(f"{_safe(rec.id)}: {_ls.status_text(rec, time.time())}")
    else:
        print(
            f"{_safe(rec.id)}: cancel requested; its owner "
            f"(pid {rec.owner.pid if rec.owner else '?'}) stops it at its next progress call"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    active = store.active()
    marked = store.recover(active, owner.gone_reason)
    for rec, why in marked:
        print(_safe(f"{rec.id} ({rec.pipeline}) interrupted: {why}"))
    print(f"checked {len(active)} active run(s); marked {len(marked)} interrupted")
    removed, freed = store.collect_files()
    print(f"removed {removed} value file(s) no run refers to ({freed} bytes freed)")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import SQLiteStore, migrate
    from .store.postgres import is_url

    if not is_url(args.to):
        raise StoreError(
            f"--to must be a postgresql:// URL, not {args.to!r}.",
            "Name the team database as postgresql://user@host/database.",
        )
    src = _existing_store(args.db)
    if not isinstance(src, SQLiteStore):
        raise StoreError(
            f"{src.path} is not a SQLite file: tether migrate copies a SQLite store into PostgreSQL.",
            "Name the SQLite file with {db}.",
        )
    dst = _workspace.default().store(args.to)
    done = migrate(src, dst, owner.gone_reason)  # type: ignore[arg-type]
    for run_id, why in done.interrupted:
        print(_safe(f"{run_id} interrupted (recovered before the copy): {why}"))
    where = f"from {src.path} to {dst.path}"  # the URL without its password
    if done.runs:
        print(
            f"copied {done.runs} run(s), {done.events} event(s), {done.checkpoints} checkpoint(s), "
            f"{done.files} value file(s) ({done.bytes} bytes) {_safe(where)}"
        )
    else:
        print(_safe(f"nothing new to copy {where}"))
    if done.present:
        print(f"skipped {done.present} run(s) already there with the same content")
    if done.pending:
        print(
            f"{len(done.pending)} pending run(s) no process owns were copied as pending: a `tether worker` "
            "on the PostgreSQL database executes them (stop the workers on the SQLite file)"
        )
    for what, why in done.skipped:
        print(_safe(f"not copied: {what}: {why}"))
    failed = [what for what, _ in done.skipped if not what.startswith("file ")]
    return 1 if failed else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from . import watch  # imported only for this command: the other commands stay lean

    try:
        store = _existing_store(args.db)
        run_id = watch.pick(store, args.id, latest=args.latest, pipeline=args.pipeline)
        return watch.Watch(store, run_id, sys.stdout).run()
    except TetherError as exc:  # 1 and 2 are a run's outcome here: failed, cancelled
        _error(exc)
        return watch.NOTHING_TO_WATCH


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import serve

    started = serve(args.targets, db=args.db, concurrency=args.concurrency, once=args.once, poll=args.poll)
    print(f"worker stopped; executed {started} run(s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # the web app's packages are an extra: imported only for this command
        from .serve import require, run_server

        require()
    except ImportError as exc:
        print(f"tether: error: {exc}", file=sys.stderr)
        return 1
    run_server(args.db, args.host, args.port, allow_remote=args.allow_remote)
    return 0


@functools.cache  # built once per process: main() may be called many times (tests, tools)
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="list runs, newest first")
    _ls.add_arguments(p)
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser("show", help="one run: status, phases, progress, last log lines, error")
    p.add_argument("id")
    p.add_argument("--lines", type=int, default=10, help="log lines to show (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("cancel", help="cancel a run (its owner stops it; a dead owner's run ends now)")
    p.add_argument("id")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser(
        "gc",
        help="mark runs whose owner is gone as interrupted, remove value files "
        "no run refers to; print counts",
    )
    p.set_defaults(fn=cmd_gc)

    p = sub.add_parser(
        "watch", help="follow one run live until it ends (exit 0 succeeded, 1 failed, 2 cancelled)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the run's id")
    which.add_argument("--latest", action="store_true", help="the newest run")
    which.add_argument("--pipeline", metavar="NAME", help="the newest run of this pipeline")
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser(
        "worker", help="execute detached runs (start(..., detach=True)) of the pipelines in the given modules"
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="MODULE[:FUNCTION]",
        help="modules (or module:function) defining the pipelines to execute",
    )
    p.add_argument("--concurrency", type=int, default=4, help="runs at once (default 4)")
    p.add_argument("--once", action="store_true", help="exit when no detached run is left")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between looks for new runs")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser(
        "migrate", help="copy a SQLite database's runs into a PostgreSQL one; print what was copied"
    )
    p.add_argument("--to", required=True, metavar="URL", help="the PostgreSQL database (postgresql://...)")
    p.set_defaults(fn=cmd_migrate)

    p = sub.add_parser("serve", help="a local web page of the runs, live (needs the serve extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach (they can read every run)",
    )
    p.set_defaults(fn=cmd_serve)

    for p in sub.choices.values():
        p.add_argument("--db", help=_ls.DB_HELP)
    return parser


# The settings a StoreError's fix names, as the CLI sets them (it has no flag for the allow_* ones).
_WORDING = {
    "db": "--db PATH",
    "allow_foreign_db": "TETHER_ALLOW_FOREIGN_DB=1",
    "allow_network_fs": "TETHER_ALLOW_NETWORK_FS=1",
}


def _error(exc: TetherError) -> None:
    text = safe_lines(exc.text(_WORDING) if isinstance(exc, StoreError) else str(exc))
    print(f"tether: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    _ls.streams()
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except TetherError as exc:
        _error(exc)
        return 2 if isinstance(exc, LookupError) else 1
    except (ImportError, TypeError) as exc:  # worker targets
        if args.command != "worker":
            raise
        print(f"tether: error: {safe_lines(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tether ls | head`
        return _ls.closed_pipe()


if __name__ == "__main__":
    sys.exit(main())

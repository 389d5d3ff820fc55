"""tether ls | show | cancel | gc | worker: look at and act on a tether database from a shell.

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

from . import config, owner
from .errors import TetherError
from .model import RunRecord, Status
from .store import Store

__all__ = ["main"]


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x09}


def _safe(text: object) -> str:
    """Run text for a terminal: control characters (escape sequences, CR, BEL) shown escaped."""
    return str(text).translate(_CONTROL)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(rec: RunRecord) -> str:
    if rec.started_at is None:
        return "-"
    secs = (rec.ended_at or time.time()) - rec.started_at
    if secs < 60:
        return f"{secs:.1f}s"
    minutes, secs = divmod(int(secs), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _progress(rec: RunRecord) -> str:
    if rec.total:
        return f"{rec.done:g}/{rec.total:g} ({100 * rec.done / rec.total:.0f}%)"
    return f"{rec.done:g}" if rec.done else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _existing_store(path: str | None) -> Store:
    """Commands that read need an existing database: a typo must not create an empty one."""
    return config.existing_store(path)


def cmd_ls(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    recs = store.list_runs(pipeline=args.pipeline, status=args.status, limit=args.limit)
    if store.recover([r for r in recs if r.status.active], owner.gone_reason):
        recs = store.list_runs(pipeline=args.pipeline, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([_as_dict(r) for r in recs], indent=1))
        return 0
    if not recs:
        print("no runs")
        return 0
    rows = [["ID", "PIPELINE", "#", "STATUS", "PHASE", "PROGRESS", "STARTED", "DURATION"]]
    rows += [[r.id, _safe(r.pipeline), str(r.attempt), str(r.status), _safe(r.phase or "-"),
              _progress(r),
              _when(r.started_at or r.created_at), _duration(r)] for r in recs]
    print(_table(rows))
    return 0


def _as_dict(rec: RunRecord) -> dict[str, object]:
    return {"id": rec.id, "key": rec.key, "attempt": rec.attempt, "pipeline": rec.pipeline,
            "status": str(rec.status), "phase": rec.phase, "done": rec.done, "total": rec.total,
            "params": rec.params, "created_at": rec.created_at, "started_at": rec.started_at,
            "ended_at": rec.ended_at, "error": rec.error, "result": rec.result_summary}


def cmd_show(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    rec = store.get(args.id)
    if rec.status.active and store.recover([rec], owner.gone_reason):
        rec = store.get(args.id)
    if args.json:
        print(json.dumps(_as_dict(rec), indent=1))
        return 0
    phases = []
    for p in rec.phases:
        mark = "x" if p in rec.phases_done else (">" if p == rec.phase else " ")
        if p == rec.phase and rec.status in (Status.FAILED, Status.INTERRUPTED, Status.CANCELLED):
            mark = "!"
        phases.append(f"[{mark}] {_safe(p)}")
    print(f"run       {rec.id}  ({_safe(rec.pipeline)}, attempt {rec.attempt})")
    print(f"key       {_safe(rec.key)}")
    print(f"status    {rec.status}")
    print(f"params    {_safe(json.dumps(rec.params, ensure_ascii=False))}")
    print(f"phase     {_safe(rec.phase or '-')}  progress {_progress(rec)}")
    if phases:
        print("phases    " + "  ".join(phases))
    print(f"started   {_when(rec.started_at)}  duration {_duration(rec)}")
    if rec.owner:
        print(f"owner     pid {rec.owner.pid} on {rec.owner.host}")
    logs = store.tail(rec.id, "log", args.lines)
    if logs:
        print(f"last {len(logs)} log lines:")
        for ev in logs:
            print(f"  {_when(ev.ts)}  {_safe(ev.data.get('message', ''))}")
    if rec.error:
        print(f"error     {_safe(rec.error.get('type'))}: {_safe(rec.error.get('message'))}")
        if rec.error.get("traceback"):
            print("\n".join(_safe(line) for line in rec.error["traceback"].rstrip().split("\n")))
    if rec.status == Status.SUCCEEDED:
        print("result    " + _safe(json.dumps(rec.result_summary, ensure_ascii=False)[:2000]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    rec = store.request_cancel(args.id, owner.gone_reason)
    if rec.status.terminal:
        print(f"{rec.id}: {rec.status}")
    else:
        print(f"{rec.id}: cancel requested; its owner (pid {rec.owner.pid if rec.owner else '?'}) "
              "stops it at its next progress call")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    active = store.active()
    marked = store.recover(active, owner.gone_reason)
    for rec, why in marked:
        print(f"{rec.id} ({rec.pipeline}) interrupted: {why}")
    print(f"checked {len(active)} active run(s); marked {len(marked)} interrupted")
    removed, freed = store.collect_files()
    print(f"removed {removed} value file(s) no run refers to ({freed} bytes freed)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import serve

    started = serve(args.targets, db=args.db, concurrency=args.concurrency, once=args.once,
                    poll=args.poll)
    print(f"worker stopped; executed {started} run(s)")
    return 0


@functools.cache  # built once per process: main() may be called many times (tests, tools)
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0])
    db_help = "database file (default: $TETHER_DB or ./.tether/runs.db)"
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="list runs, newest first")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--pipeline")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser("show", help="one run: status, phases, progress, last log lines, error")
    p.add_argument("id")
    p.add_argument("--lines", type=int, default=10, help="log lines to show (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("cancel", help="cancel a run (its owner stops it; a dead owner's run ends now)")
    p.add_argument("id")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("gc", help="mark runs whose owner is gone as interrupted, remove value files "
                       "no run refers to; print counts")
    p.set_defaults(fn=cmd_gc)

    p = sub.add_parser("worker", help="execute detached runs (start(..., detach=True)) of the "
                       "pipelines in the given modules")
    p.add_argument("targets", nargs="+", metavar="MODULE[:FUNCTION]",
                   help="modules (or module:function) defining the pipelines to execute")
    p.add_argument("--concurrency", type=int, default=4, help="runs at once (default 4)")
    p.add_argument("--once", action="store_true", help="exit when no detached run is left")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between looks for new runs")
    p.set_defaults(fn=cmd_worker)

    for p in sub.choices.values():
        p.add_argument("--db", help=db_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # stored text may hold lone surrogates
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except TetherError as exc:
        text = str(exc).replace("tether.configure(db=...)", "--db PATH")
        print(f"tether: error: {text}", file=sys.stderr)
        return 2 if isinstance(exc, LookupError) else 1
    except (ImportError, TypeError) as exc:  # worker targets
        if args.command != "worker":
            raise
        print(f"tether: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tether ls | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

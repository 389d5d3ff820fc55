"""``tether worker``: a process that executes detached runs of importable pipelines.

It imports only the modules named on its command line, so it never executes code named by the
database. Several workers share a database safely: a run is claimed in one transaction.
A worker registers the pipelines it serves (renewed with its heartbeat): a pending run whose
starter died is then handed to it instead of being marked ``interrupted``. SIGTERM (or SIGINT)
stops claiming, marks the runs it was executing ``interrupted`` and exits;
resume them with ``run.resume()`` or ``start(..., policy="resume")``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from . import workspace as _workspace
from .errors import StoreError
from .pipeline import Pipeline

__all__ = ["serve"]


def load(targets: Sequence[str], workspace: _workspace.Workspace | None = None) -> list[str]:
    """Import ``module`` or ``module:function`` targets; return the names of the pipelines they
    define (in ``workspace``, default: the default one, where ``@tether.pipeline`` registers)."""
    registry = (workspace or _workspace.default()).pipelines
    names: list[str] = []
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules beside you are importable
    for target in targets:
        module_name, _, attr = target.partition(":")
        before = registry.names()
        module = importlib.import_module(module_name)
        if attr:
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
            if not isinstance(obj, Pipeline):
                raise TypeError(f"{target} is not a @tether.pipeline")
            names.append(obj.name)
        else:
            found = [p.name for p in registry if p.fn.__module__ == module.__name__ or p.name not in before]
            if not found:
                raise TypeError(f"module {module_name!r} defines no @tether.pipeline")
            names.extend(found)
    return sorted(set(names))


def serve(
    targets: Sequence[str],
    *,
    db: str | None = None,
    concurrency: int = 4,
    once: bool = False,
    poll: float = 0.5,
    stop: threading.Event | None = None,
) -> int:
    """Execute detached runs until stopped (or, with ``once``, until none are left). Returns the
    number of runs started."""
    ws = _workspace.default()
    if db:
        ws.configure(db=db)
    ws.configure(max_concurrency=concurrency)
    names = load(targets, ws)
    store = ws.store()
    run_ = ws.runner(store)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    started = 0
    renew = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= renew:  # it serves these pipelines: a pending run whose
                # starter died is handed to it (tether.store.Store.recover)
                cfg = ws.settings
                try:
                    store.register_worker(run_.owner, names, time.time() + cfg.lease)
                except StoreError:
                    pass  # tried again at the next renewal; claims go on meanwhile
                renew = time.monotonic() + cfg.heartbeat_interval
            claimed = run_.claim_detached(names)
            started += claimed
            if once and claimed == 0 and run_.busy == 0:
                break
            stop.wait(poll)
    finally:
        try:
            store.unregister_worker(run_.owner)
        except StoreError:
            pass  # its lease runs out
        run_.shutdown("the worker stopped before the run ended")
        store.close()
    return started

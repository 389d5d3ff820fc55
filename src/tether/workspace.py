"""A workspace: one database with its settings, its store, its runner and its registries.

The module-level API (``tether.pipeline``, ``configure``, ``runs``, ``get_run``, ``panel``,
``dashboard``) works on the default workspace. ``Run``, ``Pipeline``, the CLI, the worker and the
widgets reach stores, runners and pipelines through a workspace, never around it.

This is the one module that keeps module-level mutable state, all of it per process: the default
workspace, the set of live workspaces (interpreter exit and ``os.fork`` must reach every runner of
the process) and the front end that renders runs (a module, loaded on first display).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from . import config, owner
from . import runner as _runner
from .config import Settings
from .model import RunRecord
from .pipeline import Pipeline, Registry, Serializer, define
from .run import DoneWatcher, Run, params_filter
from .runner import Runner
from .store import SQLiteStore, Store, missing_database

if TYPE_CHECKING:
    from .store.postgres import PostgresStore

__all__ = ["FrontEnd", "Workspace", "configure", "default", "get_run", "pipeline", "runs", "use_front_end"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

MAX_CANCEL_ORIGINS = 256  # cancels remembered per workspace for displays (the newest)


class FrontEnd(Protocol):
    """What displays a run in a notebook (tether.widget): wired in with ``use_front_end``, so
    that ``Run``'s repr reaches it without the layers below importing it."""

    def repr_bundle(self, run: Run, include: Any = None, exclude: Any = None) -> dict[str, Any]: ...

    def show(self, run: Run) -> None: ...


class Workspace:
    """One database with its settings, store, runner, pipeline registry and the front ends'
    per-workspace state (panels, the poller, dashboards).

    ``Workspace(db="runs.db", max_concurrency=2)`` takes what ``tether.configure`` takes; it opens
    nothing until used. ``ws.pipeline`` registers a pipeline in it; ``ws.close()`` stops its runners
    and closes its stores (the next use opens them again).
    """

    def __init__(self, db: str | os.PathLike[str] | None = None, **options: float | int | bool | str) -> None:
        self._settings = config.updated(Settings(), db, **options)
        self._lock = threading.Lock()
        self._stores: dict[Path | str, SQLiteStore | PostgresStore] = {}
        self._runners: dict[int, Runner] = {}  # id(store) -> its runner in this process
        self._resolved: dict[tuple[str, str], Path] = {}  # path text and cwd -> absolute path
        self._fast: tuple[Settings, SQLiteStore | PostgresStore] | None = None  # see store()
        self._watchers: dict[int, DoneWatcher] = {}  # id(store) -> the thread polling for callbacks
        self._cancels: dict[str, dict[str, Any]] = {}  # run id -> where its cancel came from
        self._state: dict[type[Any], Any] = {}
        self.pipelines = Registry()
        with _every_lock:
            _every.add(self)

    def __repr__(self) -> str:
        return f"<tether.Workspace db={self._settings.db!r} pipelines={len(self.pipelines.names())}>"

    # -- settings ----------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force (read at each use: a change applies at once)."""
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        if not isinstance(value, Settings):
            raise TypeError(f"Workspace.settings takes a tether.Settings, got {value!r}")
        changed = value.durability != self._settings.durability
        self._settings = value
        if changed:
            self._apply_durability()

    def configure(
        self, db: str | os.PathLike[str] | None = None, **options: float | int | bool | str
    ) -> Settings:
        """Set where runs are stored and how the runner behaves; returns the settings in force.

        ``tether.configure(db="runs.db")``; options: max_concurrency, flush_interval,
        heartbeat_interval, lease, sweep_interval, max_auto_resumes, allow_foreign_db,
        allow_network_fs, durability. Runs already started keep the store they were started in.
        """
        self._settings = config.updated(self._settings, db, **options)
        if "durability" in options:
            self._apply_durability()
        return self._settings

    def _apply_durability(self) -> None:
        """The stores already made commit at the durability now in force (new ones start at it)."""
        level = config.durability(self._settings)
        with self._lock:
            stores = list(self._stores.values())
        for s in stores:
            s.set_durability(level)

    def db_path(self) -> Path:
        """The database file the settings name now (configured, else $TETHER_DB, else the
        default), as an absolute path."""
        raw, where = config.db_setting(self._settings)
        return config.resolve(raw, where, self._resolved)

    # -- store and runner --------------------------------------------------------------------

    def _location(self, path: str | os.PathLike[str] | None) -> Path | str:
        """The database ``path`` names (default: the configured one): a file's absolute path, or
        a ``postgresql://`` URL as it is."""
        raw = os.fspath(path) if path else config.db_setting(self._settings)[0]
        if config.is_postgres(raw):
            return raw
        return config.resolve(raw, cache=self._resolved) if path else self.db_path()

    def store(self, path: str | os.PathLike[str] | None = None) -> Store:
        """The store for ``path`` (default: the configured database), one object per file (or
        per ``postgresql://`` URL: a PostgresStore)."""
        if path is None:
            fast = self._fast
            if fast is not None and fast[0] is self._settings and not fast[1]._closed:
                return fast[1]  # the configured absolute path: no lookup (every start() asks)
        p = self._location(path)
        s = self._stores.get(p)
        if s is None or s._closed:
            with self._lock:
                s = self._stores.get(p)
                if s is None or s._closed:
                    if isinstance(p, str):
                        from .store.postgres import PostgresStore

                        s = PostgresStore(p)
                    else:
                        s = SQLiteStore(
                            p, allow_foreign=self._foreign_allowed, allow_network_fs=self._network_fs_allowed
                        )
                    s.set_durability(config.durability(self._settings))
                    self._stores[p] = s
        if path is None:
            # the settings are immutable: while they are the ones in force, an absolute db names
            # this store whatever the cwd and $TETHER_DB (a relative one or none depends on them)
            settings = self._settings
            db = settings.db
            if db and not config.is_postgres(str(db)) and os.path.isabs(os.path.expanduser(db)):
                self._fast = (settings, s)
        return s

    def existing_store(self, path: str | os.PathLike[str] | None = None) -> Store:
        """store(path) for a database that must exist already (the CLI's reads: a typo must not
        create an empty one). StoreError if it does not exist or cannot be reached."""
        p = self._location(path)
        s = self.store(p)
        if not s.exists():  # a SQLite file, or tether's tables in a server's database
            raise missing_database(s.path)
        return s

    def _foreign_allowed(self) -> bool:
        return config.foreign_db_allowed(self._settings)

    def _network_fs_allowed(self) -> bool:
        return config.network_fs_allowed(self._settings)

    def runner(self, store: Store | None = None) -> Runner:
        """The runner of ``store`` (default: the configured one) in this process, made on first
        use (and again in a forked child: the parent's is not the child's)."""
        if store is None:
            store = self.store()
        r: Runner | None = store.runner
        if r is None or r.owner.pid != os.getpid():
            with self._lock:
                r = store.runner
                if r is None or r.owner.pid != os.getpid():
                    r = store.runner = Runner(store, self)
                    self._runners[id(store)] = r
        return r

    def close(self) -> None:
        """Stop this workspace's runners (their unfinished runs end ``interrupted``), then close
        its stores. The workspace stays usable: the next use opens them again."""
        with self._lock:
            runners = list(self._runners.values())
            stores = list(self._stores.values())
            self._runners.clear()
            self._stores.clear()
            self._watchers.clear()
            self._fast = None
        _runner.shutdown_all(runners)
        for s in stores:
            s.close()

    # -- pipelines and runs ------------------------------------------------------------------

    def lookup(self, name: str, code: str | None = None) -> Pipeline | None:
        """The pipeline registered here under ``name`` (with ``code``: that definition, if it
        is one of the recent ones)."""
        return self.pipelines.lookup(name, code)

    @overload
    def pipeline(self, fn: F, /) -> Pipeline: ...
    @overload
    def pipeline(
        self,
        /,
        *,
        phases: Sequence[str] | None = None,
        version: str | int | None = None,
        name: str | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        timeout: float | None = None,
        concurrency: int | None = None,
        serializer: Serializer = "default",
    ) -> Callable[[F], Pipeline]: ...

    def pipeline(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a pipeline: ``@tether.pipeline`` or ``@tether.pipeline(phases=[...])``.

        ``version``: bump it when the code changes meaning; a stored run of another version is then
        a KeyConflict instead of a silent reuse. ``name``: override the registered name.

        Control (see the Control page of the docs): ``retries`` more tries after a failure, within
        the same run and keeping its checkpoints, ``retry_delay * retry_backoff ** (try - 1)`` s
        apart, for errors that are instances of ``retry_on``; ``timeout`` seconds per try, after
        which the body is stopped at its next ctx call and the try fails with ``TimeoutError``;
        ``concurrency``: at most that many runs of this pipeline running at once, across every
        process sharing the database (the others wait ``pending``, in start order).

        ``serializer="pickle"``: results, steps and map items that tether cannot store otherwise are
        pickled, for trusted local use (read back only from a database file you own).
        """
        return define(self, fn, **options)

    def run(self, store: Store, run_id: str, record: RunRecord | None = None) -> Run:
        """A handle on run ``run_id`` of ``store`` made in this workspace."""
        return Run(self, store, run_id, record)

    def get_run(self, run_id: str) -> Run:
        """The run with this id (RunNotFound if none). An orphan is marked interrupted on the way."""
        run = Run(self, self.store(), run_id)
        run.snapshot()
        return run

    def runs(
        self,
        pipeline: Any = None,
        status: str | list[str] | None = None,
        key: str | None = None,
        limit: int | None = 100,
        params: dict[str, Any] | None = None,
    ) -> list[Run]:
        """Every attempt matching the filters, newest first. ``pipeline``: a name or a Pipeline.

        ``params``: only runs whose params include each given name with an equal value, compared
        as JSON values (``True`` is not ``1``, ``3 == 3.0``; lists and dicts compare whole), e.g.
        ``tether.runs(params={"repo": "./app"})``."""
        store = self.store()
        name = getattr(pipeline, "name", pipeline)
        if params is not None:
            params = params_filter(params)
        recs = self.records(store, pipeline=name, status=status, key=key, limit=limit, params=params)
        return [Run(self, store, r.id, r) for r in recs]

    def records(
        self,
        store: Store | None = None,
        *,
        pipeline: str | None = None,
        status: str | list[str] | None = None,
        key: str | None = None,
        limit: int | None = 100,
        params: dict[str, Any] | None = None,
        recover: bool = True,
    ) -> list[RunRecord]:
        """The records of ``store`` (default: the configured one) matching the filters, newest
        first. With ``recover``, listed active runs whose owner is proven gone are marked
        ``interrupted`` first, so a listing never shows a dead run as running."""
        store = store or self.store()
        recs = store.list_runs(pipeline=pipeline, status=status, key=key, limit=limit, params=params)
        if recover and store.recover([r for r in recs if r.status.active], owner.gone_reason):
            recs = store.list_runs(pipeline=pipeline, status=status, key=key, limit=limit, params=params)
        return recs

    # -- what runs and front ends keep here --------------------------------------------------

    def note_cancel(self, run_id: str, origin: dict[str, Any]) -> None:
        """Remember where a cancel asked here came from (a body that sees the flag may end the run
        before the request, and the origin in its event, is written)."""
        with self._lock:
            self._cancels[run_id] = origin
            while len(self._cancels) > MAX_CANCEL_ORIGINS:
                del self._cancels[next(iter(self._cancels))]

    def cancel_origin(self, run_id: str) -> dict[str, Any] | None:
        return self._cancels.get(run_id)

    def watcher(self, store: Store) -> DoneWatcher:
        """The thread that polls runs of ``store`` other processes execute, for done callbacks."""
        with self._lock:
            w = self._watchers.get(id(store))
            if w is None or w.store is not store:
                w = self._watchers[id(store)] = DoneWatcher(store)
            return w

    def state(self, kind: type[T]) -> T:
        """This workspace's one ``kind()`` (made on first use): how a front end keeps its
        per-workspace state (panels by run, the poller) without this module importing it."""
        found = self._state.get(kind)
        if found is None:
            with self._lock:
                found = self._state.get(kind)
                if found is None:
                    found = self._state[kind] = kind()
        return found

    def front_end(self) -> FrontEnd | None:
        """The module that displays runs (tether.widget, once wired in), else None."""
        return None if _front_end is None else _front_end()

    # -- process events ----------------------------------------------------------------------

    def _forked(self) -> None:
        # the child owns nothing of the parent's: no runs, no connections, no threads
        self._lock = threading.Lock()
        _runner.forked(list(self._runners.values()))
        self._runners.clear()
        self._stores.clear()
        self._watchers.clear()
        self._fast = None

    def _live_runners(self) -> list[Runner]:
        with self._lock:
            return list(self._runners.values())


# -- per process ---------------------------------------------------------------------------

_every: weakref.WeakSet[Workspace] = weakref.WeakSet()  # exit and fork reach every runner
_every_lock = threading.Lock()
_default = Workspace()
_front_end: Callable[[], FrontEnd] | None = None


def default() -> Workspace:
    """The workspace the module-level API works on."""
    return _default


def use_front_end(load: Callable[[], FrontEnd]) -> None:
    """Display runs with what ``load()`` returns (called at each display; import there)."""
    global _front_end
    _front_end = load


# the module-level API: the default workspace's methods (tether re-exports them)
configure = _default.configure
pipeline = _default.pipeline
get_run = _default.get_run
runs = _default.runs


def _all_runners() -> list[Runner]:
    with _every_lock:
        spaces = list(_every)
    return [r for ws in spaces for r in ws._live_runners()]


def _shutdown_every() -> None:
    """Interpreter exit, last step: stop every runner of the process, then close their stores."""
    with _every_lock:
        spaces = list(_every)
    runners: list[Runner] = []
    for ws in spaces:
        with ws._lock:
            runners.extend(ws._runners.values())
            ws._runners.clear()
    _runner.shutdown_all(runners)


def _interrupt_every() -> None:
    """Interpreter exit, first step: mark this process's unfinished runs interrupted.

    Registered as a threading exit hook: those run before atexit, in reverse order of
    registration, so this runs before concurrent.futures' hook (registered when runner.py
    imported it; it refuses new futures and would make a body inside ctx.map fail first). The
    stores stay open until _shutdown_every."""
    for r in _all_runners():
        r.shutdown()


def _after_fork_in_child() -> None:
    global _every_lock
    _every_lock = threading.Lock()
    owner.reset_after_fork()
    for ws in list(_every):
        ws._forked()


atexit.register(_shutdown_every)
_register_thread_exit = getattr(threading, "_register_atexit", None)  # private API since 3.9
if _register_thread_exit is not None:
    _register_thread_exit(_interrupt_every)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

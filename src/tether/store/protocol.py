"""The ``Store`` protocol: what tether asks of the database of its runs.

The engine (runner, context, fanout, worker), ``Run`` and ``Pipeline``, the CLI and the widgets call
these methods and nothing else of a store; ``tether.store.SQLiteStore`` implements them. A second
backend implements this protocol and passes ``tests/store_contract``.

The contract every method keeps:

- Every state change is atomic: it happens whole or not at all, and concurrent callers (threads
  and processes) see one order of them.
- A status change is conditional on the status (and owner) it replaces: a terminal status never
  changes, and of two processes that notice the same orphan exactly one marks it.
- A write on behalf of a run's owner (``flush``, ``finish``, ``put_checkpoint``...) answers "no
  longer ours" (False / None / the id in a set) when the run is not running under that owner any
  more, and then changes nothing of it.
- Damaged rows (edited by hand, written by other tools) never raise on a read: each is read with
  safe values and the damage named in ``RunRecord.damaged``.
- Errors of the backend are ``tether.StoreError`` with a message that says what to do;
  ``StoreError.transient`` marks those worth retrying (a lock held too long, a full disk).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..artifacts import Artifacts
from ..model import Control, Event, Owner, RunRecord, RunSummary, Status
from ._rows import FlushItem, Queued, StartOutcome

# ``gone(owner, lease_until, now)``: why a run's owner is gone (a reason to mark the run
# interrupted), or None while it may still be alive (tether.owner.gone_reason).
GoneCheck = Callable[[Owner | None, float | None, float], str | None]


class Store(Protocol):
    """A tether database: its runs, their events and checkpoints, and the workers serving it."""

    path: Path
    """The database's location (its identity: the panel and the CLI name it)."""
    files: Artifacts
    """Where values too large for a row live (content-addressed, beside the database)."""
    write_lock: threading.RLock
    """Held by the runner around a write that must not interleave with this process's others."""
    runner: Any
    """The runner of this process for this database, once one started."""

    # -- reads ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the database is there already, asked without creating, opening or migrating
        it (a read of the CLI must not make an empty one at a mistyped path). A location that
        cannot be reached (a folder the user may not enter) is a ``tether.StoreError``."""
        ...

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; ``tether.RunNotFound`` (naming the database) if there is none."""
        ...

    def latest(self, key: str) -> RunRecord | None:
        """The newest attempt of ``key``, or None."""
        ...

    def attempts(self, key: str) -> list[RunRecord]:
        """Every attempt of ``key``, oldest first."""
        ...

    def newest(self, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
        """``{key: (id, attempt, status)}`` of the newest attempt of each of ``keys`` that has
        one: a light read (no params, results or errors) for panels showing an older attempt."""
        ...

    def list_runs(
        self,
        pipeline: str | None = None,
        status: str | Sequence[str] | None = None,
        key: str | None = None,
        limit: int | None = 100,
        params: dict[str, Any] | None = None,
    ) -> list[RunRecord]:
        """Runs matching every filter given, newest first (by creation, then attempt), at most
        ``limit``. ``params``: each named param equals the value as JSON values do (``True`` is
        not ``1``, ``3 == 3.0``); a run whose params are damaged matches no such filter."""
        ...

    def summaries(
        self,
        pipeline: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 100,
    ) -> list[RunSummary]:
        """What a listing (``tether ls``) shows of the runs ``list_runs`` would return for the same
        filters, in the same order: no record built, no phases, error or result decoded.
        ``damaged`` and ``owner`` are those the run's RunRecord has."""
        ...

    def active(self) -> list[RunRecord]:
        """Every pending or running run."""
        ...

    def events(
        self, run_id: str, after: int = 0, limit: int | None = None, kinds: Sequence[str] | None = None
    ) -> list[Event]:
        """The events of ``run_id`` with ``seq > after`` (of ``kinds``, if given), in ``seq``
        order, at most ``limit``: a reader polls with the last seq it saw and gets only the new
        ones. Seqs are contiguous per run from 1 and never reused."""
        ...

    def tail(self, run_id: str, kind: str, n: int) -> list[Event]:
        """The last ``n`` events of one kind, oldest first."""
        ...

    def cancel_requests(self, owner: Owner) -> set[str]:
        """Ids of the runs ``owner`` runs that someone asked to cancel."""
        ...

    def checkpoint(self, run_id: str, name: str) -> tuple[bool, Any]:
        """``(True, value)`` of the checkpoint ``name`` of ``run_id``, ``(False, None)`` if none."""
        ...

    def checkpoints(self, run_id: str, prefix: str = "") -> dict[str, Any]:
        """Every checkpoint of ``run_id`` whose name starts with ``prefix``, decoded."""
        ...

    def children(self, run_id: str) -> list[RunRecord]:
        """Runs started by ``run_id``'s body (and those it attached to, once its events are
        flushed), oldest first."""
        ...

    def descendants(self, run_id: str) -> list[RunRecord]:
        """The active runs below ``run_id`` (children, theirs, ...), parents first."""
        ...

    def claimable(self, run_ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``run_ids`` still pending: would its claim pass its pipeline's
        concurrency check now? (A read: a process claims a queued run only when it may pass.)"""
        ...

    def queue_ahead(self, run_id: str) -> int | None:
        """Runs of the same pipeline that start before this pending run; None unless it waits in
        its pipeline's ``concurrency`` queue."""
        ...

    # -- runs made -----------------------------------------------------------------------------

    def start(
        self,
        *,
        pipeline: str,
        key: str,
        params_json: str,
        version: str | None,
        phases: list[str],
        policy: str,
        owner: Owner,
        lease_s: float,
        gone: GoneCheck,
        detach: bool = False,
        max_auto_resumes: int = 3,
        control: Control | None = None,
        code: str | None = None,
        claim: bool = False,
    ) -> StartOutcome:
        """What a ``start()`` call means for ``key``, decided (``tether.policy.decide``) and
        applied in one transaction: the run attached to, or a new attempt made (``created``), or
        a ``conflict`` (``tether.policy.Conflict``) the caller raises. An active latest attempt
        whose owner is ``gone`` is marked interrupted first (``recovered``: why). Of any number
        of processes starting the same key at once, one creates the run and the others attach.

        ``claim``: a run this call creates (not ``detach``, not given up on) is claimed by
        ``owner`` in the same transaction, exactly as ``claim()`` would leave it: ``running``,
        its first try started (``tries`` + 1, ``started_at``, ``deadline``), a ``started`` event
        after ``created``. The caller passes it only when it executes the run at once (a slot
        free, no ``concurrency=``). The record returned for a new run equals the row as a
        ``get()`` reads it back."""
        ...

    def new_attempt(
        self,
        run_id: str,
        *,
        owner: Owner,
        lease_s: float,
        resume: bool,
        gone: GoneCheck,
        control: Control | None = None,
        code: tuple[str | None, str | None] | None = None,
    ) -> RunRecord:
        """A new attempt of ``run_id``'s key (``resume``: reusing its checkpoints and done
        phases). ``tether.RunActive`` while the key's latest attempt is active and its owner
        alive."""
        ...

    # -- the owner's writes --------------------------------------------------------------------

    def claim(
        self,
        run_id: str,
        owner: Owner,
        lease_s: float,
        target: str | None = None,
        skip_locked: bool = False,
    ) -> RunRecord | Queued | None:
        """pending -> running under ``owner``, only by the run's target (``owner.instance``, or
        ``"worker"``): exactly one claimant wins. None if not claimable; ``Queued`` if its
        pipeline's ``concurrency`` has no room for it yet. ``skip_locked``: a backend with row
        locks may raise ``RowTaken`` instead of waiting for another claimer of the run."""
        ...

    def claim_next(self, owner: Owner, pipelines: Sequence[str], lease_s: float) -> RunRecord | None:
        """A worker claims the oldest claimable detached run of ``pipelines``, if any."""
        ...

    def flush(
        self, items: Sequence[FlushItem], owner: Owner, lease_until: float | None
    ) -> tuple[set[str], set[str]]:
        """Persist progress and events of runs ``owner`` runs, renewing its lease, in one
        transaction. Returns (runs no longer ours, runs with a cancel request)."""
        ...

    def finish(
        self,
        item: FlushItem,
        owner: Owner,
        status: Status,
        *,
        result_json: str | None,
        error: dict[str, Any] | None,
    ) -> bool:
        """running -> ``status`` (terminal) with the last progress, events, result or error.
        False if the run is no longer ours."""
        ...

    def put_checkpoint(self, item: FlushItem | str, owner: Owner, name: str, value_json: str) -> bool:
        """A step's checkpoint with the run's pending progress and events (a ``checkpoint``
        event follows them), atomically; or, given the run's id alone, the checkpoint row alone
        (its caller buffers the event). False if the run is no longer ours."""
        ...

    def put_checkpoints(self, run_id: str, owner: Owner, items: Sequence[tuple[str, str]]) -> bool:
        """Several ``(name, value JSON)`` checkpoints at once (``ctx.map`` items), no events.
        False if the run is no longer ours."""
        ...

    def retry_wait(self, item: FlushItem, owner: Owner, error: dict[str, Any], delay: float) -> bool:
        """A try failed and another follows in ``delay`` s (a ``retry`` event). False if the
        run is no longer ours."""
        ...

    def next_try(self, item: FlushItem, owner: Owner) -> RunRecord | None:
        """The next try starts now (a ``try`` event). None if the run is no longer ours."""
        ...

    def park(self, run_id: str, owner: Owner, parked: bool) -> None:
        """A parent waits for a child (not counted by its pipeline's concurrency) or goes on."""
        ...

    def interrupt_own(self, owner: Owner, reason: str) -> int:
        """Mark every active run of ``owner`` interrupted (clean shutdown). Returns the count."""
        ...

    # -- anyone's writes -----------------------------------------------------------------------

    def request_cancel(self, run_id: str, gone: GoneCheck, origin: dict[str, Any] | None = None) -> RunRecord:
        """Cancel ``run_id`` and its active descendants: a pending run (or one whose owner is
        ``gone``) ends cancelled at once, a running one is flagged for its owner. An ended run is
        returned as it is. ``origin`` (who asked) is kept in the event."""
        ...

    def cancel_children(self, run_id: str, gone: GoneCheck) -> list[str]:
        """Cancel the active descendants of ``run_id``. Returns their ids."""
        ...

    def recover(self, records: Sequence[RunRecord], gone: GoneCheck) -> list[tuple[RunRecord, str]]:
        """Mark the orphans among ``records`` (active, owner ``gone``) interrupted, or hand a
        pending one to a live worker of its pipeline. Returns those marked, with the reason.
        Each run on its own: one that cannot be judged or written is left, the others marked."""
        ...

    def register_worker(self, owner: Owner, pipelines: Sequence[str], lease_until: float) -> None:
        """A ``tether worker`` serves ``pipelines`` until ``lease_until`` (renewed by calling
        again)."""
        ...

    def unregister_worker(self, owner: Owner) -> None:
        """The worker ``owner`` serves nothing any more."""
        ...

    def collect_files(self) -> tuple[int, int]:
        """Remove the value files nothing refers to (``tether gc``). Returns (files, bytes)."""
        ...

    # -- this process's resources --------------------------------------------------------------

    def release_conn(self) -> None:
        """The calling thread is about to end: give back what it holds for reuse."""
        ...

    def close(self) -> None:
        """Release this store's resources; it refuses work afterwards."""
        ...

"""What a panel shows of a run's control (issue 14): its queue, earlier tries, parent, children.

Read through the store API, each part only when it can have changed, so a panel of a run without
retries, parent or children pays one indexed read at most per second:

- ``ahead``: for a pending run of a pipeline with ``concurrency=`` only (one indexed query);
- the earlier tries' errors (``retry`` events): when the try count or ``retry_at`` changed;
- the parent's name: once per run (it never changes);
- the children: all at the first read; then, at most every ``CHILDREN_EVERY`` seconds while the
  run or one of its children is active (a child's progress does not touch its parent's row), the
  new ``child`` events and the children that were active, by id.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import RunNotFound, StoreError
from ..model import RunRecord, Status
from ..store import Store
from .snapshot import MAX_ID, MAX_NAME, _clip

__all__ = ["ControlReader"]

CHILDREN_EVERY = 1.0  # seconds between reads of an active run's children


class ControlReader:
    """Keeps the control part of one run's snapshot (see ``snapshot.build``) up to date."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0  # queries made (tests)
        self._reset(None)

    def _reset(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.children: list[RunRecord] = []
        self._children_at = float("-inf")  # time.monotonic() of the last read of the children
        self._children_seq = -1  # the run's last_seq at that read
        self._children_changed = False  # a child said it changed since that read
        self._parent: dict[str, Any] | None = None
        self._tries_key: tuple[Any, ...] | None = None
        self._try_errors: list[dict[str, Any]] = []

    def read(self, rec: RunRecord) -> dict[str, Any]:
        """``ahead``, ``parent``, ``children`` and ``try_errors`` for ``snapshot.build``."""
        if rec.id != self.run_id:  # another attempt shown in the same panel
            self._reset(rec.id)
        ahead = None
        if rec.status == Status.PENDING and rec.concurrency is not None:
            self.reads += 1
            ahead = self.store.queue_ahead(rec.id)
        return {
            "ahead": ahead,
            "parent": self._parent_of(rec),
            "children": self._children_of(rec),
            "try_errors": self._errors_of(rec),
        }

    def child_changed(self) -> None:
        """A child this process executes flushed: the next read fetches the children even within
        ``CHILDREN_EVERY``, since no later news may come to trigger one (a child waiting on a
        gate flushes nothing more). Thread-safe: one flag, set from the runner's thread."""
        self._children_changed = True

    def active_children(self) -> list[str]:
        """Ids of the children that were active at the last read."""
        return [k.id for k in self.children if k.status.active]

    def _parent_of(self, rec: RunRecord) -> dict[str, Any] | None:
        if rec.parent_id is None:
            return None
        if self._parent is None or self._parent["id"] != _clip(rec.parent_id, MAX_ID):
            self.reads += 1
            try:
                parent = self.store.get(rec.parent_id)
                name, attempt = parent.pipeline, parent.attempt
            except (RunNotFound, StoreError):  # removed by gc, or unreadable: the id still says it
                name, attempt = "?", None
            self._parent = {
                "id": _clip(rec.parent_id, MAX_ID),
                "pipeline": _clip(name, MAX_NAME),
                "attempt": attempt,
            }
        return self._parent

    def _children_of(self, rec: RunRecord) -> list[RunRecord]:
        """The children, oldest first. One full read (``store.children``, which scans the run's
        events for the children it attached to) the first time; after that only the ``child``
        events newer than the last seen, and a read by id of each child that was active."""
        now = time.monotonic()
        live = rec.status.active or any(k.status.active for k in self.children)
        due = live and (self._children_changed or now - self._children_at >= CHILDREN_EVERY)
        ended = rec.status.terminal and rec.last_seq != self._children_seq  # the final list
        if self._children_seq >= 0 and not due and not ended:
            return self.children  # nothing can have changed, or read a moment ago
        self.reads += 1
        self._children_changed = False
        try:
            if self._children_seq < 0:
                self.children = self.store.children(rec.id)
            else:
                self.children = self._update_children(rec)
        except StoreError:
            pass  # the panel shows the run's own trouble; keep the last list
        self._children_at, self._children_seq = now, rec.last_seq
        return self.children

    def _update_children(self, rec: RunRecord) -> list[RunRecord]:
        known = {k.id: k for k in self.children}
        for ev in self.store.events(rec.id, after=self._children_seq, kinds=["child"]):
            kid_id = ev.data.get("id")
            if isinstance(kid_id, str) and kid_id not in known:
                known[kid_id] = self.store.get(kid_id)
        for kid_id, kid in known.items():
            if kid.status.active:
                known[kid_id] = self.store.get(kid_id)
        return sorted(known.values(), key=lambda k: k.created_at)

    def _errors_of(self, rec: RunRecord) -> list[dict[str, Any]]:
        if rec.max_tries <= 1 and rec.tries <= 1:
            return []
        key = (rec.tries, rec.retry_at, rec.status)
        if key != self._tries_key:
            self.reads += 1
            try:
                self._try_errors = [e.data for e in self.store.events(rec.id, kinds=["retry"])]
            except StoreError:
                return self._try_errors
            self._tries_key = key
        return self._try_errors

"""What a ``start()`` call means for its key: a pure function over the stored attempts.

``decide(existing, request)`` reads the key's attempts (newest first) and the request, and returns
a ``Decision``: attach to a run, make a new attempt, or a ``Conflict`` naming its ``kind`` and the
differences. It does no I/O: the store applies the decision inside the transaction that read
``existing`` (``tether.store``), and callers choose messages and fix hints from ``Conflict.kind``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .codec import dumps
from .model import Control, RunRecord, Status, raw_text

__all__ = [
    "Attach",
    "Conflict",
    "ConflictKind",
    "Decision",
    "NewAttempt",
    "StartRequest",
    "decide",
    "lookback",
]

ConflictKind = Literal["pipeline", "params", "resume_params", "active"]
"""Why a start cannot be honoured:

- ``pipeline``: the key's run belongs to another pipeline (a key belongs to one pipeline);
- ``params``: the key's run was started with other params;
- ``resume_params``: ``policy="resume"`` with other params (resume continues the same work);
- ``active``: ``policy="fail"`` and the key's run is pending or running."""

_SHOWN, _CLIP = 5, 60  # differences named in a conflict, characters of each name and value


@dataclass(slots=True)  # not frozen: on the attach path, and a frozen one is slower to make
class StartRequest:
    """A ``start()`` call: what it asks for ``key``."""

    pipeline: str
    key: str
    params_json: str  # canonical JSON (tether.codec.dumps)
    version: str | None
    code: str | None  # the body's fingerprint (tether._code), None if unknown
    policy: str  # "attach" | "rerun" | "resume" | "fail"
    control: Control | None = None  # the pipeline's options and, from a run body, its lineage
    max_auto_resumes: int = 3


@dataclass(slots=True)
class Attach:
    """Return ``run`` as it is. ``other_code``: it is active and was made by other code (how)."""

    run: RunRecord
    other_code: str | None = None


@dataclass(slots=True)
class NewAttempt:
    """Make attempt ``attempt`` of the key.

    ``created_by`` is recorded on it (``start``, ``start:rerun``, ``start:resume``,
    ``start:resume:code``, ``start:child``, ``start:code``); ``resumed_from``: the attempt whose
    checkpoints it reuses; ``code``: the fingerprint recorded; ``changed``: how the code differs
    from the latest attempt's; ``give_up``: automatic resumes reached ``max_auto_resumes`` in a
    row, so the attempt is recorded failed at once (``ResumeCapReached``) instead of running."""

    attempt: int
    created_by: str
    resumed_from: str | None = None
    code: str | None = None
    changed: str | None = None
    give_up: bool = False


@dataclass(slots=True)
class Conflict:
    """The call cannot be honoured; ``run`` is the stored run it conflicts with, ``differences``
    how the call differs from it (readable, each clipped; at most a few, then "and N more")."""

    kind: ConflictKind
    run: RunRecord
    differences: tuple[str, ...] = ()


Decision = Attach | NewAttempt | Conflict


def decide(existing: Sequence[RunRecord], request: StartRequest) -> Decision:
    """The decision for ``request`` given ``existing``, the key's attempts newest first (only the
    first ``max_auto_resumes + 1`` are ever looked at; an orphan among them already marked
    interrupted). Pure: the same arguments give the same decision."""
    if not existing:
        return NewAttempt(1, "start", code=request.code)
    latest = existing[0]
    status, policy = latest.status, request.policy
    other_pipeline = latest.pipeline != request.pipeline
    if other_pipeline:
        diffs = _pipeline_difference(latest, request.pipeline)
    elif latest.params_json == request.params_json:  # canonical JSON: equal text, equal params
        diffs = ()
    else:
        diffs = _differences(latest, request)
    changed = other_code(latest, request.version, request.code)
    if status is Status.PENDING or status is Status.RUNNING:  # (identity: a Status hashes slowly)
        if diffs:
            return Conflict("pipeline" if other_pipeline else "params", latest, diffs)
        if policy == "fail":
            return Conflict("active", latest)
        return Attach(latest, changed)
    # the latest attempt has ended
    if other_pipeline:
        return Conflict("pipeline", latest, diffs)
    if policy == "rerun" or policy == "resume":
        resumable = status is not Status.SUCCEEDED and not capped(latest)
        if policy == "resume" and changed and not diffs:
            resumable = True  # the code changed: resume it, cap or success notwithstanding
        if policy == "rerun" or resumable:
            if diffs and policy == "resume":
                return Conflict("resume_params", latest, diffs)
            resume = policy == "resume"
            by = f"start:{policy}" + (":code" if changed and resume else "")
            give_up = resume and not changed and _auto_resumes(existing) > request.max_auto_resumes
            return NewAttempt(
                latest.attempt + 1, by, latest.id if resume else None, request.code, changed, give_up
            )
    elif policy == "attach" and not diffs and child_resume(latest, request.control):
        # the parent's new try (or resumed attempt) goes on where its child stopped
        return NewAttempt(latest.attempt + 1, "start:child", latest.id)
    if diffs:
        return Conflict("params", latest, diffs)
    if changed:  # never an ended run of other code as if it were this code's
        return NewAttempt(latest.attempt + 1, "start:code", None, request.code, changed)
    return Attach(latest)


def lookback(request: StartRequest) -> int:
    """How many of the key's newest attempts ``decide`` looks at for ``request``."""
    return max(1, request.max_auto_resumes + 1) if request.policy == "resume" else 1


def _auto_resumes(existing: Sequence[RunRecord]) -> int:
    """Automatic resumes in a row, counting the one about to be made: the latest attempts made
    by ``start:resume`` that were interrupted."""
    count = 1
    for rec in existing:
        if rec.created_by != "start:resume" or rec.status != Status.INTERRUPTED:
            break
        count += 1
    return count


def capped(rec: RunRecord) -> bool:
    """The attempt that recorded the end of automatic resumes (only a manual resume goes on)."""
    return rec.status == Status.FAILED and (rec.error or {}).get("type") == "ResumeCapReached"


def same_code(stored_version: object, stored_code: object, version: str | None, code: str | None) -> bool:
    """Whether a stored run was made by the code asking (versions and fingerprints as text).

    An explicit ``version`` pins the code: equal versions are the same code whatever the
    fingerprints. A fingerprint unknown on either side (a run recorded before tether kept them,
    a callable without code) is taken as the same code."""
    if stored_version != version:
        return False
    return version is not None or stored_code is None or code is None or stored_code == code


def other_code(rec: RunRecord, version: str | None, code: str | None) -> str | None:
    """How the code of a start() call differs from the stored run's, or None if it is the same."""
    stored = rec.code
    if rec.version == version and (version is not None or stored is None or code is None or stored == code):
        return None  # same_code(), inlined: this is on the attach path
    if rec.version != version:
        return f"version {raw_text(rec.version)} -> {raw_text(version)}"
    return f"code {rec.code} -> {code}"


def child_resume(latest: RunRecord, control: Control | None) -> bool:
    """A child started (policy "attach") from the body of a run of the lineage that started it
    before, whose run ended badly: resumed (within the parent's retry or resume), not returned."""
    return (
        latest.parent_id is not None
        and control is not None
        and latest.parent_id in control.lineage
        and latest.status.terminal
        and latest.status != Status.SUCCEEDED
        and not capped(latest)
    )


def _cut(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 1] + "…"


def _pipeline_difference(rec: RunRecord, pipeline: str) -> tuple[str, ...]:
    return (f"pipeline {_cut(repr(rec.pipeline))}, not {_cut(repr(pipeline))}",)


def _differences(rec: RunRecord, request: StartRequest) -> tuple[str, ...]:
    """How the request's params differ from the stored run's, readably: at most ``_SHOWN``
    differences (then "and N more"), each name and value clipped, so that a conflict over
    thousands of ``**kwargs`` stays a readable line. Both sides are canonical JSON, so equal text
    means equal params (the common case, without decoding)."""
    if rec.params_json == request.params_json:
        return ()
    new = json.loads(request.params_json)
    old = rec.params
    if new == old:
        return ()
    parts: list[str] = []
    more = 0
    for name in sorted(set(new) | set(old)):
        if name in new and name in old and new[name] == old[name]:
            continue
        if len(parts) == _SHOWN:
            more += 1
            continue
        if name not in old:
            parts.append(f"no parameter {_cut(repr(name))}")
        elif name not in new:
            parts.append(f"parameter {_cut(repr(name))}={_cut(dumps(old[name]))} that this call lacks")
        else:
            parts.append(f"{_cut(name)}={_cut(dumps(old[name]))}, not {_cut(dumps(new[name]))}")
    if more:
        parts.append(f"and {more:,} more")
    return tuple(parts)

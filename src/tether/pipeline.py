"""``@tether.pipeline``: registration, parameter binding, keys and the start policies."""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import _interrupts, codec, owner
from ._code import fingerprint
from ._text import storable
from .codec import dumps
from .context import current
from .errors import KeyConflict, ParamsError, PipelineError
from .model import Control, Status
from .policy import Attach, Conflict, ConflictKind, StartRequest, decide
from .run import Run, display_run
from .store import StartOutcome, Store

if TYPE_CHECKING:
    from types import FrameType

    from .workspace import Workspace

__all__ = ["POLICIES", "Pipeline", "Registry", "define"]

Policy = Literal["attach", "rerun", "resume", "fail"]
POLICIES = ("attach", "rerun", "resume", "fail")
Serializer = Literal["default", "pickle"]
SERIALIZERS = ("default", "pickle")
RESERVED = ("key", "policy", "detach")
F = TypeVar("F", bound=Callable[..., Any])

_BY_CODE_MAX = 256


class Registry:
    """The pipelines of one workspace: by name (re-running a defining cell replaces its entry
    quietly), and the recent definitions by (name, code), so a run executes the code that created
    it even when its cell was edited and executed again while the run was still pending. Bounded:
    a run of a definition pushed out executes the latest one."""

    def __init__(self) -> None:
        self._by_name: dict[str, Pipeline] = {}
        self._by_code: OrderedDict[tuple[str, str], Pipeline] = OrderedDict()

    def add(self, pipe: Pipeline) -> None:
        self._by_name[pipe.name] = pipe
        if pipe.code is not None:
            self._by_code[pipe.name, pipe.code] = pipe
            self._by_code.move_to_end((pipe.name, pipe.code))
            if len(self._by_code) > _BY_CODE_MAX:
                self._by_code.popitem(last=False)

    def lookup(self, name: str, code: str | None = None) -> Pipeline | None:
        """The pipeline registered under ``name``, if any; with ``code``, the definition of that
        code if it is one of the recent ones."""
        if code is not None:
            pipe = self._by_code.get((name, code))
            if pipe is not None:
                return pipe
        return self._by_name.get(name)

    def discard(self, name: str) -> None:
        """Forget ``name`` and its definitions (as a restarted kernel would not know it)."""
        self._by_name.pop(name, None)
        for k in [k for k in self._by_code if k[0] == name]:
            del self._by_code[k]

    def names(self) -> set[str]:
        return set(self._by_name)

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(list(self._by_name.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def _name_of(fn: Callable[..., Any]) -> str:
    qual = getattr(fn, "__qualname__", fn.__name__)
    module = getattr(fn, "__module__", None)
    # a notebook cell defines into __main__: name it by qualname so it survives a kernel restart
    return qual if module in (None, "__main__") else f"{module}.{qual}"


_RERUN = "pass policy='rerun' to start a new attempt with these params, or another key="
# what a start() conflict says, by Conflict.kind: (what happened, how to fix it)
_CONFLICTS: dict[ConflictKind, tuple[str, str]] = {
    "pipeline": (
        "the {status} run for key {key!r} has {differences}",
        "a key belongs to one pipeline: pass another key=",
    ),
    "params": ("the {status} run for key {key!r} has different params: {differences}", _RERUN),
    "resume_params": (
        "the {status} run for key {key!r} has different params: {differences}; "
        "resume continues the same work",
        _RERUN,
    ),
    "active": (
        "a run for key {key!r} is already {status} (id {id})",
        "use policy='attach' to get it, or cancel it first",
    ),
}


def conflict_message(key: str, conflict: Conflict) -> str:
    """The message of a start() conflict, with its fix, chosen by the conflict's kind."""
    what, fix = _CONFLICTS[conflict.kind]
    run = conflict.run
    text = what.format(status=run.status, key=key, id=run.id, differences="; ".join(conflict.differences))
    return f"{text}; {fix}"


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of a warning that names the caller's line, not this module's."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    return level


class Pipeline:
    """A registered multi-phase function. Call ``.start(**params)`` or call it directly."""

    def __init__(
        self,
        fn: Callable[..., Any],
        phases: Sequence[str] | None = None,
        version: str | int | None = None,
        name: str | None = None,
        *,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        timeout: float | None = None,
        concurrency: int | None = None,
        serializer: Serializer = "default",
        workspace: Workspace,
    ) -> None:
        if not callable(fn):
            raise PipelineError(f"@tether.pipeline needs a function, got {fn!r}")
        if serializer not in SERIALIZERS:
            raise PipelineError(
                f"serializer={serializer!r} is not one of {', '.join(map(repr, SERIALIZERS))}"
            )
        # "pickle": values nothing else can store are pickled (read back only from a database
        # the reader owns); never the default
        self.serializer = serializer
        self.fn = fn
        self.name = name or _name_of(fn)
        (
            self.retries,
            self.retry_delay,
            self.retry_backoff,
            self.retry_on,
            self.timeout,
            self.concurrency,
        ) = _control_options(retries, retry_delay, retry_backoff, retry_on, timeout, concurrency)
        self._control = Control(
            max_tries=self.retries + 1, timeout=self.timeout, concurrency=self.concurrency
        )
        if not isinstance(self.name, str) or not storable(self.name):
            raise PipelineError(
                f"pipeline name {self.name!r} must be a str of valid text (no lone surrogates)"
            )
        self.phases = [str(p) for p in (phases or [])]
        if len(set(self.phases)) != len(self.phases):
            raise PipelineError(f"pipeline {self.name!r} declares a phase twice: {self.phases}")
        self.version = None if version is None else str(version)
        # which code this is (comments, blank lines and docstrings aside): start() never returns
        # an ended run of other code; an explicit version pins it instead (docs/start.md)
        self.code = fingerprint(fn)
        self.signature = inspect.signature(fn)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        params = list(self.signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise PipelineError(
                f"pipeline {self.name!r} must take ctx as its first parameter: def {fn.__name__}(ctx, ...)"
            )
        for p in params[1:]:
            if p.name in RESERVED:
                raise PipelineError(
                    f"pipeline {self.name!r} has a parameter named {p.name!r}, which start() "
                    f"reserves ({', '.join(RESERVED)}); rename it, e.g. {p.name}_"
                )
            if p.kind == inspect.Parameter.VAR_POSITIONAL:
                raise PipelineError(
                    f"pipeline {self.name!r} takes *{p.name}; parameters must "
                    "have names so they can be stored as JSON"
                )
        rest = params[1:]
        self._kinds = {p.name: p.kind for p in rest}
        # keyword-bindable params only (no *args/**kwargs/positional-only): bind() skips inspect
        self._simple = all(
            p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) for p in rest
        )
        self._named = frozenset(p.name for p in rest)
        self._required = frozenset(p.name for p in rest if p.default is inspect.Parameter.empty)
        self._defaults = {p.name: p.default for p in rest if p.default is not inspect.Parameter.empty}
        functools.update_wrapper(self, fn)
        self.workspace = workspace  # where it starts runs and is looked up by name
        workspace.pipelines.add(self)
        codec.allow_pickle(self.name, serializer == "pickle")

    def __repr__(self) -> str:
        return f"<tether.pipeline {self.name!r} phases={self.phases}>"

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The params a call means, defaults applied, checked to be JSON."""
        if not args and self._simple and self._required <= kwargs.keys() <= self._named:
            arguments = {"": None, **self._defaults, **kwargs}  # the common case, without inspect
        else:
            try:
                bound = self.signature.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise ParamsError(f"{self.name}(): {exc}{self._ctx_hint(args, kwargs)}") from None
            bound.apply_defaults()
            arguments = bound.arguments
        params: dict[str, Any] = {}
        try:
            self._collect(arguments, params)
        except ParamsError as exc:
            raise ParamsError(f"{self.name}(): {exc}") from None
        return params

    def _ctx_hint(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Why a call failed to bind when the body was written without ``ctx``: its first
        parameter (say ``path``) receives ctx, so ``start(path=...)`` gave it twice."""
        first = next(iter(self.signature.parameters))
        if first in kwargs or (len(args) > len(self._kinds) and first not in ("ctx", "context")):
            fn = getattr(self.fn, "__name__", "fn")
            return (
                f"; the first parameter of a pipeline receives ctx, so {first!r} is not a "
                f"parameter of {self.name!r}: write def {fn}(ctx, {first}, ...)"
            )
        return ""

    def _collect(self, arguments: dict[str, Any], params: dict[str, Any]) -> None:
        for name, value in list(arguments.items())[1:]:
            kind = self._kinds[name]
            pairs = value.items() if kind == inspect.Parameter.VAR_KEYWORD else [(name, value)]
            for k, v in pairs:
                try:
                    params[k] = codec.check_json(v, k)
                except ParamsError as exc:
                    text = str(exc)
                    if text.startswith(f"{k} "):  # the parameter itself, not inside it
                        raise ParamsError(f"parameter {k!r} {text[len(k) + 1 :]}") from None
                    raise ParamsError(f"parameter {k!r}: {text}") from None

    def key_for(self, params: dict[str, Any], params_json: str | None = None) -> str:
        """The derived key: the pipeline name and a hash of the canonical JSON of the params."""
        text = dumps(params) if params_json is None else params_json
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return f"{self.name}:{digest}"

    def start(
        self,
        *args: Any,
        key: str | None = None,
        policy: Policy = "attach",
        detach: bool = False,
        **kwargs: Any,
    ) -> Run:
        """Start (or find) the run for these params. Idempotent; see the policies in the docs.

        - an active run for the key: returned (``policy="fail"`` raises KeyConflict);
        - a succeeded run: returned with its result (``"rerun"`` starts a new attempt);
        - a failed/cancelled/interrupted run: returned as it is; ``"rerun"`` starts a new attempt
          from scratch, ``"resume"`` one that reuses its checkpoints (automatic resumes of a key
          are capped by ``max_auto_resumes``).

        ``detach=True`` leaves the run pending for a ``tether worker`` process, so it survives
        the kernel; the pipeline must then live in an importable module.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is not one of {', '.join(POLICIES)}")
        if detach:
            self._check_importable()
        params = self.bind(*args, **kwargs)
        params_json = dumps(params)
        if key is None:
            key = self.key_for(params, params_json)
        elif not isinstance(key, str) or not key or not storable(key):
            raise ParamsError(f"key= must be a non-empty str of valid text, got {key!r}")
        ws = self.workspace
        store = ws.store()
        control = self._control
        parent = current()  # started from a run body: that run is its parent
        if parent is not None and parent._runner.store is store:
            control = Control(
                parent.run_id, parent.lineage(), control.max_tries, control.timeout, control.concurrency
            )
        else:
            parent = None
        # an ended run the call attaches to is returned as it is, read without the write lock
        # (terminal statuses never change); anything else is decided in start()'s transaction
        latest = store.latest(key)
        request = StartRequest(
            self.name,
            key,
            params_json,
            self.version,
            self.code,
            policy,
            control,
            ws.settings.max_auto_resumes,
        )
        if latest is not None and latest.status.terminal and type(decide((latest,), request)) is Attach:
            outcome = StartOutcome(latest, False)
        else:
            outcome = self._start_or_attach(store, key, params_json, policy, detach, control)
        rec = outcome.record
        handle = Run(ws, store, outcome.record.id, outcome.record)
        if parent is not None and not outcome.conflict:  # children(): created and attached to
            parent._emit(
                "child", {"id": rec.id, "pipeline": self.name, "key": key, "created": outcome.created}
            )
        if outcome.other_code and not outcome.conflict:
            warnings.warn(
                f"{self.name}: run {rec.id} is still {rec.status}, started by other code "
                f"({outcome.other_code}); it is returned as it is. To run the new code: "
                f"run.cancel(), run.wait(), then start it again",
                UserWarning,
                stacklevel=_outside_stacklevel(),
            )
        if outcome.conflict:
            raise KeyConflict(f"{self.name}: {conflict_message(key, outcome.conflict)}", run=handle)
        return handle

    def _start_or_attach(
        self, store: Store, key: str, params_json: str, policy: Policy, detach: bool, control: Control
    ) -> StartOutcome:
        """``store.start()`` for ``key``, and the hand-over of a run it makes to this process's
        runner: a new run this process can execute at once is claimed in the same transaction."""
        ws = self.workspace
        run_ = ws.runner(store)
        # From the decision to the hand-over to the runner, a kernel interrupt waits (it lands
        # while start() waits for another process's lock, or right after): otherwise it could
        # leave a committed pending run that no thread will ever start.
        with _interrupts.critical():
            # a new run this process can execute at once is claimed in start()'s transaction
            claim = not detach and control.concurrency is None and run_.reserve()
            try:
                outcome = store.start(
                    pipeline=self.name,
                    key=key,
                    params_json=params_json,
                    version=self.version,
                    phases=self.phases,
                    policy=policy,
                    owner=run_.owner,
                    lease_s=ws.settings.lease,
                    gone=owner.gone_reason,
                    detach=detach,
                    max_auto_resumes=ws.settings.max_auto_resumes,
                    control=control,
                    code=self.code,
                    claim=claim,
                )
            except BaseException:
                if claim:
                    run_.unreserve()
                raise
            rec = outcome.record
            if claim and outcome.created and rec.status == Status.RUNNING:
                run_.launch_claimed(rec)
            else:
                if claim:
                    run_.unreserve()
                if not detach and (
                    outcome.created
                    or (
                        rec.status == Status.PENDING
                        and rec.target == run_.owner.instance
                        and not run_.owns(rec.id)
                    )
                ):
                    run_.submit(rec)  # new, or ours yet never handed over: runs now
        return outcome

    def _check_importable(self) -> None:
        module = getattr(self.fn, "__module__", None)
        qual = getattr(self.fn, "__qualname__", "")
        if module in (None, "__main__") or "<locals>" in qual:
            where = (
                "a notebook cell or script (__main__)"
                if module in (None, "__main__")
                else ("inside another function")
            )
            raise PipelineError(
                f"pipeline {self.name!r} is defined in {where}, so a worker process cannot import "
                "it; move it to a module (e.g. pipelines.py beside the notebook), import it from "
                "there, and run `tether worker <module>`; or start it without detach=True"
            )

    def __call__(
        self,
        *args: Any,
        key: str | None = None,
        policy: Policy = "attach",
        detach: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Start (or find) the run, show it in a notebook, and return its result.

        A kernel interrupt (KeyboardInterrupt) while waiting cancels the run.
        """
        run = self.start(*args, key=key, policy=policy, detach=detach, **kwargs)
        display_run(run)
        try:
            return run.result()
        except KeyboardInterrupt:
            run.cancel()
            try:
                run.wait(timeout=5)
            except TimeoutError:
                pass
            raise


def define(workspace: Workspace, fn: Callable[..., Any] | None, **options: Any) -> Any:
    """What ``@tether.pipeline`` / ``@workspace.pipeline`` do: with ``fn``, register it as it is;
    else check ``options`` (a bad one fails at the decorator line) and return the decorator."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(
            f"@tether.pipeline got unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(_OPTIONS))}"
        )
    if fn is not None:
        return Pipeline(fn, workspace=workspace, **options)
    if isinstance(options.get("phases"), str):
        raise PipelineError("phases= takes a list of names, e.g. phases=['scanning', 'applying']")
    _control_options(**{**_CONTROL, **{k: v for k, v in options.items() if k in _CONTROL}})

    def decorate(f: Callable[..., Any]) -> Pipeline:
        return Pipeline(f, workspace=workspace, **options)

    return decorate


# the control options and their defaults (those of Pipeline)
_CONTROL: dict[str, Any] = dict(
    retries=0, retry_delay=0.0, retry_backoff=2.0, retry_on=(Exception,), timeout=None, concurrency=None
)
_OPTIONS = frozenset(["phases", "version", "name", "serializer", *_CONTROL])


def _control_options(
    retries: Any, retry_delay: Any, retry_backoff: Any, retry_on: Any, timeout: Any, concurrency: Any
) -> tuple[Any, ...]:
    """The control options checked (PipelineError naming the bad one) and normalised."""
    return (
        _whole(retries, "retries", 0),
        _number(retry_delay, "retry_delay", "seconds", True),
        _number(retry_backoff, "retry_backoff", "(a factor)", False),
        _exception_types(retry_on),
        None if timeout is None else _number(timeout, "timeout", "seconds", False),
        None if concurrency is None else _whole(concurrency, "concurrency", 1),
    )


def _whole(value: Any, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PipelineError(f"@tether.pipeline({what}=...) must be a whole number >= {least}, got {value!r}")
    return value


def _number(value: Any, what: str, unit: str, zero: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise PipelineError(
            f"@tether.pipeline({what}=...) must be a finite number {bound} {unit}, got {value!r}"
        )
    return float(value)


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise PipelineError(
            "@tether.pipeline(retry_on=...) takes an exception class or a tuple "
            f"of them, e.g. retry_on=(ConnectionError, TimeoutError); got {value!r}"
        )
    return types

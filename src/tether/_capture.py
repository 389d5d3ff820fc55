"""What a body writes to stdout/stderr, and the tqdm bars it iterates, go to its run.

**Output.** A write to ``sys.stdout`` or ``sys.stderr`` from a run's own threads (the body's
thread or task, and ``ctx.map`` items on a thread pool: wherever ``tether.context.current()`` is
the run's ctx) becomes log lines of the run (level ``stdout`` / ``stderr``): split on newlines, a
partial line kept (per thread) until its newline or the end of the run, a carriage return keeping
what a terminal would show (the text after it), a line clipped like any log line. It goes through
``ctx._log``, so a flood is slowed to what the store writes and keeps the log's limits. Writes
from other threads are untouched.

Two hooks, both installed when a runner starts (``install``, idempotent, re-checked at every run
submitted):

- in a Jupyter kernel, ``ipykernel.iostream.OutStream.write`` (the class): every reference to the
  kernel's streams is covered, including those taken before (a ``logging.StreamHandler`` made by
  ``logging.basicConfig()`` in an earlier cell). A run's writes are captured only: sent to the
  kernel they would land in whichever cell happens to be executing. It is a data descriptor
  (``_KernelWrite``): IPython 9 sets a ``write`` on each stream for every cell (and leaves one),
  which would otherwise shadow the class's;
- any other ``sys.stdout`` / ``sys.stderr`` (a terminal, a file, pytest's capture) is replaced by
  a thread-aware proxy: a run's writes are captured *and* passed on (a script or a worker still
  prints them), other threads' writes are passed on untouched. The proxy forwards everything else
  (``fileno``, ``encoding``, ``set_parent``...) to the stream it replaced. A stream replaced again
  later (``contextlib.redirect_stdout``, ``%%capture``) is wrapped at the next run submitted.

A record written by a ``logging.StreamHandler`` in a run's thread is in the run's log already (see
``install_log_capture``): it is not logged twice.

**tqdm.** A bar created in a run's thread (tqdm.std, tqdm.auto, tqdm.notebook, tqdm.asyncio and
every subclass that calls ``tqdm.std.tqdm.__init__``) is created disabled, so it draws nothing,
and feeds the run's progress instead: its total and count become the current phase's, and its
``desc`` names the phase when the body has set none itself. While one bar feeds, bars nested in it
count nothing; bars in ``ctx.map`` items draw nothing and count nothing (the map counts items).
Bars outside runs are untouched. tqdm is never imported here: ``tqdm.std.tqdm.__init__`` is
wrapped when tqdm is already imported at install time, else by an import hook (a
``sys.meta_path`` finder) the moment the user's code imports it.
"""

from __future__ import annotations

import contextvars
import functools
import io
import os
import sys
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, TextIO, cast

from .context import LOG_LINE_MAX, _current

if TYPE_CHECKING:
    from importlib.abc import Loader

    from .context import Context

__all__ = ["IN_ITEM", "end", "install"]

# Set (in a copy of the body's context) for the items of a ctx.map on a thread pool: their bars
# draw nothing and leave the run's progress to the map.
IN_ITEM: contextvars.ContextVar[bool] = contextvars.ContextVar("tether_in_item", default=False)

_get = _current.get
_ident = threading.get_ident
_STREAMS = ("stdout", "stderr")


def _emit_code() -> Any:
    import logging

    return logging.StreamHandler.emit.__code__


_EMIT = _emit_code()


class _Output:
    """Per-run state: partial lines by (thread, stream), the tqdm bar feeding the progress."""

    __slots__ = ("bar", "cut", "ended", "parts", "passing", "tqdm_phase")

    def __init__(self) -> None:
        # the thread whose write a proxy is handing on: a proxy it reaches again (a wrapper
        # around another of ours) passes it on without logging it twice
        self.passing = 0
        self.parts: dict[tuple[int, str], str] = {}
        self.cut: dict[tuple[int, str], int] = {}  # characters cut from an overlong partial line
        self.ended = False
        self.bar: Any = None  # weakref of the bar that feeds progress
        self.tqdm_phase: str | None = None  # the phase a bar's desc named (None: the body's own)


_state_lock = threading.Lock()


def _state(ctx: Context) -> _Output:
    """The run's output state, made once (two of its threads may write first at once)."""
    with _state_lock:
        st: _Output | None = ctx._output
        if st is None:
            st = ctx._output = _Output()
    return st


def _clip(line: str, cut: int) -> str:
    """``line``, of which ``cut`` more characters were dropped already, within LOG_LINE_MAX
    characters (a marker saying how many were cut, as ``ctx.log`` clips)."""
    total = len(line) + cut
    if total <= LOG_LINE_MAX:
        return line
    keep = LOG_LINE_MAX - len(f"… [{total:,} characters cut]")
    return line[:keep] + f"… [{total - keep:,} characters cut]"


def _shown(line: str) -> str:
    """What a terminal shows of a line with carriage returns: the text after the last one."""
    for piece in reversed(line.split("\r")):
        if piece:
            return piece
    return ""


def _take(ctx: Context, st: _Output, ident: int, name: str, text: str) -> bool:
    """Log ``text`` written to stream ``name`` by thread ``ident`` of a run; False if it is not
    the run's to take (the run has ended, or this is a forked child's copy of it)."""
    if st.ended or ctx._runner._forked:
        return False
    key = (ident, name)
    parts = st.parts
    if text == "\n" and not st.cut:  # the end print() writes on its own
        line = parts.pop(key, "")
        ctx._log(_shown(line) if "\r" in line else line, name)
        return True
    if "\n" not in text:  # print() writes its items and its end separately: most writes
        pending = parts.get(key)
        if pending:
            text = pending + text
            if len(text) > LOG_LINE_MAX:
                _overflow(st, key, text)
                return True
        parts[key] = text
        return True
    if parts:
        pending = parts.pop(key, None)
        if pending:
            text = pending + text
    lines = text.split("\n")
    rest = lines.pop()
    if rest:
        parts[key] = rest
    if st.cut:
        cut = st.cut.pop(key, 0)
        if cut:
            lines[0] = _clip(_shown(lines[0]) if "\r" in lines[0] else lines[0], cut)
    log = ctx._log
    if "\r" in text:
        for line in lines:
            log(_shown(line) if "\r" in line else line, name)
    else:
        for line in lines:
            log(line, name)
    return True


def _overflow(st: _Output, key: tuple[int, str], pending: str) -> None:
    """A partial line beyond LOG_LINE_MAX: keep what a terminal would show, then its head only
    (and count what went), so that a line without end holds bounded memory."""
    if "\r" in pending:
        pending = _shown(pending)
    if len(pending) > LOG_LINE_MAX:
        st.cut[key] = st.cut.get(key, 0) + len(pending) - LOG_LINE_MAX
        pending = pending[:LOG_LINE_MAX]
    st.parts[key] = pending


def end(ctx: Context) -> None:
    """The run is ending: its partial lines become lines; later writes are not its own."""
    st = _state(ctx)  # marked ended even if the body wrote nothing: a thread outliving the run
    st.ended = True  # writes as it would without tether
    st.bar = None
    if st.parts and not ctx._runner._forked:
        for key, pending in list(st.parts.items()):  # in the order they were begun
            ctx._log(_clip(_shown(pending), st.cut.get(key, 0)), key[1])
    st.parts.clear()
    st.cut.clear()


# -- the hooks ---------------------------------------------------------------------------------


class _Stream:
    """Stands in for ``sys.stdout`` / ``sys.stderr`` (not a kernel's): a run's writes are logged
    (and passed on with ``tee``), other threads' are passed on; all else is the wrapped stream's."""

    __slots__ = ("_inner", "_name", "_plain", "_tee")

    def __init__(self, inner: TextIO, name: str, tee: bool) -> None:
        self._inner = inner
        self._name = name
        self._tee = tee
        # a stdlib stream, which cannot lead back to a capture: handed on without the guard
        self._plain = type(inner) in (io.TextIOWrapper, io.StringIO)

    def write(self, text: str) -> int:
        ctx = _get()
        if ctx is None:
            return self._inner.write(text)
        st = ctx._output
        if st is None:
            st = _state(ctx)
        ident = _ident()
        if st.passing == ident:  # our own write, handed on, reached us again
            return self._inner.write(text)
        if type(text) is not str and not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if "\n" in text and sys._getframe(1).f_code is _EMIT:
            taken = True  # a logging record: in the run's log already
        else:
            taken = _take(ctx, st, ident, self._name, text)
        if taken and not self._tee:
            return len(text)
        if self._plain:
            return self._inner.write(text)
        st.passing = ident
        try:
            return self._inner.write(text)
        finally:
            st.passing = 0

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<tether capture of {self._inner!r}>"


class _KernelWrite:
    """``OutStream.write`` as a data descriptor, so that it wins over a ``write`` set on a stream.

    IPython 9 tees each cell's output into its history by setting ``stream.write`` on the kernel's
    streams for the cell, then setting it back to what it read at the cell's start: a bound method
    of the class's ``write`` *at that time*, which stays in the stream's ``__dict__`` afterwards.
    A plain function on the class would be shadowed by it (for good, when tether was imported after
    the first cell). As a data descriptor it is always what ``stream.write`` finds; a ``write`` set
    on a stream is kept (in its ``__dict__``) and called for the writes that are not a run's."""

    __slots__ = ("func",)
    _tether = True

    def __init__(self, func: Any) -> None:
        self.func = func

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        return self.func if obj is None else types.MethodType(self.func, obj)

    def __set__(self, obj: Any, value: Any) -> None:
        if getattr(value, "__func__", None) is self.func and getattr(value, "__self__", None) is obj:
            obj.__dict__.pop("write", None)  # set back to the class's own: nothing of its own
        else:
            obj.__dict__["write"] = value

    def __delete__(self, obj: Any) -> None:
        if obj.__dict__.pop("write", None) is None:
            raise AttributeError("write")


# the kernel stream whose own ``write`` (set on it) this thread is in: that one calls back into
# ``stream.write`` (the method it wrapped), which then goes to the class's write
_inside = threading.local()


def _patch_kernel_streams() -> Any:
    """Wrap ``OutStream.write`` of ipykernel (if imported); returns the class, or None."""
    module = sys.modules.get("ipykernel.iostream")
    cls = getattr(module, "OutStream", None)
    if cls is None:
        return None
    original = cls.__dict__.get("write") or cls.write
    if getattr(original, "_tether", False):  # (also another copy of this module's)
        return cls

    @functools.wraps(original)
    def write(self: Any, string: str) -> Any:
        ctx = _get()
        if ctx is not None and isinstance(string, str) and self.name in _STREAMS:
            st = ctx._output
            if st is None:
                st = _state(ctx)
            if "\n" in string and sys._getframe(1).f_code is _EMIT:
                if not (st.ended or ctx._runner._forked):
                    return len(string)  # a logging record: in the run's log already
            elif _take(ctx, st, _ident(), self.name, string):
                return len(string)
        own = self.__dict__.get("write")
        if own is not None:
            outer = getattr(_inside, "stream", None)
            if outer is not self:
                _inside.stream = self
                try:
                    return own(string)
                finally:
                    _inside.stream = outer
        return original(self, string)

    write._tether = True  # type: ignore[attr-defined]  # marks the wrapper as ours (checked above)
    cls.write = _KernelWrite(write)
    return cls


_install_lock = threading.Lock()


def install() -> None:
    """Capture runs' output and tqdm bars (idempotent; cheap when nothing changed)."""
    kernel_cls = _patch_kernel_streams() if "ipykernel.iostream" in sys.modules else None
    for name in _STREAMS:
        stream = getattr(sys, name)
        if (
            stream is None
            or type(stream) is _Stream
            or (kernel_cls is not None and isinstance(stream, kernel_cls))
        ):
            continue
        with _install_lock:
            stream = getattr(sys, name)
            if stream is not None and type(stream) is not _Stream:
                # in a kernel, a run's writes are never handed on: they would reach a cell
                setattr(sys, name, _Stream(stream, name, tee=kernel_cls is None))
    _hook_tqdm()


# -- tqdm ---------------------------------------------------------------------------------------

_tqdm_patched = False


def _hook_tqdm() -> None:
    if _tqdm_patched:
        return
    module = sys.modules.get("tqdm.std")
    if module is not None:
        _patch_tqdm(module)
    elif not any(type(f) is _TqdmFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _TqdmFinder())


class _TqdmFinder:
    """Wraps tqdm's ``__init__`` the moment ``tqdm.std`` is imported (then leaves meta_path)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tqdm.std":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            # a loader by duck typing: what it does not wrap it hands to the one it wraps
            spec.loader = cast("Loader", _PatchingLoader(spec.loader))
        return spec


class _PatchingLoader:
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _patch_tqdm(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _patch_tqdm(module: Any) -> None:
    global _tqdm_patched
    with _install_lock:
        if _tqdm_patched:
            return
        _tqdm_patched = True
        for finder in [f for f in sys.meta_path if type(f) is _TqdmFinder]:
            sys.meta_path.remove(finder)
        cls = getattr(module, "tqdm", None)
        original = getattr(cls, "__init__", None)
        if not isinstance(cls, type) or original is None:  # not a tqdm this knows: left alone
            return

        @functools.wraps(original)
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            ctx = _get()
            if (
                ctx is None
                or kwargs.get("disable") is True
                or len(args) > 10
                or ctx._runner._forked
                or (ctx._output is not None and ctx._output.ended)
            ):
                original(self, *args, **kwargs)
                return
            kwargs["disable"] = True  # draws nothing: no output, no widget, no monitor thread
            original(self, *args, **kwargs)
            if not IN_ITEM.get():
                desc = args[1] if len(args) > 1 else kwargs.get("desc")
                _feed_from(self, ctx, desc)

        cls.__init__ = init  # type: ignore[misc]  # patching tqdm's class in place is the point


def _feed_from(bar: Any, ctx: Context, desc: Any) -> None:
    """Make ``bar`` (created disabled) count into ``ctx`` unless another bar feeds it."""
    st = _state(ctx)
    current = st.bar() if st.bar is not None else None
    if current is not None and not _finished(current):
        return  # nested in the bar that feeds: counts nothing
    st.bar = ref = weakref.ref(bar)
    total = bar.total
    if desc and (ctx.phase_name is None or ctx.phase_name == st.tqdm_phase):
        name = str(desc)
        ctx.phase(name, total=total)
        st.tqdm_phase = name
    else:
        ctx.total = total
    ctx.done = bar.n
    if bar.iterable is not None:
        bar.iterable = _counting(bar.iterable, ctx, st, ref)

    def update(n: int | float = 1) -> None:
        b = ref()
        if b is None:
            return
        b.n += n
        if st.bar is ref:
            if b.total != ctx.total:
                ctx.total = b.total
            ctx.advance(n)

    def reset(total: int | float | None = None) -> None:
        b = ref()
        if b is None:
            return
        b.n = 0
        if total is not None:
            b.total = None if total == float("inf") else total
        if st.bar is ref:
            ctx.done, ctx.total = 0, b.total

    def close() -> None:
        if st.bar is ref:
            st.bar = None

    bar.update, bar.reset, bar.close = update, reset, close


def _finished(bar: Any) -> bool:
    return bar.total is not None and bar.n >= bar.total


def _counting(iterable: Any, ctx: Context, st: _Output, ref: Any) -> Any:
    advance = ctx.advance
    n = 0
    try:
        for obj in iterable:
            yield obj
            n += 1
            advance()  # raises RunCancelled once the run is cancelled
    finally:
        bar = ref()
        if bar is not None:
            bar.n += n
        if st.bar is ref:
            st.bar = None


def _after_fork() -> None:
    """A lock another thread held at the fork stays held in the child: make new ones."""
    global _state_lock, _install_lock
    _state_lock = threading.Lock()
    _install_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

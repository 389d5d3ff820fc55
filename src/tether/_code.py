"""The fingerprint of a pipeline body: how ``start()`` tells edited code from the same code.

``fingerprint(fn)`` hashes the function's syntax tree (``ast``), so comments, blank lines,
indentation and docstrings do not count, and neither do the decorators nor the function's name
(the pipeline's name is part of the key already). Only the body's own source is read: helpers it
calls are not part of it (docs/start.md, "Edited code").

Where the source cannot be read (a function built by ``exec`` of a string, a REPL without
history), the fingerprint hashes the compiled code instead: its bytecode, constants and names,
docstring left out. That one also changes with the Python version; line moves still do not count.
A callable without code (a C function, a ``functools.partial``) has no fingerprint (``None``):
its runs are told apart by params and ``version=`` only.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import types
from collections.abc import Callable
from typing import Any

__all__ = ["fingerprint"]

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
_HASH_CHARS = 16  # 64 bits of sha256: a collision between two edits of one body is not a concern


def fingerprint(fn: Callable[..., Any]) -> str | None:
    """``"ast:<hex>"`` of ``fn``'s syntax tree, ``"bytecode:<hex>"`` without its source, or None."""
    try:
        tree = _tree(fn)
    except (OSError, TypeError, SyntaxError, ValueError, RecursionError):
        tree = None
    if tree is not None:
        try:
            return "ast:" + _digest(_dump(tree))
        except RecursionError:  # a body nested beyond the interpreter's limit
            pass
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if isinstance(code, types.CodeType):
        return "bytecode:" + _digest(_code_text(code, getattr(fn, "__doc__", None)))
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _tree(fn: Callable[..., Any]) -> ast.AST | None:
    """The function's definition, normalised (no decorators, name nor docstrings), or None."""
    import textwrap  # here: ~1 ms that `import tether` need not pay

    source = textwrap.dedent(inspect.getsource(fn))  # IPython keeps cell sources in linecache
    name = getattr(inspect.unwrap(fn), "__name__", None)
    for node in ast.parse(source).body:
        if isinstance(node, _DEFS) and node.name == name:
            node.decorator_list = []
            node.name = ""
            _strip_docstrings(node)
            return node
    return None  # a lambda, or source that is not this function's definition


def _strip_docstrings(root: ast.AST) -> None:
    for node in ast.walk(root):
        if isinstance(node, (*_DEFS, ast.ClassDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]


def _dump(node: ast.AST) -> str:
    """A canonical text of ``node``: type and fields, no positions; unset and empty fields are
    left out, so that Python versions which add a field (``type_params`` in 3.12) or print empty
    ones differently (``ast.dump`` in 3.13) give the same text for the same code."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, ast.AST):
            out.append(type(value).__name__ + "(")
            for field in value._fields:
                item = getattr(value, field, None)
                if item is None or (isinstance(item, list) and not item) or field == "kind":
                    continue  # "kind": the u"" prefix of a str, which means nothing
                out.append(field + "=")
                walk(item)
                out.append(",")
            out.append(")")
        elif isinstance(value, list):
            out.append("[")
            for item in value:
                walk(item)
                out.append(",")
            out.append("]")
        else:  # a constant or an identifier
            out.append(f"{type(value).__name__}:{value!r}")

    walk(node)
    return "".join(out)


def _code_text(code: types.CodeType, doc: str | None) -> str:
    consts = list(code.co_consts)
    if doc is not None and consts and consts[0] == doc:
        consts[0] = None  # the docstring's slot, None in a function without one
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_text(const, None))
        else:
            parts.append(f"{type(const).__name__}:{const!r}")
    return "|".join(parts)

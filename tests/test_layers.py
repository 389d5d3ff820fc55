"""tether's modules form layers without cycles (docs/architecture.md draws the same table).

Every module under src/tether is parsed; its imports of tether modules are collected, those inside
functions included (an import in a function body is still a dependency, only a later one), those
under ``if TYPE_CHECKING:`` excepted (annotations only). Each import must go to the same layer or a
lower one, and the import graph must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module belongs to the layer of the longest prefix that names it
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        ["tether.errors", "tether._text", "tether._interrupts", "tether._code", "tether.config"],
    ),
    ("codec", ["tether.codec", "tether.artifacts"]),
    ("model", ["tether.model"]),
    ("policy", ["tether.policy"]),
    ("store", ["tether.store", "tether._schema"]),
    ("engine", ["tether.owner", "tether.context", "tether._capture", "tether.fanout", "tether.runner"]),
    ("run/pipeline", ["tether.run", "tether._done", "tether._params", "tether.pipeline"]),
    ("workspace", ["tether.workspace"]),
    ("views", ["tether.view"]),
    (
        "front ends",
        ["tether.widget", "tether.cli", "tether._ls", "tether.worker", "tether.watch", "tether.serve"],
    ),
    ("public API", ["tether"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "tether").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")
    return rank


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> dict[str, int]:
    """The tether modules ``module`` imports -> the line of the first such import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _type_checking(node)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                where = ".".join([*base, node.module] if node.module else base)
            else:
                where = node.module or ""
            # `from . import run` imports the module tether.run; `from .run import Run` imports tether.run
            targets = [f"{where}.{a.name}" if f"{where}.{a.name}" in MODULES else where for a in node.names]
        for target in targets:
            if (target == "tether" or target.startswith("tether.")) and target != module:
                found.setdefault(target, node.lineno)
    return found


def test_the_parser_sees_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    # the check is only as good as its parser: a function-level import counts, TYPE_CHECKING not
    found = imports_of("tether.runner")
    assert "tether.fanout" in found  # imported inside Runner.map
    assert "tether.pipeline" not in found and "tether.workspace" not in found  # TYPE_CHECKING only


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    mine = layer_of(module)
    upward = [
        f"{module} (layer {LAYERS[mine][0]!r}) imports {target} (layer {LAYERS[layer_of(target)][0]!r}) "
        f"at {MODULES[module].name}:{line}"
        for target, line in sorted(imports_of(module).items())
        if layer_of(target) > mine
    ]
    assert not upward, (
        "an import goes up the layers; pass what the lower module needs down to it instead "
        "(see docs/architecture.md):\n" + "\n".join(upward)
    )


def test_no_import_cycles() -> None:
    graph = {m: set(imports_of(m)) & MODULES.keys() for m in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)

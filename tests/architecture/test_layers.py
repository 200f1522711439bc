"""The package's imports point down its layers and never go round in a circle.

docs/architecture.md draws the layers; this test is what keeps the drawing true. Every import
counts, at module level or inside a function, except those under ``if TYPE_CHECKING:`` (they
name types for annotations and run nothing).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "core" / "tokensmith"

#: Bottom to top. A module may import from its own package and from any package on a lower
#: rank; packages that share a rank (the OAuth protocol and the HTTP server) know nothing of
#: each other. The package root (tokensmith/__init__.py) is the plugins' public API and may
#: re-export from anywhere.
LAYERS: dict[str, int] = {
    "errors": 0,
    "scope": 0,
    "metrics": 0,
    "models": 1,
    "config": 2,
    "security": 3,
    "storage": 4,
    "listeners": 5,
    "oauth": 6,
    "http": 6,
    "admin": 7,
    "app": 8,
    "cli": 9,
    "asgi": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The tokensmith modules *path* imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokensmith"):
            for alias in node.names:  # from tokensmith.oauth import hookspecs: a module
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tokensmith"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer() -> None:
    """A new top-level module or package must be given its place in LAYERS (and the docs)."""
    packages = {_package(m) for m in _graph()} - {None}
    assert packages - LAYERS.keys() == set()


def test_imports_point_down() -> None:
    """No module imports from a layer above its own, or from a peer package of the same rank."""
    wrong = []
    for module, targets in _graph().items():
        source = _package(module)
        if source is None:
            continue  # the public API
        for target in targets:
            dest = _package(target)
            if dest is None:
                wrong.append(f"{module} -> {target} (the package root)")
            elif dest != source and LAYERS[dest] >= LAYERS[source]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_there_are_no_import_cycles() -> None:
    """Between modules: a cycle hidden in a function-local import is still a cycle."""
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif state.get(target) is None:
                walk(target, [*path, target])
        state[module] = 2

    for module in graph:
        if state.get(module) is None:
            walk(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", ["tokensmith.oauth.endpoints", "tokensmith.http.server"])
def test_the_checker_sees_imports(module: str) -> None:
    """Guards the tests above against a parser that finds nothing."""
    assert any(target.startswith("tokensmith.") for target in _graph()[module])

"""Every module of the package is imported by some test, so that none is covered only by
accident of what the server happens to load."""

from __future__ import annotations

import ast
import pkgutil

import tokensmith
from conftest import ROOT


def modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(tokensmith.__path__, "tokensmith.") if not info.ispkg
    )


def imported_by_tests() -> set[str]:
    """The dotted names the test files import, at any depth: ``import a.b``, and
    ``from a.b import c``, which imports ``a.b.c`` too when that is a module."""
    found: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_walk_finds_the_package() -> None:
    names = modules()
    assert "tokensmith.errors" in names and "tokensmith.oauth.endpoints" in names


def test_every_module_is_imported_by_a_test() -> None:
    """A module no test imports is tested only through the server, if at all: give it a
    focused test beside the end-to-end ones."""
    missing = [name for name in modules() if name not in imported_by_tests()]
    assert missing == []

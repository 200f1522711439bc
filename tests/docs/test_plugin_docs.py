"""The documentation stays true to the code."""

from __future__ import annotations

import re

import pluggy
from conftest import ROOT
from tokensmith.oauth import hookspecs


def hook_names() -> list[str]:
    marker = pluggy.HookspecMarker("tokensmith").project_name
    return [
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, f"{marker}_spec")
    ]


def test_there_are_hookspecs() -> None:
    """The spec module declares hooks (guards the next test against an empty list)."""
    assert "authenticate_client" in hook_names()


def test_every_hook_is_documented_with_an_example() -> None:
    """Every hookspec has a section in docs/plugins.md with a code example that defines it."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name in hook_names():
        section = re.search(rf"^### {name}\n(.*?)(?=^##|\Z)", text, re.S | re.M)
        assert section, f"docs/plugins.md has no section for hook {name}"
        assert re.search(rf"def {name}\(", section.group(1)), f"no example defines {name}"

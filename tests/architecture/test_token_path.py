"""A token request stays on its short path through the package (docs/architecture.md, "One
token request, file by file"): ``bench/trace_path.py`` traces one, and a module that joins the
path has to be added here and to the doc, on purpose."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The files of the package a Basic ``client_credentials`` request runs code in.
BASIC_PATH = {
    "app/front.py",
    "oauth/endpoints.py",
    "oauth/clientauth.py",
    "listeners/registry.py",
    "oauth/grants.py",
    "storage/groupcommit.py",
    "storage/sqlite.py",
}
BUNDLED = {"basic_auth", "post_body_auth", "mutual_tls", "private_key_jwt"}


def _trace(*options: str) -> tuple[set[str], set[str]]:
    """The core modules and the plugins one traced request entered."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trace_path.py"), *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entered = re.findall(r"^\s+\d+ calls\s+(\S+)$", done.stdout, re.MULTILINE)
    core = {name.removeprefix("core/tokensmith/") for name in entered if name.startswith("core/")}
    plugins = {name.split("/")[1] for name in entered if name.startswith("plugins/")}
    assert f"modules entered: {len(core)} core + {len(plugins)} plugins" in done.stdout, done.stdout
    return core, plugins


@pytest.mark.parametrize(
    ("options", "expected"),
    [((), BASIC_PATH), (("--mtls",), BASIC_PATH | {"security/jose.py"})],
    ids=["client_secret_basic", "self_signed_tls_client_auth"],
)
def test_a_token_request_crosses_the_documented_files(options: tuple[str, ...], expected: set[str]) -> None:
    core, plugins = _trace(*options)
    assert core == expected
    # Every enabled authenticator is asked, in order, until one answers: the bundled four.
    assert plugins == BUNDLED


def test_the_architecture_doc_names_the_path() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## One token request, file by file", 1)[1].split("\n## ", 1)[0]
    assert f"That is {len(BASIC_PATH)} modules of the package" in section
    for name in BASIC_PATH:
        assert f"`{name}`" in section or f"`{Path(name).stem}`" in section, name

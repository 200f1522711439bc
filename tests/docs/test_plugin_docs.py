"""The documentation stays true to the code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pluggy
from conftest import DEFAULT_LISTENERS, ROOT, TOKENSMITH, new_deployment
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


def worked_example() -> dict[str, list[str]]:
    """The fenced blocks of docs/plugins.md's worked example, by language."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = re.search(r"^## Worked example: (.*?)(?=^## )", text, re.S | re.M)
    assert section, "docs/plugins.md has no worked example"
    blocks: dict[str, list[str]] = {}
    for language, body in re.findall(r"^```(\w+)\n(.*?)^```", section.group(1), re.S | re.M):
        blocks.setdefault(language, []).append(body)
    return blocks


def test_the_worked_example_runs_end_to_end(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """docs/plugins.md's worked example as written: the plugin's files, its identity.xml
    entry, the shell commands that build it and register a client for its method with its
    own metadata, then the curl line, against a real server: a token."""
    blocks = worked_example()
    (toml,), (module,), (entry,), (register, request) = (
        blocks["toml"],
        blocks["python"],
        blocks["xml"],
        blocks["sh"],
    )
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache, listeners=DEFAULT_LISTENERS + "\n" + entry)
    source = dep.root / "plugins" / "header_key"
    source.mkdir(parents=True)
    (source / "pyproject.toml").write_text(toml)
    (source / "tokensmith_header_key.py").write_text(module)
    env = {**os.environ, "PATH": f"{Path(TOKENSMITH).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=dep.root,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = sh(register)
    assert done.returncode == 0, done.stderr
    client = json.loads(done.stdout[done.stdout.index("{") :])
    assert client["token_endpoint_auth_method"] == "header_key"
    # The refusal the docs quote: a client for the method without its metadata.
    refused = sh("tokensmith sp add partner --auth-method header_key --grant-type client_credentials")
    assert refused.returncode == 1
    assert refused.stderr == (
        "tokensmith: error: invalid_client_metadata: header_key.key_sha256 must be the key's"
        " SHA-256 in lowercase hex\n"
    )
    key = (dep.root / "partner.key").read_text()
    assert client["metadata"] == {"header_key.key_sha256": hashlib.sha256(key.encode()).hexdigest()}

    server = serve(dep)
    answer = sh(request.replace("https://localhost:9443", server.url), CLIENT_ID=str(client["client_id"]))
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["token_type"] == "Bearer"
    with server.client() as http:
        wrong = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"X-Client-Key": f"{client['client_id']}.{'0' * 64}"},
        )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    # The plugin's shared state holds when the client last authenticated.
    with sqlite3.connect(dep.database) as db:
        rows = db.execute("SELECT namespace, key, value FROM plugin_state").fetchall()
    assert [(ns, k) for ns, k, _ in rows] == [("header_key", f"last-used:{client['client_id']}")]

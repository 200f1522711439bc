"""README's walkthroughs, run exactly as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def walkthrough(name: str) -> str:
    """The sh block that follows ``<!-- walkthrough: NAME -->`` in README.md."""
    match = re.search(rf"<!-- walkthrough: {name} -->\n```sh\n(.*?)```", README, re.S)
    assert match, f"README.md has no walkthrough {name!r}"
    return match.group(1)


def run_walkthrough(name: str, server, cwd: Path) -> str:  # noqa: ANN001
    """Run the walkthrough with bash in *cwd*, pointed at *server*'s port, and return stdout."""
    port = server.url.rsplit(":", 1)[1]
    script = walkthrough(name).replace(":9443", f":{port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_starts_with_the_two_commands() -> None:
    """README.md opens with exactly two commands: make run and make test."""
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block and README.index(first_block.group(0)) < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]


def test_ci_runs_make_test() -> None:
    """.ci/run runs the README's test command."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_first_token_walkthrough(deployment, serve) -> None:  # noqa: ANN001
    """The 'Your first token' commands give a Bearer token."""
    server = serve(deployment)
    out = run_walkthrough("first-token", server, deployment.root)
    assert '"token_type":"Bearer"' in out and '"access_token":' in out


def test_mutual_tls_walkthrough(deployment, serve) -> None:  # noqa: ANN001
    """'Mutual TLS in five minutes' gives a token to the registered certificate and 401 to another."""
    server = serve(deployment)
    out = run_walkthrough("mutual-tls", server, deployment.root)
    assert '"token_type":"Bearer"' in out
    assert out.strip().splitlines()[-1] == "401"


def test_seed_password_request_walkthrough(deployment, serve) -> None:  # noqa: ANN001
    """The seed's own password-grant curl, after the mutual-TLS steps, returns 200 and a token."""
    server = serve(deployment)
    run_walkthrough("mutual-tls", server, deployment.root)
    out = run_walkthrough("seed-password", server, deployment.root)
    assert re.search(r"^HTTP/\S+ 200", out, re.M) and '"access_token":' in out


def test_endpoints_walkthrough(deployment, serve) -> None:  # noqa: ANN001
    """Every endpoint example in README works as written and gives what the text says."""
    server = serve(deployment)
    out = run_walkthrough("endpoints", server, deployment.root)
    lines = out.strip().splitlines()
    assert lines[0] == '{"username": "alice"}'
    active, revoked_status, inactive, metadata, jwks = lines[1:]
    assert '"active":true' in active and '"username":"alice"' in active and '"scope":"read"' in active
    assert revoked_status == "200"
    assert inactive == '{"active":false}'
    assert '"issuer":"https://127.0.0.1:' in metadata and '"mtls_endpoint_aliases"' not in metadata
    assert jwks == '{"keys":[]}'


def test_configuration_examples_are_valid() -> None:
    """The server.xml and identity.xml examples in README.md validate against the shipped schemas."""
    from lxml import etree

    from tokensmith.xmlconf import _schema

    blocks = re.findall(r"```xml\n(.*?)```", README, re.S)
    checked = 0
    for block in blocks:
        root = block.lstrip().split(">", 1)[0]
        schema = {"<Server": "server.xsd", "<Identity": "identity.xsd"}.get(root.split()[0])
        if schema is None:
            continue
        document = etree.fromstring(block.encode())
        assert _schema(schema).validate(document), (schema, _schema(schema).error_log)
        checked += 1
    assert checked == 2

"""README.md as a new user meets it: every block run as written, in order, from a fresh clone.

The README stands on its own (it names no file outside the repository), its walkthroughs
leave nothing git would pick up, curl's output ends in a newline and shows no progress
meter, and its configuration examples are the shipped files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED, ROOT, Deployment, start_server
from lxml import etree
from tokensmith.listeners.wheelbuild import build_plugin

README = (ROOT / "README.md").read_text()
MARK = "@@ readme block"


def sh_blocks() -> list[tuple[str | None, str]]:
    """Every sh block of README.md in order, with the walkthrough name in the comment
    ``<!-- walkthrough: NAME -->`` just before it, if any."""
    return [
        (name or None, body)
        for name, body in re.findall(r"(?:<!-- walkthrough: ([\w-]+) -->\n)?```sh\n(.*?)```", README, re.S)
    ]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=readme", "-c", "user.email=readme@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory, keystore: Path, wheel_cache: Path) -> Deployment:
    """The repository as a fresh clone holds it (the tracked files, as they are in this work
    tree, committed to a new repository), set up as ``make run`` sets it up: plugin wheels
    in dropins/ and a development keystore. The shipped server.xml listens on port 9443; here
    it listens on a port the kernel picks."""
    clone = tmp_path_factory.mktemp("clone") / "tokensmith"
    clone.mkdir()
    for name in git(ROOT, "ls-files", "-z").split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    git(clone, "init", "-q")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "clone")
    for wheel in wheel_cache.glob("*.whl"):
        shutil.copy(wheel, clone / "dropins")
    # make run builds every plugin in plugins/; the session cache holds those most tests load.
    for plugin in sorted((ROOT / "plugins").iterdir()):
        if plugin.name not in BUNDLED and (plugin / "pyproject.toml").exists():
            build_plugin(plugin, clone / "dropins")
    subprocess.run(
        [str(Path(sys.executable).with_name("tokensmith")), "keystore", "init"],
        cwd=clone,
        check=True,
        capture_output=True,
    )
    server_xml = clone / "conf" / "server.xml"
    server_xml.write_text(server_xml.read_text().replace('port="9443"', 'port="0"'))
    return Deployment(clone, keystore)


def run_readme(clone: Deployment, port: int) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """Run every sh block after the first (make run, which the fixture stands in for) in one
    bash, as one terminal would, in the clone; return each walkthrough's output by name."""
    blocks = sh_blocks()[1:]
    script = "".join(f"echo '{MARK} {name}'\n{body}" for name, body in blocks).replace(":9443", f":{port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=clone.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A marker that does not start a line follows output with no final newline.
    assert result.stdout.count(f"\n{MARK} ") == len(blocks) - 1 and result.stdout.startswith(MARK), (
        result.stdout
    )
    parts = re.split(rf"^{MARK} (\S+)\n", result.stdout, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2])), result


def test_readme_starts_with_the_two_commands() -> None:
    """README.md opens with exactly two commands: make run and make test."""
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block and README.index(first_block.group(0)) < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]


def test_ci_runs_make_test() -> None:
    """.ci/run runs the README's test command."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_block_is_a_named_walkthrough() -> None:
    """Every sh block after the first is a walkthrough the test below runs, each name once."""
    names = [name for name, _ in sh_blocks()[1:]]
    assert None not in names and len(set(names)) == len(names)
    assert names == [
        "first-token",
        "client-secret-post",
        "mutual-tls",
        "wso2-password",
        "browser-sign-in",
        "endpoints",
        "administration",
    ]


def test_readme_blocks_run_in_order_from_a_fresh_clone(fresh_clone: Deployment) -> None:
    """Every block, run as written and in order from a fresh clone, gives what the text says;
    curl shows no progress meter; and the repository has no new file git would add."""
    server = start_server(fresh_clone)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        out, result = run_readme(fresh_clone, port)
    finally:
        server.stop()
    assert '"token_type":"Bearer"' in out["first-token"] and '"access_token":' in out["first-token"]
    assert '"token_type":"Bearer"' in out["client-secret-post"]
    assert '"token_type":"Bearer"' in out["mutual-tls"]
    assert out["mutual-tls"].strip().splitlines()[-1] == "401"
    assert (
        re.search(r"^HTTP/\S+ 200", out["wso2-password"], re.M) and '"access_token":' in out["wso2-password"]
    )

    # The seed's playground signs a user in with the authorization code grant and PKCE: the
    # browser lands on its callback with the code, state and iss, and the token it gets for
    # the code is bound to its certificate; the code's second use revokes it.
    signin = out["browser-sign-in"].strip().splitlines()
    assert signin[0].startswith(f"https://localhost:{port}/oauth2/authorize?response_type=code&client_id=")
    assert signin[1] == (
        f"http://127.0.0.1:8080/playground2/oauth2client?code=...&state=xyz&iss=https%3A%2F%2F127.0.0.1%3A{port}"
    )
    assert (
        '"active":true' in signin[2]
        and '"username":"admin"' in signin[2]
        and '"cnf":{"x5t#S256":' in signin[2]
    )
    assert '"error":"invalid_grant"' in signin[3]
    assert signin[4] == '{"active":false}'
    # Withdrawing the consent revoked the token of the code issued after it was remembered.
    assert signin[5] == '{"active":true,' and signin[6] == '{"active":false}' and len(signin) == 7

    lines = out["endpoints"].strip().splitlines()
    assert json.loads(lines[0])["username"] == "alice"
    active, revoked_status, inactive, metadata, jwks = lines[1:]
    assert '"active":true' in active and '"username":"alice"' in active and '"scope":"read"' in active
    assert revoked_status == "200"
    assert inactive == '{"active":false}'
    assert f'"issuer":"https://127.0.0.1:{port}"' in metadata and '"mtls_endpoint_aliases"' not in metadata
    assert jwks == '{"keys":[]}'

    # Administration: created, rotated and removed remotely; a client registers itself.
    admin = out["administration"].strip().splitlines()
    assert admin[0] == '{"username": "console", "role": "admin"}'
    first_token, added, removed, second_token, deleted, registered, audit = admin[1:]
    assert '"token_type":"Bearer"' in first_token and '"token_type":"Bearer"' in second_token
    assert (added, removed, deleted) == ("201", "200", "204")
    assert '"registration_access_token":' in registered and '"client_secret":' in registered
    actions = [entry["action"] for entry in json.loads(audit)]
    assert actions == [
        "client.create",
        "registration.initial_access_token",
        "client.delete",
        "client.certificates",
    ]

    assert "% Total" not in result.stderr, result.stderr
    # (The server's log is this test's own: start_server writes it into the deployment's root.)
    untracked = [
        line
        for line in git(fresh_clone.root, "status", "--porcelain", "--untracked-files=all").splitlines()
        if line.startswith("??") and not re.fullmatch(r"\?\? server-\d+\.log", line)
    ]
    assert untracked == []
    assert {p.name for p in (fresh_clone.root / "scratch").iterdir()} >= {
        "client.key",
        "demo.json",
        "tokens.json",
    }


def test_curl_lines_end_their_output_and_stay_quiet() -> None:
    """Every curl in the README is silent about progress (-s) but not errors (-S), and one that
    prints to the terminal ends its output with a newline (-w '...\\n')."""
    curls = [line for _, body in sh_blocks() for line in body.splitlines() if line.startswith("curl ")]
    assert len(curls) >= 10
    for line in curls:
        assert " -sS " in line, line
        if " > " not in line:
            assert re.search(r"""-w "[^"]*\\n" """, line), line


def test_readme_names_nothing_outside_the_repository() -> None:
    """No tracked file points at files that are not in the repository."""
    forbidden = re.compile(r"\.\./shared|\bshared/|CHECKLIST|DESIGN\.md")
    this = Path(__file__).resolve()
    offenders = []
    for name in git(ROOT, "ls-files").splitlines():
        path = ROOT / name
        if path.resolve() == this or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {match.group(0)}" for match in forbidden.finditer(text)]
    assert offenders == []


def _canonical(element: etree._Element) -> list[tuple[str, dict[str, str]]]:
    return [(child.tag, dict(child.attrib)) for child in element if isinstance(child.tag, str)]


def test_server_xml_example_is_the_shipped_file() -> None:
    """The README's server.xml is the shipped conf/server.xml: same elements and attributes."""
    block = next(b for b in re.findall(r"```xml\n(.*?)```", README, re.S) if b.lstrip().startswith("<Server"))
    shipped = etree.parse(str(ROOT / "conf" / "server.xml")).getroot()
    assert _canonical(etree.fromstring(block.encode())) == _canonical(shipped)


def test_configuration_examples_are_valid() -> None:
    """The server.xml and identity.xml examples in README.md validate against the shipped schemas."""
    from tokensmith.config.xml import _schema

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

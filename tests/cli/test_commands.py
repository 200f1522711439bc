"""The tokensmith command as a user runs it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import stat
import subprocess

import pytest
from conftest import ROOT, TOKENSMITH, start_server
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from tokensmith.storage.sqlite import SQLiteStorage

SUBCOMMANDS = [
    [],
    ["serve"],
    ["sp"],
    ["sp", "add"],
    ["sp", "list"],
    ["sp", "remove"],
    ["sp", "show"],
    ["sp", "update"],
    ["sp", "reset-secret"],
    ["plugins"],
    ["plugins", "build"],
    ["plugins", "list"],
    ["plugins", "pin"],
    ["keystore"],
    ["keystore", "init"],
    ["keystore", "export"],
    ["user", "password"],
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOKENSMITH, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_command_has_help(words) -> None:  # noqa: ANN001
    """Every command and subcommand answers --help with a usage text and exit 0."""
    result = run(*words, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tokensmith {' '.join(words)}".rstrip())


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["sp", "add", "demo"],
        ["sp", "add", "demo", "--grant-type", "client_credentials", "--auth-method", "magic"],
        ["sp", "remove", "nobody"],
        ["sp", "list", "--conf", "/nonexistent/conf"],
        ["keystore", "export"],
    ],
    ids=[
        "unknown-command",
        "missing-option",
        "unknown-method",
        "unknown-client",
        "missing-conf",
        "missing-out",
    ],
)
def test_mistakes_give_one_line_and_nonzero_exit(deployment, args) -> None:  # noqa: ANN001
    """A CLI mistake prints exactly one readable line on stderr and exits non-zero."""
    if "--conf" not in args and args[0] != "frobnicate":
        args = [*args, "--conf", str(deployment.conf)]
    result = run(*args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tokensmith")
    assert "Traceback" not in result.stderr


def test_sp_add_list_remove(deployment) -> None:  # noqa: ANN001
    """A registered service provider is listed without its secret and can be removed."""
    added = deployment.add_client(
        "demo",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--scope",
        "read",
    )
    assert set(added) >= {"client_id", "client_secret", "token_endpoint_auth_method"}
    listed = json.loads(deployment.cli("sp", "list", "--json").stdout)
    assert [c["client_id"] for c in listed] == [added["client_id"]]
    assert "client_secret" not in listed[0] and "secret_hash" not in listed[0]
    assert str(added["client_id"]) in deployment.cli("sp", "list").stdout
    assert deployment.cli("sp", "remove", str(added["client_id"])).returncode == 0
    assert json.loads(deployment.cli("sp", "list", "--json").stdout) == []


def test_user_passwords_are_at_least_8_characters_and_can_be_set(deployment) -> None:  # noqa: ANN001
    short = deployment.cli("user", "add", "ann", "--password-stdin", input="seven77\n", check=False)
    assert short.returncode == 1 and short.stderr.count("\n") == 1
    assert "at least 8 characters" in short.stderr
    slash = deployment.cli("user", "add", "a/b", "--password-stdin", input="long-enough\n", check=False)
    assert slash.returncode == 1 and "must not contain '/'" in slash.stderr
    deployment.cli("user", "add", "ann", "--password-stdin", input="first-password\n")
    assert (
        deployment.cli("user", "password", "ann", "--password-stdin", input="short\n", check=False).returncode
        == 1
    )
    changed = deployment.cli("user", "password", "ann", "--password-stdin", input="second-password\n")
    assert json.loads(changed.stdout) == {"username": "ann", "password": "changed"}
    missing = deployment.cli(
        "user", "password", "bob", "--password-stdin", input="long-enough\n", check=False
    )
    assert missing.returncode == 1 and "no user 'bob'" in missing.stderr
    with SQLiteStorage(deployment.database) as store:
        assert [e.action for e in store.list_audit()][:2] == ["user.password", "user.create"]


def test_database_path_can_be_overridden(deployment, tmp_path) -> None:  # noqa: ANN001
    """TOKENSMITH_DB puts the store somewhere else."""
    other = tmp_path / "elsewhere" / "store.db"
    result = subprocess.run(
        [
            TOKENSMITH,
            "sp",
            "add",
            "x",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "client_secret_post",
            "--conf",
            str(deployment.conf),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENSMITH_DB": str(other)},
    )
    assert result.returncode == 0, result.stderr
    assert other.exists() and not deployment.database.exists()


def test_mtls_client_gets_no_secret(deployment, tmp_path) -> None:  # noqa: ANN001
    """A certificate-based client is registered without a client secret."""
    import pki

    cert, _ = pki.self_signed().write(tmp_path, "m")
    added = deployment.add_client(
        "m",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert),
    )
    assert "client_secret" not in added


def test_plugins_build_rebuilds_only_what_changed(tmp_path) -> None:  # noqa: ANN001
    """A second build of unchanged sources is skipped; a changed source is rebuilt."""
    source = tmp_path / "basic_auth"
    shutil.copytree(ROOT / "plugins" / "basic_auth", source)
    out = tmp_path / "dropins"
    assert run("plugins", "build", str(source), "--out", str(out)).stdout.startswith("built")
    assert run("plugins", "build", str(source), "--out", str(out)).stdout.startswith("unchanged")
    module = source / "tokensmith_basic_auth.py"
    module.write_text(module.read_text() + "\n# changed\n")
    assert run("plugins", "build", str(source), "--out", str(out)).stdout.startswith("built")
    assert len(list(out.glob("*.whl"))) == 1


def test_plugins_list(deployment) -> None:  # noqa: ANN001
    """plugins list shows each listener with its order, state, wheel, version and sha256."""
    listed = json.loads(deployment.cli("plugins", "list", "--json").stdout)
    assert [(item["name"], item["orderId"], item["enabled"]) for item in listed] == [
        ("basic_auth", 100, True),
        ("post_body_auth", 110, True),
        ("mutual_tls", 158, True),
    ]
    assert all(len(item["sha256"]) == 64 and item["wheel"].endswith(".whl") for item in listed)
    text = deployment.cli("plugins", "list").stdout.splitlines()
    assert text[0].split()[:4] == ["listener", "ClientAuthenticator", "basic_auth", "orderId=100"]
    assert f"version=0.1.0 sha256={listed[0]['sha256']}" in text[0]


def test_keystore_init_makes_a_p256_localhost_certificate(deployment) -> None:  # noqa: ANN001
    """keystore init creates an ECDSA P-256 certificate for localhost and 127.0.0.1, key 0600."""
    for name in ("server.crt", "server.key"):
        (deployment.conf / "security" / name).unlink()
    assert "created" in deployment.cli("keystore", "init").stdout
    key = deployment.conf / "security" / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((deployment.conf / "security" / "server.crt").read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    before = key.read_bytes()
    assert "kept existing" in deployment.cli("keystore", "init").stdout
    assert key.read_bytes() == before


def test_keystore_export(deployment, tmp_path) -> None:  # noqa: ANN001
    """keystore export writes the server's public certificate and no key."""
    out = tmp_path / "server.crt"
    deployment.cli("keystore", "export", "--out", str(out))
    assert out.read_bytes() == deployment.server_cert.read_bytes()
    assert b"PRIVATE" not in out.read_bytes()


def test_serve_prints_listeners_and_url_and_stops_on_ctrl_c(deployment) -> None:  # noqa: ANN001
    """serve prints one line per listener and its URL, and SIGINT stops it with exit 0."""
    server = start_server(deployment)
    try:
        listener_lines = [line for line in server.stdout_lines if line.startswith("listener ")]
        assert len(listener_lines) == 3
        assert "basic_auth" in listener_lines[0] and "orderId=100" in listener_lines[0]
        assert "tokensmith_basic_auth-0.1.0-py3-none-any.whl" in listener_lines[0]
        assert server.url.startswith("https://127.0.0.1:")
    finally:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0
        server.stop()
    assert "Traceback" not in server.log()


# --- what a new user meets (issue 15) -----------------------------------------------------------


@pytest.mark.parametrize("grant", ["bogus", "device_code", "implicit"])
def test_sp_add_refuses_grant_types_not_served(deployment, grant) -> None:  # noqa: ANN001
    """A grant type the token endpoint does not serve is refused at registration, in one line
    that lists those it serves; nothing is stored."""
    result = deployment.cli(
        "sp",
        "add",
        "x",
        "--grant-type",
        "client_credentials",
        "--grant-type",
        grant,
        "--auth-method",
        "client_secret_basic",
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and repr(grant) in result.stderr
    assert "client_credentials, password, refresh_token" in result.stderr
    assert json.loads(deployment.cli("sp", "list", "--json").stdout) == []


def test_sp_output_says_what_happens_to_the_tokens(deployment, tmp_path) -> None:  # noqa: ANN001
    """A self-signed client's tokens carry cnf, so sp add, show and list say bind_tokens true;
    a secret client without --bind-tokens says false; a public client's are bound when it
    presents a certificate (RFC 8705 §3, §4)."""
    import pki

    cert, _ = pki.self_signed().write(tmp_path, "b")
    added = deployment.add_client(
        "m",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert),
    )
    assert added["bind_tokens"] is True and added["token_binding"].startswith("always")
    shown = json.loads(deployment.cli("sp", "show", str(added["client_id"])).stdout)
    assert shown["bind_tokens"] is True
    secret = deployment.add_client(
        "s", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    public = deployment.add_client("p", "--grant-type", "password", "--auth-method", "none", "--force")
    listed = {c["client_id"]: c for c in json.loads(deployment.cli("sp", "list", "--json").stdout)}
    assert listed[added["client_id"]]["bind_tokens"] is True
    assert listed[secret["client_id"]]["bind_tokens"] is False
    assert listed[public["client_id"]]["bind_tokens"] is True
    assert "when the client presents one" in listed[public["client_id"]]["token_binding"]


def test_version() -> None:
    """tokensmith --version prints the installed version and exits 0."""
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0 and result.stdout == f"tokensmith {version('tokensmith')}\n"


def test_sp_show(deployment) -> None:  # noqa: ANN001
    """sp show prints one client as JSON without its secret; an unknown id is one line, exit 1."""
    added = deployment.add_client(
        "demo",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--scope",
        "read",
    )
    shown = json.loads(deployment.cli("sp", "show", str(added["client_id"])).stdout)
    assert (
        shown["client_id"] == added["client_id"] and shown["name"] == "demo" and shown["scopes"] == ["read"]
    )
    assert "client_secret" not in shown and "secret_hash" not in shown
    missing = deployment.cli("sp", "show", "nobody", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_reset_secret_replaces_it_at_once(deployment, serve) -> None:  # noqa: ANN001
    """sp reset-secret prints a new secret once; on the running server the old one is refused
    at once and the new one works."""
    added = deployment.add_client(
        "demo", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = serve(deployment)
    old = (str(added["client_id"]), str(added["client_secret"]))

    def token(auth: tuple[str, str]) -> int:
        with server.client() as http:
            return http.post(
                "/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth
            ).status_code

    assert token(old) == 200  # and now it sits in the server's cache of verified secrets
    reset = json.loads(deployment.cli("sp", "reset-secret", old[0]).stdout)
    assert reset["client_id"] == old[0] and reset["client_secret"] != old[1]
    assert token(old) == 401
    assert token((old[0], reset["client_secret"])) == 200
    assert "client_secret" not in json.loads(deployment.cli("sp", "show", old[0]).stdout)


def test_reset_secret_refuses_clients_without_one(deployment, tmp_path) -> None:  # noqa: ANN001
    """A certificate or public client has no secret to reset: one line, exit 1."""
    public = deployment.add_client("p", "--grant-type", "password", "--auth-method", "none", "--force")
    result = deployment.cli("sp", "reset-secret", str(public["client_id"]), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no secret" in result.stderr


def test_closed_pipe_is_a_quiet_exit(deployment) -> None:  # noqa: ANN001
    """A reader that closes the pipe (sp list | head -1) gets no error message."""
    for n in range(3):
        deployment.add_client(
            f"c{n}", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
        )
    for args in (["sp", "list"], ["sp", "list", "--json"]):
        process = subprocess.Popen(
            [TOKENSMITH, *args, "--conf", str(deployment.conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the command writes anything
        stderr = process.stderr.read()
        process.stderr.close()
        assert process.wait(timeout=60) == 0
        assert stderr == ""


def test_sp_list_columns_stay_in_line(deployment) -> None:  # noqa: ANN001
    """Every column of sp list starts at the same place on every line, whatever the values."""
    deployment.add_client("one", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    deployment.add_client(
        "many",
        "--grant-type",
        "password",
        "--grant-type",
        "refresh_token",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_post",
    )
    deployment.add_client("pub", "--grant-type", "password", "--auth-method", "none", "--force")
    lines = deployment.cli("sp", "list").stdout.splitlines()
    assert lines[0].split() == ["CLIENT_ID", "AUTH_METHOD", "GRANT_TYPES", "NAME"]
    starts = {
        tuple(
            i
            for i in range(1, len(line))
            if line[i - 1] == " " and line[i] != " " and line[i - 2 : i] == "  "
        )
        for line in lines
    }
    assert len(starts) == 1 and len(next(iter(starts))) == 3, lines


def test_sp_metadata_add_show_update(deployment, tmp_path) -> None:  # noqa: ANN001
    """--metadata registers an RFC 7591 document (options override its members), sp show prints
    it back, sp update --metadata merges (null removes a member); mistakes are one line."""
    document = {
        "client_name": "from the file",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "read",
        "contacts": ["ops@partner.example"],
        "software_version": "2.1",
    }
    path = tmp_path / "client.json"
    path.write_text(json.dumps(document))
    added = deployment.add_client("partner", "--metadata", str(path), "--scope", "write")
    assert added["token_endpoint_auth_method"] == "client_secret_post" and "client_secret" in added
    client_id = str(added["client_id"])
    shown = json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"]
    assert shown == {**document, "client_id": client_id, "client_name": "partner", "scope": "write"}
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"contacts": None, "software_version": "2.2", "scope": "read write"}))
    deployment.cli("sp", "update", client_id, "--metadata", str(change))
    shown = json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"]
    assert "contacts" not in shown and shown["software_version"] == "2.2" and shown["scope"] == "read write"
    mistakes = {
        '{"colour": "blue"}': "invalid_client_metadata: unknown client metadata 'colour'",
        '{"jwks_uri": "http://x.example/jwks"}': "invalid_client_metadata: jwks_uri must be an https URL",
        '{"token_endpoint_auth_method": "none"}': "token_endpoint_auth_method cannot be changed by sp update",
        "[1, 2]": "client metadata must be a JSON object",
        "{": "not JSON",
    }
    for text, expected in mistakes.items():
        change.write_text(text)
        result = deployment.cli("sp", "update", client_id, "--metadata", str(change), check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr
    both = deployment.cli(
        "sp", "update", client_id, "--jwks", str(path), "--jwks-uri", "https://x", check=False
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"] == shown


def test_signing_cli_rotate_list_retire(deployment) -> None:  # noqa: ANN001
    """signing rotate makes the active key, list shows it first, retire removes an old one."""
    first = deployment.cli("signing", "rotate").stdout.split()[0]
    second = deployment.cli("signing", "rotate", "--algorithm", "RS256").stdout.split()[0]
    lines = deployment.cli("signing", "list").stdout.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]
    assert lines[0].split()[1] == "RS256" and lines[0].endswith("active")
    refused = deployment.cli("signing", "retire", second, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    deployment.cli("signing", "retire", first)
    assert [k["kid"] for k in json.loads(deployment.cli("signing", "list", "--json").stdout)["keys"]] == [
        second
    ]


def test_sp_metadata_input_is_bounded_and_checked(deployment, tmp_path) -> None:  # noqa: ANN001
    """sp add/update --metadata and --jwks: a lone surrogate, JSON nested too deep, a device
    instead of a file, documents beyond the size limits, a member of a plugin that is not
    loaded, credentials in jwks_uri: each one readable line and a non-zero exit, quickly."""
    added = deployment.add_client(
        "c", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    client_id = str(added["client_id"])

    def write(text: str) -> str:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
        path.write_text(text)
        return str(path)

    cases = {
        "lone surrogate": ("--metadata", write('{"client_name": "\\ud800"}')),
        "nested too deeply": ("--metadata", write('{"a.b":' + "[" * 100000 + "]" * 100000 + "}")),
        "nested too deeply ": ("--jwks", write('{"keys":' + "[" * 100000 + "]" * 100000 + "}")),
        "not a regular file": ("--jwks", "/dev/zero"),
        "larger than 1048576 bytes": ("--metadata", write(json.dumps({"client_name": "x" * 5_000_000}))),
        "longer than 2000 characters": ("--metadata", write(json.dumps({"client_name": "x" * 5000}))),
        "more than 100 items": ("--metadata", write(json.dumps({"contacts": ["a@example.com"] * 200}))),
        "which is not loaded": ("--metadata", write('{"other_plugin.foo": 1}')),
        "must not hold credentials": ("--jwks-uri", "https://user:secretpw@example.com/jwks"),
    }
    for reason, (option, value) in cases.items():
        result = deployment.cli("sp", "update", client_id, option, value, check=False)
        assert result.returncode not in (0, 70), (reason, result.stderr)
        assert reason.strip() in result.stderr, (reason, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert "secretpw" not in result.stderr
    result = deployment.cli(
        "sp",
        "add",
        "d",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--metadata",
        write('{"contacts": ["\\udfff"]}'),
        check=False,
    )
    assert result.returncode not in (0, 70) and "lone surrogate" in result.stderr, result.stderr


def test_an_argument_that_is_not_utf8_names_no_client_and_no_user(deployment) -> None:  # noqa: ANN001
    """Issue 22: a client id or user name that is not UTF-8 (Python hands such an argument over
    as lone surrogates) is "no such client/user" in one line, not an internal error."""
    not_utf8 = "\udcff\udced"  # the bytes 0xFF 0xED on the command line
    for args in (
        ["sp", "show", not_utf8],
        ["sp", "revoke", not_utf8],
        ["sp", "remove", not_utf8],
        ["sp", "reset-secret", not_utf8],
        ["sp", "update", not_utf8, "--redirect-uri", "https://a.example/cb"],
        ["user", "remove", not_utf8],
        ["user", "role", not_utf8, "admin"],
        ["user", "unlock", not_utf8],
        ["user", "revoke", not_utf8],
    ):
        result = deployment.cli(*args, check=False)
        assert result.returncode not in (0, 70), (args, result.stderr)
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "no " in result.stderr, (args, result.stderr)


def test_sp_redirect_uris_add_show_update(deployment) -> None:  # noqa: ANN001
    """--redirect-uri (repeatable) registers the metadata redirect_uris, sp show prints them,
    sp update --redirect-uri replaces them; a URI the authorization endpoint would not
    redirect to, or a code client without one, is refused in one line and nothing is stored."""
    added = deployment.add_client(
        "web",
        "--grant-type",
        "authorization_code",
        "--auth-method",
        "none",
        "--redirect-uri",
        "https://app.example/cb",
        "--redirect-uri",
        "http://127.0.0.1:8123/cb",
    )
    client_id = str(added["client_id"])
    shown = json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"]
    assert shown["redirect_uris"] == ["https://app.example/cb", "http://127.0.0.1:8123/cb"]
    deployment.cli("sp", "update", client_id, "--redirect-uri", "https://app.example/new")
    shown = json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"]
    assert shown["redirect_uris"] == ["https://app.example/new"]
    before = deployment.cli("sp", "list", "--json").stdout
    for args, expected in [
        (["--redirect-uri", "http://app.example/cb"], "http to the loopback address 127.0.0.1 or [::1]"),
        (["--redirect-uri", "https://app.example/cb#x"], "has a fragment"),
        (["--redirect-uri", "https://trusted.example@evil.example/cb"], "must not hold userinfo"),
        (["--redirect-uri", "https://app.example/caf\u00e9"], "not ASCII"),
        ([], "needs redirect_uris"),
    ]:
        result = deployment.cli(
            "sp",
            "add",
            "bad",
            "--grant-type",
            "authorization_code",
            "--auth-method",
            "none",
            *args,
            check=False,
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert deployment.cli("sp", "list", "--json").stdout == before

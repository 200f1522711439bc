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
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import ROOT, TOKENSMITH, start_server

SUBCOMMANDS = [[], ["serve"], ["sp"], ["sp", "add"], ["sp", "list"], ["sp", "remove"],
               ["plugins"], ["plugins", "build"], ["plugins", "list"], ["plugins", "pin"],
               ["keystore"], ["keystore", "init"], ["keystore", "export"]]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOKENSMITH, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_command_has_help(words) -> None:  # noqa: ANN001
    """Every command and subcommand answers --help with a usage text and exit 0."""
    result = run(*words, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tokensmith {' '.join(words)}".rstrip())


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["sp", "add", "demo"],
    ["sp", "add", "demo", "--grant-type", "client_credentials", "--auth-method", "magic"],
    ["sp", "remove", "nobody"],
    ["sp", "list", "--conf", "/nonexistent/conf"],
    ["keystore", "export"],
], ids=["unknown-command", "missing-option", "unknown-method", "unknown-client", "missing-conf", "missing-out"])
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
    added = deployment.add_client("demo", "--grant-type", "client_credentials",
                                  "--auth-method", "client_secret_basic", "--scope", "read")
    assert set(added) >= {"client_id", "client_secret", "token_endpoint_auth_method"}
    listed = json.loads(deployment.cli("sp", "list", "--json").stdout)
    assert [c["client_id"] for c in listed] == [added["client_id"]]
    assert "client_secret" not in listed[0] and "secret_hash" not in listed[0]
    assert str(added["client_id"]) in deployment.cli("sp", "list").stdout
    assert deployment.cli("sp", "remove", str(added["client_id"])).returncode == 0
    assert json.loads(deployment.cli("sp", "list", "--json").stdout) == []


def test_database_path_can_be_overridden(deployment, tmp_path) -> None:  # noqa: ANN001
    """TOKENSMITH_DB puts the store somewhere else."""
    other = tmp_path / "elsewhere" / "store.db"
    result = subprocess.run([TOKENSMITH, "sp", "add", "x", "--grant-type", "client_credentials",
                             "--auth-method", "client_secret_post", "--conf", str(deployment.conf)],
                            capture_output=True, text=True, env={**os.environ, "TOKENSMITH_DB": str(other)})
    assert result.returncode == 0, result.stderr
    assert other.exists() and not deployment.database.exists()


def test_mtls_client_gets_no_secret(deployment, tmp_path) -> None:  # noqa: ANN001
    """A certificate-based client is registered without a client secret."""
    import pki

    cert, _ = pki.self_signed().write(tmp_path, "m")
    added = deployment.add_client("m", "--grant-type", "client_credentials",
                                  "--auth-method", "self_signed_tls_client_auth", "--cert", str(cert))
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
        ("basic_auth", 100, True), ("post_body_auth", 110, True), ("mutual_tls", 158, True)]
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

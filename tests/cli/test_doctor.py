"""``tokensmith doctor``: a real setup, broken in each way it diagnoses, and the ✗ line with
its advice for each; the healthy setup passes every check."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pki
import pytest
from conftest import DEFAULT_LISTENERS, TOKENSMITH, Deployment, Server, new_deployment


def doctor(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENSMITH, "doctor", "--conf", str(dep.conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The ✗ lines and their fixes, as one text; the command must have said so in its status."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return "\n".join(line for line in result.stdout.splitlines() if line.startswith(("✗", "    fix:")))


@pytest.fixture
def mtls(deployment: Deployment, serve, tmp_path: Path) -> tuple[Server, str, tuple[Path, Path]]:  # noqa: ANN001
    """A running server and a registered self-signed client with its certificate and key."""
    files = pki.self_signed("doctor").write(tmp_path, "client")
    client_id = str(
        deployment.add_client(
            "doc",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    return serve(deployment), client_id, files


def client_doctor(server: Server, client_id: str, files: tuple[Path, Path], *extra: str):  # noqa: ANN201
    return doctor(
        server.deployment,
        "--client-id",
        client_id,
        "--cert",
        str(files[0]),
        "--key",
        str(files[1]),
        "--url",
        server.url,
        *extra,
    )


def test_a_healthy_client_passes_every_check(mtls) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    result = client_doctor(server, client_id, files)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("✓") for line in lines[:-1]) and lines[-1] == "all checks passed", lines
    text = result.stdout
    assert "belongs to the certificate" in text and "is registered" in text
    assert "server asked for a client certificate, and the client sent" in text
    assert "listener mutual_tls: enabled" in text and "✓ token request: 200" in text


def test_wrong_key(mtls, tmp_path: Path) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    other = pki.self_signed("other").write(tmp_path, "other")
    text = failed(client_doctor(server, client_id, (files[0], other[1])))
    assert f"✗ key {other[1]} does not belong to the certificate" in text
    assert "fix: use the key the certificate was made for" in text
    assert "✗ server asked for a client certificate, but none was sent" in text


def test_certificate_not_registered(mtls, tmp_path: Path) -> None:  # noqa: ANN001
    server, client_id, _ = mtls
    stranger = pki.self_signed("stranger").write(tmp_path, "stranger")
    text = failed(client_doctor(server, client_id, stranger))
    assert "is not among its 1 registered certificate(s)" in text
    assert f"fix: `tokensmith sp update {client_id} --add-cert CERT`" in text
    assert "✗ token request: 401 invalid_client (request id " in text
    request_id = text.split("(request id ", 1)[1].split(")", 1)[0]
    server.wait_for_log(f"request_id={request_id} ")
    assert "certificate_not_registered" in server.log()


def test_expired_certificate(deployment: Deployment, serve, tmp_path: Path) -> None:  # noqa: ANN001
    files = pki.self_signed("old", not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY).write(
        tmp_path, "old"
    )
    client_id = str(
        deployment.add_client(
            "old",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    server = serve(deployment)
    text = failed(client_doctor(server, client_id, files))
    assert "✗ certificate: expired on " in text and "fix: make a new certificate and register it" in text


def test_unknown_client(mtls) -> None:  # noqa: ANN001
    server, _, files = mtls
    text = failed(client_doctor(server, "no-such-client", files))
    assert "✗ client no-such-client: not registered" in text and "fix: register it with" in text


def test_listener_disabled(mtls) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    dep = server.deployment
    dep.listeners = DEFAULT_LISTENERS.replace(
        'name="mutual_tls" orderId="158" enable="true"', 'name="mutual_tls" orderId="158" enable="false"'
    )
    dep.write()
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded: configuration 2")
    text = failed(client_doctor(server, client_id, files))
    assert "✗ listener mutual_tls: disabled in identity.xml" in text
    assert 'fix: set enable="true" on line' in text
    assert "✗ token request: 401 invalid_client" in text


def test_server_certificate_not_trusted(mtls, tmp_path: Path) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    other_ca = pki.self_signed("some-other-ca").write(tmp_path, "ca")[0]
    text = failed(client_doctor(server, client_id, files, "--ca", str(other_ca)))
    assert "its certificate is not trusted" in text and "fix: give --ca the CA certificate" in text


def test_server_never_asks_for_a_certificate(
    tmp_path: Path, keystore: Path, wheel_cache: Path, serve
) -> None:  # noqa: ANN001
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        connectors='<Connector address="127.0.0.1" port="0" clientAuth="false"/>',
    )
    files = pki.self_signed("no-ask").write(tmp_path, "client")
    client_id = str(
        dep.add_client(
            "na",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    server = serve(dep)
    text = failed(client_doctor(server, client_id, files))
    assert "✗ server did not ask for a client certificate" in text
    assert "fix: set clientAuth=" in text
    assert "✗ token request: 401 invalid_client" in text


def test_server_not_running(mtls) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    url = server.url
    server.stop()
    result = doctor(
        server.deployment,
        "--client-id",
        client_id,
        "--cert",
        str(files[0]),
        "--key",
        str(files[1]),
        "--url",
        url,
    )
    text = failed(result)
    assert f"✗ server {url}: cannot connect" in text and "fix: start the server" in text


# -- the installation -----------------------------------------------------------------------


def test_a_healthy_installation_passes(deployment: Deployment) -> None:
    result = doctor(deployment)
    assert result.returncode == 0, result.stdout
    assert "✓ keystore: " in result.stdout and "✓ storage " in result.stdout
    assert "✓ dropins: 3 wheel(s) load" in result.stdout


def test_port_in_use(deployment: Deployment) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        deployment.connectors = f'<Connector address="127.0.0.1" port="{port}"/>'
        deployment.write()
        text = failed(doctor(deployment))
    assert f"✗ connector 127.0.0.1:{port}: cannot listen" in text
    assert "fix: stop what listens there" in text


def test_expired_keystore(tmp_path: Path, wheel_cache: Path) -> None:
    expired = tmp_path / "keys"
    expired.mkdir()
    cert, key = pki.self_signed(
        "localhost", not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY
    ).write(expired, "server")
    cert.rename(expired / "server.crt")
    key.rename(expired / "server.key")
    dep = new_deployment(tmp_path / "ts", expired, wheel_cache)
    text = failed(doctor(dep))
    assert "✗ keystore: the server certificate" in text and "expired on" in text
    assert "fix: renew the certificate" in text


def test_missing_keystore(deployment: Deployment) -> None:
    (deployment.conf / "security" / "server.key").unlink()
    text = failed(doctor(deployment))
    assert "✗ keystore: " in text and "server.key" in text and "fix: point <Keystore>" in text


def test_broken_wheel(deployment: Deployment) -> None:
    (deployment.dropins / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    text = failed(doctor(deployment))
    assert "✗ dropins: " in text and "broken-1.0-py3-none-any.whl" in text
    assert "fix: remove or rebuild the wheel" in text


def test_invalid_server_xml(deployment: Deployment) -> None:
    deployment.connectors = '<Connector address="127.0.0.1" port="0" clientAuth="sometimes"/>'
    deployment.write()
    text = failed(doctor(deployment))
    assert f"✗ {deployment.conf / 'server.xml'}:4:" in text and "fix: correct server.xml" in text


def test_storage_unusable(deployment: Deployment) -> None:
    deployment.database.parent.mkdir(parents=True, exist_ok=True)
    deployment.database.mkdir()  # a directory where the database file should be
    text = failed(doctor(deployment))
    assert f"✗ storage {deployment.database}: " in text and "fix: check the <Database path=>" in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://[::1", "--url is not a valid URL"),
        ("https://127.0.0.1:99999/", "--url is not a valid URL"),
        ("https://127.0.0.1:abc", "--url is not a valid URL"),
        ("http://127.0.0.1:1", "--url must be https://host:port"),
    ],
)
def test_a_bad_url_is_one_readable_line(mtls, url: str, words: str) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    result = doctor(
        server.deployment,
        "--client-id",
        client_id,
        "--cert",
        str(files[0]),
        "--key",
        str(files[1]),
        "--url",
        url,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_a_password_in_the_url_is_not_printed(mtls) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    url = server.url.replace("https://", "https://user:HUNTER2SECRET@")
    result = client_doctor(server, client_id, files, "--url", url)
    assert "HUNTER2SECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("ca", ["/dev/null", "/tmp", "/nonexistent/ca.pem"])
def test_an_unusable_ca_is_a_failed_check(mtls, ca: str) -> None:  # noqa: ANN001
    server, client_id, files = mtls
    text = failed(client_doctor(server, client_id, files, "--ca", ca))
    assert f"CA file {ca}: unusable" in text, text


def test_a_key_that_is_no_file_is_refused_at_once(mtls, tmp_path: Path) -> None:  # noqa: ANN001
    """/dev/zero never ends and a FIFO blocks until a writer comes: neither is read."""
    import os

    server, client_id, files = mtls
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for key in ("/dev/zero", str(fifo)):
        result = doctor(
            server.deployment,
            "--client-id",
            client_id,
            "--cert",
            str(files[0]),
            "--key",
            key,
            "--url",
            server.url,
        )
        assert f"key {key}: unreadable: not a regular file" in failed(result)


def test_control_characters_of_the_client_id_are_escaped(mtls) -> None:  # noqa: ANN001
    server, _, files = mtls
    result = client_doctor(server, "evil\x1b[2J\x07id", files)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "client evil\\x1b[2J\\x07id: not registered" in failed(result)


def test_storage_checks_the_configured_postgres(deployment: Deployment, postgres_url, monkeypatch) -> None:  # noqa: ANN001
    """server.xml names PostgreSQL: doctor asks it (no SQLite file appears), and says when its
    schema needs migrating."""
    monkeypatch.setenv("TOKENSMITH_DATABASE_URL", postgres_url)
    text = failed(doctor(deployment))
    assert "✗ storage PostgreSQL postgresql://" in text and "tokensmith db migrate" in text
    deployment.cli("db", "migrate")
    result = doctor(deployment)
    assert result.returncode == 0, result.stdout
    assert "✓ storage PostgreSQL postgresql://" in result.stdout
    assert not deployment.database.exists()


def test_an_unreachable_postgres_is_reported_without_its_password(
    deployment: Deployment, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.setenv(
        "TOKENSMITH_DATABASE_URL", "postgresql://u@127.0.0.1:1/x?password=s3cret&connect_timeout=2"
    )
    result = doctor(deployment)
    text = failed(result)
    assert "✗ storage PostgreSQL postgresql://u@127.0.0.1:1/x?password=***" in text
    assert "fix: check the <Database url=>" in text
    assert "s3cret" not in result.stdout + result.stderr
    assert not deployment.database.exists()

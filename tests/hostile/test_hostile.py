"""Hostile clients and failing storage: each is refused cleanly while others are served."""

from __future__ import annotations

import datetime
import socket
import sqlite3
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pki
import pytest
from conftest import Server, new_deployment, start_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("hostile")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    dep.connectors = '<Connector address="127.0.0.1" port="0" clientAuth="want" connectionTimeout="1500"/>'
    dep.write()
    client = dep.add_client(
        "steady", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = start_server(dep)
    yield server, client
    server.stop()


class Steady:
    """A well-behaved client asking for tokens in a loop on another thread."""

    def __init__(self, server: Server, client: dict):
        self.server, self.client = server, client
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with self.server.client() as http:
            while not self.stop.is_set():
                response = http.post(
                    "/oauth2/token",
                    data={"grant_type": "client_credentials"},
                    auth=(self.client["client_id"], self.client["client_secret"]),
                )
                self.statuses[response.status_code] += 1

    def __enter__(self) -> Steady:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert set(self.statuses) == {200} and self.statuses[200] > 0, self.statuses


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes *sock* within *seconds* (reading and discarding what comes)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        return not isinstance(exc, TimeoutError)
    return False


def test_slow_headers_are_cut_off(env) -> None:  # noqa: ANN001
    """A client trickling its headers (slowloris) is cut off after connectionTimeout (1.5 s),
    well before Hypercorn's own 5 s idle timeout would; others are served meanwhile."""
    server, client = env
    with Steady(server, client):
        with server.raw_tls() as slow:
            slow.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            cut = False
            for _ in range(100):
                try:
                    slow.sendall(b"X")
                except (ConnectionError, ssl.SSLError, OSError):
                    cut = True
                    break
                time.sleep(0.1)
                if closed_within(slow, 0.01):
                    cut = True
                    break
            assert cut
            assert time.monotonic() - started < 4


def test_slow_body_gets_408(env) -> None:  # noqa: ANN001
    """A body that does not arrive within connectionTimeout gets 408 and the connection closes."""
    server, client = env
    with Steady(server, client), server.raw_tls() as slow:
        slow.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant"
        )
        slow.settimeout(10)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]


def test_stalled_handshakes_are_dropped(env) -> None:  # noqa: ANN001
    """TCP connections that never start TLS are closed after connectionTimeout; others go on."""
    server, client = env
    parsed = urllib.parse.urlsplit(server.url)
    idle = [socket.create_connection((parsed.hostname, parsed.port), timeout=10) for _ in range(50)]
    try:
        with Steady(server, client):
            time.sleep(0.5)
        assert all(closed_within(sock, 6) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_huge_client_certificate_is_refused_cleanly(env, tmp_path) -> None:  # noqa: ANN001
    """A 100 KB client certificate is refused (at the handshake or with 401); others are served."""
    server, client = env
    files = pki.big_self_signed(100_000, "huge").write(tmp_path, "huge-100000")
    assert files[0].stat().st_size > 100_000
    with Steady(server, client):
        try:
            with server.client(cert=files) as http:
                response = http.post(
                    "/oauth2/token", data={"grant_type": "client_credentials", "client_id": "x"}
                )
            assert response.status_code == 401
        except (ssl.SSLError, OSError, httpx.HTTPError):
            pass  # refused at the handshake: OpenSSL's 100 KiB certificate-list limit
    assert server.process.poll() is None


def test_rsa4096_self_signed_client_works(env, tmp_path) -> None:  # noqa: ANN001
    """An RSA-4096 self-signed client certificate authenticates normally."""
    server, _ = env
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "rsa4096")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=9))
        .sign(key, hashes.SHA256())
    )
    files = pki.Pair(cert, key).write(tmp_path, "rsa4096")  # type: ignore[arg-type]
    client_id = str(
        server.deployment.add_client(
            "r",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    with server.client(cert=files) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.status_code == 200


def test_twenty_deep_chain_is_refused(env, tmp_path) -> None:  # noqa: ANN001
    """A tls_client_auth client sending a chain of 20 certificates is refused in the handshake
    (at most tls_accept.MAX_CHAIN), before any of it is verified or parsed by the app."""
    server, client = env
    root = pki.ca("Deep Root")
    (tmp_path / "deep-root.pem").write_bytes(root.pem)
    server.deployment.cli(
        "truststore", "import", "--alias", "deep", "--file", str(tmp_path / "deep-root.pem")
    )
    chain, issuer = [], root
    for depth in range(19):
        intermediate = pki.ca(f"Deep {depth}")
        # re-sign each intermediate under the previous one
        intermediate.cert = (
            x509.CertificateBuilder()
            .subject_name(intermediate.cert.subject)
            .issuer_name(issuer.cert.subject)
            .public_key(intermediate.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(pki.NOW - pki.DAY)
            .not_valid_after(pki.NOW + pki.DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer.key, hashes.SHA256())
        )
        chain.insert(0, intermediate.cert)
        issuer = intermediate
    leaf = pki.issue(issuer, "deep-leaf")
    leaf.chain = tuple(chain)
    files = leaf.write(tmp_path, "deep")
    client_id = str(
        server.deployment.add_client(
            "d",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "tls_client_auth",
            "--subject-dn",
            "CN=deep-leaf",
        )["client_id"]
    )
    with Steady(server, client), server.client(cert=files) as http:
        with pytest.raises(httpx.TransportError):
            http.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id})


#: Extension values that are not DER, in certificates OpenSSL still loads and sends: its
#: decoder takes BER and does not check every extension, while the server's (cryptography's)
#: is strict. Values OpenSSL itself refuses to load (a truncated subjectAltName or
#: basicConstraints in the leaf) cannot be sent by an OpenSSL client at all.
MALFORMED_LEAF = {
    "san-ber-long-form-length": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x81\x0b\x82\x09bad.local"),
    "san-indefinite-length": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x80\x82\x09bad.local\x00\x00"),
    "san-trailing-bytes": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x0b\x82\x09bad.local\x00"),
    "san-dns-name-not-ascii": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x0b\x82\x09bad\xff.loca"),
    "basic-constraints-ber-boolean": (ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01\x01"),
    "authority-info-access-truncated": (
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        b"\x30\x05\x30\x03\x06\x01",
    ),
    "certificate-policies-truncated": (ExtensionOID.CERTIFICATE_POLICIES, b"\x30\x03\x30\x01"),
}
#: Malformed extensions in an intermediate CA certificate, which OpenSSL sends unexamined.
MALFORMED_INTERMEDIATE = {
    "basic-constraints-truncated": (ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01"),
    "san-garbage": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\xff\xff"),
}


def malformed(
    cn: str, oid: x509.ObjectIdentifier, value: bytes, issuer: pki.Pair | None = None, *, ca: bool = False
) -> pki.Pair:
    """A certificate for *cn* whose extension *oid* carries the raw *value*; self-signed
    unless *issuer* is given. Its signature is valid: only the extension is malformed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.NOW - pki.DAY)
        .not_valid_after(pki.NOW + pki.DAY)
        .add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    )
    if oid != ExtensionOID.BASIC_CONSTRAINTS:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    with pytest.raises(ValueError):
        _ = cert.extensions  # really malformed, for a strict DER parser
    return pki.Pair(cert, key)


@pytest.fixture(scope="module")
def mtls_clients(env, tmp_path_factory) -> tuple[pki.Pair, str, str]:  # noqa: ANN001
    """A trusted root, and the ids of a self-signed client (registered with a well-formed
    certificate) and of a tls_client_auth client registered for CN=malformed-leaf."""
    server, _ = env
    directory = tmp_path_factory.mktemp("malformed")
    root = pki.ca("Malformed Test Root")
    (directory / "root.pem").write_bytes(root.pem)
    server.deployment.cli(
        "truststore", "import", "--alias", "malformed", "--file", str(directory / "root.pem")
    )
    registered = pki.self_signed("malformed-leaf").write(directory, "registered")
    self_signed = server.deployment.add_client(
        "ss",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(registered[0]),
    )
    by_subject = server.deployment.add_client(
        "pk",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "tls_client_auth",
        "--subject-dn",
        "CN=malformed-leaf",
    )
    return root, str(self_signed["client_id"]), str(by_subject["client_id"])


def refused_over_tls(server: Server, files: tuple[Path, Path], client_id: str) -> str:
    """Present *files* in a real handshake for *client_id*; the answer must be 401
    invalid_client (not a 500, not a dropped connection), which says nothing of why. Returns
    the reason the server logged."""
    marker = f"mutual_tls: client {client_id} refused: "
    seen = server.log().count(marker)
    with server.client(cert=files) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    server.wait_for_log(marker, count=seen + 1)
    return server.log().rsplit(marker, 1)[1].splitlines()[0]


@pytest.mark.parametrize("case", MALFORMED_LEAF)
def test_malformed_client_certificate_is_401(env, mtls_clients, tmp_path, case) -> None:  # noqa: ANN001
    """A client certificate with a malformed extension, sent in a real handshake, gets 401
    invalid_client from a self-signed and from a PKI client, and cannot be registered."""
    server, client = env
    root, self_signed, by_subject = mtls_clients
    oid, value = MALFORMED_LEAF[case]
    with Steady(server, client):
        own = malformed("malformed-leaf", oid, value).write(tmp_path, "self-signed")
        assert "not registered" in refused_over_tls(server, own, self_signed)
        issued = malformed("malformed-leaf", oid, value, root).write(tmp_path, "issued")
        assert "malformed ASN.1" in refused_over_tls(server, issued, by_subject)
        added = server.deployment.cli(
            "sp",
            "add",
            "bad",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(own[0]),
            check=False,
        )
    assert added.returncode == 1 and "malformed ASN.1" in added.stderr, added.stderr
    assert "Traceback" not in added.stderr and len(added.stderr.strip().splitlines()) == 1
    assert server.process.poll() is None


@pytest.mark.parametrize("case", MALFORMED_INTERMEDIATE)
def test_malformed_intermediate_is_401(env, mtls_clients, tmp_path, case) -> None:  # noqa: ANN001
    """A tls_client_auth chain whose intermediate has a malformed extension gets 401."""
    server, client = env
    root, _, by_subject = mtls_clients
    oid, value = MALFORMED_INTERMEDIATE[case]
    intermediate = malformed("Malformed Intermediate", oid, value, root, ca=True)
    leaf = pki.issue(intermediate, "malformed-leaf")
    leaf.chain = (intermediate.cert,)
    with Steady(server, client):
        assert "malformed ASN.1" in refused_over_tls(server, leaf.write(tmp_path, "chain"), by_subject)


def test_locked_storage_fails_closed_with_503(env) -> None:  # noqa: ANN001
    """With the database locked by another process, a token request gets 503 JSON and no token."""
    server, client = env
    with sqlite3.connect(server.deployment.database, isolation_level=None, timeout=1) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with server.client() as http:
            http.timeout = 30
            response = http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            )
        locker.execute("ROLLBACK")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "temporarily_unavailable" and "access_token" not in response.text
    with server.client() as http:
        assert (
            http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            ).status_code
            == 200
        )

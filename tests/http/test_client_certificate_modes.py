"""Client certificate modes: tokensmith.http.tls_accept in real TLS handshakes over 127.0.0.1
with certificates made per test, then the real server's want, need and false connectors."""

from __future__ import annotations

import ctypes
import datetime
import itertools
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pki
import pytest
from conftest import Server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from servers import handshake, roundtrip
from tokensmith.http import tls_accept
from tokensmith.http.tls_accept import accept_any_client_certificate, peer_certificate_chain

Key = ec.EllipticCurvePrivateKey
Issued = tuple[x509.Certificate, Key]
TIMEOUT = 10.0
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def issue(cn: str, issuer: Issued | None = None, *, ca: bool = False) -> Issued:
    """A fresh P-256 key and a certificate for it, self-signed unless ``issuer`` is given."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


_names = itertools.count()


def pem_file(directory: Path, *items: x509.Certificate | Key) -> str:
    """Write certificates and keys, in order, to one new PEM file and return its path."""
    path = directory / f"{next(_names)}.pem"
    path.write_bytes(
        b"".join(
            item.public_bytes(serialization.Encoding.PEM)
            if isinstance(item, x509.Certificate)
            else item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            for item in items
        )
    )
    return str(path)


@dataclass
class Outcome:
    """What each side saw of one connection."""

    server_chain: list[bytes] | None = None
    server_version: str | None = None
    server_error: BaseException | None = None
    server_resumed: bool | None = None
    client_reply: bytes | None = None
    client_error: BaseException | None = None
    client_session: ssl.SSLSession | None = None


@pytest.fixture
def server_identity() -> Issued:
    return issue("localhost")


@pytest.fixture
def server_context(tmp_path: Path, server_identity: Issued) -> Callable[..., ssl.SSLContext]:
    """Build a server context with the server's certificate, not yet asking for client certs."""

    def build() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem_file(tmp_path, *server_identity))
        return context

    return build


@pytest.fixture
def client_context(tmp_path: Path, server_identity: Issued) -> Callable[..., ssl.SSLContext]:
    """Build a client context that trusts the server and presents ``chain`` with ``key``."""

    def build(
        *chain: x509.Certificate, key: Key | None = None, maximum_version: ssl.TLSVersion | None = None
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=der(server_identity[0]))
        if chain:
            context.load_cert_chain(pem_file(tmp_path, *chain, key))
        if maximum_version is not None:
            context.maximum_version = maximum_version
        return context

    return build


def connect(server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Outcome:
    """Run one handshake between a server thread on 127.0.0.1 and a client; stop both."""
    outcome = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server.wrap_socket(conn, server_side=True) as tls:
                outcome.server_chain = peer_certificate_chain(tls)
                outcome.server_version = tls.version()
                outcome.server_resumed = tls.session_reused
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:  # the test inspects it
            outcome.server_error = exc

    thread = threading.Thread(target=serve, name="tls-accept-test-server")
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            # TLS 1.3 clients finish before the server has judged their certificate, so
            # only the server's reply (or its alert) tells whether it accepted.
            outcome.client_reply = tls.recv(2)
            outcome.client_session = tls.session
    except (ssl.SSLError, OSError) as exc:
        outcome.client_error = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive()
    return outcome


def accepted(outcome: Outcome) -> list[bytes]:
    """The chain the server saw, after checking that both sides completed the handshake."""
    assert outcome.server_error is None, outcome.server_error
    assert outcome.client_error is None, outcome.client_error
    assert outcome.client_reply == b"ok"
    assert outcome.server_chain is not None
    return outcome.server_chain


def test_want_accepts_client_without_certificate(server_context, client_context) -> None:
    """With required=False a client that sends no certificate connects and the chain is []."""
    server = server_context()
    accept_any_client_certificate(server, required=False)
    assert accepted(connect(server, client_context())) == []


def test_want_accepts_self_signed_client_certificate(server_context, client_context) -> None:
    """With required=False an unknown self-signed client certificate reaches the server as sent."""
    cert, key = issue("client-1")
    server = server_context()
    accept_any_client_certificate(server, required=False)
    assert accepted(connect(server, client_context(cert, key=key))) == [der(cert)]


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
def test_need_rejects_client_without_certificate(
    server_context, client_context, version: ssl.TLSVersion
) -> None:
    """With required=True a client that sends no certificate fails the handshake."""
    server = server_context()
    accept_any_client_certificate(server, required=True)
    outcome = connect(server, client_context(maximum_version=version))
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert outcome.server_chain is None
    assert outcome.client_reply != b"ok"


def test_need_accepts_self_signed_client_certificate(server_context, client_context) -> None:
    """With required=True a client with an unknown self-signed certificate connects."""
    cert, key = issue("client-1")
    server = server_context()
    accept_any_client_certificate(server, required=True)
    assert accepted(connect(server, client_context(cert, key=key))) == [der(cert)]


def test_same_subject_certificates_each_reach_the_server(server_context, client_context) -> None:
    """Two self-signed certificates with one subject DN each connect and arrive as their own."""
    first, second = issue("localhost"), issue("localhost")
    assert first[0].subject == second[0].subject and der(first[0]) != der(second[0])
    server = server_context()
    accept_any_client_certificate(server, required=True)
    for cert, key in (first, second, first):
        assert accepted(connect(server, client_context(cert, key=key))) == [der(cert)]


def test_chain_is_leaf_then_intermediate(server_context, client_context) -> None:
    """A client sending leaf and intermediate is seen as [leaf, intermediate], in that order."""
    root = issue("Test Root CA", ca=True)
    intermediate = issue("Test Intermediate CA", root, ca=True)
    leaf, key = issue("client-1", intermediate)
    server = server_context()
    accept_any_client_certificate(server, required=True)
    chain = accepted(connect(server, client_context(leaf, intermediate[0], key=key)))
    assert chain == [der(leaf), der(intermediate[0])]


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
def test_accepts_in_tls_1_2_and_1_3(server_context, client_context, version: ssl.TLSVersion) -> None:
    """The accept-any callback works, and the leaf arrives, in both TLS 1.2 and TLS 1.3."""
    cert, key = issue("client-1")
    server = server_context()
    accept_any_client_certificate(server, required=True)
    outcome = connect(server, client_context(cert, key=key, maximum_version=version))
    assert accepted(outcome) == [der(cert)]
    assert outcome.server_version == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_resumed_session_still_yields_the_leaf_first(server_context, client_context) -> None:
    """On a resumed session the chain still starts with the leaf the client proved at first."""
    root = issue("Test Root CA", ca=True)
    intermediate = issue("Test Intermediate CA", root, ca=True)
    leaf, key = issue("client-1", intermediate)
    server = server_context()
    accept_any_client_certificate(server, required=True)
    client = client_context(leaf, intermediate[0], key=key)
    first = connect(server, client)
    assert accepted(first) == [der(leaf), der(intermediate[0])]
    resumed = connect(server, client, session=first.client_session)
    assert resumed.server_resumed
    # A TLS 1.3 ticket keeps the leaf but not the rest of the chain (OpenSSL 3.0).
    assert accepted(resumed) in ([der(leaf)], [der(leaf), der(intermediate[0])])


def test_callback_survives_later_verify_settings(server_context, client_context) -> None:
    """Later load_verify_locations and verify_mode changes do not bring back chain checks."""
    cert, key = issue("client-1")
    server = server_context()
    accept_any_client_certificate(server, required=False)
    server.load_verify_locations(cadata=der(issue("Unrelated CA", ca=True)[0]))
    server.verify_mode = ssl.CERT_REQUIRED
    assert accepted(connect(server, client_context(cert, key=key))) == [der(cert)]
    assert isinstance(connect(server, client_context()).server_error, ssl.SSLError)


def test_plain_context_rejects_the_same_client(server_context, client_context) -> None:
    """Control: without accept_any_client_certificate an unknown self-signed cert is rejected."""
    cert, key = issue("client-1")
    server = server_context()
    server.verify_mode = ssl.CERT_OPTIONAL
    outcome = connect(server, client_context(cert, key=key))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.client_reply != b"ok"


@pytest.mark.skip(
    reason="Python's ssl (OpenSSL) refuses to load or send a certificate whose "
    "key does not match, so such a client cannot be built here"
)
def test_rejects_certificate_without_matching_key() -> None:
    """A client that sends a certificate but cannot sign CertificateVerify with its key fails."""


def test_rejects_contexts_it_cannot_configure() -> None:
    """A client-side context or a non-SSLContext is refused before any memory is read."""
    with pytest.raises(ValueError):
        accept_any_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), required=False)
    with pytest.raises(TypeError):
        accept_any_client_certificate(object(), required=False)  # type: ignore[arg-type]


def test_wrong_struct_layout_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the SSL_CTX pointer is not where expected, configuring raises RuntimeError."""
    # One pointer further is PySSLContext.alpn_protocols, NULL until ALPN is set.
    offset = tls_accept._SSL_CTX_OFFSET + ctypes.sizeof(ctypes.c_void_p)
    monkeypatch.setattr(tls_accept, "_SSL_CTX_OFFSET", offset)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(RuntimeError, match="layout"):
        accept_any_client_certificate(context, required=True)
    assert context.verify_mode == ssl.CERT_NONE


# --- the real server's connectors ---------------------------------------------------------------


@pytest.fixture
def server(tls_server) -> Server:  # noqa: ANN001
    """The server with a want, a need and a false connector (tests/servers.py)."""
    return tls_server


def test_want_completes_without_a_certificate(server) -> None:  # noqa: ANN001
    """On a want connector a client without a certificate is served."""
    with handshake(server, index=0) as tls:
        assert roundtrip(tls).startswith(b"HTTP/1.1 200")


def test_need_refuses_a_client_without_a_certificate(server, tmp_path) -> None:  # noqa: ANN001
    """On a need connector a client without a certificate is refused; with one it is served."""
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with handshake(server, index=1) as tls:  # TLS 1.3: the refusal arrives after the handshake
            roundtrip(tls)
            raise ssl.SSLError("served without a certificate")
    cert = pki.self_signed().write(tmp_path, "need")
    with handshake(server, index=1, cert=cert) as tls:
        assert roundtrip(tls).startswith(b"HTTP/1.1 200")


def test_false_connector_never_asks(server, tmp_path) -> None:  # noqa: ANN001
    """On a clientAuth="false" connector no certificate is requested, so none is sent."""
    client_id = str(
        server.deployment.add_client(
            "f",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str((files := pki.self_signed().write(tmp_path, "f"))[0]),
        )["client_id"]
    )
    with server.client(cert=files, url=server.urls[2]) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.status_code == 401
    with server.client(cert=files, url=server.urls[0]) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.status_code == 200

"""private_key_jwt (RFC 7523 §2.2 and §3), the bundled plugin, against the real server.

Clients are registered with the CLI as an administrator would (``sp add --auth-method
private_key_jwt --jwks FILE``, ``--jwks-uri URL`` or ``--cert FILE``); assertions are signed
here with ``cryptography`` and sent over real TLS.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_LISTENERS, ROOT, Deployment, new_deployment
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from tokensmith.listeners.wheelbuild import build_plugin
from tokensmith.security.keystore import generate_dev_keystore

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REFUSED = {"error": "invalid_client", "error_description": "client authentication failed"}
LISTENER = '        <EventListener type="ClientAuthenticator" name="private_key_jwt" orderId="170" enable="true">{}</EventListener>'


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Key:
    """A client's key pair for one JWS algorithm, and its public JWK."""

    def __init__(self, alg: str, kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
        elif alg in ("RS256", "PS256"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, str]:
        public = self.private.public_key()
        if self.alg == "ES256":
            numbers = public.public_numbers()
            members = {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big"))}
            members["y"] = b64url(numbers.y.to_bytes(32, "big"))
        elif self.alg in ("RS256", "PS256"):
            numbers = public.public_numbers()
            members = {"kty": "RSA", "n": uint(numbers.n), "e": uint(numbers.e)}
        else:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            members = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        return {**members, "kid": self.kid, "use": "sig"}

    def sign(self, data: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.alg == "RS256":
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "PS256":
            return self.private.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        return self.private.sign(data)

    def certificate(self) -> x509.Certificate:
        """A self-signed certificate of this key (for ``sp add --cert``)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwt client")])
        now = time.time()
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime_of(now - 60))
            .not_valid_after(datetime_of(now + 86400))
            .sign(self.private, None if self.alg == "EdDSA" else hashes.SHA256())
        )


def datetime_of(seconds: float):  # noqa: ANN201
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def assertion(key: Key, client_id: str, aud: str, *, header: dict | None = None, **claims: Any) -> str:
    """A signed client assertion (RFC 7523 §3): *claims* override the valid defaults (None drops one)."""
    now = int(time.time())
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    head = {"alg": key.alg, "kid": key.kid, **(header or {})}
    head = {name: value for name, value in head.items() if value is not None}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(body).encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


@pytest.fixture(scope="session")
def jwt_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel, _ = build_plugin(ROOT / "plugins" / "private_key_jwt", tmp_path_factory.mktemp("pkjwt"))
    return wheel


def jwt_deployment(
    root: Path, keystore: Path, wheel_cache: Path, jwt_wheel: Path, properties: str = ""
) -> Deployment:
    dep = new_deployment(
        root, keystore, wheel_cache, listeners=DEFAULT_LISTENERS + "\n" + LISTENER.format(properties)
    )
    dep.write()
    (dep.dropins / jwt_wheel.name).write_bytes(jwt_wheel.read_bytes())
    return dep


@pytest.fixture
def dep(tmp_path: Path, keystore: Path, wheel_cache: Path, jwt_wheel: Path) -> Deployment:
    return jwt_deployment(tmp_path / "ts", keystore, wheel_cache, jwt_wheel)


def register(dep: Deployment, tmp_path: Path, *keys: Key, extra: tuple[str, ...] = ()) -> str:
    path = tmp_path / f"jwks-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps({"keys": [key.jwk() for key in keys]}))
    added = dep.add_client(
        "jwt",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "private_key_jwt",
        "--jwks",
        str(path),
        *extra,
    )
    return str(added["client_id"])


def token_request(http: Any, client_assertion: str, **form: str) -> Any:
    return http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion,
            **form,
        },
    )


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_a_valid_assertion_gets_a_token(dep, serve, tmp_path, alg) -> None:  # noqa: ANN001
    """Each algorithm: a client registered with --jwks authenticates with a signed assertion,
    for aud the token endpoint URL or the issuer, with or without the client_id parameter."""
    key = Key(alg)
    client_id = register(dep, tmp_path, key)
    server = serve(dep)
    with server.client() as http:
        response = token_request(http, assertion(key, client_id, f"{server.url}/oauth2/token"))
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        response = token_request(http, assertion(key, client_id, server.url), client_id=client_id)
        assert response.status_code == 200, response.text
        # The same method at introspection, whose audience may be its own URL.
        introspected = http.post(
            "/oauth2/introspect",
            data={
                "token": token,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion(key, client_id, f"{server.url}/oauth2/introspect"),
            },
        )
        assert introspected.status_code == 200 and introspected.json()["client_id"] == client_id
        metadata = http.get("/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == [
        "ES256",
        "RS256",
        "PS256",
        "EdDSA",
    ]


def test_every_bad_assertion_is_invalid_client_and_logged(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """Wrong key, wrong aud, expired, replayed jti, unknown kid and the rest: the caller gets
    the same invalid_client, the operator's log says which check failed."""
    key, other = Key("ES256"), Key("ES256")
    client_id = register(dep, tmp_path, key)
    secret_client = dep.add_client(
        "s", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    now = int(time.time())
    replayed = assertion(key, client_id, url)
    forged_kid = Key("ES256", kid=key.kid)  # another key presenting the registered kid
    cases = {
        "the signature does not verify": assertion(forged_kid, client_id, url),
        "names neither the issuer nor the endpoint": assertion(
            key, client_id, "https://elsewhere.example/token"
        ),
        "expired": assertion(key, client_id, url, exp=now - 120, iat=now - 180),
        "no registered ES256 key with kid": assertion(other, client_id, url),
        "exp is missing": assertion(key, client_id, url, exp=None),
        "lives longer than 300 s": assertion(key, client_id, url, exp=now + 3600),
        "iat is in the future": assertion(key, client_id, url, iat=now + 600, exp=now + 660),
        "nbf is in the future": assertion(key, client_id, url, nbf=now + 600),
        "jti is missing": assertion(key, client_id, url, jti=None),
        "iss and sub are not the same client_id": assertion(key, client_id, url, iss="someone-else"),
        "no such client": assertion(key, "nobody", url),
        "is registered for client_secret_basic": assertion(key, str(secret_client["client_id"]), url),
        "alg 'HS256'": assertion(key, client_id, url, header={"alg": "HS256"}),
        "crit header parameters": assertion(key, client_id, url, header={"crit": ["exp"]}),
    }
    with server.client() as http:
        assert token_request(http, replayed).status_code == 200
        cases["was used before"] = replayed
        for reason, value in cases.items():
            response = token_request(http, value)
            assert response.status_code == 401, reason
            assert response.json() == REFUSED, reason
            server.wait_for_log(reason)
        # The client_id parameter must be the assertion's sub (RFC 7521 §4.2).
        response = token_request(http, assertion(key, client_id, url), client_id="nobody")
        assert response.status_code == 401 and response.json() == REFUSED
        server.wait_for_log("the client_id parameter is not the assertion's sub")
        # Not a JWT at all, and alg none: refused the same way, never a 500.
        for value in ("not-a-jwt", b64url(b'{"alg":"none"}') + "." + b64url(b"{}") + "."):
            response = token_request(http, value)
            assert response.status_code == 401 and response.json() == REFUSED


def test_a_jti_is_single_use_across_two_workers(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """One assertion sent at once on 24 connections spread over two workers: exactly one
    gets a token, every other one is a replay (the jti is remembered in the shared store)."""
    key = Key("ES256")
    client_id = register(dep, tmp_path, key)
    server = serve(dep, "--workers", "2")
    workers = sorted(
        int(pid)
        for pid in Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    )
    assert len(workers) == 2
    body = (
        f"grant_type=client_credentials&client_assertion_type={JWT_BEARER}&client_assertion="
        + assertion(key, client_id, f"{server.url}/oauth2/token")
    ).encode()
    request = (
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    context = ssl.create_default_context(cafile=str(dep.server_cert))
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    before = {pid: socket_count(pid) for pid in workers}
    raw = [socket.create_connection((host, int(port)), timeout=10) for _ in range(24)]
    connections = [context.wrap_socket(sock, server_hostname="127.0.0.1") for sock in raw]
    try:
        gained = {pid: socket_count(pid) - before[pid] for pid in workers}
        assert min(gained.values()) >= 1, gained  # both workers hold some of the connections
        for tls in connections:
            tls.sendall(request)
        statuses = [read_status(tls) for tls in connections]
    finally:
        for sock in connections:
            sock.close()
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == 23, statuses
    server.wait_for_log("was used before", count=23)


def socket_count(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


def read_status(tls: ssl.SSLSocket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


class JwksServer:
    """An HTTPS server of one JWK Set that counts its fetches."""

    def __init__(self, cert: Path, key: Path):
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.fetches += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[JwksServer]:
    generate_dev_keystore(tmp_path / "jwks.crt", tmp_path / "jwks.key")
    server = JwksServer(tmp_path / "jwks.crt", tmp_path / "jwks.key")
    yield server
    server.close()


def test_keys_from_a_jwks_uri_are_cached_and_refetched_for_a_new_kid(
    tmp_path, keystore, wheel_cache, jwt_wheel, serve, jwks_server
) -> None:  # noqa: ANN001
    """jwks_uri: fetched once and cached; a new kid (the client rotated) fetches it again."""
    dep = jwt_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        jwt_wheel,
        f'<Property name="JwksUriCAFile">{tmp_path / "jwks.crt"}</Property>'
        '<Property name="JwksUriMinRefetchSeconds">0</Property>',
    )
    first, second = Key("ES256"), Key("RS256")
    jwks_server.jwks = {"keys": [first.jwk()]}
    added = dep.add_client(
        "jwt",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "private_key_jwt",
        "--jwks-uri",
        jwks_server.url,
    )
    client_id = str(added["client_id"])
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    with server.client() as http:
        for _ in range(3):
            assert token_request(http, assertion(first, client_id, url)).status_code == 200
        assert jwks_server.fetches == 1
        jwks_server.jwks = {"keys": [first.jwk(), second.jwk()]}
        response = token_request(http, assertion(second, client_id, url))
        assert response.status_code == 200, response.text
        assert jwks_server.fetches == 2
        # A kid the URL does not have either: refused, after one more look.
        response = token_request(http, assertion(Key("ES256"), client_id, url))
        assert response.status_code == 401 and response.json() == REFUSED
    server.wait_for_log("no registered ES256 key with kid")


def test_a_jwks_uri_that_fails_is_invalid_client(dep, serve, tmp_path, jwks_server) -> None:  # noqa: ANN001
    """An untrusted certificate at the jwks_uri (the default trust store does not know the
    test CA): refused, with the reason in the log, never a 500."""
    key = Key("ES256")
    jwks_server.jwks = {"keys": [key.jwk()]}
    added = dep.add_client(
        "jwt",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "private_key_jwt",
        "--jwks-uri",
        jwks_server.url,
    )
    server = serve(dep)
    with server.client() as http:
        response = token_request(http, assertion(key, str(added["client_id"]), f"{server.url}/oauth2/token"))
    assert response.status_code == 401 and response.json() == REFUSED
    server.wait_for_log("CERTIFICATE_VERIFY_FAILED")
    assert jwks_server.fetches == 0


def test_a_certificate_registered_with_cert_is_a_signing_key(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """sp add --cert registers the certificate as a JWK with x5c; the plugin takes its key,
    named by its x5t#S256 as kid or by no kid at all."""
    key = Key("ES256")
    pem = tmp_path / "client.pem"
    cert = key.certificate()
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    added = dep.add_client(
        "jwt", "--grant-type", "client_credentials", "--auth-method", "private_key_jwt", "--cert", str(pem)
    )
    client_id = str(added["client_id"])
    thumbprint = b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    with server.client() as http:
        key.kid = thumbprint
        assert token_request(http, assertion(key, client_id, url)).status_code == 200
        assert token_request(http, assertion(key, client_id, url, header={"kid": None})).status_code == 200
        response = token_request(http, assertion(key, client_id, url, header={"kid": 7}))
    assert response.status_code == 401 and response.json() == REFUSED


def test_registration_is_checked_by_the_plugin(dep, tmp_path) -> None:  # noqa: ANN001
    """sp add for private_key_jwt: the plugin's check_client_metadata refuses a client
    without keys, an unusable key or an algorithm it does not take (RFC 7591 §3.2.2); an
    unknown method lists those of the loaded authenticators."""
    base = ("sp", "add", "jwt", "--grant-type", "client_credentials", "--auth-method", "private_key_jwt")
    result = dep.cli(*base, check=False)
    assert result.returncode != 0
    assert result.stderr.startswith(
        "tokensmith: error: invalid_client_metadata: a private_key_jwt client needs its public keys"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}))
    result = dep.cli(*base, "--jwks", str(bad), check=False)
    assert "invalid_client_metadata: jwks.keys[0]: EC coordinates of the wrong length" in result.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(Key("ES256").jwk()))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"token_endpoint_auth_signing_alg": "HS256"}))
    result = dep.cli(*base, "--jwks", str(good), "--metadata", str(metadata), check=False)
    assert "invalid_client_metadata: token_endpoint_auth_signing_alg 'HS256' is not one of" in result.stderr
    result = dep.cli(
        "sp", "add", "x", "--grant-type", "client_credentials", "--auth-method", "nope", check=False
    )
    assert result.returncode != 0
    assert "unknown --auth-method 'nope'; use one of" in result.stderr and "private_key_jwt" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    # With a good key it is stored, and sp show prints the metadata.
    added = dep.add_client(*base[2:], "--jwks", str(good))
    shown = json.loads(dep.cli("sp", "show", str(added["client_id"])).stdout)["client_metadata"]
    assert shown["jwks"] == {"keys": [json.loads(good.read_text())]}


# -- red-team findings: jwks_uri servers that misbehave, and hostile assertions --------------


class BadJwksServer:
    """An HTTPS server that answers every GET in one bad way (*mode*) and counts connections.

    ``drip``: a status line, then one header byte every 0.2 s for as long as the client
    listens (a socket timeout alone never fires); ``headers``: 150 headers; ``status``: a
    status line that is not one; ``deep``: a JSON body nested 10000 deep.
    """

    def __init__(self, cert: Path, key: Path, mode: str):
        self.mode = mode
        self.connections = 0
        self.stopping = threading.Event()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}/jwks.json"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        try:
            with self.context.wrap_socket(sock, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                if self.mode == "drip":
                    tls.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not self.stopping.wait(0.2):
                        tls.sendall(b"a")
                    return
                if self.mode == "status":
                    tls.sendall(b"garbage\r\n\r\n")
                    return
                body = b'{"keys":[]}'
                if self.mode == "deep":
                    body = b'{"keys":' + b"[" * 10000 + b"]" * 10000 + b"}"
                head = b"HTTP/1.1 200 OK\r\n"
                if self.mode == "headers":
                    head += b"".join(b"X-%d: y\r\n" % n for n in range(150))
                tls.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.accepter.join(5)
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def bad_jwks(tmp_path: Path) -> Iterator[Any]:
    generate_dev_keystore(tmp_path / "jwks.crt", tmp_path / "jwks.key")
    servers: list[BadJwksServer] = []

    def start(mode: str) -> BadJwksServer:
        server = BadJwksServer(tmp_path / "jwks.crt", tmp_path / "jwks.key", mode)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def uri_client(dep: Deployment, url: str) -> str:
    added = dep.add_client(
        "jwt", "--grant-type", "client_credentials", "--auth-method", "private_key_jwt", "--jwks-uri", url
    )
    return str(added["client_id"])


def test_a_dripping_jwks_uri_holds_one_thread_for_one_deadline(
    tmp_path, keystore, wheel_cache, jwt_wheel, serve, bad_jwks
) -> None:  # noqa: ANN001
    """A jwks_uri that sends a byte every 0.2 s forever: the fetch ends at its deadline
    (connect, headers and body together), 40 concurrent assertions for that client share one
    fetch, its failure is remembered, and meanwhile a client_secret_basic client keeps
    getting tokens."""
    dep = jwt_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        jwt_wheel,
        f'<Property name="JwksUriCAFile">{tmp_path / "jwks.crt"}</Property>'
        '<Property name="JwksUriTimeoutSeconds">1</Property>',
    )
    slow = bad_jwks("drip")
    client_id = uri_client(dep, slow.url)
    basic = dep.add_client("b", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    key = Key("ES256")
    results: list[tuple[int, float]] = []

    def attack() -> None:
        started = time.monotonic()
        with server.client() as http:
            status = token_request(http, assertion(key, client_id, url)).status_code
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=attack) for _ in range(40)]
    for thread in threads:
        thread.start()
    basic_statuses = []
    with server.client() as http:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            response = http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(str(basic["client_id"]), str(basic["client_secret"])),
            )
            basic_statuses.append(response.status_code)
    for thread in threads:
        thread.join(30)
    assert basic_statuses and set(basic_statuses) == {200}, basic_statuses
    assert [status for status, _ in results] == [401] * 40, results
    assert max(elapsed for _, elapsed in results) < 4, results
    assert slow.connections == 1
    server.wait_for_log("no whole answer within 1 s")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("headers", "not an HTTP answer"), ("status", "not an HTTP answer"), ("deep", "not a JWK Set")],
)
def test_a_jwks_uri_with_a_broken_answer_is_invalid_client(
    tmp_path, keystore, wheel_cache, jwt_wheel, serve, bad_jwks, mode, reason
) -> None:  # noqa: ANN001
    """Too many headers, a bad status line, JSON nested too deep: invalid_client, never a
    500, and the failure is remembered (a second request does not fetch again)."""
    dep = jwt_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        jwt_wheel,
        f'<Property name="JwksUriCAFile">{tmp_path / "jwks.crt"}</Property>',
    )
    bad = bad_jwks(mode)
    client_id = uri_client(dep, bad.url)
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    key = Key("ES256")
    with server.client() as http:
        for _ in range(2):
            response = token_request(http, assertion(key, client_id, url))
            assert response.status_code == 401 and response.json() == REFUSED
    server.wait_for_log(reason)
    assert bad.connections == 1


def signed(key: Key, head: str, body: str) -> str:
    """An assertion of exactly these JSON texts, signed by *key*."""
    signing_input = f"{b64url(head.encode())}.{b64url(body.encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def test_hostile_assertions_are_invalid_client_not_500(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """JSON nested 10000 deep, a lone surrogate in sub or jti, times of 10**400: refused as
    invalid_client (never a 500); a newline in sub does not forge a log line."""
    key = Key("ES256")
    client_id = register(dep, tmp_path, key)
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    now = int(time.time())

    def claims(**changes: Any) -> str:
        body = {"iss": client_id, "sub": client_id, "aud": url, "exp": now + 60, "iat": now}
        body["jti"] = uuid.uuid4().hex
        body.update(changes)
        return json.dumps(body)

    head = json.dumps({"alg": "ES256", "kid": key.kid})
    cases = {
        "deep header": signed(key, "[" * 10000 + "]" * 10000, claims()),
        "deep claims": signed(key, head, '{"a":' + "[" * 10000 + "]" * 10000 + "}"),
        "surrogate sub": signed(key, head, claims(iss="\ud800", sub="\ud800")),
        "surrogate jti": signed(key, head, claims(jti="\udfff")),
        "huge exp": signed(key, head, claims(exp=10**400)),
        "negative exp": signed(key, head, claims(exp=-(10**400))),
        "huge iat": signed(key, head, claims(iat=10**400)),
        "huge nbf": signed(key, head, claims(nbf=-(10**400))),
        "forged log line": signed(key, head, claims(iss="x\nFORGED\x00", sub="x\nFORGED\x00")),
    }
    with server.client() as http:
        for name, value in cases.items():
            response = token_request(http, value)
            assert response.status_code == 401, (name, response.text)
            assert response.json() == REFUSED, name
        response = token_request(http, assertion(key, client_id, url))
        assert response.status_code == 200, response.text
    server.wait_for_log("client x\\nFORGED\\x00 refused")
    log = server.log()
    assert "Traceback" not in log
    assert not any(line.startswith("FORGED") for line in log.splitlines())


def test_the_jti_is_kept_to_the_end_of_the_last_second(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """An assertion whose exp + skew falls inside a second: a replay is refused up to the
    very end of its acceptance, not only up to the whole second before it."""
    dep.listeners = dep.listeners.replace(
        LISTENER.format(""), LISTENER.format('<Property name="ClockSkewSeconds">0</Property>')
    )
    dep.write()
    key = Key("ES256")
    client_id = register(dep, tmp_path, key)
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    # exp a little past a whole second, soon: the window between floor(exp) and exp.
    now = time.time()
    exp = int(now) + 3 + 0.9
    value = assertion(key, client_id, url, exp=exp, iat=int(now))
    with server.client() as http:
        assert token_request(http, value).status_code == 200
        time.sleep(max(0, int(exp) + 0.2 - time.time()))  # past floor(exp), before exp
        assert time.time() < exp
        response = token_request(http, value)
    assert response.status_code == 401 and response.json() == REFUSED
    server.wait_for_log("was used before")


def test_an_assertion_refused_for_basic_auth_too_keeps_its_jti(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """An assertion sent with Authorization: Basic is refused (two methods, 400) without
    using up its jti: the same assertion alone still authenticates."""
    key = Key("ES256")
    client_id = register(dep, tmp_path, key)
    server = serve(dep)
    value = assertion(key, client_id, f"{server.url}/oauth2/token")
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": value,
            },
            auth=(client_id, "whatever"),
        )
        assert response.status_code == 400, response.text
        response = token_request(http, value)
    assert response.status_code == 200, response.text


def test_the_key_of_an_expired_certificate_is_refused(dep, serve, tmp_path) -> None:  # noqa: ANN001
    """--cert: an expired certificate is refused at registration; one that expires after it
    was registered no longer authenticates its client."""
    key = Key("ES256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwt client")])
    now = time.time()

    def cert_file(not_after: float) -> Path:
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime_of(now - 3600))
            .not_valid_after(datetime_of(not_after))
            .sign(key.private, hashes.SHA256())
        )
        path = tmp_path / f"{uuid.uuid4().hex}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    base = ("sp", "add", "jwt", "--grant-type", "client_credentials", "--auth-method", "private_key_jwt")
    result = dep.cli(*base, "--cert", str(cert_file(now - 60)), check=False)
    assert result.returncode != 0 and "x5c[0] is valid from" in result.stderr, result.stderr
    # Long enough for the registration, the server's start and the first request on a loaded
    # machine (CI once took more than 4 s and met the expiry before the first request).
    soon = int(time.time()) + 15
    added = dep.add_client(*base[2:], "--cert", str(cert_file(soon)))
    server = serve(dep)
    url = f"{server.url}/oauth2/token"
    with server.client() as http:
        assert (
            token_request(
                http, assertion(key, str(added["client_id"]), url, header={"kid": None})
            ).status_code
            == 200
        )
        time.sleep(max(0, soon + 1.5 - time.time()))
        response = token_request(http, assertion(key, str(added["client_id"]), url, header={"kid": None}))
    assert response.status_code == 401 and response.json() == REFUSED
    server.wait_for_log("no registered ES256 key")


def test_a_jwks_uri_with_credentials_is_refused_without_logging_them() -> None:
    """In-process: a jwks_uri stored with user:password@ (registered before registration
    refused them) is refused, and the refusal names the URL without the credentials."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pkjwt_source", ROOT / "plugins" / "private_key_jwt" / "tokensmith_private_key_jwt.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    with pytest.raises(module.Refused) as info:
        module._fetch("https://user:secretpw@127.0.0.1:1/jwks", module.Settings(timeout=1))
    assert "has credentials" in str(info.value) and "secretpw" not in str(info.value)
    assert "secretpw" not in module._safe_url("https://user:secretpw@host/x")

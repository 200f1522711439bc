"""The serving layer under the attacks a review found, against the real server on both lanes.

Each test is one finding: trailers that would carry credentials, a client that never reads
its responses, an HTTP/2 client that never opens its flow-control window, a pipelined request
lost at a read boundary, redirects built from the Host header, and client keys chosen to make
the handshake expensive.
"""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pki
import pytest
from conftest import Server, new_deployment, start_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from test_http1 import connect, token_request

LANES = ["hypercorn", "llhttp"]
TIMEOUT_MS = 1500


@pytest.fixture(scope="module", params=LANES)
def env(request, tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, bytes, str]]:  # noqa: ANN001
    """A server on one lane with a proxy certificate header trusted from 127.0.0.1, a Basic
    client, and a self-signed mTLS client; yields (server, Basic header line, mTLS client_id)."""
    root = tmp_path_factory.mktemp("serving")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    dep.connectors = (
        f'<Connector address="127.0.0.1" port="0" clientAuth="want" '
        f'connectionTimeout="{TIMEOUT_MS}" http1="{request.param}"/>'
    )
    dep.oauth = '<ClientCertificateHeader name="X-Client-Cert" trustedProxies="127.0.0.1"/>'
    dep.write()
    basic = dep.add_client("b", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    header = (
        b"Authorization: Basic "
        + base64.b64encode(f"{basic['client_id']}:{basic['client_secret']}".encode())
        + b"\r\n"
    )
    pair = pki.self_signed("serving-victim")
    cert_path, _ = pair.write(root, "victim")
    victim = dep.add_client(
        "v",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert_path),
    )
    server = start_server(dep)
    server.victim_pem = pair.pem  # type: ignore[attr-defined]
    yield server, header, str(victim["client_id"])
    server.stop()


def chunked_token_request(headers: bytes, trailer: bytes, body: bytes) -> bytes:
    return (
        b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n"
        + headers
        + b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
        + trailer
        + b"\r\n"
    )


def test_authorization_in_a_trailer_is_not_used(env) -> None:  # noqa: ANN001
    """A bogus Authorization header with a valid one in the trailer gets 401, not a token
    (RFC 9110 §6.5.1: trailers are not merged into the header section)."""
    server, valid, _ = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            chunked_token_request(
                b"Authorization: Basic Ym9ndXM6Ym9ndXM=\r\n", valid, b"grant_type=client_credentials"
            )
        )
        status, headers, _ = reader.response()
    assert status == 401 and headers["www-authenticate"].startswith("Basic")


def test_certificate_in_a_trailer_is_not_used(env) -> None:  # noqa: ANN001
    """A registered client's public certificate in a trailer, from the trusted proxy address,
    does not authenticate it: without a certificate in the header section there is none."""
    server, _, victim = env
    escaped = server.victim_pem.decode().replace("\n", "%0A").replace(" ", "%20").encode()
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            chunked_token_request(
                b"",
                b"X-Client-Cert: " + escaped + b"\r\n",
                b"grant_type=client_credentials&client_id=" + victim.encode(),
            )
        )
        status, _, _ = reader.response()
    assert status in (400, 401)
    # The same certificate in the header section, from the same trusted address, does work:
    # the test above failed for the right reason.
    sock, reader = connect(server)
    with sock:
        body = b"grant_type=client_credentials&client_id=" + victim.encode()
        sock.sendall(token_request(b"X-Client-Cert: " + escaped + b"\r\n", body=body))
        assert reader.response()[0] == 200


def test_a_client_that_never_reads_is_cut_off(env) -> None:  # noqa: ANN001
    """Thousands of pipelined requests whose answers are never read: the server stops
    reading, its writes wait at most connectionTimeout, then it drops the connection. Only a
    bounded part of the requests was ever answered."""
    server, _, _ = env
    sent = 20_000
    request = b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = server.raw_tls(timeout=2)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = request * sent
        started = time.monotonic()
        try:
            sock.sendall(payload)  # blocks once the server stops reading: that is the point
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        time.sleep(TIMEOUT_MS / 1000 + 2.5)
        answered, closed = 0, False
        sock.settimeout(3)
        try:
            while data := sock.recv(1 << 20):
                answered += data.count(b"HTTP/1.1 200")
            closed = True
        except (ConnectionError, ssl.SSLError, OSError):
            closed = True
        except TimeoutError:
            pass
    assert closed, f"still open after {time.monotonic() - started:.1f} s"
    assert answered < sent / 4


def test_http2_window_that_never_opens_is_cut_off(env) -> None:  # noqa: ANN001
    """An HTTP/2 client that sets its initial window to 0, opens 20 streams and only answers
    PINGs loses the connection once a response has waited connectionTimeout for flow control."""
    server, _, _ = env
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(server.deployment.server_cert))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=1)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for _ in range(20):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(
                stream,
                [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/oauth2/jwks")],
                end_stream=True,
            )
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < TIMEOUT_MS / 1000 + 6:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            except (ConnectionError, ssl.SSLError, OSError):
                closed = True
                break
            if data == b"":
                closed = True
                break
            if data:
                conn.receive_data(data)  # headers arrive; DATA cannot (window 0)
            conn.ping(b"12345678")
            try:
                sock.sendall(conn.data_to_send())
            except (ConnectionError, ssl.SSLError, OSError):
                closed = True
                break
    assert closed
    assert time.monotonic() - started < TIMEOUT_MS / 1000 + 4


def test_pipelined_request_split_at_a_read_boundary_is_answered(env) -> None:  # noqa: ANN001
    """One read holding complete requests plus the start of another head, then the rest of
    that head: every request is answered (the head limit counts the last head only)."""
    server, auth, _ = env
    sock, reader = connect(server)
    with sock:
        whole = token_request(auth) * 3
        last = token_request(auth, extra=b"X-Pad: " + b"p" * 12_000 + b"\r\n")
        sock.sendall(whole + last[:600])
        time.sleep(0.2)
        sock.sendall(last[600:])
        statuses = [reader.response()[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 200]


def test_no_redirect_is_built_from_the_host_header(env) -> None:  # noqa: ANN001
    """`GET //oauth2//jwks` with a foreign Host gets no redirect to that host (it is not our
    path: 404), and a request without Host, or with two, is 400 (RFC 9112 §3.2)."""
    server, _, _ = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"GET //oauth2//jwks HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, headers, _ = reader.response()
    assert status == 404 and "location" not in headers
    for head in (
        b"GET /oauth2/jwks HTTP/1.1\r\n\r\n",
        b"GET /oauth2/jwks HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        sock, reader = connect(server)
        with sock:
            sock.sendall(head)
            assert reader.response()[0] == 400


# -- client keys that would make the handshake expensive -------------------------------------


def self_signed_with(key, directory: Path, name: str) -> tuple[Path, Path]:  # noqa: ANN001
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=9))
        .sign(key, algorithm)
    )
    return pki.Pair(cert, key).write(directory, name)


def handshake_ok(server: Server, files: tuple[Path, Path]) -> bool:
    """Whether a request over a connection with this client certificate is answered. (With
    TLS 1.3 the client finishes its side of the handshake before the server has seen its
    certificate, so a refusal shows at the first read.)"""
    try:
        with server.raw_tls(cert=files, timeout=10) as sock:
            sock.sendall(b"GET /oauth2/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionError):
        return False


@pytest.mark.parametrize(
    "make, accepted",
    [
        (lambda: pki.rsa_key_with_exponent(2048, 2040), False),
        (lambda: pki.rsa_key_with_exponent(2048, 2), False),  # e = 3
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096 + 1024), False),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), False),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), True),
        (lambda: ec.generate_private_key(ec.SECP384R1()), True),
        (lambda: ec.generate_private_key(ec.SECP521R1()), True),
        (lambda: ed25519.Ed25519PrivateKey.generate(), True),
    ],
    ids=["rsa-huge-exponent", "rsa-e3", "rsa-5120", "rsa-1024", "rsa-2048", "p384", "p521", "ed25519"],
)
def test_client_keys_no_client_needs_are_refused_in_the_handshake(env, tmp_path, make, accepted) -> None:  # noqa: ANN001
    """Only client keys a client needs get through the handshake; the others are refused
    before the server checks a signature with them (tls_accept.acceptable_key)."""
    server, _, _ = env
    assert handshake_ok(server, self_signed_with(make(), tmp_path, "k")) is accepted


def test_ec_key_with_explicit_parameters_is_refused(env, tmp_path) -> None:  # noqa: ANN001
    """A P-256 key spelled out as explicit curve parameters is refused (RFC 5480 §2.1.1: named
    curves only), although OpenSSL recognises the curve; the same curve by name is served."""
    server, _, _ = env
    key, cert = tmp_path / "explicit.key", tmp_path / "explicit.pem"
    subprocess.run(
        [
            "openssl",
            "ecparam",
            "-name",
            "prime256v1",
            "-param_enc",
            "explicit",
            "-genkey",
            "-noout",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=explicit",
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    assert (
        b"prime-field"
        in subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-noout", "-text"], check=True, capture_output=True
        ).stdout
    )
    assert handshake_ok(server, (cert, key)) is False
    assert handshake_ok(server, self_signed_with(ec.generate_private_key(ec.SECP256R1()), tmp_path, "named"))


@pytest.mark.parametrize("intermediates, accepted", [(8, True), (10, False)])
def test_long_chains_are_refused_in_the_handshake(env, tmp_path, intermediates, accepted) -> None:  # noqa: ANN001
    """A client may send its leaf, up to the 8 intermediates the mutual_tls listener validates,
    and a root; a longer chain is refused before the server parses more of it."""
    server, _, _ = env
    issuer = pki.ca("Chain Root")
    chain = [issuer.cert]
    for depth in range(intermediates):
        issuer = pki.ca(f"Chain {depth}", issuer=issuer)
        chain.insert(0, issuer.cert)
    leaf = pki.issue(issuer, "chain-leaf")
    leaf.chain = tuple(chain)
    assert handshake_ok(server, leaf.write(tmp_path, "chain")) is accepted


# -- found by the outside review of this layer -----------------------------------------------


def test_no_upgrade_to_http2_on_an_http11_connection(env) -> None:  # noqa: ANN001
    """`Upgrade: h2c` and the HTTP/2 preface on a TLS connection that negotiated HTTP/1.1 are
    refused with 400 (RFC 9113 §3.2-3.3: over TLS, HTTP/2 is chosen with ALPN only). Switching
    would let a client talk past a proxy that tunnels after a 101, with its own copy of the
    certificate header the proxy would have replaced (h2c smuggling)."""
    server, _, _ = env
    for request in (
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ):
        sock, reader = connect(server)
        with sock:
            sock.sendall(request)
            status, headers, _ = reader.response()
            assert status == 400 and headers["connection"] == "close"
            assert reader.closed(within=2)


def h2_connection(server: Server) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(server.deployment.server_cert))
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(
        socket.create_connection((host, int(port)), timeout=5), server_hostname="127.0.0.1"
    )
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_exchange(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, until: int) -> dict[int, object]:
    """Read until stream *until* ends or is reset; what happened to each stream."""
    seen: dict[int, object] = {}
    deadline = time.monotonic() + 10
    while until not in seen and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            seen.setdefault(until, "connection closed")
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                seen[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.StreamReset):
                seen[event.stream_id] = "reset"
            elif isinstance(event, h2.events.ConnectionTerminated):
                seen.setdefault(until, "connection closed")
        sock.sendall(conn.data_to_send())
    return seen


def test_http2_stream_errors_stay_in_their_stream(env) -> None:  # noqa: ANN001
    """A request with a non-ASCII :path, a CONNECT, and DATA sent after an early 413 each
    cost only their own stream: another request on the same connection is answered (RFC 9113
    §8.1, §8.3.1). Hypercorn alone lost the whole connection, and every stream on it."""
    server, auth, _ = env
    sock, conn = h2_connection(server)
    with sock:
        base = [(b":scheme", b"https"), (b":authority", b"x")]
        conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/oauth2/\xff")] + base, end_stream=True)
        conn.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"x:1")], end_stream=True)
        conn.send_headers(
            5,
            [
                (b":method", b"POST"),
                (b":path", b"/oauth2/token"),
                *base,
                (b"content-length", b"70000"),
                (b"content-type", b"application/x-www-form-urlencoded"),
            ],
        )
        sock.sendall(conn.data_to_send())
        seen = h2_exchange(sock, conn, until=5)
        assert seen.get(1) == "reset" and seen.get(3) == "reset" and seen.get(5) == b"413", seen
        conn.send_data(5, b"x" * 1000)  # the rest of a body that was already refused
        name, value = auth.rstrip(b"\r\n").split(b": ", 1)
        form = b"grant_type=client_credentials"
        conn.send_headers(
            7,
            [
                (b":method", b"POST"),
                (b":path", b"/oauth2/token"),
                *base,
                (name.lower(), value),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", b"%d" % len(form)),
            ],
        )
        conn.send_data(7, form, end_stream=True)
        sock.sendall(conn.data_to_send())
        assert h2_exchange(sock, conn, until=7).get(7) == b"200"


def _metric(server: Server, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with *prefix*."""
    with server.client() as http:
        text = http.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _open_connections(server: Server) -> float:
    return _metric(server, "tokensmith_open_connections")


def _assert_connections_end(server: Server, before: float) -> None:
    """The open connections come back to *before*, give or take the one reading them.

    Each reading of /metrics is a connection of its own, which Hypercorn keeps for up to the
    connection timeout after the client closed it: readings are spaced wider than that."""
    deadline = time.monotonic() + 15
    while (now := _open_connections(server)) > before + 1 and time.monotonic() < deadline:
        time.sleep(2 * TIMEOUT_MS / 1000)
    assert now <= before + 1, (before, now)


def test_http2_announces_the_stream_limit_it_serves(env) -> None:  # noqa: ANN001
    """SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2) is the 32 requests a connection may
    have in the app: it said 100, and a client keeping to that got 503 for streams 33 to 100."""
    server, _, _ = env
    sock, conn = h2_connection(server)
    with sock:
        settings = None
        while settings is None:
            events = conn.receive_data(sock.recv(65536))
            settings = next((e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)), None)
        assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 32


def test_http2_clients_that_go_away_leave_nothing_behind(env) -> None:  # noqa: ANN001
    """HTTP/2 connections closed in the middle of a token request's body, or after a whole
    request and before its answer, end on the server: the fast lane's answer to a client that
    went away used to wait for ever on a stream buffer nothing would empty, one task and its
    memory kept per connection (an outside review found it)."""
    server, auth, _ = env
    before = _open_connections(server)
    name, value = auth.rstrip(b"\r\n").split(b": ", 1)
    form = b"grant_type=client_credentials"
    for n in range(30):
        sock, conn = h2_connection(server)
        headers = [
            (b":method", b"POST"),
            (b":path", b"/oauth2/token"),
            (b":scheme", b"https"),
            (b":authority", b"x"),
            (name.lower(), value),
            (b"content-type", b"application/x-www-form-urlencoded"),
        ]
        conn.send_headers(1, headers)
        if n % 2:
            conn.send_data(1, form, end_stream=True)  # whole, then gone before the answer
        else:
            conn.send_data(1, form[:10])  # gone in the middle of the body
        sock.sendall(conn.data_to_send())
        time.sleep(0.01)
        sock.close()
    _assert_connections_end(server, before)
    assert "Traceback" not in server.log()


def test_http2_data_for_a_stream_answered_in_the_same_read_is_dropped_quietly(env) -> None:  # noqa: ANN001
    """A request's HEADERS and DATA in one write, to an endpoint that answers without reading
    the body (a GET to the token endpoint: 405): the data is dropped and the connection goes
    on serving, with no error in the log. The stream used to be answered while the earlier
    event of the same read was handled, and its DATA then raised KeyError in Hypercorn."""
    server, auth, _ = env
    base = [(b":scheme", b"https"), (b":authority", b"x")]
    for _ in range(20):
        sock, conn = h2_connection(server)
        with sock:
            conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/oauth2/token"), *base])
            conn.send_data(1, b"x" * 100, end_stream=True)
            conn.send_headers(3, [(b":method", b"GET"), (b":path", b"/healthz"), *base], end_stream=True)
            sock.sendall(conn.data_to_send())
            seen = h2_exchange(sock, conn, until=3)
            assert seen.get(3) == b"200", seen
    time.sleep(0.5)
    log = server.log()
    assert "KeyError" not in log and "Traceback" not in log, log[-3000:]


def _answered(server: Server, status: int) -> float:
    return _metric(server, f'tokensmith_http_requests_total{{endpoint="other",status="{status}"}}')


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /healthz#x HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["fragment", "bad-request-line"],
)
def test_requests_refused_before_the_app_are_counted(env, request_bytes: bytes) -> None:  # noqa: ANN001
    """A request the HTTP layer refuses before the app sees it (a fragment in the target, a
    request line no parser takes) shows in /metrics like every other answer."""
    server, _, _ = env
    before = _answered(server, 400)
    sock, reader = connect(server)
    with sock:
        sock.sendall(request_bytes)
        status, _, _ = reader.response()
    assert status == 400
    assert _answered(server, 400) == before + 1


EARLY_ANSWERS = {
    # 405 without reading the body (RFC 6749 §3.2): a few bytes of chunked body, 30 messages.
    "chunked-put": (
        b"PUT /oauth2/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 30,
        405,
    ),
    # 413 from Content-Length, the body sent all the same.
    "large-post": (
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 1_000_000,
        413,
    ),
}


@pytest.mark.parametrize("case", list(EARLY_ANSWERS))
def test_an_early_answer_to_a_request_with_a_body_ends_its_connection(env, case: str) -> None:  # noqa: ANN001
    """The fast lane answers these without reading the body. Hypercorn's queue of body
    messages then filled, and the connection's reader and the request's end waited on each
    other for ever: the connection stayed open after the answer, and its task and buffers
    were never freed (an outside review found it). Now the answer is followed by a close,
    the connection's task ends, and nothing is logged."""
    server, _, _ = env
    data, status = EARLY_ANSWERS[case]
    before = _open_connections(server)
    for _ in range(5):
        sock, reader = connect(server)
        with sock:
            try:
                sock.sendall(data)
            except (OSError, ssl.SSLError):
                pass  # the server closed while the rest of the body was on its way
            assert reader.response()[0] == status
            assert reader.closed(within=3)
    _assert_connections_end(server, before)
    log = server.log()
    assert "Traceback" not in log and "Error in ASGI Framework" not in log, log[-3000:]


def test_an_answer_before_the_body_says_the_connection_closes(env) -> None:  # noqa: ANN001
    """A route that answers before the request's body arrived (Quart's 405 for a POST to
    /healthz) ends the connection after its answer, and says so (RFC 9112 §9.6): a client
    that reused the connection used to find it closed under its next request ("server
    disconnected without sending a response"), which a test run in parallel met."""
    server, _, _ = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        status, headers, _ = reader.response()
        assert status == 405
        assert headers.get("connection") == "close", headers
        assert reader.closed(within=3)


def test_an_early_answer_on_http2_leaves_nothing_behind(env) -> None:  # noqa: ANN001
    """The same over HTTP/2, where it held: a stream refused 413 on its Content-Length while
    more DATA frames than Hypercorn's body queue holds were on their way, on connections then
    closed."""
    server, _, _ = env
    before = _open_connections(server)
    for _ in range(5):
        sock, conn = h2_connection(server)
        with sock:
            conn.send_headers(
                1,
                [
                    (b":method", b"POST"),
                    (b":path", b"/oauth2/token"),
                    (b":scheme", b"https"),
                    (b":authority", b"x"),
                    (b"content-length", b"100000"),
                    (b"content-type", b"application/x-www-form-urlencoded"),
                ],
            )
            for _ in range(60):
                conn.send_data(1, b"a" * 10)
            sock.sendall(conn.data_to_send())
            assert h2_exchange(sock, conn, until=1).get(1) == b"413"
    _assert_connections_end(server, before)


def test_a_trailer_that_never_ends_is_cut_off(env) -> None:  # noqa: ANN001
    """An endless trailer field sent a KiB at a time is refused once it passes the head limit
    (431), on both lanes, instead of being held until the body's deadline."""
    server, auth, _ = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1d\r\ngrant_type=client_credentials\r\n0\r\nX-Endless: "
        )
        started = time.monotonic()
        try:
            for _ in range(64):
                sock.sendall(b"t" * 1024)
                time.sleep(0.005)
        except (ConnectionError, ssl.SSLError):
            pass
        status, _, _ = reader.response()
    assert status == 431
    assert time.monotonic() - started < TIMEOUT_MS / 1000


def test_reset_streams_cannot_queue_unbounded_work(env) -> None:  # noqa: ANN001
    """HTTP/2 "rapid reset" (CVE-2023-44487): streams that a client opens and resets at once
    still run in the app, and do not count against the stream limit. 300 of them with wrong
    secrets (each a slow KDF) used to queue seconds of hashing ahead of everyone, so that a
    client whose secret needs hashing got 500 once its authenticator timed out. Now at most
    32 requests of one connection are in the app; the rest get 503 at once."""
    server, _, _ = env
    fresh = server.deployment.add_client(
        "fresh", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    sock, conn = h2_connection(server)
    with sock:
        base = [
            (b":method", b"POST"),
            (b":path", b"/oauth2/token"),
            (b":scheme", b"https"),
            (b":authority", b"x"),
        ]
        form = b"grant_type=client_credentials"
        wrong = b"Basic " + base64.b64encode(b"nobody:wrong-secret")
        for n in range(300):
            stream = 1 + 2 * n
            conn.send_headers(
                stream,
                [
                    *base,
                    (b"authorization", wrong),
                    (b"content-type", b"application/x-www-form-urlencoded"),
                    (b"content-length", b"%d" % len(form)),
                ],
            )
            conn.send_data(stream, form, end_stream=True)
            conn.reset_stream(stream)
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        with server.client() as http:
            response = http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(fresh["client_id"], fresh["client_secret"]),
            )
        # Its token, or a 503 to retry at once if the attack still fills the KDF pool
        # (kdf.MAX_PENDING): never a 500 after a timeout.
        assert response.status_code in (200, 503), response.text
        assert time.monotonic() - started < 4


def test_a_ca_key_no_ca_needs_is_refused_in_the_handshake(env, tmp_path) -> None:  # noqa: ANN001
    """The keys of the CAs a client sends are held to the same rule as its own: the mutual_tls
    listener checks the chain's signatures with them, and a CA key with a huge public exponent
    made each request cost the server about half a second (with nothing registered but a
    client_id of some tls_client_auth client)."""
    server, _, _ = env
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Costly CA")])
    key = pki.rsa_key_with_exponent(2048, 2000)
    now = datetime.datetime.now(datetime.UTC)
    costly = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    leaf = pki.issue(pki.Pair(costly, key), "costly-leaf")  # type: ignore[arg-type]
    leaf.chain = (costly,)
    assert handshake_ok(server, leaf.write(tmp_path, "costly")) is False
    plain = pki.ca("Plain CA")
    good = pki.issue(plain, "plain-leaf")
    good.chain = (plain.cert,)
    assert handshake_ok(server, good.write(tmp_path, "plain"))


def test_a_flood_of_wrong_secrets_gets_no_one_a_500(env) -> None:  # noqa: ANN001
    """Connections that each send one token request with a wrong secret and leave: every one
    costs a KDF run, and they used to queue seconds of them ahead of a legitimate client
    whose secret needed one, which got 500 when its authenticator timed out. Checks past
    kdf.MAX_PENDING are refused at once with 503, so the legitimate client gets its token or a
    503 to retry, never a 500."""
    server, _, _ = env
    fresh = server.deployment.add_client(
        "flood-victim", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    wrong = b"Authorization: Basic " + base64.b64encode(b"nobody:wrong-secret") + b"\r\n"
    for _ in range(150):
        sock = server.raw_tls(timeout=5)
        sock.sendall(token_request(wrong))
        sock.close()
    started = time.monotonic()
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(fresh["client_id"], fresh["client_secret"]),
        )
    assert response.status_code in (200, 503), response.text
    if response.status_code == 503:
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "1"
    assert time.monotonic() - started < 5

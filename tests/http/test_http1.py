"""HTTP/1.1 as tokensmith serves it, byte by byte over real TLS, on both lanes: Hypercorn's
(the default) and the llhttp one (core/tokensmith/http/llhttp.py, ``http1="llhttp"``).

Clients such as curl and httpx never send most of these requests; each test writes the bytes
itself and reads the server's answer off the socket. Every test runs against both lanes.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from conftest import Server, new_deployment, start_server


@pytest.fixture(scope="module", params=["hypercorn", "llhttp"])
def env(request, tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, bytes]]:  # noqa: ANN001
    dep = new_deployment(tmp_path_factory.mktemp("http1") / "ts", keystore, wheel_cache)
    dep.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want" connectionTimeout="1500"'
        f' http1="{request.param}"/>'
    )
    dep.write()
    client = dep.add_client(
        "h1", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode())
    server = start_server(dep)
    yield server, b"Authorization: Basic " + basic + b"\r\n"
    server.stop()


FORM = b"grant_type=client_credentials"


def token_request(auth: bytes, *, extra: bytes = b"", body: bytes = FORM, version: bytes = b"1.1") -> bytes:
    return (
        b"POST /oauth2/token HTTP/"
        + version
        + b"\r\nHost: localhost\r\n"
        + auth
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class Reader:
    """Reads HTTP/1.1 responses off a socket, keeping what arrives after each."""

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if head_only or status < 200 or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    assert self._fill()
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(self.buffer) < size + 2:
                    assert self._fill()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2 :]
                if size == 0:
                    return status, headers, body
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self, within: float = 5.0) -> bool:
        """Whether the server closes the connection within *within* seconds."""
        self.sock.settimeout(within)
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        return True


def connect(server: Server) -> tuple[ssl.SSLSocket, Reader]:
    sock = server.raw_tls(timeout=10)
    return sock, Reader(sock)


def test_keep_alive_serves_several_requests_on_one_connection(env) -> None:  # noqa: ANN001
    """Two token requests on one connection get two different tokens, and it stays open."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        tokens = []
        for _ in range(2):
            sock.sendall(token_request(auth))
            status, headers, body = reader.response()
            assert status == 200 and "connection" not in headers
            assert headers["cache-control"] == "no-store" and "date" in headers
            tokens.append(json.loads(body)["access_token"])
        assert tokens[0] != tokens[1]


def test_pipelined_requests_are_answered_in_order(env) -> None:  # noqa: ANN001
    """Three requests sent at once (a token, the metadata, a bad grant) are answered in order."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            token_request(auth) + b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\n"
            b"Host: localhost\r\n\r\n" + token_request(auth, body=b"grant_type=nonsense")
        )
        first, second, third = reader.response(), reader.response(), reader.response()
        assert first[0] == 200 and "access_token" in json.loads(first[2])
        assert second[0] == 200 and json.loads(second[2])["issuer"].startswith("https://")
        assert third[0] == 400 and json.loads(third[2])["error"] == "unsupported_grant_type"


def test_connection_close_is_honoured(env) -> None:  # noqa: ANN001
    """`Connection: close` gets its response, marked so, and the server closes (RFC 9112 §9.6)."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(token_request(auth, extra=b"Connection: close\r\n"))
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed(within=2)


def test_http10_gets_an_answer_then_the_connection_closes(env) -> None:  # noqa: ANN001
    """An HTTP/1.0 request is answered and the connection is not kept alive."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(token_request(auth, version=b"1.0"))
        status, _, body = reader.response()
        assert status == 200 and "access_token" in json.loads(body)
        assert reader.closed(within=2)


def test_chunked_request_body(env) -> None:  # noqa: ANN001
    """A chunked form body is reassembled (RFC 9112 §7.1)."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n"
            + auth
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"a\r\ngrant_type\r\n13\r\n=client_credentials\r\n0\r\n\r\n"
        )
        status, _, body = reader.response()
        assert status == 200 and "access_token" in json.loads(body)


def test_expect_100_continue(env) -> None:  # noqa: ANN001
    """`Expect: 100-continue` gets 100 before the body is sent, then the answer (RFC 9110 §10.1.1)."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        request = token_request(auth, extra=b"Expect: 100-continue\r\n")
        head, body = request.split(b"\r\n\r\n", 1)
        sock.sendall(head + b"\r\n\r\n")
        status, _, _ = reader.response()
        assert status == 100
        sock.sendall(body)
        status, _, answer = reader.response()
        assert status == 200 and "access_token" in json.loads(answer)


def test_declared_too_large_body_is_413_and_closes(env) -> None:  # noqa: ANN001
    """A body declared over MaxRequestBodyBytes is refused before it is read, and since the
    rest of it would follow on the connection, the connection closes."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n"
            + auth
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000000\r\n\r\ngrant_type="
        )
        status, headers, body = reader.response()
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["error"] == "invalid_request"
        assert reader.closed(within=2)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(150))
            + b"\r\n",
            431,
        ),
        (
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            + b"X-Many: "
            + b"b" * 6000
            + b"\r\n" * 1
            + b"X-More: "
            + b"c" * 6000
            + b"\r\nX-Most: "
            + b"d" * 6000
            + b"\r\n\r\n",
            431,
        ),
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
            400,
        ),
        (
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            400,
        ),
        (b"GET /oauth2/jwks HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
    ],
    ids=[
        "header-too-large",
        "too-many-headers",
        "head-over-16k",
        "garbage",
        "two-lengths",
        "length-and-chunked",
        "upgrade",
    ],
)
def test_bad_requests_get_a_status_and_a_close(env, request_bytes, status) -> None:  # noqa: ANN001
    """Requests over the limits or malformed get the status h11 gives them, with no body (they
    never reach an endpoint), and the connection closes; the server goes on serving others."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(request_bytes)
        got, headers, body = reader.response()
        assert got == status and headers["connection"] == "close"
        assert body == b""
        assert reader.closed(within=2)
    sock, reader = connect(server)
    with sock:
        sock.sendall(token_request(auth))
        assert reader.response()[0] == 200


def test_a_large_head_arriving_in_pieces_is_accepted(env) -> None:  # noqa: ANN001
    """A 12 KiB head (under the 16 KiB limit) sent 1 KiB at a time is served: the limit
    counts each byte once, however the head is split."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        request = token_request(
            auth, extra=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(12))
        )
        assert 12_000 < request.index(b"\r\n\r\n") < 16_000
        for start in range(0, len(request), 1024):
            sock.sendall(request[start : start + 1024])
            time.sleep(0.005)
        status, _, body = reader.response()
        assert status == 200 and "access_token" in json.loads(body)


def test_an_unfinished_header_field_is_cut_off_at_the_limit(env) -> None:  # noqa: ANN001
    """One header field that never ends is refused with 431 once the head passes 16 KiB,
    without waiting for its end."""
    server, _ = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(20):
            sock.sendall(b"e" * 1024)
        status, headers, _ = reader.response()
        assert status == 431 and headers["connection"] == "close"


def test_requests_before_a_malformed_one_are_answered(env) -> None:  # noqa: ANN001
    """A good request pipelined before garbage is answered; then the connection closes."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(token_request(auth) + b"\x00\x01garbage\r\n\r\n")
        status, _, body = reader.response()
        assert status == 200 and "access_token" in json.loads(body)
        assert reader.closed(within=2)


def test_head_request_has_no_body(env) -> None:  # noqa: ANN001
    """HEAD gets the headers of GET and no body (RFC 9110 §9.3.2); the connection goes on."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(b"HEAD /oauth2/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = reader.response(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        sock.sendall(token_request(auth))
        status, _, body = reader.response()  # no stray body bytes came before this answer
        assert status == 200 and "access_token" in json.loads(body)


def test_idle_connection_is_closed_after_connection_timeout(env) -> None:  # noqa: ANN001
    """A kept-alive connection with no next request is closed after connectionTimeout
    (1.5 s here), not before."""
    server, auth = env
    sock, reader = connect(server)
    with sock:
        sock.sendall(token_request(auth))
        assert reader.response()[0] == 200
        answered = time.monotonic()
        assert not reader.closed(within=0.8)
        assert reader.closed(within=5)
        assert 1.2 < time.monotonic() - answered < 4


@pytest.mark.parametrize("lane", ["hypercorn", "llhttp"])
def test_stop_closes_idle_connections_at_once(tmp_path, keystore, wheel_cache, lane) -> None:  # noqa: ANN001
    """SIGINT with idle keep-alive connections open stops the server promptly, exit 0."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    dep.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want" connectionTimeout="60000"'
        f' http1="{lane}"/>'
    )
    dep.write()
    client = dep.add_client(
        "h1", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    auth = (
        b"Authorization: Basic "
        + base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode())
        + b"\r\n"
    )
    server = start_server(dep)
    socks: list[socket.socket] = []
    try:
        for _ in range(3):
            sock, reader = connect(server)
            socks.append(sock)
            sock.sendall(token_request(auth))
            assert reader.response()[0] == 200
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        server.stop()
        for sock in socks:
            sock.close()

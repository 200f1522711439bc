"""The two HTTP/1.1 lanes, held to one behaviour: Hypercorn's h11 (the default) and llhttp.

One corpus of requests goes to both lanes of one server (tests/lanes.py: ``server.serve``
around an app that echoes what reached it), byte for byte over real TLS. For each request,
what reached the app and what came back on the wire (statuses, bodies, ``Connection``, and
whether the server closed) must agree, except where ``DIFFERENCES`` says otherwise and why.
The corpus grows with every parsing question that comes up: add the request here.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SERVER_XML, Deployment

LANES = Path(__file__).parent.parent / "lanes.py"

#: Sent after each request of the corpus on the same connection: whether the connection is
#: still usable after it, and that it then closes, without waiting for an idle timeout.
SENTINEL = b"GET /sentinel HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
#: Requests after which the connection ends anyway: nothing follows them. (Bytes after a
#: request that asked to close make h11 answer that request 400; llhttp answers it, then closes.)
CLOSING = {"http10", "http10-keep-alive", "connection-close", "http10-expect"}

CORPUS: dict[str, bytes] = {
    # valid
    "get": b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
    "post-length": b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde",
    "post-chunked": b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    "chunk-extension": b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    "http10": b"GET /t HTTP/1.0\r\n\r\n",
    "http10-keep-alive": b"GET /t HTTP/1.0\r\nConnection: keep-alive\r\nHost: x\r\n\r\n",
    "connection-close": b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nzGET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    "percent-path": b"GET /%2e%2e/%ff/a%20b HTTP/1.1\r\nHost: a\r\n\r\n",
    "double-slash": b"GET //oauth2//jwks HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "absolute-form": b"GET https://evil.example/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    "repeated-header": b"GET /t HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
    "head-15k": b"GET /t HTTP/1.1\r\nHost: a\r\n"
    + b"".join(b"X-P%d: %s\r\n" % (i, b"p" * 990) for i in range(15))
    + b"\r\n",
    "100-headers": b"GET /t HTTP/1.1\r\nHost: a\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(99))
    + b"\r\n",
    # trailers: never merged into the headers (RFC 9110 §6.5.1)
    "trailer-authorization": b"POST /t HTTP/1.1\r\nHost: a\r\nAuthorization: bogus\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nAuthorization: Basic Z29vZA==\r\nX-Client-Cert: :AAAA:\r\n\r\n",
    "trailer-host": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: b\r\n\r\n",
    # refused alike
    "garbage": b"THIS IS NOT HTTP\r\n\r\n",
    "nul-in-value": b"GET /t HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "space-before-colon": b"GET /t HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "http09": b"GET /x\r\n\r\n",
    "http20-line": b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
    "http12-line": b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n",
    "http11-lowercase": b"GET /x http/1.1\r\nHost: a\r\n\r\n",
    "no-host": b"GET /x HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two-lengths": b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
    # RFC 9112 §6.1: refused by both (h11 alone would read it chunked and keep the connection)
    "length-and-chunked": b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad-length": b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nabcde",
    "gzip-chunked": b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "identity-coding": b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    "bad-chunk-size": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "good-then-garbage": b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage\r\n\r\n",
    "good-then-bad-chunk": b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "header-20k": b"POST /t HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "150-headers": b"POST /t HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(150))
    + b"\r\n",
    # no upgrade of any kind (RFC 9110 §7.8), h2c included: it would let a client talk past a
    # proxy that tunnels after 101 (h2c smuggling); nor HTTP/2 by preface without ALPN
    "h2c-upgrade": b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "h2c-upgrade-no-connection": b"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # RFC 9112 §3.2: no fragment in a target; Host is uri-host [":" port]
    "fragment": b"GET /oauth2/jwks#x HTTP/1.1\r\nHost: x\r\n\r\n",
    "host-with-space": b"GET /t HTTP/1.1\r\nHost: a b/c\r\n\r\n",
    "host-with-userinfo": b"GET /t HTTP/1.1\r\nHost: a@b\r\n\r\n",
    "host-ipv6-port": b"GET /t HTTP/1.1\r\nHost: [::1]:9443\r\n\r\n",
    "host-empty": b"GET /t HTTP/1.1\r\nHost:\r\n\r\n",
    "long-chunk-extension": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;x="
    + b"e" * 40_000
    + b"\r\na\r\n0\r\n\r\n",
    "websocket-upgrade": b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    # HTTP/1.0 with Expect: no 100 Continue (RFC 9110 §10.1.1); the body follows at once
    "http10-expect": b"POST /t HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
}

#: Where the lanes differ on purpose, and why. Each entry says what each lane answers.
DIFFERENCES: dict[str, tuple[str, list[int], list[int]]] = {
    "obs-fold": (
        "RFC 9112 §5.2 lets a server refuse an obsolete line folding with 400 or replace it "
        "with a space; llhttp refuses, h11 unfolds",
        [200],
        [400],
    ),
    "bare-lf": (
        "RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; h11 does, llhttp does not",
        [200],
        [400],
    ),
    "control-in-value": (
        "RFC 9110 §5.5 lets a recipient refuse a field value with a control character or keep "
        "it; llhttp refuses, h11 keeps it",
        [200],
        [400],
    ),
    "double-space-request-line": (
        "RFC 9112 §3 lets a recipient split the request line on whitespace runs; llhttp does, h11 refuses",
        [400],
        [200],
    ),
    "lowercase-method": (
        "methods are case-sensitive (RFC 9110 §9.1); llhttp refuses one it does not know, h11 "
        "passes 'get' to the app, where no route has it",
        [200],
        [400],
    ),
    "long-trailer": (
        "both lanes hold an unfinished trailer section to 16 KiB; h11 also passes one of any size "
        "that arrives in a single read (and Hypercorn drops it), llhttp refuses it with 431",
        [200],
        [431],
    ),
    "content-length-list": (
        "RFC 9110 §8.6 lets a recipient accept a list of identical Content-Length values; h11 "
        "does, llhttp refuses",
        [200],
        [400],
    ),
    "chunk-size-space": (
        "whitespace after a chunk size is not in RFC 9112 §7.1's grammar; h11 tolerates it, llhttp refuses",
        [200],
        [400],
    ),
    "chunked-then-gzip": (
        "a transfer coding the server does not know: h11 answers 501 (RFC 9112 §6.1), llhttp "
        "finds the framing invalid first and answers 400; both refuse it",
        [501],
        [400],
    ),
}
DIFFERENCE_REQUESTS: dict[str, bytes] = {
    "obs-fold": b"GET /t HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "bare-lf": b"GET /t HTTP/1.1\nHost: a\n\n",
    "control-in-value": b"GET /t HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
    "double-space-request-line": b"GET  /t HTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase-method": b"get /t HTTP/1.1\r\nHost: a\r\n\r\n",
    "content-length-list": b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nz",
    "chunk-size-space": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nz\r\n0\r\n\r\n",
    "long-trailer": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    + b"t" * 20_000
    + b"\r\n\r\n",
    "chunked-then-gzip": b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
}


@dataclass
class Lanes:
    urls: dict[str, str]
    cafile: Path

    def connect(self, lane: str, timeout: float = 5) -> ssl.SSLSocket:
        host, port = self.urls[lane].removeprefix("https://").rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(self.cafile))
        context.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    def exchange(self, lane: str, data: bytes) -> bytes:
        """Send *data*, then read until the server closes (or 5 s pass)."""
        with self.connect(lane) as sock:
            sock.sendall(data)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except TimeoutError:
                received += b"<still open>"
            except (ConnectionError, ssl.SSLError):
                pass
            return received


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory, keystore: Path) -> Iterator[Lanes]:
    conf = tmp_path_factory.mktemp("lanes") / "conf"
    (conf / "security").mkdir(parents=True)
    for name in ("server.crt", "server.key"):
        (conf / "security" / name).write_bytes((keystore / name).read_bytes())
    connectors = (
        '<Connector address="127.0.0.1" port="0" connectionTimeout="3000"/>\n'
        '<Connector address="127.0.0.1" port="0" connectionTimeout="3000" http1="llhttp"/>'
    )
    (conf / "server.xml").write_text(
        SERVER_XML.format(connectors=connectors, database=Deployment.database_xml)
    )
    (conf / "identity.xml").write_text("<Identity/>")
    process = subprocess.Popen([sys.executable, str(LANES), str(conf)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        urls = dict(process.stdout.readline().split() for _ in range(2))
        assert set(urls) == {"hypercorn", "llhttp"}
        yield Lanes(urls, conf / "security" / "server.crt")
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


def parse(raw: bytes) -> list[object]:
    """The responses in *raw* as comparable values, and how the connection ended."""
    answers: list[object] = []
    while b"\r\n\r\n" in raw:
        head, raw = raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if status == 101:
            answers.append(101)
            return answers
        length = int(headers.get("content-length", "0"))
        body, raw = raw[:length], raw[length:]
        seen = (
            json.loads(body) if headers.get("content-type") == "application/json" else body.decode("latin-1")
        )
        answers.append((status, headers.get("connection"), seen))
    answers.append(raw.decode("latin-1") or "<closed>")
    return answers


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_both_lanes_agree(lanes: Lanes, name: str) -> None:
    """The request reaches the app alike and is answered alike on both lanes."""
    request = CORPUS[name] + (b"" if name in CLOSING else SENTINEL)
    hypercorn = parse(lanes.exchange("hypercorn", request))
    llhttp = parse(lanes.exchange("llhttp", request))
    assert hypercorn == llhttp
    assert hypercorn[-1] == "<closed>"  # never left open: every case ends in a close


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_documented_differences(lanes: Lanes, name: str) -> None:
    """Where the lanes differ, each answers as DIFFERENCES says (so a change shows)."""
    _, hypercorn_statuses, llhttp_statuses = DIFFERENCES[name]
    for lane, expected in (("hypercorn", hypercorn_statuses), ("llhttp", llhttp_statuses)):
        answers = parse(lanes.exchange(lane, DIFFERENCE_REQUESTS[name] + SENTINEL))
        statuses = [a if isinstance(a, int) else a[0] for a in answers if not isinstance(a, str)]  # type: ignore[index]
        assert statuses[:1] == expected, (lane, answers)


def test_trailers_never_reach_the_app(lanes: Lanes) -> None:
    """RFC 9110 §6.5.1: a trailer field is not merged into the headers, on either lane."""
    for lane in ("hypercorn", "llhttp"):
        first = parse(lanes.exchange(lane, CORPUS["trailer-authorization"] + SENTINEL))[0]
        status, _, seen = first  # type: ignore[misc]
        assert status == 200 and seen["body"] == "abc"
        assert seen["headers"] == [
            ["host", "a"],
            ["authorization", "bogus"],
            ["transfer-encoding", "chunked"],
        ]


def test_refusals_agree_on_status(lanes: Lanes) -> None:
    """The refusals are the ones h11 gives: 400, 431, 501 and 505, then a close."""
    expected = {
        "garbage": 400,
        "no-host": 400,
        "two-hosts": 400,
        "http09": 400,
        "http20-line": 505,
        "h2c-upgrade": 400,
        "h2-preface": 400,
        "fragment": 400,
        "host-with-space": 400,
        "long-chunk-extension": 431,
        "gzip-chunked": 501,
        "length-and-chunked": 400,
        "header-20k": 431,
        "150-headers": 431,
        "bad-chunk-size": 400,
    }
    for name, status in expected.items():
        answers = parse(lanes.exchange("llhttp", CORPUS[name] + SENTINEL))
        assert answers[0][:2] == (status, "close") and answers[-1] == "<closed>", (name, answers)  # type: ignore[index]

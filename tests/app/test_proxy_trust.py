"""What a plain-HTTP connector behind a TLS-terminating proxy believes, on the real server.

The proxy here is 127.0.0.1 (``<TrustedProxies>``); the client addresses it forwards are
made up. Each test is a finding of the issue-19 red team: path variants that reached the
token endpoint over cleartext, a client-supplied Forwarded believed over the proxy's
X-Forwarded-*, the password lockout counting the proxy's address, /metrics opened by a
loopback proxy.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Deployment, Server, new_deployment, start_server
from test_operations import logged

PASSWORD = "a long enough passphrase"


def plain(dep_root: Path, keystore: Path, wheel_cache: Path, headers: str | None = None) -> Deployment:
    attribute = f' headers="{headers}"' if headers else ""
    return new_deployment(
        dep_root,
        keystore,
        wheel_cache,
        connectors=(
            '<Connector address="127.0.0.1" port="0" SSLEnabled="false"/>\n'
            f'    <TrustedProxies addresses="127.0.0.1"{attribute}/>\n'
            '    <AccessLog file="../logs/access.log"/>'
        ),
        oauth="<MaxFailedLogins>3</MaxFailedLogins><MaxFailedLoginsPerUser>50</MaxFailedLoginsPerUser>",
    )


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict]]:  # noqa: ANN001
    dep = plain(tmp_path_factory.mktemp("proxied") / "ts", keystore, wheel_cache)
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    client = dep.add_client(
        "p",
        "--grant-type",
        "client_credentials",
        "--grant-type",
        "password",
        "--auth-method",
        "client_secret_basic",
    )
    server = start_server(dep)
    try:
        yield server, client
    finally:
        server.stop()


def raw(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send *request* as is over plain TCP (no client library normalises the target)."""
    parsed = urllib.parse.urlsplit(server.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


def post(server: Server, target: str, client: dict, form: str, headers: str = "") -> tuple[int, dict, bytes]:
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    body = form.encode()
    return raw(
        server,
        (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Authorization: Basic {basic}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        ).encode("latin-1")
        + body,
    )


def get(server: Server, target: str, headers: str = "") -> tuple[int, dict, bytes]:
    return raw(
        server, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode()
    )


@pytest.mark.parametrize(
    "target",
    [
        "//oauth2/token",
        "///oauth2/token",
        "http://x//oauth2/token",
        "/oauth2/token/",
        "//oauth2/introspect",
        "/.well-known/oauth-authorization-server",
    ],
)
def test_cleartext_request_gets_no_endpoint_under_any_spelling(proxied, target: str) -> None:  # noqa: ANN001
    """Without the proxy's word that the client came over https, nothing but the probes and
    /metrics answers: a path variant of the token endpoint gets 403, never a token (RFC 6749
    §3.2)."""
    server, client = proxied
    status, _, body = post(server, target, client, "grant_type=client_credentials")
    assert status == 403, body
    assert b"access_token" not in body
    assert json.loads(body)["error"] == "invalid_request"


def test_cleartext_request_still_reaches_the_probes(proxied) -> None:  # noqa: ANN001
    server, _ = proxied
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz")[0] == 200
    assert get(server, "/healthz/")[0] == 403  # exact paths only


def test_only_the_configured_forwarded_header_is_believed(proxied) -> None:  # noqa: ANN001
    """By default the proxy is believed for X-Forwarded-*; a Forwarded the client sent and
    the proxy passed through says nothing. Of X-Forwarded-For the right-most address is the
    one the proxy added."""
    server, client = proxied
    form = "grant_type=client_credentials"
    status, _, _ = post(
        server, "/oauth2/token", client, form, "X-Forwarded-Proto: http\r\nForwarded: proto=https\r\n"
    )
    assert status == 403
    status, fields, _ = post(
        server,
        "/oauth2/token",
        client,
        form,
        "X-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
        "X-Forwarded-For: 6.6.6.7, 6.6.6.8\r\nX-Forwarded-For: 203.0.113.5\r\n",
    )
    assert status == 200
    entry = logged(server.deployment.root / "logs" / "access.log", fields["x-request-id"])
    assert entry["forwarded_for"] == "203.0.113.5"


def test_forwarded_mode_believes_forwarded_alone(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """``<TrustedProxies headers="forwarded">``: RFC 7239's Forwarded, and X-Forwarded-Proto
    is ignored."""
    dep = plain(tmp_path / "ts", keystore, wheel_cache, headers="forwarded")
    client = dep.add_client("p", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    form = "grant_type=client_credentials"
    assert post(server, "/oauth2/token", client, form, "X-Forwarded-Proto: https\r\n")[0] == 403
    status, fields, _ = post(
        server, "/oauth2/token", client, form, "Forwarded: for=6.6.6.6, for=198.51.100.7;proto=https\r\n"
    )
    assert status == 200
    assert logged(dep.root / "logs" / "access.log", fields["x-request-id"])["forwarded_for"] == "198.51.100.7"


def test_bad_proxy_headers_setting_names_its_line(deployment: Deployment) -> None:
    deployment.connectors = '<Connector address="127.0.0.1" port="0"/>\n    <TrustedProxies addresses="127.0.0.1" headers="x-real-ip"/>'
    deployment.write()
    result = deployment.cli("serve", check=False)
    assert result.returncode != 0
    assert "server.xml:" in result.stderr and "x-real-ip" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_password_lockout_counts_the_forwarded_client(proxied) -> None:  # noqa: ANN001
    """An attacker behind the proxy locks out only its own address, not every user behind
    the proxy (RFC 6819 §4.4.3.6)."""
    server, client = proxied

    def attempt(address: str, password: str) -> int:
        form = urllib.parse.urlencode({"grant_type": "password", "username": "alice", "password": password})
        proxy = f"X-Forwarded-Proto: https\r\nX-Forwarded-For: {address}\r\n"
        return post(server, "/oauth2/token", client, form, proxy)[0]

    for _ in range(4):
        assert attempt("6.6.6.6", "wrong") == 400
    assert attempt("6.6.6.6", PASSWORD) == 400  # the attacker's address is locked out
    assert attempt("5.5.5.5", PASSWORD) == 200  # alice behind the same proxy is not


def test_metrics_through_a_loopback_proxy_decide_on_the_client(proxied) -> None:  # noqa: ANN001
    """The proxy is on loopback, but the client it forwards is not: /metrics is 404."""
    server, _ = proxied
    assert get(server, "/metrics", "X-Forwarded-For: 8.8.8.8\r\nX-Forwarded-Proto: https\r\n")[0] == 404
    assert get(server, "/metrics", "X-Forwarded-For: 127.0.0.1\r\n")[0] == 200


@pytest.mark.parametrize("forwarded", ["garbage", "8.8.8.8, garbage", "8.8.8.8,", "unknown", "_hidden"])
def test_metrics_through_a_proxy_that_forwards_no_address_stay_closed(proxied, forwarded: str) -> None:  # noqa: ANN001
    """A trusted proxy that forwards something other than an address (RFC 7239's "unknown",
    an obfuscated identifier, junk a client slipped in) does not make its client the proxy:
    the client is unknown, and /metrics, open to loopback, stays closed to it (an outside
    review found it open)."""
    server, _ = proxied
    assert get(server, "/metrics", f"X-Forwarded-For: {forwarded}\r\n")[0] == 404
    assert get(server, "/metrics", "")[0] == 200  # the proxy's own request


def test_login_page_lockout_counts_the_forwarded_client(proxied) -> None:  # noqa: ANN001
    """The login page counts failed sign-ins as the token endpoint does: per address the
    trusted proxy forwarded, not the proxy's own, so an attacker behind the proxy cannot
    lock a user out for everybody behind it; and the log names the forwarded address."""
    server, _ = proxied
    server.deployment.cli("user", "add", "dave", "--password-stdin", input=PASSWORD + "\n")

    def sign_in(address: str, password: str) -> int:
        proxy = f"X-Forwarded-Proto: https\r\nX-Forwarded-For: {address}\r\n"
        status, fields, body = get(server, "/oauth2/login", proxy)
        assert status == 200, body
        token = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        assert token is not None, body
        form = urllib.parse.urlencode(
            {"csrf_token": token.group(1).decode(), "request": "", "username": "dave", "password": password}
        ).encode()
        status, _, _ = raw(
            server,
            (
                "POST /oauth2/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Cookie: __Host-tokensmith-csrf={token.group(1).decode()}\r\n"
                f"Content-Length: {len(form)}\r\n{proxy}\r\n"
            ).encode("latin-1")
            + form,
        )
        return status

    for _ in range(3):
        assert sign_in("6.6.6.9", "wrong") == 401
    assert sign_in("6.6.6.9", PASSWORD) == 401  # the attacker's address is locked out
    assert sign_in("5.5.5.9", PASSWORD) == 303  # dave behind the same proxy is not
    log = server.log()
    assert "sign-in failed for user 'dave' (login page, from 6.6.6.9)" in log
    assert "locked out for 6.6.6.9" in log and "for 127.0.0.1" not in log

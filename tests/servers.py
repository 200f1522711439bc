"""Running servers shared by the test files of one behaviour, and the helpers that talk to them.

Starting ``tokensmith serve`` costs about two seconds, so the files that split one old module by
behaviour (tests/oauth/, tests/http/) share its server instead of starting one each: the
fixtures here live for the session and are made available everywhere by tests/conftest.py.
Tests that change a server's configuration or state in a way others could see start their own.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, new_deployment, start_server

# --- the token endpoint's server: a basic and a post client_credentials client ----------------

RFC6749_ERROR_CHARS = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]*$")


@pytest.fixture(scope="session")
def token_server(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict, dict]]:  # noqa: ANN001
    """One running server with a basic client and a post client, for every file that uses it."""
    dep = new_deployment(tmp_path_factory.mktemp("token") / "ts", keystore, wheel_cache)
    basic = dep.add_client(
        "basic-demo",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--scope",
        "read",
        "--scope",
        "write",
    )
    post = dep.add_client(
        "post-demo", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    server = start_server(dep)
    yield server, basic, post
    server.stop()


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    """An RFC 6749 §5.2 error: the status, JSON with no-store, and only the allowed characters."""
    assert response.status_code == status, response.text
    assert_no_store(response)
    body = response.json()
    assert body["error"] == error
    for value in body.values():
        assert RFC6749_ERROR_CHARS.match(value)
    return body


def basic(client: dict, secret: str | None = None) -> tuple[str, str]:
    return (str(client["client_id"]), secret if secret is not None else str(client["client_secret"]))


# --- the grants' server: users, and a lockout after three failures -----------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def grants_server(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path]]:  # noqa: ANN001
    """A server with users alice, bob, carol and dave, locked out after three failed logins."""
    root = tmp_path_factory.mktemp("grants")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth="<MaxFailedLogins>3</MaxFailedLogins><LockoutSeconds>600</LockoutSeconds>",
    )
    for name in ("alice", "bob", "carol", "dave"):
        dep.cli("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
    server = start_server(dep)
    yield server, root
    server.stop()


def secret_client(server: Server, *grants: str, scopes: tuple[str, ...] = ("read", "write")) -> dict:
    args = [f"--grant-type={g}" for g in grants] + [f"--scope={s}" for s in scopes]
    return server.deployment.add_client("c", *args, "--auth-method", "client_secret_basic")


def post(
    server: Server, path: str, data: dict, client: dict | None = None, cert: tuple[Path, Path] | None = None
):  # noqa: ANN201
    auth = (client["client_id"], client["client_secret"]) if client and "client_secret" in client else None
    if client and auth is None:
        data = {**data, "client_id": client["client_id"]}
    with server.client(cert=cert) as http:
        return http.post(path, data=data, auth=auth)


def password_grant(
    server: Server,
    client: dict,
    user: str = "alice",
    password: str = PASSWORD,
    cert: tuple[Path, Path] | None = None,
    **extra: str,
):  # noqa: ANN201
    return post(
        server,
        "/oauth2/token",
        {"grant_type": "password", "username": user, "password": password, **extra},
        client,
        cert,
    )


def refresh(server: Server, client: dict, value: str, cert: tuple[Path, Path] | None = None, **extra: str):  # noqa: ANN201
    return post(
        server,
        "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": value, **extra},
        client,
        cert,
    )


def resource_server(server: Server) -> dict:
    return server.deployment.add_client(
        "rs", "--grant-type=client_credentials", "--resource-server", "--auth-method", "client_secret_basic"
    )


def introspect(server: Server, value: str, caller: dict | None = None) -> dict:
    """Introspect *value* as *caller*, by default a new resource server (sp add --resource-server)."""
    return post(server, "/oauth2/introspect", {"token": value}, caller or resource_server(server)).json()


# --- the TLS server: a want, a need and a false connector ---------------------------------------


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory, keystore, wheel_cache) -> Iterator[Server]:  # noqa: ANN001
    """A server with three connectors: clientAuth want, need and false, in that order."""
    dep = new_deployment(tmp_path_factory.mktemp("tls") / "ts", keystore, wheel_cache)
    dep.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want"/>'
        '<Connector address="127.0.0.1" port="0" clientAuth="need"/>'
        '<Connector address="127.0.0.1" port="0" clientAuth="false"/>'
    )
    dep.write()
    running = start_server(dep)
    yield running
    running.stop()


def host_port(server: Server, index: int = 0) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(server.urls[index])
    return parsed.hostname or "", parsed.port or 0


def handshake(
    server: Server,
    *,
    index: int = 0,
    minimum=None,
    maximum=None,
    ciphers=None,  # noqa: ANN001
    cert: tuple[Path, Path] | None = None,
) -> ssl.SSLSocket:
    """Complete a TLS handshake with the server (or raise) and return the socket."""
    context = ssl.create_default_context(cafile=str(server.deployment.server_cert))
    context.minimum_version = minimum or ssl.TLSVersion.MINIMUM_SUPPORTED
    if maximum:
        context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    if cert:
        context.load_cert_chain(*cert)
    raw = socket.create_connection(host_port(server, index), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    return tls


def roundtrip(tls: ssl.SSLSocket) -> bytes:
    """Send one HTTP/1.1 request on an open TLS socket and read the status line."""
    tls.sendall(
        b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = b""
    while b"\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]

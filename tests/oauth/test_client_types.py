"""Which client types may use which grant and endpoint, over real TLS.

RFC 6749 §2.1 (client types), §4.3, §4.4 and §6; RFC 7662 §2.1; RFC 7009 §2.1; RFC 8705 §4.
The table in README.md ("Client types") is what these tests check, cell by cell; the
metadata's ``*_auth_methods_supported`` lists (RFC 8414 §2) are checked both ways: every
listed method works at its endpoint, every unlisted one is refused.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pki
import pytest
from conftest import DEFAULT_LISTENERS, ROOT, Server, new_deployment, start_server
from tokensmith.models import Client
from tokensmith.storage.sqlite import SQLiteStorage

PASSWORD = "a long passphrase"
METHODS = (
    "client_secret_basic",
    "client_secret_post",
    "tls_client_auth",
    "self_signed_tls_client_auth",
    "none",
)
ALL_GRANTS = ("client_credentials", "password", "refresh_token")


@dataclass
class Caller:
    """A registered client and how it authenticates."""

    server: Server
    method: str
    client_id: str
    secret: str | None = None
    cert: tuple[Path, Path] | None = None

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        auth = None
        if self.method == "client_secret_basic":
            auth = (self.client_id, self.secret)
        elif self.method == "client_secret_post":
            data = {**data, "client_id": self.client_id, "client_secret": self.secret}
        else:
            data = {**data, "client_id": self.client_id}
        with self.server.client(cert=self.cert) as http:
            return http.post(path, data=data, auth=auth)

    def token(self, grant_type: str, **extra: str) -> httpx.Response:
        if grant_type == "password":
            extra = {"username": "alice", "password": PASSWORD, **extra}
        return self.post("/oauth2/token", {"grant_type": grant_type, **extra})


def register(server: Server, root: Path, authority: pki.Pair, method: str) -> Caller:
    """A client of *method* with every grant its type may register."""
    dep = server.deployment
    grants = ALL_GRANTS if method != "none" else ("password", "refresh_token")
    args = [f"--grant-type={g}" for g in grants]
    cert = None
    if method == "self_signed_tls_client_auth":
        cert = pki.self_signed().write(root, f"ss-{time.monotonic_ns()}")
        args += ["--cert", str(cert[0])]
    elif method == "tls_client_auth":
        cert = pki.issue(authority, "svc").write(root, f"pki-{time.monotonic_ns()}")
        args += ["--subject-dn", "CN=svc"]
    if method == "none":
        args.append("--force")  # the password grant for a public client is refused without it
    added = dep.add_client(method, *args, "--auth-method", method)
    return Caller(server, method, str(added["client_id"]), added.get("client_secret"), cert)  # type: ignore[arg-type]


def start(
    root: Path, keystore: Path, wheel_cache: Path, listeners: str = DEFAULT_LISTENERS
) -> tuple[Server, pki.Pair]:
    dep = new_deployment(root / "ts", keystore, wheel_cache, listeners=listeners)
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "root", "--file", str(root / "ca.pem"))
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    return start_server(dep), authority


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path, pki.Pair]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("client-types")
    server, authority = start(root, keystore, wheel_cache)
    yield server, root, authority
    server.stop()


def store_public_client_with_every_grant(server: Server) -> Caller:
    """A public client row that allows client_credentials, as a store written before the
    rule existed may hold: sp add refuses to make one, so it is written directly."""
    client_id = f"legacy-{time.monotonic_ns()}"
    store = SQLiteStorage(server.deployment.database)
    try:
        store.add_client(Client(client_id, "legacy", "none", ALL_GRANTS, created_at=int(time.time())))
    finally:
        store.close()
    return Caller(server, "none", client_id)


# --- item by item -------------------------------------------------------------------------------


def test_public_client_cannot_register_client_credentials(env) -> None:  # noqa: ANN001
    """sp add --auth-method none --grant-type client_credentials is refused in one line that
    names the rule, and nothing is stored (RFC 6749 §4.4)."""
    server, _, _ = env
    dep = server.deployment
    before = dep.cli("sp", "list", "--json").stdout
    result = dep.cli(
        "sp", "add", "x", "--grant-type", "client_credentials", "--auth-method", "none", check=False
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "RFC 6749 §4.4" in result.stderr
    assert dep.cli("sp", "list", "--json").stdout == before


@pytest.mark.parametrize("with_cert", [False, True], ids=["bare", "with-certificate"])
def test_stored_public_client_gets_no_client_credentials_token(env, with_cert) -> None:  # noqa: ANN001
    """A public client already in the store with client_credentials gets unauthorized_client
    and no token, with or without a certificate; its password grant still works."""
    server, root, _ = env
    caller = store_public_client_with_every_grant(server)
    if with_cert:
        caller.cert = pki.self_signed().write(root, f"pub-{time.monotonic_ns()}")
    response = caller.token("client_credentials")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unauthorized_client"
    assert "access_token" not in response.text
    assert caller.token("password").status_code == 200


# --- the README table ---------------------------------------------------------------------------


def readme_table() -> dict[str, dict[str, bool]]:
    """The "Client types" table of README.md: method -> column -> allowed."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- client-types -->\n", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()]
    header, rows = rows[0], rows[2:]
    columns = [re.sub(r"[`]|POST /oauth2/", "", cell) for cell in header[1:]]
    table = {}
    for row in rows:
        allowed = {column: cell.startswith("yes") for column, cell in zip(columns, row[1:])}
        for method in re.findall(r"`([a-z_]+)`", row[0]):
            table[method] = allowed
    return table


def test_readme_table_covers_every_method_and_endpoint() -> None:
    """The table has a row for every --auth-method and a column for every grant and endpoint."""
    table = readme_table()
    assert set(table) == set(METHODS)
    assert all(set(row) == {*ALL_GRANTS, "introspect", "revoke"} for row in table.values())


@pytest.mark.parametrize("method", METHODS)
def test_client_type_table_holds(env, method) -> None:  # noqa: ANN001
    """Every cell of README's table, tried against the running server."""
    server, root, authority = env
    expected = readme_table()[method]
    caller = (
        store_public_client_with_every_grant(server)
        if method == "none"
        else register(server, root, authority, method)
    )
    if method == "none":
        caller.cert = pki.self_signed().write(root, f"pub-{time.monotonic_ns()}")
    issued = caller.token("password")
    assert issued.status_code == (200 if expected["password"] else 400), issued.text
    outcomes = {
        "client_credentials": caller.token("client_credentials"),
        "refresh_token": caller.token("refresh_token", refresh_token=issued.json()["refresh_token"]),
        "introspect": caller.post("/oauth2/introspect", {"token": issued.json()["access_token"]}),
        "revoke": caller.post("/oauth2/revoke", {"token": issued.json()["access_token"]}),
    }
    for column, response in outcomes.items():
        assert (response.status_code == 200) == expected[column], (column, response.text)
        if not expected[column]:
            assert response.json()["error"] in ("unauthorized_client", "invalid_client")


# --- *_auth_methods_supported (RFC 8414 §2) ------------------------------------------------------


ENDPOINT_LISTS = {
    "token": "token_endpoint_auth_methods_supported",
    "introspect": "introspection_endpoint_auth_methods_supported",
    "revoke": "revocation_endpoint_auth_methods_supported",
}


def works_at(caller: Caller, endpoint: str) -> bool:
    """Whether *caller* is served at *endpoint*: 200, where its authentication is refused
    with 401 invalid_client otherwise."""
    grant = "password" if caller.method == "none" else "client_credentials"
    if endpoint == "token":
        response = caller.token(grant)
    else:
        response = caller.post(f"/oauth2/{endpoint}", {"token": "not-a-token"})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def check_methods_both_ways(server: Server, root: Path, authority: pki.Pair) -> None:
    with server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    callers = {m: register(server, root, authority, m) for m in METHODS}
    for endpoint, name in ENDPOINT_LISTS.items():
        listed = set(meta[name])
        assert listed <= set(METHODS)
        for method, caller in callers.items():
            assert works_at(caller, endpoint) == (method in listed), (endpoint, method, meta[name])


def test_listed_methods_work_and_unlisted_are_refused(env) -> None:  # noqa: ANN001
    """With every authenticator enabled: none is listed, and served, only where public
    clients are; every other method everywhere."""
    server, root, authority = env
    check_methods_both_ways(server, root, authority)
    with server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert "none" in meta["revocation_endpoint_auth_methods_supported"]


def test_disabled_authenticator_leaves_every_list(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    """With basic_auth disabled, client_secret_basic is listed nowhere and refused everywhere."""
    listeners = DEFAULT_LISTENERS.replace(
        'name="basic_auth" orderId="100" enable="true"', 'name="basic_auth" orderId="100" enable="false"'
    )
    server, authority = start(tmp_path, keystore, wheel_cache, listeners)
    try:
        check_methods_both_ways(server, tmp_path, authority)
        with server.client() as http:
            meta = http.get("/.well-known/oauth-authorization-server").json()
        assert all("client_secret_basic" not in meta[name] for name in ENDPOINT_LISTS.values())
    finally:
        server.stop()

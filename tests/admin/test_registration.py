"""Dynamic client registration (RFC 7591) and the client configuration endpoint (RFC 7592),
against a real server: RFC 7591's own examples, open and initial-access-token modes,
mutual-TLS metadata (RFC 8705 §2.1.2, §2.2), a plugin's metadata check, and the errors of
RFC 7591 §3.2.2."""

from __future__ import annotations

import base64
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pki
import pytest
from admin_env import JSON, PASSWORDS, add_users, write_authenticators
from conftest import DEFAULT_LISTENERS, Server, new_deployment, start_server

#: RFC 7591 §3.1, the first example registration request (without its language-tagged name).
RFC7591_EXAMPLE_1 = {
    "redirect_uris": ["https://client.example.org/callback", "https://client.example.org/callback2"],
    "client_name": "My Example Client",
    "token_endpoint_auth_method": "client_secret_basic",
    "logo_uri": "https://client.example.org/logo.png",
    "jwks_uri": "https://client.example.org/my_public_keys.jwks",
    "example_extension_parameter": "example_value",
}
#: RFC 7591 §3.1, the second example (a software statement, which this server ignores).
RFC7591_EXAMPLE_2 = {
    "redirect_uris": ["https://client.example.org/callback", "https://client.example.org/callback2"],
    "software_statement": "eyJhbGciOiJSUzI1NiJ9.eyJzb2Z0d2FyZV9pZCI6IjROUkIxLTBYWkFCWkk5RTYtNVNNM1IifQ.c2ln",
    "scope": "read write",
    "example_extension_parameter": "example_value",
}

#: A third-party authenticator whose check_client_metadata wants its own member.
DEMO = textwrap.dedent("""
    from tokensmith import hookimpl, InvalidClientMetadataError

    @hookimpl
    def client_auth_methods():
        return ["demo_key"]

    @hookimpl
    async def authenticate_client(request, listener):
        return None

    @hookimpl
    def check_client_metadata(metadata, listener):
        if "demo_auth.key_id" not in metadata:
            raise InvalidClientMetadataError("demo_key clients need demo_auth.key_id")
""")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, keystore, wheel_cache, make_wheel) -> Iterator[Server]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("dcr-open")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        listeners=DEFAULT_LISTENERS
        + '\n        <EventListener type="ClientAuthenticator" name="demo_auth" orderId="170" enable="true"/>',
    )
    make_wheel_path = make_wheel("demo_auth", DEMO)
    (dep.dropins / make_wheel_path.name).write_bytes(make_wheel_path.read_bytes())
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "root", "--file", str(root / "ca.pem"))
    write_authenticators(dep, mtls=False, mode="open", scopes="read write")
    add_users(dep)
    server = start_server(dep)
    server.authority = authority  # type: ignore[attr-defined]
    server.root = root  # type: ignore[attr-defined]
    yield server
    server.stop()


def token(server: Server, client_id: str, secret: str) -> int:
    with server.client() as http:
        return http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        ).status_code


def test_rfc7591_example_1(open_server: Server) -> None:
    with open_server.client() as http:
        answer = http.post("/oauth2/register", json=RFC7591_EXAMPLE_1)
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    # §3.2.1: the registered metadata, with what the server chose in place of the defaults.
    assert body["client_name"] == "My Example Client"
    assert body["redirect_uris"] == RFC7591_EXAMPLE_1["redirect_uris"]
    assert body["logo_uri"] == RFC7591_EXAMPLE_1["logo_uri"]
    assert body["jwks_uri"] == RFC7591_EXAMPLE_1["jwks_uri"]
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["grant_types"] == ["client_credentials"]
    assert "example_extension_parameter" not in body  # not understood: ignored (§2)
    assert body["client_secret_expires_at"] == 0
    assert isinstance(body["client_id_issued_at"], int)
    assert body["registration_client_uri"] == f"{open_server.url}/oauth2/register/{body['client_id']}"
    assert token(open_server, body["client_id"], body["client_secret"]) == 200


def test_a_client_registers_itself_for_the_authorization_code_grant(open_server: Server) -> None:
    """A public native client with a loopback redirect URI (RFC 8252 §7.3): response_types
    follows from grant_types (RFC 7591 §2.1), and the authorization endpoint knows the client."""
    document = {
        "client_name": "native",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "redirect_uris": ["http://127.0.0.1:8123/cb"],
    }
    with open_server.client() as http:
        answer = http.post("/oauth2/register", json=document)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["response_types"] == ["code"] and body["redirect_uris"] == document["redirect_uris"]
        assert "client_secret" not in body
        page = http.get(
            "/oauth2/authorize",
            params={
                "response_type": "code",
                "client_id": body["client_id"],
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256",
            },
        )
    assert page.status_code == 303 and page.headers["location"].startswith("/oauth2/login?")


def test_rfc7591_example_2(open_server: Server) -> None:
    with open_server.client() as http:
        answer = http.post("/oauth2/register", json=RFC7591_EXAMPLE_2)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["scope"] == "read write"
    assert "software_statement" not in body
    assert token(open_server, body["client_id"], body["client_secret"]) == 200


@pytest.mark.parametrize(
    ("document", "error"),
    [
        # RFC 7591 §3.2.2's example of invalid_client_metadata: grant and response types.
        ({"grant_types": ["authorization_code"], "response_types": ["implicit"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["not a uri"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://client.example.org/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://client.example.org/cb"]}, "invalid_redirect_uri"),  # http off loopback
        # RFC 8252 §7.3: 127.0.0.1 and [::1] only, no zone identifier.
        ({"redirect_uris": ["http://127.0.0.2/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://[::1%25lo]/cb"]}, "invalid_redirect_uri"),
        # Userinfo: it reads as trusted.example and goes to evil.example (RFC 3986 §7.6).
        ({"redirect_uris": ["https://trusted.example@evil.example/cb"]}, "invalid_redirect_uri"),
        # Not ASCII: it would be sent as raw UTF-8 in Location (RFC 3986 §2.1).
        ({"redirect_uris": ["https://client.example.org/cb/日本"]}, "invalid_redirect_uri"),
        ({"grant_types": ["authorization_code"]}, "invalid_client_metadata"),  # no redirect_uris
        (
            {"grant_types": ["client_credentials"], "response_types": ["code"]},
            "invalid_client_metadata",
        ),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        (
            {"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"},
            "invalid_client_metadata",
        ),
        ({"token_endpoint_auth_method": "tls_client_auth"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "self_signed_tls_client_auth"}, "invalid_client_metadata"),
        ({"logo_uri": "http://insecure.example/logo.png"}, "invalid_client_metadata"),
        ({"scope": "a\\b"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "demo_key"}, "invalid_client_metadata"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "invalid_client_metadata"),
    ],
)
def test_errors_are_rfc7591_json(open_server: Server, document: dict, error: str) -> None:
    with open_server.client() as http:
        answer = http.post("/oauth2/register", json=document)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == error
    assert answer.json()["error_description"]


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("https://trusted.example@evil.example/cb", "userinfo"),
        ("https://client.example.org/caf\u00e9", "ASCII"),
    ],
)
def test_the_admin_api_refuses_such_redirect_uris_too(open_server: Server, uri: str, said: str) -> None:
    document = {
        "client_name": "refused",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "redirect_uris": [uri],
    }
    with open_server.client(auth=("root", PASSWORDS["root"])) as admin:
        before = admin.get("/api/clients").json()
        answer = admin.post("/api/clients", json=document)
        assert answer.status_code == 400, answer.text
        assert said in answer.json()["error_description"]
        assert admin.get("/api/clients").json() == before


def test_not_json_is_invalid_client_metadata(open_server: Server) -> None:
    with open_server.client() as http:
        for body in (b"not json", b"[1]", b"\xff\xfe"):
            answer = http.post("/oauth2/register", content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400
            assert answer.json()["error"] == "invalid_client_metadata"


def test_a_plugins_check_applies(open_server: Server) -> None:
    with open_server.client() as http:
        refused = http.post("/oauth2/register", json={"token_endpoint_auth_method": "demo_key"})
        assert refused.json()["error_description"] == "demo_key clients need demo_auth.key_id"
        accepted = http.post(
            "/oauth2/register", json={"token_endpoint_auth_method": "demo_key", "demo_auth.key_id": "k1"}
        )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["demo_auth.key_id"] == "k1"
    assert "client_secret" not in accepted.json()


def test_mutual_tls_metadata(open_server: Server) -> None:
    """RFC 8705 §2.1.2 (tls_client_auth_subject_dn) and §2.2 (a self-signed certificate in
    jwks): the registered clients authenticate with their certificates."""
    authority, root = open_server.authority, open_server.root  # type: ignore[attr-defined]
    leaf = pki.issue(authority, "dcr-pki", org="Example").write(root, "dcr-pki")
    own = pki.self_signed("dcr-self")
    own_files = own.write(root, "dcr-self")
    with open_server.client() as http:
        pki_client = http.post(
            "/oauth2/register",
            json={
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=dcr-pki,O=Example",
            },
        )
        self_client = http.post(
            "/oauth2/register",
            json={
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [{"kty": "EC", "x5c": [base64.b64encode(own.der).decode()]}]},
            },
        )
    assert pki_client.status_code == 201, pki_client.text
    assert self_client.status_code == 201, self_client.text
    assert pki_client.json()["tls_client_auth_subject_dn"] == "CN=dcr-pki,O=Example"
    assert self_client.json()["jwks"]["keys"][0]["x5c"] == [base64.b64encode(own.der).decode()]
    for files, body in ((leaf, pki_client.json()), (own_files, self_client.json())):
        with open_server.client(cert=files) as http:
            answer = http.post(
                "/oauth2/token", data={"grant_type": "client_credentials", "client_id": body["client_id"]}
            )
            assert answer.status_code == 200, answer.text


def test_rfc7592_read_update_delete(open_server: Server) -> None:
    with open_server.client() as http:
        body = http.post("/oauth2/register", json={"client_name": "self-service", "scope": "read"}).json()
        uri, access = body["registration_client_uri"], body["registration_access_token"]
        path = uri.removeprefix(open_server.url)
        bearer = {"Authorization": f"Bearer {access}"}
        # §2.1: read, without the secret.
        read = http.get(path, headers=bearer)
        assert read.status_code == 200
        assert read.json()["client_id"] == body["client_id"] and "client_secret" not in read.json()
        assert http.get(path).status_code == 401
        assert http.get(path).headers["www-authenticate"].startswith("Bearer")
        assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        # Another client's token does not open this one.
        other = http.post("/oauth2/register", json={}).json()
        assert (
            http.get(
                path, headers={"Authorization": f"Bearer {other['registration_access_token']}"}
            ).status_code
            == 401
        )
        # §2.2: replace; members left out are gone.
        replaced = http.put(
            path, headers=bearer, json={"client_id": body["client_id"], "client_name": "renamed"}
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["client_name"] == "renamed" and "scope" not in replaced.json()
        mismatch = http.put(path, headers=bearer, json={"client_id": "someone-else", "client_name": "x"})
        assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_client_metadata"
        assert token(open_server, body["client_id"], body["client_secret"]) == 200
        # §2.3: delete; the client, its tokens and its registration token are gone.
        assert http.delete(path, headers=bearer).status_code == 204
        assert http.get(path, headers=bearer).status_code == 401
    assert token(open_server, body["client_id"], body["client_secret"]) == 401


@pytest.mark.parametrize(
    ("method", "grant_types"),
    [("none", ["authorization_code", "password"]), ("client_secret_basic", ["refresh_token"])],
)
def test_an_update_cannot_give_grant_types_registration_refuses(
    open_server: Server, method: str, grant_types: list[str]
) -> None:
    """The password grant for a public client (RFC 9700 §2.4) and refresh_token alone are
    refused at registration; neither RFC 7592 PUT nor the admin API's PATCH or PUT may set
    them afterwards."""
    document = {"client_name": "grows", "token_endpoint_auth_method": method}
    if method == "none":
        document |= {"grant_types": ["authorization_code"], "redirect_uris": ["https://app.example/cb"]}
    with open_server.client() as http:
        assert http.post("/oauth2/register", json={**document, "grant_types": grant_types}).status_code == 400
        body = http.post("/oauth2/register", json=document).json()
        path = body["registration_client_uri"].removeprefix(open_server.url)
        bearer = {"Authorization": f"Bearer {body['registration_access_token']}"}
        replaced = http.put(
            path,
            headers=bearer,
            json={**document, "client_id": body["client_id"], "grant_types": grant_types},
        )
        assert replaced.status_code == 400, replaced.text
        assert replaced.json()["error"] == "invalid_client_metadata"
    client_path = f"/api/clients/{body['client_id']}"
    with open_server.client(auth=("root", PASSWORDS["root"]), headers=JSON) as admin:
        patched = admin.patch(client_path, json={"grant_types": grant_types})
        assert patched.status_code == 400, patched.text
        assert patched.json()["error"] == "invalid_client_metadata"
        put = admin.put(client_path, json={**document, "grant_types": grant_types})
        assert put.status_code == 400, put.text
        assert admin.get(client_path).json()["grant_types"] == document.get(
            "grant_types", ["client_credentials"]
        )


def test_deeply_nested_json_is_invalid_client_metadata(open_server: Server) -> None:
    """RFC 7591 §3.2.2: a body nested past the parser's recursion limit is malformed
    metadata like any other, not a server error."""
    with open_server.client() as http:
        answer = http.post(
            "/oauth2/register", content=b"[" * 60000, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client_metadata"


def test_the_metadata_names_the_registration_endpoint(open_server: Server) -> None:
    with open_server.client() as http:
        metadata = http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["registration_endpoint"] == f"{open_server.url}/oauth2/register"


def test_registrations_are_audited(open_server: Server) -> None:
    with open_server.client() as http:
        created = http.post("/oauth2/register", json={"client_name": "audited"}).json()
    with open_server.client(auth=("root", PASSWORDS["root"])) as http:
        entries = http.get("/api/audit").json()
    entry = next(e for e in entries if e["target"] == created["client_id"])
    assert entry["action"] == "client.create" and entry["actor"] == "registration" and entry["via"] == "open"
    assert entry["source"] == "127.0.0.1"
    assert created["client_secret"] not in str(entries)


def test_initial_access_token_mode(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    write_authenticators(dep, mtls=False, mode="initial_access_token")
    add_users(dep)
    server = serve(dep)
    with server.client() as http:
        anonymous = http.post("/oauth2/register", json={})
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = http.post("/oauth2/register", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_token"
        # The token is checked before the body is parsed: whatever the body, 401.
        for content in (b"[" * 60000, b"not json"):
            unparsed = http.post(
                "/oauth2/register", content=content, headers={"Authorization": "Bearer nope", **JSON}
            )
            assert unparsed.status_code == 401 and unparsed.json()["error"] == "invalid_token"
    with server.client(auth=("root", PASSWORDS["root"])) as admin:
        issued = admin.post("/api/registration/initial-access-tokens", headers=JSON)
        assert issued.status_code == 201
    initial = issued.json()["initial_access_token"]
    cli_token = dep.cli("sp", "initial-token").stdout
    with server.client() as http:
        bearer = {"Authorization": f"Bearer {initial}"}
        # A refused registration does not use the token up.
        refused = http.post("/oauth2/register", json={"grant_types": ["implicit"]}, headers=bearer)
        assert refused.status_code == 400
        first = http.post("/oauth2/register", json={"client_name": "with token"}, headers=bearer)
        assert first.status_code == 201, first.text
        # Once only.
        assert http.post("/oauth2/register", json={}, headers=bearer).status_code == 401
        from_cli = __import__("json").loads(cli_token)["initial_access_token"]
        assert (
            http.post(
                "/oauth2/register", json={}, headers={"Authorization": f"Bearer {from_cli}"}
            ).status_code
            == 201
        )


def test_disabled_registration(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    write_authenticators(dep, mtls=False, mode="disabled")
    server = serve(dep)
    with server.client() as http:
        assert http.post("/oauth2/register", json={}).status_code == 404
        assert "registration_endpoint" not in http.get("/.well-known/oauth-authorization-server").json()


def test_a_client_registers_only_the_scopes_the_policy_allows(open_server: Server) -> None:
    """Red team: a self-registered client named any scope and got tokens carrying it, and
    widened it with RFC 7592 PUT. ``<DynamicClientRegistration scopes="read write">``: any
    other scope is invalid_client_metadata naming it (RFC 7591 §3.2.2), on registration and
    on update; the admin API is not limited, and an update keeps what an admin granted."""
    with open_server.client() as http:
        refused = http.post("/oauth2/register", json={"scope": "read admin payments:write"})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client_metadata"
        assert "admin payments:write" in refused.json()["error_description"]
        assert "read" not in refused.json()["error_description"].split("'")[1].split()
        body = http.post("/oauth2/register", json={"scope": "read"}).json()
        assert body["scope"] == "read"
        path = body["registration_client_uri"].removeprefix(open_server.url)
        bearer = {"Authorization": f"Bearer {body['registration_access_token']}"}
        document = {"client_id": body["client_id"], "grant_types": ["client_credentials"]}
        widened = http.put(path, headers=bearer, json={**document, "scope": "read admin"})
        assert widened.status_code == 400 and widened.json()["error"] == "invalid_client_metadata"
        assert "'admin'" in widened.json()["error_description"]
        denied = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": "admin"},
            auth=(body["client_id"], body["client_secret"]),
        )
        assert denied.status_code == 400 and denied.json()["error"] == "invalid_scope"
        assert http.put(path, headers=bearer, json={**document, "scope": "read write"}).status_code == 200
    with open_server.client(auth=("root", PASSWORDS["root"]), headers=JSON) as admin:
        granted = admin.patch(f"/api/clients/{body['client_id']}", json={"scope": "read admin"})
        assert granted.status_code == 200, granted.text
        created = admin.post(
            "/api/clients",
            json={
                "client_name": "by an admin",
                "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": "payments:write",
            },
        )
        assert created.status_code == 201, created.text
    with open_server.client() as http:
        kept = http.put(path, headers=bearer, json={**document, "scope": "admin read"})
        assert kept.status_code == 200, kept.text
        assert sorted(kept.json()["scope"].split()) == ["admin", "read"]
        more = http.put(path, headers=bearer, json={**document, "scope": "admin read superuser"})
        assert more.status_code == 400 and "'superuser'" in more.json()["error_description"]


def test_by_default_dynamic_registration_grants_no_scope(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    write_authenticators(dep, mtls=False, mode="open")
    server = serve(dep)
    with server.client() as http:
        refused = http.post("/oauth2/register", json={"scope": "read"})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_client_metadata"
        assert "'read'" in refused.json()["error_description"]
        assert http.post("/oauth2/register", json={"client_name": "no scope"}).status_code == 201


def test_updates_racing_a_secret_reset_never_bring_the_old_secret_back(open_server: Server) -> None:
    """Red team: RFC 7592 PUTs racing an admin's secret reset wrote the old secret hash back
    (new secret 401, old 200), and the reset's claim then refused resets for an hour. Now a
    PUT that read the client before a reset is 409, each reset's secret works and the one
    before it does not, and resets go on going through."""
    with open_server.client() as http:
        body = http.post("/oauth2/register", json={"client_name": "victim"}).json()
    client_id, secret = body["client_id"], body["client_secret"]
    path = body["registration_client_uri"].removeprefix(open_server.url)
    bearer = {"Authorization": f"Bearer {body['registration_access_token']}"}
    document = {"client_id": client_id, "client_name": "victim", "grant_types": ["client_credentials"]}
    stop = threading.Event()
    statuses: list[int] = []

    def spam() -> None:
        with open_server.client() as http:
            while not stop.is_set():
                statuses.append(http.put(path, headers=bearer, json=document).status_code)

    threads = [threading.Thread(target=spam) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        with open_server.client(auth=("root", PASSWORDS["root"]), headers=JSON) as admin:
            for _ in range(4):
                time.sleep(0.2)
                reset = admin.post(f"/api/clients/{client_id}/secret")
                assert reset.status_code == 200, reset.text
                time.sleep(0.2)  # PUTs that read before the reset have written by now
                new, old, secret = reset.json()["client_secret"], secret, reset.json()["client_secret"]
                assert (token(open_server, client_id, new), token(open_server, client_id, old)) == (200, 401)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) <= {200, 409}, Counter(statuses)

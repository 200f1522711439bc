"""The admin REST API under /api/, against a real server over real TLS: every endpoint with
each authenticator of conf/authenticators.xml, without credentials, and with a role that is
not enough; the audit log; the OAuth mutual-TLS client authentication beside it."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pki
import pytest
from admin_env import PASSWORDS, AdminEnv, add_users, write_authenticators
from conftest import TOKENSMITH, new_deployment, start_server

CLIENT_ID = "no-such-client"

#: (method, path, JSON body) of every endpoint, with arguments that name nothing (the guard
#: answers before the endpoint looks).
ENDPOINTS = [
    ("GET", "/api/clients", None),
    ("POST", "/api/clients", {"token_endpoint_auth_method": "client_secret_basic", "grant_types": []}),
    ("GET", f"/api/clients/{CLIENT_ID}", None),
    ("PATCH", f"/api/clients/{CLIENT_ID}", {}),
    ("PUT", f"/api/clients/{CLIENT_ID}", {}),
    ("DELETE", f"/api/clients/{CLIENT_ID}", None),
    ("POST", f"/api/clients/{CLIENT_ID}/certificates", {"certificate": ""}),
    ("DELETE", f"/api/clients/{CLIENT_ID}/certificates/{'0' * 64}", None),
    ("POST", f"/api/clients/{CLIENT_ID}/secret", None),
    ("POST", f"/api/clients/{CLIENT_ID}/revoke-tokens", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"username": "x", "password": "y"}),
    ("GET", "/api/users/nobody", None),
    ("PATCH", "/api/users/nobody", {"role": None}),
    ("DELETE", "/api/users/nobody", None),
    ("POST", "/api/users/nobody/revoke-tokens", None),
    ("POST", "/api/users/nobody/unlock", None),
    ("GET", "/api/truststore", None),
    ("POST", "/api/truststore", {"alias": "x", "certificate": ""}),
    ("DELETE", "/api/truststore/nothing", None),
    ("GET", "/api/signing-keys", None),
    ("POST", "/api/signing-keys", {}),
    ("DELETE", "/api/signing-keys/nokid", None),
    ("GET", "/api/listeners", None),
    ("PATCH", "/api/listeners/ClientAuthenticator/nothing", {"enabled": True}),
    ("PUT", "/api/listeners/order", {"order": []}),
    ("GET", "/api/dropins", None),
    ("POST", "/api/registration/initial-access-tokens", None),
    ("GET", "/api/audit", None),
]


def call(http, method: str, path: str, body: object | None):  # noqa: ANN001, ANN201
    return http.request(method, path, json=body) if body is not None else http.request(method, path)


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[AdminEnv]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("admin")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "admin-root", "--file", str(root / "ca.pem"))
    write_authenticators(dep, mtls=True)
    add_users(dep)
    dep.cli("user", "add", "decoy", "--role", "admin", "--password-stdin", input="decoy-password\n")
    cert = pki.issue(authority, "console", org="Example").write(root, "console")
    server = start_server(dep)
    yield AdminEnv(server, root, authority, cert)
    server.stop()


def test_the_openapi_document_is_served_without_credentials(env: AdminEnv) -> None:
    with env.server.client() as http:
        answer = http.get("/api/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    for method, path, _ in ENDPOINTS:
        templated = (
            path.replace(CLIENT_ID, "{client_id}")
            .replace("0" * 64, "{sha256}")
            .replace("/nobody", "/{username}")
            .replace("/nothing", "/{alias}" if "truststore" in path else "/{name}")
            .replace("/ClientAuthenticator/", "/{type}/")
            .replace("/nokid", "/{kid}")
        )
        assert (method, templated) in listed, (method, path)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_no_credentials_is_401_with_a_challenge(env: AdminEnv, method: str, path: str, body: object) -> None:
    with env.server.client() as http:
        answer = call(http, method, path, body)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic realm=")
    assert answer.json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_wrong_password_or_unknown_user_is_401(env: AdminEnv, method: str, path: str, body: object) -> None:
    # "decoy" is an admin whose failures lock it out (identity.xml's MaxFailedLogins), as the
    # password grant's do; the other users are not touched.
    with env.server.client(auth=("decoy", "wrong-password")) as http:
        assert call(http, method, path, body).status_code == 401
    with env.server.client(auth=("nobody-at-all", "x")) as http:
        assert call(http, method, path, body).status_code == 401


@pytest.mark.parametrize("via", ["basic", "mtls"])
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_roles(env: AdminEnv, via: str, method: str, path: str, body: object) -> None:
    """A user without a role may do nothing; a reader may read; a change needs admin."""
    connect = env.basic if via == "basic" else env.mtls
    with connect("plain") as http:
        assert call(http, method, path, body).status_code == 403
    with connect("viewer") as http:
        answer = call(http, method, path, body)
    if method == "GET":
        assert answer.status_code in (200, 404), answer.text
    else:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "forbidden"
    with connect("root") as http:
        answer = call(http, method, path, body)
    assert answer.status_code not in (401, 403, 500), answer.text


def test_mutual_ssl_needs_a_trusted_certificate_and_a_user(env: AdminEnv) -> None:
    stranger = pki.issue(pki.ca("Other CA"), "console").write(env.root, "stranger")
    with env.server.client(cert=stranger, headers={"UserName": "root"}) as http:
        answer = http.get("/api/clients")
    assert answer.status_code == 401
    assert "not trusted" in answer.json()["error_description"]
    with env.server.client(cert=env.cert) as http:
        assert http.get("/api/clients").status_code == 401  # no UserName header
    with env.server.client(cert=env.cert, headers={"UserName": "ghost"}) as http:
        assert http.get("/api/clients").status_code == 401


def _self_signed_pem(name: str) -> tuple[pki.Pair, tuple[Path, Path]]:
    pair = pki.self_signed(name)
    return pair, pair.write(Path(f"/tmp/{name}-{time.monotonic_ns()}"), name)


@pytest.mark.parametrize("via", ["basic", "mtls"])
def test_a_service_provider_with_a_certificate_is_created_rotated_and_removed(
    env: AdminEnv, via: str
) -> None:
    connect = env.basic if via == "basic" else env.mtls
    first = pki.self_signed(f"app-{via}-1")
    second = pki.self_signed(f"app-{via}-2")
    files1 = first.write(env.root, f"app-{via}-1")
    files2 = second.write(env.root, f"app-{via}-2")
    with connect() as http:
        created = http.post(
            "/api/clients",
            json={
                "client_name": f"app {via}",
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "grant_types": ["client_credentials"],
                "scope": "read write",
                "jwks": {"keys": [{"kty": "EC", "x5c": [base64.b64encode(first.der).decode()]}]},
            },
        )
        assert created.status_code == 201, created.text
        client = created.json()
        client_id = client["client_id"]
        assert "client_secret" not in client
        assert [c["sha256"] for c in client["certificates"]] == [first.der.hex() and _sha256(first.der)]
        # The client authenticates with its certificate at once.
        with env.server.client(cert=files1) as oauth:
            assert (
                oauth.post(
                    "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
                ).status_code
                == 200
            )
        # Rotation: add the next certificate, remove the first.
        added = http.post(f"/api/clients/{client_id}/certificates", json={"certificate": second.pem.decode()})
        assert added.status_code == 201, added.text
        assert len(added.json()["certificates"]) == 2
        removed = http.delete(f"/api/clients/{client_id}/certificates/{_sha256(first.der)}")
        assert removed.status_code == 200, removed.text
        assert [c["sha256"] for c in removed.json()["certificates"]] == [_sha256(second.der)]
        with env.server.client(cert=files1) as oauth:
            refused = oauth.post(
                "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
            )
            assert refused.status_code == 401
        with env.server.client(cert=files2) as oauth:
            assert (
                oauth.post(
                    "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
                ).status_code
                == 200
            )
        # The last certificate cannot go.
        last = http.delete(f"/api/clients/{client_id}/certificates/{_sha256(second.der)}")
        assert last.status_code == 400
        assert http.get(f"/api/clients/{client_id}").json()["client_metadata"]["scope"] == "read write"
        assert http.delete(f"/api/clients/{client_id}").status_code == 204
        assert http.get(f"/api/clients/{client_id}").status_code == 404
    with env.server.client(cert=files2) as oauth:
        gone = oauth.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id})
        assert gone.status_code == 401


def _sha256(der: bytes) -> str:
    import hashlib

    return hashlib.sha256(der).hexdigest()


def test_secret_client_reset_secret_is_shown_once_and_the_old_one_stops(env: AdminEnv) -> None:
    with env.basic() as http:
        created = http.post(
            "/api/clients",
            json={
                "client_name": "secret app",
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"],
            },
        ).json()
        client_id, old = created["client_id"], created["client_secret"]
        assert http.get(f"/api/clients/{client_id}").json().get("client_secret") is None
        with env.server.client() as oauth:
            token = oauth.post(
                "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, old)
            )
            assert token.status_code == 200
        reset = http.post(f"/api/clients/{client_id}/secret")
        assert reset.status_code == 200
        new = reset.json()["client_secret"]
        assert new != old
        with env.server.client() as oauth:
            assert (
                oauth.post(
                    "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, old)
                ).status_code
                == 401
            )
            assert (
                oauth.post(
                    "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, new)
                ).status_code
                == 200
            )
        patched = http.patch(
            f"/api/clients/{client_id}", json={"client_name": "renamed", "contacts": ["a@b.example"]}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "renamed"
        assert http.post(f"/api/clients/{client_id}/revoke-tokens").json()["revoked"] >= 1
        bad = http.post(
            "/api/clients",
            json={"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["implicit"]},
        )
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_client_metadata"
        entries = http.get("/api/audit", params={"limit": 50}).json()
    actions = [(e["action"], e["target"], e["actor"], e["via"]) for e in entries]
    assert ("client.reset_secret", client_id, "root", "basic") in actions
    assert ("client.create", client_id, "root", "basic") in actions
    assert ("client.revoke_tokens", client_id, "root", "basic") in actions
    text = json.dumps(entries)
    assert old not in text and new not in text  # never a secret
    assert all(e["source"] == "127.0.0.1" for e in entries if e["actor"] == "root")


def test_users_truststore_signing_keys(env: AdminEnv) -> None:
    with env.mtls() as http:
        created = http.post(
            "/api/users", json={"username": "alice", "password": "alice-password", "role": "reader"}
        )
        assert created.status_code == 201, created.text
        assert (
            http.post("/api/users", json={"username": "alice", "password": "alice-other"}).status_code == 409
        )
        short = http.post("/api/users", json={"username": "bob", "password": "short"})
        assert short.status_code == 400 and "at least 8 characters" in short.json()["error_description"]
        assert http.patch("/api/users/alice", json={"role": "admin"}).json()["role"] == "admin"
        # A new password: both fields checked before either changes.
        assert http.patch("/api/users/alice", json={"password": "new", "role": None}).status_code == 400
        assert http.patch("/api/users/alice", json={"password": "alice-new-password"}).status_code == 200
        assert http.get("/api/users/alice").json()["role"] == "admin"
        assert http.post("/api/users/alice/unlock").status_code == 200
        assert http.post("/api/users/alice/revoke-tokens").json() == {"revoked": 0}
        assert http.delete("/api/users/alice").status_code == 204
        assert http.get("/api/users/alice").status_code == 404
        other = pki.ca("Partner CA")
        imported = http.post("/api/truststore", json={"alias": "partner", "certificate": other.pem.decode()})
        assert imported.status_code == 201, imported.text
        assert "partner" in [a["alias"] for a in http.get("/api/truststore").json()]
        assert (
            http.post(
                "/api/truststore", json={"alias": "partner", "certificate": other.pem.decode()}
            ).status_code
            == 409
        )
        assert http.delete("/api/truststore/partner").status_code == 204
        rotated = http.post("/api/signing-keys", json={"algorithm": "ES256"})
        assert rotated.status_code == 201, rotated.text
        keys = http.get("/api/signing-keys").json()
        assert keys[0]["kid"] == rotated.json()["kid"] and keys[0]["active"]
        entries = http.get("/api/audit").json()
    done = {(e["action"], e["target"]) for e in entries if e["via"] == "mutual_tls"}
    assert {("user.create", "alice"), ("user.delete", "alice"), ("truststore.import", "partner")} <= done
    assert "alice-password" not in json.dumps(entries)


def test_listeners_are_disabled_and_reordered_through_identity_xml(env: AdminEnv) -> None:
    identity = env.server.deployment.conf / "identity.xml"
    identity.write_text(
        identity.read_text().replace("<EventListeners>", "<!-- kept comment -->\n    <EventListeners>")
    )
    with env.basic() as http:
        listed = http.get("/api/listeners").json()
        assert {"post_body_auth", "basic_auth", "mutual_tls"} <= {item["name"] for item in listed}
        answer = http.patch("/api/listeners/ClientAuthenticator/post_body_auth", json={"enabled": False})
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = {item["name"]: item["enabled"] for item in http.get("/api/listeners").json()}
            if not state["post_body_auth"]:
                break
            time.sleep(0.1)
        assert state["post_body_auth"] is False
        assert "kept comment" in identity.read_text()
        with env.server.client() as oauth:
            methods = oauth.get("/.well-known/oauth-authorization-server").json()
        assert "client_secret_post" not in methods["token_endpoint_auth_methods_supported"]
        order = http.put(
            "/api/listeners/order",
            json={"order": ["ClientAuthenticator/mutual_tls", "ClientAuthenticator/basic_auth"]},
        )
        assert order.status_code == 202
        assert (
            http.patch("/api/listeners/ClientAuthenticator/nothing", json={"enabled": True}).status_code
            == 404
        )
        assert (
            http.patch(
                "/api/listeners/ClientAuthenticator/post_body_auth", json={"enabled": True}
            ).status_code
            == 202
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = [item["name"] for item in http.get("/api/listeners").json() if item["enabled"]]
            if names[:2] == ["mutual_tls", "basic_auth"] and "post_body_auth" in names:
                break
            time.sleep(0.1)
        assert names[:2] == ["mutual_tls", "basic_auth"] and "post_body_auth" in names
        dropins = http.get("/api/dropins").json()
    assert dropins["pinning"] is False
    assert {w["file"].split("-")[0] for w in dropins["wheels"]} >= {"tokensmith_basic_auth"} or dropins[
        "wheels"
    ]
    assert all(w["loaded"] and w["listeners"] for w in dropins["wheels"])


def test_oauth_mutual_tls_at_the_token_endpoint_is_unchanged(env: AdminEnv) -> None:
    """MutualSSLAuthenticator is enabled and the certificate is one it accepts for /api/; at
    /oauth2/token the same certificate authenticates a tls_client_auth client, unchanged."""
    dep = env.server.deployment
    client_id = dep.add_client(
        "pki",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "tls_client_auth",
        "--subject-dn",
        "CN=console,O=Example",
    )["client_id"]
    with env.server.client(cert=env.cert, headers={"UserName": "root"}) as http:
        token = http.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id})
        assert token.status_code == 200, token.text
        assert token.json()["token_type"] == "Bearer"
        assert http.get("/api/clients").status_code == 200  # the same connection's certificate, for /api/
    with env.server.client(cert=env.cert) as http:
        # No UserName header: /api/ refuses, the token endpoint does not care.
        assert (
            http.post(
                "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
            ).status_code
            == 200
        )


def test_whitelist_and_disabled_mutual_ssl(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    authority = pki.ca()
    (tmp_path / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "root", "--file", str(tmp_path / "ca.pem"))
    write_authenticators(dep, mtls=True, whitelist="CN=console,O=Example")
    add_users(dep)
    listed = pki.issue(authority, "console", org="Example").write(tmp_path, "listed")
    unlisted = pki.issue(authority, "intruder", org="Example").write(tmp_path, "unlisted")
    server = serve(dep)
    with server.client(cert=listed, headers={"UserName": "root"}) as http:
        assert http.get("/api/users").status_code == 200
    with server.client(cert=unlisted, headers={"UserName": "root"}) as http:
        answer = http.get("/api/users")
        assert answer.status_code == 401
        assert "WhiteList" in answer.json()["error_description"]
    # Disabled (the default), and reloaded on SIGHUP like identity.xml.
    write_authenticators(dep, mtls=False)
    server.process.send_signal(__import__("signal").SIGHUP)
    server.wait_for_log("reloaded: configuration 2")
    with server.client(cert=listed, headers={"UserName": "root"}) as http:
        assert http.get("/api/users").status_code == 401
    with server.client(auth=("root", PASSWORDS["root"])) as http:
        assert http.get("/api/users").status_code == 200


def test_a_bad_authenticators_xml_is_refused_with_its_line(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    (dep.conf / "authenticators.xml").write_text(
        '<?xml version="1.0"?>\n<Authenticators>\n  <Authenticator name="Kerberos"/>\n</Authenticators>\n'
    )
    started = subprocess.run(
        [TOKENSMITH, "serve", "--conf", str(dep.conf)], capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    assert "authenticators.xml:3" in started.stderr
    assert "'Kerberos'" in started.stderr and "MutualSSLAuthenticator" in started.stderr
    assert "Traceback" not in started.stderr
    assert len(started.stderr.strip().splitlines()) == 1


def test_a_listener_change_reloads_every_worker(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """With workers, the API's change goes through the supervisor as SIGHUP does: it checks
    the new identity.xml, then every worker reloads."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    write_authenticators(dep, mtls=False)
    add_users(dep)
    server = serve(dep, "--workers", "2")
    with server.client(auth=("root", PASSWORDS["root"])) as http:
        answer = http.patch("/api/listeners/ClientAuthenticator/post_body_auth", json={"enabled": False})
    assert answer.status_code == 202, answer.text
    server.wait_for_log("reloaded: configuration 2", count=2)
    for _ in range(6):  # new connections, whichever worker takes them
        with server.client() as http:
            methods = http.get("/.well-known/oauth-authorization-server").json()
        assert "client_secret_post" not in methods["token_endpoint_auth_methods_supported"]

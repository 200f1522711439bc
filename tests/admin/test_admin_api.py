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
from admin_env import JSON, PASSWORDS, AdminEnv, add_users, write_authenticators
from conftest import TOKENSMITH, new_deployment, start_server
from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
    # With pinning off, one pin would leave the other wheels unpinned: 409, nothing written.
    ("POST", "/api/dropins/pins", {"sha256": ["0" * 64]}),
    ("PUT", f"/api/dropins/{'0' * 64}/pin", None),
    ("DELETE", f"/api/dropins/{'0' * 64}/pin", None),
    ("POST", "/api/registration/initial-access-tokens", None),
    ("GET", "/api/audit", None),
]


def call(http, method: str, path: str, body: object | None):  # noqa: ANN001, ANN201
    headers = JSON if method not in ("GET", "HEAD") else {}
    if body is not None:
        return http.request(method, path, json=body, headers=headers)
    return http.request(method, path, headers=headers)


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[AdminEnv]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("admin")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "admin-root", "--file", str(root / "ca.pem"))
    cert = pki.issue(authority, "console", org="Example").write(root, "console")
    # Listed too, but outside their validity periods (test_an_admin_certificate_must_be_valid).
    expired = pki.issue(
        authority, "retired", org="Example", not_before=pki.NOW - 10 * pki.DAY, not_after=pki.NOW - pki.DAY
    )
    early = pki.issue(
        authority, "early", org="Example", not_before=pki.NOW + pki.DAY, not_after=pki.NOW + 9 * pki.DAY
    )
    expired.write(root, "expired")
    early.write(root, "early")
    (root / "admins.pem").write_bytes(cert[0].read_bytes() + expired.pem + early.pem)
    write_authenticators(dep, mtls=True, admin_certificates=root / "admins.pem")
    add_users(dep)
    dep.cli("user", "add", "decoy", "--role", "admin", "--password-stdin", input="decoy-password\n")
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
    """A user without a role may do nothing; a reader may read through Basic; a change needs
    admin, and so does everything through the MutualSSLAuthenticator (issue 20: the request
    "acts as the user named in the UsernameHeader header, who must exist and hold the admin
    role")."""
    connect = env.basic if via == "basic" else env.mtls
    with connect("plain") as http:
        assert call(http, method, path, body).status_code == 403
    with connect("viewer") as http:
        answer = call(http, method, path, body)
    if method == "GET" and via == "basic":
        assert answer.status_code in (200, 404), answer.text
    else:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "forbidden"
        if via == "mtls":
            assert "admin role" in answer.json()["error_description"]
    with connect("root") as http:
        answer = call(http, method, path, body)
    assert answer.status_code not in (401, 403, 500), answer.text


def test_mutual_ssl_needs_an_admin_certificate_and_a_user(env: AdminEnv) -> None:
    stranger = pki.issue(pki.ca("Other CA"), "console").write(env.root, "stranger")
    with env.server.client(cert=stranger, headers={"UserName": "root"}) as http:
        answer = http.get("/api/clients")
    assert answer.status_code == 401
    assert "AdminCertificates" in answer.json()["error_description"]
    with env.server.client(cert=env.cert) as http:
        assert http.get("/api/clients").status_code == 401  # no UserName header
    # An unknown user and a user without a role: the first answer must not tell them apart.
    with env.server.client(cert=env.cert, headers={"UserName": "ghost"}) as http:
        ghost = http.get("/api/clients")
    assert ghost.status_code == 401
    assert "ghost" not in ghost.text and ghost.json()["error_description"] == "authentication failed"


def test_an_admin_certificate_must_be_valid(env: AdminEnv) -> None:
    """An AdminCertificates certificate outside its validity period (RFC 5280 §4.1.2.5) is
    refused like any other."""
    for name, words in (("expired", "expired on"), ("early", "not valid before")):
        files = (env.root / f"{name}.pem", env.root / f"{name}.key")
        with env.server.client(cert=files, headers={"UserName": "root"}) as http:
            answer = http.get("/api/users")
        assert answer.status_code == 401, name
        assert words in answer.json()["error_description"]


def test_a_certificate_that_only_chains_to_the_truststore_is_no_admin(env: AdminEnv) -> None:
    """The truststore also anchors OAuth tls_client_auth clients' certificates: such a
    client's certificate, from the very CA the admin certificate comes from, may not act as
    an admin (WhiteList off: only AdminCertificates are accepted)."""
    client_cert = pki.issue(env.authority, "payments", org="Example").write(env.root, "oauth-client")
    with env.server.client(cert=client_cert, headers={"UserName": "root", **JSON}) as http:
        created = http.post("/api/users", json={"username": "pwned", "password": "pwned", "role": "admin"})
        listed = http.get("/api/users")
    assert created.status_code == 401 and listed.status_code == 401
    assert "AdminCertificates" in created.json()["error_description"]
    with env.basic() as http:
        assert http.get("/api/users/pwned").status_code == 404


def test_audit_entries_made_with_a_certificate_name_it(env: AdminEnv) -> None:
    with env.mtls() as http:
        assert http.post("/api/users/root/unlock").status_code == 200
        entry = http.get("/api/audit", params={"limit": 1}).json()[0]
    assert (entry["action"], entry["actor"], entry["via"]) == ("user.unlock", "root", "mutual_tls")
    leaf = x509.load_pem_x509_certificate(env.cert[0].read_bytes())
    assert entry["details"]["certificate"] == {
        "subject": "CN=console,O=Example",
        "sha256": _sha256(leaf.public_bytes(serialization.Encoding.DER)),
    }


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


def test_lone_surrogates_in_ids_and_fields_are_refused_not_a_500(env: AdminEnv) -> None:
    """Issue 22, reproduced against the server: JSON may escape a lone surrogate ("\\ud800"),
    which no PEM, alias or name holds and nothing can encode; percent-encoded invalid UTF-8 in
    a path or query names nothing. Each is a 4xx in RFC 6749 error JSON (or the authorization
    endpoint's error page), never a 500."""
    pem = env.authority.pem.decode().replace("\n", "\\n")
    lone = "\\ud800"
    with env.basic() as http:
        for method, path, body in [
            ("POST", f"/api/clients/{CLIENT_ID}/certificates", f'{{"certificate":"{lone}"}}'),
            ("POST", "/api/truststore", f'{{"alias":"ok","certificate":"{pem}{lone}"}}'),
            ("POST", "/api/truststore", f'{{"alias":"{lone}","certificate":"{pem}"}}'),
            ("POST", "/api/users", f'{{"username":"u","password":"{lone}"}}'),
            ("POST", "/api/signing-keys", f'{{"algorithm":"{lone}"}}'),
            ("GET", "/api/clients/%ED%A0%80", None),
            ("DELETE", "/api/clients/%ED%A0%80", None),
            ("GET", "/api/users/%ED%A0%80", None),
        ]:
            headers = {"content-type": "application/json"} if body else {}
            answer = http.request(method, path, content=body.encode() if body else None, headers=headers)
            assert answer.status_code in (400, 404), (method, path, answer.text)
            assert answer.json()["error"] in ("invalid_request", "not_found"), answer.text
    with env.server.client() as http:
        for client_id in ("%ED%A0%80", "%80", "%F0%90%80"):
            answer = http.get(f"/oauth2/authorize?response_type=code&client_id={client_id}")
            assert answer.status_code == 400, answer.text
            assert "text/html" in answer.headers["content-type"]


def test_dropin_pins_are_set_and_removed_through_identity_xml(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """Issue 20: the API edits the dropins' pins (<Dropins><AllowedWheel>) with the code the
    CLI's `plugins pin --add/--remove` runs, audited, then reloads: pinning turns on only with
    every wheel pinned, a wheel still in dropins/ keeps its pin, and the server loads on."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    authority = pki.ca()
    (tmp_path / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "admin-root", "--file", str(tmp_path / "ca.pem"))
    add_users(dep)
    cert = pki.issue(authority, "pins", org="Example").write(tmp_path, "pins")
    write_authenticators(dep, mtls=True, admin_certificates=cert[0])
    identity = dep.conf / "identity.xml"
    server = serve(dep)
    spare = "ab" * 32
    with server.client(auth=("root", PASSWORDS["root"]), headers=JSON) as http:
        listed = http.get("/api/dropins").json()
        assert listed["pinning"] is False and len(listed["wheels"]) >= 2
        digests = [w["sha256"] for w in listed["wheels"]]
        before = identity.read_text()
        one = http.put(f"/api/dropins/{digests[0]}/pin")
        assert one.status_code == 409, one.text
        assert listed["wheels"][1]["file"] in one.json()["error_description"]
        assert identity.read_text() == before
        assert http.put("/api/dropins/not-a-digest/pin").status_code == 400
        assert http.post("/api/dropins/pins", json={"sha256": "x"}).status_code == 400
        every = http.post("/api/dropins/pins", json={"sha256": digests})
        assert every.status_code == 202, every.text
        assert sorted(every.json()["pinned"]) == sorted(digests)
        server.wait_for_log("reloaded: configuration 2")
        pinned = http.get("/api/dropins").json()
        assert pinned["pinning"] is True
        assert all(w["pinned"] and w["loaded"] for w in pinned["wheels"]), pinned
        assert identity.read_text().count("<AllowedWheel ") == len(digests)
        kept = http.delete(f"/api/dropins/{digests[0]}/pin")
        assert kept.status_code == 409 and "remove the wheel first" in kept.json()["error_description"]
        assert http.delete(f"/api/dropins/{spare}/pin").status_code == 404
        assert http.post("/api/dropins/pins", json={"sha256": digests}).json() == {
            "reloading": False,
            "pinned": [],
        }
    with server.client(cert=cert, headers={"UserName": "root", **JSON}) as http:
        # A wheel to come can be pinned before it is dropped in, and unpinned again.
        assert http.put(f"/api/dropins/{spare}/pin").status_code == 202
        server.wait_for_log("reloaded: configuration 3")
        assert spare in identity.read_text()
        assert http.put(f"/api/dropins/{spare}/pin").status_code == 200
        assert http.delete(f"/api/dropins/{spare}/pin").status_code == 202
        server.wait_for_log("reloaded: configuration 4")
        assert spare not in identity.read_text()
        assert all(w["loaded"] for w in http.get("/api/dropins").json()["wheels"])
        entries = http.get("/api/audit").json()
    done = [(e["action"], e["target"], e["actor"], e["via"]) for e in entries]
    assert ("dropins.pin", digests[0], "root", "basic") in done
    assert ("dropins.pin", spare, "root", "mutual_tls") in done
    assert ("dropins.unpin", spare, "root", "mutual_tls") in done
    # The CLI runs the same code: the pins it sees are the API's, and it refuses the same way.
    refused = dep.cli("plugins", "pin", "--remove", digests[0], check=False)
    assert refused.returncode not in (0, 70) and "remove the wheel first" in refused.stderr
    assert refused.stderr.count("\n") == 1


# -- cross-site request forgery -------------------------------------------------------------


class _AttackerSite:
    """A page on another origin (plain HTTP on its own port) that makes the browser POST a
    text/plain form spelling a JSON object to the admin API: a "simple" request, which needs
    no CORS preflight and carries the credentials the browser cached."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        page = (
            "<!doctype html><title>prize</title>"
            f'<form id=f method=POST action="{target}/api/users" enctype="text/plain">'
            """<input type=hidden name='{"username":"csrfadmin","password":"csrf-owned","role":"admin","z":"'"""
            """ value='"}'></form><script>document.getElementById('f').submit()</script>"""
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_a_cross_site_form_cannot_use_the_browsers_basic_credentials(env: AdminEnv, page) -> None:  # noqa: ANN001
    """The admin once opened the API in the browser (credentials cached), then visits a page
    on another origin whose form posts JSON as text/plain: no admin may be created."""
    host = env.server.url.split("://", 1)[1]
    shown = page.goto(f"https://root:{PASSWORDS['root']}@{host}/api/users")
    assert shown.status == 200
    attacker = _AttackerSite(env.server.url)
    try:
        with page.expect_response(
            lambda r: r.url.endswith("/api/users") and r.request.method == "POST"
        ) as sent:
            page.goto(attacker.url)
        forged = sent.value
    finally:
        attacker.stop()
    assert forged.request.all_headers().get("authorization", "").startswith("Basic ")  # it did carry them
    assert forged.status == 403
    with env.basic() as http:
        assert http.get("/api/users/csrfadmin").status_code == 404


@pytest.mark.parametrize(("method", "path", "body"), [e for e in ENDPOINTS if e[0] not in ("GET", "HEAD")])
def test_a_change_without_the_json_content_type_is_415(
    env: AdminEnv, method: str, path: str, body: object
) -> None:
    """Every POST, PUT, PATCH and DELETE, bodyless ones included, must say it sends JSON: a
    page on another origin can send text/plain, form-urlencoded or multipart without a CORS
    preflight, but not application/json. Checked before the credentials are."""
    data = json.dumps(body).encode() if body is not None else None
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        headers = {"Content-Type": content_type} if content_type else {}
        with env.server.client(auth=("root", PASSWORDS["root"])) as http:
            answer = http.request(method, path, content=data, headers=headers)
        assert answer.status_code == 415, (content_type, answer.text)
        assert answer.json()["error"] == "unsupported_media_type"


def test_json_posted_as_text_plain_creates_nobody(env: AdminEnv) -> None:
    body = json.dumps({"username": "textplain", "password": "text-plain-1", "role": "admin"})
    with env.server.client(auth=("root", PASSWORDS["root"])) as http:
        answer = http.post("/api/users", content=body, headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415
        with env.basic() as admin_http:
            assert admin_http.get("/api/users/textplain").status_code == 404
        # The same with the header is accepted (and a charset parameter is fine).
        done = http.post(
            "/api/users", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
        )
        assert done.status_code == 201, done.text
        assert http.request("DELETE", "/api/users/textplain", headers=JSON).status_code == 204


def test_a_request_from_another_origin_is_403(env: AdminEnv) -> None:
    with env.basic() as http:
        for origin in ("https://evil.example", "null", env.server.url.replace("https://", "http://")):
            answer = http.post("/api/users/root/unlock", headers={"Origin": origin})
            assert answer.status_code == 403, origin
            assert answer.json()["error"] == "forbidden"
        # The server's own origin (a page it served) and no Origin at all (curl) are fine.
        assert http.post("/api/users/root/unlock", headers={"Origin": env.server.url}).status_code == 200
        assert http.post("/api/users/root/unlock").status_code == 200
        # Reading is not refused: a cross-origin page cannot read the answer anyway.
        assert http.get("/api/users", headers={"Origin": "https://evil.example"}).status_code == 200


# -- races -----------------------------------------------------------------------------------


def _at_once(calls: list) -> list:  # noqa: ANN001
    """Run *calls* (functions of no argument) in threads released together; their results.
    Threads, not asyncio: this module's browser keeps an event loop in the test thread."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(len(calls))

    def run(call):  # noqa: ANN001, ANN202
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_parallel_secret_resets_hand_out_only_a_secret_that_works(env: AdminEnv) -> None:
    """Of resets racing on one secret, one wins; the others are 409 and show no secret."""
    with env.basic() as http:
        client_id = http.post(
            "/api/clients",
            json={
                "client_name": "race",
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"],
            },
        ).json()["client_id"]
    # By certificate: six Basic sign-ins at once would count as pending failures (lockout).
    clients = [env.mtls() for _ in range(6)]
    for http in clients:
        http.get("/api/users")  # connected before the race
    try:
        answers = _at_once([lambda h=http: h.post(f"/api/clients/{client_id}/secret") for http in clients])
    finally:
        for http in clients:
            http.close()
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert all("client_secret" not in a.json() for a in answers if a.status_code == 409)
    secrets = [a.json()["client_secret"] for a in answers if a.status_code == 200]
    with env.server.client() as oauth:
        works = [
            s
            for s in secrets
            if oauth.post(
                "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, s)
            ).status_code
            == 200
        ]
    # Every secret handed out works: resets that did not overlap may each win in turn, but
    # then only the last is current, so exactly one was handed out among overlapping ones.
    assert len(works) == 1 and len(secrets) == 1, [a.status_code for a in answers]


def test_concurrent_listener_changes_are_all_kept(env: AdminEnv) -> None:
    """PATCHes at once, each of another listener's orderId: identity.xml keeps them all."""
    import re

    identity = env.server.deployment.conf / "identity.xml"
    names = ["basic_auth", "post_body_auth", "mutual_tls"]
    clients = [env.mtls() for _ in names]
    for http in clients:
        http.get("/api/users")
    try:
        for round_ in range(4):
            values = {n: 1000 + 10 * round_ + i for i, n in enumerate(names)}
            answers = _at_once(
                [
                    lambda h=http, n=n, v=values[n]: h.patch(
                        f"/api/listeners/ClientAuthenticator/{n}", json={"orderId": v}
                    )
                    for http, n in zip(clients, names, strict=True)
                ]
            )
            assert [a.status_code for a in answers] == [202] * len(names)
            text = identity.read_text()
            kept = {n: int(re.search(rf'name="{n}"[^>]*orderId="(\d+)"', text).group(1)) for n in names}
            assert kept == values, round_
        # Back to the order the other tests expect.
        order = [f"ClientAuthenticator/{n}" for n in ("mutual_tls", "basic_auth", "post_body_auth")]
        assert clients[0].put("/api/listeners/order", json={"order": order}).status_code == 202
    finally:
        for http in clients:
            http.close()


def test_deeply_nested_json_is_400_not_500(env: AdminEnv) -> None:
    with env.basic() as http:
        answer = http.post("/api/users", content=b"[" * 60000)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert "Traceback" not in answer.text


def test_basic_failures_count_against_the_forwarded_client_address(
    tmp_path, keystore, wheel_cache, serve
) -> None:  # noqa: ANN001
    """Behind a trusted proxy every request's peer is the proxy: the lockout counts the
    client's own address (X-Forwarded-For), as the token endpoint's does, so that one client
    guessing passwords does not lock every other client out."""
    import sqlite3

    import httpx

    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        connectors=(
            '<Connector address="127.0.0.1" port="0" SSLEnabled="false"/>\n'
            '    <TrustedProxies addresses="127.0.0.1" headers="x-forwarded"/>'
        ),
    )
    write_authenticators(dep, mtls=False)
    add_users(dep)
    server = serve(dep)
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=server.url, timeout=10, headers=proxied) as http:
        assert http.get("/api/users", auth=("viewer", "wrong")).status_code == 401
    with sqlite3.connect(dep.database) as db:
        sources = db.execute("SELECT source FROM login_failures WHERE username = 'viewer'").fetchall()
    assert sources == [("203.0.113.9",)]

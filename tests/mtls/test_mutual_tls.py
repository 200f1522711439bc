"""Mutual-TLS client authentication and certificate-bound tokens, over real TLS handshakes.

Authentication (RFC 8705 §2) and binding (§3). Clients are registered with the CLI, the
server runs as a user runs it, and every request presents a real client certificate.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pki
import pytest
from conftest import DEFAULT_LISTENERS, Deployment, Server, new_deployment, start_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path, pki.Pair]]:  # noqa: ANN001
    """A running server with a truststore CA; certificates are written under the returned path."""
    root = tmp_path_factory.mktemp("mtls")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    authority = pki.ca()
    ca_file = root / "ca.pem"
    ca_file.write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "test-root", "--file", str(ca_file))
    server = start_server(dep)
    yield server, root, authority
    server.stop()


def register(dep: Deployment, method: str, *args: str, grant: str = "client_credentials") -> str:
    return str(dep.add_client("mtls", "--grant-type", grant, "--auth-method", method, *args)["client_id"])


def token(server: Server, cert: tuple[Path, Path] | None, client_id: str | None, **extra: str):  # noqa: ANN201
    data = {"grant_type": "client_credentials", **extra}
    if client_id is not None:
        data["client_id"] = client_id
    with server.client(cert=cert) as http:
        return http.post("/oauth2/token", data=data)


def introspect(server: Server, value: str) -> dict:
    caller = server.deployment.add_client(
        "rs",
        "--grant-type",
        "client_credentials",
        "--resource-server",
        "--auth-method",
        "client_secret_basic",
    )
    with server.client() as http:
        return http.post(
            "/oauth2/introspect", data={"token": value}, auth=(caller["client_id"], caller["client_secret"])
        ).json()


def self_signed_client(env, name: str, **dates) -> tuple[str, tuple[Path, Path], pki.Pair]:  # noqa: ANN001
    server, root, _ = env
    pair = pki.self_signed("localhost", **dates)
    files = pair.write(root / "certs", name)
    return register(server.deployment, "self_signed_tls_client_auth", "--cert", str(files[0])), files, pair


# --- self_signed_tls_client_auth (RFC 8705 §2.2) -------------------------------------------


def test_self_signed_client_gets_a_bound_token(env) -> None:  # noqa: ANN001
    """S with its registered certificate gets 200 and cnf x5t#S256 of exactly that DER."""
    server, _, _ = env
    client_id, files, pair = self_signed_client(env, "s1")
    response = token(server, files, client_id)
    assert response.status_code == 200, response.text
    info = introspect(server, response.json()["access_token"])
    assert info["active"] is True and info["client_id"] == client_id
    assert info["cnf"] == {"x5t#S256": pair.x5t_s256()}
    assert len(info["cnf"]["x5t#S256"]) == 43 and "=" not in info["cnf"]["x5t#S256"]


def test_same_subject_clients_each_authenticate(env) -> None:  # noqa: ANN001
    """Two self-signed clients with the same subject DN (CN=localhost) both authenticate."""
    server, _, _ = env
    first = self_signed_client(env, "same-a")
    second = self_signed_client(env, "same-b")
    for client_id, files, pair in (first, second):
        response = token(server, files, client_id)
        assert response.status_code == 200, response.text
        assert introspect(server, response.json()["access_token"])["cnf"]["x5t#S256"] == pair.x5t_s256()


def test_client_registered_while_running_works_at_once(env) -> None:  # noqa: ANN001
    """A client registered with the server running authenticates on its first request."""
    server, _, _ = env
    client_id, files, _ = self_signed_client(env, "late")
    assert token(server, files, client_id).status_code == 200


def test_another_clients_certificate_is_refused(env) -> None:  # noqa: ANN001
    """S presenting another client's registered certificate gets 401 invalid_client."""
    server, _, _ = env
    alice, _, _ = self_signed_client(env, "alice")
    _, bob_files, _ = self_signed_client(env, "bob")
    response = token(server, bob_files, alice)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_unregistered_certificate_is_refused(env) -> None:  # noqa: ANN001
    """S presenting a certificate nobody registered gets 401 invalid_client."""
    server, root, _ = env
    client_id, _, _ = self_signed_client(env, "victim")
    stranger = pki.self_signed("localhost").write(root / "certs", "stranger")
    response = token(server, stranger, client_id)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("method", ["self_signed_tls_client_auth", "tls_client_auth"])
def test_no_certificate_is_invalid_client(env, method) -> None:  # noqa: ANN001
    """K or S without a certificate gets 401 invalid_client on a want connector."""
    server, root, _ = env
    args = (
        ("--cert", str(pki.self_signed().write(root / "certs", f"nc-{method}")[0]))
        if method.startswith("self")
        else ("--subject-dn", "CN=nobody")
    )
    client_id = register(server.deployment, method, *args)
    response = token(server, None, client_id)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_certificate_without_client_id_is_refused(env) -> None:  # noqa: ANN001
    """A registered certificate with no client_id is refused: the client is never inferred."""
    server, _, _ = env
    _, files, _ = self_signed_client(env, "anon")
    response = token(server, files, None)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_secret_and_certificate_method_together_is_invalid_request(env) -> None:  # noqa: ANN001
    """An mTLS client that also sends client_secret uses two methods: 400 invalid_request."""
    server, _, _ = env
    client_id, files, _ = self_signed_client(env, "greedy")
    response = token(server, files, client_id, client_secret="anything")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_expired_registered_certificate_is_refused_by_default(env) -> None:  # noqa: ANN001
    """S whose registered certificate has expired (or is not yet valid) gets 401."""
    server, _, _ = env
    for name, dates in (
        ("expired", {"not_before": pki.NOW - 30 * pki.DAY, "not_after": pki.NOW - pki.DAY}),
        ("future", {"not_before": pki.NOW + pki.DAY, "not_after": pki.NOW + 30 * pki.DAY}),
    ):
        client_id, files, _ = self_signed_client(env, name, **dates)
        response = token(server, files, client_id)
        assert response.status_code == 401, (name, response.text)
        # The caller learns nothing of why (nor whether the client exists); the log says.
        assert response.json()["error_description"] == "client authentication failed"
        server.wait_for_log(
            f"client {client_id} refused: the registered client certificate is expired or not yet valid"
        )


def test_expired_registered_certificate_allowed_by_property(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """With AllowExpiredSelfSigned=true an expired registered self-signed certificate works."""
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        listeners=DEFAULT_LISTENERS.replace(
            'name="mutual_tls" orderId="158" enable="true"/>',
            'name="mutual_tls" orderId="158" enable="true">'
            '<Property name="AllowExpiredSelfSigned">true</Property></EventListener>',
        ),
    )
    pair = pki.self_signed(not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY)
    files = pair.write(tmp_path, "old")
    client_id = register(dep, "self_signed_tls_client_auth", "--cert", str(files[0]))
    server = serve(dep)
    assert token(server, files, client_id).status_code == 200


def test_rotation_with_two_registered_certificates(env) -> None:  # noqa: ANN001
    """A client may hold two certificates; after removing one, only the other works."""
    server, root, _ = env
    old, new = pki.self_signed(), pki.self_signed()
    old_files, new_files = old.write(root / "certs", "rot-old"), new.write(root / "certs", "rot-new")
    client_id = register(server.deployment, "self_signed_tls_client_auth", "--cert", str(old_files[0]))
    server.deployment.cli("sp", "update", client_id, "--add-cert", str(new_files[0]))
    assert token(server, old_files, client_id).status_code == 200
    assert token(server, new_files, client_id).status_code == 200
    colons = ":".join(f"{b:02X}" for b in old.cert.fingerprint(hashes.SHA256()))  # as openssl prints it
    server.deployment.cli("sp", "update", client_id, "--remove-cert", colons)
    assert token(server, old_files, client_id).status_code == 401
    assert token(server, new_files, client_id).status_code == 200


def test_removing_a_certificate_revokes_the_tokens_bound_to_it(env) -> None:  # noqa: ANN001
    """The certificate was the client's credential: removing it ends the tokens bound to it
    (as removing the client would), and leaves those bound to the client's other certificate."""
    server, root, _ = env
    old, new = pki.self_signed(), pki.self_signed()
    old_files, new_files = old.write(root / "certs", "rev-old"), new.write(root / "certs", "rev-new")
    client_id = register(server.deployment, "self_signed_tls_client_auth", "--cert", str(old_files[0]))
    server.deployment.cli("sp", "update", client_id, "--add-cert", str(new_files[0]))
    on_old = token(server, old_files, client_id).json()["access_token"]
    on_new = token(server, new_files, client_id).json()["access_token"]
    assert introspect(server, on_old)["active"] is True
    server.deployment.cli(
        "sp", "update", client_id, "--remove-cert", old.cert.fingerprint(hashes.SHA256()).hex()
    )
    assert introspect(server, on_old) == {"active": False}
    assert introspect(server, on_new)["cnf"] == {"x5t#S256": new.x5t_s256()}


# --- tls_client_auth (RFC 8705 §2.1) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "leaf_kwargs"),
    [
        ("--subject-dn", "CN=svc-a,O=Acme", {"org": "Acme"}),
        ("--subject-dn", "o=acme, cn=SVC-A", {"org": "Acme"}),
        ("--san-dns", "svc.example.com", {"dns": ("svc.example.com",)}),
        ("--san-uri", "spiffe://example.com/svc", {"uris": ("spiffe://example.com/svc",)}),
        ("--san-ip", "10.1.2.3", {"ips": ("10.1.2.3",)}),
        ("--san-email", "svc@example.com", {"emails": ("svc@example.com",)}),
    ],
    ids=["dn", "dn-normalised-order-case", "dns", "uri", "ip", "email"],
)
def test_pki_client_matching_subject(env, option, value, leaf_kwargs) -> None:  # noqa: ANN001
    """K with a chain to the truststore and a matching DN or SAN gets a bound token."""
    server, root, authority = env
    if option == "--subject-dn" and value.startswith("o="):
        pytest.skip("DN attribute order is significant in RFC 4514; covered by test_certs")
    leaf = pki.issue(authority, "svc-a", **leaf_kwargs)
    files = leaf.write(root / "certs", f"pki-{option}")
    client_id = register(server.deployment, "tls_client_auth", option, value)
    response = token(server, files, client_id)
    assert response.status_code == 200, response.text
    assert introspect(server, response.json()["access_token"])["cnf"] == {"x5t#S256": leaf.x5t_s256()}


def test_pki_dn_comparison_is_exact_by_default(env) -> None:  # noqa: ANN001
    """By default a registered DN matches only the same text: case and inner spacing count."""
    server, root, authority = env
    files = pki.issue(authority, "Svc-B", org="Acme Corp").write(root / "certs", "pki-norm")
    loose = register(server.deployment, "tls_client_auth", "--subject-dn", "cn=svc-b ,  o=ACME   CORP")
    exact = register(server.deployment, "tls_client_auth", "--subject-dn", "cn=Svc-B , o=Acme Corp")
    assert token(server, files, loose).status_code == 401
    assert token(server, files, exact).status_code == 200


@pytest.fixture(scope="module")
def env_rfc4518(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path, pki.Pair]]:  # noqa: ANN001
    """Like ``env``, with the mutual_tls listener's SubjectDNMatching set to rfc4518."""
    root = tmp_path_factory.mktemp("mtls4518")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        listeners=DEFAULT_LISTENERS.replace(
            'name="mutual_tls" orderId="158" enable="true"/>',
            'name="mutual_tls" orderId="158" enable="true">'
            '<Property name="SubjectDNMatching">rfc4518</Property></EventListener>',
        ),
    )
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "test-root", "--file", str(root / "ca.pem"))
    server = start_server(dep)
    yield server, root, authority
    server.stop()


def subject(*rdns: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    """A name from RDNs written most specific first, as RFC 4514 text is."""
    return x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in rdn])
            for rdn in reversed(rdns)
        ]
    )


CN, ORG = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME


@pytest.mark.parametrize("mode", ["exact", "rfc4518"])
def test_a_repeated_attribute_in_one_rdn_is_not_collapsed(request, mode) -> None:  # noqa: ANN001
    """CN=svc+CN=SVC,O=Acme (or O=ACME+O=Acme) is not CN=svc,O=Acme: RFC 4517 §4.2.15 counts values."""
    server, root, authority = request.getfixturevalue("env" if mode == "exact" else "env_rfc4518")
    client_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=svc,O=Acme")
    for n, name in enumerate(
        (
            subject([(CN, "svc"), (CN, "SVC")], [(ORG, "Acme")]),
            subject([(CN, "svc")], [(ORG, "ACME"), (ORG, "Acme")]),
        )
    ):
        files = pki.issue(authority, "x", subject=name).write(root / "certs", f"repeat-{mode}-{n}")
        response = token(server, files, client_id)
        assert response.status_code == 401, (name.rfc4514_string(), response.text)
    good = pki.issue(authority, "svc", org="Acme").write(root / "certs", f"repeat-{mode}-good")
    assert token(server, good, client_id).status_code == 200


LOOK_ALIKES = {
    "upper": subject([(CN, "SVC")], [(ORG, "ACME")]),
    "long-s": subject([(CN, "\u017fvc")], [(ORG, "Acme")]),
    "fullwidth": subject([(CN, "\uff53\uff56\uff43")], [(ORG, "\uff21\uff43\uff4d\uff45")]),
}


@pytest.mark.parametrize("case", sorted(LOOK_ALIKES))
def test_look_alike_subjects_are_refused_by_default(request, case) -> None:  # noqa: ANN001
    """CN=SVC,O=ACME, CN=\u017fvc and fullwidth letters do not match CN=svc,O=Acme unless
    SubjectDNMatching is rfc4518, which asks the CA to keep such names apart."""
    for mode in ("env", "env_rfc4518"):
        server, root, authority = request.getfixturevalue(mode)
        files = pki.issue(authority, "x", subject=LOOK_ALIKES[case]).write(root / "certs", f"alike-{case}")
        client_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=svc,O=Acme")
        expected = 401 if mode == "env" else 200
        assert token(server, files, client_id).status_code == expected, mode


def test_pki_subject_mismatch_is_refused(env) -> None:  # noqa: ANN001
    """K with a trusted certificate whose DN differs from the registration gets 401."""
    server, root, authority = env
    files = pki.issue(authority, "svc-other", org="Acme").write(root / "certs", "pki-mismatch")
    client_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=svc-a,O=Acme")
    response = token(server, files, client_id)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_pki_untrusted_expired_and_future_certificates(env) -> None:  # noqa: ANN001
    """K with a certificate from an untrusted CA, expired, or not yet valid gets 401."""
    server, root, authority = env
    client_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=svc-c")
    cases = {
        "untrusted": pki.issue(pki.ca("Rogue CA"), "svc-c"),
        "expired": pki.issue(
            authority, "svc-c", not_before=pki.NOW - 9 * pki.DAY, not_after=pki.NOW - pki.DAY
        ),
        "future": pki.issue(
            authority, "svc-c", not_before=pki.NOW + pki.DAY, not_after=pki.NOW + 9 * pki.DAY
        ),
    }
    for name, leaf in cases.items():
        response = token(server, leaf.write(root / "certs", f"bad-{name}"), client_id)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_client"
    good = pki.issue(authority, "svc-c").write(root / "certs", "good-c")
    assert token(server, good, client_id).status_code == 200


EMAIL = NameOID.EMAIL_ADDRESS


def constrained_leaf(
    authority: pki.Pair, constraints: x509.NameConstraints, name: x509.Name, critical: bool = True
) -> pki.Pair:
    """A leaf issued by a sub-CA of *authority* that carries *constraints*, with its chain."""
    sub = pki.ca("Constrained CA", issuer=authority, constraints=constraints, critical=critical)
    leaf = pki.issue(sub, "x", subject=name)
    return pki.Pair(leaf.cert, leaf.key, chain=(sub.cert,))


PARTNER_ONLY = x509.NameConstraints(
    permitted_subtrees=[x509.RFC822Name("partner.example"), x509.DNSName("partner.example")],
    excluded_subtrees=None,
)


@pytest.mark.parametrize(
    ("constraints", "email", "expected"),
    [
        (PARTNER_ONLY, "svc@example.com", 401),
        (PARTNER_ONLY, "svc@partner.example", 200),
        (
            x509.NameConstraints(
                permitted_subtrees=None, excluded_subtrees=[x509.RFC822Name(".example.com")]
            ),
            "svc@mail.example.com",
            401,
        ),
    ],
    ids=["outside-permitted", "inside-permitted", "excluded"],
)
def test_email_name_constraints_apply_to_the_subject(env, constraints, email, expected) -> None:  # noqa: ANN001
    """RFC 5280 §4.2.1.10: a sub-CA limited to partner.example mail cannot issue E=svc@example.com
    in the subject of a certificate without SANs."""
    server, root, authority = env
    pair = constrained_leaf(authority, constraints, subject([(CN, "svc")], [(EMAIL, email)]))
    files = pair.write(root / "certs", f"nc-email-{email}-{expected}")
    client_id = register(server.deployment, "tls_client_auth", "--subject-dn", f"CN=svc,E={email}")
    response = token(server, files, client_id)
    assert response.status_code == expected, response.text
    if expected == 401:
        server.wait_for_log(
            f"client {client_id} refused: the client certificate was refused: client"
            " certificate subject emailAddress is outside the name constraints"
        )


def test_directory_name_constraints_apply_to_the_subject(env) -> None:  # noqa: ANN001
    """A non-critical directoryName constraint is applied, not ignored; a critical one, which the
    chain verifier cannot check, refuses the chain with a reason in the log."""
    server, root, authority = env
    acme = x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(subject([(ORG, "Acme")]))], excluded_subtrees=None
    )
    cases = [
        ("inside", False, subject([(CN, "svc")], [(ORG, "Acme")]), "CN=svc,O=Acme", 200),
        ("outside", False, subject([(CN, "svc")], [(ORG, "Evil")]), "CN=svc,O=Evil", 401),
        ("critical", True, subject([(CN, "svc")], [(ORG, "Acme")]), "CN=svc,O=Acme", 401),
    ]
    for label, critical, name, registered, expected in cases:
        files = constrained_leaf(authority, acme, name, critical).write(root / "certs", f"nc-dir-{label}")
        client_id = register(server.deployment, "tls_client_auth", "--subject-dn", registered)
        response = token(server, files, client_id)
        assert response.status_code == expected, (label, response.text)
    server.wait_for_log(
        f"refused the certificate chain of client {client_id}: a CA in the chain has a "
        "critical directoryName name constraint"
    )


@pytest.mark.parametrize(
    ("certified", "expected"),
    [
        ("HTTPS://SVC.example.com/client", 200),
        ("https://svc.EXAMPLE.COM:8443/client", 401),  # another port is another URI
        ("https://svc.example.com/CLIENT", 401),  # the path stays case-sensitive
    ],
)
def test_san_uri_scheme_and_host_are_case_insensitive(env, certified, expected) -> None:  # noqa: ANN001
    """RFC 5280 §7.4: a registered https://svc.example.com/client matches HTTPS://SVC.example.com/client."""
    server, root, authority = env
    files = pki.issue(authority, "svc-uri", uris=(certified,)).write(
        root / "certs", f"uri-{expected}-{len(certified)}"
    )
    client_id = register(server.deployment, "tls_client_auth", "--san-uri", "https://svc.example.com/client")
    response = token(server, files, client_id)
    assert response.status_code == expected, response.text


def test_truststore_change_applies_without_restart(env) -> None:  # noqa: ANN001
    """A CA imported while the server runs is trusted on the next request."""
    server, root, _ = env
    late_ca = pki.ca("Late CA")
    (root / "late-ca.pem").write_bytes(late_ca.pem)
    files = pki.issue(late_ca, "svc-late").write(root / "certs", "late-leaf")
    client_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=svc-late")
    assert token(server, files, client_id).status_code == 401
    server.deployment.cli("truststore", "import", "--alias", "late", "--file", str(root / "late-ca.pem"))
    assert token(server, files, client_id).status_code == 200
    server.deployment.cli("truststore", "remove", "late")
    assert token(server, files, client_id).status_code == 401


# --- binding (RFC 8705 §3) ---------------------------------------------------------------------


def test_secret_client_with_bind_tokens_gets_a_bound_token(env) -> None:  # noqa: ANN001
    """A Basic client registered with --bind-tokens that presents a certificate gets cnf."""
    server, root, _ = env
    client = server.deployment.add_client(
        "binder",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--bind-tokens",
    )
    pair = pki.self_signed("anything")
    with server.client(cert=pair.write(root / "certs", "binder")) as http:
        response = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert response.status_code == 200, response.text
    assert introspect(server, response.json()["access_token"])["cnf"] == {"x5t#S256": pair.x5t_s256()}


def test_secret_client_without_bind_tokens_is_not_bound(env) -> None:  # noqa: ANN001
    """A certificate presented by an ordinary secret client neither binds nor breaks its token."""
    server, root, _ = env
    client = server.deployment.add_client(
        "plain", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    with server.client(cert=pki.self_signed().write(root / "certs", "plain")) as http:
        response = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert response.status_code == 200
    assert "cnf" not in introspect(server, response.json()["access_token"])


def test_bound_token_over_http2(env) -> None:  # noqa: ANN001
    """The certificate reaches the app over HTTP/2 too, and binds the token."""
    server, _, _ = env
    client_id, files, pair = self_signed_client(env, "h2")
    with server.client(cert=files, http2=True) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.http_version == "HTTP/2" and response.status_code == 200
    assert introspect(server, response.json()["access_token"])["cnf"]["x5t#S256"] == pair.x5t_s256()


def test_cnf_is_stored_with_the_token(env) -> None:  # noqa: ANN001
    """The binding is stored with the token's hash, never with the token."""
    server, _, _ = env
    client_id, files, pair = self_signed_client(env, "stored")
    value = token(server, files, client_id).json()["access_token"]
    with sqlite3.connect(server.deployment.database) as db:
        rows = db.execute("SELECT cnf_x5t_s256 FROM tokens WHERE client_id = ?", (client_id,)).fetchall()
    assert rows == [(pair.x5t_s256(),)]
    assert value.encode() not in server.deployment.database.read_bytes()


# --- metadata (RFC 8414, RFC 8705 §3.3, §5) ---------------------------------------------------


def test_metadata_lists_enabled_methods_and_binding(env) -> None:  # noqa: ANN001
    """Metadata names the token endpoint, every enabled method and bound-token support."""
    server, _, _ = env
    with server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == server.url
    assert meta["token_endpoint"] == f"{server.url}/oauth2/token"
    assert meta["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "tls_client_auth",
        "self_signed_tls_client_auth",
        "none",
    ]
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert "mtls_endpoint_aliases" not in meta


def test_disabling_mutual_tls_removes_its_methods(deployment, serve) -> None:  # noqa: ANN001
    """With mutual_tls enable="false" its two methods leave the metadata."""
    deployment.listeners = DEFAULT_LISTENERS.replace(
        'name="mutual_tls" orderId="158" enable="true"', 'name="mutual_tls" orderId="158" enable="false"'
    )
    deployment.write()
    server = serve(deployment)
    with server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]


def test_need_connector_is_the_mtls_alias(deployment, serve, tmp_path) -> None:  # noqa: ANN001
    """With a want and a need connector, mtls_endpoint_aliases points at the need one."""
    deployment.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want"/>'
        '<Connector address="127.0.0.1" port="0" clientAuth="need"/>'
    )
    deployment.write()
    server = serve(deployment)
    assert len(server.urls) == 2
    with server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    assert meta["mtls_endpoint_aliases"]["token_endpoint"] == f"{server.urls[1]}/oauth2/token"
    client_id = register(
        deployment,
        "self_signed_tls_client_auth",
        "--cert",
        str((files := pki.self_signed().write(tmp_path, "n"))[0]),
    )
    with server.client(cert=files, url=server.urls[1]) as http:
        response = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert response.status_code == 200
    assert json.loads(response.text)["token_type"] == "Bearer"


def test_refusals_do_not_tell_which_clients_exist(env) -> None:  # noqa: ANN001
    """A stranger's certificate sent with the client_id of a self-signed client, of a PKI
    client, or of no client at all gets the same 401 and the same words: an outside review
    learnt from the descriptions whether a client_id existed and which method it used."""
    server, root, _ = env
    self_signed_id, _, _ = self_signed_client(env, "exists-s")
    pki_id = register(server.deployment, "tls_client_auth", "--subject-dn", "CN=exists-p")
    stranger = pki.self_signed("stranger").write(root / "certs", "stranger")
    answers = {
        (r.status_code, r.text)
        for r in (
            token(server, stranger, client_id) for client_id in (self_signed_id, pki_id, "no-such-client")
        )
    }
    assert answers == {(401, '{"error":"invalid_client","error_description":"client authentication failed"}')}
    server.wait_for_log(f"client {self_signed_id} refused: the client certificate is not registered")


def test_a_public_clients_bound_refresh_token_is_revoked_only_with_its_certificate(env) -> None:  # noqa: ANN001
    """A public client proves only its client_id: anyone who found its certificate-bound
    refresh token (RFC 8705 §4) could revoke it, ending the client's session. Revocation
    needs the certificate the token is bound to."""
    server, root, _ = env
    server.deployment.cli("user", "add", "bound-user", "--password-stdin", input="a long passphrase\n")
    client_id = str(
        server.deployment.add_client(
            "pub-bound",
            "--grant-type",
            "password",
            "--grant-type",
            "refresh_token",
            "--auth-method",
            "none",
            "--force",
        )["client_id"]
    )
    mine = pki.self_signed("mine").write(root / "certs", "pub-mine")
    other = pki.self_signed("other").write(root / "certs", "pub-other")
    with server.client(cert=mine) as http:
        tokens = http.post(
            "/oauth2/token",
            data={
                "grant_type": "password",
                "username": "bound-user",
                "password": "a long passphrase",
                "client_id": client_id,
            },
        ).json()
    for cert in (None, other):
        with server.client(cert=cert) as http:
            refused = http.post(
                "/oauth2/revoke", data={"token": tokens["refresh_token"], "client_id": client_id}
            )
        assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    with server.client(cert=mine) as http:
        assert (
            http.post(
                "/oauth2/token",
                data={
                    "grant_type": "refresh_token",
                    "client_id": client_id,
                    "refresh_token": tokens["refresh_token"],
                },
            ).status_code
            == 200
        )

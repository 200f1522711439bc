"""Client certificates forwarded by a trusted TLS-terminating proxy (RFC 9440, RFC 8705 §6.5).

The server runs as a user runs it, with identity.xml's ``<ClientCertificateHeader>``
trusting 127.0.0.0/8 for RFC 9440's Client-Cert and Client-Cert-Chain fields; the tests play
the proxy, so they reach the server over TLS without a certificate and send the headers.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pki
import pytest
from conftest import DEFAULT_LISTENERS, Server, StartupFailed, new_deployment, start_server
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path, pki.Pair]]:  # noqa: ANN001
    """A server that believes RFC 9440 fields from 127.0.0.0/8, with a truststore CA."""
    root = tmp_path_factory.mktemp("proxied")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth=('<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="127.0.0.0/8"/>'),
    )
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "root", "--file", str(root / "ca.pem"))
    dep.cli("user", "add", "alice", "--password-stdin", input="a long passphrase\n")
    server = start_server(dep)
    yield server, root, authority
    server.stop()


def item(der: bytes) -> str:
    """An RFC 8941 Byte Sequence, as RFC 9440 §2.2 carries a certificate."""
    return f":{base64.b64encode(der).decode()}:"


def post(
    server: Server,
    path: str,
    data: dict[str, str],
    headers: list[tuple[str, str]],
    auth: tuple[str, str] | None = None,
    http2: bool = False,
):  # noqa: ANN201
    with server.client(http2=http2) as http:
        return http.post(path, data=data, headers=headers, auth=auth)


def introspect(server: Server, value: str) -> dict:
    caller = server.deployment.add_client(
        "rs",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--resource-server",
    )
    return post(
        server,
        "/oauth2/introspect",
        {"token": value},
        [],
        (str(caller["client_id"]), str(caller["client_secret"])),
    ).json()


def pki_client(server: Server, subject_dn: str) -> str:
    return str(
        server.deployment.add_client(
            "k",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "tls_client_auth",
            "--subject-dn",
            subject_dn,
        )["client_id"]
    )


# --- finding 4: the forwarded certificate binds tokens (RFC 8705 §3, §4) ----------------------


def test_forwarded_certificate_binds_a_bind_tokens_clients_token(env) -> None:  # noqa: ANN001
    """A --bind-tokens secret client behind the proxy gets cnf x5t#S256 of the forwarded certificate."""
    server, _, _ = env
    client = server.deployment.add_client(
        "binder",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--bind-tokens",
    )
    pair = pki.self_signed("anything")
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials"},
        [("Client-Cert", item(pair.der))],
        (str(client["client_id"]), str(client["client_secret"])),
    )
    assert response.status_code == 200, response.text
    assert introspect(server, response.json()["access_token"])["cnf"] == {"x5t#S256": pair.x5t_s256()}


def test_forwarded_certificate_binds_a_public_clients_tokens(env) -> None:  # noqa: ANN001
    """A public client's tokens are bound to the forwarded certificate (RFC 8705 §4), and the
    refresh token then needs that certificate again."""
    server, _, _ = env
    client = server.deployment.add_client(
        "pub", "--grant-type=password", "--grant-type=refresh_token", "--auth-method", "none", "--force"
    )
    mine, other = pki.self_signed(), pki.self_signed()
    issued = post(
        server,
        "/oauth2/token",
        {
            "grant_type": "password",
            "username": "alice",
            "password": "a long passphrase",
            "client_id": str(client["client_id"]),
        },
        [("Client-Cert", item(mine.der))],
    )
    assert issued.status_code == 200, issued.text
    tokens = issued.json()
    assert introspect(server, tokens["access_token"])["cnf"] == {"x5t#S256": mine.x5t_s256()}
    stolen = post(
        server,
        "/oauth2/token",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": str(client["client_id"]),
        },
        [("Client-Cert", item(other.der))],
    )
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    # Only a resource server's introspection could show the refresh token's cnf, and it may
    # not introspect refresh tokens: the certificate it is bound to still refreshes it.
    renewed = post(
        server,
        "/oauth2/token",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": str(client["client_id"]),
        },
        [("Client-Cert", item(mine.der))],
    )
    assert renewed.status_code == 200, renewed.text
    assert introspect(server, renewed.json()["access_token"])["cnf"] == {"x5t#S256": mine.x5t_s256()}


def test_forwarded_certificate_authenticates_and_binds_an_mtls_client(env) -> None:  # noqa: ANN001
    """The authenticator and the binding see the same forwarded certificate."""
    server, root, _ = env
    pair = pki.self_signed()
    client_id = str(
        server.deployment.add_client(
            "s",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(pair.write(root, "fwd-s")[0]),
        )["client_id"]
    )
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": client_id},
        [("Client-Cert", item(pair.der))],
    )
    assert response.status_code == 200, response.text
    assert introspect(server, response.json()["access_token"])["cnf"] == {"x5t#S256": pair.x5t_s256()}


# --- finding 5: one certificate field (RFC 9440 §2.2) ------------------------------------------


@pytest.mark.parametrize("order", ["attacker-first", "victim-first", "other-case", "http2"])
def test_two_certificate_fields_are_invalid_request(env, order) -> None:  # noqa: ANN001
    """Client-Cert twice is refused with 400 invalid_request, whichever comes first, however
    the second is spelt, over HTTP/1.1 and HTTP/2."""
    server, root, _ = env
    victim, attacker = pki.self_signed(), pki.self_signed()
    client_id = str(
        server.deployment.add_client(
            "v",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(victim.write(root, f"victim-{order}")[0]),
        )["client_id"]
    )
    fields = [("Client-Cert", item(attacker.der)), ("Client-Cert", item(victim.der))]
    if order == "victim-first":
        fields.reverse()
    if order == "other-case":
        fields[1] = ("client-CERT", fields[1][1])
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": client_id},
        fields,
        http2=order == "http2",
    )
    assert response.http_version == ("HTTP/2" if order == "http2" else "HTTP/1.1")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


# --- finding 6: Client-Cert-Chain (RFC 9440 §2.3) ------------------------------------------------


def test_client_cert_chain_completes_a_chain_through_an_intermediate(env) -> None:  # noqa: ANN001
    """A leaf issued by an intermediate authenticates when the proxy forwards the intermediate too."""
    server, _, authority = env
    intermediate = pki.ca("Issuing CA", issuer=authority)
    leaf = pki.issue(intermediate, "svc-chain", org="Acme")
    client_id = pki_client(server, "CN=svc-chain,O=Acme")
    data = {"grant_type": "client_credentials", "client_id": client_id}
    alone = post(server, "/oauth2/token", data, [("Client-Cert", item(leaf.der))])
    assert alone.status_code == 401, alone.text
    chained = post(
        server,
        "/oauth2/token",
        data,
        [("Client-Cert", item(leaf.der)), ("Client-Cert-Chain", item(intermediate.der))],
    )
    assert chained.status_code == 200, chained.text
    assert introspect(server, chained.json()["access_token"])["cnf"] == {"x5t#S256": leaf.x5t_s256()}
    # RFC 9110 §5.3: a list may come as several field lines; the decoy is one more candidate.
    split = post(
        server,
        "/oauth2/token",
        data,
        [
            ("Client-Cert", item(leaf.der)),
            ("Client-Cert-Chain", item(pki.ca("Decoy").der)),
            ("Client-Cert-Chain", item(intermediate.der)),
        ],
    )
    assert split.status_code == 200, split.text


def test_client_cert_chain_has_the_handshakes_limits(env) -> None:  # noqa: ANN001
    """More intermediates than a handshake may carry, or garbage, is refused with 401."""
    server, _, authority = env
    intermediate = pki.ca("Issuing CA", issuer=authority)
    leaf = pki.issue(intermediate, "svc-limit")
    client_id = pki_client(server, "CN=svc-limit")
    data = {"grant_type": "client_credentials", "client_id": client_id}
    for chain in (", ".join([item(intermediate.der)] * 9), "not-a-list", ":AAAA:"):
        response = post(
            server, "/oauth2/token", data, [("Client-Cert", item(leaf.der)), ("Client-Cert-Chain", chain)]
        )
        assert response.status_code == 401, (chain[:20], response.text)
        assert response.json()["error"] == "invalid_client"


def test_client_cert_chain_without_client_cert_is_invalid_request(env) -> None:  # noqa: ANN001
    server, _, authority = env
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": "x"},
        [("Client-Cert-Chain", item(authority.der))],
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


# --- finding 8: attribute values that are not strings -------------------------------------------


@pytest.mark.parametrize("kind", [_ASN1Type.OctetString, _ASN1Type.UTCTime, _ASN1Type.GeneralizedTime])
def test_a_name_attribute_that_is_not_a_string_is_refused(env, kind) -> None:  # noqa: ANN001
    """A CN holding the text "svc" in an OCTET STRING or a time type is not CN=svc."""
    server, _, authority = env
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc-typed", _type=kind)])
    leaf = pki.issue(authority, "x", subject=name)
    client_id = pki_client(server, "CN=svc-typed")
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": client_id},
        [("Client-Cert", item(leaf.der))],
    )
    assert response.status_code == 401, response.text
    server.wait_for_log(f"client {client_id} refused:")
    assert "not a string" in server.log().rsplit(f"client {client_id} refused:", 1)[1].splitlines()[0]


# --- configuration ---------------------------------------------------------------------------------


def test_the_old_listener_properties_say_where_they_moved(deployment) -> None:  # noqa: ANN001
    """The mutual_tls CertificateHeader properties of earlier versions stop startup with a pointer."""
    deployment.listeners = DEFAULT_LISTENERS.replace(
        'name="mutual_tls" orderId="158" enable="true"/>',
        'name="mutual_tls" orderId="158" enable="true">'
        '<Property name="CertificateHeader">X-Client-Cert</Property>'
        '<Property name="TrustedProxies">10.0.0.0/8</Property></EventListener>',
    )
    deployment.write()
    with pytest.raises(StartupFailed) as failure:
        start_server(deployment)
    assert (
        "listener 'mutual_tls': CertificateHeader, TrustedProxies moved to <OAuth><ClientCertificateHeader"
        in failure.value.args[0]
    )


def test_fields_from_an_untrusted_address_are_ignored(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """Outside trustedProxies neither field is believed, and that is logged; nothing binds."""
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth=('<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="10.0.0.0/8"/>'),
    )
    client = dep.add_client(
        "binder",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--bind-tokens",
    )
    server = serve(dep)
    pair = pki.self_signed()
    response = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials"},
        [
            ("Client-Cert", item(pair.der)),
            ("Client-Cert", item(pair.der)),
            ("Client-Cert-Chain", item(pair.der)),
        ],
        (str(client["client_id"]), str(client["client_secret"])),
    )
    assert response.status_code == 200, response.text
    assert "cnf" not in introspect(server, response.json()["access_token"])
    assert "ignored a Client-Cert header from 127.0.0.1, which is not a trusted proxy" in server.log()


AUDIT = """
import json
from tokensmith import hookimpl

@hookimpl
def client_auth_success(event, listener):
    with open(listener.properties["trace"], "a") as out:
        out.write(json.dumps([event.client_id, event.x5t_s256, event.certificate_source]) + "\\n")
"""


def test_events_name_the_certificate_that_was_used(
    tmp_path, keystore, wheel_cache, serve, make_wheel
) -> None:  # noqa: ANN001
    """client_auth_success carries the thumbprint and source of the certificate that was bound."""
    import json
    import shutil

    trace = tmp_path / "trace.jsonl"
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth=('<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="127.0.0.0/8"/>'),
        listeners=DEFAULT_LISTENERS
        + f"""
        <EventListener type="OAuthEventInterceptor" name="audit_cert" orderId="10">
            <Property name="trace">{trace}</Property>
        </EventListener>""",
    )
    shutil.copy(make_wheel("audit_cert", AUDIT), dep.dropins)
    client = dep.add_client(
        "binder",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--bind-tokens",
    )
    server = serve(dep)
    pair = pki.self_signed()
    credentials = (str(client["client_id"]), str(client["client_secret"]))
    assert (
        post(
            server,
            "/oauth2/token",
            {"grant_type": "client_credentials"},
            [("Client-Cert", item(pair.der))],
            credentials,
        ).status_code
        == 200
    )
    with server.client(cert=pair.write(tmp_path, "direct")) as http:
        assert (
            http.post(
                "/oauth2/token", data={"grant_type": "client_credentials"}, auth=credentials
            ).status_code
            == 200
        )
    assert (
        post(server, "/oauth2/token", {"grant_type": "client_credentials"}, [], credentials).status_code
        == 200
    )
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert lines == [
        [client["client_id"], pair.x5t_s256(), "proxy"],
        [client["client_id"], pair.x5t_s256(), "tls"],
        [client["client_id"], None, None],
    ]


# --- one server per proxy setting ----------------------------------------------------------------


def proxied_deployment(tmp_path, keystore, wheel_cache, proxies: str, fmt: str = "auto"):  # noqa: ANN001, ANN201
    return new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth=(f'<ClientCertificateHeader name="X-Client-Cert" format="{fmt}" trustedProxies="{proxies}"/>'),
    )


def nginx_escaped(pem: bytes) -> str:
    """nginx's $ssl_client_escaped_cert: the PEM, percent-encoded ('+' encoded as %2B)."""
    return urllib.parse.quote(pem.decode(), safe="")


def rfc9440(der: bytes) -> str:
    import base64

    return f":{base64.b64encode(der).decode()}:"


@pytest.mark.parametrize("fmt", ["nginx", "rfc9440", "pem", "base64-der"])
def test_header_from_trusted_proxy_is_used(tmp_path, keystore, wheel_cache, serve, fmt) -> None:  # noqa: ANN001
    """A certificate header from a trusted proxy authenticates the client and binds the token."""
    import base64

    dep = proxied_deployment(tmp_path, keystore, wheel_cache, "127.0.0.0/8", fmt)
    pair = pki.self_signed()
    while fmt == "nginx" and b"+" not in pair.pem:  # prove that '+' survives
        pair = pki.self_signed()
    files = pair.write(tmp_path, "proxied")
    client_id = str(
        dep.add_client(
            "p",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    value = {
        "nginx": nginx_escaped(pair.pem),
        "rfc9440": rfc9440(pair.der),
        "pem": pair.pem.decode().replace("\n", " ").strip(),
        "base64-der": base64.b64encode(pair.der).decode(),
    }[fmt]
    server = serve(dep)
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            headers={"X-Client-Cert": value},
            data={"grant_type": "client_credentials", "client_id": client_id},
        )
    assert response.status_code == 200, response.text


def test_header_from_untrusted_address_is_ignored_and_logged(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """From an address outside TrustedProxies the header is ignored, and that is logged."""
    dep = proxied_deployment(tmp_path, keystore, wheel_cache, "10.0.0.0/8")
    pair = pki.self_signed()
    client_id = str(
        dep.add_client(
            "p",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(pair.write(tmp_path, "u")[0]),
        )["client_id"]
    )
    server = serve(dep)
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            headers={"X-Client-Cert": nginx_escaped(pair.pem)},
            data={"grant_type": "client_credentials", "client_id": client_id},
        )
    assert response.status_code == 401
    assert "ignored a X-Client-Cert header from 127.0.0.1, which is not a trusted proxy" in server.log()


def test_tls_certificate_wins_over_header(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """When the handshake has a certificate, a header naming another one is not used."""
    dep = proxied_deployment(tmp_path, keystore, wheel_cache, "127.0.0.0/8")
    mine, theirs = pki.self_signed(), pki.self_signed()
    mine_files = mine.write(tmp_path, "mine")
    client_id = str(
        dep.add_client(
            "p",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(mine_files[0]),
        )["client_id"]
    )
    other_id = str(
        dep.add_client(
            "q",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(theirs.write(tmp_path, "theirs")[0]),
        )["client_id"]
    )
    server = serve(dep)
    with server.client(cert=mine_files) as http:
        spoofed = http.post(
            "/oauth2/token",
            headers={"X-Client-Cert": nginx_escaped(theirs.pem)},
            data={"grant_type": "client_credentials", "client_id": other_id},
        )
        honest = http.post(
            "/oauth2/token",
            headers={"X-Client-Cert": nginx_escaped(theirs.pem)},
            data={"grant_type": "client_credentials", "client_id": client_id},
        )
    assert spoofed.status_code == 401
    assert honest.status_code == 200

"""Authorization server metadata (RFC 8414) as a client library reads it: URLs it can use.

The issuer is the public base URL and every endpoint derives from it (RFC 8414 §2);
``mtls_endpoint_aliases`` (RFC 8705 §5) come from ``<MtlsBaseUrl>`` or the ``need``
connector; a wildcard address never appears, and startup says what was chosen and why.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
from conftest import Deployment
from tokensmith.config.settings import (
    Connector,
    IdentitySettings,
    KeystoreSettings,
    ServerSettings,
    public_urls,
    this_host,
)

ENDPOINTS = ("token_endpoint", "introspection_endpoint", "revocation_endpoint")


def metadata(server, url: str | None = None) -> dict:  # noqa: ANN001
    with server.client(url=url) as http:
        response = http.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    return response.json()


def loopback(url: str) -> str:
    """*url* with its host replaced by 127.0.0.1, to reach a wildcard-bound socket."""
    return f"https://127.0.0.1:{urllib.parse.urlsplit(url).port}"


def test_wildcard_connector_never_appears(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """With address="0.0.0.0" the metadata and the startup lines name this host, and say why."""
    deployment.connectors = '<Connector address="0.0.0.0" port="0" clientAuth="want"/>'
    deployment.write()
    server = serve(deployment)
    meta = metadata(server, loopback(server.url))
    served = [line.split()[2] for line in server.stdout_lines if line.startswith("tokensmith serving ")]
    assert "0.0.0.0" not in str(meta) and served and "0.0.0.0" not in str(served)
    port = urllib.parse.urlsplit(server.url).port
    assert meta["issuer"] == server.url == f"https://{this_host()}:{port}"
    for name in (*ENDPOINTS, "jwks_uri"):
        assert meta[name].startswith(meta["issuer"] + "/")
    reason = next(line for line in server.stdout_lines if line.startswith("tokensmith: issuer "))
    assert "listens on every address" in reason and "<Issuer>" in reason


def test_issuer_is_the_base_of_every_endpoint(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """<Issuer> moves every endpoint URL, not only the issuer; a need connector then gives no
    alias of its local address, and startup says to set <MtlsBaseUrl>."""
    deployment.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want"/>'
        '<Connector address="127.0.0.1" port="0" clientAuth="need"/>'
    )
    deployment.oauth = "<Issuer>https://auth.example.com/</Issuer>"
    deployment.write()
    server = serve(deployment)
    meta = metadata(server)
    assert meta["issuer"] == "https://auth.example.com"
    assert meta["token_endpoint"] == "https://auth.example.com/oauth2/token"
    assert meta["introspection_endpoint"] == "https://auth.example.com/oauth2/introspect"
    assert meta["revocation_endpoint"] == "https://auth.example.com/oauth2/revoke"
    assert meta["jwks_uri"] == "https://auth.example.com/oauth2/jwks"
    assert "mtls_endpoint_aliases" not in meta
    assert any("<MtlsBaseUrl>" in line for line in server.stdout_lines)


def test_mtls_base_url_gives_the_aliases(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """<MtlsBaseUrl> is the base of mtls_endpoint_aliases (RFC 8705 §5)."""
    deployment.oauth = (
        "<Issuer>https://auth.example.com</Issuer>"
        "<MtlsBaseUrl>https://mtls.auth.example.com:8443</MtlsBaseUrl>"
    )
    deployment.write()
    server = serve(deployment)
    meta = metadata(server)
    assert meta["mtls_endpoint_aliases"] == {
        "token_endpoint": "https://mtls.auth.example.com:8443/oauth2/token",
        "introspection_endpoint": "https://mtls.auth.example.com:8443/oauth2/introspect",
        "revocation_endpoint": "https://mtls.auth.example.com:8443/oauth2/revoke",
    }


def test_wildcard_need_connector_alias_names_this_host(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """A need connector on 0.0.0.0 gives aliases under this host's name, not the wildcard."""
    deployment.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want"/>'
        '<Connector address="0.0.0.0" port="0" clientAuth="need"/>'
    )
    deployment.write()
    server = serve(deployment)
    meta = metadata(server)
    port = urllib.parse.urlsplit(server.urls[1]).port
    assert meta["mtls_endpoint_aliases"]["token_endpoint"] == f"https://{this_host()}:{port}/oauth2/token"
    assert meta["issuer"] == server.url


# --- the derivation itself, in process --------------------------------------------------------


def settings(*connectors: tuple[str, str], **identity: str) -> tuple[ServerSettings, IdentitySettings]:
    path = Path("/conf/server.xml")
    server = ServerSettings(
        path,
        tuple(Connector(address, 9443 + i, auth) for i, (address, auth) in enumerate(connectors)),
        KeystoreSettings("PEM"),
        path,
        path,
        path,
    )
    return server, IdentitySettings(Path("/conf/identity.xml"), (), **identity)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_wildcard_addresses_are_named(address: str) -> None:
    """Both IPv4 and IPv6 wildcards become this host's name."""
    urls = public_urls(*settings((address, "want")))
    assert urls.issuer == f"https://{this_host()}:9443"
    assert "every address" in urls.reasons[0]


def test_ipv6_address_is_bracketed() -> None:
    """A concrete IPv6 address is written as a URL host (RFC 3986 §3.2.2)."""
    assert public_urls(*settings(("::1", "want"))).issuer == "https://[::1]:9443"


def test_need_first_connector_has_no_aliases() -> None:
    """When the issuer's own connector requires certificates, aliases would repeat it."""
    urls = public_urls(*settings(("127.0.0.1", "need"), ("127.0.0.1", "need")))
    assert urls.mtls is None


def test_actual_ports_replace_port_zero() -> None:
    """The bound ports, not the configured ones, make the URLs."""
    urls = public_urls(*settings(("127.0.0.1", "want"), ("127.0.0.1", "need")), ports=[4000, 4001])
    assert (urls.issuer, urls.mtls) == ("https://127.0.0.1:4000", "https://127.0.0.1:4001")

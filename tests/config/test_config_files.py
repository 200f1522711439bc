"""Configuration files: safe parsing and errors that name the file and the line."""

from __future__ import annotations

import pytest
from tokensmith.config.settings import load_config
from tokensmith.config.xml import ConfigError

XXE = """<?xml version="1.0"?>
<!DOCTYPE Identity [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Identity><OAuth><Realm>&xxe;</Realm></OAuth></Identity>
"""

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Identity><OAuth><Realm>&lol3;</Realm></OAuth></Identity>
"""

NETWORK = """<?xml version="1.0"?>
<!DOCTYPE Identity SYSTEM "http://127.0.0.1:9/evil.dtd">
<Identity/>
"""


@pytest.mark.parametrize("document", [XXE, LAUGHS, NETWORK], ids=["xxe", "billion-laughs", "external-dtd"])
def test_doctype_and_entities_are_refused(deployment, document) -> None:  # noqa: ANN001
    """A document with a DTD, entities or a network reference is refused, naming the file."""
    path = deployment.conf / "identity.xml"
    path.write_text(document)
    with pytest.raises(ConfigError, match=r"identity\.xml:\d+: DOCTYPE declarations are not allowed"):
        load_config(deployment.conf)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ('orderId="soon"', "attribute 'orderId': 'soon' is not a whole number from 0 to 2147483647"),
        ('orderId="-3"', "attribute 'orderId': The value '-3' is less than the minimum value allowed ('0')"),
        (
            'enable="yes"',
            "attribute 'enable': The value 'yes' is not an element of the set {'true', 'false'}",
        ),
    ],
)
def test_bad_listener_attributes_name_the_line(deployment, attribute, expected) -> None:  # noqa: ANN001
    """A bad orderId or enable value is reported with identity.xml's path and line."""
    deployment.listeners = (
        f'        <EventListener type="ClientAuthenticator" name="basic_auth" {attribute}/>'
    )
    deployment.write()
    with pytest.raises(ConfigError) as error:
        load_config(deployment.conf)
    assert str(error.value).startswith(f"{deployment.conf / 'identity.xml'}:5: Element 'EventListener', ")
    assert expected in str(error.value) and ".xsd" not in str(error.value)


def test_broken_xml_names_the_line(deployment) -> None:  # noqa: ANN001
    """XML that is not well-formed is reported with the line of the fault."""
    (deployment.conf / "server.xml").write_text("<Server>\n  <Connector port='1'>\n</Server>\n")
    with pytest.raises(ConfigError, match=r"server\.xml:3: not well-formed XML"):
        load_config(deployment.conf)


def test_bad_client_auth_mode(deployment) -> None:  # noqa: ANN001
    """clientAuth accepts only want, need and false."""
    deployment.connectors = '<Connector address="127.0.0.1" port="0" clientAuth="maybe"/>'
    deployment.write()
    with pytest.raises(
        ConfigError,
        match=r"server\.xml:\d+: .*attribute 'clientAuth'.*The value 'maybe' is not an element of the set",
    ):
        load_config(deployment.conf)


def test_old_tls_protocol_is_refused(deployment) -> None:  # noqa: ANN001
    """A connector asking for TLS older than 1.2 is a configuration error."""
    deployment.connectors = '<Connector address="127.0.0.1" port="0" sslProtocol="TLSv1.1"/>'
    deployment.write()
    with pytest.raises(ConfigError, match="only TLS 1.2 and newer"):
        load_config(deployment.conf)


def test_duplicate_listener_entry(deployment) -> None:  # noqa: ANN001
    """The same listener listed twice is an error naming both lines."""
    deployment.listeners = "\n".join(
        ['        <EventListener type="ClientAuthenticator" name="basic_auth"/>'] * 2
    )
    deployment.write()
    with pytest.raises(
        ConfigError,
        match=r"identity\.xml:6: listener ClientAuthenticator/basic_auth is already listed on line 5",
    ):
        load_config(deployment.conf)


def test_defaults_of_the_shipped_files(tmp_path) -> None:  # noqa: ANN001
    """The shipped conf/ loads: one want connector on 127.0.0.1:9443 and the bundled authenticators."""
    from conftest import ROOT

    config = load_config(ROOT / "conf")
    assert [(c.address, c.port, c.client_auth) for c in config.server.connectors] == [
        ("127.0.0.1", 9443, "want")
    ]
    assert [(e.name, e.order_id, e.enabled) for e in config.identity.listeners] == [
        ("basic_auth", 100, True),
        ("post_body_auth", 110, True),
        ("mutual_tls", 158, True),
        ("private_key_jwt", 170, True),
    ]
    assert config.server.database == (ROOT / "var" / "tokensmith.db")


def test_misspelt_element_says_what_was_expected(deployment) -> None:  # noqa: ANN001
    """A misspelt element is refused with its line and the elements that may stand there."""
    deployment.listeners = '        <EventListner type="ClientAuthenticator" name="basic_auth"/>'
    deployment.write()
    with pytest.raises(ConfigError) as error:
        load_config(deployment.conf)
    message = str(error.value)
    assert message.startswith(f"{deployment.conf / 'identity.xml'}:5: Element 'EventListner'")
    assert "Expected is ( EventListener )" in message


def test_unsafe_realm_is_refused(deployment) -> None:  # noqa: ANN001
    """A realm that could break the WWW-Authenticate header is refused by the schema."""
    deployment.oauth = '<Realm>a"b</Realm>'
    deployment.write()
    with pytest.raises(ConfigError, match=r"identity\.xml:3: Element 'Realm'"):
        load_config(deployment.conf)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        (
            "connectors",
            '<Connector address="127.0.0.1" port="0" bogus="1"/>',
            "<Connector> takes address, port, sslProtocol, clientAuth, http1, connectionTimeout",
        ),
        (
            "connectors",
            '<Connector port="0"/><Conector/>',
            "<Server> may contain <Keystore>, <Connector>, <TrustedProxies>, <AccessLog>, <Metrics>, <Database>,",
        ),
        (
            "oauth",
            "<Issuer>http://auth.example.com</Issuer>",
            "is not an https URL with no query or fragment",
        ),
        ("oauth", '<Realm>a"b</Realm>', "is not a realm: 1 to 64 letters, digits, spaces"),
        ("oauth", "<Issuer>https://a</Issuer><Isuer>x</Isuer>", "<OAuth> may contain <Realm>, <Issuer>,"),
        ("listeners", '<EventListener type="ClientAuthenticator" name="a b"/>', "is not a name: a letter"),
        (
            "listeners",
            '<EventListener type="ClientAuthenticator" name="x" order="1"/>',
            "<EventListener> takes type, name, orderId, enable",
        ),
    ],
    ids=["attribute", "element", "issuer", "realm", "oauth-child", "name", "listener-attribute"],
)
def test_schema_errors_say_what_is_allowed(deployment, field, value, words) -> None:  # noqa: ANN001
    """A schema violation says in words what is allowed there, and points at no schema file
    the user cannot see."""
    setattr(deployment, field, value)
    deployment.write()
    with pytest.raises(ConfigError) as error:
        load_config(deployment.conf)
    message = str(error.value)
    assert words in message, message
    assert ".xsd" not in message and "pattern" not in message and "[facet" not in message


@pytest.mark.parametrize(
    ("connector", "words"),
    [
        ('<Connector port="x"/>', "'x' is not a port number from 0 to 65535"),
        (
            '<Connector port="0" connectionTimeout="soon"/>',
            "'soon' is not milliseconds, a whole number from 100",
        ),
    ],
    ids=["port", "timeout"],
)
def test_bad_numbers_say_what_is_allowed(deployment, connector, words) -> None:  # noqa: ANN001
    """A value that is not a number says which numbers are allowed, not a schema type name."""
    deployment.connectors = connector
    deployment.write()
    with pytest.raises(ConfigError) as error:
        load_config(deployment.conf)
    assert words in str(error.value) and "atomic type" not in str(error.value)


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (
            '<ClientCertificateHeader name="X-Client-Cert" trustedProxies="10.0.0.300"/>',
            "trustedProxies: '10.0.0.300' is not an address or network",
        ),
        ('<ClientCertificateHeader name="X-Client-Cert" trustedProxies=" , "/>', "needs trustedProxies="),
        ('<ClientCertificateHeader name="X Cert" trustedProxies="10.0.0.1"/>', "is not a header field name"),
        (
            '<ClientCertificateHeader name="X-Client-Cert" format="der" trustedProxies="10.0.0.1"/>',
            "must be one of",
        ),
        (
            '<ClientCertificateHeader name="X-Client-Cert" chainHeader="X-Chain" trustedProxies="10.0.0.1"/>',
            'needs format="rfc9440"',
        ),
    ],
)
def test_bad_client_certificate_header_names_the_line(deployment, element, expected) -> None:  # noqa: ANN001
    """<ClientCertificateHeader> mistakes name identity.xml and the line."""
    deployment.oauth = element
    deployment.write()
    with pytest.raises(ConfigError, match=r"identity\.xml:\d+: ") as excinfo:
        load_config(deployment.conf)
    assert expected in str(excinfo.value)


def test_client_certificate_header_defaults(deployment) -> None:  # noqa: ANN001
    """rfc9440 brings RFC 9440 §2.3's Client-Cert-Chain along; other formats carry one certificate."""
    deployment.oauth = (
        '<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="10.0.0.0/8, ::1"/>'
    )
    deployment.write()
    forwarded = load_config(deployment.conf).identity.forwarded_certificates
    assert forwarded is not None and forwarded.chain_header == "Client-Cert-Chain"
    assert [str(n) for n in forwarded.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    deployment.oauth = '<ClientCertificateHeader name="X-SSL-Cert" trustedProxies="10.0.0.1"/>'
    deployment.write()
    forwarded = load_config(deployment.conf).identity.forwarded_certificates
    assert forwarded is not None and forwarded.format == "auto" and forwarded.chain_header is None

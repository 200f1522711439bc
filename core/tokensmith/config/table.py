"""Every setting of ``server.xml`` and ``identity.xml`` in one table.

The table is the one source of truth for what a setting is called, what it defaults to and
what values it allows: the dataclasses of ``settings.py`` take their defaults from it, the
loaders take their ranges and choices from it, and docs/configuration.md's reference is
generated from it (``python -m tokensmith.config.table`` prints that section;
tests/config/test_settings_table.py checks the doc and that server.xsd and identity.xsd agree with
the table). The schemas stay the first check of a file, because they give the line and the
expected structure; the loaders then check what XSD 1.0 cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Setting", "SETTINGS", "setting", "default", "reference_markdown"]

#: The largest value of an xs:integer setting that is not otherwise bounded (a signed 32-bit int).
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Setting:
    """One setting: an attribute, or the text of an element, of one configuration file.

    ``element`` is the element's path below the root (``Connector``, ``OAuth/Realm``);
    ``attribute`` is None for the element's text. ``default`` is the value as written in the
    file (None: no default; ``default_text`` then says what happens). ``minimum`` and
    ``maximum`` bound numbers (``exclusive_minimum`` when the minimum itself is refused);
    ``choices`` lists the only values allowed. ``allowed`` is what a value may be, in words:
    the schema's own words where it has them. ``key`` is the field it sets in settings.py.
    """

    file: str
    element: str
    attribute: str | None
    summary: str
    allowed: str
    default: str | int | float | None = None
    default_text: str | None = None
    required: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    key: str | None = None

    @property
    def name(self) -> str:
        """How the docs name it: ``<Connector port>`` or ``<OAuth><Realm>``."""
        steps = self.element.split("/")
        opening = "".join(f"<{step}>" for step in steps[:-1])
        last = f"<{steps[-1]} {self.attribute}>" if self.attribute else f"<{steps[-1]}>"
        return opening + last

    @property
    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.required:
            return "required"
        return "none" if self.default is None else f"`{self.default}`"


def _positive(element: str, key: str, summary: str, value: int, note: str = "") -> Setting:
    return Setting(
        "identity.xml",
        element,
        None,
        summary,
        f"a whole number from 1 to {INT_MAX}",
        value,
        f"`{value}`{note}" if note else None,
        minimum=1,
        maximum=INT_MAX,
        key=key,
    )


SETTINGS: tuple[Setting, ...] = (
    # --- server.xml --------------------------------------------------------------------------
    Setting(
        "server.xml",
        "Connector",
        "address",
        "The address the HTTPS connector listens on; 0.0.0.0 or :: listen on every address.",
        "an IPv4 or IPv6 address",
        "127.0.0.1",
    ),
    Setting(
        "server.xml",
        "Connector",
        "port",
        "The TCP port of the connector.",
        "a port number from 0 to 65535 (0: any free port)",
        9443,
        minimum=0,
        maximum=65535,
        key="port",
    ),
    Setting(
        "server.xml",
        "Connector",
        "sslProtocol",
        "The TLS versions served: TLS means 1.2 and 1.3.",
        "TLS, TLSv1.2 or TLSv1.3",
        "TLS",
        choices=("TLS", "TLSv1.2", "TLSv1.3"),
    ),
    Setting(
        "server.xml",
        "Connector",
        "clientAuth",
        "Whether the TLS handshake asks for a client certificate (need: refuses clients without one).",
        "want, need or false",
        "want",
        choices=("want", "need", "false"),
        key="client_auth",
    ),
    Setting(
        "server.xml",
        "Connector",
        "http1",
        "Who serves HTTP/1.1: Hypercorn (h11) or tokensmith's own llhttp lane (docs/benchmarks.md);"
        ' a plain-HTTP connector (`SSLEnabled="false"`) is always served by Hypercorn.',
        "hypercorn or llhttp",
        "hypercorn",
        choices=("hypercorn", "llhttp"),
        key="http1",
    ),
    Setting(
        "server.xml",
        "Connector",
        "connectionTimeout",
        "Milliseconds for the TLS handshake, for a request's headers once started, and for its body.",
        "milliseconds, a whole number from 100 to 600000",
        10_000,
        minimum=100,
        maximum=600_000,
        key="connection_timeout",
    ),
    Setting(
        "server.xml",
        "Connector",
        "SSLEnabled",
        "false: plain HTTP behind a TLS-terminating load balancer, answering only <TrustedProxies>.",
        "true or false",
        "true",
    ),
    Setting(
        "server.xml",
        "Keystore",
        "type",
        "The server's certificate and key: PEM files, or one PKCS#12 file.",
        "PEM or PKCS12",
        "PEM",
        choices=("PEM", "PKCS12"),
        key="type",
    ),
    Setting(
        "server.xml",
        "Keystore",
        "certificateFile",
        'The PEM certificate chain, server certificate first (type="PEM").',
        "a path, relative to server.xml",
        default_text='required with type="PEM"',
    ),
    Setting(
        "server.xml",
        "Keystore",
        "keyFile",
        'The PEM private key; may be the certificate\'s file (type="PEM").',
        "a path, relative to server.xml",
        default_text='required with type="PEM"',
    ),
    Setting(
        "server.xml",
        "Keystore",
        "file",
        'The PKCS#12 file holding the certificate chain and the key (type="PKCS12").',
        "a path, relative to server.xml",
        default_text='required with type="PKCS12"',
    ),
    Setting(
        "server.xml",
        "Keystore",
        "password",
        "Decrypts the PEM key or the PKCS#12 file.",
        "text",
        default_text="none (not encrypted)",
    ),
    Setting(
        "server.xml",
        "TrustedProxies",
        "addresses",
        "The proxies whose X-Request-Id, X-Forwarded-For, X-Forwarded-Proto and Forwarded are believed.",
        "addresses or networks, comma-separated",
        required=True,
        default_text="none: no proxy is trusted",
    ),
    Setting(
        "server.xml",
        "TrustedProxies",
        "headers",
        "Which forwarded headers the trusted proxies are believed for: x-forwarded"
        " (X-Forwarded-For, right-most address, and X-Forwarded-Proto) or forwarded (RFC 7239)."
        " The other family is ignored.",
        "x-forwarded or forwarded",
        "x-forwarded",
        choices=("x-forwarded", "forwarded"),
        key="proxy_headers",
    ),
    Setting(
        "server.xml",
        "AccessLog",
        "enabled",
        "Whether the access log is written (one line per request).",
        "true or false",
        "true",
        default_text="`true` with the element; no access log without it",
    ),
    Setting(
        "server.xml",
        "AccessLog",
        "format",
        "json: one JSON object a line; common: Apache's common log format with extras after it.",
        "json or common",
        "json",
        choices=("json", "common"),
    ),
    Setting(
        "server.xml",
        "AccessLog",
        "file",
        "Where the access log goes.",
        "a path, relative to server.xml, or - for stderr",
        "-",
        default_text="`-` (stderr)",
    ),
    Setting(
        "server.xml",
        "Metrics",
        "enabled",
        "Whether GET /metrics answers (Prometheus text format).",
        "true or false",
        "true",
    ),
    Setting(
        "server.xml",
        "Metrics",
        "allow",
        "The peers that may read GET /metrics; others get 404.",
        "addresses or networks, comma-separated",
        default_text="loopback only (127.0.0.0/8, ::1)",
    ),
    Setting(
        "server.xml",
        "Database",
        "path",
        "The SQLite database; the environment variable TOKENSMITH_DB overrides it. Give either"
        " path= or url=.",
        "a path, relative to server.xml",
        "../var/tokensmith.db",
        default_text="`../var/tokensmith.db` without the element",
    ),
    Setting(
        "server.xml",
        "Database",
        "url",
        "A PostgreSQL database shared by several instances, instead of the SQLite file"
        " (docs/deployment.md); the environment variable TOKENSMITH_DATABASE_URL overrides it"
        " and path=.",
        "a postgresql:// URL",
        default_text="none: the SQLite file",
    ),
    Setting(
        "server.xml",
        "Database",
        "poolSize",
        "With url=: how many connections (and threads) each tokensmith process uses for"
        " requests' calls to PostgreSQL; a slow database holds at most this many requests'"
        " calls at once, and the others wait for a free connection, each within its deadline"
        " (docs/deployment.md). Ignored for SQLite.",
        "a whole number from 1 to 256",
        8,
        minimum=1,
        maximum=256,
        key="database_pool_size",
    ),
    Setting(
        "server.xml",
        "Truststore",
        "path",
        "The directory of PEM trust anchors of tls_client_auth clients (`tokensmith truststore`).",
        "a path, relative to server.xml",
        "security/truststore",
        required=True,
        default_text="`security/truststore` without the element",
    ),
    Setting(
        "server.xml",
        "Dropins",
        "path",
        "The directory of plugin wheels.",
        "a path, relative to server.xml",
        "../dropins",
        required=True,
        default_text="`../dropins` without the element",
    ),
    Setting(
        "server.xml",
        "Console",
        "enabled",
        "Whether the web console is served under /console/ (docs/console.md).",
        "true or false",
        "true",
        choices=("true", "false"),
    ),
    Setting(
        "server.xml",
        "Console",
        "idleTimeout",
        "Seconds a console session lasts without a request.",
        "seconds, a whole number from 1 to 86400",
        900,
        minimum=1,
        maximum=86400,
        key="idle_timeout",
    ),
    Setting(
        "server.xml",
        "Console",
        "maxSessionAge",
        "Seconds a console session lasts at most after sign-in.",
        "seconds, a whole number from 1 to 604800",
        28800,
        minimum=1,
        maximum=604800,
        key="max_session_age",
    ),
    # --- identity.xml: <OAuth> ---------------------------------------------------------------
    Setting(
        "identity.xml",
        "OAuth/Realm",
        None,
        "The realm of WWW-Authenticate challenges (RFC 6750 §3).",
        "a realm: 1 to 64 letters, digits, spaces, '.', '_' or '-'",
        "tokensmith",
        key="realm",
    ),
    Setting(
        "identity.xml",
        "OAuth/Issuer",
        None,
        "The issuer URL (RFC 8414 §2); every endpoint URL in the metadata is under it.",
        "an https URL with no query or fragment, such as https://auth.example.com",
        default_text="the first connector's URL",
        key="issuer",
    ),
    Setting(
        "identity.xml",
        "OAuth/MtlsBaseUrl",
        None,
        "The base URL of mtls_endpoint_aliases (RFC 8705 §5).",
        "an https URL with no query or fragment, such as https://auth.example.com",
        default_text='the first connector with clientAuth="need", if it is not the first',
        key="mtls_base_url",
    ),
    _positive("OAuth/AccessTokenLifetime", "access_token_lifetime", "Seconds an access token lives.", 3600),
    _positive(
        "OAuth/RefreshTokenLifetime",
        "refresh_token_lifetime",
        "Seconds a refresh token lives unused.",
        14 * 24 * 3600,
        " (14 days)",
    ),
    _positive(
        "OAuth/RefreshTokenMaxLifetime",
        "refresh_token_max_lifetime",
        "Seconds a grant lives at most: refreshing never extends it (RFC 9700 §4.14.2).",
        90 * 24 * 3600,
        " (90 days)",
    ),
    Setting(
        "identity.xml",
        "OAuth/AccessTokenFormat",
        None,
        "The access token format for clients that do not choose: opaque, or a JWT (RFC 9068).",
        "opaque or jwt",
        "opaque",
        choices=("opaque", "jwt"),
        key="access_token_format",
    ),
    _positive(
        "OAuth/MaxFailedLogins",
        "max_failed_logins",
        "Password grant: failures from one source before it is locked out of the user.",
        5,
    ),
    _positive(
        "OAuth/MaxFailedLoginsPerUser",
        "max_failed_logins_per_user",
        "Password grant: failures from all sources before the user is locked out everywhere.",
        100,
    ),
    _positive(
        "OAuth/LockoutSeconds",
        "lockout_seconds",
        "Password grant: how long a lockout lasts (docs/reliability.md).",
        300,
    ),
    Setting(
        "identity.xml",
        "OAuth/AuthorizationCodeLifetime",
        None,
        "Seconds an authorization code lives (RFC 6749 §4.1.2 recommends at most 600).",
        "a whole number of seconds from 1 to 600",
        60,
        minimum=1,
        maximum=600,
        key="authorization_code_lifetime",
    ),
    _positive(
        "OAuth/SignInSessionLifetime",
        "signin_session_lifetime",
        "Seconds a sign-in on the login page (authorization code grant) lasts.",
        8 * 3600,
        " (8 hours)",
    ),
    _positive(
        "OAuth/MaxRequestBodyBytes",
        "max_body_bytes",
        "The largest request body accepted; a larger one is refused with 413.",
        64 * 1024,
    ),
    Setting(
        "identity.xml",
        "OAuth/ListenerTimeoutSeconds",
        None,
        "How long one call of a plugin's request hook may take (docs/plugins.md).",
        "a number of seconds above 0 and at most 3600",
        5,
        minimum=0,
        maximum=3600,
        exclusive_minimum=True,
        key="listener_timeout",
    ),
    Setting(
        "identity.xml",
        "OAuth/ClientCertificateHeader",
        "name",
        "The request header in which a TLS-terminating proxy forwards the client certificate.",
        "a header field name",
        required=True,
    ),
    Setting(
        "identity.xml",
        "OAuth/ClientCertificateHeader",
        "format",
        "How the forwarded certificate is encoded (RFC 9440, nginx's $ssl_client_escaped_cert, ...).",
        "rfc9440, nginx, pem, base64-der or auto",
        "auto",
        choices=("rfc9440", "nginx", "pem", "base64-der", "auto"),
    ),
    Setting(
        "identity.xml",
        "OAuth/ClientCertificateHeader",
        "trustedProxies",
        "The proxies whose header is believed, and only when the connection brought no certificate.",
        "comma-separated addresses or networks (CIDR)",
        required=True,
    ),
    Setting(
        "identity.xml",
        "OAuth/ClientCertificateHeader",
        "chainHeader",
        'RFC 9440 §2.3\'s chain header, with format="rfc9440"; "" turns it off.',
        "a header field name",
        default_text='`Client-Cert-Chain` with format="rfc9440", else none',
    ),
    # --- identity.xml: listeners and dropins -------------------------------------------------
    Setting(
        "identity.xml",
        "EventListeners/EventListener",
        "type",
        "The listener type: ClientAuthenticator or OAuthEventInterceptor (docs/plugins.md).",
        "a name: a letter or '_', then up to 127 letters, digits, '_', '.' or '-'",
        required=True,
    ),
    Setting(
        "identity.xml",
        "EventListeners/EventListener",
        "name",
        "The plugin's entry-point name.",
        "a name: a letter or '_', then up to 127 letters, digits, '_', '.' or '-'",
        required=True,
    ),
    Setting(
        "identity.xml",
        "EventListeners/EventListener",
        "orderId",
        "Listeners are called in ascending orderId; equal ones by name.",
        f"a whole number from 0 to {INT_MAX}",
        default_text="the plugin's listener_default_order(), or 1000",
        minimum=0,
        maximum=INT_MAX,
    ),
    Setting(
        "identity.xml",
        "EventListeners/EventListener",
        "enable",
        "Whether the listener runs.",
        "true or false",
        "true",
        choices=("true", "false"),
    ),
    Setting(
        "identity.xml",
        "EventListeners/EventListener/Property",
        "name",
        "A property handed to the plugin's listener_configure; the element's text is its value.",
        "a name: a letter or '_', then up to 127 letters, digits, '_', '.' or '-'",
        required=True,
    ),
    Setting(
        "identity.xml",
        "Dropins/AllowedWheel",
        "sha256",
        "Pinning: only wheels whose SHA-256 is listed are loaded.",
        "a SHA-256: 64 hexadecimal digits",
        required=True,
    ),
    Setting(
        "identity.xml",
        "Dropins/AllowedWheel",
        "name",
        "The wheel's file name, for the reader; not checked.",
        "text",
    ),
    Setting(
        "identity.xml",
        "Dropins/AllowedWheelsFile",
        None,
        "Pinning: a file of SHA-256 lines as sha256sum writes them, relative to identity.xml.",
        "a path",
    ),
)


def setting(file: str, element: str, attribute: str | None = None) -> Setting:
    """The row of *file*'s setting at *element* (and *attribute*); ``KeyError`` if none."""
    for row in SETTINGS:
        if (row.file, row.element, row.attribute) == (file, element, attribute):
            return row
    raise KeyError((file, element, attribute))


def default(file: str, element: str, attribute: str | None = None) -> object:
    """The default of a setting, as written in the file."""
    return setting(file, element, attribute).default


def reference_markdown() -> str:
    """docs/configuration.md's reference section: one table per file, in the table's order."""
    lines: list[str] = []
    for file in ("server.xml", "identity.xml"):
        lines += [
            f"### {file}",
            "",
            "| Setting | Default | Allowed values | What it does |",
            "| --- | --- | --- | --- |",
        ]
        for row in SETTINGS:
            if row.file == file:
                cells = (f"`{row.name}`", row.shown_default, row.allowed, row.summary)
                lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")

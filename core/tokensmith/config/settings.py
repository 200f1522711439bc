"""tokensmith's configuration: ``conf/server.xml`` and ``conf/identity.xml``.

``server.xml`` says where and how to listen (connectors, keystore, database, dropins);
``identity.xml`` says what the server does (event listeners and OAuth settings), as WSO2
Identity Server's files of the same names do. Relative paths are relative to the file that
names them. What each setting is called, its default and its allowed values come from the
table in ``config/table.py`` (docs/configuration.md is generated from it).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from tokensmith.config.table import SETTINGS, Setting, default, setting
from tokensmith.config.xml import (
    MAX_CONFIG_BYTES,
    ConfigError,
    UnreadableFile,
    attr_bool,
    attr_int,
    parse_xml,
    read_regular_file,
    where,
)
from tokensmith.models import LoginPolicy

__all__ = [
    "Config",
    "Connector",
    "KeystoreSettings",
    "ConsoleSettings",
    "ServerSettings",
    "IdentitySettings",
    "ListenerEntry",
    "ForwardedCertificates",
    "AccessLogSettings",
    "MetricsSettings",
    "load_config",
    "load_identity",
    "ConfigError",
    "PublicUrls",
    "public_urls",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CLIENT_AUTH = setting("server.xml", "Connector", "clientAuth")
_TLS_PROTOCOL = setting("server.xml", "Connector", "sslProtocol")
_HTTP1 = setting("server.xml", "Connector", "http1")
_PORT = setting("server.xml", "Connector", "port")
_TIMEOUT = setting("server.xml", "Connector", "connectionTimeout")
_KEYSTORE_TYPE = setting("server.xml", "Keystore", "type")
_ORDER_ID = setting("identity.xml", "EventListeners/EventListener", "orderId")
_CONSOLE_ENABLED = setting("server.xml", "Console", "enabled")
_CONSOLE_IDLE = setting("server.xml", "Console", "idleTimeout")
_POOL_SIZE = setting("server.xml", "Database", "poolSize")
_CONSOLE_AGE = setting("server.xml", "Console", "maxSessionAge")
_FORWARDED_FORMAT = setting("identity.xml", "OAuth/ClientCertificateHeader", "format")
CLIENT_AUTH_MODES = _CLIENT_AUTH.choices
#: Who serves HTTP/1.1 on a connector: Hypercorn (h11), or tokensmith's own llhttp lane.
HTTP1_LANES = _HTTP1.choices
KEYSTORE_TYPES = _KEYSTORE_TYPE.choices
FORWARDED_FORMATS = _FORWARDED_FORMAT.choices


@dataclass(frozen=True)
class Connector:
    """One HTTPS listening socket (``<Connector>``)."""

    address: str
    port: int
    client_auth: str = str(_CLIENT_AUTH.default)
    #: Seconds a client has for its TLS handshake, for a request's headers once it has
    #: started one, and for a request's body (Tomcat's connectionTimeout, in seconds here).
    connection_timeout: float = int(_TIMEOUT.default or 0) / 1000
    #: ``hypercorn`` (the default) serves HTTP/1.1 through Hypercorn and h11; ``llhttp`` through
    #: tokensmith's own protocol over httptools (http/llhttp.py), faster and opt-in. HTTP/2 is always
    #: Hypercorn's.
    http1: str = str(_HTTP1.default)
    #: False (``SSLEnabled="false"``, as Tomcat's): plain HTTP behind a TLS-terminating load
    #: balancer, answering only the server's ``<TrustedProxies>`` (RFC 6749 §3.2 requires TLS
    #: on the token endpoint: the proxy provides it).
    ssl_enabled: bool = True


#: Access log formats: one JSON object a line, or Apache's common log format with the
#: request id and duration after it.
ACCESS_LOG_FORMATS = ("json", "common")


@dataclass(frozen=True)
class AccessLogSettings:
    """``<AccessLog enabled= format= file=/>``: one line per request; None file: stderr."""

    enabled: bool = False
    format: str = "json"
    file: Path | None = None


@dataclass(frozen=True)
class MetricsSettings:
    """``<Metrics enabled= allow=/>``: who may read ``GET /metrics`` (peer addresses)."""

    enabled: bool = True
    allow: tuple[Network, ...] = ()


@dataclass(frozen=True)
class KeystoreSettings:
    """``<Keystore>``: the server's certificate and key, as PEM files or one PKCS#12 file.

    ``type="PEM"`` (the default) names ``certificateFile`` and ``keyFile`` (they may be the
    same file); ``type="PKCS12"`` names ``file``. ``password`` decrypts the PEM key or the
    PKCS#12 file. ``where`` is ``server.xml:LINE``, for errors.
    """

    type: str
    certificate_file: Path | None = None
    key_file: Path | None = None
    file: Path | None = None
    password: str | None = field(default=None, repr=False)
    where: str = ""


LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


#: The forwarded headers a trusted proxy may be believed for (``<TrustedProxies headers=>``).
PROXY_HEADERS = ("x-forwarded", "forwarded")


@dataclass(frozen=True)
class ConsoleSettings:
    """``<Console>``: the web console under ``/console/`` (app/console.py).

    ``enabled="false"`` takes it off the URL map (a 404). ``idleTimeout`` is the seconds a
    signed-in session lasts without a request; ``maxSessionAge`` the seconds it lasts at most.
    """

    enabled: bool = _CONSOLE_ENABLED.default == "true"
    idle_timeout: int = int(_CONSOLE_IDLE.default or 0)
    max_session_age: int = int(_CONSOLE_AGE.default or 0)


@dataclass(frozen=True)
class ServerSettings:
    path: Path
    connectors: tuple[Connector, ...]
    keystore: KeystoreSettings
    database: Path
    dropins: Path
    truststore: Path
    console: ConsoleSettings = ConsoleSettings()
    #: ``<TrustedProxies addresses=>``: the proxies whose X-Request-Id, X-Forwarded-For,
    #: X-Forwarded-Proto and Forwarded are believed, and the only peers a plain-HTTP
    #: connector answers.
    trusted_proxies: tuple[Network, ...] = ()
    #: ``<TrustedProxies headers=>``: the header family those proxies are believed for,
    #: ``x-forwarded`` (X-Forwarded-For/-Proto) or ``forwarded`` (RFC 7239).
    proxy_headers: str = "x-forwarded"
    access_log: AccessLogSettings = AccessLogSettings()
    metrics: MetricsSettings = MetricsSettings(allow=LOOPBACK)
    #: A PostgreSQL URL (<Database url=...> or TOKENSMITH_DATABASE_URL): the shared store
    #: instead of the SQLite file *database*. It may hold a password: show it only through
    #: ``storage.postgres.redact_url``.
    database_url: str | None = field(default=None, repr=False)
    #: ``<Database poolSize>``: PostgreSQL connections (and threads) for requests' calls.
    database_pool_size: int = int(_POOL_SIZE.default or 0)


@dataclass(frozen=True)
class ListenerEntry:
    """One ``<EventListener>`` of identity.xml, as written (None where an attribute is absent)."""

    type: str
    name: str
    order_id: int | None
    enabled: bool
    properties: dict[str, str] = field(default_factory=dict)
    line: int = 0


# RFC 9110 §5.1: a field name is a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class ForwardedCertificates:
    """``<ClientCertificateHeader>``: where a TLS-terminating proxy puts the client's certificate.

    Believed only from ``trusted_proxies``, and only when this connection's own handshake
    carried no certificate. ``chain_header`` names RFC 9440 §2.3's Client-Cert-Chain.
    """

    header: str
    trusted_proxies: tuple[Network, ...]
    format: str = "auto"
    chain_header: str | None = None


#: The ``<OAuth>`` child elements whose text is one value, by the field they set.
_OAUTH: dict[str, Setting] = {
    row.key: row
    for row in SETTINGS
    if row.file == "identity.xml" and row.element.startswith("OAuth/") and row.attribute is None and row.key
}


@dataclass(frozen=True)
class IdentitySettings:
    path: Path
    listeners: tuple[ListenerEntry, ...]
    realm: str = str(_OAUTH["realm"].default)
    #: The issuer URL (RFC 8414 §2); None: the first connector's URL.
    issuer: str | None = None
    #: The base URL of mtls_endpoint_aliases (RFC 8705 §5); None: the first need connector.
    mtls_base_url: str | None = None
    access_token_lifetime: int = int(_OAUTH["access_token_lifetime"].default or 0)
    refresh_token_lifetime: int = int(_OAUTH["refresh_token_lifetime"].default or 0)
    #: A grant's absolute lifetime: refreshing never extends it (RFC 9700 §4.14.2).
    refresh_token_max_lifetime: int = int(_OAUTH["refresh_token_max_lifetime"].default or 0)
    #: "opaque" (the default) or "jwt" (RFC 9068) for clients that do not choose.
    access_token_format: str = str(_OAUTH["access_token_format"].default)
    max_body_bytes: int = int(_OAUTH["max_body_bytes"].default or 0)
    listener_timeout: float = float(_OAUTH["listener_timeout"].default or 0)
    #: Password grant: failures from one source address before that source is locked out of
    #: the user, failures from all sources before the user is locked out everywhere, and
    #: for how long (storage.LoginPolicy, docs/reliability.md).
    max_failed_logins: int = int(_OAUTH["max_failed_logins"].default or 0)
    max_failed_logins_per_user: int = int(_OAUTH["max_failed_logins_per_user"].default or 0)
    lockout_seconds: int = int(_OAUTH["lockout_seconds"].default or 0)
    #: Authorization codes live this long (RFC 6749 §4.1.2: "a maximum authorization code
    #: lifetime of 10 minutes is RECOMMENDED"; a browser redirect takes seconds).
    authorization_code_lifetime: int = int(_OAUTH["authorization_code_lifetime"].default or 0)
    #: How long a sign-in on the login page lasts before the user signs in again.
    signin_session_lifetime: int = int(_OAUTH["signin_session_lifetime"].default or 0)
    #: SHA-256 (hex) of the wheels allowed in dropins/; None when pinning is off.
    allowed_wheels: frozenset[str] | None = None
    #: Client certificates forwarded by trusted proxies; None: only the TLS handshake's.
    forwarded_certificates: ForwardedCertificates | None = None

    @property
    def login_policy(self) -> LoginPolicy:
        return LoginPolicy(self.max_failed_logins, self.max_failed_logins_per_user, self.lockout_seconds)


@dataclass(frozen=True)
class Config:
    conf_dir: Path
    server: ServerSettings
    identity: IdentitySettings


def load_config(conf_dir: str | Path) -> Config:
    """Read ``server.xml`` and ``identity.xml`` from *conf_dir*; raise ``ConfigError``."""
    conf = Path(conf_dir).resolve()
    if not conf.is_dir():
        raise ConfigError(f"{conf}: configuration directory not found")
    return Config(conf, load_server(conf / "server.xml"), load_identity(conf / "identity.xml"))


def _path(base: Path, raw: str) -> Path:
    return (base.parent / os.path.expanduser(raw)).resolve()


def load_server(path: Path) -> ServerSettings:
    root = parse_xml(path, "server.xsd")
    if root.tag != "Server":
        raise ConfigError(f"{where(path, root)}: root element must be <Server>, not <{root.tag}>")
    connectors = []
    for el in root.iter("Connector"):
        client_auth = el.get("clientAuth", str(_CLIENT_AUTH.default))
        if client_auth not in CLIENT_AUTH_MODES:
            raise ConfigError(
                f"{where(path, el)}: clientAuth={client_auth!r} must be one of {', '.join(CLIENT_AUTH_MODES)}"
            )
        protocol = el.get("sslProtocol", str(_TLS_PROTOCOL.default))
        if protocol not in _TLS_PROTOCOL.choices:
            raise ConfigError(
                f"{where(path, el)}: sslProtocol={protocol!r}: only TLS 1.2 and newer are served"
            )
        port = _setting_int(path, el, _PORT)
        timeout_ms = _setting_int(path, el, _TIMEOUT)
        assert port is not None and timeout_ms is not None
        http1 = el.get("http1", str(_HTTP1.default))
        if http1 not in HTTP1_LANES:
            raise ConfigError(f"{where(path, el)}: http1={http1!r} must be one of {', '.join(HTTP1_LANES)}")
        ssl_enabled = attr_bool(path, el, "SSLEnabled", True)
        connectors.append(
            Connector(
                el.get("address", str(default("server.xml", "Connector", "address"))),
                port,
                client_auth,
                timeout_ms / 1000,
                http1,
                ssl_enabled,
            )
        )
    if not connectors:
        raise ConfigError(f"{where(path, root)}: at least one <Connector> is needed")
    proxies_el = root.find("TrustedProxies")
    trusted = _networks(path, proxies_el, "addresses") if proxies_el is not None else ()
    proxy_headers = proxies_el.get("headers", "x-forwarded") if proxies_el is not None else "x-forwarded"
    if proxy_headers not in PROXY_HEADERS:
        raise ConfigError(
            f"{where(path, proxies_el)}: <TrustedProxies headers={proxy_headers!r}> must be one of"
            f" {', '.join(PROXY_HEADERS)}"
        )
    for connector, el in zip(connectors, root.iter("Connector")):
        if not connector.ssl_enabled and not trusted:
            raise ConfigError(
                f'{where(path, el)}: a connector with SSLEnabled="false" answers only trusted proxies:'
                " name them in <TrustedProxies addresses=...>"
            )

    database = os.environ.get("TOKENSMITH_DB") or _text_attr(root, "Database", "path")
    database_url = _database_url(path, root)
    dropins = _text_attr(root, "Dropins", "path") or str(default("server.xml", "Dropins", "path"))
    truststore = _text_attr(root, "Truststore", "path") or str(default("server.xml", "Truststore", "path"))
    return ServerSettings(
        path=path,
        connectors=tuple(connectors),
        keystore=_keystore(path, root),
        database=_path(path, database or str(default("server.xml", "Database", "path"))),
        dropins=_path(path, dropins),
        truststore=_path(path, truststore),
        console=_console(path, root),
        trusted_proxies=trusted,
        proxy_headers=proxy_headers,
        access_log=_access_log(path, root.find("AccessLog")),
        metrics=_metrics(path, root.find("Metrics")),
        database_url=database_url,
        database_pool_size=_pool_size(path, root),
    )


def _networks(path: Path, el: etree._Element, attr: str) -> tuple[Network, ...]:
    """The comma-separated addresses or networks in *attr* of *el*."""
    networks = []
    for item in filter(None, (p.strip() for p in el.get(attr, "").split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{where(path, el)}: {attr}: {item!r} is not an address or network") from None
    return tuple(networks)


def _access_log(path: Path, el: etree._Element | None) -> AccessLogSettings:
    """``<AccessLog>``; absent: no access log. ``file="-"`` or no file: stderr."""
    if el is None:
        return AccessLogSettings()
    fmt = el.get("format", "json")
    if fmt not in ACCESS_LOG_FORMATS:
        raise ConfigError(
            f"{where(path, el)}: <AccessLog format={fmt!r}> must be one of {', '.join(ACCESS_LOG_FORMATS)}"
        )
    raw = el.get("file", "-").strip()
    return AccessLogSettings(
        attr_bool(path, el, "enabled", True), fmt, None if raw in ("", "-") else _path(path, raw)
    )


def _metrics(path: Path, el: etree._Element | None) -> MetricsSettings:
    """``<Metrics>``; absent: on, for loopback peers only."""
    if el is None:
        return MetricsSettings(allow=LOOPBACK)
    allow = _networks(path, el, "allow") if el.get("allow") is not None else LOOPBACK
    return MetricsSettings(attr_bool(path, el, "enabled", True), allow)


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _setting_int(path: Path, el: etree._Element, entry: Setting) -> int | None:
    """The integer attribute of *el* that *entry* names, with the table's default and range."""
    assert entry.attribute is not None
    default = None if entry.default is None else _int(entry.default)
    return attr_int(
        path, el, entry.attribute, default, minimum=_int(entry.minimum), maximum=_int(entry.maximum)
    )


def _console(path: Path, root: etree._Element) -> ConsoleSettings:
    el = root.find("Console")
    if el is None:
        return ConsoleSettings()
    idle = _setting_int(path, el, _CONSOLE_IDLE)
    age = _setting_int(path, el, _CONSOLE_AGE)
    assert idle is not None and age is not None
    return ConsoleSettings(attr_bool(path, el, "enabled", _CONSOLE_ENABLED.default == "true"), idle, age)


#: Overrides <Database>: the URL of a PostgreSQL database, so that a password need not be
#: written into server.xml.
DATABASE_URL_ENV = "TOKENSMITH_DATABASE_URL"


def _database_url(path: Path, root: etree._Element) -> str | None:
    """The PostgreSQL URL, if the store is PostgreSQL: TOKENSMITH_DATABASE_URL, else
    ``<Database url=...>``; exactly one of url= and path= on the element."""
    el = root.find("Database")
    if el is not None and (el.get("url") is None) == (el.get("path") is None):
        raise ConfigError(f"{where(path, el)}: <Database> needs either path= (SQLite) or url= (PostgreSQL)")
    from_env = os.environ.get(DATABASE_URL_ENV)
    url = from_env or (el.get("url") if el is not None else None)
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        place = DATABASE_URL_ENV if from_env else where(path, el)
        # Not the URL itself: it may hold a password.
        raise ConfigError(f"{place}: the database URL must start with postgresql://")
    problem = _url_problem(url)
    if problem:
        place = DATABASE_URL_ENV if from_env else where(path, el)
        raise ConfigError(f"{place}: the database URL is not valid: {problem}")
    return url


def _pool_size(path: Path, root: etree._Element) -> int:
    el = root.find("Database")
    if el is None:
        return _int(_POOL_SIZE.default)
    size = _setting_int(path, el, _POOL_SIZE)
    assert size is not None
    return size


def _url_problem(url: str) -> str | None:
    """Why libpq would misread or refuse *url*, in words that never repeat its password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    authority = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0]
    if authority.count("@") > 1:
        # libpq ends the user name and password at the first @, Python's URL parser at the
        # last: the rest of the password would be taken for the host, and shown as one.
        return "an @ in the user name or password must be written %40"
    secrets = [s for s in re.findall(r"(?:^|[?&])(?:ssl)?password=([^&#]*)", url, re.IGNORECASE) if s]
    if "@" in authority and ":" in authority.split("@")[0]:
        secrets.append(authority.split("@")[0].split(":", 1)[1])
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        message = re.sub(r'\s*in URI: ".*', "", " ".join(str(exc).split()))
        for secret in filter(None, secrets):
            message = message.replace(secret, "***")
        return message
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return f"port {port!r} is not a port number (1-65535)"
    return None


def _keystore(path: Path, root: etree._Element) -> KeystoreSettings:
    """The one ``<Keystore>``; XSD 1.0 cannot say which attributes go together, so we do."""
    found = root.findall("Keystore")
    if not found:
        raise ConfigError(
            f"{where(path, root)}: a <Keystore> is needed: certificateFile= and"
            ' keyFile= (PEM), or type="PKCS12" file='
        )
    if len(found) > 1:
        raise ConfigError(
            f"{where(path, found[1])}: only one <Keystore> is allowed; the first"
            f" is on line {found[0].sourceline}"
        )
    el = found[0]
    at = where(path, el)
    kind = el.get("type", str(_KEYSTORE_TYPE.default))
    if kind not in KEYSTORE_TYPES:  # the schema already refuses it; kept for direct callers
        raise ConfigError(f"{at}: <Keystore type={kind!r}> must be PEM or PKCS12")
    if kind == "PKCS12":
        for pem_only in ("certificateFile", "keyFile"):
            if el.get(pem_only) is not None:
                raise ConfigError(
                    f'{at}: <Keystore type="PKCS12"> takes file=, not {pem_only}= (which is for type="PEM")'
                )
        if not el.get("file"):
            raise ConfigError(f'{at}: <Keystore type="PKCS12"> needs file=')
        return KeystoreSettings(
            "PKCS12", file=_path(path, el.get("file", "")), password=el.get("password"), where=at
        )
    if el.get("file") is not None:
        raise ConfigError(
            f'{at}: <Keystore file=> is for a PKCS#12 keystore: add type="PKCS12",'
            " or name certificateFile= and keyFile= for PEM files"
        )
    for required in ("certificateFile", "keyFile"):
        if not el.get(required):
            raise ConfigError(f'{at}: <Keystore> needs {required}= (or type="PKCS12" file=)')
    return KeystoreSettings(
        "PEM",
        certificate_file=_path(path, el.get("certificateFile", "")),
        key_file=_path(path, el.get("keyFile", "")),
        password=el.get("password"),
        where=at,
    )


def _text_attr(root: etree._Element, tag: str, attr: str) -> str | None:
    el = root.find(tag)
    return el.get(attr) if el is not None else None


def load_identity(path: Path) -> IdentitySettings:
    root = parse_xml(path, "identity.xsd")
    if root.tag != "Identity":
        raise ConfigError(f"{where(path, root)}: root element must be <Identity>, not <{root.tag}>")
    entries: list[ListenerEntry] = []
    seen: dict[tuple[str, str], int] = {}
    for el in root.iterfind("EventListeners/EventListener"):
        type_, name = el.get("type"), el.get("name")
        if not type_ or not name:
            raise ConfigError(f"{where(path, el)}: <EventListener> needs type= and name=")
        if (type_, name) in seen:
            raise ConfigError(
                f"{where(path, el)}: listener {type_}/{name} is already listed on line {seen[type_, name]}"
            )
        seen[type_, name] = el.sourceline or 0
        properties = {}
        for prop in el.iterfind("Property"):
            if not prop.get("name"):
                raise ConfigError(f"{where(path, prop)}: <Property> needs name=")
            properties[prop.get("name", "")] = (prop.text or "").strip()
        entries.append(
            ListenerEntry(
                type=type_,
                name=name,
                order_id=_setting_int(path, el, _ORDER_ID),
                enabled=attr_bool(path, el, "enable", True),
                properties=properties,
                line=el.sourceline or 0,
            )
        )
    oauth = root.find("OAuth")
    settings: dict[str, object] = {}
    if oauth is not None:
        for key, row in _OAUTH.items():
            tag = row.element.split("/")[-1]
            el = oauth.find(tag)
            if el is not None:
                settings[key] = _oauth_value(path, el, tag, row)
        header = oauth.find("ClientCertificateHeader")
        if header is not None:
            settings["forwarded_certificates"] = _forwarded(path, header)
    pins = root.find("Dropins")
    if pins is not None:
        settings["allowed_wheels"] = _allowed_wheels(path, pins)
    return IdentitySettings(path=path, listeners=tuple(entries), **settings)  # type: ignore[arg-type]


def _oauth_value(path: Path, el: etree._Element, tag: str, row: Setting) -> str | int | float:
    """The text of one ``<OAuth>`` child, checked against its row of the table.

    The schema has refused what it can already; this holds for a file that bypassed it.
    """
    text = (el.text or "").strip()
    if row.minimum is None:
        if row.choices and text not in row.choices:
            raise ConfigError(f"{where(path, el)}: <{tag}> {text!r} is not valid")
        if not text:
            raise ConfigError(f"{where(path, el)}: <{tag}> must not be empty")
        return text
    cast = float if row.exclusive_minimum else int
    try:
        value = cast(text)
    except ValueError:
        raise ConfigError(f"{where(path, el)}: <{tag}> {text!r} is not valid") from None
    if value < row.minimum or (row.exclusive_minimum and value <= row.minimum):
        raise ConfigError(f"{where(path, el)}: <{tag}> must be positive")
    return value


def _forwarded(path: Path, el: etree._Element) -> ForwardedCertificates:
    """``<ClientCertificateHeader name= format= trustedProxies= chainHeader=/>``."""
    at = where(path, el)
    name = el.get("name", "").strip()
    if not _FIELD_NAME.fullmatch(name):
        raise ConfigError(f"{at}: <ClientCertificateHeader name={name!r}> is not a header field name")
    fmt = el.get("format", str(_FORWARDED_FORMAT.default))
    if fmt not in FORWARDED_FORMATS:
        raise ConfigError(
            f"{at}: <ClientCertificateHeader format={fmt!r}> must be one of {', '.join(FORWARDED_FORMATS)}"
        )
    proxies = []
    for item in filter(None, (p.strip() for p in el.get("trustedProxies", "").split(","))):
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{at}: trustedProxies: {item!r} is not an address or network") from None
    if not proxies:
        raise ConfigError(
            f"{at}: <ClientCertificateHeader> needs trustedProxies=, the addresses"
            " or networks of the proxies whose header is believed"
        )
    # RFC 9440 §2.3's chain field goes with its §2.2 leaf field; chainHeader="" turns it off.
    chain = el.get("chainHeader", "Client-Cert-Chain" if fmt == "rfc9440" else "").strip()
    if chain and not _FIELD_NAME.fullmatch(chain):
        raise ConfigError(f"{at}: <ClientCertificateHeader chainHeader={chain!r}> is not a header field name")
    if chain and fmt != "rfc9440":
        raise ConfigError(f'{at}: chainHeader= is RFC 9440\'s Client-Cert-Chain; it needs format="rfc9440"')
    if chain.lower() == name.lower():
        raise ConfigError(f"{at}: chainHeader= and name= must be different fields")
    return ForwardedCertificates(name, tuple(proxies), fmt, chain or None)


def _allowed_wheels(path: Path, dropins: etree._Element) -> frozenset[str]:
    """The pinned wheel hashes: ``<AllowedWheel sha256>`` and the lines of each listed file."""
    allowed = {el.get("sha256", "").lower() for el in dropins.iterfind("AllowedWheel")}
    for el in dropins.iterfind("AllowedWheelsFile"):
        pin_file = _path(path, (el.text or "").strip())
        try:
            lines = read_regular_file(pin_file, MAX_CONFIG_BYTES).decode("utf-8-sig").splitlines()
        except UnreadableFile as exc:
            raise ConfigError(f"{where(path, el)}: cannot read {pin_file}: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{where(path, el)}: {pin_file} is not UTF-8 text, as sha256sum writes it"
            ) from None
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            digest = text.split()[0].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{pin_file}:{number}: expected a SHA-256 in hex, as sha256sum prints")
            allowed.add(digest)
    return frozenset(allowed)


#: Connector addresses that listen on every interface: no client can use them as a host.
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


@functools.cache
def this_host() -> str:
    """This machine's name, for URLs of connectors bound to every address (looked up once)."""
    name = socket.getfqdn()
    return name if name and name not in WILDCARD_ADDRESSES else "localhost"


def _https(host: str, port: int, tls: bool = True) -> str:
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class PublicUrls:
    """The URLs the server tells clients (RFC 8414 §2, RFC 8705 §5), and why they were chosen.

    ``issuer`` is the public base URL: every endpoint URL in the metadata is under it.
    ``mtls`` is the base of ``mtls_endpoint_aliases``, or None when there are none.
    ``connectors`` is each connector's own URL, with a name for a wildcard address.
    ``reasons`` says in words what was chosen and why, for the startup output.
    """

    issuer: str
    mtls: str | None
    connectors: tuple[str, ...]
    reasons: tuple[str, ...]


def public_urls(
    server: ServerSettings, identity: IdentitySettings, ports: Sequence[int] | None = None
) -> PublicUrls:
    """The public URLs of *server* under *identity*'s settings.

    *ports* are the ports the connectors actually listen on (a connector may say port 0).
    ``<Issuer>`` wins; otherwise the first connector's URL is the issuer. A connector bound to
    a wildcard address (0.0.0.0, ::) is named by this machine's fully qualified name, since a
    client can do nothing with the wildcard. ``mtls_endpoint_aliases`` come from
    ``<MtlsBaseUrl>``, else from the first ``need`` connector when the issuer's is not one.
    Behind a proxy (``<Issuer>`` set) a local connector's URL is not what clients reach, so
    then only ``<MtlsBaseUrl>`` gives aliases.
    """
    connectors = server.connectors
    ports = list(ports) if ports else [c.port for c in connectors]
    own = tuple(
        _https(this_host() if c.address in WILDCARD_ADDRESSES else c.address, port, c.ssl_enabled)
        for c, port in zip(connectors, ports)
    )
    file = identity.path.name if identity.path else "identity.xml"

    def wildcard_note(index: int) -> str:
        address = connectors[index].address or "every address"
        return (
            f" (connector {address}:{ports[index]} listens on every address, so the URL names"
            f" this machine, {this_host()}; set <Issuer> in {file} to the URL clients use)"
        )

    reasons = []
    if identity.issuer:
        issuer = identity.issuer.rstrip("/")
        reasons.append(f"issuer {issuer}: <Issuer> in {file}")
    else:
        issuer = own[0]
        reasons.append(
            f"issuer {issuer}: the first connector's URL"
            + (
                wildcard_note(0)
                if connectors[0].address in WILDCARD_ADDRESSES
                else f"; <Issuer> in {file} sets the public URL"
            )
            + (
                ", which is plain HTTP behind the proxy: set <Issuer> to the https URL clients use"
                if not connectors[0].ssl_enabled
                else ""
            )
        )
    mtls = None
    need = next((i for i, c in enumerate(connectors) if c.client_auth == "need"), None)
    if identity.mtls_base_url:
        mtls = identity.mtls_base_url.rstrip("/")
        reasons.append(f"mtls_endpoint_aliases under {mtls}: <MtlsBaseUrl> in {file}")
    elif need is not None and need > 0:
        if identity.issuer:
            reasons.append(
                f"no mtls_endpoint_aliases: with <Issuer> set, the need connector's own"
                f" URL {own[need]} may not be what clients reach; set <MtlsBaseUrl> in"
                f" {file}"
            )
        else:
            mtls = own[need]
            reasons.append(
                f"mtls_endpoint_aliases under {mtls}: the first connector with"
                ' clientAuth="need"'
                + (wildcard_note(need) if connectors[need].address in WILDCARD_ADDRESSES else "")
            )
    if mtls == issuer:
        mtls = None
    return PublicUrls(issuer, mtls, own, tuple(reasons))

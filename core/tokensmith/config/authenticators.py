"""``conf/authenticators.xml``: who may call the admin API, and who may register clients.

The format is WSO2's ``security/authenticators.xml``: ``<Authenticator name= disabled=>`` with
a ``<Priority>`` and ``<Config><Parameter name=...>`` values. Authenticators are tried in
descending priority (the highest first; ties by name). The file is optional: without it,
``BasicAuthenticator`` alone is enabled and dynamic registration needs an initial access
token and grants no scope (``<DynamicClientRegistration scopes=>`` lists those it may). It is schema-checked (``authenticators.xsd``) and re-read on every reload (SIGHUP),
like identity.xml. An authenticator the file does not name keeps its default (Basic enabled
at priority 10, MutualSSL disabled); ``disabled="true"`` turns one off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokensmith.config.xml import ConfigError, parse_xml, where

__all__ = [
    "AdminAuthenticator",
    "AdminSettings",
    "load_authenticators",
    "MUTUAL_SSL",
    "BASIC",
    "REGISTRATION_MODES",
]

MUTUAL_SSL = "MutualSSLAuthenticator"
BASIC = "BasicAuthenticator"
REGISTRATION_MODES = ("disabled", "open", "initial_access_token")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1: a field name is a token
_PARAMETERS = {
    MUTUAL_SSL: {"UsernameHeader", "WhiteListEnabled", "WhiteList", "AdminCertificates"},
    BASIC: set(),
}


@dataclass(frozen=True)
class AdminAuthenticator:
    """One enabled ``<Authenticator>``."""

    name: str
    priority: int
    #: The header naming the user the request acts as; that user must hold the admin role.
    username_header: str = "UserName"
    whitelist_enabled: bool = False
    #: Subject DNs as written; ``app/admin.resolve`` normalizes them (RFC 4514).
    whitelist: frozenset[str] = frozenset()
    #: The PEM file of certificates accepted without chaining to the truststore.
    admin_certificates_file: Path | None = None
    #: SHA-256 (hex) of the DER of those certificates, filled in by ``app/admin.resolve``.
    admin_certificates: frozenset[str] = frozenset()
    #: Where the ``<Authenticator>`` is, for messages: "authenticators.xml:LINE".
    where: str = ""


@dataclass(frozen=True)
class AdminSettings:
    path: Path | None = None
    #: The enabled authenticators, in the order they are tried.
    authenticators: tuple[AdminAuthenticator, ...] = (AdminAuthenticator(BASIC, 10),)
    registration_mode: str = "initial_access_token"
    initial_access_token_lifetime: int = 86400
    #: The scopes a client may register for through dynamic registration (RFC 7591 §2:
    #: the server decides what a client gets); none by default. Administrators (admin API,
    #: CLI, console) are not limited by it.
    registration_scopes: frozenset[str] = frozenset()
    disabled: tuple[str, ...] = field(default=(MUTUAL_SSL,))

    def enabled(self, name: str) -> AdminAuthenticator | None:
        return next((a for a in self.authenticators if a.name == name), None)


def load_authenticators(path: Path) -> AdminSettings:
    """Read *path*; the defaults when it does not exist; ``ConfigError`` with file:line."""
    if not path.exists():
        return AdminSettings()
    root = parse_xml(path, "authenticators.xsd")
    if root.tag != "Authenticators":
        raise ConfigError(f"{where(path, root)}: root element must be <Authenticators>, not <{root.tag}>")
    enabled: list[AdminAuthenticator] = []
    disabled: list[str] = []
    seen: dict[str, int] = {}
    for el in root.iterfind("Authenticator"):
        name = el.get("name", "")
        if name in seen:
            raise ConfigError(f"{where(path, el)}: {name} is already configured on line {seen[name]}")
        seen[name] = el.sourceline or 0
        params: dict[str, str] = {}
        for param in el.iterfind("Config/Parameter"):
            pname = param.get("name", "")
            if pname not in _PARAMETERS[name]:
                allowed = ", ".join(sorted(_PARAMETERS[name])) or "none"
                raise ConfigError(
                    f"{where(path, param)}: {name} has no Parameter {pname!r} (it takes: {allowed})"
                )
            params[pname] = (param.text or "").strip()
        if el.get("disabled", "false") == "true":
            disabled.append(name)
            continue
        priority_el = el.find("Priority")
        priority = int((priority_el.text or "0").strip()) if priority_el is not None else 0
        if name == BASIC:
            enabled.append(AdminAuthenticator(name, priority))
            continue
        header = params.get("UsernameHeader", "UserName")
        if not _HEADER.fullmatch(header):
            raise ConfigError(f"{where(path, el)}: UsernameHeader {header!r} is not a header field name")
        flag = params.get("WhiteListEnabled", "false").lower()
        if flag not in ("true", "false"):
            raise ConfigError(f"{where(path, el)}: WhiteListEnabled must be true or false, not {flag!r}")
        whitelist = {dn.strip() for dn in re.split(r"[;\n]", params.get("WhiteList", "")) if dn.strip()}
        if flag == "true" and not whitelist:
            raise ConfigError(
                f"{where(path, el)}: WhiteListEnabled is true but WhiteList names no subject DN;"
                " no certificate could ever be accepted"
            )
        certs = params.get("AdminCertificates")
        enabled.append(
            AdminAuthenticator(
                name,
                priority,
                header,
                flag == "true",
                frozenset(whitelist),
                (path.parent / certs).resolve() if certs else None,
                where=where(path, el),
            )
        )
    # An authenticator the file does not name keeps its default: Basic on, MutualSSL off.
    if BASIC not in seen:
        enabled.append(AdminAuthenticator(BASIC, 10))
    if MUTUAL_SSL not in seen:
        disabled.append(MUTUAL_SSL)
    enabled.sort(key=lambda a: (-a.priority, a.name))
    settings: dict[str, object] = {}
    dcr = root.find("DynamicClientRegistration")
    if dcr is not None:
        settings["registration_mode"] = dcr.get("mode")
        if dcr.get("initialAccessTokenLifetime") is not None:
            lifetime = int(dcr.get("initialAccessTokenLifetime", "0"))
            if lifetime <= 0:
                raise ConfigError(f"{where(path, dcr)}: initialAccessTokenLifetime must be positive")
            settings["initial_access_token_lifetime"] = lifetime
        # The schema has checked each token's characters (RFC 6749 §3.3).
        settings["registration_scopes"] = frozenset(dcr.get("scopes", "").split())
    return AdminSettings(path, tuple(enabled), disabled=tuple(disabled), **settings)  # type: ignore[arg-type]

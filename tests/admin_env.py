"""A running server with the admin API guarded by both authenticators, for the admin tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pki
from conftest import Deployment, Server

AUTHENTICATORS_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- admin test configuration -->
<Authenticators>
    <Authenticator name="MutualSSLAuthenticator" disabled="{mtls_disabled}">
        <Priority>5</Priority>
        <Config>
            <Parameter name="UsernameHeader">UserName</Parameter>
            <Parameter name="WhiteListEnabled">{whitelist_enabled}</Parameter>
            <Parameter name="WhiteList">{whitelist}</Parameter>{admin_certificates}
        </Config>
    </Authenticator>
    <Authenticator name="BasicAuthenticator" disabled="false">
        <Priority>10</Priority>
    </Authenticator>
    <DynamicClientRegistration mode="{mode}"{scopes}/>
</Authenticators>
"""

#: The header every POST, PUT, PATCH and DELETE to /api/ must carry.
JSON = {"Content-Type": "application/json"}

PASSWORDS = {"root": "root-password-1", "viewer": "viewer-password-1", "plain": "plain-password-1"}


def write_authenticators(
    dep: Deployment,
    *,
    mtls: bool = True,
    mode: str = "initial_access_token",
    whitelist: str = "",
    admin_certificates: Path | None = None,
    scopes: str | None = None,
) -> None:
    """*admin_certificates*: a PEM file of certificates that MutualSSL accepts (copied into
    conf/ as admin-certs.pem); with neither it nor a *whitelist*, MutualSSL accepts nobody.
    *scopes*: what dynamic registration may grant (``scopes=``; none without it)."""
    parameter = ""
    if admin_certificates is not None:
        (dep.conf / "admin-certs.pem").write_bytes(admin_certificates.read_bytes())
        parameter = '\n            <Parameter name="AdminCertificates">admin-certs.pem</Parameter>'
    (dep.conf / "authenticators.xml").write_text(
        AUTHENTICATORS_XML.format(
            mtls_disabled="false" if mtls else "true",
            whitelist_enabled="true" if whitelist else "false",
            whitelist=whitelist,
            mode=mode,
            admin_certificates=parameter,
            scopes="" if scopes is None else f' scopes="{scopes}"',
        )
    )


def add_users(dep: Deployment) -> None:
    dep.cli("user", "add", "root", "--role", "admin", "--password-stdin", input=PASSWORDS["root"] + "\n")
    dep.cli("user", "add", "viewer", "--role", "reader", "--password-stdin", input=PASSWORDS["viewer"] + "\n")
    dep.cli("user", "add", "plain", "--password-stdin", input=PASSWORDS["plain"] + "\n")


@dataclass
class AdminEnv:
    server: Server
    root: Path
    authority: pki.Pair
    #: A client certificate issued by the truststore CA and listed in AdminCertificates:
    #: (PEM, key).
    cert: tuple[Path, Path]

    # Every state-changing /api/ request must say it sends JSON, also without a body (CSRF).
    def basic(self, user: str = "root") -> httpx.Client:
        return self.server.client(auth=(user, PASSWORDS[user]), headers=JSON)

    def mtls(self, user: str = "root") -> httpx.Client:
        return self.server.client(cert=self.cert, headers={"UserName": user, **JSON})

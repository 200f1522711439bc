"""The admin REST API under ``/api/``: JSON in and out, described at ``/api/openapi.json``.

Every call but the document itself is authenticated by the authenticators of
``conf/authenticators.xml`` (``config/authenticators.py``), tried in descending priority;
the first that recognises the request's credential decides who the caller is:

- ``MutualSSLAuthenticator``: the request's client certificate (from this connection's
  handshake, or a trusted proxy's header as for the OAuth endpoints) is one of the
  ``AdminCertificates``, or, only with ``WhiteListEnabled``, chains to the truststore and has
  a listed subject DN (``certificate_identity`` says why no less); the caller is the user the
  ``UsernameHeader`` header names, who must exist and hold the ``admin`` role: a certificate
  stands for an administrator, so any other role (``reader`` included) is answered 403
  whatever the method. The audit log records the certificate.
- ``BasicAuthenticator``: HTTP Basic (RFC 7617) with a user's name and password; failures
  count towards the user's lockout as the password grant's do.

Before any of them, a POST, PUT, PATCH or DELETE a cross-site page could have sent is
refused (``forgery_refusal``): 415 without ``Content-Type: application/json``, 403 with a
foreign ``Origin``. No credential, or a wrong one: 401 with ``WWW-Authenticate``. A user
whose role does not allow the call: 403 (``reader`` may only read). These authenticators
see ``/api/`` only: a client certificate at ``/oauth2/token`` is the mutual_tls client
authenticator's, whatever is enabled here. Every change goes through ``tokensmith.admin``
(shared with the CLI), which writes the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from quart import Blueprint, Response, current_app, g, request

from tokensmith.admin import clients as client_ops
from tokensmith.admin import configuration as config_ops
from tokensmith.admin import users as user_ops
from tokensmith.admin.audit import Actor, OperationError
from tokensmith.app.front import json_object, to_response
from tokensmith.app.openapi import document as openapi_document
from tokensmith.app.state import RELOAD_ALL, public_urls_of, runtime
from tokensmith.config.authenticators import (
    BASIC,
    MUTUAL_SSL,
    AdminAuthenticator,
    AdminSettings,
    load_authenticators,
)
from tokensmith.config.xml import MAX_CONFIG_BYTES, ConfigError, UnreadableFile, read_regular_file
from tokensmith.errors import InvalidClientMetadataError, OAuth2Error
from tokensmith.listeners.dropins import scan_dropins
from tokensmith.models import Client, User
from tokensmith.oauth.clientauth import client_certificates, storable_id
from tokensmith.oauth.clientmetadata import client_metadata
from tokensmith.oauth.grants import login_source
from tokensmith.oauth.messages import Answer
from tokensmith.oauth.registration import RegistrationError, parse_fingerprint, registered_certificate
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import CLIENT_ADDRESS
from tokensmith.security import hashing as kdf
from tokensmith.security.signing import SigningKeyError
from tokensmith.security.truststore import TruststoreError
from tokensmith.security.x509 import (
    CertificateError,
    load_pem_certificates,
    normalize_dn,
    validity_problem,
    verify_chain,
)

__all__ = [
    "admin",
    "client_view",
    "resolve",
    "load_admin_settings",
    "check_password",
    "check_certificate",
    "certificate_identity",
    "CertificateIdentity",
    "Unauthenticated",
    "reload_all",
]

log = logging.getLogger("tokensmith")

admin = Blueprint("admin", __name__, url_prefix="/api")

#: Roles that may call each kind of method: reading needs a role, changing needs admin.
_READ_ROLES = ("admin", "reader")
_SAFE = ("GET", "HEAD")


def resolve(settings: AdminSettings) -> AdminSettings:
    """*settings* with the WhiteList's DNs normalized (RFC 4514) and the AdminCertificates
    read and hashed; a mistake is a ``ConfigError`` naming authenticators.xml and the line."""
    resolved = []
    for item in settings.authenticators:
        if item.name != MUTUAL_SSL:
            resolved.append(item)
            continue
        try:
            whitelist = frozenset(normalize_dn(dn) for dn in item.whitelist)
        except CertificateError as exc:
            raise ConfigError(f"{item.where}: WhiteList: {exc}") from None
        hashes: frozenset[str] = frozenset()
        if item.admin_certificates_file is not None:
            try:
                data = read_regular_file(item.admin_certificates_file, MAX_CONFIG_BYTES)
                found = load_pem_certificates(data, source=str(item.admin_certificates_file))
            except UnreadableFile as exc:
                raise ConfigError(
                    f"{item.where}: AdminCertificates {item.admin_certificates_file}: cannot read: {exc}"
                ) from None
            except CertificateError as exc:
                raise ConfigError(f"{item.where}: AdminCertificates: {exc}") from None
            hashes = frozenset(
                hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest() for c in found
            )
        resolved.append(replace(item, whitelist=whitelist, admin_certificates=hashes))
        _warn_if_nobody(item, hashes)
    return replace(settings, authenticators=tuple(resolved))


#: Whether this process has warned that MutualSSL admits nobody: once, not on every reload.
_warned_nobody = False


def _warn_if_nobody(item: AdminAuthenticator, hashes: frozenset[str]) -> None:
    """One warning when the MutualSSLAuthenticator is enabled but names no certificate: it
    then accepts nobody (``certificate_identity``), which is likely not what was meant."""
    global _warned_nobody
    if item.whitelist_enabled or hashes or _warned_nobody:
        return
    _warned_nobody = True
    log.warning(
        "%s: %s is enabled with neither a WhiteList (WhiteListEnabled true) nor AdminCertificates:"
        " it accepts no certificate; a certificate that only chains to the truststore is not an"
        " admin's",
        item.where or "authenticators.xml",
        MUTUAL_SSL,
    )


def load_admin_settings(conf_dir: Path) -> AdminSettings:
    """conf/authenticators.xml, loaded and resolved: what the server runs with."""
    return resolve(load_authenticators(conf_dir / "authenticators.xml"))


@dataclass(frozen=True)
class Caller:
    username: str
    role: str | None
    via: str  # "basic" or "mutual_tls"
    certificate: CertificateIdentity | None = None


class Unauthenticated(Exception):
    """No authenticator recognised a valid credential: 401."""


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return to_response(Answer(status, body, headers or {}))


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": error, "error_description": description}, headers)


def _challenge(rt: Runtime) -> dict[str, str]:
    """RFC 9110 §11.6.1: a 401 names how to authenticate."""
    realm = f"{rt.identity.realm} admin"
    if rt.admin.enabled(BASIC):
        return {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}
    # RFC 9110 §11.6.1 requires a challenge even when the credential is a TLS certificate.
    return {"WWW-Authenticate": f'MutualTLS realm="{realm}"'}


async def _basic(rt: Runtime) -> Caller | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, colon, password = (
            base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("the Basic credentials are not base64 of user:password") from None
    if not colon or not username:
        raise Unauthenticated("the Basic credentials are not user:password")
    # The lockout counts by the client's own address, as the token endpoint's does: behind
    # a trusted proxy every request's peer is the proxy.
    forwarded = request.scope.get(CLIENT_ADDRESS, request.remote_addr)
    source = login_source(forwarded if isinstance(forwarded, str) else None) or "?"
    user = await check_password(rt, username, password, source)
    if user is None:
        raise Unauthenticated("authentication failed")
    return Caller(user.username, user.role, "basic")


async def check_password(rt: Runtime, username: str, password: str, source: str) -> User | None:
    """The user whose password this is, or None (the console's sign-in uses it too).

    As the password grant does: the attempt is counted before the password is checked, and
    an unknown or locked-out user costs the same KDF run as a wrong password, so that the
    answer's timing tells nothing about which users exist.
    """
    store = rt.storage
    user = await store.call(store.get_user, username)
    kdf.admit()
    taken = user is not None and await asyncio.to_thread(
        store.take_login_attempt, username, source, int(time.time()), rt.identity.login_policy
    )
    correct = await kdf.check(password, user.password_hash if user is not None and taken else None)
    if user is not None and taken:
        await asyncio.to_thread(store.end_login_attempt, username, source, correct)
    return user if user is not None and taken and correct else None


@dataclass(frozen=True)
class CertificateIdentity:
    """The admin certificate a request was accepted with: what the audit log records of it."""

    subject: str  # RFC 4514
    sha256: str  # of the DER, hex


def certificate_identity(rt: Runtime, settings: AdminAuthenticator) -> CertificateIdentity | None:
    """The request's client certificate when the MutualSSLAuthenticator admits it, None when
    there is no certificate; ``Unauthenticated`` when it is refused.

    Admitted are only:

    - a certificate listed in ``AdminCertificates`` (by the SHA-256 of its DER), inside its
      validity period;
    - with ``WhiteListEnabled``, a certificate that chains to the truststore (path
      validation, validity included) and whose subject DN is in the ``WhiteList``.

    This is stricter than WSO2's MutualSSLAuthenticator, from which the configuration comes,
    where with the WhiteList off any certificate the server's truststore trusts may act as any
    user. Here the truststore also anchors the certificates of OAuth ``tls_client_auth``
    clients (RFC 8705 §2.1): trusting it for the admin API too would let every such client
    act as an administrator. So a certificate that merely chains to the truststore is never
    enough: it must be named, by fingerprint (AdminCertificates) or subject (WhiteList).
    """
    chain, _ = client_certificates(request.scope, request.remote_addr, rt.identity.forwarded_certificates)
    if not chain:
        return None
    from cryptography import x509

    leaf = x509.load_der_x509_certificate(chain[0])
    digest = hashlib.sha256(chain[0]).hexdigest()
    now = datetime.now(UTC)
    if digest in settings.admin_certificates:
        problem = validity_problem(leaf, now)
        if problem is not None:
            raise Unauthenticated(f"the client certificate is an admin certificate but {problem}")
    elif not settings.whitelist_enabled:
        raise Unauthenticated("the client certificate is not one of the AdminCertificates")
    else:
        try:
            verify_chain(chain, rt.truststore.anchors(), now)
        except CertificateError as exc:
            raise Unauthenticated(f"the client certificate is not trusted: {exc}") from None
        if normalize_dn(leaf.subject) not in settings.whitelist:
            raise Unauthenticated("the client certificate's subject is not in the WhiteList")
    return CertificateIdentity(leaf.subject.rfc4514_string(), digest)


def check_certificate(rt: Runtime, settings: AdminAuthenticator) -> str | None:
    """The subject DN of the request's client certificate when the MutualSSLAuthenticator
    admits it (``certificate_identity``), None when there is no certificate;
    ``Unauthenticated`` when it is refused. The console's certificate sign-in uses it."""
    identity = certificate_identity(rt, settings)
    return None if identity is None else identity.subject


async def _mutual_tls(rt: Runtime, settings: AdminAuthenticator) -> Caller | None:
    certificate = certificate_identity(rt, settings)
    if certificate is None:
        return None
    username = request.headers.get(settings.username_header)
    if not username:
        raise Unauthenticated(f"the {settings.username_header} header names no user")
    user = await rt.storage.call(rt.storage.get_user, username)
    if user is None:
        # The same words whatever the reason: an admitted certificate must not learn which
        # user names exist.
        raise Unauthenticated("authentication failed")
    return Caller(user.username, user.role, "mutual_tls", certificate)


async def authenticate(rt: Runtime) -> Caller:
    """The caller, by the first authenticator (in priority order) that recognises its credential."""
    for settings in rt.admin.authenticators:
        caller = await (_basic(rt) if settings.name == BASIC else _mutual_tls(rt, settings))
        if caller is not None:
            return caller
    raise Unauthenticated("authentication required")


def _origin(url: str) -> str:
    """The RFC 6454 §6.2 serialization of *url*'s origin: scheme://host[:port], lowercase,
    without the default port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _own_origins() -> set[str]:
    """The origins this server is reached at: the one the request was sent to, and the
    public URLs (the issuer, the mTLS alias, each connector), for a proxy that rewrites Host."""
    urls = public_urls_of(current_app)
    found = {_origin(f"{request.scheme}://{request.host}"), _origin(urls.issuer)}
    found.update(_origin(url) for url in (urls.mtls, *urls.connectors) if url)
    return found


def forgery_refusal() -> Response | None:
    """Refuse a state-changing request a cross-site page could have sent (CSRF).

    A browser attaches credentials it cached (HTTP Basic, a client certificate) to any
    request, even one a page on another origin makes it send. Such a page can send, without
    asking, only a "simple" request (Fetch standard, CORS protocol): a form's POST with the
    Content-Type ``text/plain``, ``application/x-www-form-urlencoded`` or
    ``multipart/form-data``, and a text/plain form can spell a JSON object. Requiring
    ``Content-Type: application/json`` on every POST, PUT, PATCH and DELETE, with a body or
    not, forces a CORS preflight, which this server never answers with permission. And a
    browser names the page's origin in ``Origin`` (RFC 6454 §7): one that is not this
    server's own is refused outright. Clients that are not browsers (curl, scripts) send no
    Origin and only need the header.
    """
    if request.method in _SAFE or request.method == "OPTIONS":
        return None
    origin = request.headers.get("Origin")
    if origin is not None and _origin(origin) not in _own_origins():
        return _error(403, "forbidden", f"cross-origin request from {origin[:100]!r} refused")
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return _error(
            415,
            "unsupported_media_type",
            f"{request.method} requests to /api/ must send Content-Type: application/json"
            " (also without a body)",
        )
    return None


@admin.before_request
async def guard() -> Response | None:
    if request.path == "/api/openapi.json":
        return None
    rt = runtime(current_app)
    g.rt = rt
    refusal = forgery_refusal()
    if refusal is not None:
        return refusal
    try:
        caller = await authenticate(rt)
    except Unauthenticated as exc:
        return _error(401, "unauthorized", str(exc), _challenge(rt))
    # Issue 20: the MutualSSLAuthenticator acts as an administrator, never as a reader.
    allowed = _READ_ROLES if request.method in _SAFE and caller.via == "basic" else ("admin",)
    if caller.role not in allowed:
        why = (
            " through the MutualSSLAuthenticator, which needs the admin role" if caller.via != "basic" else ""
        )
        return _error(403, "forbidden", f"user {caller.username!r} (role {caller.role}) may not do this{why}")
    certificate = caller.certificate
    g.actor = Actor(
        caller.username,
        caller.via,
        request.remote_addr,
        () if certificate is None else (("subject", certificate.subject), ("sha256", certificate.sha256)),
    )
    return None


@admin.errorhandler(OperationError)
async def operation_error(error: OperationError) -> Response:
    return _error(error.status, error.error, str(error))


@admin.errorhandler(OAuth2Error)
async def oauth_error(error: OAuth2Error) -> Response:
    status = 400 if isinstance(error, InvalidClientMetadataError) else error.status_code
    return _json(status, error.body())


@admin.errorhandler(RegistrationError)
@admin.errorhandler(TruststoreError)
@admin.errorhandler(CertificateError)
@admin.errorhandler(SigningKeyError)
async def refused(error: Exception) -> Response:
    status = 409 if "already" in str(error) else 400
    return _error(
        status, "conflict" if status == 409 else "invalid_request", " ".join(str(error).splitlines())
    )


async def _body() -> dict[str, Any]:
    value = json_object(await request.get_data(cache=False, as_text=False, parse_form_data=False))
    if value is None:
        raise OperationError("the request body must be a JSON object")
    return value


def _field(body: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OperationError(f"{name} must be a {'string' if kind is str else kind.__name__}")
    if kind is str and not storable_id(value):
        # JSON may escape a lone surrogate ("\ud800"): no name, password or PEM has one, and
        # it cannot be encoded to be stored or parsed (issue 22).
        raise OperationError(f"{name} is not valid Unicode (a lone surrogate)")
    return value


def _rt() -> Runtime:
    return g.rt


def _actor() -> Actor:
    return g.actor


def client_view(client: Client) -> dict[str, Any]:
    """A client as the API shows it: its public view and its RFC 7591 document, never its
    secret hash."""
    view = client.public_view()
    view["client_metadata"] = client_metadata(client)
    return view


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An operation, in a thread: it hashes secrets and writes the store."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# -- the document ------------------------------------------------------------------------


@admin.get("/openapi.json")
async def openapi() -> Response:
    return _json(200, openapi_document(), {})


# -- service providers -------------------------------------------------------------------

_OPTIONS = {
    "bind_tokens": bool,
    "resource_server": bool,
    "token_format": str,
    "access_token_lifetime": int,
    "refresh_token_lifetime": int,
    "refresh_token_max_lifetime": int,
    "force": bool,
}


def _options(body: dict[str, Any]) -> client_ops.ClientOptions:
    raw = body.pop("options", None) or {}
    if not isinstance(raw, dict):
        raise OperationError("options must be a JSON object")
    for name, value in raw.items():
        kind = _OPTIONS.get(name)
        if kind is None:
            raise OperationError(f"unknown option {name!r}; known: {', '.join(_OPTIONS)}")
        out_of_range = isinstance(value, int) and kind is int and not 1 <= value <= 315360000
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or out_of_range:
            raise OperationError(
                f"option {name} must be a {kind.__name__}" + (" from 1 to 315360000" if kind is int else "")
            )
    if raw.get("token_format") not in (None, "opaque", "jwt"):
        raise OperationError("option token_format must be opaque or jwt")
    return client_ops.ClientOptions(**raw)


@admin.get("/clients")
async def list_clients() -> Response:
    store = _rt().storage
    return _json(200, [client_view(c) for c in await store.call(store.list_clients)])


@admin.post("/clients")
async def create_client() -> Response:
    body = await _body()
    options = _options(body)
    rt = _rt()
    created = await _run(client_ops.register_client, rt.storage, rt.listeners, body, _actor(), options)
    view = client_view(created.client)
    if created.secret is not None:
        view["client_secret"] = created.secret  # shown once, here
    view["warnings"] = list(created.warnings)
    return _json(201, view)


@admin.get("/clients/<client_id>")
async def get_client(client_id: str) -> Response:
    store = _rt().storage
    return _json(200, client_view(await store.call(client_ops.get_client, store, client_id)))


@admin.route("/clients/<client_id>", methods=["PATCH", "PUT"])
async def update_client(client_id: str) -> Response:
    body = await _body()
    rt = _rt()
    updated = await _run(
        client_ops.update_client,
        rt.storage,
        rt.listeners,
        client_id,
        body,
        _actor(),
        merge=request.method == "PATCH",
    )
    return _json(200, {**client_view(updated.client), "warnings": list(updated.warnings)})


@admin.delete("/clients/<client_id>")
async def delete_client(client_id: str) -> Response:
    await _run(client_ops.remove_client, _rt().storage, client_id, _actor())
    return _json(204, None)


@admin.post("/clients/<client_id>/certificates")
async def add_certificate(client_id: str) -> Response:
    body = await _body()
    pem = _field(body, "certificate", str)
    certs = [registered_certificate(c) for c in load_pem_certificates(pem.encode(), source="certificate")]
    rt = _rt()
    updated = await _run(
        client_ops.change_client_certificates, rt.storage, rt.listeners, client_id, certs, [], _actor()
    )
    return _json(201, {**client_view(updated.client), "warnings": list(updated.warnings)})


@admin.delete("/clients/<client_id>/certificates/<fingerprint>")
async def remove_certificate(client_id: str, fingerprint: str) -> Response:
    digest = parse_fingerprint(fingerprint)
    rt = _rt()
    updated = await _run(
        client_ops.change_client_certificates, rt.storage, rt.listeners, client_id, [], [digest], _actor()
    )
    return _json(200, client_view(updated.client))


@admin.post("/clients/<client_id>/secret")
async def reset_secret(client_id: str) -> Response:
    updated = await _run(client_ops.reset_secret, _rt().storage, client_id, _actor())
    return _json(200, {**client_view(updated.client), "client_secret": updated.secret})


@admin.post("/clients/<client_id>/revoke-tokens")
async def revoke_client_tokens(client_id: str) -> Response:
    count = await _run(client_ops.revoke_client_tokens, _rt().storage, client_id, _actor())
    return _json(200, {"revoked": count})


# -- users -------------------------------------------------------------------------------


@admin.get("/users")
async def list_users() -> Response:
    store = _rt().storage
    return _json(200, [u.public_view() for u in await store.call(store.list_users)])


@admin.post("/users")
async def create_user() -> Response:
    body = await _body()
    username = _field(body, "username", str)
    password = _field(body, "password", str)
    role = _field(body, "role", str, required=False)
    user = await _run(user_ops.add_user, _rt().storage, username, password, role, _actor())
    return _json(201, user.public_view())


@admin.get("/users/<username>")
async def get_user(username: str) -> Response:
    store = _rt().storage
    return _json(200, (await store.call(user_ops.get_user, store, username)).public_view())


@admin.patch("/users/<username>")
async def change_user(username: str) -> Response:
    body = await _body()
    if "role" not in body and "password" not in body:
        raise OperationError("give role (admin, reader or null), password, or both")
    # Both checked before either is changed.
    role = user_ops.check_role(_field(body, "role", str, required=False))
    password = user_ops.check_password_policy(_field(body, "password", str)) if "password" in body else None
    user = user_ops.get_user(_rt().storage, username)
    if password is not None:
        user = await _run(user_ops.set_password, _rt().storage, username, password, _actor())
    if "role" in body:
        user = await _run(user_ops.set_role, _rt().storage, username, role, _actor())
    return _json(200, user.public_view())


@admin.delete("/users/<username>")
async def delete_user(username: str) -> Response:
    await _run(user_ops.remove_user, _rt().storage, username, _actor())
    return _json(204, None)


@admin.post("/users/<username>/revoke-tokens")
async def revoke_user_tokens(username: str) -> Response:
    count = await _run(user_ops.revoke_user_tokens, _rt().storage, username, _actor())
    return _json(200, {"revoked": count})


@admin.post("/users/<username>/unlock")
async def unlock_user(username: str) -> Response:
    await _run(user_ops.unlock_user, _rt().storage, username, _actor())
    return _json(200, {"unlocked": username})


# -- truststore and signing keys ---------------------------------------------------------


def _anchor_view(entry: Any) -> dict[str, Any]:
    return {
        "alias": entry.alias,
        "subject": entry.subject,
        "sha256": entry.sha256_hex,
        "not_after": int(entry.not_after.timestamp()),
    }


@admin.get("/truststore")
async def list_truststore() -> Response:
    return _json(200, [_anchor_view(e) for e in _rt().truststore.list()])


@admin.post("/truststore")
async def import_truststore() -> Response:
    body = await _body()
    alias = _field(body, "alias", str)
    pem = _field(body, "certificate", str)
    rt = _rt()
    await _run(config_ops.import_anchor, rt.truststore, rt.storage, alias, pem.encode(), _actor())
    entry = next(e for e in rt.truststore.list() if e.alias == alias)
    return _json(201, _anchor_view(entry))


@admin.delete("/truststore/<alias>")
async def remove_truststore(alias: str) -> Response:
    rt = _rt()
    await _run(config_ops.remove_anchor, rt.truststore, rt.storage, alias, _actor())
    return _json(204, None)


def _keys_view(rt: Runtime) -> list[dict[str, Any]]:
    return [
        {
            "kid": key.kid,
            "alg": key.alg,
            "created": int(key.created.timestamp()) if key.created else None,
            "active": position == 0,
            "jwk": key.public_jwk(),
        }
        for position, key in enumerate(rt.signing.all())
    ]


@admin.get("/signing-keys")
async def list_signing_keys() -> Response:
    return _json(200, _keys_view(_rt()))


@admin.post("/signing-keys")
async def rotate_signing_key() -> Response:
    body = await _body()
    algorithm = _field(body, "algorithm", str, required=False) or "ES256"
    rt = _rt()
    kid = await _run(config_ops.rotate_signing_key, rt.signing, rt.storage, algorithm, _actor())
    return _json(201, next(k for k in _keys_view(rt) if k["kid"] == kid))


@admin.delete("/signing-keys/<kid>")
async def retire_signing_key(kid: str) -> Response:
    rt = _rt()
    await _run(config_ops.retire_signing_key, rt.signing, rt.storage, kid, _actor())
    return _json(204, None)


# -- listeners and dropins ---------------------------------------------------------------


def _listeners_view(rt: Runtime) -> list[dict[str, Any]]:
    return [item.describe() for item in rt.listeners]


def _known(rt: Runtime) -> list[tuple[str, str]]:
    return [(item.type, item.name) for item in rt.listeners]


def reload_all() -> None:
    """Reload every process serving this configuration, as SIGHUP does (``RELOAD_ALL``)."""
    current_app.extensions[RELOAD_ALL]()


@admin.get("/listeners")
async def list_listeners() -> Response:
    return _json(200, _listeners_view(_rt()))


@admin.patch("/listeners/<family>/<name>")
async def change_listener(family: str, name: str) -> Response:
    body = await _body()
    enabled = _field(body, "enabled", bool, required=False)
    order = _field(body, "orderId", int, required=False)
    if enabled is None and order is None:
        raise OperationError("give enabled (true or false) or orderId")
    rt = _rt()
    await _run(
        config_ops.change_listener,
        rt.identity.path,
        rt.storage,
        family,
        name,
        _actor(),
        enabled=enabled,
        order=order,
        known=_known(rt),
    )
    reload_all()
    return _json(202, {"reloading": True})


@admin.put("/listeners/order")
async def reorder_listeners() -> Response:
    body = await _body()
    order = _field(body, "order", list)
    if not all(isinstance(item, str) for item in order):
        raise OperationError("order must be a list of type/name strings")
    rt = _rt()
    await _run(config_ops.reorder_listeners, rt.identity.path, rt.storage, order, _actor(), _known(rt))
    reload_all()
    return _json(202, {"reloading": True})


@admin.get("/dropins")
async def list_dropins() -> Response:
    rt = _rt()
    pins = rt.identity.allowed_wheels
    loaded = {item.source.sha256: item for item in rt.listeners}
    try:
        wheels = scan_dropins(rt.config.server.dropins)
    except ConfigError as exc:
        raise OperationError(str(exc), 409, "conflict") from None
    return _json(
        200,
        {
            "pinning": pins is not None,
            "wheels": [
                {
                    "file": info.path.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "sha256": info.sha256,
                    "pinned": pins is not None and info.sha256 in pins,
                    "loaded": info.sha256 in loaded,
                    "listeners": [
                        item.describe() for item in rt.listeners if item.source.sha256 == info.sha256
                    ],
                }
                for info in wheels
            ],
        },
    )


def _pinned(rt: Runtime, added: list[str]) -> Response:
    if added:
        reload_all()
    return _json(202 if added else 200, {"reloading": bool(added), "pinned": added})


@admin.post("/dropins/pins")
async def pin_dropins() -> Response:
    """Pin several wheels at once: pinning turns on with the first pin, and then every wheel
    in dropins/ must be pinned, so turning it on takes all of their digests together."""
    body = await _body()
    digests = _field(body, "sha256", list)
    if not digests or not all(isinstance(item, str) for item in digests):
        raise OperationError("sha256 must be a list of SHA-256 digests (hex)")
    rt = _rt()
    added = await _run(
        config_ops.pin_wheels, rt.identity.path, rt.config.server.dropins, rt.storage, digests, _actor()
    )
    return _pinned(rt, added)


@admin.put("/dropins/<sha256>/pin")
async def pin_dropin(sha256: str) -> Response:
    rt = _rt()
    added = await _run(
        config_ops.pin_wheels, rt.identity.path, rt.config.server.dropins, rt.storage, [sha256], _actor()
    )
    return _pinned(rt, added)


@admin.delete("/dropins/<sha256>/pin")
async def unpin_dropin(sha256: str) -> Response:
    rt = _rt()
    await _run(
        config_ops.unpin_wheel, rt.identity.path, rt.config.server.dropins, rt.storage, sha256, _actor()
    )
    reload_all()
    return _json(202, {"reloading": True})


# -- registration and audit --------------------------------------------------------------


@admin.post("/registration/initial-access-tokens")
async def initial_access_token() -> Response:
    rt = _rt()
    value, expires_at = await _run(
        config_ops.issue_initial_access_token, rt.storage, rt.admin.initial_access_token_lifetime, _actor()
    )
    return _json(201, {"initial_access_token": value, "expires_at": expires_at})


@admin.get("/audit")
async def audit() -> Response:
    try:
        limit = int(request.args.get("limit", "100"))
        before = request.args.get("before")
        before_id = int(before) if before is not None else None
    except ValueError:
        raise OperationError("limit and before must be whole numbers") from None
    if not 1 <= limit <= 1000:
        raise OperationError("limit must be from 1 to 1000")
    if before_id is not None and not 0 <= before_id <= 2**62:
        raise OperationError("before must be an entry id, from 0 to 2**62")
    store = _rt().storage
    return _json(200, [entry.view() for entry in await store.call(store.list_audit, limit, before_id)])

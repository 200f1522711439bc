"""Service providers (OAuth clients): register, change, rotate certificates, reset the
secret, remove, revoke their tokens. Shared by the admin API, dynamic registration (RFC
7591/7592) and the CLI.

A client is registered from its RFC 7591 metadata document (``oauth/clientmetadata.py``);
what RFC 7591 has no member for (token binding, lifetimes, the resource-server flag) comes
as ``ClientOptions``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tokensmith.admin.audit import Actor, OperationError, not_found, record
from tokensmith.errors import InvalidClientMetadataError
from tokensmith.listeners.registry import ListenerSet
from tokensmith.models import Client, RegisteredCertificate, Storage
from tokensmith.oauth import clientauth
from tokensmith.oauth.clientmetadata import apply_metadata, client_metadata
from tokensmith.oauth.registration import (
    RegistrationError,
    change_certificates,
    check_grant_types,
    check_registration,
    check_text,
    validity_warnings,
)
from tokensmith.security import hashing as kdf

__all__ = [
    "ClientOptions",
    "Registered",
    "SECRET_METHODS",
    "KNOWN_METHODS",
    "new_client_id",
    "register_client",
    "change_client",
    "update_client",
    "change_client_certificates",
    "reset_secret",
    "remove_client",
    "revoke_client_tokens",
    "get_client",
]

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
SELF_SIGNED = "self_signed_tls_client_auth"
PKI = "tls_client_auth"
KNOWN_METHODS = (*SECRET_METHODS, PKI, SELF_SIGNED, "none")


@dataclass(frozen=True)
class ClientOptions:
    """What an administrator sets beyond RFC 7591 (``sp add``'s options)."""

    bind_tokens: bool = False
    resource_server: bool = False
    token_format: str | None = None  # "opaque", "jwt" or None: identity.xml's default
    access_token_lifetime: int | None = None
    refresh_token_lifetime: int | None = None
    refresh_token_max_lifetime: int | None = None
    #: Register a public client for the password grant all the same (RFC 9700 §2.4).
    force: bool = False


@dataclass(frozen=True)
class Registered:
    client: Client
    #: The client secret, for the one answer that shows it; None for other methods.
    secret: str | None
    warnings: tuple[str, ...] = ()


def new_client_id() -> str:
    """A random client_id (144 bits) that never starts with '-' (a command line would read
    it as an option)."""
    while (client_id := secrets.token_urlsafe(18)).startswith("-"):
        pass
    return client_id


def _metadata_error(exc: Exception) -> OperationError:
    text = exc.description if isinstance(exc, InvalidClientMetadataError) else str(exc)
    return OperationError(text or "the client metadata was refused", 400, "invalid_client_metadata")


def _check(client: Client, listeners: ListenerSet | None) -> None:
    """What every registered client must satisfy, and its authenticator's own check."""
    methods = list(KNOWN_METHODS) + (clientauth.auth_methods_supported(listeners) if listeners else [])
    method = client.token_endpoint_auth_method
    if method not in methods:
        raise OperationError(
            f"token_endpoint_auth_method {method!r} is not served here; use one of {', '.join(dict.fromkeys(methods))}",
            400,
            "invalid_client_metadata",
        )
    if listeners is not None:
        # First: the method's own authenticator says best what its clients need (the
        # mutual_tls plugin for RFC 8705's subject and certificates); what follows is the
        # floor that holds even without the plugins loaded.
        clientauth.check_client_metadata(listeners, client_metadata(client))  # InvalidClientMetadataError
    try:
        check_registration(method, client.grant_types)
        check_text(client.name, "client_name")
    except RegistrationError as exc:
        raise _metadata_error(exc) from None
    if method == SELF_SIGNED and not client.certificates:
        raise OperationError(
            f"a {SELF_SIGNED} client needs its certificate: a JWK with x5c in jwks (RFC 8705 §2.2)",
            400,
            "invalid_client_metadata",
        )
    if method == PKI and client.tls_subject is None:
        raise OperationError(
            f"a {PKI} client needs the one subject its certificate carries (RFC 8705 §2.1.2):"
            " tls_client_auth_subject_dn or a tls_client_auth_san_* member",
            400,
            "invalid_client_metadata",
        )
    if client.tls_subject is not None and method != PKI:
        raise OperationError(
            f"{client.tls_subject[0]} is for {PKI} clients, not {method}", 400, "invalid_client_metadata"
        )


def register_client(
    store: Storage,
    listeners: ListenerSet | None,
    document: Mapping[str, Any],
    actor: Actor,
    options: ClientOptions = ClientOptions(),
) -> Registered:
    """Register a client from its RFC 7591 *document*; its secret, if it has one, is in the
    answer only. Refusals: ``OperationError`` (``invalid_client_metadata``) or the
    authenticator's ``InvalidClientMetadataError``."""
    method = document.get("token_endpoint_auth_method")
    grant_types = document.get("grant_types")
    if not isinstance(method, str) or not isinstance(grant_types, list):
        raise OperationError(
            "token_endpoint_auth_method and grant_types are required", 400, "invalid_client_metadata"
        )
    try:
        warnings = check_grant_types([str(g) for g in grant_types], method, options.force)
    except RegistrationError as exc:
        raise _metadata_error(exc) from None
    if options.bind_tokens and method not in SECRET_METHODS:
        raise OperationError(
            f"bind_tokens is for {' and '.join(SECRET_METHODS)} clients", 400, "invalid_client_metadata"
        )
    secret = secrets.token_urlsafe(32) if method in SECRET_METHODS else None
    client = Client(
        client_id=new_client_id(),
        name=str(document.get("client_name", "")),
        token_endpoint_auth_method=method,
        grant_types=(),
        secret_hash=kdf.hash_secret(secret) if secret else None,
        bind_tokens=options.bind_tokens,
        created_at=int(time.time()),
        access_token_lifetime=options.access_token_lifetime,
        refresh_token_lifetime=options.refresh_token_lifetime,
        jwt_access_tokens=None if options.token_format is None else options.token_format == "jwt",
        resource_server=options.resource_server,
        refresh_token_max_lifetime=options.refresh_token_max_lifetime,
    )
    try:
        client = apply_metadata(client, document)
    except InvalidClientMetadataError as exc:
        raise _metadata_error(exc) from None
    _check(client, listeners)
    store.add_client(client)
    record(store, actor, "client.create", client.client_id, name=client.name, method=method)
    return Registered(client, secret, (*warnings, *validity_warnings(client.certificates)))


def get_client(store: Storage, client_id: str) -> Client:
    """The client *client_id*; ``not_found`` when there is none, or when the id is one no client
    can have (``clientauth.storable_id``: a CLI argument that is not UTF-8 comes as lone
    surrogates, which the store cannot even look up)."""
    client = store.get_client(client_id) if clientauth.storable_id(client_id) else None
    if client is None:
        raise not_found(f"no service provider with client_id {client_id!r}")
    return client


def _revoke_dropped(store: Storage, before: Client, after: Client) -> None:
    """A removed certificate was the client's credential: the tokens bound to it end with it
    (RFC 8705 §3.1), as removing a client revokes its tokens."""
    kept = {c.sha256 for c in after.certificates}
    for cert in before.certificates:
        if cert.sha256 not in kept:
            thumbprint = base64.urlsafe_b64encode(bytes.fromhex(cert.sha256)).decode().rstrip("=")
            store.revoke_bound_tokens(before.client_id, thumbprint)


def _store_update(store: Storage, before: Client, after: Client) -> None:
    """Write *after* in place of *before*, a compare-and-swap on the secret and the
    certificates: a change computed from a read that another request has since overtaken (a
    secret reset, a certificate removed, by another worker too) is refused with 409 rather
    than writing back the old secret or certificate."""
    if not store.update_client(after, expected=before):
        if store.get_client(before.client_id) is None:
            raise not_found(f"service provider {before.client_id!r} was removed meanwhile")
        raise OperationError(
            f"service provider {before.client_id!r} was changed meanwhile by another request (its"
            " secret or certificates); read it again and repeat the change",
            409,
            "conflict",
        )
    _revoke_dropped(store, before, after)


def _check_changed_grant_types(before: Client, after: Client) -> None:
    """``check_grant_types`` for an update, as for a registration: an update (RFC 7592 PUT,
    the admin API's PATCH or PUT, ``sp update``) must not give a client grant types its
    registration would have refused. A public client registered for the password grant with
    *force* keeps it through updates that leave it; it cannot gain it by one."""
    try:
        check_grant_types(
            list(after.grant_types),
            after.token_endpoint_auth_method,
            force="password" in before.grant_types,
        )
    except RegistrationError as exc:
        raise _metadata_error(exc) from None


def change_client(
    store: Storage,
    listeners: ListenerSet | None,
    client_id: str,
    actor: Actor,
    *,
    document: Mapping[str, Any] | None = None,
    merge: bool = True,
    add: Sequence[RegisteredCertificate] = (),
    remove: Sequence[str] = (),
) -> Registered:
    """Change a client in one store write: certificates added and removed (rotation; the last
    certificate of a ``self_signed_tls_client_auth`` client cannot go), then its RFC 7591
    metadata: with *merge* only the members of *document* given (``null`` removes one),
    without it *document* is the whole new metadata (RFC 7592 §2.2). The method cannot change:
    the client's credential belongs to it. Tokens bound to a removed certificate are revoked
    (RFC 8705 §3.1)."""
    client = get_client(store, client_id)
    updated = client
    if add or remove:
        try:
            updated = change_certificates(client, add, remove)
        except RegistrationError as exc:
            status = 404 if "has no certificate" in str(exc) else 409 if "already" in str(exc) else 400
            raise OperationError(
                str(exc), status, "not_found" if status == 404 else "invalid_request"
            ) from None
    if document is not None:
        method = document.get("token_endpoint_auth_method", client.token_endpoint_auth_method)
        if method != client.token_endpoint_auth_method:
            raise OperationError(
                "token_endpoint_auth_method cannot be changed by sp update or an update through the API:"
                " register the client again and remove this one",
                400,
                "invalid_client_metadata",
            )
        if not merge:
            document = {"token_endpoint_auth_method": method, **document}
        try:
            updated = apply_metadata(updated, document, merge=merge)
        except InvalidClientMetadataError as exc:
            raise _metadata_error(exc) from None
        _check_changed_grant_types(client, updated)
    _check(updated, listeners)
    _store_update(store, client, updated)
    details: dict[str, Any] = {}
    if add or remove:
        details.update(added=[c.sha256 for c in add], removed=list(remove))
    if document is not None:
        details["members"] = sorted(document)
    record(
        store, actor, "client.update" if document is not None else "client.certificates", client_id, **details
    )
    before = {c.sha256 for c in client.certificates}
    return Registered(
        updated, None, tuple(validity_warnings([c for c in updated.certificates if c.sha256 not in before]))
    )


def update_client(
    store: Storage,
    listeners: ListenerSet | None,
    client_id: str,
    document: Mapping[str, Any],
    actor: Actor,
    *,
    merge: bool = True,
) -> Registered:
    """``change_client`` with metadata only."""
    return change_client(store, listeners, client_id, actor, document=document, merge=merge)


def change_client_certificates(
    store: Storage,
    listeners: ListenerSet | None,
    client_id: str,
    add: Sequence[RegisteredCertificate],
    remove: Sequence[str],
    actor: Actor,
) -> Registered:
    """``change_client`` with certificates only."""
    return change_client(store, listeners, client_id, actor, add=add, remove=remove)


def reset_secret(store: Storage, client_id: str, actor: Actor) -> Registered:
    """A new client secret, shown once; the old one stops working at once (the server's
    caches are keyed by the stored hash)."""
    client = get_client(store, client_id)
    if client.token_endpoint_auth_method not in SECRET_METHODS:
        raise OperationError(
            f"client {client_id} uses {client.token_endpoint_auth_method}, which has no secret;"
            f" secrets are for {' and '.join(SECRET_METHODS)}",
            409,
            "invalid_request",
        )
    secret = secrets.token_urlsafe(32)
    updated = replace(client, secret_hash=kdf.hash_secret(secret))
    # A compare-and-swap on the stored hash (``_store_update``): of resets that read the same
    # secret (parallel requests, two workers), one replaces it and the others are refused,
    # rather than each answering with a secret that only one of them made current.
    _store_update(store, client, updated)
    record(store, actor, "client.reset_secret", client_id)
    return Registered(updated, secret)


def remove_client(store: Storage, client_id: str, actor: Actor) -> None:
    """Remove the client and revoke every token issued to it (RFC 7592 §2.3)."""
    if not clientauth.storable_id(client_id) or not store.remove_client(client_id):
        raise not_found(f"no service provider with client_id {client_id!r}")
    record(store, actor, "client.delete", client_id)


def revoke_client_tokens(store: Storage, client_id: str, actor: Actor) -> int:
    """Revoke every token and grant of the client, keeping the client registered."""
    get_client(store, client_id)
    count = store.revoke_client_tokens(client_id)
    record(store, actor, "client.revoke_tokens", client_id, count=count)
    return count

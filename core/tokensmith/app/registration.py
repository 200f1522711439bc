"""Dynamic client registration: ``POST /oauth2/register`` (RFC 7591) and the client
configuration endpoint ``/oauth2/register/<client_id>`` (RFC 7592).

conf/authenticators.xml's ``<DynamicClientRegistration mode=...>`` decides who may register:
``open`` (anyone), ``initial_access_token`` (a bearer token an admin issued, RFC 7591 §3,
each usable once) or ``disabled`` (404). A registered client gets a registration access
token (RFC 7592 §3) for reading, replacing and deleting its registration; the server keeps
only its SHA-256. ``<DynamicClientRegistration scopes=>`` lists the scopes a client may
register for itself (none by default). Registration goes through ``admin.clients``, like the
admin API and the CLI: the same checks, the client's authenticator's
``check_client_metadata``, an audit entry.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

from quart import Blueprint, Response, current_app, request

from tokensmith.admin import clients as client_ops
from tokensmith.admin.audit import Actor, OperationError
from tokensmith.app.front import json_object, to_response
from tokensmith.app.state import public_urls_of, runtime
from tokensmith.errors import InvalidClientMetadataError, InvalidRedirectUriError, OAuth2Error
from tokensmith.models import Client
from tokensmith.oauth.clientmetadata import (
    STANDARD_MEMBERS,
    check_redirect_uri,
    client_metadata,
    is_namespaced,
)
from tokensmith.oauth.endpoints import REGISTRATION_PATH
from tokensmith.oauth.grants import token_hash
from tokensmith.oauth.messages import Answer
from tokensmith.oauth.runtime import Runtime

__all__ = ["registration", "REGISTER_PATH"]

REGISTER_PATH = REGISTRATION_PATH

registration = Blueprint("registration", __name__)


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.answer = Answer(status, {"error": error, "error_description": description}, headers or {})


def _bearer_challenge(error: str | None = None) -> dict[str, str]:
    # RFC 6750 §3: the initial and registration access tokens are bearer tokens.
    value = 'Bearer realm="registration"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def _bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def _document() -> dict[str, Any]:
    value = json_object(await request.get_data(cache=False, as_text=False, parse_form_data=False))
    if value is None:
        # RFC 7591 §3.2.2: invalid_client_metadata, like any other malformed body.
        raise InvalidClientMetadataError("the request body must be a JSON object (RFC 7591 §3.1)")
    return value


def _understood(document: Mapping[str, Any]) -> dict[str, Any]:
    """The members this server understands, with RFC 7591's defaults replaced where this
    server cannot serve them.

    RFC 7591 §2: the server "MUST ignore any client metadata sent by the client that it does
    not understand" (a plugin's namespaced members are understood by that plugin), and
    §3.2.1 lets it replace requested values with suitable ones, which the response then
    shows: ``token_endpoint_auth_method`` defaults to ``client_secret_basic``, and
    ``grant_types`` to ``client_credentials`` (the RFC's default, ``authorization_code``,
    needs ``redirect_uris``, which most machine clients do not have). ``response_types``
    must agree with ``grant_types`` (§2.1): ``["code"]`` with ``authorization_code`` (the
    default then), none without it.
    """
    kept = {
        name: value
        for name, value in document.items()
        if (name in STANDARD_MEMBERS or is_namespaced(name)) and value is not None
    }
    _check_redirect_uris(kept.get("redirect_uris"))
    kept.setdefault("token_endpoint_auth_method", "client_secret_basic")
    if "grant_types" not in kept:
        kept["grant_types"] = ["client_credentials"]
    code = isinstance(kept["grant_types"], list) and "authorization_code" in kept["grant_types"]
    response_types = kept.pop("response_types", None)
    if response_types is not None and response_types != (["code"] if code else []):
        raise InvalidClientMetadataError(
            'response_types must be ["code"] with the authorization_code grant and empty'
            " without it (RFC 7591 §2.1); no other response type is served"
        )
    if code:
        kept["response_types"] = ["code"]
    return kept


def _check_scope(rt: Runtime, document: Mapping[str, Any], held: tuple[str, ...] = ()) -> None:
    """The registration scope policy: a client registering itself (or replacing its
    registration, RFC 7592 §2.2) may ask only for scopes ``<DynamicClientRegistration
    scopes=>`` lists, and on an update for those it already has (an administrator may have
    granted more); none by default. RFC 7591 §2 leaves what a client gets to the server;
    a scope it may not have is refused with ``invalid_client_metadata`` (§3.2.2) naming it,
    rather than dropped, so that the client does not take a narrower registration for the one
    it asked for. Administrators (admin API, CLI, console) are not limited by it."""
    scope = document.get("scope")
    if not isinstance(scope, str):
        return  # absent; any other type is refused with the rest of the metadata
    allowed = rt.admin.registration_scopes
    refused = [s for s in dict.fromkeys(scope.split()) if s not in allowed and s not in held]
    if refused:
        named = " ".join(refused)
        raise InvalidClientMetadataError(
            f"scope: {named[:200]!r} may not be registered dynamically here;"
            " an administrator grants other scopes"
        )


def _check_redirect_uris(uris: object) -> None:
    """RFC 7591 §3.2.2 ``invalid_redirect_uri`` for a redirection URI the authorization
    endpoint would not redirect to (``clientmetadata.check_redirect_uri``: absolute, no
    fragment, https or http to 127.0.0.1 or [::1])."""
    if uris is None:
        return
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise InvalidRedirectUriError("redirect_uris must be a list of URIs")
    for uri in uris:
        try:
            check_redirect_uri(uri)
        except InvalidClientMetadataError as exc:
            raise InvalidRedirectUriError(exc.description) from None


def _answer(rt: Runtime, client: Client, status: int, *, secret: str | None, token: str | None) -> Answer:
    """RFC 7591 §3.2.1 / RFC 7592 §3: the client's metadata with what the server assigned."""
    body: dict[str, Any] = client_metadata(client)
    body["client_id_issued_at"] = client.created_at
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: 0, it does not expire
    if token is not None:
        body["registration_access_token"] = token
    body["registration_client_uri"] = (
        f"{public_urls_of(current_app).issuer}{REGISTER_PATH}/{client.client_id}"
    )
    return Answer(status, body)


def _mode(rt: Runtime) -> str:
    if rt.admin.registration_mode == "disabled":
        raise _Refused(404, "not_found", "dynamic client registration is disabled")
    return rt.admin.registration_mode


async def _issue_registration_token(rt: Runtime, client_id: str) -> str:
    token = secrets.token_urlsafe(32)
    await asyncio.to_thread(
        rt.storage.add_registration_token, token_hash(token), "registration", client_id, None
    )
    return token


@registration.post(REGISTER_PATH)
async def register() -> Response:
    """RFC 7591 §3.1: register a client; 201 with its metadata and credentials."""
    rt = runtime(current_app)
    mode = _mode(rt)
    initial = _bearer() if mode == "initial_access_token" else None
    if mode == "initial_access_token" and initial is None:
        raise _Refused(401, "invalid_token", "an initial access token is required", _bearer_challenge())
    not_valid = _Refused(
        401, "invalid_token", "the initial access token is not valid", _bearer_challenge("invalid_token")
    )
    # The token is checked before the body is read: whoever holds none gets nothing parsed.
    found = (
        await rt.storage.call(rt.storage.find_registration_token, token_hash(initial), "initial")
        if initial
        else None
    )
    if initial is not None and found is None:
        raise not_valid
    document = _understood(await _document())
    _check_scope(rt, document)
    actor = Actor("registration", "initial_access_token" if initial else "open", request.remote_addr)
    if initial is not None and found is not None:
        # Taken before the registration, in one statement, so that two registrations racing
        # with one token cannot both succeed; put back if the registration is refused.
        taken = await asyncio.to_thread(rt.storage.delete_registration_tokens, token_hash=token_hash(initial))
        if taken == 0:
            raise not_valid
        try:
            created = await asyncio.to_thread(
                client_ops.register_client, rt.storage, rt.listeners, document, actor
            )
        except BaseException:
            await asyncio.to_thread(
                rt.storage.add_registration_token, token_hash(initial), "initial", None, found[1]
            )
            raise
    else:
        created = await asyncio.to_thread(
            client_ops.register_client, rt.storage, rt.listeners, document, actor
        )
    token = await _issue_registration_token(rt, created.client.client_id)
    return to_response(_answer(rt, created.client, 201, secret=created.secret, token=token))


async def _authorized(rt: Runtime, client_id: str) -> Client:
    """RFC 7592 §2: the registration access token must be this client's; otherwise 401
    (also for a client that does not exist, §2.1)."""
    token = _bearer()
    if token is None:
        raise _Refused(401, "invalid_token", "the registration access token is required", _bearer_challenge())
    found = await rt.storage.call(rt.storage.find_registration_token, token_hash(token), "registration")
    client = (
        await rt.storage.call(rt.storage.get_client, client_id)
        if found is not None and found[0] == client_id
        else None
    )
    if client is None:
        raise _Refused(
            401,
            "invalid_token",
            "the registration access token is not valid",
            _bearer_challenge("invalid_token"),
        )
    return client


@registration.get(f"{REGISTER_PATH}/<client_id>")
async def read(client_id: str) -> Response:
    """RFC 7592 §2.1: the client's current registration (its secret is not shown again)."""
    rt = runtime(current_app)
    _mode(rt)
    client = await _authorized(rt, client_id)
    return to_response(_answer(rt, client, 200, secret=None, token=None))


@registration.put(f"{REGISTER_PATH}/<client_id>")
async def replace(client_id: str) -> Response:
    """RFC 7592 §2.2: replace the client's metadata; members left out are removed. The
    body's client_id must be the client's; a client_secret in it, if any, is ignored (the
    secret is never changed this way)."""
    rt = runtime(current_app)
    _mode(rt)
    client = await _authorized(rt, client_id)
    raw = await _document()
    if raw.get("client_id") != client.client_id:
        raise InvalidClientMetadataError("client_id in the body must be the client's own (RFC 7592 §2.2)")
    document = _understood(raw)
    _check_scope(rt, document, held=client.scopes)
    actor = Actor(f"client:{client_id}", "registration_access_token", request.remote_addr)
    updated = await asyncio.to_thread(
        client_ops.update_client, rt.storage, rt.listeners, client_id, document, actor, merge=False
    )
    return to_response(_answer(rt, updated.client, 200, secret=None, token=None))


@registration.delete(f"{REGISTER_PATH}/<client_id>")
async def deregister(client_id: str) -> Response:
    """RFC 7592 §2.3: remove the client; its tokens and registration token go with it."""
    rt = runtime(current_app)
    _mode(rt)
    await _authorized(rt, client_id)
    actor = Actor(f"client:{client_id}", "registration_access_token", request.remote_addr)
    await asyncio.to_thread(client_ops.remove_client, rt.storage, client_id, actor)
    return to_response(Answer(204, None))


@registration.errorhandler(_Refused)
async def refused(error: _Refused) -> Response:
    return to_response(error.answer)


@registration.errorhandler(OperationError)
async def operation_error(error: OperationError) -> Response:
    if error.error == "conflict":
        # Not the metadata's fault: a change of the client (an administrator's secret reset
        # or certificate removal) overtook this request; the client reads and repeats it.
        return to_response(Answer(409, {"error": "conflict", "error_description": str(error)}))
    # RFC 7591 §3.2.2: every refusal of the metadata is invalid_client_metadata.
    status = error.status if error.status != 409 else 400
    code = error.error if error.error == "invalid_client_metadata" else "invalid_client_metadata"
    return to_response(Answer(status, {"error": code, "error_description": str(error)}))


@registration.errorhandler(OAuth2Error)
async def oauth_error(error: OAuth2Error) -> Response:
    return to_response(Answer(error.status_code, error.body(), error.headers))

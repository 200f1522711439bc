"""Every hook a tokensmith listener can implement.

A listener is a plugin module registered under its entry-point name in the ``tokensmith``
entry-point group. Which listener *type* (the ``type`` attribute of ``<EventListener>`` in
``conf/identity.xml``) a plugin serves follows from the hooks it implements: the families below.

The host, not pluggy, decides the order: it collects the implementations of the enabled
listeners of one type and calls them one by one in ascending ``orderId`` (ties by name).
Request hooks may be coroutine functions, which run on the event loop and must never block
it, or plain functions, which run in a thread and may block; either is cut off at
``<ListenerTimeoutSeconds>`` (docs/plugins.md says exactly what a plugin may do). The hooks
called at load time must not be coroutines. No hook uses ``firstresult``. Implementations
may accept any subset of a spec's arguments.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from tokensmith.listeners.registry import ListenerTypes

if TYPE_CHECKING:
    from tokensmith.listeners.registry import Listener
    from tokensmith.oauth.clientauth import AuthenticatedClient, ClientAuthRequest
    from tokensmith.oauth.events import (
        AuthorizationCodeEvent,
        ClientAuthEvent,
        TokenIssueEvent,
        TokenRevokeEvent,
    )

hookspec = pluggy.HookspecMarker("tokensmith")
hookimpl = pluggy.HookimplMarker("tokensmith")

# ---------------------------------------------------------------------------------------------
# Every listener
# ---------------------------------------------------------------------------------------------


@hookspec
def listener_default_order() -> int:
    """Return the orderId this listener takes when identity.xml gives none.

    Called once when the plugin is loaded. A plugin that does not implement it runs at 1000.
    Must not be a coroutine.
    """
    raise NotImplementedError  # a spec: plugins implement it


@hookspec
def listener_configure(listener: Listener) -> None:
    """Check and take in the listener's ``<Property>`` values before it serves requests.

    :param listener: this listener; ``listener.properties`` maps each ``<Property name>`` to
        its text, and ``listener.stash`` is a dict the plugin may keep its state in.
    :raises ValueError: the properties are wrong; startup stops with a message naming
        identity.xml, the line of the ``<EventListener>``, and the error's text.

    Called for enabled listeners only, at startup and on every reload. Must not be a coroutine.
    """


@hookspec
def register_routes(listener: Listener) -> list[tuple[Any, ...]] | None:
    """Return the HTTP routes this plugin adds to the application, or None.

    Each route is ``(rule, view)`` or ``(rule, view, methods)``: a Werkzeug URL rule such as
    ``"/audit/<client_id>"``, an ``async def`` Quart view, and the methods (GET by default).
    Called once, when the server starts; the routes stay on the app's URL map from then on.
    A route whose listener a reload disables answers 404 until it is enabled again; a
    reload cannot add routes (the server logs that a restart is needed). A rule that an
    existing route already has is refused when the plugin loads.
    """


# ---------------------------------------------------------------------------------------------
# ClientAuthenticator: authenticates the client at the token endpoint (RFC 6749 §2.3)
# ---------------------------------------------------------------------------------------------


@hookspec
def client_auth_methods(listener: Listener) -> list[str]:
    """Return the RFC 7591 ``token_endpoint_auth_method`` names this authenticator serves.

    They feed ``token_endpoint_auth_methods_supported`` in the server metadata, and a client
    registered with one of them can only be authenticated by this listener.
    Must not be a coroutine.
    """
    raise NotImplementedError  # a spec: plugins implement it


@hookspec
def authenticate_client(
    request: ClientAuthRequest, listener: Listener
) -> AuthenticatedClient | None | Awaitable[AuthenticatedClient | None]:
    """Authenticate the client of one token-endpoint request, or say it is not yours.

    :param request: the form, the ``Authorization`` header, the TLS client certificate
        chain, and helpers to look clients up and check secrets in constant time.
    :param listener: this listener (properties and stash).
    :return: ``None`` when the request carries no credential of this kind ("not mine"), or
        an ``AuthenticatedClient`` naming the client and the method used.
    :raises InvalidClientError: the request carries a credential of this kind, but it is
        wrong ("mine, but invalid"). Give ``client_id=`` the client the credential claimed
        to be, when known: the ``client_auth_failure`` event carries it.

    Every enabled authenticator is asked. If more than one engages (returns a client or
    raises), the request is refused with ``invalid_request`` (RFC 6749 §2.3: a client MUST
    NOT use more than one authentication method per request). The method returned must be the
    client's registered ``token_endpoint_auth_method``, or the request gets ``invalid_client``.
    """


@hookspec
def check_client_metadata(metadata: Mapping[str, Any], listener: Listener) -> None:
    """Check the RFC 7591 metadata of a client registered for one of this plugin's methods.

    :param metadata: the client's whole RFC 7591 document as it would be stored
        (``client_name``, ``token_endpoint_auth_method``, ``grant_types``, ``scope``,
        ``jwks``, ``jwks_uri``, the plugin's own namespaced members, ...), read-only.
    :raises InvalidClientMetadataError: the metadata does not fit the method; the
        registration is refused with RFC 7591 §3.2.2 ``invalid_client_metadata`` and the
        description (``sp add``/``sp update`` print it as one line).

    Called for the enabled authenticator that declared the client's
    ``token_endpoint_auth_method``, whenever a client is registered or its metadata changed,
    by whatever way: the CLI, the admin API (/api/clients) or dynamic registration
    (/oauth2/register, RFC 7591).
    Must not be a coroutine, and should not touch the network.
    """


@hookspec
def server_metadata(listener: Listener) -> dict[str, Any]:
    """Return members this authenticator adds to the server's metadata (RFC 8414 §2).

    For instance ``token_endpoint_auth_signing_alg_values_supported``. A member the server
    sets itself is not replaced; between plugins the first in calling order wins. Called
    once per load, after ``listener_configure``. Must not be a coroutine.
    """
    raise NotImplementedError  # a spec: plugins implement it


# ---------------------------------------------------------------------------------------------
# OAuthEventInterceptor: sees, and before the fact may refuse or enrich, token events
# ---------------------------------------------------------------------------------------------


@hookspec
def pre_token_issue(
    event: TokenIssueEvent, listener: Listener
) -> dict[str, Any] | None | Awaitable[dict[str, Any] | None]:
    """Called before a token is issued; may refuse it or add claims to it.

    :param event: the grant type, the client, the scopes, the username (password grant) and
        the claims the token will carry so far (``event.claims``, read-only).
    :return: ``None``, or a dict of extra claims. Extra claims from all interceptors are
        merged in calling order; introspection (and JWT access tokens) carry them. Registered
        claims (``iss``, ``sub``, ``exp``, ``iat``, ``client_id``, ``scope``, ``cnf``, ...)
        cannot be set this way: trying is a plugin error (``server_error``).
    :raises OAuth2Error: refuses the request with that error (e.g. ``InvalidScopeError``).
    """


@hookspec
def post_token_issue(event: TokenIssueEvent, listener: Listener) -> None | Awaitable[None]:
    """Called after a token was issued and stored, with its final claims.

    The token value itself is never passed. Cannot change the outcome: anything raised is
    logged with the listener's name and the client still gets its token.
    """


@hookspec
def pre_token_revoke(event: TokenRevokeEvent, listener: Listener) -> None | Awaitable[None]:
    """Called before a token is revoked (RFC 7009).

    :raises OAuth2Error: refuses the revocation with that error; the token stays valid.
    """


@hookspec
def post_token_revoke(event: TokenRevokeEvent, listener: Listener) -> None | Awaitable[None]:
    """Called after a token (and, for a refresh token, its grant's tokens) was revoked.

    Cannot change the outcome: anything raised is logged with the listener's name.
    """


@hookspec
def client_auth_success(event: ClientAuthEvent, listener: Listener) -> None | Awaitable[None]:
    """Called when a client authenticated at an endpoint; cannot change the outcome."""


@hookspec
def client_auth_failure(event: ClientAuthEvent, listener: Listener) -> None | Awaitable[None]:
    """Called when client authentication failed; cannot change the outcome.

    ``event.client_id`` is the client the refusing authenticator named
    (``InvalidClientError(client_id=...)``), else the identifier the request claimed
    (``client_id`` in the body or the Basic user name), else None; ``event.error`` the OAuth
    error code the client receives. No secret is ever passed.
    """


@hookspec
def authorization_code_issued(event: AuthorizationCodeEvent, listener: Listener) -> None | Awaitable[None]:
    """Called when a signed-in user's browser is sent back to the client with a code
    (RFC 6749 §4.1.2): the client, the user, the scopes consented to and the redirect URI.

    Cannot change the outcome: anything raised is logged with the listener's name. The code
    itself is never passed.
    """


@hookspec
def authorization_code_redeemed(event: AuthorizationCodeEvent, listener: Listener) -> None | Awaitable[None]:
    """Called when a client exchanged a code for tokens at the token endpoint (RFC 6749
    §4.1.3), after the tokens were stored; ``event.x5t_s256`` is the certificate they are
    bound to, if any. A code presented twice is refused and never reaches this hook.

    Cannot change the outcome: anything raised is logged with the listener's name.
    """


# ---------------------------------------------------------------------------------------------
# The listener types, as the registry is told them (listeners/ knows nothing of OAuth)
# ---------------------------------------------------------------------------------------------

AUTHENTICATOR = "ClientAuthenticator"
INTERCEPTOR = "OAuthEventInterceptor"
#: An RFC 7591 token_endpoint_auth_method name, as a client registers it: a registered
#: name or an absolute URI (§2), so printable ASCII without spaces, quotes or backslashes.
_METHOD_NAME = re.compile(r"[!#-\[\]-~]{1,256}")


def auth_method_names(value: object) -> tuple[str, ...]:
    """Check what ``client_auth_methods`` returned; ``ValueError`` says what it must return."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(m, str) and _METHOD_NAME.fullmatch(m) for m in value
    ):
        text = repr(value)
        raise ValueError(
            f"must return a list of method names, not {text if len(text) <= 80 else text[:80] + '...'}"
        )
    return tuple(value)


#: What ``listeners.registry.build_listeners`` is given: these hookspecs, the two listener
#: types and the hooks that make a plugin one of them, and the declaration checked at load.
LISTENER_TYPES = ListenerTypes(
    hookspecs=sys.modules[__name__],
    families={
        AUTHENTICATOR: ("client_auth_methods", "authenticate_client"),
        INTERCEPTOR: (
            "pre_token_issue",
            "post_token_issue",
            "pre_token_revoke",
            "post_token_revoke",
            "client_auth_success",
            "client_auth_failure",
            "authorization_code_issued",
            "authorization_code_redeemed",
        ),
    },
    declarations={"client_auth_methods": auth_method_names},
    # Called while registering clients and loading, for the authenticator of a method.
    shared_hooks=("register_routes", "check_client_metadata", "server_metadata"),
)

"""The authorization endpoint (RFC 6749 §4.1.1) and what the login pages need, framework-free.

``app/signin.py`` serves the pages (login, consent, sign-out) around these functions:
``validate`` checks an authorization request, ``issue_code`` makes the code once the user
has signed in and consented, and ``error_location`` / ``code_location`` build the redirects
back to the client. Sessions and the CSRF token are here too, so that the rules (cookies
hashed at rest, constant-time comparisons) live beside the rest of the protocol.

Errors come in two kinds (RFC 6749 §4.1.2.1): while the client or its redirect URI is not
established, the request "MUST NOT automatically redirect the user-agent to the invalid
redirection URI" and the error is shown to the user (``ShownError``); after that, errors are
sent back to the client on its redirect URI (``RedirectedError``).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from tokensmith.errors import (
    InvalidClientMetadataError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from tokensmith.models import AuthorizationCode, Client, Consent, SignInSession, Storage
from tokensmith.oauth import pkce
from tokensmith.oauth.clientauth import storable_id
from tokensmith.oauth.clientmetadata import LOOPBACK_HOSTS, check_redirect_uri
from tokensmith.oauth.endpoints import AUTHORIZE_PATH
from tokensmith.oauth.events import AuthorizationCodeEvent
from tokensmith.oauth.grants import resolve_scope, token_hash
from tokensmith.oauth.runtime import Runtime

__all__ = [
    "AUTHORIZE_PATH",
    "AuthorizationRequest",
    "ShownError",
    "RedirectedError",
    "UnsupportedResponseTypeError",
    "AccessDeniedError",
    "validate",
    "redirect_uri_registered",
    "issue_code",
    "code_location",
    "error_location",
    "consent_covers",
    "remember_consent",
    "start_session",
    "find_session",
    "end_session",
    "new_csrf_token",
    "csrf_matches",
]

log = logging.getLogger("tokensmith.oauth.authorize")

#: An authorization request longer than this is refused (shown, not redirected): it is
#: carried through the login and consent forms, and no valid one comes near it.
MAX_QUERY = 8192


class UnsupportedResponseTypeError(OAuth2Error):
    """RFC 6749 §4.1.2.1 ``unsupported_response_type``."""

    error = "unsupported_response_type"


class AccessDeniedError(OAuth2Error):
    """RFC 6749 §4.1.2.1 ``access_denied``: the resource owner said no."""

    error = "access_denied"


class ShownError(Exception):
    """An authorization request that cannot be sent back to its client (no valid client or
    redirect URI): shown to the user, in words, with status 400."""


class RedirectedError(Exception):
    """An error to send back to the client on its redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: OAuth2Error, redirect_uri: str, state: str | None):
        super().__init__(error.description or error.error)
        self.error, self.redirect_uri, self.state = error, redirect_uri, state


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3)."""

    client: Client
    redirect_uri: str
    redirect_uri_given: bool
    scope: str
    state: str | None
    code_challenge: str
    #: The request's query string as received: the login and consent forms carry it, and
    #: it is checked again whenever it comes back.
    query: str


def _parameters(query: str) -> dict[str, list[str]]:
    if len(query) > MAX_QUERY:
        raise ShownError("The authorization request is too long.")
    try:
        # RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
        # omitted from the request."
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=False, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise ShownError("The authorization request is not a valid query string.") from None
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


#: An ``http`` redirect URI to an IP literal, its port apart (for RFC 8252 §7.3).
_LOOPBACK_URI = re.compile(
    r"http://(?P<host>[0-9.]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?(?P<rest>[/?][!-~]*)?",
    re.ASCII,
)


def _loopback_key(uri: str) -> tuple[str, str] | None:
    """*uri* without its port, if it is ``http`` to ``127.0.0.1`` or ``[::1]``, the loopback
    literals registration accepts (``LOOPBACK_HOSTS``); else None. Another address of
    127.0.0.0/8, ``[::ffff:127.0.0.1]`` or a zone identifier gets no any-port rule, even if
    registered before registration refused them."""
    found = _LOOPBACK_URI.fullmatch(uri)
    if found is None:
        return None
    port = found["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    if found["host"].strip("[]") not in LOOPBACK_HOSTS:
        return None
    return found["host"], found["rest"] or ""


def redirect_uri_registered(uri: str, registered: list[str]) -> bool:
    """Whether *uri* is one of the *registered* redirect URIs: character for character
    (RFC 9700 §4.1.3), except that for ``http`` to a loopback IP literal the port may
    differ, since a native app gets whatever port is free when it runs (RFC 8252 §7.3:
    the authorization server "MUST allow any port to be specified at the time of the
    request for loopback IP redirect URIs"). Not for ``localhost``, which is matched
    exactly like any host name (§8.3 does not recommend it; registration refuses it).
    """
    if uri in registered:
        return True
    key = _loopback_key(uri)
    return key is not None and any(_loopback_key(other) == key for other in registered)


def validate(storage: Storage, query: str) -> AuthorizationRequest:
    """Check an authorization request (RFC 6749 §4.1.1) given as its query string.

    The client and its redirect URI first: an unknown client, a redirect URI not registered
    for it character for character (RFC 9700 §4.1.3: "exact string matching"; a loopback
    one's port aside, ``redirect_uri_registered``), a missing one
    when the client registered several (RFC 6749 §3.1.2.3), or either parameter given twice
    (§3.1: parameters "MUST NOT be included more than once") is a ``ShownError``. Then, with
    somewhere to send them, ``RedirectedError``: any parameter repeated, ``response_type``
    missing (``invalid_request``) or not ``code`` (``unsupported_response_type``), a client
    not registered for the grant (``unauthorized_client``), a scope it may not have
    (``invalid_scope``), and PKCE (RFC 7636 §4.4.1: ``invalid_request``) missing, not
    ``S256`` or malformed: PKCE is required of every client (RFC 9700 §2.1.1).
    """
    params = _parameters(query)
    client_ids = params.get("client_id", [])
    if len(client_ids) != 1 or not client_ids[0]:
        raise ShownError(
            "The request names no client."
            if not client_ids
            else "The request names the client more than once."
        )
    # Issue 22: an id the store cannot take (a lone surrogate) is no client, not a 500. The
    # query parser decodes strictly, so none arrives from the wire today; this holds for any
    # other caller.
    client = storage.get_client(client_ids[0]) if storable_id(client_ids[0]) else None
    if client is None:
        raise ShownError("The request names a client that is not registered here.")
    registered = [uri for uri in client.metadata.get("redirect_uris", ()) if isinstance(uri, str)]
    given = params.get("redirect_uri", [])
    if len(given) > 1:
        raise ShownError("The request names the redirect URI more than once.")
    if given:
        if not redirect_uri_registered(given[0], registered):
            raise ShownError("The redirect URI is not registered for this client.")
        redirect_uri = given[0]
    elif len(registered) == 1:
        redirect_uri = registered[0]
    else:
        raise ShownError(
            "The request names no redirect URI, and the client did not register exactly one."
            if registered
            else "The client has no registered redirect URI."
        )
    try:
        # Registered before registration refused such URIs (userinfo, not ASCII): never
        # redirected to.
        check_redirect_uri(redirect_uri)
    except InvalidClientMetadataError:
        raise ShownError(
            "The client's registered redirect URI is not one this server redirects to;"
            " its operator must register it again."
        ) from None
    states = params.get("state", [])
    state = states[0] if len(states) == 1 else None

    def refuse(error: OAuth2Error) -> RedirectedError:
        return RedirectedError(error, redirect_uri, state)

    repeated = sorted(name for name, values in params.items() if len(values) > 1)
    if repeated:
        raise refuse(InvalidRequestError(f"parameters given more than once: {', '.join(repeated)}"))
    response_type = params.get("response_type", [None])[0]
    if response_type is None:
        raise refuse(InvalidRequestError("response_type is missing"))
    if response_type != "code":
        raise refuse(UnsupportedResponseTypeError("only response_type=code is supported"))
    if "authorization_code" not in client.grant_types:
        raise refuse(UnauthorizedClientError("the client is not registered for the authorization_code grant"))
    try:
        scope = resolve_scope(params.get("scope", [None])[0], client.scopes)
    except InvalidScopeError as error:
        raise refuse(error) from None
    challenge = params.get("code_challenge", [None])[0]
    method = params.get("code_challenge_method", [None])[0]
    if challenge is None:
        raise refuse(InvalidRequestError("code_challenge is required (PKCE, RFC 7636)"))
    if method not in pkce.METHODS:
        # §4.3: a missing method means "plain", which this server does not support.
        raise refuse(InvalidRequestError("code_challenge_method must be S256"))
    if not pkce.CHALLENGE.fullmatch(challenge):
        raise refuse(InvalidRequestError("code_challenge is not a BASE64URL SHA-256 (RFC 7636 §4.2)"))
    return AuthorizationRequest(client, redirect_uri, bool(given), scope, state, challenge, query)


def _location(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """*redirect_uri* with *params* added to its query, which is kept (RFC 6749 §3.1.2)."""
    parts = urllib.parse.urlsplit(redirect_uri)
    added = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def error_location(error: RedirectedError, issuer: str) -> str:
    """The redirect of an error response (RFC 6749 §4.1.2.1), with ``iss`` (RFC 9207 §2)."""
    return _location(
        error.redirect_uri,
        {
            "error": error.error.error,
            "error_description": error.error.description,
            "state": error.state,
            "iss": issuer,
        },
    )


def code_location(request: AuthorizationRequest, code: str, issuer: str) -> str:
    """The redirect of a successful response (RFC 6749 §4.1.2), with ``iss`` (RFC 9207 §2)."""
    return _location(request.redirect_uri, {"code": code, "state": request.state, "iss": issuer})


async def issue_code(rt: Runtime, request: AuthorizationRequest, session: SignInSession) -> str:
    """Make and store a code for *request*, for the user of *session*; return its value.
    ``RedirectedError`` (access_denied) if the session or the consent ended meanwhile.

    256 random bits, stored only as their SHA-256 (RFC 6749 §10.10, RFC 6819 §5.1.4.1.3),
    valid for ``<AuthorizationCodeLifetime>`` seconds (60 by default; §4.1.2 recommends at
    most ten minutes).
    """
    value = secrets.token_urlsafe(32)
    now = int(time.time())
    stored = await rt.storage.call(
        rt.storage.add_authorization_code,
        AuthorizationCode(
            code_hash=token_hash(value),
            client_id=request.client.client_id,
            redirect_uri=request.redirect_uri,
            redirect_uri_given=request.redirect_uri_given,
            scope=request.scope,
            code_challenge=request.code_challenge,
            user_id=session.user_id,
            username=session.username,
            grant_id=secrets.token_urlsafe(16),
            issued_at=now,
            expires_at=now + rt.identity.authorization_code_lifetime,
        ),
        session.session_hash,
    )
    if not stored:
        # The user was revoked, or withdrew the consent, after both were checked: the code
        # would outlive what allowed it (RFC 6749 §4.1.2.1, access_denied).
        raise RedirectedError(
            AccessDeniedError("the sign-in or the consent ended while the code was being issued"),
            request.redirect_uri,
            request.state,
        )
    await rt.listeners.notify(
        "authorization_code_issued",
        event=AuthorizationCodeEvent(
            request.client.without_secret,
            session.username,
            tuple(request.scope.split()),
            request.redirect_uri,
        ),
    )
    return value


def consent_covers(storage: Storage, session: SignInSession, request: AuthorizationRequest) -> bool:
    """Whether the user already consented to every scope *request* asks for."""
    consent = storage.get_consent(session.user_id, request.client.client_id)
    return consent is not None and set(request.scope.split()) <= set(consent.scopes)


def remember_consent(storage: Storage, session: SignInSession, request: AuthorizationRequest) -> None:
    storage.add_consent(
        Consent(session.user_id, request.client.client_id, tuple(request.scope.split()), int(time.time()))
    )


def start_session(storage: Storage, user_id: str, username: str, lifetime: int) -> str:
    """Store a new sign-in session; return the cookie value (256 random bits), stored hashed."""
    value = secrets.token_urlsafe(32)
    now = int(time.time())
    storage.add_session(SignInSession(token_hash(value), user_id, username, now, now + lifetime))
    return value


def find_session(storage: Storage, cookie: str | None) -> SignInSession | None:
    """The live session of the cookie value *cookie*, if any. A store that does not answer
    raises ``StorageError``, as elsewhere."""
    if not cookie or len(cookie) > 128:
        return None
    return storage.get_session(token_hash(cookie))


def end_session(storage: Storage, cookie: str | None) -> None:
    if cookie and len(cookie) <= 128:
        storage.delete_session(token_hash(cookie))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(cookie: str | None, form_value: str | None) -> bool:
    """The double-submit check: the form carries the value of the browser's CSRF cookie,
    which another site can neither read nor (``__Host-`` prefix, ``SameSite=Lax``) set or
    send with a cross-site POST. Constant time."""
    if not cookie or not form_value:
        return False
    return hmac.compare_digest(cookie.encode(), form_value.encode())

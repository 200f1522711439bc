"""The pages of the authorization code grant: the authorization endpoint, login, consent,
the user's consents, and sign-out; server-rendered Jinja templates.

The protocol is in ``oauth/authorize.py``; this module is the browser's side of it. The
templates are in ``app/templates/``; a file of the same name in ``conf/templates/`` takes
precedence, so an operator changes the look without touching the package.

Cookies (both ``__Host-`` prefixed: Secure, Path=/, no Domain, so no other host or path can
set them): the session (HttpOnly, SameSite=Lax, 256 random bits, stored hashed) and the
CSRF token every form carries back (double submit, compared in constant time). Every page
is ``no-store`` and refuses to be framed (RFC 6749 §10.13, clickjacking).
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from quart import Blueprint, Response, current_app, render_template, request

from tokensmith.app.state import public_urls_of, runtime
from tokensmith.errors import ServerError, TemporarilyUnavailableError
from tokensmith.models import SignInSession, Storage, StorageError
from tokensmith.oauth import authorize
from tokensmith.oauth.authorize import AUTHORIZE_PATH, AccessDeniedError, RedirectedError, ShownError
from tokensmith.oauth.grants import check_password, login_source
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import CLIENT_ADDRESS
from tokensmith.security.hashing import KdfBusy

__all__ = [
    "signin",
    "SESSION_COOKIE",
    "CSRF_COOKIE",
    "LOGIN_PATH",
    "CONSENT_PATH",
    "SIGNOUT_PATH",
    "ACCOUNT_PATH",
    "redirect_host",
]

log = logging.getLogger("tokensmith.signin")

signin = Blueprint("signin", __name__, template_folder="templates")

SESSION_COOKIE = "__Host-tokensmith-session"
CSRF_COOKIE = "__Host-tokensmith-csrf"
LOGIN_PATH = "/oauth2/login"
CONSENT_PATH = "/oauth2/consent"
SIGNOUT_PATH = "/oauth2/signout"
ACCOUNT_PATH = "/oauth2/account"
#: Form fields longer than this are refused: a username, a password, a CSRF token.
MAX_FIELD = 1024

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    # No form-action: Chromium applies it to the redirect a form's answer makes, and the
    # consent form's answer redirects to the client.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _issuer() -> str:
    return public_urls_of(current_app).issuer


async def _page(template: str, status: int = 200, csrf: str | None = None, **context: Any) -> Response:
    """Render *template* with the CSRF token of this browser (a new one if it has none)."""
    token = csrf or request.cookies.get(CSRF_COOKIE) or authorize.new_csrf_token()
    if len(token) > MAX_FIELD:
        token = authorize.new_csrf_token()
    body = await render_template(template, csrf_token=token, **context)
    response = Response(body, status=status, content_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, secure=True, httponly=True, samesite="Lax", path="/")
    return response


def _redirect(location: str) -> Response:
    """303 See Other: after a POST the browser follows with a GET (RFC 9700 §4.11: never 307,
    which would send the user's credentials on to the client)."""
    return Response("", status=303, headers={"Location": location, **_PAGE_HEADERS})


async def _shown(message: str, status: int = 400) -> Response:
    return await _page("error.html", status=status, message=message)


def _client_address() -> str | None:
    """The browser's address: behind a trusted proxy (``<TrustedProxies>``) the one it
    forwarded, as the token endpoint counts it, so that the lockout of the login page and
    of the password grant is per client, not one for everybody behind the proxy."""
    forwarded = request.scope.get(CLIENT_ADDRESS)
    return forwarded if isinstance(forwarded, str) else request.remote_addr


async def _session(rt: Runtime) -> SignInSession | None:
    return await rt.storage.call(authorize.find_session, rt.storage, request.cookies.get(SESSION_COOKIE))


async def _form() -> dict[str, str]:
    form = await request.form
    return {name: value for name, value in form.items() if len(value) <= MAX_FIELD * 8}


def _csrf_ok(form: dict[str, str]) -> bool:
    return authorize.csrf_matches(request.cookies.get(CSRF_COOKIE), form.get("csrf_token"))


async def _csrf_refusal(form: dict[str, str]) -> Response | None:
    """The 403 page for a form that does not carry this site's CSRF token; None when it does."""
    if _csrf_ok(form):
        return None
    return await _shown("The form has expired or did not come from this site. Go back and try again.", 403)


def _safe(query: str) -> str:
    """*query* as it may go into a Location header: printable ASCII only. Anything else
    (bytes a browser would have percent-encoded, a CR or LF from a forged form) is
    re-encoded, so that no header can be split and no redirect fails."""
    if all("!" <= c <= "~" for c in query):
        return query
    return urllib.parse.urlencode(urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"))


def _query() -> str:
    return _safe(request.query_string.decode("latin-1"))


def redirect_host(redirect_uri: str) -> str:
    """Where the consent page says the code goes: ``hostname[:port]`` of *redirect_uri*,
    nothing of any userinfo (registration refuses it; an older registration may hold one,
    and ``trusted.example@evil.example`` must not read as trusted.example)."""
    parts = urllib.parse.urlsplit(redirect_uri)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


async def _continue(rt: Runtime, query: str, session: SignInSession | None) -> Response:
    """Answer the authorization request *query*: to the login page without a session, to the
    consent page without consent for its scopes, else back to the client with a code."""
    try:
        checked = await rt.storage.call(authorize.validate, rt.storage, query)
    except ShownError as error:
        return await _shown(str(error))
    except RedirectedError as error:
        return _redirect(authorize.error_location(error, _issuer()))
    if session is None:
        return _redirect(f"{LOGIN_PATH}?{query}")
    if not await rt.storage.call(authorize.consent_covers, rt.storage, session, checked):
        return await _page(
            "consent.html",
            client_name=checked.client.name,
            client_id=checked.client.client_id,
            scopes=checked.scope.split(),
            username=session.username,
            redirect_host=redirect_host(checked.redirect_uri),
            request_query=query,
        )
    return await _send_code(rt, checked, session)


async def _send_code(
    rt: Runtime, checked: authorize.AuthorizationRequest, session: SignInSession
) -> Response:
    """Issue the code and send the browser back to the client. A store that does not answer
    is ``temporarily_unavailable``, anything else ``server_error`` (RFC 6749 §4.1.2.1), both
    sent to the client, which is established by now."""
    try:
        code = await authorize.issue_code(rt, checked, session)
    except RedirectedError as error:
        return _redirect(authorize.error_location(error, _issuer()))
    except StorageError as exc:
        log.error("storage unavailable while issuing an authorization code: %s", exc)
        failure = RedirectedError(
            TemporarilyUnavailableError("storage is unavailable"), checked.redirect_uri, checked.state
        )
        return _redirect(authorize.error_location(failure, _issuer()))
    except Exception:
        log.exception("issuing an authorization code for client %s failed", checked.client.client_id)
        failure = RedirectedError(
            ServerError("an internal error occurred"), checked.redirect_uri, checked.state
        )
        return _redirect(authorize.error_location(failure, _issuer()))
    return _redirect(authorize.code_location(checked, code, _issuer()))


@signin.get(AUTHORIZE_PATH)
async def authorization_endpoint() -> Response:
    """The authorization endpoint (RFC 6749 §3.1, §4.1.1)."""
    rt = runtime(current_app)
    return await _continue(rt, _query(), await _session(rt))


@signin.get(LOGIN_PATH)
async def login_page() -> Response:
    rt = runtime(current_app)
    if await _session(rt) is not None and request.query_string:
        return _redirect(f"{AUTHORIZE_PATH}?{_query()}")
    return await _page("login.html", request_query=_query(), error=None, username="")


@signin.post(LOGIN_PATH)
async def login() -> Response:
    """Sign in against the user store, with the password grant's lockout (``check_password``)."""
    rt = runtime(current_app)
    form = await _form()
    query = _safe(form.get("request", ""))
    if (refused := await _csrf_refusal(form)) is not None:
        return refused
    username, password = form.get("username", ""), form.get("password", "")
    user = None
    if username and password and len(username) <= MAX_FIELD and len(password) <= MAX_FIELD:
        address = _client_address()
        try:
            user = await check_password(
                rt.storage,
                username,
                password,
                login_source(address),
                rt.identity.login_policy,
                "sign-in",
                f"login page, from {address or 'an unknown address'}",
            )
        except KdfBusy as busy:
            # A page for the person at the browser, with the pages' headers, not the token
            # endpoint's JSON; the attempt was not counted (check_password admits first).
            response = await _page(
                "login.html",
                status=503,
                request_query=query,
                username=username,
                error="The service is busy; please try again in a moment.",
            )
            response.headers.update(busy.headers)
            return response
    if user is None:
        return await _page(
            "login.html",
            status=401,
            request_query=query,
            username=username[:MAX_FIELD],
            error="The username or password is wrong, or there were too many attempts; try again later.",
        )
    # A new session on every sign-in, the old one ended: a session id planted in the
    # browser before sign-in never becomes a signed-in one (session fixation).
    await rt.storage.call(authorize.end_session, rt.storage, request.cookies.get(SESSION_COOKIE))
    value = await rt.storage.call(
        authorize.start_session, rt.storage, user.user_id, user.username, rt.identity.signin_session_lifetime
    )
    # A new CSRF token with the new session: one an attacker planted before sign-in is void.
    response = _redirect(f"{AUTHORIZE_PATH}?{query}" if query else ACCOUNT_PATH)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=rt.identity.signin_session_lifetime,
        secure=True,
        httponly=True,
        samesite="Lax",
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE, authorize.new_csrf_token(), secure=True, httponly=True, samesite="Lax", path="/"
    )
    return response


@signin.post(CONSENT_PATH)
async def consent() -> Response:
    """The user's answer on the consent page: allow (remembered) or deny (``access_denied``)."""
    rt = runtime(current_app)
    form = await _form()
    if (refused := await _csrf_refusal(form)) is not None:
        return refused
    query = _safe(form.get("request", ""))
    try:
        checked = await rt.storage.call(authorize.validate, rt.storage, query)
    except ShownError as error:
        return await _shown(str(error))
    except RedirectedError as error:
        return _redirect(authorize.error_location(error, _issuer()))
    session = await _session(rt)
    if session is None:
        return _redirect(f"{LOGIN_PATH}?{query}")
    if form.get("decision") != "allow":
        denied = RedirectedError(
            AccessDeniedError("the resource owner denied the request"), checked.redirect_uri, checked.state
        )
        return _redirect(authorize.error_location(denied, _issuer()))
    await rt.storage.call(authorize.remember_consent, rt.storage, session, checked)
    return await _send_code(rt, checked, session)


@signin.get(ACCOUNT_PATH)
async def account() -> Response:
    """The signed-in user's remembered consents, each revocable, and the sign-out button."""
    rt = runtime(current_app)
    session = await _session(rt)
    if session is None:
        return _redirect(LOGIN_PATH)
    consents = await rt.storage.call(_consents_shown, rt.storage, session.user_id)
    return await _page("account.html", username=session.username, consents=consents)


def _consents_shown(storage: Storage, user_id: str) -> list[dict[str, Any]]:
    """The user's consents with their clients' names, read in one ``Storage.call``."""
    shown = []
    for item in storage.list_consents(user_id):
        client = storage.get_client(item.client_id)
        shown.append(
            {
                "client_id": item.client_id,
                "name": client.name if client else item.client_id,
                "scopes": item.scopes,
            }
        )
    return shown


@signin.post(ACCOUNT_PATH)
async def revoke_consent() -> Response:
    rt = runtime(current_app)
    form = await _form()
    if (refused := await _csrf_refusal(form)) is not None:
        return refused
    session = await _session(rt)
    if session is None:
        return _redirect(LOGIN_PATH)
    await rt.storage.call(rt.storage.revoke_consent, session.user_id, form.get("client_id", ""))
    return _redirect(ACCOUNT_PATH)


@signin.get(SIGNOUT_PATH)
async def signout_page() -> Response:
    return await _page("signout.html", signed_out=False)


@signin.post(SIGNOUT_PATH)
async def signout() -> Response:
    rt = runtime(current_app)
    form = await _form()
    if (refused := await _csrf_refusal(form)) is not None:
        return refused
    await rt.storage.call(authorize.end_session, rt.storage, request.cookies.get(SESSION_COOKIE))
    response = await _page("signout.html", signed_out=True)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response

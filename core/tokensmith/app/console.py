"""The web console under ``/console/``: server-rendered pages over the admin operations.

Every change goes through ``tokensmith.admin`` (the same functions as the admin API and the
CLI, which write the audit log), with the signed-in user as the actor (``via="console"``).
Sign-in is by the password of a user with the admin or reader role (when
conf/authenticators.xml enables the BasicAuthenticator) or by a client certificate the
MutualSSLAuthenticator admits, naming an admin user (the certificate takes the place of the
API's UsernameHeader, and acts for admins only, as it does for the API). A reader gets the
same pages without a single form that changes anything, and any change it posts anyway is
refused with 403, as the API refuses it. Removing anything that cannot be put back (a service
provider, a user, a trust anchor, a signing key) asks for confirmation on a page of its own.

Safe by default:

- Sessions live on the server, in the store's shared state (``console.session``, by the
  SHA-256 of the cookie's value), so every worker process sees them and signing out ends
  them everywhere. The cookie is ``__Host-`` prefixed, ``Secure``, ``HttpOnly`` and
  ``SameSite=Strict`` (RFC 6265bis §4.1.3); a session ends after ``<Console idleTimeout>``
  seconds without a request and ``maxSessionAge`` seconds after sign-in, and when its user
  is removed, loses the admin role or gets a new password (``users.session_stamp``). A
  request writes its session back only while it exists, so a sign-out always wins over
  requests still in flight.
- A session signed in by certificate keeps the certificate's SHA-256 and lasts only while
  each request brings that same certificate and the MutualSSLAuthenticator still admits it
  (``certificate_identity``, the API's check, made again on every request): a trust anchor
  removed, the certificate taken off ``AdminCertificates`` or the ``WhiteList``, its expiry
  or the authenticator switched off ends the session, as the API refuses the certificate.
- Sign-in failures count towards the lockout by the client's address (behind a trusted
  proxy, the one it forwarded), as the admin API and the login page count them. Setting
  one's own password asks for the current one, checked with the same lockout.
- Only a signed-in user has a stored session. Before sign-in the cookie holds a random value
  that the sign-in form's CSRF token is derived from (a double-submit token: the ``__Host-``
  prefix keeps other hosts from setting the cookie), so anonymous requests store nothing.
  Only the sign-in page sets that cookie; no request that arrives without a cookie replaces
  one (a link from another site arrives without the ``Strict`` cookie: it gets a page that
  continues to the same address from this origin, with the cookie).
- Every form carries the session's CSRF token, compared in constant time; a POST without it
  is refused with 403 before anything is read or changed. Signing in replaces the session
  (and its token), so a session id planted before sign-in is worth nothing after. Every
  sign-in, accepted or refused, is in the audit log (a certificate's subject and SHA-256).
- A strict Content-Security-Policy: scripts and styles from this origin only, no inline
  script, no framing (``frame-ancestors 'none'``), forms post to this origin only.
- A client secret is rendered once, in the answer to the POST that made it (``no-store``),
  never stored in plain text and never put in a URL; a form that creates a secret carries a
  single-use id, so that the browser re-sending it cannot make a second client.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from markupsafe import escape
from quart import Blueprint, Response, current_app, g, redirect, render_template, request
from werkzeug.datastructures import MultiDict

from tokensmith.admin import clients as client_ops
from tokensmith.admin import configuration as config_ops
from tokensmith.admin import users as user_ops
from tokensmith.admin.audit import Actor, OperationError, record
from tokensmith.app.admin import (
    CertificateIdentity,
    Unauthenticated,
    certificate_identity,
    check_password,
    reload_all,
)
from tokensmith.app.state import runtime
from tokensmith.config.authenticators import BASIC, MUTUAL_SSL
from tokensmith.errors import InvalidClientMetadataError, OAuth2Error
from tokensmith.models import Client, RegisteredCertificate
from tokensmith.oauth import clientauth
from tokensmith.oauth.clientauth import client_certificates
from tokensmith.oauth.clientmetadata import certificate_jwk, check_redirect_uri, client_metadata
from tokensmith.oauth.grants import GRANT_TYPES, login_source
from tokensmith.oauth.registration import RegistrationError, registered_certificate
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import CLIENT_ADDRESS
from tokensmith.security.hashing import KdfBusy
from tokensmith.security.signing import ALGORITHMS, SigningKeyError
from tokensmith.security.truststore import TruststoreError
from tokensmith.security.x509 import CertificateError, load_pem_certificates, validity_problem

__all__ = ["console", "COOKIE", "PAGE_SIZE"]

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static/console",
    static_url_path="/static",
)

#: ``__Host-``: the browser keeps it only if it is Secure, has Path=/ and no Domain, so no
#: other host or path can set or shadow it.
COOKIE = "__Host-tokensmith-console"
#: The cookie's value before sign-in starts with this: it names no stored session.
_ANONYMOUS = "pre."
_SESSIONS = "console.session"
_SUBMISSIONS = "console.submission"
#: Service providers on one page of the list.
PAGE_SIZE = 50
#: The longest search text; the search is a substring match in SQL.
_MAX_QUERY = 200

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Pages show registrations and, once, secrets: no cache may keep them.
    "Cache-Control": "no-store",
}

_CERT_METHODS = (client_ops.SELF_SIGNED, client_ops.PKI)


@dataclass
class Session:
    """A signed-in user's session (stored, *key* set) or an anonymous one (*key* empty,
    never stored; *csrf* empty when the request brought no sign-in cookie)."""

    key: str
    csrf: str
    created: int
    user: str | None = None
    via: str | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)
    #: ``users.session_stamp`` of the user at sign-in.
    stamp: str | None = None
    #: The user's role, as the store has it now (read with the session, never stored).
    role: str | None = None
    #: Made by this request: stored whole, not written back.
    fresh: bool = False
    #: A certificate session's certificate (SHA-256 of its DER, hex): each request must
    #: bring the same one.
    certificate: str | None = None
    #: The certificate as this request presented it, for the audit log (never stored).
    credential: tuple[tuple[str, str], ...] = ()

    def dump(self) -> str:
        return json.dumps(
            {
                "csrf": self.csrf,
                "created": self.created,
                "user": self.user,
                "via": self.via,
                "flashes": self.flashes,
                "stamp": self.stamp,
                "certificate": self.certificate,
            }
        )


def _key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _rt() -> Runtime:
    return g.rt


def _session() -> Session:
    return g.session


def _client_address() -> str | None:
    """The browser's address: behind a trusted proxy (``<TrustedProxies>``) the one it
    forwarded, as the admin API and the login page take it, so that the lockout counts per
    client and not one for everybody behind the proxy."""
    forwarded = request.scope.get(CLIENT_ADDRESS, request.remote_addr)
    return forwarded if isinstance(forwarded, str) else None


def _actor() -> Actor:
    session = _session()
    assert session.user is not None
    return Actor(session.user, f"console:{session.via}", _client_address(), session.credential)


def _new_session(user: str, via: str, stamp: str, certificate: CertificateIdentity | None) -> Session:
    cookie = secrets.token_urlsafe(32)
    g.cookie = cookie
    return Session(
        _key(cookie),
        secrets.token_urlsafe(32),
        int(time.time()),
        user,
        via,
        stamp=stamp,
        fresh=True,
        certificate=None if certificate is None else certificate.sha256,
        credential=_credential(certificate),
    )


def _credential(certificate: CertificateIdentity | None) -> tuple[tuple[str, str], ...]:
    if certificate is None:
        return ()
    return (("subject", certificate.subject), ("sha256", certificate.sha256))


def _same_certificate(rt: Runtime, session: Session) -> bool:
    """Whether this request brings the certificate *session* signed in with, and the
    MutualSSLAuthenticator (as it is configured now) still admits it: the API's check, made
    on every request, so that the session ends when the API would refuse the certificate."""
    settings = rt.admin.enabled(MUTUAL_SSL)
    if settings is None or session.certificate is None:
        return False
    try:
        identity = certificate_identity(rt, settings)
    except Unauthenticated:
        return False
    if identity is None or not hmac.compare_digest(identity.sha256, session.certificate):
        return False
    session.credential = _credential(identity)
    return True


def _login_csrf(cookie: str) -> str:
    """The sign-in form's token, derived from the anonymous cookie (double submit): only a
    page of this origin, which saw the form, can send both."""
    return hashlib.sha256(f"tokensmith console sign-in\0{cookie}".encode()).hexdigest()


def _anonymous(cookie: str | None, issue: bool) -> Session:
    """A session that is not stored: its CSRF token comes from the anonymous cookie, which
    *issue* makes when the request brought none (the sign-in page only)."""
    if cookie is None or not cookie.startswith(_ANONYMOUS):
        if not issue:
            return Session("", "", int(time.time()))
        cookie = _ANONYMOUS + secrets.token_urlsafe(32)
        g.cookie = cookie
    return Session("", _login_csrf(cookie), int(time.time()))


def _load_session(rt: Runtime, cookie: str | None) -> Session | None:
    """The signed-in session the cookie names, while it is stored and its user is still an
    administrator with the same identity and password, and, for a certificate session, while
    the request brings the same certificate and it is still admitted; an invalid one is
    deleted."""
    if not cookie or len(cookie) > 100 or cookie.startswith(_ANONYMOUS):
        return None
    key = _key(cookie)
    raw = rt.storage.get_state(_SESSIONS, key)
    if raw is None:
        return None
    data = json.loads(raw)
    session = Session(
        key,
        data["csrf"],
        data["created"],
        data["user"],
        data["via"],
        [tuple(f) for f in data["flashes"]],
        data.get("stamp"),
        certificate=data.get("certificate"),
    )
    user = rt.storage.get_user(session.user) if session.user else None
    if (
        user is None
        or user.role not in _ROLES
        or session.stamp is None
        or not hmac.compare_digest(session.stamp, user_ops.session_stamp(rt.storage, user))
        or (session.via == "certificate" and (user.role != "admin" or not _same_certificate(rt, session)))
    ):
        rt.storage.delete_state(_SESSIONS, key)
        return None
    session.role = user.role
    return session


def _flash(kind: str, text: str) -> None:
    _session().flashes.append((kind, text))


def _go(endpoint_path: str) -> Response:
    return redirect(endpoint_path, 303)  # type: ignore[return-value]


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


#: The roles the console lets in; only ``admin`` may change anything (as in the admin API).
_ROLES = ("admin", "reader")


async def _page(template: str, status: int = 200, **context: Any) -> Response:
    session = _session()
    flashes, session.flashes = session.flashes, []
    rt = _rt()
    body = await render_template(
        f"console/{template}",
        csrf=session.csrf,
        user=session.user,
        read_only=g.get("role") != "admin",
        flashes=flashes,
        realm=rt.identity.realm,
        **context,
    )
    return Response(body, status, content_type="text/html; charset=utf-8")


# -- the guard ---------------------------------------------------------------------------

_OPEN = ("console.sign_in", "console.static")
#: What a reader may post: signing out, and nothing else.
_READER_POSTS = ("console.sign_out",)
#: Pages that exist only to make a change (a form, a confirmation): a reader gets the 403.
_CHANGE_PAGES = (
    "console.new_client",
    "console.delete_client",
    "console.remove_user",
    "console.remove_anchor",
    "console.retire_key",
)

_CONTINUE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0; url={url}">
<title>tokensmith console</title></head>
<body><p><a href="{url}">Continue to the console</a></p></body></html>
"""


def _continue_here() -> Response:
    """A link from another site arrives without the ``SameSite=Strict`` cookie: a refresh
    from this page is a same-site navigation (RFC 6265bis §5.2.1), which brings it. Nothing
    is read, stored or set."""
    url = str(escape(request.full_path if request.query_string else request.path))
    return Response(_CONTINUE.format(url=url), 200, content_type="text/html; charset=utf-8")


@console.before_request
async def guard() -> Response | None:
    rt = runtime(current_app)
    g.rt = rt
    g.cookie = None
    g.session = None
    if request.endpoint == "console.static":
        # Stylesheet and script: no session is read, kept alive or made for them.
        return None
    cookie = request.cookies.get(COOKIE)
    if request.method == "POST":
        # The whole form first, the session after: a sign-out that ends the session while
        # this request's body is still arriving is seen.
        form = await request.form
    elif cookie is None and request.headers.get("Sec-Fetch-Site") == "cross-site":
        return _continue_here()
    session = await _run(_load_session, rt, cookie)
    g.expired = session is None and cookie is not None and not cookie.startswith(_ANONYMOUS)
    if session is None:
        session = _anonymous(cookie, request.endpoint == "console.sign_in" and request.method == "GET")
    g.session = session
    if request.method == "POST":
        sent = form.get("csrf", "")
        if not session.csrf or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return await _page(
                "error.html",
                403,
                title="Refused",
                message="This form could not be accepted: its security token is missing, wrong or"
                " from an ended session (CSRF protection). Reload the page and try again.",
            )
    if request.endpoint in _OPEN:
        return None
    if session.user is None:
        return _go("/console/login")
    g.role = session.role
    if session.role != "admin" and (
        (request.method == "POST" and request.endpoint not in _READER_POSTS)
        or request.endpoint in _CHANGE_PAGES
    ):
        return await _page(
            "error.html",
            403,
            title="Read only",
            message=f"You are signed in as {session.user}, a reader: you may look at everything"
            " here but change nothing. Ask an administrator to make this change.",
        )
    return None


@console.after_request
async def finish(response: Response) -> Response:
    for name, value in _HEADERS.items():
        response.headers[name] = value
    session: Session | None = g.get("session")
    if session is not None and session.key:
        rt = _rt()
        console_settings = rt.config.server.console
        now = int(time.time())
        expires = min(now + console_settings.idle_timeout, session.created + console_settings.max_session_age)
        if session.fresh:
            await _run(rt.storage.set_state, _SESSIONS, session.key, session.dump(), expires)
        else:
            # Only while it exists: a session deleted meanwhile (signed out, its user changed)
            # stays deleted.
            await _run(rt.storage.replace_state, _SESSIONS, session.key, session.dump(), expires)
    if g.get("cookie") is not None:
        response.set_cookie(COOKIE, g.cookie, path="/", secure=True, httponly=True, samesite="Strict")
    return response


@console.errorhandler(OperationError)
async def operation_error(error: OperationError) -> Response:
    return await _page("error.html", error.status, title="Refused", message=str(error))


# -- sign-in -----------------------------------------------------------------------------


@console.route("/login", methods=["GET", "POST"])
async def sign_in() -> Response:
    rt = _rt()
    basic = rt.admin.enabled(BASIC) is not None
    mutual = rt.admin.enabled(MUTUAL_SSL)
    certificate: CertificateIdentity | None = None
    certificate_error: str | None = None
    if mutual is not None:
        try:
            certificate = certificate_identity(rt, mutual)
        except Unauthenticated as exc:
            certificate_error = str(exc)
    errors: dict[str, str] = {}
    username = ""
    if request.method == "GET" and _session().user is not None:
        return _go("/console/")
    if request.method == "POST":
        form = await request.form
        username = form.get("username", "").strip()
        method = "certificate" if form.get("method") == "certificate" else "password"
        user = None
        if not username:
            errors["username"] = "Enter your user name."
        elif method == "certificate":
            if mutual is None or certificate is None:
                errors["form"] = certificate_error or "Your browser presented no client certificate."
            else:
                user = await rt.storage.call(rt.storage.get_user, username)
                if user is None or user.role != "admin":
                    errors["username"] = (
                        f"{username} is not an administrator (a certificate signs in administrators only)."
                    )
                    user = None
        elif not basic:
            errors["form"] = "Sign-in with a password is off (conf/authenticators.xml)."
        else:
            try:
                user = await check_password(
                    rt, username, form.get("password", ""), login_source(_client_address()) or "?"
                )
            except KdfBusy:
                errors["form"] = "The server is busy checking other passwords; try again in a moment."
            if errors:
                pass
            elif user is None:
                errors["password"] = "Wrong user name or password, or the user is locked out."
            elif user.role not in _ROLES:
                errors["username"] = f"{username} has neither the admin nor the reader role."
                user = None
        await _run(_audit_sign_in, rt, username, method, certificate, errors)
        if user is not None and not errors:
            old = _session()
            if old.key:
                await _run(rt.storage.delete_state, _SESSIONS, old.key)
            stamp = await _run(user_ops.session_stamp, rt.storage, user)
            g.session = _new_session(
                user.username, method, stamp, certificate if method == "certificate" else None
            )
            return _go("/console/")
    return await _page(
        "login.html",
        400 if errors else 200,
        basic=basic,
        mutual=mutual is not None,
        certificate=None if certificate is None else certificate.subject,
        certificate_error=certificate_error,
        errors=errors,
        username=username,
        expired=g.expired and not errors,
        signed_out="signed-out" in request.args,
    )


def _audit_sign_in(
    rt: Runtime, username: str, method: str, certificate: CertificateIdentity | None, errors: dict[str, str]
) -> None:
    """Every sign-in, accepted or refused, in the audit log: who, how, from where (the
    client's address, forwarded by a trusted proxy), and for a certificate its subject and
    SHA-256 (never the password)."""
    details: dict[str, Any] = {"outcome": "refused" if errors else "accepted"}
    if errors:
        details["reason"] = next(iter(errors.values()))
    if method == "certificate":
        subject: str | None = None if certificate is None else certificate.subject
        sha256 = None if certificate is None else certificate.sha256
        if certificate is None:
            # A refused certificate: its fingerprint still says which one was tried.
            chain, _ = client_certificates(
                request.scope, request.remote_addr, rt.identity.forwarded_certificates
            )
            sha256 = hashlib.sha256(chain[0]).hexdigest() if chain else None
        details["subject"] = subject
        details["sha256"] = sha256
    name = username[:256] or "?"
    actor = Actor(name, f"console:{method}", _client_address())
    record(rt.storage, actor, "console.sign_in", name, **details)


@console.post("/logout")
async def sign_out() -> Response:
    rt = _rt()
    session = _session()
    if session.key:
        await _run(rt.storage.delete_state, _SESSIONS, session.key)
    g.session = _anonymous(None, True)
    return _go("/console/login?signed-out")


# -- service providers -------------------------------------------------------------------


def _int_arg(name: str, default: int) -> int:
    try:
        return max(1, min(int(request.args.get(name, default)), 10**9))
    except ValueError:
        return default


@console.get("/")
@console.get("/clients")
async def clients() -> Response:
    query = request.args.get("q", "")[:_MAX_QUERY].strip()
    page = _int_arg("page", 1)
    store = _rt().storage
    total, rows = await _run(store.search_clients, query, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    if page > pages:
        page = pages
        total, rows = await _run(store.search_clients, query, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    return await _page("clients.html", clients=rows, query=query, page=page, pages=pages, total=total)


@dataclass
class _Certificates:
    """A pasted or uploaded certificate, checked: what the preview shows, and the refusal."""

    pem: str = ""
    certificates: list[RegisteredCertificate] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


async def _read_certificates(form: MultiDict, required: bool) -> _Certificates:
    files = await request.files
    upload = files.get("certificate_file")
    text = form.get("certificate", "")
    if upload is not None and upload.filename:
        data = upload.read(64 * 1024 + 1)
        if len(data) > 64 * 1024:
            return _Certificates(text, error="The file is larger than a certificate can be (64 KiB).")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            # DER: load_pem_certificates takes one DER certificate too.
            pass
        else:
            data = text.encode()
        return _check_certificates(data, text if text.isascii() else "")
    if not text.strip():
        return _Certificates(error="Paste the certificate (PEM) or choose its file." if required else None)
    return _check_certificates(text.encode(), text)


def _check_certificates(data: bytes, text: str) -> _Certificates:
    result = _Certificates(text)
    try:
        parsed = load_pem_certificates(data, source="the certificate")
    except CertificateError as exc:
        result.error = f"This is not a certificate: {' '.join(str(exc).splitlines())}"
        return result
    now = datetime.now(UTC)
    for cert in parsed:
        problem = validity_problem(cert, now)
        registered = registered_certificate(cert)
        if problem is not None and problem.startswith("expired"):
            result.error = f"The certificate {registered.subject} {problem}: it cannot authenticate anyone."
        elif problem is not None:
            result.notes.append(f"{registered.subject}: {problem}.")
        result.certificates.append(registered)
    if not text:
        # An uploaded DER file: the form keeps it as PEM, so that saving after the preview
        # needs no second upload.
        result.pem = "".join(
            x509.load_der_x509_certificate(c.der).public_bytes(serialization.Encoding.PEM).decode()
            for c in result.certificates
        )
    return result


def _check_callback(url: str) -> str | None:
    """What is wrong with a callback URL, by the one rule for redirect URIs that registration
    applies too (``check_redirect_uri``), worded for the form's field; None when it is good."""
    try:
        check_redirect_uri(url)
    except InvalidClientMetadataError as exc:
        return _console_words(exc.description or "The callback URL is refused.")
    return None


#: The shared checks name the CLI's options; the console names its own fields instead.
_CLI_WORDS = (
    ("redirect_uris: ", "The callback URL "),
    (" (--redirect-uri URI)", " (a callback URL)"),
    ("--grant-type ", "the grant type "),
    ("a public client (--auth-method none)", "a public client (client authentication method none)"),
    ("; give --force to register it all the same", ""),
    (" (sp list --json shows them)", " (listed on the service provider's page)"),
    (" (--add-cert)", ""),
)


def _console_words(text: str) -> str:
    for cli, console_words in _CLI_WORDS:
        text = text.replace(cli, console_words)
    return text[:1].upper() + text[1:]


def _methods(rt: Runtime) -> list[str]:
    return list(dict.fromkeys([*client_ops.KNOWN_METHODS, *clientauth.auth_methods_supported(rt.listeners)]))


def _field_of(message: str) -> str:
    """Which field a refusal of the operations layer is about, to show it beside that field."""
    lowered = message.lower()
    for words, name in (
        (("redirect", "callback"), "callback_url"),
        (("grant",), "grant_types"),
        (("certificate", "jwks", "x5c", "subject"), "certificate"),
        (("client_name", "name"), "name"),
        (("token_endpoint_auth_method", "method"), "auth_method"),
    ):
        if any(word in lowered for word in words):
            return name
    return "form"


def _fingerprint(sha256: str) -> str:
    return ":".join(sha256[i : i + 2] for i in range(0, len(sha256), 2)).upper()


def _when(stamp: int | None) -> str:
    if not stamp:
        return "—"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


@console.app_template_filter("when")
def when_filter(stamp: int | None) -> str:
    return _when(stamp)


@console.app_template_filter("fingerprint")
def fingerprint_filter(sha256: str) -> str:
    return _fingerprint(sha256)


@console.route("/clients/new", methods=["GET", "POST"])
async def new_client() -> Response:
    rt = _rt()
    methods = _methods(rt)
    values: dict[str, Any] = {
        "name": "",
        "description": "",
        "grant_types": ["client_credentials"],
        "auth_method": client_ops.SELF_SIGNED if client_ops.SELF_SIGNED in methods else methods[0],
        "callback_url": "",
        "submission": secrets.token_urlsafe(16),
    }
    errors: dict[str, str] = {}
    checked = _Certificates()
    context: dict[str, Any] = {"methods": methods, "grant_types": GRANT_TYPES}
    if request.method == "GET":
        return await _page("client_new.html", values=values, errors=errors, checked=checked, **context)
    form = await request.form
    values.update(
        name=form.get("name", "").strip(),
        description=form.get("description", "").strip(),
        grant_types=form.getlist("grant_types"),
        auth_method=form.get("auth_method", ""),
        callback_url=form.get("callback_url", "").strip(),
        submission=form.get("submission", "")[:64] or values["submission"],
    )
    if not values["name"]:
        errors["name"] = "Give the service provider a name."
    if not values["grant_types"]:
        errors["grant_types"] = "Choose at least one grant type."
    elif any(grant not in GRANT_TYPES for grant in values["grant_types"]):
        errors["grant_types"] = f"Grant types served here: {', '.join(GRANT_TYPES)}."
    if values["auth_method"] not in methods:
        errors["auth_method"] = f"Choose one of {', '.join(methods)}."
    if values["callback_url"]:
        problem = _check_callback(values["callback_url"])
        if problem:
            errors["callback_url"] = problem
    checked = await _read_certificates(form, values["auth_method"] in _CERT_METHODS)
    if checked.error:
        errors["certificate"] = checked.error
    if form.get("action") != "save" or errors:
        return await _page(
            "client_new.html",
            400 if errors else 200,
            values=values,
            errors=errors,
            checked=checked,
            **context,
        )
    document: dict[str, Any] = {
        "client_name": values["name"],
        "token_endpoint_auth_method": values["auth_method"],
        "grant_types": values["grant_types"],
    }
    if values["description"]:
        document["console.description"] = values["description"]
    if values["callback_url"]:
        document["redirect_uris"] = [values["callback_url"]]
    if values["auth_method"] == client_ops.PKI:
        document["tls_client_auth_subject_dn"] = checked.certificates[0].subject
    elif checked.certificates:
        document["jwks"] = {"keys": [certificate_jwk(c) for c in checked.certificates]}
    if not await _run(rt.storage.put_if_absent, _SUBMISSIONS, values["submission"], int(time.time()) + 86400):
        errors["form"] = "This form was submitted already; its service provider exists (see the list)."
        return await _page("client_new.html", 409, values=values, errors=errors, checked=checked, **context)
    try:
        created = await _run(client_ops.register_client, rt.storage, rt.listeners, document, _actor())
    except (OperationError, InvalidClientMetadataError) as exc:
        text = _console_words(
            (exc.description if isinstance(exc, InvalidClientMetadataError) else str(exc)) or ""
        )
        errors[_field_of(text or "")] = text or "The registration was refused."
        await _run(rt.storage.delete_state, _SUBMISSIONS, values["submission"])
        values["submission"] = secrets.token_urlsafe(16)
        return await _page("client_new.html", 400, values=values, errors=errors, checked=checked, **context)
    return await _page(
        "client_created.html",
        201,
        client=created.client,
        secret=created.secret,
        warnings=created.warnings,
        token_url=_token_url(rt),
    )


def _token_url(rt: Runtime) -> str:
    """Where the new client asks for tokens: the mTLS alias when there is one (RFC 8705 §5)."""
    if rt.urls is None:
        return "/oauth2/token"
    urls = rt.urls()
    return (urls.mtls or urls.issuer).rstrip("/") + "/oauth2/token"


async def _client_or_404(client_id: str) -> Client:
    store = _rt().storage
    return await store.call(client_ops.get_client, store, client_id)


@console.get("/clients/<client_id>")
async def client(client_id: str) -> Response:
    found = await _client_or_404(client_id)
    return await _page(
        "client.html",
        client=found,
        metadata=client_metadata(found),
        checked=_Certificates(),
        submission=secrets.token_urlsafe(16),
    )


@console.post("/clients/<client_id>/certificates")
async def add_certificates(client_id: str) -> Response:
    rt = _rt()
    found = await _client_or_404(client_id)
    form = await request.form
    checked = await _read_certificates(form, True)
    if checked.error is None and form.get("action") == "save":
        try:
            updated = await _run(
                client_ops.change_client_certificates,
                rt.storage,
                rt.listeners,
                client_id,
                checked.certificates,
                [],
                _actor(),
            )
        except (OperationError, InvalidClientMetadataError) as exc:
            checked.error = _console_words(
                (exc.description if isinstance(exc, InvalidClientMetadataError) else str(exc)) or ""
            )
        else:
            for line in updated.warnings:
                _flash("warning", line)
            _flash("info", f"Added {len(checked.certificates)} certificate(s).")
            return _go(f"/console/clients/{client_id}")
    return await _page(
        "client.html",
        400 if checked.error else 200,
        client=found,
        metadata=client_metadata(found),
        checked=checked,
        submission=secrets.token_urlsafe(16),
    )


@console.post("/clients/<client_id>/certificates/<sha256>/remove")
async def remove_certificate(client_id: str, sha256: str) -> Response:
    rt = _rt()
    await _run(
        client_ops.change_client_certificates, rt.storage, rt.listeners, client_id, [], [sha256], _actor()
    )
    _flash("info", f"Removed certificate {_fingerprint(sha256)[:23]}…; tokens bound to it are revoked.")
    return _go(f"/console/clients/{client_id}")


@console.post("/clients/<client_id>/secret")
async def reset_secret(client_id: str) -> Response:
    rt = _rt()
    form = await request.form
    submission = form.get("submission", "")[:64]
    if not submission or not await _run(
        rt.storage.put_if_absent, _SUBMISSIONS, submission, int(time.time()) + 86400
    ):
        # A reload of the page that showed the new secret must not make yet another one.
        raise OperationError("this reset was done already; reset again from the service provider's page", 409)
    updated = await _run(client_ops.reset_secret, rt.storage, client_id, _actor())
    return await _page(
        "client_created.html",
        200,
        client=updated.client,
        secret=updated.secret,
        warnings=(),
        reset=True,
        token_url=_token_url(_rt()),
    )


@console.route("/clients/<client_id>/delete", methods=["GET", "POST"])
async def delete_client(client_id: str) -> Response:
    found = await _client_or_404(client_id)
    if request.method == "GET":
        return await _page("client_delete.html", client=found)
    await _run(client_ops.remove_client, _rt().storage, client_id, _actor())
    _flash("info", f"Deleted {found.name or found.client_id}; its tokens are revoked.")
    return _go("/console/clients")


# -- listeners ---------------------------------------------------------------------------


async def _reload_and_wait(rt: Runtime) -> None:
    """Reload every process, and wait a little for this one, so that the page that follows
    shows the new state."""
    reload_all()
    deadline = time.monotonic() + 5
    while runtime(current_app).generation == rt.generation and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@console.get("/listeners")
async def listeners() -> Response:
    rt = _rt()
    families: dict[str, list[Any]] = {}
    for item in rt.listeners:
        families.setdefault(item.type, []).append(item)
    return await _page("listeners.html", families=families, generation=rt.generation)


def _known(rt: Runtime) -> list[tuple[str, str]]:
    return [(item.type, item.name) for item in rt.listeners]


@console.post("/listeners/<family>/<name>")
async def change_listener(family: str, name: str) -> Response:
    rt = _rt()
    form = await request.form
    enabled = form.get("enabled")
    if enabled not in ("true", "false"):
        raise OperationError("enabled must be true or false")
    await _run(
        config_ops.change_listener,
        rt.identity.path,
        rt.storage,
        family,
        name,
        _actor(),
        enabled=enabled == "true",
        known=_known(rt),
    )
    await _reload_and_wait(rt)
    _flash("info", f"{family}/{name} {'enabled' if enabled == 'true' else 'disabled'}.")
    return _go("/console/listeners")


@console.post("/listeners/move")
async def move_listener() -> Response:
    rt = _rt()
    form = await request.form
    target = form.get("listener", "")
    direction = form.get("direction")
    kind, _, name = target.partition("/")
    if direction not in ("up", "down"):
        raise OperationError(f"no listener {target!r} to move {direction}")
    # Relative to identity.xml as it is when the move is made, not to the order this page
    # showed: moves made at once from pages loaded at once all count.
    loaded = [(item.type, item.name, item.order_id) for item in rt.listeners]
    if await _run(
        config_ops.move_listener, rt.identity.path, rt.storage, kind, name, direction, _actor(), loaded
    ):
        await _reload_and_wait(rt)
        _flash("info", f"{name} moved {direction}.")
    return _go("/console/listeners")


# -- truststore, users, signing keys, audit ----------------------------------------------


@console.route("/truststore", methods=["GET", "POST"])
async def truststore() -> Response:
    rt = _rt()
    errors: dict[str, str] = {}
    alias = ""
    checked = _Certificates()
    if request.method == "POST":
        form = await request.form
        alias = form.get("alias", "").strip()
        if not alias:
            errors["alias"] = "Give the trust anchor an alias."
        checked = await _read_certificates(form, True)
        if checked.error:
            errors["certificate"] = checked.error
        if not errors and form.get("action") == "save":
            try:
                await _run(
                    config_ops.import_anchor, rt.truststore, rt.storage, alias, checked.pem.encode(), _actor()
                )
            except (TruststoreError, CertificateError) as exc:
                errors[_field_of(str(exc)) if "alias" not in str(exc) else "alias"] = str(exc)
            else:
                _flash("info", f"Trusted {alias}.")
                return _go("/console/truststore")
    return await _page(
        "truststore.html",
        400 if errors else 200,
        anchors=rt.truststore.list(),
        errors=errors,
        alias=alias,
        checked=checked,
    )


@console.route("/truststore/<alias>/remove", methods=["GET", "POST"])
async def remove_anchor(alias: str) -> Response:
    rt = _rt()
    found = next((a for a in rt.truststore.list() if a.alias == alias), None)
    if found is None:
        raise OperationError(f"no truststore alias {alias!r}", 404, "not_found")
    if request.method == "GET":
        return await _page(
            "confirm.html",
            title=f"Stop trusting {alias}?",
            text=f"The CA certificate {found.subject} (SHA-256 {_fingerprint(found.sha256_hex)}) leaves"
            " the truststore: tls_client_auth clients, and administrators' certificates, that chain"
            " only to it are refused from the next request on.",
            action=f"/console/truststore/{quote(alias, safe='')}/remove",
            button="Remove it",
            cancel="/console/truststore",
        )
    await _run(config_ops.remove_anchor, rt.truststore, rt.storage, alias, _actor())
    _flash("info", f"Removed {alias} from the truststore.")
    return _go("/console/truststore")


@console.route("/users", methods=["GET", "POST"])
async def users() -> Response:
    rt = _rt()
    errors: dict[str, str] = {}
    values = {"username": "", "role": ""}
    if request.method == "POST":
        form = await request.form
        values = {"username": form.get("username", "").strip(), "role": form.get("role", "")}
        password = form.get("password", "")
        if not values["username"]:
            errors["username"] = "Give a user name."
        if not password:
            errors["password"] = "Give a password."
        elif len(password) < user_ops.MIN_PASSWORD_LENGTH:
            errors["password"] = (
                f"The password must be at least {user_ops.MIN_PASSWORD_LENGTH} characters long."
            )
        if not errors:
            try:
                await _run(
                    user_ops.add_user,
                    rt.storage,
                    values["username"],
                    password,
                    values["role"] or None,
                    _actor(),
                )
            except OperationError as exc:
                errors["password" if "password" in str(exc) else "username"] = str(exc)
            else:
                _flash("info", f"Added user {values['username']}.")
                return _go("/console/users")
    return await _users_page(400 if errors else 200, errors=errors, values=values)


async def _users_page(
    status: int,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    row_user: str | None = None,
    row_errors: dict[str, str] | None = None,
) -> Response:
    """The Users page; *row_errors* (``current``, ``password``) go beside the password
    fields of *row_user*'s row."""
    rt = _rt()
    return await _page(
        "users.html",
        status,
        users=await rt.storage.call(rt.storage.list_users),
        errors=errors or {},
        values=values or {"username": "", "role": ""},
        roles=user_ops.ROLES,
        now=int(time.time()),
        min_password=user_ops.MIN_PASSWORD_LENGTH,
        row_user=row_user,
        row_errors=row_errors or {},
    )


async def _current_password_problem(rt: Runtime, username: str, current: str) -> str | None:
    """Why *current* does not prove the signed-in user's password, or None: the sign-in's
    check, counted towards the same lockout, so that a session left open (or taken over) is
    not enough to take the account with a password of one's own choosing."""
    if not current:
        return "Enter your current password to set a new one."
    try:
        user = await check_password(rt, username, current, login_source(_client_address()) or "?")
    except KdfBusy:
        return "The server is busy checking other passwords; try again in a moment."
    if user is None:
        return "This is not your current password, or you are locked out."
    return None


@console.post("/users/<path:username>/<action>")
async def change_user(username: str, action: str) -> Response:
    rt = _rt()
    if action == "role":
        form = await request.form
        role = form.get("role") or None
        if username == _session().user and role != "admin":
            raise OperationError("you cannot take the admin role from yourself")
        await _run(user_ops.set_role, rt.storage, username, role, _actor())
        _flash("info", f"{username}'s role is now {role or 'none'}.")
    elif action == "unlock":
        await _run(user_ops.unlock_user, rt.storage, username, _actor())
        _flash("info", f"Unlocked {username}.")
    elif action == "password":
        form = await request.form
        password = form.get("password", "")
        own = username == _session().user
        if len(password) < user_ops.MIN_PASSWORD_LENGTH:
            # Checked before the current password: a mistake here costs no sign-in attempt.
            return await _users_page(
                400,
                row_user=username,
                row_errors={
                    "password": f"The password must be at least {user_ops.MIN_PASSWORD_LENGTH}"
                    " characters long."
                },
            )
        if own:
            problem = await _current_password_problem(rt, username, form.get("current_password", ""))
            if problem is not None:
                return await _users_page(400, row_user=username, row_errors={"current": problem})
        try:
            await _run(user_ops.set_password, rt.storage, username, password, _actor())
        except OperationError as exc:
            if exc.status != 400:
                raise
            return await _users_page(400, row_user=username, row_errors={"password": str(exc)})
        if own:
            # A new password ends every session of the user, this one too.
            await _run(rt.storage.delete_state, _SESSIONS, _session().key)
            g.session = _anonymous(None, True)
            return _go("/console/login")
        _flash("info", f"{username} has a new password; their console sessions have ended.")
    else:
        # Removing goes through remove_user's confirmation page.
        raise OperationError(f"unknown action {action!r}", 404, "not_found")
    return _go("/console/users")


@console.route("/users/<path:username>/remove", methods=["GET", "POST"])
async def remove_user(username: str) -> Response:
    rt = _rt()
    if username == _session().user:
        raise OperationError("you cannot remove yourself")
    found = user_ops.get_user(rt.storage, username)
    if request.method == "GET":
        return await _page(
            "confirm.html",
            title=f"Remove {username}?",
            text=f"The user {username} (role {found.role or 'none'}) is removed, and every token and"
            " grant issued for them is revoked. This cannot be undone.",
            action=f"/console/users/{quote(username, safe='')}/remove",
            button="Remove it",
            cancel="/console/users",
        )
    await _run(user_ops.remove_user, rt.storage, username, _actor())
    _flash("info", f"Removed {username}; their tokens are revoked.")
    return _go("/console/users")


@console.route("/signing-keys", methods=["GET", "POST"])
async def signing_keys() -> Response:
    rt = _rt()
    if request.method == "POST":
        form = await request.form
        algorithm = form.get("algorithm", "ES256")
        try:
            kid = await _run(config_ops.rotate_signing_key, rt.signing, rt.storage, algorithm, _actor())
        except SigningKeyError as exc:
            raise OperationError(str(exc)) from None
        _flash("info", f"New active signing key {kid} ({algorithm}).")
        return _go("/console/signing-keys")
    return await _page("signing_keys.html", keys=rt.signing.all(), algorithms=ALGORITHMS)


@console.route("/signing-keys/<kid>/retire", methods=["GET", "POST"])
async def retire_key(kid: str) -> Response:
    rt = _rt()
    keys = rt.signing.all()
    found = next((key for key in keys if key.kid == kid), None)
    if found is None:
        raise OperationError(f"no signing key with kid {kid!r}", 404, "not_found")
    if request.method == "GET":
        return await _page(
            "confirm.html",
            title=f"Retire signing key {kid}?",
            text=f"The {found.alg} key {kid} leaves the JWKS: JWT access tokens it signed no longer"
            " verify at resource servers that fetch the JWKS again. This cannot be undone.",
            action=f"/console/signing-keys/{quote(kid, safe='')}/retire",
            button="Retire it",
            cancel="/console/signing-keys",
        )
    try:
        await _run(config_ops.retire_signing_key, rt.signing, rt.storage, kid, _actor())
    except SigningKeyError as exc:
        raise OperationError(str(exc)) from None
    _flash("info", f"Retired signing key {kid}.")
    return _go("/console/signing-keys")


@console.get("/audit")
async def audit() -> Response:
    before = request.args.get("before")
    before_id = _int_arg("before", 2**62) if before is not None else None
    entries = await _run(_rt().storage.list_audit, 100, before_id)
    return await _page("audit.html", entries=entries, older=entries[-1].id if len(entries) == 100 else None)


@console.errorhandler(RegistrationError)
@console.errorhandler(TruststoreError)
@console.errorhandler(CertificateError)
async def refused(error: Exception) -> Response:
    return await _page(
        "error.html", 400, title="Refused", message=_console_words(" ".join(str(error).splitlines()))
    )


@console.errorhandler(OAuth2Error)
async def oauth_refused(error: OAuth2Error) -> Response:
    return await _page(
        "error.html", 400, title="Refused", message=_console_words(error.description or error.error)
    )

"""The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636) against the real server.

A browser is played by an httpx client with a cookie jar (the login and consent forms as a
browser submits them); tests/app/test_signin_browser.py runs the same pages in Chromium.
Codes are exchanged over real TLS, with the client's certificate where it has one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import shutil
import sqlite3
import ssl
import textwrap
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import DEFAULT_LISTENERS, Deployment, Server, new_deployment, start_server
from pki import Pair, self_signed
from servers import assert_error
from tokensmith.oauth.grants import token_hash

PASSWORD = "correct horse battery staple"
CALLBACK = "https://client.example/cb"
OTHER_CALLBACK = "https://client.example/other"
LOOPBACK = "http://127.0.0.1:8123/cb"

EVENTS = textwrap.dedent("""
    import json
    from tokensmith import hookimpl

    def record(listener, **fields):
        with open(listener.properties["trace"], "a") as out:
            out.write(json.dumps(fields) + "\\n")

    @hookimpl
    def authorization_code_issued(event, listener):
        record(listener, hook="issued", client=event.client.client_id, username=event.username,
               scopes=list(event.scopes), redirect_uri=event.redirect_uri,
               secret=event.client.secret_hash)

    @hookimpl
    async def authorization_code_redeemed(event, listener):
        record(listener, hook="redeemed", client=event.client.client_id, username=event.username,
               scopes=list(event.scopes), x5t_s256=event.x5t_s256)
""")


def s256(verifier: str) -> str:
    """RFC 7636 §4.2, computed here independently of tokensmith."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


@dataclass
class Env:
    server: Server
    cert: tuple[Path, Path]
    pair: Pair
    other_cert: tuple[Path, Path]
    mtls: dict
    secret: dict
    public: dict
    cc: dict
    trace: Path

    def events(self) -> list[dict]:
        return (
            [json.loads(line) for line in self.trace.read_text().splitlines()] if self.trace.exists() else []
        )


def register(dep: Deployment, name: str, *args: str) -> dict:
    return dep.add_client(name, *args)


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache, make_wheel) -> Iterator[Env]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("code")
    trace = root / "events.jsonl"
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth="<MaxFailedLogins>3</MaxFailedLogins><LockoutSeconds>600</LockoutSeconds>",
        listeners=DEFAULT_LISTENERS
        + f"""
        <EventListener type="OAuthEventInterceptor" name="codeevents" orderId="10">
            <Property name="trace">{trace}</Property>
        </EventListener>""",
    )
    shutil.copy(make_wheel("codeevents", EVENTS), dep.dropins)
    for name in ("alice", "bob", "locked"):
        dep.cli("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
    pair = self_signed("playground")
    cert = pair.write(root, "client")
    other_cert = self_signed("playground").write(root, "other")
    grants = ["--grant-type", "authorization_code", "--grant-type", "refresh_token"]
    scopes = ["--scope", "read", "--scope", "write"]
    mtls = register(
        dep,
        "playground",
        *grants,
        *scopes,
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert[0]),
        "--redirect-uri",
        CALLBACK,
    )
    secret = register(
        dep,
        "web",
        *grants,
        *scopes,
        "--auth-method",
        "client_secret_basic",
        "--redirect-uri",
        CALLBACK,
        "--redirect-uri",
        OTHER_CALLBACK,
    )
    public = register(dep, "native", *grants, *scopes, "--auth-method", "none", "--redirect-uri", LOOPBACK)
    cc = register(
        dep,
        "machine",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--redirect-uri",
        CALLBACK,
    )
    server = start_server(dep)
    yield Env(server, cert, pair, other_cert, mtls, secret, public, cc, trace)
    server.stop()


def authorize_query(client: dict, verifier: str, **extra: str | None) -> str:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": str(client["client_id"]),
        "state": secrets.token_urlsafe(8),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


class Browser:
    """What a browser does with the pages: cookies, forms, and redirects it is shown."""

    def __init__(self, server: Server):
        self.server = server
        self.http = server.client()

    def close(self) -> None:
        self.http.close()

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self.http.post(path, data=data)

    def sign_in(self, query: str, user: str = "alice", password: str = PASSWORD) -> httpx.Response:
        first = self.get(f"/oauth2/authorize?{query}")
        assert first.status_code == 303 and first.headers["location"] == f"/oauth2/login?{query}", first.text
        page = self.get(first.headers["location"])
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        return self.post(
            "/oauth2/login",
            {"csrf_token": csrf(page.text), "request": query, "username": user, "password": password},
        )

    def consent(self, query: str, decision: str = "allow") -> httpx.Response:
        """Open the authorization request signed in; answer the consent page if shown."""
        page = self.get(f"/oauth2/authorize?{query}")
        if page.status_code == 303:
            return page
        assert page.status_code == 200 and "Allow" in page.text, page.text
        return self.post(
            "/oauth2/consent", {"csrf_token": csrf(page.text), "request": query, "decision": decision}
        )

    def code_for(
        self, client: dict, verifier: str, user: str = "alice", **extra: str | None
    ) -> dict[str, str]:
        """Sign in (if need be), consent, and return the parameters of the redirect back."""
        query = authorize_query(client, verifier, **extra)
        if not self.http.cookies.get("__Host-tokensmith-session"):
            signed_in = self.sign_in(query, user)
            assert signed_in.status_code == 303, signed_in.text
        answer = self.consent(query)
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        redirect_uri = extra.get("redirect_uri") or (CALLBACK if client.get("name") != "native" else LOOPBACK)
        assert location.startswith(redirect_uri + "?"), location
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        assert params["state"] == dict(urllib.parse.parse_qsl(query))["state"]
        assert params["iss"] == self.server.url  # RFC 9207 §2
        return params


@pytest.fixture
def browser(env: Env) -> Iterator[Browser]:
    b = Browser(env.server)
    yield b
    b.close()


def exchange(
    env: Env,
    client: dict,
    code: str,
    verifier: str | None,
    cert: tuple[Path, Path] | None = None,
    redirect_uri: str | None = CALLBACK,
    secret: str | None = None,
    **extra: str,
) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, **extra}
    if verifier is not None:
        data["code_verifier"] = verifier
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    auth = None
    if "client_secret" in client:
        auth = (str(client["client_id"]), secret or str(client["client_secret"]))
    else:
        data["client_id"] = str(client["client_id"])
    with env.server.client(cert=cert) as http:
        return http.post("/oauth2/token", data=data, auth=auth)


def introspect(env: Env, client: dict, token: str, cert: tuple[Path, Path] | None = None) -> dict:
    with env.server.client(cert=cert or env.cert) as http:
        answer = http.post("/oauth2/introspect", data={"token": token, "client_id": env.mtls["client_id"]})
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- the whole flow ---------------------------------------------------------------------------


def test_a_mutual_tls_client_gets_certificate_bound_tokens_for_a_code(env: Env, browser: Browser) -> None:
    """Sign in, consent, code back on the registered redirect URI with state and iss; the
    code exchanged with the client's certificate gives tokens bound to it (RFC 8705 §3.1),
    and the interceptor sees the code issued and redeemed, never a secret."""
    verifier = new_verifier()
    params = browser.code_for(env.mtls, verifier, scope="read")
    answer = exchange(env, env.mtls, params["code"], verifier, cert=env.cert)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "read" and "refresh_token" in tokens
    claims = introspect(env, env.mtls, tokens["access_token"])
    assert claims["active"] and claims["username"] == "alice" and claims["client_id"] == env.mtls["client_id"]
    assert claims["cnf"] == {"x5t#S256": env.pair.x5t_s256()}
    # The refresh token of the grant works with the same certificate only.
    with env.server.client(cert=env.cert) as http:
        refreshed = http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": env.mtls["client_id"],
            },
        )
    assert refreshed.status_code == 200, refreshed.text
    events = [e for e in env.events() if e["client"] == env.mtls["client_id"]]
    assert {
        "hook": "issued",
        "client": env.mtls["client_id"],
        "username": "alice",
        "scopes": ["read"],
        "redirect_uri": CALLBACK,
        "secret": None,
    } in events
    assert {
        "hook": "redeemed",
        "client": env.mtls["client_id"],
        "username": "alice",
        "scopes": ["read"],
        "x5t_s256": env.pair.x5t_s256(),
    } in events


def test_consent_is_remembered_per_scope_and_revocable(env: Env, browser: Browser) -> None:
    """A second request for the consented scope goes straight back to the client; a wider one
    asks again; withdrawing the consent on the account page asks again."""
    verifier = new_verifier()
    browser.code_for(env.secret, verifier, user="bob", scope="read", redirect_uri=CALLBACK)
    again = browser.get(
        f"/oauth2/authorize?{authorize_query(env.secret, verifier, scope='read', redirect_uri=CALLBACK)}"
    )
    assert again.status_code == 303 and again.headers["location"].startswith(CALLBACK + "?code=")
    wider = browser.get(
        f"/oauth2/authorize?{authorize_query(env.secret, verifier, scope='read write', redirect_uri=CALLBACK)}"
    )
    assert wider.status_code == 200 and "<code>write</code>" in wider.text
    account = browser.get("/oauth2/account")
    assert account.status_code == 200 and "web" in account.text
    withdrawn = browser.post(
        "/oauth2/account", {"csrf_token": csrf(account.text), "client_id": str(env.secret["client_id"])}
    )
    assert withdrawn.status_code == 303
    assert "no-consents" in browser.get("/oauth2/account").text
    asked = browser.get(
        f"/oauth2/authorize?{authorize_query(env.secret, verifier, scope='read', redirect_uri=CALLBACK)}"
    )
    assert asked.status_code == 200 and "Allow" in asked.text


def test_withdrawing_consent_revokes_the_clients_tokens_and_codes(env: Env, browser: Browser) -> None:
    """Withdrawing consent on the account page ends the client's access for this user, as
    the page says: its access and refresh tokens stop working and a code it has not yet
    redeemed is refused; another user's tokens for the same client are untouched."""
    secret = (str(env.secret["client_id"]), str(env.secret["client_secret"]))

    def active(token: str) -> bool:
        with env.server.client() as http:
            answer = http.post("/oauth2/introspect", data={"token": token}, auth=secret)
        assert answer.status_code == 200, answer.text
        return answer.json()["active"]

    verifier = new_verifier()
    code = browser.code_for(env.secret, verifier, user="bob", scope="read", redirect_uri=CALLBACK)["code"]
    tokens = exchange(env, env.secret, code, verifier).json()
    pending_verifier = new_verifier()
    pending = browser.code_for(env.secret, pending_verifier, scope="read", redirect_uri=CALLBACK)["code"]
    other = Browser(env.server)
    try:
        other_verifier = new_verifier()
        other_code = other.code_for(
            env.secret, other_verifier, user="alice", scope="read", redirect_uri=CALLBACK
        )
        other_tokens = exchange(env, env.secret, other_code["code"], other_verifier).json()
    finally:
        other.close()
    assert active(tokens["access_token"]) and active(tokens["refresh_token"])
    account = browser.get("/oauth2/account")
    assert "tokens it holds for you stop working" in account.text
    withdrawn = browser.post(
        "/oauth2/account", {"csrf_token": csrf(account.text), "client_id": str(env.secret["client_id"])}
    )
    assert withdrawn.status_code == 303
    assert not active(tokens["access_token"]) and not active(tokens["refresh_token"])
    with env.server.client() as http:
        refreshed = http.post(
            "/oauth2/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=secret,
        )
    assert_error(refreshed, 400, "invalid_grant")
    assert_error(exchange(env, env.secret, pending, pending_verifier), 400, "invalid_grant")
    assert active(other_tokens["access_token"]) and active(other_tokens["refresh_token"])


def test_the_session_cookie_is_secure_httponly_lax_and_sign_out_ends_it(env: Env, browser: Browser) -> None:
    query = authorize_query(env.mtls, new_verifier())
    signed_in = browser.sign_in(query)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == f"/oauth2/authorize?{query}"
    cookies = signed_in.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("__Host-tokensmith-session="))
    flags = {part.strip().lower() for part in session.split(";")[1:]}
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= flags
    assert not any(flag.startswith("domain") for flag in flags)
    page = browser.get("/oauth2/signout")
    out = browser.post("/oauth2/signout", {"csrf_token": csrf(page.text)})
    assert out.status_code == 200 and "signed-out" in out.text
    # Even a copy of the old cookie no longer signs anyone in: the session is gone server-side.
    again = browser.get(f"/oauth2/authorize?{query}")
    assert again.status_code == 303 and again.headers["location"].startswith("/oauth2/login?")


def test_forms_without_the_csrf_token_are_refused(env: Env, browser: Browser) -> None:
    query = authorize_query(env.mtls, new_verifier())
    browser.get(f"/oauth2/login?{query}")
    for token in ("", "forged"):
        answer = browser.post(
            "/oauth2/login",
            {"csrf_token": token, "request": query, "username": "alice", "password": PASSWORD},
        )
        assert answer.status_code == 403 and "__Host-tokensmith-session" not in answer.headers.get(
            "set-cookie", ""
        )
    assert browser.sign_in(query).status_code == 303
    consent = browser.post("/oauth2/consent", {"csrf_token": "forged", "request": query, "decision": "allow"})
    assert consent.status_code == 403 and "location" not in consent.headers


def test_a_flood_of_sign_ins_gets_busy_pages_not_json(env: Env) -> None:
    """Sign-ins for made-up users sent at once fill the password hashing pool (each costs a
    KDF run all the same); the ones past it get 503 with Retry-After and a page, with the
    pages' security headers, asking to try again: never the token endpoint's JSON."""

    async def flood() -> list[httpx.Response]:
        context = ssl.create_default_context(cafile=str(env.server.deployment.server_cert))
        clients = [httpx.AsyncClient(base_url=env.server.url, verify=context, timeout=60) for _ in range(90)]
        try:
            tokens = [csrf((await c.get("/oauth2/login")).text) for c in clients]
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            "/oauth2/login",
                            data={"csrf_token": t, "request": "", "username": f"ghost{i}", "password": "p"},
                        )
                        for i, (c, t) in enumerate(zip(clients, tokens, strict=True))
                    )
                )
            )
        finally:
            for c in clients:
                await c.aclose()

    for _ in range(3):  # the pool fills unless the machine is very fast; try again if not
        answers = asyncio.run(flood())
        if any(a.status_code == 503 for a in answers):
            break
    assert {a.status_code for a in answers} == {401, 503}
    for answer in answers:
        assert answer.headers["content-type"].startswith("text/html"), answer.text
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1" and "busy" in answer.text


def test_the_login_page_locks_out_as_the_password_grant_does(env: Env, browser: Browser) -> None:
    """Three wrong passwords from one source lock the user out of it: the right password is
    then refused too, with the same answer as a wrong one."""
    query = authorize_query(env.mtls, new_verifier())
    answers = [browser.sign_in(query, "locked", "wrong") for _ in range(3)]
    assert all(a.status_code == 401 and "wrong" in a.text for a in answers)
    refused = browser.sign_in(query, "locked", PASSWORD)
    assert refused.status_code == 401 and refused.text.count("too many attempts") == 1
    assert "user 'locked' is locked out" in env.server.log()
    assert PASSWORD not in env.server.log()


def test_a_public_client_with_pkce_and_a_certificate_gets_a_bound_refresh_token(
    env: Env, browser: Browser
) -> None:
    """RFC 8705 §4: a public client presenting a certificate gets a refresh token bound to it;
    another certificate cannot use it."""
    verifier = new_verifier()
    params = browser.code_for(env.public, verifier, scope="read", redirect_uri=LOOPBACK)
    answer = exchange(env, env.public, params["code"], verifier, cert=env.cert, redirect_uri=LOOPBACK)
    assert answer.status_code == 200, answer.text
    refresh = answer.json()["refresh_token"]
    with env.server.client(cert=env.other_cert) as http:
        stolen = http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": env.public["client_id"],
            },
        )
    assert_error(stolen, 400, "invalid_grant")
    with env.server.client(cert=env.cert) as http:
        own = http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": env.public["client_id"],
            },
        )
    assert own.status_code == 200, own.text


@pytest.mark.parametrize("port", [8123, 51234, 1])
def test_a_loopback_redirect_uri_may_name_any_port(env: Env, browser: Browser, port: int) -> None:
    """RFC 8252 §7.3: the native client registered http://127.0.0.1:8123/cb and listens on
    whichever port was free; the code goes to the port it named, and the token request must
    repeat that URI."""
    redirect_uri = f"http://127.0.0.1:{port}/cb"
    verifier = new_verifier()
    code = browser.code_for(env.public, verifier, scope="read", redirect_uri=redirect_uri)["code"]
    if port != 8123:
        assert_error(exchange(env, env.public, code, verifier, redirect_uri=LOOPBACK), 400, "invalid_grant")
    answer = exchange(env, env.public, code, verifier, redirect_uri=redirect_uri)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:51234/cb/",
        "http://127.0.0.2:8123/cb",
        "http://localhost:8123/cb",
        "http://[::1]:8123/cb",
    ],
)
def test_a_loopback_redirect_uri_differing_but_in_its_port_is_shown(
    env: Env, browser: Browser, redirect_uri: str
) -> None:
    query = authorize_query(env.public, new_verifier(), redirect_uri=redirect_uri)
    answer = browser.get(f"/oauth2/authorize?{query}")
    assert answer.status_code == 400 and "not registered for this client" in answer.text


# --- what the authorization endpoint shows instead of redirecting ---------------------------------
# --- what the authorization endpoint shows instead of redirecting ---------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"client_id": None}, "names no client"),
        ({"client_id": "nobody"}, "not registered here"),
        ({"redirect_uri": "https://attacker.example/cb"}, "not registered for this client"),
        ({"redirect_uri": CALLBACK + "x"}, "not registered for this client"),  # one character more
        ({"redirect_uri": CALLBACK[:-1]}, "not registered for this client"),  # one character less
        ({"redirect_uri": CALLBACK.replace("cb", "cB")}, "not registered for this client"),  # one changed
        ({"redirect_uri": None}, "did not register exactly one"),  # web registered two
    ],
)
def test_a_wrong_client_or_redirect_uri_is_shown_never_redirected(
    env: Env, browser: Browser, change: dict, message: str
) -> None:
    """RFC 6749 §4.1.2.1, RFC 9700 §4.1.3: exact matching; the error is shown to the user."""
    query = authorize_query(env.secret, new_verifier(), **{"redirect_uri": CALLBACK, **change})
    answer = browser.get(f"/oauth2/authorize?{query}")
    assert answer.status_code == 400 and "location" not in answer.headers
    assert message in answer.text and answer.headers["content-type"].startswith("text/html")
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"


def test_a_repeated_redirect_uri_is_shown(env: Env, browser: Browser) -> None:
    query = authorize_query(env.mtls, new_verifier()) + "&redirect_uri=" + urllib.parse.quote(CALLBACK) * 1
    query += "&redirect_uri=" + urllib.parse.quote(CALLBACK)
    answer = browser.get(f"/oauth2/authorize?{query}")
    assert answer.status_code == 400 and "more than once" in answer.text


# --- RFC 6749 §4.1.2.1: errors sent back to the client -----------------------------------------------


def redirected_error(answer: httpx.Response, env: Env, error: str, state: str | None) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(CALLBACK + "?"), location
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert params["error"] == error and params["iss"] == env.server.url
    assert params.get("state") == state
    return params


@pytest.mark.parametrize(
    "change, error",
    [
        ({"response_type": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),  # PKCE is required of every client
        ({"code_challenge_method": None}, "invalid_request"),  # that is "plain" (RFC 7636 §4.3)
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"scope": 'read "x'}, "invalid_scope"),
    ],
)
def test_request_errors_are_redirected_with_state_and_iss(
    env: Env, browser: Browser, change: dict, error: str
) -> None:
    query = authorize_query(env.mtls, new_verifier(), state="xyz", **change)
    redirected_error(browser.get(f"/oauth2/authorize?{query}"), env, error, "xyz")


def test_a_repeated_parameter_is_invalid_request(env: Env, browser: Browser) -> None:
    query = authorize_query(env.mtls, new_verifier(), state="xyz") + "&scope=read&scope=write"
    params = redirected_error(browser.get(f"/oauth2/authorize?{query}"), env, "invalid_request", "xyz")
    assert "scope" in params["error_description"]


def test_a_client_not_registered_for_the_grant_is_unauthorized_client(env: Env, browser: Browser) -> None:
    query = authorize_query(env.cc, new_verifier(), state="s1")
    redirected_error(browser.get(f"/oauth2/authorize?{query}"), env, "unauthorized_client", "s1")


def test_deny_is_access_denied(env: Env, browser: Browser) -> None:
    query = authorize_query(env.mtls, new_verifier(), state="s2", scope="write")
    assert browser.sign_in(query, "bob").status_code == 303
    redirected_error(browser.consent(query, decision="deny"), env, "access_denied", "s2")


def test_a_store_failure_while_issuing_is_sent_back_as_server_error_or_temporarily_unavailable(
    env: Env, browser: Browser
) -> None:
    """An unavailable store (here: the table is gone) is temporarily_unavailable; anything
    unexpected (here: a trigger aborts the insert) is server_error; both on the redirect URI,
    never a 500 page, and the next request works again."""
    query = authorize_query(env.mtls, new_verifier(), state="s3", scope="read")
    assert browser.sign_in(query).status_code == 303
    assert browser.consent(query).status_code == 303  # consent is remembered from here on
    database = env.server.deployment.database
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE authorization_codes RENAME TO codes_away")
    try:
        redirected_error(browser.get(f"/oauth2/authorize?{query}"), env, "temporarily_unavailable", "s3")
    finally:
        with sqlite3.connect(database) as db:
            db.execute("ALTER TABLE codes_away RENAME TO authorization_codes")
    with sqlite3.connect(database) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON authorization_codes BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    try:
        redirected_error(browser.get(f"/oauth2/authorize?{query}"), env, "server_error", "s3")
    finally:
        with sqlite3.connect(database) as db:
            db.execute("DROP TRIGGER refuse")
    answer = browser.get(f"/oauth2/authorize?{query}")
    assert answer.status_code == 303 and "code=" in answer.headers["location"]
    assert "Traceback" in env.server.log()  # the unexpected one is logged whole, for the operator


# --- RFC 6749 §5.2: the token endpoint on this path ----------------------------------------------


@pytest.fixture
def issued(env: Env, browser: Browser) -> tuple[str, str]:
    """A fresh code for the mtls client, and its verifier."""
    verifier = new_verifier()
    return browser.code_for(env.mtls, verifier, scope="read")["code"], verifier


def test_replaying_a_code_revokes_the_tokens_issued_for_it(env: Env, issued: tuple[str, str]) -> None:
    code, verifier = issued
    first = exchange(env, env.mtls, code, verifier, cert=env.cert)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert_error(exchange(env, env.mtls, code, verifier, cert=env.cert), 400, "invalid_grant")
    assert introspect(env, env.mtls, tokens["access_token"]) == {"active": False}
    assert introspect(env, env.mtls, tokens["refresh_token"]) == {"active": False}
    env.server.wait_for_log("authorization code replay by client")


@pytest.mark.parametrize(
    "wrong", ["another verifier", "the verifier cut short", "another redirect URI", "no redirect URI"]
)
def test_a_wrong_verifier_or_redirect_uri_leaves_the_code_to_its_client(
    env: Env, browser: Browser, wrong: str
) -> None:
    """RFC 7636 §4.6, RFC 6749 §4.1.3: the verifier and the redirect URI are checked before
    the code is spent, so whoever else holds the code cannot burn it with wrong ones."""
    verifier = new_verifier()
    code = browser.code_for(env.mtls, verifier, scope="read", redirect_uri=CALLBACK)["code"]
    given: dict[str, str | None] = {
        "another verifier": {"verifier": new_verifier()},
        "the verifier cut short": {"verifier": verifier[:-1]},
        "another redirect URI": {"redirect_uri": CALLBACK + "/"},
        "no redirect URI": {"redirect_uri": None},  # named in the request, so required here
    }[wrong]
    answer = exchange(
        env,
        env.mtls,
        code,
        given.get("verifier", verifier),
        cert=env.cert,
        redirect_uri=given.get("redirect_uri", CALLBACK),
    )
    assert_error(answer, 400, "invalid_grant")
    assert exchange(env, env.mtls, code, verifier, cert=env.cert).status_code == 200


def test_a_replay_failing_the_checks_revokes_nothing(env: Env, issued: tuple[str, str]) -> None:
    """RFC 6749 §4.1.2's revocation on a code's second use is for its client's own replay:
    someone holding a leaked code, once redeemed, cannot revoke the client's tokens with a
    wrong verifier, a wrong redirect URI or as another client."""
    code, verifier = issued
    first = exchange(env, env.mtls, code, verifier, cert=env.cert)
    assert first.status_code == 200, first.text
    tokens = first.json()
    assert_error(exchange(env, env.mtls, code, new_verifier(), cert=env.cert), 400, "invalid_grant")
    assert_error(
        exchange(env, env.mtls, code, verifier, cert=env.cert, redirect_uri=OTHER_CALLBACK),
        400,
        "invalid_grant",
    )
    assert_error(exchange(env, env.public, code, verifier, redirect_uri=CALLBACK), 400, "invalid_grant")
    assert introspect(env, env.mtls, tokens["access_token"])["active"] is True
    assert introspect(env, env.mtls, tokens["refresh_token"])["active"] is True
    # The client's own replay still revokes them.
    assert_error(exchange(env, env.mtls, code, verifier, cert=env.cert), 400, "invalid_grant")
    assert introspect(env, env.mtls, tokens["access_token"]) == {"active": False}


def test_concurrent_redemptions_of_a_code_give_exactly_one_token(env: Env, issued: tuple[str, str]) -> None:
    """The code is spent atomically once the checks pass: of 20 redemptions sent at once,
    exactly one gets tokens."""
    code, verifier = issued
    statuses: Counter[int] = Counter()
    barrier = threading.Barrier(20)

    def redeem() -> None:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": CALLBACK,
            "client_id": str(env.mtls["client_id"]),
        }
        with env.server.client(cert=env.cert) as http:
            http.get("/.well-known/oauth-authorization-server")  # connected before the barrier
            barrier.wait()
            statuses[http.post("/oauth2/token", data=data).status_code] += 1

    threads = [threading.Thread(target=redeem) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == Counter({200: 1, 400: 19})


def test_a_redirect_uri_differing_by_one_character_is_invalid_grant(
    env: Env, issued: tuple[str, str]
) -> None:
    code, verifier = issued
    assert_error(
        exchange(env, env.mtls, code, verifier, cert=env.cert, redirect_uri=CALLBACK + "/"),
        400,
        "invalid_grant",
    )


def test_the_redirect_uri_given_in_the_request_must_be_repeated(env: Env, browser: Browser) -> None:
    """RFC 6749 §4.1.3: "REQUIRED, if the redirect_uri parameter was included"."""
    verifier = new_verifier()
    code = browser.code_for(env.mtls, verifier, scope="read", redirect_uri=CALLBACK)["code"]
    assert_error(
        exchange(env, env.mtls, code, verifier, cert=env.cert, redirect_uri=None), 400, "invalid_grant"
    )


def test_a_code_presented_by_another_client_is_refused_and_left_to_its_own(
    env: Env, issued: tuple[str, str]
) -> None:
    code, verifier = issued
    assert_error(exchange(env, env.secret, code, verifier), 400, "invalid_grant")
    assert_error(exchange(env, env.public, code, verifier, redirect_uri=CALLBACK), 400, "invalid_grant")
    assert exchange(env, env.mtls, code, verifier, cert=env.cert).status_code == 200
    assert "presented an authorization code issued to client" in env.server.log()


@pytest.mark.parametrize(
    "change, status, error",
    [
        ({"code": None}, 400, "invalid_request"),
        ({"code_verifier": None}, 400, "invalid_request"),
        ({"code": "not-a-code"}, 400, "invalid_grant"),
        ({"code_verifier": "x" * 20}, 400, "invalid_grant"),  # malformed (RFC 7636 §4.1)
        ({"scope": "write"}, 400, "invalid_scope"),  # wider than the code grants
        ({"grant_type": "authorization-code"}, 400, "unsupported_grant_type"),
        ({"cert": None}, 401, "invalid_client"),  # the mtls client without its certificate
        ({"cert": "other"}, 401, "invalid_client"),
    ],
)
def test_token_request_errors(
    env: Env, issued: tuple[str, str], change: dict, status: int, error: str
) -> None:
    code, verifier = issued
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": CALLBACK,
        "client_id": str(env.mtls["client_id"]),
    }
    cert: tuple[Path, Path] | None = env.cert
    for name, value in change.items():
        if name == "cert":
            cert = env.other_cert if value == "other" else None
        elif value is None:
            data.pop(name)
        else:
            data[name] = value
    with env.server.client(cert=cert) as http:
        assert_error(http.post("/oauth2/token", data=data), status, error)


def test_a_wrong_client_secret_is_invalid_client(env: Env, browser: Browser) -> None:
    verifier = new_verifier()
    code = browser.code_for(env.secret, verifier, scope="read", redirect_uri=CALLBACK)["code"]
    answer = exchange(env, env.secret, code, verifier, secret="wrong")
    assert_error(answer, 401, "invalid_client")
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert exchange(env, env.secret, code, verifier).status_code == 200  # the code was not spent


def test_a_client_no_longer_registered_for_the_grant_is_unauthorized_client(
    env: Env, browser: Browser, tmp_path: Path
) -> None:
    dep = env.server.deployment
    client = dep.add_client(
        "fickle",
        "--grant-type",
        "authorization_code",
        "--auth-method",
        "client_secret_basic",
        "--redirect-uri",
        CALLBACK,
    )
    verifier = new_verifier()
    code = browser.code_for(client, verifier)["code"]
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"grant_types": ["client_credentials"], "redirect_uris": None}))
    dep.cli("sp", "update", str(client["client_id"]), "--metadata", str(change))
    assert_error(exchange(env, client, code, verifier), 400, "unauthorized_client")


def test_an_expired_code_is_invalid_grant(tmp_path: Path, keystore: Path, wheel_cache: Path) -> None:
    """<AuthorizationCodeLifetime> is read from identity.xml; a code past it is refused."""
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth="<AuthorizationCodeLifetime>1</AuthorizationCodeLifetime>",
    )
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    client = dep.add_client(
        "brief",
        "--grant-type",
        "authorization_code",
        "--auth-method",
        "client_secret_basic",
        "--redirect-uri",
        CALLBACK,
    )
    server = start_server(dep)
    try:
        browser = Browser(server)
        verifier = new_verifier()
        code = browser.code_for(client, verifier)["code"]
        browser.close()
        time.sleep(2.1)
        with server.client() as http:
            answer = http.post(
                "/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "code_verifier": verifier,
                    "redirect_uri": CALLBACK,
                },
                auth=(str(client["client_id"]), str(client["client_secret"])),
            )
        assert_error(answer, 400, "invalid_grant")
        assert "expired" in answer.json()["error_description"]
    finally:
        server.stop()


def test_codes_and_sessions_are_stored_hashed(env: Env, browser: Browser) -> None:
    verifier = new_verifier()
    code = browser.code_for(env.mtls, verifier, scope="read")["code"]
    session = browser.http.cookies["__Host-tokensmith-session"]
    database = env.server.deployment.database
    raw = database.read_bytes() + database.with_name(database.name + "-wal").read_bytes()
    assert code.encode() not in raw and session.encode() not in raw
    with sqlite3.connect(database) as db:
        assert db.execute(
            "SELECT count(*) FROM authorization_codes WHERE code_hash = ?", (token_hash(code),)
        ).fetchone() == (1,)
        assert db.execute(
            "SELECT count(*) FROM signin_sessions WHERE session_hash = ?", (token_hash(session),)
        ).fetchone() == (1,)


# --- Authlib, an independent client ------------------------------------------------------------------


def test_authlib_runs_the_grant_with_pkce(env: Env, browser: Browser) -> None:
    """Authlib's OAuth2Client: create_authorization_url with a PKCE S256 challenge, the
    browser part, then fetch_token with the verifier, over TLS with the client's certificate."""
    from authlib.integrations.httpx_client import OAuth2Client

    context = ssl.create_default_context(cafile=str(env.server.deployment.server_cert))
    context.load_cert_chain(*env.cert)
    verifier = secrets.token_urlsafe(64)
    with OAuth2Client(
        client_id=str(env.mtls["client_id"]),
        token_endpoint_auth_method="none",  # the certificate authenticates it: no secret in the body
        scope="read write",
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
        verify=context,
    ) as client:
        url, state = client.create_authorization_url(
            env.server.url + "/oauth2/authorize", code_verifier=verifier
        )
        query = urllib.parse.urlsplit(url).query
        assert browser.sign_in(query).status_code == 303
        back = browser.consent(query)
        assert back.status_code == 303
        location = back.headers["location"]
        token = client.fetch_token(
            env.server.url + "/oauth2/token", authorization_response=location, code_verifier=verifier
        )
    assert token["token_type"] == "Bearer" and token["scope"] == "read write"
    assert introspect(env, env.mtls, token["access_token"])["cnf"] == {"x5t#S256": env.pair.x5t_s256()}


def test_the_metadata_describes_the_endpoint(env: Env) -> None:
    with env.server.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
    assert meta["authorization_endpoint"] == env.server.url + "/oauth2/authorize"
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "authorization_code" in meta["grant_types_supported"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]


def test_a_forged_request_field_cannot_split_the_redirect(env: Env, browser: Browser) -> None:
    """The login form's request field goes into a Location header: a CR LF in it is encoded,
    never sent raw, and the answer is a redirect like any other."""
    page = browser.get("/oauth2/login")
    answer = browser.post(
        "/oauth2/login",
        {
            "csrf_token": csrf(page.text),
            "request": "client_id=x\r\nSet-Cookie: evil=1",
            "username": "bob",
            "password": PASSWORD,
        },
    )
    assert answer.status_code == 303 and "evil" not in answer.headers.get("set-cookie", "")
    assert answer.headers["location"] == "/oauth2/authorize?client_id=x%0D%0ASet-Cookie%3A+evil%3D1"


def test_signing_in_again_ends_the_previous_session(env: Env, browser: Browser) -> None:
    """Every sign-in gets a new session id and ends the one the browser had (session fixation)."""
    query = authorize_query(env.mtls, new_verifier())
    assert browser.sign_in(query).status_code == 303
    first = browser.http.cookies["__Host-tokensmith-session"]
    page = browser.get(f"/oauth2/login?{query}")
    assert page.status_code == 303  # signed in: straight on to the request
    login = browser.get("/oauth2/login")
    again = browser.post(
        "/oauth2/login",
        {"csrf_token": csrf(login.text), "request": query, "username": "bob", "password": PASSWORD},
    )
    assert again.status_code == 303
    second = browser.http.cookies["__Host-tokensmith-session"]
    assert second != first
    with env.server.client() as other:
        other.cookies.set("__Host-tokensmith-session", first, domain="127.0.0.1")
        stale = other.get(f"/oauth2/authorize?{query}")
    assert stale.status_code == 303 and stale.headers["location"].startswith("/oauth2/login?")


@pytest.mark.parametrize("how", ["cli", "api"])
def test_a_password_change_ends_the_users_sign_in_sessions(env: Env, browser: Browser, how: str) -> None:
    """Red team: a sign-in session (a stolen cookie) outlived the user's password change and
    went on getting codes. `tokensmith user password` and PATCH /api/users/NAME end it;
    another user's session stays."""
    dep = env.server.deployment
    user, admin = f"pwchange-{how}", f"pwadmin-{how}"
    dep.cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")
    dep.cli("user", "add", admin, "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    query = authorize_query(env.mtls, new_verifier())
    assert browser.sign_in(query, user).status_code == 303
    stolen = browser.http.cookies["__Host-tokensmith-session"]
    bystander = Browser(env.server)
    try:
        assert bystander.sign_in(query, "bob").status_code == 303
        assert browser.get(f"/oauth2/authorize?{query}").status_code == 200  # signed in: consent
        if how == "cli":
            dep.cli("user", "password", user, "--password-stdin", input="a-new-password-1\n")
        else:
            with env.server.client(auth=(admin, PASSWORD)) as api:
                changed = api.patch(
                    f"/api/users/{user}",
                    json={"password": "a-new-password-1"},
                    headers={"Content-Type": "application/json"},
                )
                assert changed.status_code == 200, changed.text
        with env.server.client() as thief:
            thief.cookies.set("__Host-tokensmith-session", stolen, domain="127.0.0.1")
            stale = thief.get(f"/oauth2/authorize?{query}")
        assert stale.status_code == 303 and stale.headers["location"].startswith("/oauth2/login?")
        assert bystander.get(f"/oauth2/authorize?{query}").status_code == 200
    finally:
        bystander.close()


@pytest.mark.parametrize("how", ["cli", "api"])
def test_revoking_a_user_refuses_the_codes_they_have_not_redeemed(
    env: Env, browser: Browser, how: str
) -> None:
    """Red team: `tokensmith user revoke` (and POST /api/users/NAME/revoke-tokens) ended the
    user's tokens but left a code issued to them and not yet redeemed, which then gave live
    tokens. Revoking a user ends every token and grant of theirs, codes included; another
    user's code stays good."""
    dep = env.server.deployment
    secret = (str(env.secret["client_id"]), str(env.secret["client_secret"]))

    def active(token: str) -> bool:
        with env.server.client() as http:
            answer = http.post("/oauth2/introspect", data={"token": token}, auth=secret)
        assert answer.status_code == 200, answer.text
        return answer.json()["active"]

    user, admin = f"revoked-{how}", f"revoker-{how}"
    dep.cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")
    dep.cli("user", "add", admin, "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    redeemed_verifier, pending_verifier = new_verifier(), new_verifier()
    redeemed = browser.code_for(
        env.secret, redeemed_verifier, user=user, scope="read", redirect_uri=CALLBACK
    )["code"]
    tokens = exchange(env, env.secret, redeemed, redeemed_verifier).json()
    pending = browser.code_for(env.secret, pending_verifier, user=user, scope="read", redirect_uri=CALLBACK)[
        "code"
    ]
    bystander = Browser(env.server)
    try:
        other_verifier = new_verifier()
        other = bystander.code_for(
            env.secret, other_verifier, user="bob", scope="read", redirect_uri=CALLBACK
        )["code"]
    finally:
        bystander.close()
    assert active(tokens["access_token"]) and active(tokens["refresh_token"])

    if how == "cli":
        dep.cli("user", "revoke", user)
    else:
        with env.server.client(auth=(admin, PASSWORD)) as api:
            answer = api.post(
                f"/api/users/{user}/revoke-tokens", headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 200, answer.text

    assert_error(exchange(env, env.secret, pending, pending_verifier), 400, "invalid_grant")
    assert not active(tokens["access_token"]) and not active(tokens["refresh_token"])
    assert exchange(env, env.secret, other, other_verifier).status_code == 200

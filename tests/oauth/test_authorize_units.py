"""Focused tests of the authorization code grant's parts: PKCE, request validation, the
redirects, redirect URI registration, CSRF, and the pages in process (templates in conf/
take precedence). tests/oauth/test_authorization_code.py runs them through the server."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

import pytest
from conftest import new_deployment
from tokensmith.app.factory import create_app
from tokensmith.app.signin import ACCOUNT_PATH, CSRF_COOKIE, LOGIN_PATH, redirect_host
from tokensmith.config.settings import load_config
from tokensmith.errors import InvalidClientMetadataError
from tokensmith.models import Client
from tokensmith.oauth import authorize, pkce
from tokensmith.oauth.authorize import RedirectedError, ShownError
from tokensmith.oauth.clientmetadata import check_redirect_uri
from tokensmith.security import hashing as kdf
from tokensmith.storage.sqlite import SQLiteStorage


def test_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce.s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce.verifier_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert not pkce.verifier_matches(verifier[:-1] + "l", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    # §4.1: 43 to 128 unreserved characters; anything else never matches.
    for bad in ("a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + " "):
        assert not pkce.verifier_matches(bad, pkce.s256(bad))


@pytest.fixture
def store(tmp_path: Path):  # noqa: ANN201
    with SQLiteStorage(tmp_path / "tokens.db") as storage:
        storage.add_client(
            Client(
                "c1",
                "one",
                "client_secret_basic",
                ("authorization_code",),
                ("read", "write"),
                metadata={"redirect_uris": ["https://c.example/cb?tenant=1"]},
            )
        )
        storage.add_client(Client("c2", "two", "client_secret_basic", ("client_credentials",)))
        yield storage


def query(**params: str | None) -> str:
    base = {
        "response_type": "code",
        "client_id": "c1",
        "code_challenge": pkce.s256("v" * 43),
        "code_challenge_method": "S256",
        "state": "st",
    }
    base.update(params)
    return urllib.parse.urlencode({k: v for k, v in base.items() if v is not None})


def test_a_valid_request_takes_the_one_registered_redirect_uri_and_all_scopes(store: SQLiteStorage) -> None:
    checked = authorize.validate(store, query())
    assert checked.redirect_uri == "https://c.example/cb?tenant=1" and not checked.redirect_uri_given
    assert checked.scope == "read write" and checked.state == "st"
    named = authorize.validate(store, query(redirect_uri="https://c.example/cb?tenant=1", scope="read"))
    assert named.redirect_uri_given and named.scope == "read"


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": None},
        {"client_id": "nobody"},
        {"client_id": "c2"},  # no redirect URI registered
        {"redirect_uri": "https://c.example/cb?tenant=2"},
        {"redirect_uri": "https://c.example/cb"},  # the query is part of the URI
    ],
)
def test_requests_without_a_place_to_answer_are_shown(store: SQLiteStorage, params: dict) -> None:
    with pytest.raises(ShownError):
        authorize.validate(store, query(**params))


def test_a_client_id_the_store_cannot_take_is_no_client(store: SQLiteStorage) -> None:
    """Issue 22: a client_id with a lone surrogate is "not registered here", not an encoding
    error from the store. (Over HTTP the query string is decoded strictly and such an id never
    gets this far; validate does not count on its callers for that.)"""
    for lone in ("\ud800", "c1\udcff"):
        with pytest.raises(ShownError, match="not registered"):
            authorize.validate(store, query(client_id=None) + "&client_id=" + lone)


def test_a_parameter_without_a_value_is_omitted(store: SQLiteStorage) -> None:
    """RFC 6749 §3.1: an empty scope is no scope (all the client may have), an empty state
    no state, an empty response_type a missing one."""
    checked = authorize.validate(store, query(scope="", state=""))
    assert checked.scope == "read write" and checked.state is None
    with pytest.raises(RedirectedError) as raised:
        authorize.validate(store, query(response_type=""))
    assert raised.value.error.error == "invalid_request"


def test_an_overlong_or_undecodable_request_is_shown(store: SQLiteStorage) -> None:
    with pytest.raises(ShownError):
        authorize.validate(store, query(state="x" * 9000))
    with pytest.raises(ShownError):
        authorize.validate(store, query() + "&state=%ff")


def test_errors_keep_the_registered_query_and_add_state_and_iss(store: SQLiteStorage) -> None:
    with pytest.raises(RedirectedError) as raised:
        authorize.validate(store, query(response_type="token"))
    location = authorize.error_location(raised.value, "https://as.example")
    parts = urllib.parse.urlsplit(location)
    assert location.startswith("https://c.example/cb?tenant=1&")
    assert dict(urllib.parse.parse_qsl(parts.query)) == {
        "tenant": "1",
        "error": "unsupported_response_type",
        "error_description": "only response_type=code is supported",
        "state": "st",
        "iss": "https://as.example",
    }
    checked = authorize.validate(store, query(state=None))
    assert "state=" not in authorize.code_location(checked, "abc", "https://as.example")


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/cb",
        "https://app.example:8443/cb?x=1",
        "http://127.0.0.1:8080/callback",
        "http://[::1]:9000/cb",
    ],
)
def test_redirect_uris_that_may_be_registered(uri: str) -> None:
    assert check_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example/cb",  # plain http off loopback
        "http://localhost:8080/cb",  # RFC 8252 §8.3: localhost is not recommended
        "https://app.example/cb#frag",
        "/relative",
        "https://app.example/c b",
        "https://app.example:port/",
        "javascript:alert(1)",
        "https://trusted.example@evil.example/cb",  # goes to evil.example (RFC 3986 §7.6)
        "https://user:secret@app.example/cb",
        "https://app.example@/cb",
        "http://127.0.0.1:80@127.0.0.2/cb",
        # RFC 8252 §7.3's loopback literals exactly: not the rest of 127.0.0.0/8 nor other
        # spellings of ::1, and no IPv6 zone identifier (RFC 6874), on http or https.
        "http://127.0.0.2/cb",
        "http://127.1/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "http://[0:0:0:0:0:0:0:1]/cb",
        "http://[::1%25lo]/cb",
        "http://[::1%lo]/cb",
        "https://[fe80::1%25eth0]/cb",
    ],
)
def test_redirect_uris_that_may_not(uri: str) -> None:
    with pytest.raises(InvalidClientMetadataError) as raised:
        check_redirect_uri(uri)
    assert "secret" not in str(raised.value)  # userinfo may be a password: never repeated


@pytest.mark.parametrize(
    "uri", ["https://client.example/cb/日本", "https://bücher.example/cb", "https://app.example/cb?q=é"]
)
def test_a_redirect_uri_must_be_ascii(uri: str) -> None:
    """RFC 3986 §2: a URI is ASCII; anything else would go into Location as raw UTF-8."""
    with pytest.raises(InvalidClientMetadataError, match="not ASCII.*percent-encodes"):
        check_redirect_uri(uri)
    assert check_redirect_uri("https://client.example/cb/%E6%97%A5%E6%9C%AC")


@pytest.mark.parametrize(
    "uri, registered, matches",
    [
        ("http://127.0.0.1:51004/cb", "http://127.0.0.1:8123/cb", True),
        ("http://127.0.0.1/cb", "http://127.0.0.1:8123/cb", True),
        ("http://127.0.0.1:51004/cb", "http://127.0.0.1/cb", True),
        ("http://[::1]:51004/cb?x=1", "http://[::1]:8123/cb?x=1", True),
        ("http://127.0.0.1:51004/cb/", "http://127.0.0.1:8123/cb", False),  # the path exactly
        ("http://127.0.0.1:51004/cb?x=2", "http://127.0.0.1:8123/cb?x=1", False),
        ("http://127.0.0.2:8123/cb", "http://127.0.0.1:8123/cb", False),  # the host exactly
        # Registered before registration refused them: matched exactly, never on any port.
        ("http://127.0.0.2:51004/cb", "http://127.0.0.2:8123/cb", False),
        ("http://127.0.0.2:8123/cb", "http://127.0.0.2:8123/cb", True),
        ("http://[::ffff:127.0.0.1]:51004/cb", "http://[::ffff:127.0.0.1]:8123/cb", False),
        ("http://[0:0:0:0:0:0:0:1]:51004/cb", "http://[0:0:0:0:0:0:0:1]:8123/cb", False),
        ("http://[::1]:8123/cb", "http://127.0.0.1:8123/cb", False),
        ("http://127.0.0.1:0/cb", "http://127.0.0.1:8123/cb", False),
        ("http://127.0.0.1:65536/cb", "http://127.0.0.1:8123/cb", False),
        ("http://127.0.0.1:80@evil.example/cb", "http://127.0.0.1:8123/cb", False),
        ("https://127.0.0.1:51004/cb", "https://127.0.0.1:8123/cb", False),  # http only
        ("http://localhost:51004/cb", "http://localhost:8123/cb", False),  # RFC 8252 §8.3
        ("HTTP://127.0.0.1:51004/cb", "http://127.0.0.1:8123/cb", False),
        ("https://app.example:8443/cb", "https://app.example/cb", False),
    ],
)
def test_a_loopback_redirect_uri_matches_on_any_port(uri: str, registered: str, matches: bool) -> None:
    """RFC 8252 §7.3: a loopback IP redirect URI with any port; everything else exactly."""
    assert authorize.redirect_uri_registered(uri, [registered]) is matches


def test_the_request_keeps_the_loopback_port_it_named(store: SQLiteStorage) -> None:
    store.add_client(
        Client(
            "native",
            "native",
            "none",
            ("authorization_code",),
            metadata={"redirect_uris": ["http://127.0.0.1:8123/cb", "http://localhost:8123/cb"]},
        )
    )
    checked = authorize.validate(store, query(client_id="native", redirect_uri="http://127.0.0.1:40001/cb"))
    assert checked.redirect_uri == "http://127.0.0.1:40001/cb" and checked.redirect_uri_given
    location = authorize.code_location(checked, "abc", "https://as.example")
    assert location.startswith("http://127.0.0.1:40001/cb?code=abc&")
    with pytest.raises(ShownError):
        authorize.validate(store, query(client_id="native", redirect_uri="http://localhost:40001/cb"))


@pytest.mark.parametrize("uri", ["https://trusted.example@evil.example/cb", "https://client.example/cb/日本"])
def test_a_redirect_uri_stored_before_the_rules_is_never_redirected_to(
    store: SQLiteStorage, uri: str
) -> None:
    """A client registered when userinfo and non-ASCII were still accepted: shown, not sent."""
    store.add_client(Client("old", "old", "none", ("authorization_code",), metadata={"redirect_uris": [uri]}))
    with pytest.raises(ShownError, match="register it again"):
        authorize.validate(store, query(client_id="old"))
    with pytest.raises(ShownError):
        authorize.validate(store, query(client_id="old", redirect_uri=uri))


@pytest.mark.parametrize(
    "uri, host",
    [
        ("https://client.example/cb", "client.example"),
        ("https://client.example:8443/cb?x=1", "client.example:8443"),
        ("https://trusted.example@evil.example/cb", "evil.example"),
        ("https://a:b@evil.example:444/cb", "evil.example:444"),
        ("http://[::1]:8123/cb", "[::1]:8123"),
        ("http://127.0.0.1:8123/cb", "127.0.0.1:8123"),
    ],
)
def test_the_consent_page_names_the_host_alone(uri: str, host: str) -> None:
    assert redirect_host(uri) == host


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example\\@127.0.0.1/cb",  # a browser goes to evil.example
        "https://app.example/a\\b",
        "https://app.example/<script>",
        'https://app.example/"x"',
        "https://app.example/{x}|^`",
    ],
)
def test_a_redirect_uri_with_a_character_no_uri_holds_is_refused(uri: str) -> None:
    """RFC 3986 §2: urlsplit takes ``\\`` as part of the userinfo, browsers as ``/``."""
    with pytest.raises(InvalidClientMetadataError, match="RFC 3986"):
        check_redirect_uri(uri)
    assert check_redirect_uri("https://app.example/a%5Cb?q=%20&r=~!$'()*+,;=:@") is not None


def test_csrf_matches_only_the_same_non_empty_value() -> None:
    token = authorize.new_csrf_token()
    assert authorize.csrf_matches(token, token)
    assert not authorize.csrf_matches(token, token + "x")
    assert not authorize.csrf_matches(None, token) and not authorize.csrf_matches("", "")


def test_pages_come_from_conf_templates_first(tmp_path: Path, keystore: Path, wheel_cache: Path) -> None:
    """An operator's conf/templates/login.html replaces the bundled one; the other pages stay."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    (dep.conf / "templates").mkdir()
    (dep.conf / "templates" / "login.html").write_text(
        '{% extends "base.html" %}{% block main %}<p id="acme">ACME sign-in</p>'
        '<input name="csrf_token" value="{{ csrf_token }}">{% endblock %}'
    )
    app = create_app(load_config(dep.conf))

    async def go() -> tuple[str, int, str]:
        async with app.test_app():
            client = app.test_client()
            login = await client.get(LOGIN_PATH)
            account = await client.get(ACCOUNT_PATH)
            return (await login.get_data(as_text=True)), account.status_code, account.headers["Location"]

    login, status, location = asyncio.run(go())
    assert '<p id="acme">ACME sign-in</p>' in login and "<title>tokensmith</title>" in login
    assert status == 303 and location == LOGIN_PATH  # not signed in


def test_a_busy_login_page_is_a_page_with_its_headers_and_retry_after(
    tmp_path: Path, keystore: Path, wheel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the password hashing pool full (KdfBusy), the login page answers 503 with a page
    saying so, its security headers and Retry-After, not the token endpoint's JSON; the
    username and the authorization request stay in the form for the retry."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    app = create_app(load_config(dep.conf))
    monkeypatch.setattr(kdf, "_pending", kdf.MAX_PENDING)

    async def go():  # noqa: ANN202
        async with app.test_app():
            client = app.test_client()
            return await client.post(
                LOGIN_PATH,
                form={
                    "csrf_token": "t" * 43,
                    "request": "client_id=c1",
                    "username": "alice",
                    "password": "x",
                },
                headers={"Cookie": f"{CSRF_COOKIE}={'t' * 43}"},
                scheme="https",
            )

    answer = asyncio.run(go())
    body = asyncio.run(answer.get_data(as_text=True))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert "busy" in body and 'value="alice"' in body and 'value="client_id=c1"' in body

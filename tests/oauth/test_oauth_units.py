"""Focused unit tests of the oauth/ modules the end-to-end files reach only through a server:
form parsing, client authentication helpers, grant checks, registration checks, events,
hookspecs, messages, the Runtime and token claims. No server, no event loop."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from tokensmith.app.front import http_request
from tokensmith.errors import InvalidRequestError, InvalidScopeError, UnsupportedGrantTypeError
from tokensmith.oauth import hookspecs
from tokensmith.oauth.clientauth import challenge, claimed_client_id, handshake_chain
from tokensmith.oauth.endpoints import POST_ENDPOINTS, check_content_type, parse_form
from tokensmith.oauth.events import REGISTERED_CLAIMS
from tokensmith.oauth.grants import RotationRefused, check_grant_type, login_source, resolve_scope
from tokensmith.oauth.messages import Headers
from tokensmith.oauth.registration import RegistrationError, check_scope, check_text, printable
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import DER_KEY

# --- forms (RFC 6749 §3.2, Appendix B) ----------------------------------------------------------


def test_parse_form_decodes_plus_and_percent_and_drops_empty_values() -> None:
    assert parse_form(b"a=b+c&d=%C3%A9&e=&&f") == {"a": "b c", "d": "é"}


@pytest.mark.parametrize("body", [b"a=1&a=2", b"a=1&a=", b"x=%zz", b"x=%C3%28", "x=é".encode()])
def test_parse_form_refuses_repeats_and_bad_encoding(body: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        parse_form(body)


@pytest.mark.parametrize(
    "value", ["application/x-www-form-urlencoded", "APPLICATION/x-www-form-urlencoded; charset=utf8"]
)
def test_check_content_type_accepts_utf8_forms(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    "value", [None, "", "text/plain", "application/x-www-form-urlencoded; charset=latin1"]
)
def test_check_content_type_refuses_the_rest(value: str | None) -> None:
    with pytest.raises(InvalidRequestError):
        check_content_type(value)


# --- client authentication helpers (RFC 6749 §2.3, §5.2) ----------------------------------------


def test_claimed_client_id_from_the_body_or_basic() -> None:
    basic = "Basic " + base64.b64encode(b"my%20client:secret").decode()
    assert claimed_client_id({"client_id": "body"}, basic) == "body"
    assert claimed_client_id({}, basic) == "my client"  # §2.3.1: the user name is form-encoded
    assert claimed_client_id({}, "Basic !!!") is None
    assert claimed_client_id({}, "Bearer abc") is None
    assert claimed_client_id({}, None) is None


def test_challenge_follows_the_clients_scheme() -> None:
    assert challenge(None, "r") == {"WWW-Authenticate": 'Basic realm="r"'}
    assert challenge("Digest x", "r") == {"WWW-Authenticate": 'Digest realm="r"'}
    assert challenge('Ba"d x', "r") == {"WWW-Authenticate": 'Basic realm="r"'}


# --- grants -------------------------------------------------------------------------------------


def test_resolve_scope() -> None:
    """RFC 6749 §3.3: no scope asked gets all allowed; asked is granted only within allowed."""
    assert resolve_scope(None, ("read", "write")) == "read write"
    assert resolve_scope("write read write", ("read", "write")) == "write read"
    with pytest.raises(InvalidScopeError):
        resolve_scope("admin", ("read",))
    with pytest.raises(InvalidScopeError):
        resolve_scope('re"ad', ('re"ad',))


def test_check_grant_type() -> None:
    assert check_grant_type({"grant_type": "password"}) == "password"
    with pytest.raises(InvalidRequestError):
        check_grant_type({})
    with pytest.raises(UnsupportedGrantTypeError):
        check_grant_type({"grant_type": "implicit"})


@pytest.mark.parametrize(
    "address, source",
    [
        (None, ""),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1:2", "2001:db8::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_login_source_counts_ipv6_by_its_64(address: str | None, source: str) -> None:
    assert login_source(address) == source


# --- registration checks (the CLI's input) ------------------------------------------------------


def test_check_scope_and_text() -> None:
    assert check_scope("read:all") == "read:all"
    for bad in ("a b", 'a"b', "a\\b", ""):
        with pytest.raises(RegistrationError):
            check_scope(bad)
    assert check_text("Name", "client name") == "Name"
    with pytest.raises(RegistrationError):
        check_text("bad\x1bname", "client name")
    assert "\x1b" not in printable("x\x1by")


# --- events, hookspecs, messages, runtime, tokens, scope keys -----------------------------------


def test_registered_claims_cover_rfc9068_and_rfc7662() -> None:
    assert {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
        "cnf",
        "active",
    } <= REGISTERED_CLAIMS


def test_every_hookspec_is_marked_and_documented() -> None:
    specs = [
        getattr(hookspecs, name)
        for name in dir(hookspecs)
        if hasattr(getattr(hookspecs, name), "tokensmith_spec")
    ]
    assert {spec.__name__ for spec in specs} >= {
        "authenticate_client",
        "pre_token_issue",
        "client_auth_methods",
    }
    assert all(spec.__doc__ for spec in specs)


def test_headers_are_case_insensitive_and_the_last_repeat_wins() -> None:
    headers = Headers([(b"Content-Type", b"a"), (b"X-One", b"1"), (b"x-one", b"2")])
    assert headers["content-type"] == "a" and headers.get("X-ONE") == "2" and "X-One" in headers
    assert len(headers) == 2 and headers.get("missing", "d") == "d"
    request = http_request({"client": ("192.0.2.1", 5), "query_string": b"q=1"}, headers, b"")
    assert request.remote_addr == "192.0.2.1" and request.query_string == b"q=1"
    assert http_request({}, headers, b"").remote_addr is None


def test_runtime_is_frozen() -> None:
    """A reload swaps a whole Runtime; no request can see one change under it."""
    assert dataclasses.is_dataclass(Runtime) and Runtime.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_fast_endpoints_are_the_three_oauth_posts() -> None:
    assert set(POST_ENDPOINTS) == {"/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"}


def test_rotation_refused_is_an_exception() -> None:
    assert issubclass(RotationRefused, Exception)


def test_handshake_chain_prefers_the_servers_der() -> None:
    assert handshake_chain({"extensions": {"tls": {DER_KEY: [b"leaf", b"ca"]}}}) == (b"leaf", b"ca")
    assert handshake_chain({}) == ()


def test_a_code_whose_sign_in_ended_meanwhile_is_access_denied(tmp_path) -> None:  # noqa: ANN001
    """issue_code after the user's session ended (a `user revoke` committed between the
    checks and the code's insert): no code, and the client is sent access_denied with its
    state (RFC 6749 §4.1.2.1) instead of a code that would outlive the revocation."""
    import asyncio
    import types

    from tokensmith.models import Client, Consent, SignInSession, User
    from tokensmith.oauth.authorize import AuthorizationRequest, RedirectedError, issue_code
    from tokensmith.storage.sqlite import SQLiteStorage

    with SQLiteStorage(tmp_path / "store.db") as store:
        store.add_user(User("u1", "hash"))
        user = store.get_user("u1")
        assert user is not None
        store.add_consent(Consent(user.user_id, "c1", ("read",), 1))
        session = SignInSession("ended", user.user_id, "u1", 1, 2**40)  # never stored: revoked
        rt = types.SimpleNamespace(
            storage=store, identity=types.SimpleNamespace(authorization_code_lifetime=60)
        )
        request = AuthorizationRequest(
            Client("c1", "client one", "client_secret_basic", ("authorization_code",)),
            "https://c/cb",
            True,
            "read",
            "st",
            "x" * 43,
            "",
        )
        with pytest.raises(RedirectedError) as refused:
            asyncio.run(issue_code(rt, request, session))  # type: ignore[arg-type]
        assert refused.value.error.error == "access_denied" and refused.value.state == "st"
        assert store._run("SELECT count(*) FROM authorization_codes").fetchone() == (0,)

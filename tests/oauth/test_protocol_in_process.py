"""The OAuth endpoints' protocol answers, in process: the app from ``create_app(config)``
driven through Quart's test client, no subprocess and no socket.

The end-to-end files (test_token_requests.py, test_client_authentication.py,
test_introspection.py, test_revocation.py, test_discovery.py) check the same behaviour over
real TLS; these run in milliseconds each, so the RFC 6749 §5.2 error table, form parsing
(§3.2, Appendix B), RFC 7662 and RFC 7009 answers and RFC 8414 metadata can be checked case
by case. Clients are registered with the real CLI, called in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import new_deployment
from servers import RFC6749_ERROR_CHARS
from tokensmith.app.factory import create_app
from tokensmith.cli import main
from tokensmith.config.settings import load_config

FORM = "application/x-www-form-urlencoded"


class InProcess:
    """One app on its own event loop, with its lifespan started, for a whole module."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, conf: str):
        self.app, self.loop, self.conf = app, loop, conf
        self.client = app.test_client()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str = b"",
        *,
        auth: tuple[str, str] | None = None,
        content_type: str | None = FORM,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; return status, headers (lower-case names) and body."""
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type

        async def go() -> tuple[int, dict[str, str], bytes]:
            response = await self.client.open(
                path,
                method=method,
                data=body.encode() if isinstance(body, str) else body,
                headers=sent,
                auth=auth,
            )
            names = {name.lower(): value for name, value in response.headers.items()}
            return response.status_code, names, await response.get_data()

        return self.loop.run_until_complete(go())

    def json(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, body = self.request(*args, **kwargs)
        return status, headers, json.loads(body) if body else {}

    def cli(self, *args: str) -> dict[str, Any]:
        """``tokensmith ARGS --conf CONF`` in this process; its JSON output."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*args, "--conf", self.conf]) == 0
        return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def app(tmp_path_factory, keystore, wheel_cache) -> Iterator[InProcess]:  # noqa: ANN001
    dep = new_deployment(tmp_path_factory.mktemp("in-process") / "ts", keystore, wheel_cache)
    loop = asyncio.new_event_loop()
    quart = create_app(load_config(dep.conf))
    started = quart.test_app()
    loop.run_until_complete(started.__aenter__())
    try:
        yield InProcess(quart, loop, str(dep.conf))
    finally:
        loop.run_until_complete(started.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(scope="module")
def basic(app: InProcess) -> dict[str, Any]:
    """A client_credentials client with client_secret_basic, scopes read and write."""
    return app.cli(
        "sp",
        "add",
        "basic",
        "--grant-type=client_credentials",
        "--auth-method=client_secret_basic",
        "--scope=read",
        "--scope=write",
    )


@pytest.fixture(scope="module")
def post_client(app: InProcess) -> dict[str, Any]:
    """A client_credentials client with client_secret_post."""
    return app.cli("sp", "add", "post", "--grant-type=client_credentials", "--auth-method=client_secret_post")


@pytest.fixture(scope="module")
def resource_server(app: InProcess) -> dict[str, Any]:
    """A resource server, which may introspect any client's tokens (RFC 7662 §2.1)."""
    return app.cli(
        "sp",
        "add",
        "rs",
        "--grant-type=client_credentials",
        "--resource-server",
        "--auth-method=client_secret_basic",
    )


def creds(client: dict[str, Any]) -> tuple[str, str]:
    return str(client["client_id"]), str(client["client_secret"])


def assert_oauth_error(answer: tuple[int, dict[str, str], dict[str, Any]], status: int, error: str) -> None:
    """RFC 6749 §5.2: the status, a JSON body with the code, no caching, and only the characters
    the RFC allows in error and error_description."""
    got_status, headers, body = answer
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store" and headers["pragma"] == "no-cache"
    assert body["error"] == error
    for value in body.values():
        assert RFC6749_ERROR_CHARS.match(value)


def token(app: InProcess, client: dict[str, Any], **form: str) -> dict[str, Any]:
    status, _, body = app.json(
        "POST", "/oauth2/token", "&".join(f"{k}={v}" for k, v in form.items()), auth=creds(client)
    )
    assert status == 200, body
    return body


# --- the token endpoint (RFC 6749 §3.2, §4.4, §5.1, §5.2) ------------------------------------


def test_client_credentials_token_response(app: InProcess, basic: dict[str, Any]) -> None:
    """§5.1: a Bearer token with expires_in and the granted scope, never cached."""
    status, headers, body = app.json(
        "POST", "/oauth2/token", "grant_type=client_credentials&scope=read", auth=creds(basic)
    )
    assert status == 200, body
    assert headers["cache-control"] == "no-store" and headers["pragma"] == "no-cache"
    assert body["token_type"] == "Bearer" and body["scope"] == "read"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert "refresh_token" not in body  # §4.4.3


def test_post_client_authenticates_in_the_body(app: InProcess, post_client: dict[str, Any]) -> None:
    """§2.3.1: client_secret_post sends client_id and client_secret as form parameters."""
    form = f"grant_type=client_credentials&client_id={post_client['client_id']}&client_secret={post_client['client_secret']}"
    status, _, body = app.json("POST", "/oauth2/token", form)
    assert status == 200 and body["access_token"]


@pytest.mark.parametrize(
    "form, status, error",
    [
        ("", 400, "invalid_request"),  # no grant_type
        ("scope=read", 400, "invalid_request"),
        ("grant_type=", 400, "invalid_request"),  # an empty value is an absent parameter
        ("grant_type=authorization_code&code=x&code_verifier=y", 400, "unauthorized_client"),
        ("grant_type=urn:example:bogus", 400, "unsupported_grant_type"),
        ("grant_type=password&username=a&password=b", 400, "unauthorized_client"),
        ("grant_type=refresh_token&refresh_token=x", 400, "unauthorized_client"),
        ("grant_type=client_credentials&scope=admin", 400, "invalid_scope"),
        ("grant_type=client_credentials&grant_type=client_credentials", 400, "invalid_request"),
        ("grant_type=client_credentials&scope=read&scope=write", 400, "invalid_request"),
    ],
    ids=[
        "empty",
        "no-grant-type",
        "empty-grant-type",
        "authorization-code",
        "unknown-grant",
        "password-not-registered",
        "refresh-not-registered",
        "scope-not-registered",
        "repeated-grant-type",
        "repeated-scope",
    ],
)
def test_token_request_errors(
    app: InProcess, basic: dict[str, Any], form: str, status: int, error: str
) -> None:
    """§5.2: each mistake in a token request gets its error code."""
    assert_oauth_error(app.json("POST", "/oauth2/token", form, auth=creds(basic)), status, error)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&x=%zz",
        b"grant_type=client_credentials&x=%C3%28",
        "grant_type=é".encode(),
    ],
    ids=["bad-percent", "not-utf8", "not-ascii"],
)
def test_badly_encoded_forms_are_invalid_request(app: InProcess, basic: dict[str, Any], body: bytes) -> None:
    """Appendix B: a form is ASCII with UTF-8 percent-encoded; anything else is refused."""
    assert_oauth_error(app.json("POST", "/oauth2/token", body, auth=creds(basic)), 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type, ok",
    [
        (FORM, True),
        ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", True),
        (f'{FORM}; charset="utf-8"', True),
        (f"{FORM}; charset=iso-8859-1", False),
        ("application/json", False),
        ("multipart/form-data; boundary=x", False),
        (None, False),
    ],
    ids=["form", "form-utf8-mixed-case", "form-quoted-charset", "latin1", "json", "multipart", "none"],
)
def test_content_type_must_be_a_utf8_form(
    app: InProcess, basic: dict[str, Any], content_type: str | None, ok: bool
) -> None:
    """§3.2: the token request is application/x-www-form-urlencoded, in UTF-8 (Appendix B)."""
    answer = app.json(
        "POST", "/oauth2/token", "grant_type=client_credentials", auth=creds(basic), content_type=content_type
    )
    if ok:
        assert answer[0] == 200, answer[2]
    else:
        assert_oauth_error(answer, 400, "invalid_request")


def test_unknown_parameters_are_ignored(app: InProcess, basic: dict[str, Any]) -> None:
    """§3.2: "The authorization server MUST ignore unrecognized request parameters"."""
    status, _, body = app.json(
        "POST", "/oauth2/token", "grant_type=client_credentials&foo=bar&&baz=", auth=creds(basic)
    )
    assert status == 200, body


def test_credentials_in_the_query_string_are_refused(app: InProcess, post_client: dict[str, Any]) -> None:
    """§2.3.1: client credentials must not be sent in the request URI."""
    query = f"?client_id={post_client['client_id']}&client_secret={post_client['client_secret']}"
    assert_oauth_error(
        app.json("POST", "/oauth2/token" + query, "grant_type=client_credentials"), 400, "invalid_request"
    )


@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"])
def test_get_on_an_oauth_endpoint_is_405_with_allow_post(app: InProcess, path: str) -> None:
    """§3.2: the client MUST use POST; the 405 says so in Allow and in OAuth error JSON."""
    answer = app.json("GET", path, content_type=None)
    assert_oauth_error(answer, 405, "invalid_request")
    assert answer[1]["allow"] == "POST"


def test_wrong_secret_is_401_with_a_basic_challenge(app: InProcess, basic: dict[str, Any]) -> None:
    """§5.2: invalid_client, 401 with WWW-Authenticate matching the scheme the client used."""
    answer = app.json(
        "POST", "/oauth2/token", "grant_type=client_credentials", auth=(str(basic["client_id"]), "wrong")
    )
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer[1]["www-authenticate"].startswith("Basic realm=")


def test_unknown_client_gets_the_same_answer_as_a_wrong_secret(app: InProcess, basic: dict[str, Any]) -> None:
    """The answer does not tell whether a client_id exists."""
    wrong = app.json("POST", "/oauth2/token", "grant_type=client_credentials", auth=(basic["client_id"], "x"))
    unknown = app.json("POST", "/oauth2/token", "grant_type=client_credentials", auth=("nobody", "x"))
    assert (wrong[0], wrong[2]) == (unknown[0], unknown[2])


def test_no_credentials_is_401_with_a_challenge(app: InProcess) -> None:
    """§5.2: a request without client authentication gets 401 and a Basic challenge."""
    answer = app.json("POST", "/oauth2/token", "grant_type=client_credentials")
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer[1]["www-authenticate"].startswith("Basic realm=")


def test_two_authentication_methods_are_invalid_request(app: InProcess, basic: dict[str, Any]) -> None:
    """§2.3: "The client MUST NOT use more than one authentication method in each request"."""
    client_id, secret = creds(basic)
    form = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}"
    assert_oauth_error(
        app.json("POST", "/oauth2/token", form, auth=(client_id, secret)), 400, "invalid_request"
    )


def test_the_registered_method_must_be_used(app: InProcess, post_client: dict[str, Any]) -> None:
    """A client_secret_post client presenting its secret with Basic is not authenticated."""
    assert_oauth_error(
        app.json("POST", "/oauth2/token", "grant_type=client_credentials", auth=creds(post_client)),
        401,
        "invalid_client",
    )


def test_a_declared_oversized_body_is_413(app: InProcess, basic: dict[str, Any]) -> None:
    """A body larger than the endpoint accepts is refused, as OAuth error JSON, not read."""
    big = "grant_type=client_credentials&pad=" + "x" * (1 << 20)
    status, headers, body = app.json("POST", "/oauth2/token", big, auth=creds(basic))
    assert status == 413 and body["error"] == "invalid_request"
    assert headers["cache-control"] == "no-store"


# --- introspection (RFC 7662) and revocation (RFC 7009) ---------------------------------------


def test_introspection_of_an_active_token(
    app: InProcess, basic: dict[str, Any], resource_server: dict[str, Any]
) -> None:
    """RFC 7662 §2.2: active, with the client, scope, token_type and times of the token."""
    issued = token(app, basic, grant_type="client_credentials", scope="read+write")
    status, headers, info = app.json(
        "POST", "/oauth2/introspect", f"token={issued['access_token']}", auth=creds(resource_server)
    )
    assert status == 200 and headers["cache-control"] == "no-store"
    assert info["active"] is True
    assert info["client_id"] == basic["client_id"] and info["scope"] == "read write"
    assert info["token_type"] == "Bearer" and info["exp"] > info["iat"]


@pytest.mark.parametrize("value", ["garbage", "", "a" * 600])
def test_introspection_of_an_unknown_token_says_only_inactive(
    app: InProcess, resource_server: dict[str, Any], value: str
) -> None:
    """RFC 7662 §2.2: for a token that is not active, the answer is {"active": false} only."""
    status, _, info = app.json("POST", "/oauth2/introspect", f"token={value}", auth=creds(resource_server))
    if value:
        assert (status, info) == (200, {"active": False})
    else:  # §2.1: token is REQUIRED
        assert_oauth_error((status, _, info), 400, "invalid_request")


def test_introspection_needs_an_authenticated_caller(app: InProcess, basic: dict[str, Any]) -> None:
    """RFC 7662 §2.1: the endpoint requires authorization; without it, 401 invalid_client."""
    issued = token(app, basic, grant_type="client_credentials")
    answer = app.json("POST", "/oauth2/introspect", f"token={issued['access_token']}")
    assert_oauth_error(answer, 401, "invalid_client")


def test_revocation_answers_200_and_the_token_goes_inactive(
    app: InProcess, basic: dict[str, Any], resource_server: dict[str, Any]
) -> None:
    """RFC 7009 §2.2: 200 with an empty body; the token is then inactive (RFC 7662)."""
    issued = token(app, basic, grant_type="client_credentials")
    status, _, body = app.request(
        "POST",
        "/oauth2/revoke",
        f"token={issued['access_token']}&token_type_hint=access_token",
        auth=creds(basic),
    )
    assert (status, body) == (200, b"")
    _, _, info = app.json(
        "POST", "/oauth2/introspect", f"token={issued['access_token']}", auth=creds(resource_server)
    )
    assert info == {"active": False}


def test_revoking_an_unknown_token_is_200(app: InProcess, basic: dict[str, Any]) -> None:
    """RFC 7009 §2.2: an invalid token is no error, so nothing is learnt from the answer."""
    status, _, body = app.request("POST", "/oauth2/revoke", "token=not-a-token", auth=creds(basic))
    assert (status, body) == (200, b"")


def test_revocation_without_a_token_is_invalid_request(app: InProcess, basic: dict[str, Any]) -> None:
    """RFC 7009 §2.1: token is REQUIRED."""
    assert_oauth_error(
        app.json("POST", "/oauth2/revoke", "token_type_hint=access_token", auth=creds(basic)),
        400,
        "invalid_request",
    )


# --- metadata (RFC 8414) and keys ---------------------------------------------------------------


def test_metadata_names_every_endpoint_under_the_issuer(app: InProcess) -> None:
    """RFC 8414 §2: the issuer, and the endpoints and methods a client needs, as JSON."""
    status, headers, meta = app.json("GET", "/.well-known/oauth-authorization-server", content_type=None)
    assert status == 200 and headers["content-type"].startswith("application/json")
    issuer = meta["issuer"]
    for name, path in [
        ("token_endpoint", "/oauth2/token"),
        ("introspection_endpoint", "/oauth2/introspect"),
        ("revocation_endpoint", "/oauth2/revoke"),
        ("jwks_uri", "/oauth2/jwks"),
        ("authorization_endpoint", "/oauth2/authorize"),
    ]:
        assert meta[name] == issuer + path
    assert set(meta["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
    }
    # RFC 6749 §4.1 with PKCE S256 only (RFC 7636 §6.2) and the iss response parameter (RFC 9207 §3).
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert {"client_secret_basic", "client_secret_post"} <= set(meta["token_endpoint_auth_methods_supported"])
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert meta["tls_client_certificate_bound_access_tokens"] is True


def test_jwks_is_a_key_set_of_public_keys(app: InProcess) -> None:
    """RFC 7517 §5: {"keys": [...]}, and no private member in any key."""
    status, _, jwks = app.json("GET", "/oauth2/jwks", content_type=None)
    assert status == 200 and isinstance(jwks["keys"], list)
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


def test_an_unknown_path_is_a_plain_404(app: InProcess) -> None:
    """Outside the OAuth endpoints a 404 is plain HTTP, not OAuth error JSON."""
    status, headers, body = app.request("GET", "/nope", content_type=None)
    assert status == 404 and headers["content-type"].startswith("text/plain")
    assert b"error" not in body

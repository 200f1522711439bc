"""The token endpoint over real TLS: client_credentials with the bundled authenticators.

RFC 6749 §2.3 (client authentication) and §3.2 (the endpoint's requests and errors).
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from collections.abc import Iterator

import httpx
import pytest
from conftest import Server, new_deployment, start_server

RFC6749_ERROR_CHARS = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]*$")


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict, dict]]:  # noqa: ANN001
    """One running server with a basic client and a post client, for the whole module."""
    dep = new_deployment(tmp_path_factory.mktemp("token") / "ts", keystore, wheel_cache)
    basic = dep.add_client(
        "basic-demo",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        "--scope",
        "read",
        "--scope",
        "write",
    )
    post = dep.add_client(
        "post-demo", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    server = start_server(dep)
    yield server, basic, post
    server.stop()


@pytest.fixture
def http(env) -> Iterator[httpx.Client]:  # noqa: ANN001
    with env[0].client() as client:
        yield client


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert_no_store(response)
    body = response.json()
    assert body["error"] == error
    for value in body.values():
        assert RFC6749_ERROR_CHARS.match(value)
    return body


def basic(client: dict, secret: str | None = None) -> tuple[str, str]:
    return (str(client["client_id"]), secret if secret is not None else str(client["client_secret"]))


def test_basic_client_gets_an_opaque_bearer_token(env, http) -> None:  # noqa: ANN001
    """A client_secret_basic client gets 200 JSON with a Bearer token and no-store headers."""
    _, client, _ = env
    response = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    assert len(base64.urlsafe_b64decode(body["access_token"] + "=")) >= 16


def test_access_token_is_stored_only_as_its_hash(env, http) -> None:  # noqa: ANN001
    """The database holds the SHA-256 of the token and never the token itself."""
    server, client, _ = env
    token = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"}).json()[
        "access_token"
    ]
    database = server.deployment.database
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT token_hash FROM tokens").fetchall()
    assert (hashlib.sha256(token.encode()).hexdigest(),) in rows
    for path in database.parent.iterdir():
        assert token.encode() not in path.read_bytes()


def test_client_secret_is_stored_only_as_a_slow_hash(env) -> None:  # noqa: ANN001
    """sp add stores an scrypt hash of the secret; the secret itself is nowhere in the store."""
    server, client, _ = env
    with sqlite3.connect(server.deployment.database) as db:
        stored = db.execute(
            "SELECT secret_hash FROM clients WHERE client_id = ?", (client["client_id"],)
        ).fetchone()[0]
    assert stored.startswith("scrypt$")
    for path in server.deployment.database.parent.iterdir():
        assert str(client["client_secret"]).encode() not in path.read_bytes()


def test_post_client_gets_a_token(env, http) -> None:  # noqa: ANN001
    """A client_secret_post client authenticates with client_id and client_secret in the body."""
    _, _, client = env
    response = http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert response.status_code == 200, response.text
    assert "scope" not in response.json()


def test_wrong_basic_secret_is_401_with_challenge(env, http) -> None:  # noqa: ANN001
    """A wrong secret via Basic gets 401 invalid_client and a Basic challenge (RFC 6749 §5.2)."""
    _, client, _ = env
    response = http.post(
        "/oauth2/token", auth=basic(client, "wrong"), data={"grant_type": "client_credentials"}
    )
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"] == 'Basic realm="tokensmith"'


def test_unknown_client_looks_like_a_wrong_secret(env, http) -> None:  # noqa: ANN001
    """An unknown client id gets exactly the response of a known id with a wrong secret."""
    _, client, _ = env
    wrong = http.post("/oauth2/token", auth=basic(client, "wrong"), data={"grant_type": "client_credentials"})
    unknown = http.post(
        "/oauth2/token", auth=("no-such-client", "wrong"), data={"grant_type": "client_credentials"}
    )
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    drop = {"date", "content-length", "connection", "keep-alive", "x-request-id"}  # not per-client
    assert {k: v for k, v in unknown.headers.items() if k not in drop} == {
        k: v for k, v in wrong.headers.items() if k not in drop
    }


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b":secret").decode(),
    ],
)
def test_malformed_basic_is_invalid_client(http, header) -> None:  # noqa: ANN001
    """Malformed Basic credentials get 401 invalid_client with a challenge."""
    response = http.post(
        "/oauth2/token", headers={"Authorization": header}, data={"grant_type": "client_credentials"}
    )
    assert_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_post_client_with_wrong_or_missing_secret(env, http) -> None:  # noqa: ANN001
    """client_secret_post with a wrong secret, or a bare client_id, is invalid_client."""
    _, _, client = env
    wrong = http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client["client_id"], "client_secret": "x"},
    )
    assert_error(wrong, 401, "invalid_client")
    assert wrong.headers["www-authenticate"] == 'Basic realm="tokensmith"'  # RFC 9110 §15.5.2
    bare = http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client["client_id"]}
    )
    assert_error(bare, 401, "invalid_client")


def test_two_methods_in_one_request_is_invalid_request(env, http) -> None:  # noqa: ANN001
    """Basic plus client_secret in the body is 400 invalid_request (RFC 6749 §2.3)."""
    _, client, _ = env
    response = http.post(
        "/oauth2/token",
        auth=basic(client),
        data={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert_error(response, 400, "invalid_request")


def test_registered_method_must_match(env, http) -> None:  # noqa: ANN001
    """A basic client that authenticates in the body gets 401 invalid_client."""
    _, client, _ = env
    response = http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert_error(response, 401, "invalid_client")


def test_get_is_405_with_allow_post(http) -> None:  # noqa: ANN001
    """GET on the token endpoint is 405 with Allow naming POST, and never a token."""
    response = http.get("/oauth2/token")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
    assert "access_token" not in response.text


@pytest.mark.parametrize("data", [{}, {"grant_type": ""}])
def test_missing_grant_type(env, http, data) -> None:  # noqa: ANN001
    """A missing or empty grant_type is 400 invalid_request."""
    assert_error(http.post("/oauth2/token", auth=basic(env[1]), data=data), 400, "invalid_request")


def test_unknown_grant_type(env, http) -> None:  # noqa: ANN001
    """An unknown grant_type is 400 unsupported_grant_type."""
    response = http.post("/oauth2/token", auth=basic(env[1]), data={"grant_type": "urn:x:nope"})
    assert_error(response, 400, "unsupported_grant_type")


def test_grant_the_client_is_not_registered_for(env, http) -> None:  # noqa: ANN001
    """A grant type the server knows but the client may not use is 400 unauthorized_client."""
    server, _, _ = env
    other = server.deployment.add_client(
        "pw-only", "--grant-type", "password", "--auth-method", "client_secret_basic"
    )
    response = http.post("/oauth2/token", auth=basic(other), data={"grant_type": "client_credentials"})
    assert_error(response, 400, "unauthorized_client")


def test_scope_outside_registration_is_invalid_scope(env, http) -> None:  # noqa: ANN001
    """Asking for a scope the client is not registered for is 400 invalid_scope."""
    response = http.post(
        "/oauth2/token", auth=basic(env[1]), data={"grant_type": "client_credentials", "scope": "read admin"}
    )
    assert_error(response, 400, "invalid_scope")
    narrowed = http.post(
        "/oauth2/token", auth=basic(env[1]), data={"grant_type": "client_credentials", "scope": "read"}
    )
    assert narrowed.json()["scope"] == "read"


@pytest.mark.parametrize(
    "body",
    [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=read&scope=write",
    ],
)
def test_repeated_parameter_is_invalid_request(env, http, body) -> None:  # noqa: ANN001
    """Any parameter sent twice is 400 invalid_request (RFC 6749 §3.2)."""
    response = http.post(
        "/oauth2/token",
        auth=basic(env[1]),
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 400, "invalid_request")


def test_unknown_parameters_are_ignored(env, http) -> None:  # noqa: ANN001
    """Extra parameters the server does not know do not change the outcome."""
    response = http.post(
        "/oauth2/token", auth=basic(env[1]), data={"grant_type": "client_credentials", "x_custom": "1"}
    )
    assert response.status_code == 200


def test_credentials_in_query_string_are_refused(env, http) -> None:  # noqa: ANN001
    """Client credentials in the URI are 400 invalid_request (RFC 6749 §2.3.1)."""
    _, _, client = env
    response = http.post(
        f"/oauth2/token?client_id={client['client_id']}&client_secret={client['client_secret']}",
        data={"grant_type": "client_credentials"},
    )
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    ["application/json", None, "text/plain", "application/x-www-form-urlencoded; charset=latin-1"],
)
def test_wrong_content_type_is_invalid_request(env, http, content_type) -> None:  # noqa: ANN001
    """Only application/x-www-form-urlencoded bodies are accepted."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post(
        "/oauth2/token", auth=basic(env[1]), headers=headers, content=b'{"grant_type": "client_credentials"}'
    )
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&scope=%ff",
        b"grant_type=client%zzcredentials",
        b"grant_type=client_credentials&scope=\xc3\x28",
        b"grant_type=%",
    ],
)
def test_bad_encoding_is_invalid_request(env, http, body) -> None:  # noqa: ANN001
    """Invalid UTF-8 or percent-encoding is 400 invalid_request, never echoed back."""
    response = http.post(
        "/oauth2/token",
        auth=basic(env[1]),
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body_json = assert_error(response, 400, "invalid_request")
    assert "%zz" not in response.text and "\\u" not in response.text
    assert body_json["error_description"]


def test_oversized_body_is_refused(env, http) -> None:  # noqa: ANN001
    """A body over the 64 KiB cap is refused with 413 and never reaches a 5xx."""
    response = http.post(
        "/oauth2/token",
        auth=basic(env[1]),
        content=b"grant_type=client_credentials&pad=" + b"a" * 70000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert_no_store(response)


def test_http1_and_http2_both_serve(env) -> None:  # noqa: ANN001
    """The same request works over HTTP/1.1 and over HTTP/2 (ALPN)."""
    server, client, _ = env
    for http2 in (False, True):
        with server.client(http2=http2) as http:
            response = http.post(
                "/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"}
            )
            assert response.status_code == 200
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")


def test_content_length_mismatch_is_refused_without_5xx(env) -> None:  # noqa: ANN001
    """A body shorter than its Content-Length gets a 4xx (or a closed connection), never a 5xx."""
    import ssl

    with env[0].raw_tls() as tls:
        tls.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 500\r\n\r\ngrant_type=client_credentials"
        )
        try:
            answer = tls.recv(4096)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 5")


def test_declared_oversize_body_is_refused_before_it_is_sent(env) -> None:  # noqa: ANN001
    """A Content-Length over the cap gets 413 at once, without the server waiting for the body."""
    with env[0].raw_tls() as tls:
        tls.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000000\r\n\r\ngrant_type="
        )
        answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:60]


def test_cached_secret_still_refuses_a_wrong_one(env, http) -> None:  # noqa: ANN001
    """After a secret verified (and was remembered), a wrong secret is still refused."""
    _, client, _ = env
    good = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"})
    again = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"})
    wrong = http.post(
        "/oauth2/token",
        auth=basic(client, str(client["client_secret"])[:-1] + "x"),
        data={"grant_type": "client_credentials"},
    )
    assert good.status_code == again.status_code == 200
    assert wrong.status_code == 401

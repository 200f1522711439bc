"""Requests to the token endpoint over real TLS: method, form, parameters and their
RFC 6749 §3.2 and §5.2 errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from servers import assert_error, assert_no_store, basic


@pytest.fixture
def env(token_server):  # noqa: ANN001, ANN201
    """The token endpoint's server with its basic and post clients (tests/servers.py)."""
    return token_server


@pytest.fixture
def http(env) -> Iterator[httpx.Client]:  # noqa: ANN001
    with env[0].client() as client:
        yield client


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

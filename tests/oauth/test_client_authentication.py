"""Client authentication at the token endpoint over real TLS (RFC 6749 §2.3, §5.2 invalid_client)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from servers import assert_error, basic


@pytest.fixture
def env(token_server):  # noqa: ANN001, ANN201
    """The token endpoint's server with its basic and post clients (tests/servers.py)."""
    return token_server


@pytest.fixture
def http(env) -> Iterator[httpx.Client]:  # noqa: ANN001
    with env[0].client() as client:
        yield client


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

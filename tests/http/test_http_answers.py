"""HTTP answers outside the OAuth error vocabulary.

RFC 6749 §5.2 error codes belong to the OAuth endpoints; elsewhere a 404 is a plain 404 and a
405 a plain 405 with ``Allow`` (RFC 9110 §15.5.5, §15.5.6).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Server, new_deployment, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, keystore, wheel_cache) -> Iterator[Server]:  # noqa: ANN001
    dep = new_deployment(tmp_path_factory.mktemp("answers") / "ts", keystore, wheel_cache)
    running = start_server(dep)
    yield running
    running.stop()


@pytest.mark.parametrize("path", ["/", "/nope", "/oauth2/nope", "/.well-known/openid-configuration"])
def test_unknown_path_is_a_plain_404(server, path) -> None:  # noqa: ANN001
    """An unknown path answers 404 as plain text, with no OAuth error JSON."""
    with server.client() as http:
        response = http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert "invalid_request" not in response.text and "error" not in response.text


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/oauth2/jwks"])
def test_wrong_method_on_a_get_resource_is_a_plain_405(server, path) -> None:  # noqa: ANN001
    """POST to a GET resource answers 405 with Allow naming GET, as plain text."""
    with server.client() as http:
        response = http.post(path, data={"x": "y"})
    assert response.status_code == 405
    assert "GET" in [m.strip() for m in response.headers["allow"].split(",")]
    assert response.headers["content-type"].startswith("text/plain")
    assert "invalid_request" not in response.text


def test_oauth_endpoint_keeps_its_oauth_405(server) -> None:  # noqa: ANN001
    """The token endpoint is an OAuth endpoint: its 405 stays RFC 6749 error JSON."""
    with server.client() as http:
        response = http.get("/oauth2/token")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"] == "invalid_request"

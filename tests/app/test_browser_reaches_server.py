"""The browser the page tests use reaches a real server over TLS (tests/browser.py)."""

from __future__ import annotations

import json


def test_the_browser_reads_the_metadata_of_a_running_server(server, page) -> None:  # noqa: ANN001
    """Headless Chromium fetches the RFC 8414 metadata over a real TLS connection."""
    response = page.goto(server.url + "/.well-known/oauth-authorization-server")
    assert response is not None and response.status == 200
    assert json.loads(page.inner_text("body"))["issuer"] == server.url

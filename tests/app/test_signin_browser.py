"""The authorization code grant in headless Chromium: the login and consent pages as a user
meets them, the redirect to the client's own (loopback) callback server, and the code
exchanged with the client's certificate for a certificate-bound token (RFC 8705 §3)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Deployment, Server
from pki import self_signed
from playwright.sync_api import expect

PASSWORD = "correct horse battery staple"


class Callback:
    """The client's redirect endpoint: a plain HTTP server on 127.0.0.1 that records the
    query of every request it gets (RFC 8252 §7.3, a loopback redirect)."""

    def __init__(self) -> None:
        received: list[dict[str, str]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                parts = urllib.parse.urlsplit(self.path)
                if parts.path == "/callback":  # not the browser's /favicon.ico
                    received.append(dict(urllib.parse.parse_qsl(parts.query)))
                body = b"<!doctype html><title>client</title><p id=done>signed in</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def callback() -> Iterator[Callback]:
    server = Callback()
    yield server
    server.stop()


def test_sign_in_consent_and_a_certificate_bound_token_in_chromium(
    deployment: Deployment, serve, page, browser_context, callback: Callback, tmp_path
) -> None:  # noqa: ANN001
    """The seed's service provider (the README's playground), registered with its callback
    URL and certificate: a user signs in and consents in Chromium, Chromium lands on the
    client's callback with the code, and the code, exchanged with the certificate, gives a
    token bound to it. The cookies are Secure, HttpOnly and SameSite=Lax."""
    deployment.cli("user", "add", "admin", "--password-stdin", input=PASSWORD + "\n")
    pair = self_signed("localhost")
    cert = pair.write(tmp_path, "client")
    client = deployment.add_client(
        "playground",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert[0]),
        "--scope",
        "openid",
        "--redirect-uri",
        callback.url,
    )
    server: Server = serve(deployment)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(12)
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": callback.url,
            "scope": "openid",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    page.goto(f"{server.url}/oauth2/authorize?{query}")
    assert page.title().startswith("Sign in")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("The username or password is wrong")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("heading").inner_text() == "Allow playground access?"
    assert page.locator("#scopes").inner_text() == "openid"
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(callback.url + "?*")
    assert page.locator("#done").inner_text() == "signed in"
    assert len(callback.received) == 1
    back = callback.received[0]
    assert back["state"] == state and back["iss"] == server.url and set(back) == {"code", "state", "iss"}

    cookies = {c["name"]: c for c in browser_context.cookies(server.url)}
    session = cookies["__Host-tokensmith-session"]
    assert (
        session["secure"] and session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
    )
    assert cookies["__Host-tokensmith-csrf"]["httpOnly"]

    with server.client(cert=cert) as http_client:
        answer = http_client.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": back["code"],
                "code_verifier": verifier,
                "redirect_uri": callback.url,
                "client_id": client["client_id"],
            },
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()
        claims = http_client.post(
            "/oauth2/introspect", data={"token": token["access_token"], "client_id": client["client_id"]}
        ).json()
    assert claims["active"] and claims["username"] == "admin" and claims["scope"] == "openid"
    assert claims["cnf"] == {"x5t#S256": pair.x5t_s256()}

    # Signed in and consented: the next request goes straight back; after signing out on
    # the account page, the login page is shown again.
    page.goto(f"{server.url}/oauth2/authorize?{query}")
    page.wait_for_url(callback.url + "?*")
    assert len(callback.received) == 2
    page.goto(f"{server.url}/oauth2/account")
    assert "playground" in page.locator("#consents").inner_text()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signed-out")).to_be_visible()
    page.goto(f"{server.url}/oauth2/authorize?{query}")
    assert page.title().startswith("Sign in")


def test_a_native_app_on_any_loopback_port_and_withdrawing_its_consent_in_chromium(
    deployment: Deployment, serve, page, callback: Callback
) -> None:  # noqa: ANN001
    """A native app registered http://127.0.0.1:9/callback and listens on whatever port was
    free (RFC 8252 §7.3): Chromium signs in, the consent page names that host and port, and
    lands on the app's real port with the code. Withdrawing the consent on the account page,
    which says what it does, ends the app's access: its refresh token is refused."""
    deployment.cli("user", "add", "admin", "--password-stdin", input=PASSWORD + "\n")
    registered = "http://127.0.0.1:9/callback"
    assert callback.url != registered
    client = deployment.add_client(
        "native",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--auth-method",
        "none",
        "--redirect-uri",
        registered,
    )
    server: Server = serve(deployment)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": callback.url,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    page.goto(f"{server.url}/oauth2/authorize?{query}")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("heading").inner_text() == "Allow native access?"
    host = urllib.parse.urlsplit(callback.url).netloc
    assert f"will receive it at {host}." in page.locator("main").inner_text()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(callback.url + "?*")
    code = callback.received[0]["code"]
    with server.client() as http_client:
        answer = http_client.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "redirect_uri": callback.url,
                "client_id": client["client_id"],
            },
        )
    assert answer.status_code == 200, answer.text
    refresh = answer.json()["refresh_token"]

    page.goto(f"{server.url}/oauth2/account")
    assert "stop working at once" in page.locator("#withdraw-note").inner_text()
    page.get_by_role("button", name="Withdraw consent for native").click()
    expect(page.locator("#no-consents")).to_be_visible()
    with server.client() as http_client:
        refused = http_client.post(
            "/oauth2/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client["client_id"]},
        )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text

"""The web console under /console/, driven in headless Chromium against a real server over
real TLS (tests/browser.py): sign-in, adding a service provider and then getting a token
with its certificate, secrets shown once, certificates refused beside their field, a
listener toggled and the toggled authenticator refusing, CSRF, session expiry, 100,000
service providers paged in SQL, and the console switched off.

With TOKENSMITH_SCREENSHOTS=DIR the tests also save screenshots of the main pages there
(docs/console/ holds the ones the documentation shows).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pki
import pytest
from admin_env import PASSWORDS, add_users, write_authenticators
from conftest import Deployment, Server, new_deployment, start_server
from playwright.sync_api import expect
from test_proxy_trust import plain
from tokensmith.models import Client, User
from tokensmith.security.hashing import hash_secret
from tokensmith.storage.sqlite import SQLiteStorage

SHOTS = os.environ.get("TOKENSMITH_SCREENSHOTS")


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


class Console:
    def __init__(self, server: Server, root: Path, authority: pki.Pair, admin_cert: tuple[Path, Path]):
        self.server, self.root, self.authority, self.admin_cert = server, root, authority, admin_cert

    @property
    def dep(self) -> Deployment:
        return self.server.deployment

    def url(self, path: str = "/console/") -> str:
        return self.server.url + path


def make_console(root: Path, keystore: Path, wheel_cache: Path, console_xml: str = "") -> Console:
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        connectors='<Connector address="127.0.0.1" port="0" clientAuth="want"/>' + console_xml,
    )
    authority = pki.ca()
    (root / "ca.pem").write_bytes(authority.pem)
    dep.cli("truststore", "import", "--alias", "admin-root", "--file", str(root / "ca.pem"))
    admin_cert = pki.issue(authority, "console admin", org="Example").write(root, "admin")
    write_authenticators(dep, mtls=True, admin_certificates=admin_cert[0])
    add_users(dep)
    return Console(start_server(dep), root, authority, admin_cert)


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[Console]:  # noqa: ANN001
    console = make_console(tmp_path_factory.mktemp("console"), keystore, wheel_cache)
    yield console
    console.server.stop()


def sign_in(page: Any, env: Console, user: str = "root") -> None:
    page.goto(env.url())
    assert page.url.endswith("/console/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    page.click("button:has-text('Sign in')")
    page.wait_for_url(env.url("/console/"))


def fingerprint(pair: pki.Pair) -> str:
    digest = hashlib.sha256(pair.der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def token(
    env: Console, client_id: str, cert: tuple[Path, Path] | None = None, **kwargs: Any
) -> httpx.Response:
    with env.server.client(cert=cert, **kwargs) as http:
        return http.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id})


def no_horizontal_overflow(page: Any, name: str, directory: Path) -> None:
    """Nothing is wider than the window: the document does not scroll sideways, and a
    full-page screenshot is exactly as wide as the viewport."""
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
        name,
        page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]"),
    )
    png = page.screenshot(path=str(directory / f"{name}.png"), full_page=True)
    assert int.from_bytes(png[16:20], "big") == page.viewport_size["width"], name
    shot(page, name)


def change_forms(page: Any) -> int:
    """The forms on the page that would change something: all but signing out and searching."""
    return page.locator("form:not(.signout):not([method=get])").count()


def tab_to(page: Any, script: str, limit: int = 40) -> None:
    """Press Tab until *script* (about document.activeElement) is true."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(e => {script})(document.activeElement)"):
            return
    raise AssertionError(f"Tab never reached {script}")


# -- sign-in and the safe defaults ---------------------------------------------------------


def test_sign_in_by_keyboard_sets_a_strict_session_cookie_and_headers(env: Console, page: Any) -> None:
    response = page.goto(env.url())
    assert page.url.endswith("/console/login")
    assert response is not None
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["cache-control"] == "no-store"
    shot(page, "login")
    # Keyboard only: the skip link, then the user name, the password, Enter.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "username"
    page.keyboard.type("root")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORDS["root"])
    page.keyboard.press("Enter")
    page.wait_for_url(env.url("/console/"))
    expect(page.get_by_role("heading", name="Service providers")).to_be_visible()
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "__Host-tokensmith-console"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"


def test_a_wrong_password_is_shown_beside_the_field_and_a_user_without_a_role_is_refused(
    env: Console, page: Any
) -> None:
    page.goto(env.url("/console/login"))
    page.fill("#username", "root")
    page.fill("#password", "not the password")
    page.click("button:has-text('Sign in')")
    assert "Wrong user name or password" in page.inner_text("#password-error")
    assert page.get_attribute("#password", "aria-invalid") == "true"
    page.fill("#username", "plain")
    page.fill("#password", PASSWORDS["plain"])
    page.click("button:has-text('Sign in')")
    assert "neither the admin nor the reader role" in page.inner_text("#username-error")
    assert page.goto(env.url("/console/users")) is not None
    assert page.url.endswith("/console/login")


def test_sign_in_with_a_client_certificate(env: Console, chromium: Any) -> None:
    """The MutualSSLAuthenticator admits a certificate from the truststore's CA; the
    administrator it signs in as is named in the form (the API's UsernameHeader)."""
    cert, key = env.admin_cert
    context = chromium.new_context(
        ignore_https_errors=True,
        client_certificates=[{"origin": env.server.url, "certPath": str(cert), "keyPath": str(key)}],
    )
    try:
        page = context.new_page()
        page.goto(env.url("/console/login"))
        assert "CN=console admin,O=Example" in page.inner_text("main")
        page.fill("#cert-username", "root")
        page.click("button:has-text('Sign in with this certificate')")
        page.wait_for_url(env.url("/console/"))
        page.goto(env.url("/console/audit"))
        assert page.url.endswith("/console/audit")
    finally:
        context.close()
    # The sign-in is audited with the certificate's subject and SHA-256.
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    with SQLiteStorage(env.dep.database) as store:
        entry = next(e for e in store.list_audit(500) if e.action == "console.sign_in")
    assert (entry.actor, entry.via, entry.target) == ("root", "console:certificate", "root")
    assert entry.details == {
        "outcome": "accepted",
        "subject": "CN=console admin,O=Example",
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def test_a_form_without_its_csrf_token_is_refused(env: Console, page: Any) -> None:
    sign_in(page, env)
    page.goto(env.url("/console/users"))
    # A forged form: the right session cookie, a wrong token.
    page.fill("#username", "forged")
    page.fill("#password", "forged-password-1")
    page.evaluate("document.querySelector('form.card input[name=csrf]').value = 'forged'")
    page.click("button:has-text('Add user')")
    expect(page.get_by_role("heading", name="Refused")).to_be_visible()
    assert "CSRF" in page.inner_text("main")
    # The same POST with no token at all, from outside the page, with the session's cookie.
    answer = page.context.request.post(
        env.url("/console/users"), form={"username": "forged", "password": "forged-password-1"}
    )
    assert answer.status == 403
    assert "forged" not in env.dep.cli("user", "list").stdout
    # The console still works with the right token.
    page.goto(env.url("/console/users"))
    page.fill("#username", "second-admin")
    page.fill("#password", "second-password-1")
    page.select_option("#role", "admin")
    page.click("button:has-text('Add user')")
    assert "Added user second-admin" in page.inner_text("main")
    shot(page, "users")


def test_the_console_ends_an_idle_session(tmp_path, keystore, wheel_cache, chromium) -> None:  # noqa: ANN001
    console = make_console(tmp_path, keystore, wheel_cache, '\n    <Console idleTimeout="2"/>')
    context = chromium.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        sign_in(page, console)
        page.click("nav >> text=Listeners")  # a request inside the timeout keeps it alive
        page.wait_for_url(console.url("/console/listeners"))
        time.sleep(3)
        page.click("nav >> text=Users")
        page.wait_for_url(console.url("/console/login"))
        assert "Your session has ended" in page.inner_text("main")
        # A form posted from the expired page is refused too.
        answer = context.request.post(console.url("/console/users"), form={"username": "x", "password": "y"})
        assert answer.status == 403
    finally:
        context.close()
        console.server.stop()


def test_signing_out_ends_the_session_on_the_server(env: Console, page: Any) -> None:
    sign_in(page, env)
    cookie = next(c for c in page.context.cookies() if c["name"] == "__Host-tokensmith-console")
    page.click("button:has-text('Sign out')")
    page.wait_for_url(env.url("/console/login?signed-out"))
    assert "You have signed out" in page.inner_text("main")
    with env.server.client(cookies={cookie["name"]: cookie["value"]}) as http:
        answer = http.get("/console/users")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"


# -- service providers -----------------------------------------------------------------------


def test_add_a_self_signed_mtls_client_and_get_a_token_with_its_certificate(env: Console, page: Any) -> None:
    """The WSO2 way: name, description, grant type, method, callback URL and the application
    certificate uploaded; its SHA-256, subject and validity shown before saving; the
    client_id shown once with a copy button; then a real token request with the certificate."""
    pair = pki.self_signed("payments-app")
    cert = pair.write(env.root, "payments-app")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, env)
    page.click("text=Add a service provider")
    page.fill("#name", "Payments app")
    page.fill("#description", "Pays the bills")
    page.select_option("#auth_method", "self_signed_tls_client_auth")
    page.fill("#callback_url", "https://payments.example/callback")
    page.set_input_files("#certificate_file", str(cert[0]))
    page.click("button:has-text('Check certificate')")
    preview = page.inner_text(".preview")
    assert fingerprint(pair) in preview
    assert "CN=payments-app" in preview
    assert pair.cert.not_valid_after_utc.strftime("%Y-%m-%d") in preview
    assert page.input_value("#name") == "Payments app"  # kept across the preview
    shot(page, "add-service-provider")
    page.click("button:has-text('Register')")
    expect(page.get_by_role("heading", name="Payments app is registered")).to_be_visible()
    client_id = page.input_value("#client_id")
    expect(page.locator("#client_secret")).to_have_count(0)  # a certificate client has no secret
    page.click("button[data-copy=client_id]")
    page.wait_for_function("document.querySelector('.copied').textContent !== ''")
    assert page.evaluate("navigator.clipboard.readText()") == client_id
    shot(page, "service-provider-registered")

    answer = token(env, client_id, cert=cert)
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] in ("Bearer", "N_A", "bearer")
    assert token(env, client_id).status_code == 401  # no certificate, no token

    page.goto(env.url("/console/clients?q=payments"))
    page.click("text=Payments app")
    details = page.inner_text("main")
    assert "Pays the bills" in details and "https://payments.example/callback" in details
    assert fingerprint(pair) in details
    shot(page, "service-provider")


def test_a_secret_is_shown_once_and_a_resent_form_makes_no_second_client(env: Console, page: Any) -> None:
    sign_in(page, env)
    page.goto(env.url("/console/clients/new"))
    page.fill("#name", "Reporting job")
    page.select_option("#auth_method", "client_secret_basic")
    page.click("button:has-text('Register')")
    client_id = page.input_value("#client_id")
    secret = page.input_value("#client_secret")
    assert "Shown this once" in page.inner_text("main")
    assert secret not in page.url
    answer = token(env, client_id, auth=(client_id, secret))
    assert answer.status_code == 200, answer.text
    # The client's page never shows it again.
    page.goto(env.url(f"/console/clients/{client_id}"))
    assert secret not in page.content()
    # The browser re-sending the form (same single-use id) makes no second client.
    page.goto(env.url("/console/clients/new"))
    csrf = page.get_attribute("input[name=csrf]", "value")
    form = {"csrf": csrf, "submission": "resent-1", "name": "Twice", "grant_types": "client_credentials"}
    form |= {"auth_method": "client_secret_basic", "action": "save"}
    first = page.context.request.post(env.url("/console/clients/new"), multipart=form)
    second = page.context.request.post(env.url("/console/clients/new"), multipart=form)
    assert first.status == 201 and second.status == 409
    assert "submitted already" in second.text()
    names = [c["name"] for c in json.loads(env.dep.cli("sp", "list", "--json").stdout)]
    assert names.count("Twice") == 1
    # Reset: a new secret, shown once; the old one stops working.
    page.goto(env.url(f"/console/clients/{client_id}"))
    page.click("button:has-text('Reset the secret')")
    new_secret = page.input_value("#client_secret")
    assert new_secret != secret
    # Reloading that page re-sends the form: no third secret.
    resent = page.reload()
    assert resent is not None and resent.status == 409
    assert "reset was done already" in page.inner_text("main")
    assert token(env, client_id, auth=(client_id, secret)).status_code == 401
    assert token(env, client_id, auth=(client_id, new_secret)).status_code == 200


def test_not_a_certificate_and_an_expired_one_are_refused_beside_the_field(env: Console, page: Any) -> None:
    sign_in(page, env)
    page.goto(env.url("/console/clients/new"))
    page.fill("#name", "Broken")
    page.fill("#certificate", "hello, I am not a certificate")
    page.click("button:has-text('Register')")
    assert "This is not a certificate" in page.inner_text("#certificate-error")
    assert page.get_attribute("#certificate", "aria-invalid") == "true"
    shot(page, "certificate-refused")
    expired = pki.self_signed("old", not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY)
    page.fill("#certificate", expired.pem.decode())
    page.click("button:has-text('Check certificate')")
    assert "expired on" in page.inner_text("#certificate-error")
    page.uncheck("input[value=client_credentials]")
    page.click("button:has-text('Register')")
    assert "at least one grant type" in page.inner_text("#grant_types-error")
    assert "Broken" not in env.dep.cli("sp", "list").stdout


def test_a_tls_client_auth_client_is_registered_by_its_certificate_subject(env: Console, page: Any) -> None:
    """RFC 8705 §2.1: the pasted CA-issued certificate gives the subject DN; another
    certificate with that subject from the same CA authenticates the client too."""
    first = pki.issue(env.authority, "billing", org="Example")
    sign_in(page, env)
    page.goto(env.url("/console/clients/new"))
    page.fill("#name", "Billing")
    page.select_option("#auth_method", "tls_client_auth")
    page.fill("#certificate", first.pem.decode())
    page.click("button:has-text('Register')")
    client_id = page.input_value("#client_id")
    renewed = pki.issue(env.authority, "billing", org="Example").write(env.root, "billing-renewed")
    assert token(env, client_id, cert=renewed).status_code == 200
    stranger = pki.issue(env.authority, "someone else", org="Example").write(env.root, "stranger")
    assert token(env, client_id, cert=stranger).status_code == 401
    page.goto(env.url(f"/console/clients/{client_id}"))
    assert "CN=billing,O=Example" in page.inner_text("main")


def test_rotate_a_certificate_then_delete_with_confirmation(env: Console, page: Any) -> None:
    first, second = pki.self_signed("rotating"), pki.self_signed("rotating-next")
    first_paths, second_paths = first.write(env.root, "rot-1"), second.write(env.root, "rot-2")
    sign_in(page, env)
    page.goto(env.url("/console/clients/new"))
    page.fill("#name", "Rotating")
    page.fill("#certificate", first.pem.decode())
    page.click("button:has-text('Register')")
    client_id = page.input_value("#client_id")
    page.goto(env.url(f"/console/clients/{client_id}"))
    page.set_input_files("#certificate_file", str(second_paths[0]))
    page.click("button:has-text('Add certificate')")
    assert "Added 1 certificate" in page.inner_text("main")
    assert token(env, client_id, cert=second_paths).status_code == 200
    page.click("button[aria-label='Remove certificate CN=rotating']")
    assert token(env, client_id, cert=first_paths).status_code == 401
    assert token(env, client_id, cert=second_paths).status_code == 200
    page.click("text=Delete…")
    expect(page.get_by_role("heading", name="Delete Rotating?")).to_be_visible()
    page.click("text=Cancel")
    assert token(env, client_id, cert=second_paths).status_code == 200
    page.click("text=Delete…")
    page.click("button:has-text('Delete it')")
    assert "Deleted Rotating" in page.inner_text("main")
    assert token(env, client_id, cert=second_paths).status_code == 401


def test_add_a_service_provider_by_keyboard_only(env: Console, page: Any) -> None:
    """Tab and Enter (and the arrow keys in a list) through sign-in and the new service
    provider's form, as someone who uses no mouse does."""
    page.goto(env.url())
    tab_to(page, "e.id === 'username'")
    page.keyboard.type("root")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORDS["root"])
    page.keyboard.press("Enter")
    page.wait_for_url(env.url("/console/"))
    tab_to(page, "e.textContent.trim() === 'Add a service provider'")
    page.keyboard.press("Enter")
    page.wait_for_url(env.url("/console/clients/new"))
    tab_to(page, "e.id === 'name'")
    page.keyboard.type("Keyboard app")
    tab_to(page, "e.id === 'auth_method'")
    for _ in range(10):
        if page.evaluate("document.activeElement.value") == "client_secret_basic":
            break
        page.keyboard.press("ArrowUp")
    assert page.evaluate("document.activeElement.value") == "client_secret_basic"
    tab_to(page, "e.tagName === 'BUTTON' && e.textContent.trim() === 'Register'")
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Keyboard app is registered").wait_for()
    client_id = page.input_value("#client_id")
    secret = page.input_value("#client_secret")
    with env.server.client() as http:
        answer = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        )
    assert answer.status_code == 200, answer.text


def test_removals_ask_for_confirmation_first(env: Console, page: Any, tmp_path: Path) -> None:
    """Users, trust anchors and signing keys, like service providers, are removed only from a
    page that says what goes; Cancel leaves everything as it was."""
    env.dep.cli("user", "add", "leaving", "--password-stdin", input="leaving-password\n")
    spare = pki.ca("Spare CA")
    (env.root / "spare.pem").write_bytes(spare.pem)
    env.dep.cli("truststore", "import", "--alias", "spare", "--file", str(env.root / "spare.pem"))
    sign_in(page, env)
    page.set_viewport_size({"width": 400, "height": 800})

    page.goto(env.url("/console/users"))
    page.click("a[aria-label='Remove leaving…']")
    expect(page.get_by_role("heading", name="Remove leaving?")).to_be_visible()
    no_horizontal_overflow(page, "confirm-remove-user", tmp_path)
    page.click("text=Cancel")
    page.wait_for_url(env.url("/console/users"))
    assert "leaving" in env.dep.cli("user", "list").stdout
    page.click("a[aria-label='Remove leaving…']")
    page.click("button:has-text('Remove it')")
    assert "Removed leaving" in page.inner_text("main")
    assert "leaving" not in env.dep.cli("user", "list").stdout
    expect(page.locator("a[aria-label='Remove root…']")).to_have_count(0)  # not yourself

    page.goto(env.url("/console/truststore"))
    page.click("a[aria-label='Remove spare…']")
    expect(page.get_by_role("heading", name="Stop trusting spare?")).to_be_visible()
    assert fingerprint(spare) in page.inner_text("main")
    page.click("text=Cancel")
    assert "spare" in env.dep.cli("truststore", "list").stdout
    page.click("a[aria-label='Remove spare…']")
    page.click("button:has-text('Remove it')")
    assert "Removed spare" in page.inner_text("main")
    assert "spare" not in env.dep.cli("truststore", "list").stdout

    page.goto(env.url("/console/signing-keys"))
    for _ in range(2):  # the active key cannot be retired: make sure there is another
        page.click("button:has-text('Rotate')")
        page.get_by_text("New active signing key").wait_for()
    retire = page.locator("a[aria-label^='Retire key']").first
    kid = retire.get_attribute("aria-label").removeprefix("Retire key ").removesuffix("…")
    retire.click()
    expect(page.get_by_role("heading", name=f"Retire signing key {kid}?")).to_be_visible()
    page.click("text=Cancel")
    assert kid in page.inner_text("main")
    page.locator(f"a[aria-label='Retire key {kid}…']").click()
    page.click("button:has-text('Retire it')")
    assert f"Retired signing key {kid}" in page.inner_text("main")
    expect(page.locator(f"a[aria-label='Retire key {kid}…']")).to_have_count(0)
    # A removal can only be posted from its confirmation page's form; a GET changes nothing.
    env.dep.cli("user", "add", "staying", "--password-stdin", input="staying-password\n")
    page.goto(env.url("/console/users/staying/remove"))
    assert "staying" in env.dep.cli("user", "list").stdout


def test_a_reader_gets_a_read_only_console(env: Console, page: Any, tmp_path: Path) -> None:
    """A reader signs in with a password and sees every page without one form that changes
    anything; a change posted anyway (with a valid CSRF token) is refused with 403 and a page
    that says why, and nothing changes."""
    client = env.dep.add_client(
        "read-only view", "--auth-method", "client_secret_basic", "--grant-type", "client_credentials"
    )
    sign_in(page, env, "viewer")
    assert "read only" in page.inner_text("header")
    page.set_viewport_size({"width": 400, "height": 800})
    for path in (
        "/console/clients",
        f"/console/clients/{client['client_id']}",
        "/console/listeners",
        "/console/truststore",
        "/console/users",
        "/console/signing-keys",
        "/console/audit",
    ):
        answer = page.goto(env.url(path))
        assert answer is not None and answer.status == 200, path
        assert change_forms(page) == 0, path
        expect(page.locator("a[href$='/delete'], a[href$='/remove'], a[href$='/retire']")).to_have_count(0)
        expect(page.locator("a[href='/console/clients/new']")).to_have_count(0)
        no_horizontal_overflow(page, "reader" + path.replace("/", "-"), tmp_path)
    for path in (
        "/console/clients/new",
        f"/console/clients/{client['client_id']}/delete",
        "/console/users/root/remove",
    ):
        answer = page.goto(env.url(path))
        assert answer is not None and answer.status == 403, path
        expect(page.get_by_role("heading", name="Read only")).to_be_visible()
        assert "a reader" in page.inner_text("main") and change_forms(page) == 0
    csrf = page.get_attribute("form.signout input[name=csrf]", "value")
    for path, fields in (
        ("/console/users", {"username": "sneaky", "password": "sneaky-password", "role": "admin"}),
        ("/console/users/viewer/role", {"role": "admin"}),
        ("/console/users/root/remove", {}),
        ("/console/truststore/admin-root/remove", {}),
        ("/console/signing-keys", {"algorithm": "ES256"}),
        ("/console/listeners/ClientAuthenticator/basic_auth", {"enabled": "false"}),
        (f"/console/clients/{client['client_id']}/secret", {"submission": "s-1"}),
        (f"/console/clients/{client['client_id']}/delete", {}),
    ):
        answer = page.request.post(env.url(path), form={"csrf": csrf, **fields}, max_redirects=0)
        assert answer.status == 403, (path, answer.status)
        assert "change nothing" in answer.text(), path
    users = env.dep.cli("user", "list").stdout
    assert "sneaky" not in users and "root" in users
    assert re.search(r"viewer .* role=reader\n", users), users
    assert "admin-root" in env.dep.cli("truststore", "list").stdout
    assert client["client_id"] in env.dep.cli("sp", "list").stdout
    # Signing out is the one thing a reader posts.
    page.goto(env.url("/console/"))
    page.click("button:has-text('Sign out')")
    page.wait_for_url(env.url("/console/login?signed-out"))


def test_a_reader_cannot_sign_in_with_a_certificate(env: Console, chromium: Any) -> None:
    """The MutualSSLAuthenticator acts for admins only (issue 20), in the console as in the API."""
    context = chromium.new_context(
        ignore_https_errors=True,
        client_certificates=[
            {
                "origin": env.server.url,
                "certPath": str(env.admin_cert[0]),
                "keyPath": str(env.admin_cert[1]),
            }
        ],
    )
    try:
        page = context.new_page()
        page.goto(env.url("/console/login"))
        page.fill("#cert-username", "viewer")
        page.click("button:has-text('Sign in with this certificate')")
        assert "not an administrator" in page.inner_text("#cert-username-error, #username-error")
    finally:
        context.close()


# -- listeners ------------------------------------------------------------------------------


def test_a_listener_toggled_off_really_refuses_and_the_order_changes_live(env: Console, page: Any) -> None:
    client = env.dep.add_client(
        "basic-client", "--auth-method", "client_secret_basic", "--grant-type", "client_credentials"
    )
    client_id, secret = str(client["client_id"]), str(client["client_secret"])
    assert token(env, client_id, auth=(client_id, secret)).status_code == 200
    sign_in(page, env)
    page.click("nav >> text=Listeners")
    row = page.locator("#listener-ClientAuthenticator-basic_auth")
    assert "enabled" in row.inner_text() and "0.1" in row.inner_text()
    shot(page, "listeners")
    row.locator("button:has-text('Disable')").click()
    assert "basic_auth disabled" in page.inner_text("main")
    assert "disabled" in page.locator("#listener-ClientAuthenticator-basic_auth").inner_text()
    refused = token(env, client_id, auth=(client_id, secret))
    assert refused.status_code in (400, 401) and refused.json()["error"] == "invalid_client"
    page.locator("#listener-ClientAuthenticator-basic_auth button:has-text('Enable')").click()
    assert token(env, client_id, auth=(client_id, secret)).status_code == 200
    # Reorder: post_body_auth moves above basic_auth, in identity.xml and on the page.
    page.click("button[aria-label='Move post_body_auth up']")
    names = page.locator(
        "section:has(h2:has-text('ClientAuthenticator')) tbody tr td:nth-child(2)"
    ).all_inner_texts()
    assert names.index("post_body_auth") < names.index("basic_auth")
    identity = (env.dep.conf / "identity.xml").read_text()
    assert re.search(r'name="post_body_auth"[^>]*orderId="100"', identity)
    assert re.search(r'name="basic_auth"[^>]*orderId="110"', identity)
    page.click("nav >> text=Audit log")
    audit = page.inner_text("main")
    assert "listener.change" in audit and "listener.reorder" in audit and "console:password" in audit
    shot(page, "audit-log")


# -- the other pages -------------------------------------------------------------------------


def test_truststore_signing_keys_and_a_narrow_window(env: Console, page: Any) -> None:
    other = pki.ca("Partner CA")
    sign_in(page, env)
    shot(page, "service-providers")
    page.click("nav >> text=Truststore")
    page.fill("#alias", "partner")
    page.fill("#certificate", other.pem.decode())
    page.click("button:has-text('Check certificate')")
    assert fingerprint(other) in page.inner_text(".preview")
    page.click("button:has-text('Trust it')")
    assert "Trusted partner" in page.inner_text("main")
    assert "partner" in env.dep.cli("truststore", "list").stdout
    shot(page, "truststore")
    page.click("nav >> text=Signing keys")
    before = page.locator("tbody tr").count()
    page.click("button:has-text('Rotate')")
    assert page.locator("tbody tr").count() == before + 1
    shot(page, "signing-keys")
    # Readable on a narrow window: nothing wider than the viewport but the tables' own scroll.
    for path in ("/console/clients", "/console/clients/new", "/console/listeners", "/console/users"):
        page.set_viewport_size({"width": 380, "height": 800})
        page.goto(env.url(path))
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, (path, overflow)
    shot(page, "narrow-users")


def test_one_hundred_thousand_service_providers_stay_usable(tmp_path, keystore, wheel_cache, page) -> None:  # noqa: ANN001
    console = make_console(tmp_path, keystore, wheel_cache)
    try:
        store = SQLiteStorage(console.dep.database)
        now = int(time.time())
        store._db.execute("BEGIN")  # one transaction, so that 100,000 inserts take seconds
        for n in range(100_000):
            store.add_client(
                Client(
                    f"bulk-{n:06d}",
                    f"Bulk client {n:06d}",
                    "client_secret_basic",
                    ("client_credentials",),
                    (),
                    None,
                    created_at=now,
                )
            )
        store._db.execute("COMMIT")
        store.close()
        sign_in(page, console)
        started = time.monotonic()
        page.goto(console.url("/console/clients"))
        assert "100,000 service providers, page 1 of 2,000" in page.inner_text(".count")
        expect(page.locator("tbody tr")).to_have_count(50)
        assert page.locator("tbody tr").first.inner_text().startswith("Bulk client 099999")
        page.click("text=Last »")
        assert page.locator("tbody tr").last.inner_text().startswith("Bulk client 000000")
        page.fill("#q", "client 042424")
        page.click("button:has-text('Search')")
        assert "1 service provider matching" in page.inner_text(".count")
        assert "bulk-042424" in page.inner_text("tbody")
        page.goto(console.url("/console/clients?page=1234"))
        assert "page 1,234 of 2,000" in page.inner_text(".count")
        # Five pages and a search over 100,000 rows: seconds, not minutes.
        assert time.monotonic() - started < 20
    finally:
        console.server.stop()


def test_the_console_can_be_switched_off(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    console = make_console(tmp_path, keystore, wheel_cache, '\n    <Console enabled="false"/>')
    try:
        with console.server.client() as http:
            assert http.get("/console/").status_code == 404
            assert http.get("/console/login").status_code == 404
            assert http.get("/api/openapi.json").status_code == 200
    finally:
        console.server.stop()


# -- sessions under attack (red team, 2026-11-30) ---------------------------------------------

COOKIE = "__Host-tokensmith-console"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:300]
    return found.group(1)


def http_sign_in(env: Console, user: str = "root", password: str | None = None) -> tuple[httpx.Client, str]:
    """A signed-in HTTP client and its session's CSRF token."""
    http = env.server.client()
    login = http.get("/console/login")
    answer = http.post(
        "/console/login",
        data={
            "csrf": csrf_of(login.text),
            "method": "password",
            "username": user,
            "password": password or PASSWORDS[user],
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/", answer.text[:500]
    return http, csrf_of(http.get("/console/clients").text)


def signed_in(env: Console, cookie: str) -> bool:
    with env.server.client(cookies={COOKIE: cookie}) as http:
        answer = http.get("/console/users")
    assert answer.status_code in (200, 303)
    return answer.status_code == 200


def session_rows(env: Console) -> int:
    with sqlite3.connect(env.dep.database) as db:
        return db.execute(
            "SELECT count(*) FROM plugin_state WHERE namespace = 'console.session' AND expires_at > ?",
            (int(time.time()),),
        ).fetchone()[0]


def test_a_request_in_flight_at_sign_out_does_not_bring_the_session_back(env: Console) -> None:
    """A form whose body is still arriving when its user signs out is refused, and does not
    write the ended session back when it finishes."""
    http, csrf = http_sign_in(env)
    cookie = http.cookies[COOKIE]
    host, port = urllib.parse.urlsplit(env.server.url).netloc.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(env.dep.server_cert))
    context.check_hostname = False
    context.set_alpn_protocols(["http/1.1"])
    body = urllib.parse.urlencode({"csrf": csrf, "algorithm": "ES256", "padding": "x" * 40}).encode()
    with context.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host) as slow:
        slow.sendall(
            f"POST /console/signing-keys HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {COOKIE}={cookie}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:5]
        )
        time.sleep(1)  # the request has started; its body has not all arrived
        out = http.post("/console/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert not signed_in(env, cookie)
        slow.sendall(body[5:])
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"403"
    assert not signed_in(env, cookie)
    http.close()


def test_a_link_from_another_site_keeps_the_administrator_signed_in(env: Console, page: Any) -> None:
    """SameSite=Strict: the cookie does not come with a navigation from another site. The
    console answers with a page that continues from its own origin (which brings the cookie)
    and never replaces the cookie."""
    target = env.url("/console/users?from=elsewhere")

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(f'<a id="go" href="{target}">the console</a>'.encode())

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        sign_in(page, env)
        before = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
        page.goto(f"http://localhost:{elsewhere.server_address[1]}/")
        page.click("#go")
        page.wait_for_url(target)
        page.wait_for_selector("h1:has-text('Users')")
        after = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
        assert after == before
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
    # Without a session, the same link leads to the sign-in page, one hop later.
    page.context.clear_cookies()
    with env.server.client(headers={"Sec-Fetch-Site": "cross-site"}) as anonymous:
        answer = anonymous.get("/console/users")
    assert answer.status_code == 200 and "set-cookie" not in answer.headers
    assert 'http-equiv="refresh" content="0; url=/console/users"' in answer.text


def test_anonymous_requests_store_no_session(env: Console) -> None:
    before = session_rows(env)
    with env.server.client() as anonymous:
        for _ in range(20):
            login = anonymous.get("/console/login", headers={"Cookie": ""})
            assert login.status_code == 200 and COOKIE in login.headers.get("set-cookie", "")
            away = anonymous.get("/console/clients", headers={"Cookie": ""})
            assert away.status_code == 303 and "set-cookie" not in away.headers
    assert session_rows(env) == before
    # The sign-in form's token still guards the form: it belongs to the cookie it came with.
    with env.server.client() as one, env.server.client() as two:
        token = csrf_of(one.get("/console/login").text)
        two.get("/console/login")
        refused = two.post(
            "/console/login",
            data={"csrf": token, "method": "password", "username": "root", "password": PASSWORDS["root"]},
        )
        assert refused.status_code == 403
        accepted = one.post(
            "/console/login",
            data={"csrf": token, "method": "password", "username": "root", "password": PASSWORDS["root"]},
        )
        assert accepted.status_code == 303
    assert session_rows(env) == before + 1


def test_sessions_end_when_their_user_is_demoted_removed_or_gets_a_new_password(env: Console) -> None:
    admin, csrf = http_sign_in(env)
    added = admin.post(
        "/console/users",
        data={"csrf": csrf, "username": "victim", "password": "victim-password-1", "role": "admin"},
    )
    assert added.status_code == 303
    victim, _ = http_sign_in(env, "victim", "victim-password-1")
    cookie = victim.cookies[COOKIE]
    assert signed_in(env, cookie)
    # Demoted and promoted again: the session made before is over.
    admin.post("/console/users/victim/role", data={"csrf": csrf, "role": "reader"})
    admin.post("/console/users/victim/role", data={"csrf": csrf, "role": "admin"})
    assert not signed_in(env, cookie)
    # A new password (set in the console) ends the sessions too.
    victim.close()
    victim, _ = http_sign_in(env, "victim", "victim-password-1")
    cookie = victim.cookies[COOKIE]
    short = admin.post("/console/users/victim/password", data={"csrf": csrf, "password": "short"})
    assert short.status_code == 400 and "at least 8 characters" in short.text
    assert signed_in(env, cookie)
    changed = admin.post(
        "/console/users/victim/password", data={"csrf": csrf, "password": "victim-password-2"}
    )
    assert changed.status_code == 303
    assert not signed_in(env, cookie)
    # Removed, and another user added under the same name: nothing of the old sessions.
    victim.close()
    victim, _ = http_sign_in(env, "victim", "victim-password-2")
    cookie = victim.cookies[COOKIE]
    admin.post("/console/users/victim/remove", data={"csrf": csrf})
    admin.post(
        "/console/users",
        data={"csrf": csrf, "username": "victim", "password": "someone-else-1", "role": "admin"},
    )
    assert not signed_in(env, cookie)
    admin.post("/console/users/victim/remove", data={"csrf": csrf})
    # Every sign-in is in the audit log, the refused ones too, and never a password.
    with env.server.client() as http:
        login = http.get("/console/login")
        http.post(
            "/console/login",
            data={
                "csrf": csrf_of(login.text),
                "method": "password",
                "username": "victim",
                "password": "nope-nope",
            },
        )
    with SQLiteStorage(env.dep.database) as store:
        entries = [e for e in store.list_audit(500) if e.action == "console.sign_in"]
        text = json.dumps([e.view() for e in store.list_audit(500)])
    assert ("victim", "console:password", "refused") == (
        entries[0].target,
        entries[0].via,
        entries[0].details["outcome"],
    )
    assert sum(1 for e in entries if e.target == "victim" and e.details["outcome"] == "accepted") == 3
    assert "victim-password-1" not in text and "nope-nope" not in text
    admin.close()
    victim.close()


def test_user_names_with_a_slash_are_refused_and_old_ones_can_be_removed(env: Console, page: Any) -> None:
    sign_in(page, env)
    page.goto(env.url("/console/users"))
    page.fill("#username", "sl/ash")
    page.fill("#password", "slash-password-1")
    page.click("button:has-text('Add user')")
    assert "must not contain '/'" in page.inner_text("#username-error")
    # One added before names were checked: the console can still remove it.
    with SQLiteStorage(env.dep.database) as store:
        store.add_user(User("old/name", hash_secret("old-password-1"), role="reader"))
    page.goto(env.url("/console/users"))
    row = page.locator("tr", has_text="old/name")
    row.locator("input[name=password]").fill("new-password-2")
    row.locator("button:has-text('Set password')").click()
    assert "old/name has a new password" in page.inner_text("main")
    with SQLiteStorage(env.dep.database) as store:
        entry = store.list_audit(1)[0]
        assert (entry.action, entry.target, entry.actor) == ("user.password", "old/name", "root")
    page.click("a[aria-label='Remove old/name…']")
    page.click("button:has-text('Remove it')")
    assert "Removed old/name" in page.inner_text("main")


# -- the second red team's findings ---------------------------------------------------------


def cert_sign_in(env: Console, cert: tuple[Path, Path], user: str = "root") -> tuple[httpx.Client, str]:
    """An HTTP client presenting *cert*, signed in with it, and its session's CSRF token."""
    http = env.server.client(cert=cert)
    login = http.get("/console/login")
    answer = http.post(
        "/console/login", data={"csrf": csrf_of(login.text), "method": "certificate", "username": user}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/", answer.text[:500]
    return http, csrf_of(http.get("/console/clients").text)


def reload_server(env: Console, generation: int) -> None:
    env.server.process.send_signal(signal.SIGHUP)
    env.server.wait_for_log(f"reloaded: configuration {generation}")


def test_a_certificate_session_ends_when_the_certificate_is_no_longer_admitted(
    tmp_path: Path, keystore: Path, wheel_cache: Path, chromium: Any
) -> None:
    """A session signed in by certificate lasts only while each request brings that same
    certificate and the MutualSSLAuthenticator still admits it, as the API would: a trust
    anchor removed, another certificate, an expired one or the authenticator switched off
    ends it (and deletes it), and the browser is sent to sign in again."""
    env = make_console(tmp_path, keystore, wheel_cache)
    try:
        listed = pki.issue(env.authority, "wl admin", org="Example").write(tmp_path, "listed")
        other = pki.issue(env.authority, "other admin", org="Example").write(tmp_path, "other")
        admitted = tmp_path / "admitted.pem"
        admitted.write_text(env.admin_cert[0].read_text() + other[0].read_text())
        write_authenticators(env.dep, whitelist="CN=wl admin,O=Example", admin_certificates=admitted)
        reload_server(env, 2)
        # The WhiteList certificate, in Chromium: the trust anchor goes, the session with it.
        context = chromium.new_context(
            ignore_https_errors=True,
            client_certificates=[
                {"origin": env.server.url, "certPath": str(listed[0]), "keyPath": str(listed[1])}
            ],
        )
        try:
            page = context.new_page()
            page.goto(env.url("/console/login"))
            page.fill("#cert-username", "root")
            page.click("button:has-text('Sign in with this certificate')")
            page.wait_for_url(env.url("/console/"))
            page.goto(env.url("/console/users"))
            assert page.url.endswith("/console/users")
            csrf = page.get_attribute("input[name=csrf]", "value")
            with env.server.client(
                auth=("root", PASSWORDS["root"]), headers={"Content-Type": "application/json"}
            ) as api:
                assert api.delete("/api/truststore/admin-root").status_code in (200, 204)
            with env.server.client(cert=listed, headers={"UserName": "root"}) as api:
                assert api.get("/api/users").status_code == 401
            page.goto(env.url("/console/users"))
            assert page.url.endswith("/console/login")
            assert "Your session has ended" in page.inner_text("main")
            planted = context.request.post(
                env.url("/console/users"),
                form={
                    "csrf": csrf or "",
                    "username": "planted",
                    "password": "planted-password-1",
                    "role": "admin",
                },
            )
            assert planted.status == 403
            assert "planted" not in env.dep.cli("user", "list").stdout
        finally:
            context.close()
        # An AdminCertificates certificate: the same cookie with another admitted certificate
        # is not the same session, and the session is gone for the first one too.
        first, _ = cert_sign_in(env, env.admin_cert)
        cookie = first.cookies[COOKIE]
        with env.server.client(cert=other, cookies={COOKIE: cookie}) as stranger:
            assert stranger.get("/console/users").status_code == 303
        assert first.get("/console/users").status_code == 303
        first.close()
        # Nor without a certificate at all.
        first, _ = cert_sign_in(env, env.admin_cert)
        with env.server.client(cookies={COOKIE: first.cookies[COOKIE]}) as bare:
            assert bare.get("/console/users").status_code == 303
        first.close()
        # A certificate that expires during the session.
        short_end = time.time() + 10
        short = pki.issue(
            env.authority, "short admin", org="Example", not_after=datetime.fromtimestamp(short_end, UTC)
        ).write(tmp_path, "short")
        admitted.write_text(admitted.read_text() + short[0].read_text())
        write_authenticators(env.dep, whitelist="CN=wl admin,O=Example", admin_certificates=admitted)
        reload_server(env, 3)
        expiring, _ = cert_sign_in(env, short)
        assert expiring.get("/console/users").status_code == 200
        time.sleep(max(0.0, short_end - time.time()) + 1)
        assert expiring.get("/console/users").status_code == 303
        expiring.close()
        # The MutualSSLAuthenticator switched off: its sessions end, password sessions stay.
        kept, _ = cert_sign_in(env, env.admin_cert)
        assert kept.get("/console/users").status_code == 200
        password, _ = http_sign_in(env)
        write_authenticators(env.dep, mtls=False)
        reload_server(env, 4)
        assert kept.get("/console/users").status_code == 303
        assert password.get("/console/users").status_code == 200
        kept.close()
        password.close()
    finally:
        env.server.stop()


def test_sign_in_lockout_counts_the_forwarded_client(
    tmp_path: Path, keystore: Path, wheel_cache: Path
) -> None:
    """Behind a trusted proxy (``<TrustedProxies>``) the console counts failed sign-ins per
    address the proxy forwarded, as the admin API and the login page do: an attacker behind
    the proxy locks out its own address only, not the administrator behind the same proxy;
    the audit log names the forwarded address."""
    dep = plain(tmp_path / "ts", keystore, wheel_cache)
    add_users(dep)
    server = start_server(dep)
    try:

        def attempt(address: str, password: str) -> httpx.Response:
            headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": address}
            with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
                login = http.get("/console/login")
                assert login.status_code == 200, login.text[:300]
                # The cookie is Secure: the client would not send it over the proxy's plain
                # hop by itself.
                cookie = f"{COOKIE}={login.cookies[COOKIE]}"
                return http.post(
                    "/console/login",
                    data={
                        "csrf": csrf_of(login.text),
                        "method": "password",
                        "username": "root",
                        "password": password,
                    },
                    headers={"Cookie": cookie},
                )

        for _ in range(3):
            assert attempt("6.6.6.9", "wrong password").status_code == 400
        refused = attempt("6.6.6.9", PASSWORDS["root"])  # the attacker's address is locked out
        assert refused.status_code == 400 and "locked out" in refused.text
        accepted = attempt("5.5.5.9", PASSWORDS["root"])  # root behind the same proxy is not
        assert accepted.status_code == 303 and accepted.headers["location"] == "/console/"
        with SQLiteStorage(dep.database) as store:
            entries = [e for e in store.list_audit(50) if e.action == "console.sign_in"]
        assert [(e.source, e.details["outcome"]) for e in entries] == [("5.5.5.9", "accepted")] + [
            ("6.6.6.9", "refused")
        ] * 4
    finally:
        server.stop()


def test_setting_ones_own_password_asks_for_the_current_one(env: Console, page: Any) -> None:
    """A session alone does not set its user's password: the current one is asked for (on
    the user's own row only) and checked as a sign-in is, lockout included; errors appear
    beside the field. An administrator sets someone else's password without theirs."""
    env.dep.cli("user", "add", "selfish", "--role", "admin", "--password-stdin", input="selfish-password-1\n")
    page.goto(env.url("/console/login"))
    page.fill("#username", "selfish")
    page.fill("#password", "selfish-password-1")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(env.url("/console/"))
    page.goto(env.url("/console/users"))
    expect(page.locator("input[name=current_password]")).to_have_count(1)
    own = page.locator("tr", has_text="selfish")
    expect(own.locator("#current-password")).to_have_count(1)
    # A wrong current password: refused beside the field, counted as a failed sign-in.
    own.locator("#current-password").fill("not-my-password")
    own.locator("input[name=password]").fill("selfish-password-2")
    own.locator("button:has-text('Set password')").click()
    assert "not your current password" in page.inner_text("#current-password-error")
    assert page.get_attribute("#current-password", "aria-invalid") == "true"
    with SQLiteStorage(env.dep.database) as store:
        user = store.get_user("selfish")
        assert user is not None and user.failed_attempts == 1
    # Without the field at all (a form made elsewhere, with the session's token): refused.
    csrf = page.get_attribute("input[name=csrf]", "value") or ""
    answer = page.context.request.post(
        env.url("/console/users/selfish/password"), form={"csrf": csrf, "password": "selfish-password-3"}
    )
    assert answer.status == 400 and "current password" in answer.text()
    http_sign_in(env, "selfish", "selfish-password-1")[0].close()  # unchanged
    # A too short new password is shown beside the new password's field.
    page.goto(env.url("/console/users"))
    own = page.locator("tr", has_text="selfish")
    own.locator("#current-password").fill("selfish-password-1")
    own.locator("input[name=password]").fill("short")
    own.locator("input[name=password]").evaluate("e => e.removeAttribute('minlength')")
    own.locator("button:has-text('Set password')").click()
    row = page.locator("tr", has_text="selfish")
    assert "at least 8 characters" in row.locator(".error").inner_text()
    # With the current password: changed, and this session ends.
    row.locator("#current-password").fill("selfish-password-1")
    row.locator("input[name=password]").fill("selfish-password-2")
    row.locator("button:has-text('Set password')").click()
    page.wait_for_url(env.url("/console/login"))
    http_sign_in(env, "selfish", "selfish-password-2")[0].close()
    # Someone else's password, by an administrator: no current password asked for.
    admin, csrf = http_sign_in(env)
    changed = admin.post(
        "/console/users/selfish/password", data={"csrf": csrf, "password": "selfish-password-4"}
    )
    assert changed.status_code == 303
    http_sign_in(env, "selfish", "selfish-password-4")[0].close()
    admin.post("/console/users/selfish/remove", data={"csrf": csrf})
    admin.close()

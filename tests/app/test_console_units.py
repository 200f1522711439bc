"""Focused tests of the console's parts beside the browser tests (test_console.py): the
<Console> element of server.xml, the store's paged search, and the console's checks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pki
import pytest
from quart import Quart, request
from tokensmith.app.console import (
    Session,
    _check_callback,
    _check_certificates,
    _client_address,
    _console_words,
    _field_of,
)
from tokensmith.config.settings import ConsoleSettings, load_config
from tokensmith.config.xml import ConfigError
from tokensmith.models import Client
from tokensmith.oauth import registration
from tokensmith.oauth.registration import RegistrationError, check_grant_types
from tokensmith.scope import CLIENT_ADDRESS
from tokensmith.storage.sqlite import SQLiteStorage

CONNECTOR = '<Connector address="127.0.0.1" port="0"/>'


def test_the_console_is_on_by_default_with_a_15_minute_idle_timeout(deployment) -> None:  # noqa: ANN001
    assert load_config(deployment.conf).server.console == ConsoleSettings(True, 900, 8 * 3600)


def test_the_console_element_is_read(deployment) -> None:  # noqa: ANN001
    deployment.connectors = CONNECTOR + '<Console enabled="false" idleTimeout="60" maxSessionAge="600"/>'
    deployment.write()
    assert load_config(deployment.conf).server.console == ConsoleSettings(False, 60, 600)


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ('idleTimeout="0"', "less than the minimum value allowed ('1')"),
        ('idleTimeout="soon"', "seconds, a whole number from 1 to 86400"),
        ('enabled="maybe"', "not an element of the set {'true', 'false'}"),
        ('maxSessionAge="9999999"', "greater than the maximum value allowed ('604800')"),
    ],
)
def test_a_bad_console_element_names_the_line(deployment, attributes: str, words: str) -> None:  # noqa: ANN001
    deployment.connectors = CONNECTOR + f"\n    <Console {attributes}/>"
    deployment.write()
    with pytest.raises(ConfigError, match=r"server\.xml:5:") as error:
        load_config(deployment.conf)
    assert words in str(error.value)


def _client(n: int, name: str) -> Client:
    return Client(f"id-{n:05d}", name, "client_secret_basic", ("client_credentials",), created_at=1)


def test_search_clients_pages_newest_first_and_matches_name_or_id(open_store) -> None:  # noqa: ANN001
    """On both backends (SQLite and PostgreSQL)."""
    store = open_store()
    if True:
        for n in range(120):
            store.add_client(_client(n, f"App {n:03d}" if n % 2 else f"Service {n:03d}"))
        total, page = store.search_clients("", 50, 0)
        assert total == 120 and [c.client_id for c in page[:2]] == ["id-00119", "id-00118"]
        total, page = store.search_clients("", 50, 100)
        assert total == 120 and len(page) == 20 and page[-1].client_id == "id-00000"
        total, page = store.search_clients("SERVICE", 10, 0)
        assert total == 60 and all(c.name.startswith("Service") for c in page)
        assert store.search_clients("id-0004", 50, 0)[0] == 10
        # The search is a plain substring: SQL wildcards are characters like any other.
        assert store.search_clients("%", 50, 0) == (0, [])
        assert store.search_clients("_", 50, 0) == (0, [])


def test_search_clients_over_100000_rows_is_fast(tmp_path: Path) -> None:
    """Paging happens in SQL: the last page and a search of 100,000 clients take milliseconds."""
    with SQLiteStorage(tmp_path / "db") as store:
        store._db.execute("BEGIN")
        for n in range(100_000):
            store.add_client(_client(n, f"Bulk {n:05d}"))
        store._db.execute("COMMIT")
        started = time.monotonic()
        total, page = store.search_clients("", 50, 99_950)
        assert total == 100_000 and page[-1].client_id == "id-00000"
        total, page = store.search_clients("bulk 4242", 50, 0)
        assert total == 10  # Bulk 42420 to Bulk 42429
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://app.example/cb", True),
        ("http://127.0.0.1:8080/cb", True),
        ("http://[::1]:9000/cb", True),
        # One rule with registration (check_redirect_uri): RFC 8252 §8.3 advises against
        # localhost, which may resolve elsewhere.
        ("http://localhost/cb", False),
        ("https://[::1/", False),  # urlsplit raises: was a 500
        ("http://evil.example\\@127.0.0.1/cb", False),  # a browser goes to evil.example
        ("http://app.example/cb", False),
        ("https://app.example/cb#frag", False),
        ("javascript:alert(1)", False),
        ("/relative", False),
    ],
)
def test_callback_urls(url: str, ok: bool) -> None:
    problem = _check_callback(url)
    assert (problem is None) is ok
    assert problem is None or problem.startswith("The callback URL ")


def test_refusals_name_the_console_fields_not_the_cli_options() -> None:
    with pytest.raises(RegistrationError) as caught:
        check_grant_types(["password"], "none", force=False)
    shown = _console_words(str(caught.value))
    assert "--" not in shown and "client authentication method none" in shown
    with pytest.raises(RegistrationError) as caught:
        registration.check_registration("none", ["client_credentials"])
    shown = _console_words(str(caught.value))
    assert "--" not in shown and shown.startswith("The grant type client_credentials")
    assert _field_of(shown) == "grant_types"
    assert _field_of(_check_callback("http://x.example/") or "") == "callback_url"


def test_certificates_are_checked_for_form_and_validity() -> None:
    assert "not a certificate" in (_check_certificates(b"hello", "hello").error or "")
    good = pki.self_signed("good")
    checked = _check_certificates(good.pem, good.pem.decode())
    assert checked.error is None and checked.certificates[0].subject == "CN=good"
    expired = pki.self_signed("old", not_before=pki.NOW - 9 * pki.DAY, not_after=pki.NOW - pki.DAY)
    assert "expired on" in (_check_certificates(expired.pem, expired.pem.decode()).error or "")
    early = pki.self_signed("early", not_before=pki.NOW + pki.DAY, not_after=pki.NOW + 9 * pki.DAY)
    checked = _check_certificates(early.pem, early.pem.decode())
    assert checked.error is None and "not valid before" in checked.notes[0]
    # DER (an uploaded .der file) comes back as PEM, for the form to keep.
    checked = _check_certificates(good.der, "")
    assert checked.pem.startswith("-----BEGIN CERTIFICATE-----")


def test_refusals_go_beside_their_field() -> None:
    assert _field_of("grant_types: client_credentials is for confidential clients") == "grant_types"
    assert _field_of("a self_signed_tls_client_auth client needs its certificate") == "certificate"
    assert _field_of("something else entirely") == "form"


def _address_in(scope: dict[str, object]) -> tuple[str | None, str | None]:
    """The console's client address and the peer's, in a request with *scope*."""

    async def read() -> tuple[str | None, str | None]:
        app = Quart(__name__)
        async with app.test_request_context("/console/login", scope_base=scope):
            return _client_address(), request.remote_addr

    return asyncio.run(read())


def test_the_sign_in_counts_the_address_a_trusted_proxy_forwarded() -> None:
    """The lockout's source and the audit's address: the client's address as the access log
    took it from a trusted proxy's header (``CLIENT_ADDRESS``), else the peer's."""
    assert _address_in({CLIENT_ADDRESS: "203.0.113.7"})[0] == "203.0.113.7"
    address, peer = _address_in({})
    assert address == peer


def test_a_session_keeps_the_certificate_it_signed_in_with() -> None:
    """A certificate session stores its certificate's SHA-256, which each request must match;
    a session stored without it (made before) cannot pass as a certificate session."""
    session = Session("k", "c", 1, "root", "certificate", stamp="s", certificate="ab" * 32)
    assert json.loads(session.dump())["certificate"] == "ab" * 32
    assert "credential" not in json.loads(session.dump())

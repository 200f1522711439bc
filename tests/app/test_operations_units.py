"""Focused, in-process tests of the operating surface: forwarded headers, the refusal log,
the metrics registry, /healthz, /readyz and /metrics through the Quart test client, the
stock-Hypercorn entry point and the doctor's report."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from conftest import new_deployment
from tokensmith.app.accesslog import refused, request_id
from tokensmith.app.factory import create_app
from tokensmith.app.front import Front
from tokensmith.app.health import health
from tokensmith.app.metrics import metrics_blueprint
from tokensmith.app.operations import install
from tokensmith.cli.doctor import FAIL, OK, Report
from tokensmith.config.settings import load_config
from tokensmith.errors import InvalidClientError, RequestRefused, ServerError
from tokensmith.http.proxies import UNKNOWN, client_address, forwarded_for, trusted_peer
from tokensmith.metrics import endpoint_label, exposition, metrics
from tokensmith.oauth.endpoints import note
from tokensmith.scope import RECORD


def test_forwarded_for_takes_the_nearest_proxys_entry() -> None:
    """The last X-Forwarded-For entry and Forwarded element are the proxy next to us; a port
    or brackets around IPv6 are dropped; junk gives None (RFC 7239 §5.2, §6)."""
    assert forwarded_for([(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9")]) == ("203.0.113.9", None)
    forwarded = [(b"forwarded", b'for=192.0.2.1, for="[2001:db8::1]:4711";proto=https')]
    assert forwarded_for(forwarded, "forwarded") == ("2001:db8::1", "https")
    assert forwarded_for(forwarded) == (None, None)  # not the header family the proxy is believed for
    both = [(b"forwarded", b"for=192.0.2.7:80;proto=https"), (b"x-forwarded-proto", b"HTTP")]
    assert forwarded_for(both, "forwarded") == ("192.0.2.7", "https")
    assert forwarded_for(both) == (None, "http")
    assert forwarded_for([(b"x-forwarded-for", b"not-an-address")]) == (None, None)
    # The proxy appends its own line: the right-most address across lines is the one it added.
    lines = [(b"x-forwarded-for", b"6.6.6.6, 10.0.0.1"), (b"x-forwarded-for", b"203.0.113.9")]
    assert forwarded_for(lines + [(b"x-forwarded-proto", b"http, HTTPS")]) == ("203.0.113.9", "https")


def test_trusted_peer() -> None:
    import ipaddress

    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    assert trusted_peer({"client": ("10.1.2.3", 1)}, nets)
    assert not trusted_peer({"client": ("192.0.2.1", 1)}, nets)
    assert not trusted_peer({"client": None}, nets) and not trusted_peer({"client": ("10.1.2.3", 1)}, ())
    # A listener on "::" sees an IPv4 proxy as an IPv4-mapped address.
    assert trusted_peer({"client": ("::ffff:10.1.2.3", 1)}, nets)
    assert not trusted_peer({"client": ("::ffff:192.0.2.1", 1)}, nets)


def test_a_forwarded_header_without_an_address_gives_an_unknown_client() -> None:
    """Not None, which would leave the proxy's own address as the client's."""
    assert client_address([(b"x-forwarded-for", b"203.0.113.9")]) == "203.0.113.9"
    assert client_address([(b"x-forwarded-for", b"garbage")]) == UNKNOWN
    assert client_address([(b"forwarded", b"for=unknown;proto=https")], "forwarded") == UNKNOWN
    assert client_address([(b"forwarded", b"proto=https")], "forwarded") == UNKNOWN
    assert client_address([]) is None and client_address([(b"x-forwarded-proto", b"https")]) is None
    assert client_address([(b"x-forwarded-for", b"garbage")], "forwarded") is None  # the other family


def test_refusal_is_logged_once_with_reason_and_request_id(caplog: pytest.LogCaptureFixture) -> None:
    scope = {"path": "/oauth2/token", "client": ("192.0.2.1", 5), RECORD: {"request_id": "r-1"}}
    note(scope, claimed_client_id="abc")
    error = InvalidClientError(
        "client authentication failed", reason="secret_mismatch", detail="secret mismatch"
    )
    with caplog.at_level(logging.INFO, logger="tokensmith.refusals"):
        refused(scope, 401, error)
        refused(scope, 401, error)  # a second call for the same request adds nothing
        refused({"path": "/oauth2/token"}, 500, ServerError("x"))  # 5xx are logged elsewhere
        refused(
            {"path": "/oauth2/token", RECORD: {"request_id": "r-2"}}, 413, RequestRefused(413, "too large")
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "refused 401 invalid_client at /oauth2/token [request_id=r-1 client_id=abc remote=192.0.2.1]"
        " secret_mismatch: secret mismatch"
    )
    assert len(lines) == 2 and "request_id=r-2" in lines[1] and "body_too_large: too large" in lines[1]
    assert request_id(scope) == "r-1" and scope[RECORD]["reason"] == "secret_mismatch"


def test_error_reason_defaults_to_the_rfc_error() -> None:
    error = InvalidClientError("client authentication failed")
    assert (error.reason, error.detail) == ("invalid_client", "client authentication failed")
    assert error.body() == {"error": "invalid_client", "error_description": "client authentication failed"}


def test_exposition_lists_every_metric() -> None:
    metrics().reloads.labels("ok").inc(0)
    text, content_type = exposition()
    assert content_type.startswith("text/plain")
    for name in (
        "tokensmith_http_requests_total",
        "tokensmith_tokens_issued_total",
        "tokensmith_tls_handshakes_total",
        "tokensmith_open_connections",
        "tokensmith_storage_commit_seconds",
        "tokensmith_reloads_total",
    ):
        assert name.encode() in text
    assert endpoint_label("/oauth2/token") == "/oauth2/token" and endpoint_label("/x/y") == "other"


@pytest.fixture
def app(tmp_path: Path, keystore: Path, wheel_cache: Path):  # noqa: ANN201
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    dep.connectors += '\n    <Metrics allow="10.0.0.0/8"/>'
    dep.write()
    return create_app(load_config(dep.conf))


def test_health_and_metrics_routes(app) -> None:  # noqa: ANN001
    """/healthz and /readyz answer; /metrics is 404 to a peer outside <Metrics allow>."""
    assert isinstance(app.asgi_app, Front)
    assert health.name in app.blueprints and metrics_blueprint.name in app.blueprints
    asyncio.run(_probe(app))
    assert callable(install)


async def _probe(app) -> None:  # noqa: ANN001
    async with app.test_app() as running:
        client = running.test_client()
        live = await client.get("/healthz")
        assert live.status_code == 200 and await live.get_json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, await ready.get_data()
        assert (await ready.get_json())["checks"] == {
            "configuration": "ok",
            "storage": "ok",
            "keystore": "ok",
        }
        assert (await client.get("/metrics")).status_code == 404  # the test client is 127.0.0.1


def test_stock_hypercorn_entry_point(tmp_path: Path, keystore: Path, wheel_cache: Path, monkeypatch) -> None:  # noqa: ANN001
    """tokensmith.asgi builds the app from TOKENSMITH_CONF, and create() from a directory."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    monkeypatch.setenv("TOKENSMITH_CONF", str(dep.conf))
    from tokensmith.asgi import CONF_ENV, create

    assert CONF_ENV == "TOKENSMITH_CONF"
    built = create()
    assert "/oauth2/token" in {rule.rule for rule in built.url_map.iter_rules()}


def test_doctor_report_counts_failures(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report()
    report.ok("fine")
    report.fail("broken", "mend it")
    assert report.failed == 1
    assert capsys.readouterr().out == f"{OK} fine\n{FAIL} broken\n    fix: mend it\n"

"""Operating the server: the access log and request ids, refusal reasons, /healthz, /readyz
and /metrics, against the real server over real TLS, reading the real log file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pki
import pytest
from conftest import Deployment, Server, new_deployment, start_server

LANES = (
    '<Connector address="127.0.0.1" port="0" clientAuth="want"/>\n'
    '    <Connector address="127.0.0.1" port="0" clientAuth="want" http1="llhttp"/>'
)


def read_log(path: Path, count: int, timeout: float = 10) -> list[dict]:
    """The JSON lines of the access log once it has *count* of them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def logged(path: Path, request_id: str, timeout: float = 10) -> dict:
    """The access-log entry of *request_id*, once written (after the response went out)."""
    deadline = time.monotonic() + timeout
    while request_id not in (path.read_text() if path.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    return by_id(read_log(path, 0, timeout=0), request_id)


def by_id(entries: list[dict], request_id: str) -> dict:
    found = [entry for entry in entries if entry["request_id"] == request_id]
    assert len(found) == 1, (request_id, entries)
    return found[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict, dict, Path]]:  # noqa: ANN001
    """A server on both HTTP/1.1 lanes with its access log in logs/access.log, a secret
    client and a self-signed mutual-TLS client."""
    root = tmp_path_factory.mktemp("ops")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        connectors=LANES + '\n    <AccessLog format="json" file="../logs/access.log"/>',
    )
    secret = dep.add_client(
        "ops-secret", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    pair = pki.self_signed("ops-mtls")
    files = pair.write(root / "certs", "mtls")
    mtls = dep.add_client(
        "ops-mtls",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(files[0]),
    )
    mtls["files"], mtls["sha256"] = files, hashlib.sha256(pair.der).hexdigest()
    server = start_server(dep)
    yield server, secret, mtls, dep.root / "logs" / "access.log"
    server.stop()


def test_access_log_one_json_line_per_request_on_every_lane(env) -> None:  # noqa: ANN001
    """HTTP/1.1 on both lanes and HTTP/2 each leave one line with the request id the response
    echoed, the authenticated client and method, the grant, TLS and certificate details; the
    log holds no secret and no token."""
    server, secret, mtls, log = env
    before = len(read_log(log, 0, timeout=0))
    seen: list[tuple[str, str, httpx.Response]] = []
    for url, http2, label in (
        (server.urls[0], False, "HTTP/1.1 hypercorn"),
        (server.urls[1], False, "HTTP/1.1 llhttp"),
        (server.urls[0], True, "HTTP/2"),
    ):
        with server.client(url=url, http2=http2) as http:
            response = http.post(
                "/oauth2/token",
                auth=(secret["client_id"], secret["client_secret"]),
                data={"grant_type": "client_credentials"},
            )
        assert response.status_code == 200, (label, response.text)
        seen.append((label, "secret", response))
        with server.client(url=url, http2=http2, cert=mtls["files"]) as http:
            response = http.post(
                "/oauth2/token", data={"grant_type": "client_credentials", "client_id": mtls["client_id"]}
            )
        assert response.status_code == 200, (label, response.text)
        seen.append((label, "mtls", response))
    entries = read_log(log, before + len(seen))
    assert len(entries) == before + len(seen)
    for label, kind, response in seen:
        request_id = response.headers["x-request-id"]
        entry = by_id(entries, request_id)
        assert entry["method"] == "POST" and entry["path"] == "/oauth2/token", label
        assert entry["status"] == 200 and entry["bytes"] == len(response.content), label
        assert entry["http_version"] == ("2" if label == "HTTP/2" else "1.1"), label
        assert entry["tls_version"] in ("TLSv1.2", "TLSv1.3") and entry["remote_addr"] == "127.0.0.1"
        assert entry["grant_type"] == "client_credentials" and entry["duration_ms"] >= 0
        if kind == "secret":
            assert entry["client_id"] == secret["client_id"], label
            assert entry["auth_method"] == "client_secret_basic"
            assert entry["client_cert"] is False and entry["client_cert_sha256"] is None
        else:
            assert entry["client_id"] == mtls["client_id"], label
            assert entry["auth_method"] == "self_signed_tls_client_auth"
            assert entry["client_cert"] is True and entry["client_cert_sha256"] == mtls["sha256"]
    text = log.read_text()
    assert secret["client_secret"] not in text
    for _, _, response in seen:
        assert response.json()["access_token"] not in text


def test_request_id_from_an_untrusted_peer_is_not_taken(env) -> None:  # noqa: ANN001
    """Without <TrustedProxies>, a client's X-Request-Id is ignored: the server makes its own."""
    server, _, _, log = env
    with server.client() as http:
        response = http.get("/healthz", headers={"X-Request-Id": "forged-by-client"})
    assert response.headers["x-request-id"] != "forged-by-client"
    assert logged(log, response.headers["x-request-id"])["path"] == "/healthz"


def refusal_line(server: Server, request_id: str) -> str:
    server.wait_for_log(f"request_id={request_id} ")
    return next(line for line in server.log().splitlines() if f"request_id={request_id} " in line)


def test_refusals_say_why_to_the_operator_only(env) -> None:  # noqa: ANN001
    """Each refusal is logged once at INFO, with the request id and a reason code and words;
    the client gets the RFC 6749 error and nothing of the reason."""
    server, secret, mtls, log = env
    other = pki.self_signed("stranger").write(server.deployment.root / "certs", "stranger")
    cases = [
        ("secret_mismatch", {"auth": (secret["client_id"], "wrong-secret")}, None, "invalid_client"),
        ("unknown_client", {"auth": ("nobody", "wrong-secret")}, None, "invalid_client"),
        ("no_client_certificate", {"data_client": mtls["client_id"]}, None, "invalid_client"),
        ("certificate_not_registered", {"data_client": mtls["client_id"]}, other, "invalid_client"),
    ]
    for reason, how, cert, error in cases:
        data = {"grant_type": "client_credentials"}
        if "data_client" in how:
            data["client_id"] = how["data_client"]
        with server.client(cert=cert) as http:
            response = http.post("/oauth2/token", data=data, auth=how.get("auth"))
        assert response.status_code == 401 and response.json()["error"] == error, reason
        assert reason not in response.text and "not registered" not in response.text
        request_id = response.headers["x-request-id"]
        line = refusal_line(server, request_id)
        assert " INFO tokensmith.refusals: refused 401 invalid_client at /oauth2/token" in line, line
        assert f" {reason}: " in line, line
        assert server.log().count(f"request_id={request_id} ") == 1
        assert logged(log, request_id)["reason"] == reason
    assert "wrong-secret" not in server.log() and "wrong-secret" not in log.read_text()


def test_refusal_of_an_authorization_field_logs_none_of_it(env) -> None:  # noqa: ANN001
    """A credential sent without a scheme, or with one no plugin takes: the refusal line says
    what it looked like and how long it was, and none of its text."""
    server, _, _, _ = env
    cases = {
        "SECRETSTARTxyz0123456789abcdef": "no scheme, 30 characters",
        "Frobnicate SECRETSTART2": "an unknown scheme token and credentials, 23 characters",
        "Bearer SECRETSTART3": "Authorization scheme Bearer not accepted (19 characters)",
    }
    for value, words in cases.items():
        with server.client() as http:
            response = http.post(
                "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": value}
            )
        assert response.status_code == 401, response.text
        line = refusal_line(server, response.headers["x-request-id"])
        assert " unsupported_auth_scheme: " in line and words in line, line
    assert "SECRETSTART" not in server.log() and "Frobnicate" not in server.log()


def test_grant_not_allowed_is_explained(env) -> None:  # noqa: ANN001
    server, secret, _, _ = env
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            auth=(secret["client_id"], secret["client_secret"]),
            data={"grant_type": "refresh_token", "refresh_token": "x"},
        )
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    line = refusal_line(server, response.headers["x-request-id"])
    assert f"grant_not_allowed: grant refresh_token not allowed for client {secret['client_id']}" in line


def test_health_endpoints(env) -> None:  # noqa: ANN001
    server, _, _, _ = env
    with server.client() as http:
        live = http.get("/healthz")
        ready = http.get("/readyz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ok",
        "checks": {"configuration": "ok", "storage": "ok", "keystore": "ok"},
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition *text*."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name:
            got = ",".join(sorted((match[2] or "").split(","))) if match[2] else ""
            if got == wanted:
                return float(match[3])
    raise AssertionError(f"no {name}{{{wanted}}} in\n{text}")


def test_metrics_count_what_happened(env) -> None:  # noqa: ANN001
    """/metrics (loopback) counts tokens by grant and method, failures by reason, requests
    by endpoint and status."""
    server, secret, _, _ = env
    with server.client() as http:
        first = http.get("/metrics")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
        issued = metric(
            first.text,
            "tokensmith_tokens_issued_total",
            grant_type="client_credentials",
            auth_method="client_secret_basic",
        )
        http.post(
            "/oauth2/token",
            auth=(secret["client_id"], secret["client_secret"]),
            data={"grant_type": "client_credentials"},
        )
        http.post(
            "/oauth2/token", auth=(secret["client_id"], "bad"), data={"grant_type": "client_credentials"}
        )
        text = http.get("/metrics").text
    assert (
        metric(
            text,
            "tokensmith_tokens_issued_total",
            grant_type="client_credentials",
            auth_method="client_secret_basic",
        )
        == issued + 1
    )
    assert metric(text, "tokensmith_client_auth_failures_total", reason="secret_mismatch") >= 1
    assert metric(text, "tokensmith_http_requests_total", endpoint="/oauth2/token", status="401") >= 1
    assert metric(text, "tokensmith_open_connections") >= 1
    assert metric(text, "tokensmith_tls_handshakes_total") >= 1
    assert "tokensmith_storage_commit_seconds_bucket" in text
    assert "tokensmith_storage_group_commit_batch_size_bucket" in text
    failures = metric(text, "tokensmith_tls_handshake_failures_total")
    distrusting = ssl.create_default_context()  # trusts the system's CAs, not this server
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=distrusting, timeout=10) as stranger:
        stranger.get(f"{server.url}/healthz")
    deadline = time.monotonic() + 10
    with server.client() as http:
        while metric(http.get("/metrics").text, "tokensmith_tls_handshake_failures_total") < failures + 1:
            assert time.monotonic() < deadline, "the failed handshake was not counted"
            time.sleep(0.05)


def test_metrics_only_for_the_allowed_addresses(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """A peer outside <Metrics allow> gets 404; health is for everyone."""
    deployment.connectors += '\n    <Metrics allow="192.0.2.0/24"/>'
    deployment.write()
    server = serve(deployment)
    with server.client() as http:
        assert http.get("/metrics").status_code == 404
        assert http.get("/healthz").status_code == 200


def test_metrics_with_workers_sum_every_worker(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """With --workers the counts of every worker are summed (prometheus_client's
    multiprocess mode): N token requests over N connections count N, whichever worker
    answers the scrape."""
    client = deployment.add_client(
        "w", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    server = serve(deployment, "--workers", "2")
    for _ in range(12):
        with server.client() as http:  # a new connection each: the kernel spreads them
            response = http.post(
                "/oauth2/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                },
            )
            assert response.status_code == 200
    for _ in range(4):
        with server.client() as http:
            text = http.get("/metrics").text
        labels = {"grant_type": "client_credentials", "auth_method": "client_secret_post"}
        assert metric(text, "tokensmith_tokens_issued_total", **labels) == 12


def test_readyz_says_when_the_keystore_expired(tmp_path: Path, wheel_cache: Path, serve) -> None:  # noqa: ANN001
    """A server whose certificate expired answers /readyz 503, naming the keystore."""
    expired = tmp_path / "expired"
    expired.mkdir()
    pair = pki.self_signed("127.0.0.1", not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY)
    cert, key = pair.write(expired, "server")
    (expired / "server.crt").write_bytes(cert.read_bytes())
    (expired / "server.key").write_bytes(key.read_bytes())
    dep = new_deployment(tmp_path / "ts", expired, wheel_cache)
    server = serve(dep)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the point is that the certificate expired
    with httpx.Client(base_url=server.url, verify=context, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["keystore"].startswith("expired ")
    assert ready.json()["checks"]["storage"] == "ok"


# --- plain HTTP behind a TLS-terminating proxy (SSLEnabled="false") ---------------------------


def plain_deployment(
    tmp_path: Path, keystore: Path, wheel_cache: Path, proxies: str, headers: str = "x-forwarded"
) -> Deployment:
    return new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        connectors=(
            '<Connector address="127.0.0.1" port="0" SSLEnabled="false"/>\n'
            f'    <TrustedProxies addresses="{proxies}" headers="{headers}"/>\n'
            '    <AccessLog file="../logs/access.log"/>'
        ),
    )


def test_plain_http_connector_answers_its_trusted_proxy(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """The proxy (here 127.0.0.1) gets tokens over plain HTTP when it says the client came
    over HTTPS; its X-Request-Id and X-Forwarded-For are taken; without X-Forwarded-Proto:
    https the OAuth endpoints refuse (RFC 6749 §3.2)."""
    dep = plain_deployment(tmp_path, keystore, wheel_cache, "127.0.0.1")
    client = dep.add_client("p", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    assert server.url.startswith("http://127.0.0.1:")
    form = {"grant_type": "client_credentials"}
    credentials = (client["client_id"], client["client_secret"])
    with httpx.Client(base_url=server.url, timeout=10) as http:
        proxied = http.post(
            "/oauth2/token",
            auth=credentials,
            data=form,
            headers={
                "X-Forwarded-Proto": "https",
                "X-Forwarded-For": "203.0.113.9",
                "X-Request-Id": "lb-1234",
            },
        )
        forwarded = http.post(
            "/oauth2/token",
            auth=credentials,
            data=form,
            # Not believed: the proxy is trusted for X-Forwarded-* (the default).
            headers={"Forwarded": "for=198.51.100.7;proto=https"},
        )
        cleartext = http.post("/oauth2/token", auth=credentials, data=form)
        health = http.get("/healthz")
    assert proxied.status_code == 200, proxied.text
    assert proxied.headers["x-request-id"] == "lb-1234"
    assert forwarded.status_code == 403, forwarded.text
    assert cleartext.status_code == 403 and cleartext.json()["error"] == "invalid_request"
    assert health.status_code == 200
    entry = logged(dep.root / "logs" / "access.log", "lb-1234")
    assert entry["forwarded_for"] == "203.0.113.9" and entry["remote_addr"] == "127.0.0.1"
    assert entry["tls_version"] is None and entry["client_id"] == client["client_id"]


def test_plain_http_connector_drops_other_peers(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """A peer outside <TrustedProxies> gets no answer on a plain-HTTP connector, and the log
    says why."""
    dep = plain_deployment(tmp_path, keystore, wheel_cache, "192.0.2.10")
    server = serve(dep)
    with httpx.Client(base_url=server.url, timeout=10) as http, pytest.raises(httpx.TransportError):
        http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"X-Forwarded-Proto": "https"}
        )
    server.wait_for_log("plain-HTTP connector: dropped 1 connection(s) from peers outside <TrustedProxies>")


def test_plain_http_connector_needs_trusted_proxies(deployment: Deployment) -> None:
    """SSLEnabled="false" without <TrustedProxies> is a configuration error with its line."""
    deployment.connectors = '<Connector address="127.0.0.1" port="0" SSLEnabled="false"/>'
    deployment.write()
    result = deployment.cli("serve", check=False)
    assert result.returncode != 0
    assert "server.xml:4:" in result.stderr and "<TrustedProxies" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- the access log in process: formats, escaping, logrotate ----------------------------------


async def _answer_ok(scope: dict, receive: object, send) -> None:  # noqa: ANN001
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(path: str) -> dict:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "headers": [],
        "client": ("192.0.2.1", 4000),
    }


def test_common_format_and_escaping(tmp_path: Path) -> None:
    """A path a client chose cannot break a line in either format: quotes, backslashes,
    newlines and non-ASCII are escaped."""
    import asyncio

    from tokensmith.app.front import Front
    from tokensmith.config.settings import AccessLogSettings

    async def run(settings: AccessLogSettings) -> list[str]:
        middleware = Front(_answer_ok, settings, ())
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await middleware(_scope('/a"b\\c\nd\u00e9'), None, send)
        middleware.close()
        assert (b"x-request-id", sent[0]["headers"][-1][1]) in sent[0]["headers"]
        assert settings.file is not None
        return settings.file.read_text().splitlines()

    common = asyncio.run(run(AccessLogSettings(True, "common", tmp_path / "common.log")))
    assert len(common) == 1
    assert re.fullmatch(
        r'192\.0\.2\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /a\\x22b\\x5cc\\x0ad\\xc3\\xa9 HTTP/1\.1"'
        r" 200 2 rid=\S+ ms=\d+\.\d{3} tls=- cert=-",
        common[0],
    ), common[0]
    lines = asyncio.run(run(AccessLogSettings(True, "json", tmp_path / "json.log")))
    assert len(lines) == 1 and json.loads(lines[0])["path"] == '/a"b\\c\nd\u00e9'


def test_log_file_moved_away_is_reopened(tmp_path: Path) -> None:
    """After logrotate moves the file, the next lines go to a new file of the same name."""
    import asyncio

    from tokensmith.app.front import Front
    from tokensmith.config.settings import AccessLogSettings

    log = tmp_path / "access.log"

    async def run() -> None:
        middleware = Front(_answer_ok, AccessLogSettings(True, "json", log), ())

        async def send(message: dict) -> None:
            return None

        await middleware(_scope("/before"), None, send)
        middleware.log.writer.flush()  # type: ignore[union-attr]
        log.rename(tmp_path / "access.log.1")
        await middleware(_scope("/after"), None, send)
        middleware.close()

    asyncio.run(run())
    assert [json.loads(line)["path"] for line in (tmp_path / "access.log.1").read_text().splitlines()] == [
        "/before"
    ]
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == ["/after"]


def test_failed_reopen_keeps_no_closed_descriptor(tmp_path: Path) -> None:
    """The log's directory moved away (so the reopen fails), a new file gets the descriptor
    number the log had, the directory comes back: the new file receives no log line and
    stays open, the log reopens on its own, and closing raises nothing."""
    from tokensmith.app.accesslog import _Writer

    logs = tmp_path / "logs"
    writer = _Writer(logs / "access.log")
    old_fd = writer.fd
    writer.write("first")
    writer.flush()
    logs.rename(tmp_path / "logs.away")
    writer.write("lost")
    writer.flush()  # fails: warned, not raised
    victim_path = tmp_path / "victim"
    victim = os.open(victim_path, os.O_RDWR | os.O_CREAT)  # the lowest free number: the log's old one
    try:
        assert victim == old_fd
        writer.write("still away")
        writer.flush()
        (tmp_path / "logs.away").rename(logs)
        writer.write("second")
        writer.flush()
        os.fstat(victim)  # still open
        assert victim_path.read_bytes() == b""
    finally:
        os.close(victim)
    writer.close()
    writer.close()
    assert (logs / "access.log").read_text().splitlines() == ["first", "second"]


def test_common_format_escapes_every_field(tmp_path: Path) -> None:
    """A forwarded IPv6 zone id, a client id with spaces, ESC and DEL: each stays inside its
    own field of the common format, escaped, so no value adds fields of its own."""
    import asyncio
    import ipaddress

    from tokensmith.app.front import Front
    from tokensmith.config.settings import AccessLogSettings
    from tokensmith.oauth.endpoints import note

    async def app(scope: dict, receive: object, send) -> None:  # noqa: ANN001
        note(scope, client_id='a b\x1b[31m\x7f"', grant_type="x y")
        await _answer_ok(scope, receive, send)

    async def run() -> list[str]:
        path = tmp_path / "common.log"
        trusted = (ipaddress.ip_network("192.0.2.0/24"),)
        middleware = Front(app, AccessLogSettings(True, "common", path), trusted, "forwarded")
        scope = _scope("/healthz")
        scope["headers"] = [(b"forwarded", b'for="[fe80::1%x\\" 200 999 \\"FAKE]"')]

        async def send(message: dict) -> None:
            return None

        await middleware(scope, None, send)
        middleware.close()
        return path.read_text().splitlines()

    (line,) = asyncio.run(run())
    assert "\x1b" not in line and "\x7f" not in line and "FAKE" not in line, line
    fields = line.split(" ")
    assert fields[2] == "a\\x20b\\x1b[31m\\x7f\\x22", line
    assert fields[-3:] == ["cert=-", "for=fe80::1", "grant_type=x\\x20y"], line


@pytest.mark.parametrize("header", [":AAAA:", "garbage", ":MIIBkTCB+wIJAK:"])
def test_unusable_forwarded_certificate_gets_a_generic_answer(
    deployment: Deployment, serve, header: str
) -> None:  # noqa: ANN001
    """The client is told its forwarded certificate was refused, not which check failed
    (RFC 6749 §5.2 invalid_client); the operator's refusal line says why."""
    deployment.oauth = (
        '<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="127.0.0.1"/>'
    )
    deployment.write()
    server = serve(deployment)
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            headers={"Client-Cert": header},
            data={"grant_type": "client_credentials", "client_id": "x"},
        )
    assert response.status_code == 401, response.text
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "the forwarded client certificate is unusable",
    }
    line = refusal_line(server, response.headers["x-request-id"])
    assert (
        " forwarded_certificate_unusable: " in line
        and len(line.split(" forwarded_certificate_unusable: ")[1]) > 3
    )

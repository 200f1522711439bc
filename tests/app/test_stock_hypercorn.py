"""tokensmith under a Hypercorn the user runs: ``hypercorn --config FILE 'tokensmith.asgi:app'``
with the configuration directory in TOKENSMITH_CONF, as the README shows it."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pki
import pytest
from conftest import Deployment

HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))


def proxy_header(pair: pki.Pair) -> str:
    """RFC 9440 §2.2: the certificate's DER as a byte sequence, base64 between colons."""
    import base64

    return ":" + base64.b64encode(pair.der).decode() + ":"


@pytest.fixture
def hypercorn(deployment: Deployment) -> Iterator[tuple[str, Deployment, Path]]:
    """Stock Hypercorn serving the deployment, started from a Hypercorn config file."""
    deployment.oauth = (
        '<ClientCertificateHeader name="Client-Cert" format="rfc9440" trustedProxies="127.0.0.1"/>'
    )
    deployment.connectors += '\n    <AccessLog file="../logs/access.log"/>'
    deployment.write()
    config = deployment.root / "hypercorn.toml"
    security = deployment.conf / "security"
    config.write_text(
        'bind = ["127.0.0.1:0"]\n'
        'insecure_bind = ["127.0.0.1:0"]\n'
        f'certfile = "{security / "server.crt"}"\n'
        f'keyfile = "{security / "server.key"}"\n'
        'errorlog = "-"\n'
    )
    log = deployment.root / "hypercorn.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [HYPERCORN, "--config", str(config), "tokensmith.asgi:app"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENSMITH_CONF": str(deployment.conf), "PYTHONUNBUFFERED": "1"},
            cwd=deployment.root,
        )
    try:
        deadline = time.monotonic() + 30
        while not (
            (match := re.search(r"Running on (https://127\.0\.0\.1:\d+)", log.read_text()))
            and re.search(r"Running on http://127\.0\.0\.1:\d+", log.read_text())
        ):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield match[1], deployment, log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_stock_hypercorn_serves_the_full_app(hypercorn, tmp_path: Path) -> None:  # noqa: ANN001
    """Secret and proxy-header client authentication, metadata under the URL Hypercorn listens
    on, health, metrics and the access log, all under a Hypercorn tokensmith did not start."""
    url, dep, _ = hypercorn
    secret = dep.add_client("h", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    pair = pki.self_signed("behind-proxy")
    cert, _ = pair.write(tmp_path, "client")
    mtls = dep.add_client(
        "m",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(cert),
    )
    context = ssl.create_default_context(cafile=str(dep.server_cert))
    with httpx.Client(base_url=url, verify=context, timeout=10) as http:
        response = http.post(
            "/oauth2/token",
            auth=(secret["client_id"], secret["client_secret"]),
            data={"grant_type": "client_credentials"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"]
        forwarded = http.post(
            "/oauth2/token",
            headers={"Client-Cert": proxy_header(pair)},
            data={"grant_type": "client_credentials", "client_id": mtls["client_id"]},
        )
        assert forwarded.status_code == 200, forwarded.text
        metadata = http.get("/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == url
        assert metadata["token_endpoint"] == f"{url}/oauth2/token"
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
        assert 'tokensmith_tokens_issued_total{auth_method="client_secret_basic"' in metrics
        assert http.get("/oauth2/jwks").status_code == 200
    access = dep.root / "logs" / "access.log"
    deadline = time.monotonic() + 10
    while response.headers["x-request-id"] not in access.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # lines are written a block at a time, within a fraction of a second
    assert response.headers["x-request-id"] in access.read_text()
    assert secret["client_secret"] not in access.read_text()


def _plain_url(log: Path) -> str:
    match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())
    assert match, log.read_text()
    return match[1]


def test_stock_hypercorn_refuses_h2c_upgrade_over_tls(hypercorn) -> None:  # noqa: ANN001
    """Importing tokensmith.asgi installs the protocol refusals: ``Upgrade: h2c`` over TLS is
    refused, not switched to HTTP/2 with 101 (RFC 9113 §3.2: HTTP/2 over TLS is ALPN only)."""
    url, dep, _ = hypercorn
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(dep.server_cert))
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 400"), head


def test_stock_hypercorn_plain_port_serves_only_the_probes(hypercorn) -> None:  # noqa: ANN001
    """On Hypercorn's insecure_bind, a client that is not a trusted proxy saying https gets no
    token (RFC 6749 §3.2), under any spelling of the path; the probes answer."""
    url, dep, log = hypercorn
    secret = dep.add_client("h", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    plain = _plain_url(log)
    auth = (secret["client_id"], secret["client_secret"])
    with httpx.Client(base_url=plain, timeout=10) as http:
        refused = http.post(
            "/oauth2/token",
            auth=auth,
            data={"grant_type": "client_credentials"},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert refused.status_code == 403 and refused.json()["error"] == "invalid_request"
        assert (
            http.post("/oauth2/token/", auth=auth, data={"grant_type": "client_credentials"}).status_code
            == 403
        )
        assert http.get("/.well-known/oauth-authorization-server").status_code == 403
        assert http.get("/healthz").status_code == 200

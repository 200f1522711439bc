"""tokensmith under a Hypercorn the user runs: ``hypercorn --config FILE 'tokensmith.asgi:app'``
with the configuration directory in TOKENSMITH_CONF, as the README shows it."""

from __future__ import annotations

import os
import re
import signal
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
        while not (match := re.search(r"Running on (https://127\.0\.0\.1:\d+)", log.read_text())):
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

"""tokensmith as an ASGI app for a Hypercorn (or other ASGI server) the user runs.

    TOKENSMITH_CONF=/etc/tokensmith hypercorn --config hypercorn.toml 'tokensmith.asgi:app'

``app`` is built when this module is imported, from the configuration directory in the
``TOKENSMITH_CONF`` environment variable (default ``./conf``); ``create()`` builds a new one,
for ``hypercorn 'tokensmith.asgi:create()'``. The server's own connectors in server.xml are not
opened: the ASGI server listens, with its own TLS settings. What ``tokensmith serve`` adds
and a stock server cannot give:

- the client certificate of the TLS handshake (Hypercorn does not put it into the ASGI
  scope), so certificate-based client authentication works only with a TLS-terminating
  proxy that forwards the certificate (``<ClientCertificateHeader>`` in identity.xml);
- per-connector TLS settings and deadlines, SIGHUP reloads and ``--workers`` supervision.

Secret-based and proxy-header client authentication, the metadata, JWKS, the access log,
health and metrics work as under ``tokensmith serve``. Importing this module installs the
protocol refusals of ``http/protocols.py`` into Hypercorn (no ``Upgrade: h2c``, no HTTP/2
preface on an HTTP/1.1 connection), and a request that came without TLS (an
``insecure_bind`` socket) is answered as a ``SSLEnabled="false"`` connector answers one:
only a ``<TrustedProxies>`` proxy that says the client came over https gets more than
``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from quart import Quart

from tokensmith.app.factory import create_app
from tokensmith.config.settings import Network, load_config
from tokensmith.http.protocols import install as install_hypercorn_protocols
from tokensmith.http.proxies import plain_http_refused
from tokensmith.scope import BOUND_URLS

__all__ = ["app", "create", "CONF_ENV"]

#: The environment variable naming the configuration directory.
CONF_ENV = "TOKENSMITH_CONF"


def create(conf_dir: str | None = None) -> Quart:
    """The full app for the configuration in *conf_dir* (default: ``$TOKENSMITH_CONF`` or
    ``./conf``)."""
    install_hypercorn_protocols()
    config = load_config(conf_dir or os.environ.get(CONF_ENV) or "conf")
    quart = create_app(config)
    proxies = (config.server.trusted_proxies, config.server.proxy_headers)
    quart.asgi_app = _Listening(quart, quart.asgi_app, proxies)  # type: ignore[method-assign,assignment]
    return quart


class _Listening:
    """Learns the URL the server listens on from the first request's ``server`` (the local
    socket's address, never a header), for the metadata's issuer when identity.xml sets no
    ``<Issuer>``: ``tokensmith serve`` knows it from its own sockets."""

    def __init__(self, quart: Quart, inner: Callable[..., Any], proxies: tuple[tuple[Network, ...], str]):
        self.quart, self.inner = quart, inner
        self.trusted, self.mode = proxies

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and plain_http_refused(scope, self.trusted, self.mode):
            # RFC 6749 §3.2: the token endpoint requires TLS (RFC 7662 §4, RFC 7009 §5 alike).
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-store"),
                        (b"content-length", b"%d" % len(_TLS_REQUIRED)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _TLS_REQUIRED})
            return
        if scope["type"] == "http" and BOUND_URLS not in self.quart.extensions and scope.get("server"):
            host, port = scope["server"][:2]
            host = f"[{host}]" if ":" in host else host
            self.quart.extensions[BOUND_URLS] = [f"{scope.get('scheme', 'https')}://{host}:{port}"]
        await self.inner(scope, receive, send)


_TLS_REQUIRED = json.dumps(
    {"error": "invalid_request", "error_description": "TLS is required: send the request over HTTPS"}
).encode()

app = create()

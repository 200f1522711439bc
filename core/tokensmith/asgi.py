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
health and metrics work as under ``tokensmith serve``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from quart import Quart

from tokensmith.app.factory import create_app
from tokensmith.config.settings import load_config
from tokensmith.scope import BOUND_URLS

__all__ = ["app", "create", "CONF_ENV"]

#: The environment variable naming the configuration directory.
CONF_ENV = "TOKENSMITH_CONF"


def create(conf_dir: str | None = None) -> Quart:
    """The full app for the configuration in *conf_dir* (default: ``$TOKENSMITH_CONF`` or
    ``./conf``)."""
    config = load_config(conf_dir or os.environ.get(CONF_ENV) or "conf")
    quart = create_app(config)
    quart.asgi_app = _Listening(quart, quart.asgi_app)  # type: ignore[method-assign,assignment]
    return quart


class _Listening:
    """Learns the URL the server listens on from the first request's ``server`` (the local
    socket's address, never a header), for the metadata's issuer when identity.xml sets no
    ``<Issuer>``: ``tokensmith serve`` knows it from its own sockets."""

    def __init__(self, quart: Quart, inner: Callable[..., Any]):
        self.quart, self.inner = quart, inner

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and BOUND_URLS not in self.quart.extensions and scope.get("server"):
            host, port = scope["server"][:2]
            host = f"[{host}]" if ":" in host else host
            self.quart.extensions[BOUND_URLS] = [f"{scope.get('scheme', 'https')}://{host}:{port}"]
        await self.inner(scope, receive, send)


app = create()

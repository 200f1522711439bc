"""``GET /metrics``: the Prometheus exposition of ``tokensmith.metrics``.

Only the peers in server.xml's ``<Metrics allow=...>`` may read it (loopback by default);
everyone else gets 404, as if there were no such resource. The peer is the connection's own
address, or the client address a ``<TrustedProxies>`` proxy forwarded (so a proxy on
loopback does not open it to everyone behind it); never one an untrusted peer claims.
"""

from __future__ import annotations

import ipaddress

from quart import Blueprint, Response, current_app, request

from tokensmith.app.state import runtime
from tokensmith.metrics import exposition
from tokensmith.scope import CLIENT_ADDRESS

__all__ = ["metrics_blueprint"]

metrics_blueprint = Blueprint("metrics", __name__)


def _allowed() -> bool:
    settings = runtime(current_app).config.server.metrics
    # Through a trusted proxy, the client behind it decides: a loopback proxy must not make
    # every client it forwards a loopback one.
    peer = request.scope.get("client")
    forwarded = request.scope.get(CLIENT_ADDRESS)
    client = forwarded if isinstance(forwarded, str) else (peer[0] if peer else None)
    if not settings.enabled or not client:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in settings.allow)


@metrics_blueprint.get("/metrics")
async def metrics_page() -> Response:
    if not _allowed():
        return Response("404 Not Found\n", status=404, content_type="text/plain; charset=utf-8")
    body, content_type = exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

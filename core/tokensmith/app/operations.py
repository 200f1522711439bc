"""What an operator needs of a running server, put into an app: the access log with request
ids (``accesslog``), ``/healthz`` and ``/readyz`` (``health``) and ``/metrics`` (``metrics``)."""

from __future__ import annotations

from quart import Quart

from tokensmith.app.accesslog import AccessLog
from tokensmith.app.health import health
from tokensmith.app.metrics import metrics_blueprint
from tokensmith.config.settings import Config

__all__ = ["install"]


def install(app: Quart, config: Config) -> None:
    """Register the health and metrics endpoints and put the access log in front of *app*."""
    app.register_blueprint(health)
    app.register_blueprint(metrics_blueprint)
    access = AccessLog(
        app.asgi_app, config.server.access_log, config.server.trusted_proxies, config.server.proxy_headers
    )
    app.asgi_app = access  # type: ignore[method-assign,assignment]
    app.after_serving(_closer(access))


def _closer(access: AccessLog):  # noqa: ANN202
    async def close() -> None:
        access.close()

    return close

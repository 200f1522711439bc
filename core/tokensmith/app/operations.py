"""What an operator needs of a running server, put into an app: ``/healthz`` and ``/readyz``
(``health``) and ``/metrics`` (``metrics``). Request ids, the request metrics and the access
log are the app's front (``front.py``), which every request passes."""

from __future__ import annotations

from quart import Quart

from tokensmith.app.health import health
from tokensmith.app.metrics import metrics_blueprint

__all__ = ["install"]


def install(app: Quart) -> None:
    """Register the health and metrics endpoints."""
    app.register_blueprint(health)
    app.register_blueprint(metrics_blueprint)

"""The server's Prometheus metrics (prometheus_client), read at ``GET /metrics``.

The metrics are built on first use, not at import: with ``serve --workers N`` the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` before it forks, and prometheus_client chooses between its
in-process values and its multiprocess files (one per worker, summed when read) when the first
metric is built. ``exposition()`` reads whichever mode is in force.

Labels take values from small fixed sets (endpoint paths, status codes, grant types,
authentication methods, reason codes, plugin names), never from what a client sends, so the
number of series stays bounded.
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["metrics", "exposition", "MULTIPROC_ENV", "Metrics", "endpoint_label", "ENDPOINTS"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The paths that get a label of their own; every other path counts as "other".
ENDPOINTS = frozenset(
    {
        "/oauth2/token",
        "/oauth2/introspect",
        "/oauth2/revoke",
        "/oauth2/jwks",
        "/.well-known/oauth-authorization-server",
        "/healthz",
        "/readyz",
        "/metrics",
    }
)

#: Seconds: a token request served from memory takes well under a millisecond, a KDF check
#: tens of milliseconds, a stuck listener up to its timeout.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def endpoint_label(path: str) -> str:
    return path if path in ENDPOINTS else "other"


class Metrics:
    """Every metric the server keeps, built once per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "tokensmith_http_requests",
            "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"],
        )
        self.duration = Histogram(
            "tokensmith_http_request_duration_seconds",
            "Time from a request's head to the end of its response, by endpoint",
            ["endpoint"],
            buckets=_DURATION_BUCKETS,
        )
        self.tokens = Counter(
            "tokensmith_tokens_issued",
            "Access tokens issued, by grant type and client authentication method",
            ["grant_type", "auth_method"],
        )
        self.auth_failures = Counter(
            "tokensmith_client_auth_failures", "Client authentications refused, by reason", ["reason"]
        )
        self.refusals = Counter(
            "tokensmith_oauth_refusals",
            "Requests refused at the OAuth endpoints, by endpoint and RFC 6749 error",
            ["endpoint", "error"],
        )
        self.tls_handshakes = Counter("tokensmith_tls_handshakes", "TLS handshakes completed")
        self.tls_failures = Counter("tokensmith_tls_handshake_failures", "TLS handshakes that failed")
        self.connections = Gauge(
            "tokensmith_open_connections", "Connections open now", multiprocess_mode="livesum"
        )
        self.commit = Histogram(
            "tokensmith_storage_commit_seconds", "Storage commit latency", buckets=_COMMIT_BUCKETS
        )
        self.batch = Histogram(
            "tokensmith_storage_group_commit_batch_size",
            "Writes committed together by one group commit",
            buckets=_BATCH_BUCKETS,
        )
        self.reloads = Counter("tokensmith_reloads", "Configuration reloads, by outcome", ["outcome"])
        self.listener_errors = Counter(
            "tokensmith_listener_errors",
            "Listener (plugin) hook errors and timeouts, by plugin and kind",
            ["plugin", "kind"],
        )

    def answered_before_app(self, status: int, path: str = "") -> None:
        """Count an answer the server gave without the app (a refused head, a busy
        connection), as ``app/front.py`` counts the app's: /metrics shows every answer. It
        is labelled with the request's endpoint when the head was parsed far enough to know
        its path (``http/server.py``'s checks), else "other" (a request refused while its
        head was parsed: h11's and the llhttp lane's refusals)."""
        self.requests.labels(endpoint_label(path), str(status)).inc()


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, built on first use (after the supervisor chose the mode)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def exposition() -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, and its content type.

    With several workers, every worker's files are summed (a live gauge counts only the
    workers alive), so any worker answers for the whole server.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    metrics()  # a scrape before any request still lists every metric
    registry: Any = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode): called by the supervisor."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

"""Where the Quart app keeps its current ``Runtime`` and the URLs it serves at."""

from __future__ import annotations

import urllib.parse

from quart import Quart

from tokensmith.config.settings import PublicUrls, public_urls
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import BOUND_URLS

__all__ = ["RUNTIME", "LOADER", "RELOAD_ALL", "runtime", "bound_ports", "public_urls_of", "issuer_url"]

RUNTIME = "tokensmith"
LOADER = "tokensmith.loader"
#: A callable that reloads every process serving this configuration, as SIGHUP does; set by
#: whatever serves the app (``tokensmith serve``, a supervisor's worker). Absent: this app only.
RELOAD_ALL = "tokensmith.reload_all"


def runtime(app: Quart) -> Runtime:
    """The app's current Runtime; a view reads it once and keeps it for the whole request."""
    return app.extensions[RUNTIME]


def bound_ports(urls: list[str] | None) -> list[int] | None:
    """The ports in *urls*, the https URLs of the listening sockets, or None."""
    return [urllib.parse.urlsplit(url).port or 443 for url in urls] if urls else None


def public_urls_of(app: Quart) -> PublicUrls:
    """The app's public URLs (RFC 8414 §2) under its current identity.xml."""
    rt = runtime(app)
    return public_urls(rt.config.server, rt.identity, bound_ports(app.extensions.get(BOUND_URLS)))


def issuer_url(app: Quart) -> str:
    """The issuer (RFC 8414 §2): identity.xml's <Issuer>, else the first connector's URL."""
    return public_urls_of(app).issuer

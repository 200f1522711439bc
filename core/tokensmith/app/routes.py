"""The routes of the Quart app: the OAuth endpoints, and the routes plugins add.

Every endpoint is on the app's URL map, so ``app.url_map`` lists what the server answers.
The three POST endpoints are also served ahead of Quart by the fast lane (``front.py``),
which calls the same functions; these routes answer them when the app runs without it (a test
client).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from quart import Blueprint, Quart, Response, abort, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from tokensmith.app.front import answer, to_response
from tokensmith.app.state import public_urls_of, runtime
from tokensmith.config.xml import ConfigError
from tokensmith.errors import RequestRefused
from tokensmith.listeners.registry import Listener, ListenerSet
from tokensmith.oauth import endpoints

__all__ = ["oauth", "add_plugin_routes", "check_plugin_routes"]

log = logging.getLogger("tokensmith")

oauth = Blueprint("oauth", __name__)


def _post(endpoint: Callable[..., Awaitable[Any]]) -> Callable[[], Awaitable[Response]]:
    async def view() -> Response:
        # As the fast lane answers: the same body limit and deadline, RFC 6749 JSON errors.
        return to_response(await answer(endpoint, runtime(current_app), request.scope, _chunks()))

    view.__name__ = endpoint.__name__
    view.__doc__ = endpoint.__doc__
    return view


async def _chunks() -> AsyncIterator[bytes]:
    try:
        async for chunk in request.body:
            yield chunk
    except RequestEntityTooLarge:  # Quart's own MAX_CONTENT_LENGTH, if it is the lower one
        raise RequestRefused(413, "the request body is too large") from None


#: Every method goes to the view, which answers anything but POST with the fast lane's JSON
#: 405 (RFC 6749 §3.2), not Quart's plain-text one, and OPTIONS is not answered 200 for it.
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
for _path, _endpoint in endpoints.POST_ENDPOINTS.items():
    oauth.add_url_rule(
        _path, view_func=_post(_endpoint), methods=_ANY_METHOD, provide_automatic_options=False
    )


@oauth.get(endpoints.METADATA_PATH)
async def metadata() -> Response:
    return to_response(await endpoints.metadata(runtime(current_app), public_urls_of(current_app)))


@oauth.get(endpoints.JWKS_PATH)
async def jwks() -> Response:
    return to_response(await endpoints.jwks(runtime(current_app)))


#: Paths the core serves or keeps for itself; no plugin rule may be at or under one.
RESERVED_PREFIXES = ("/oauth2", "/.well-known", "/api", "/console", "/healthz", "/readyz", "/metrics")


def _reserved(rule: str) -> str | None:
    """Why *rule* may not be a plugin's, or None."""
    if rule.startswith("//"):
        return "it starts with '//'"
    first = rule[1:].split("/", 1)[0]
    if "<" in first:
        return "its first segment is a variable, which would match the core's paths"
    for prefix in RESERVED_PREFIXES:
        if rule == prefix or rule.startswith(prefix + "/") or rule.startswith(prefix + "<"):
            return f"{prefix} is the core's"
    return None


def _routes_of(listeners: ListenerSet, listener: Listener) -> list[tuple[str, Any, list[str]]]:
    """The routes *listener*'s plugin asks for, checked; a ConfigError naming it otherwise."""
    value = listeners.call_sync(listener, "register_routes", listener=listener)
    where = f"plugin {listener.name!r} ({listener.source.wheel.name}): register_routes"
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must return a list of (rule, view[, methods]) tuples")
    routes = []
    for route in value:
        if not isinstance(route, tuple) or len(route) not in (2, 3):
            raise ConfigError(f"{where} must return a list of (rule, view[, methods]) tuples")
        rule, view = route[0], route[1]
        methods = list(route[2]) if len(route) == 3 else ["GET"]
        if not isinstance(rule, str) or not rule.startswith("/"):
            raise ConfigError(f"{where}: a rule must be a path starting with '/', not {rule!r}")
        why = _reserved(rule)
        if why is not None:
            raise ConfigError(f"{where}: the rule {rule} is refused: {why}")
        if not callable(view):
            raise ConfigError(f"{where}: the view for {rule} is not callable")
        routes.append((rule, view, methods))
    return routes


def _plugins(listeners: ListenerSet) -> list[tuple[Listener, list[str]]]:
    """One enabled listener for each plugin with routes, and the listener types it serves
    enabled: a plugin that implements hooks of two listener types adds its routes once."""
    plugins: dict[tuple[str, str], tuple[Listener, list[str]]] = {}
    for listener in listeners:
        if not listener.enabled or not listeners.implements(listener, "register_routes"):
            continue
        key = (listener.source.wheel.name, listener.name)
        if key in plugins:
            plugins[key][1].append(listener.type)
        else:
            plugins[key] = (listener, [listener.type])
    return list(plugins.values())


def check_plugin_routes(listeners: ListenerSet, taken: set[str]) -> None:
    """Refuse, with a ConfigError naming the plugin, routes under the core's paths, or that
    clash with *taken* rules or with each other."""
    seen = set(taken)
    for listener, _ in _plugins(listeners):
        for rule, _, _ in _routes_of(listeners, listener):
            if rule in seen or rule.rstrip("/") in seen or rule + "/" in seen:
                raise ConfigError(
                    f"plugin {listener.name!r} ({listener.source.wheel.name}): register_routes: the"
                    f" rule {rule} is already served"
                )
            seen.add(rule)


def add_plugin_routes(app: Quart, listeners: ListenerSet) -> None:
    """Put the routes of the enabled listeners' plugins on *app*'s URL map, once per plugin.

    Each view answers only while one of its plugin's listeners is enabled in the app's current
    Runtime, so a reload that disables them takes its routes away (404) without touching the map.
    """
    check_plugin_routes(listeners, {rule.rule for rule in app.url_map.iter_rules()})
    for listener, families in _plugins(listeners):
        for index, (rule, view, methods) in enumerate(_routes_of(listeners, listener)):
            app.add_url_rule(
                rule,
                endpoint=f"plugin.{listener.type}.{listener.name}.{index}",
                view_func=_while_enabled(tuple(families), listener.name, view),
                methods=methods,
            )


def _while_enabled(families: tuple[str, ...], name: str, view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    async def guarded(**kwargs: Any) -> Any:
        listeners = runtime(current_app).listeners
        if not any(item.name == name for family in families for item in listeners.enabled(family)):
            abort(404)
        return await current_app.ensure_async(view)(**kwargs)

    return guarded

"""The Quart application: ``create_app(config)`` builds one, with its own plugin manager.

Everything a request needs is in one immutable ``Runtime`` that a view takes once, at its
start. A reload (SIGHUP) builds a new Runtime from identity.xml and dropins/ and swaps it in:
new requests see the new listeners, requests in flight finish with the ones they started
with, and an invalid configuration leaves the running one in place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from quart import Quart, Response, abort, request
from werkzeug.exceptions import HTTPException

from tokensmith.app.accesslog import refused as log_refusal
from tokensmith.app.admin import admin, load_admin_settings
from tokensmith.app.console import console
from tokensmith.app.front import Front, error_answer, plain_error, to_response
from tokensmith.app.registration import registration
from tokensmith.app.routes import add_plugin_routes, oauth
from tokensmith.app.signin import signin
from tokensmith.app.state import LOADER, RELOAD_ALL, RUNTIME, bound_ports, issuer_url, public_urls_of, runtime
from tokensmith.config.settings import Config, IdentitySettings, load_identity
from tokensmith.config.xml import ConfigError
from tokensmith.listeners.dropins import DropinLoader
from tokensmith.listeners.registry import ListenerSet, build_listeners
from tokensmith.metrics import metrics
from tokensmith.models import Storage, StorageError
from tokensmith.oauth.clientauth import VerifiedSecrets, collect_server_metadata
from tokensmith.oauth.endpoints import POST_ENDPOINTS
from tokensmith.oauth.grants import JWTSettings, TokenIssuer
from tokensmith.oauth.hookspecs import LISTENER_TYPES
from tokensmith.oauth.runtime import Runtime
from tokensmith.security.signing import SigningKeys
from tokensmith.security.truststore import Truststore
from tokensmith.storage import open_store

__all__ = [
    "create_app",
    "reload_app",
    "one_line",
    "inspect_listeners",
    "issuer_url",
    "public_urls_of",
    "bound_ports",
    "Runtime",
    "runtime",
]

log = logging.getLogger("tokensmith")


def _build_runtime(
    app: Quart,
    config: Config,
    identity: IdentitySettings,
    loader: DropinLoader,
    storage: Storage,
    truststore: Truststore,
    signing: SigningKeys,
    verified: VerifiedSecrets,
    generation: int,
) -> Runtime:
    listeners = build_listeners(loader.load(identity.allowed_wheels), identity, LISTENER_TYPES, storage)
    jwt = JWTSettings(signing, lambda: issuer_url(app), identity.access_token_format == "jwt")
    issuer = TokenIssuer(
        storage,
        listeners,
        identity.access_token_lifetime,
        identity.refresh_token_lifetime,
        jwt,
        identity.refresh_token_max_lifetime,
    )
    return Runtime(
        config,
        identity,
        storage,
        listeners,
        issuer,
        truststore,
        signing,
        verified,
        generation,
        lambda: public_urls_of(app),
        collect_server_metadata(listeners),
        admin=load_admin_settings(config.conf_dir),
    )


async def _exact_path() -> None:
    """A path only Werkzeug's routing would match is a 404, as the fast lane would not serve
    it: Werkzeug drops leading slashes (``//oauth2/token``, or an HTTP/2 ``:path`` without
    one) and, with ``strict_slashes`` off, a trailing slash the rule does not have. Without
    this, such variants reached the endpoints past every check keyed on the exact path."""
    path = request.scope.get("path", "")
    rule = request.url_rule
    if (
        not path.startswith("/")
        or path.startswith("//")
        or (rule is not None and path.endswith("/") != rule.rule.endswith("/"))
    ):
        abort(404)


def create_app(config: Config, unpack_root: Path | None = None) -> Quart:
    """Build the app for *config*: storage, plugins from dropins/ and the listener order.

    Wheels are unpacked under *unpack_root* (a new private temporary directory when None).
    """
    # conf/templates/ first: the operator's pages take precedence over the bundled ones
    # (app/templates/, the signin blueprint's folder).
    app = Quart("tokensmith", template_folder=str(config.conf_dir / "templates"))
    # Routing never redirects: Werkzeug's redirects for merged or trailing slashes are built
    # from the request's Host, which the client chooses (and a cacheable 308 to another host
    # is an open redirect). A path that does not match exactly is a 404.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.before_request(_exact_path)
    loader = DropinLoader(config.server.dropins, unpack_root)
    try:
        storage = open_store(config.server)
        first = _build_runtime(
            app,
            config,
            config.identity,
            loader,
            storage,
            Truststore(config.server.truststore),
            SigningKeys(config.conf_dir / "security" / "signing"),
            VerifiedSecrets(),
            1,
        )
    except BaseException:
        loader.close()
        raise

    app.config["MAX_CONTENT_LENGTH"] = config.identity.max_body_bytes
    app.extensions[RUNTIME] = first
    app.extensions[LOADER] = loader
    # This app alone, in a thread as SIGHUP's reload runs; whatever serves the app replaces
    # it with what reloads every process (cli/__init__.py, cli/supervisor.py).
    app.extensions[RELOAD_ALL] = lambda: threading.Thread(
        target=reload_app, args=(app,), name="tokensmith-reload", daemon=True
    ).start()
    app.register_blueprint(oauth)
    app.register_blueprint(registration)
    app.register_blueprint(admin)
    if config.server.console.enabled:
        app.register_blueprint(console)
    app.register_blueprint(signin)
    try:
        add_plugin_routes(app, first.listeners)
    except BaseException:
        loader.close()
        raise
    # The Runtime as ``runtime(app)`` reads it, without a Python call per request.
    current = cast(Callable[[], Runtime], functools.partial(operator.getitem, app.extensions, RUNTIME))
    front = Front(
        app.asgi_app,
        config.server.access_log,
        config.server.trusted_proxies,
        config.server.proxy_headers,
        routes=POST_ENDPOINTS,
        runtime=current,
    )
    app.asgi_app = front  # type: ignore[method-assign,assignment]
    from tokensmith.app.operations import install

    install(app)  # /healthz, /readyz, /metrics

    purging: list[asyncio.Task] = []

    @app.before_serving
    async def start_maintenance() -> None:
        runtime(app).storage.serving()
        purging.append(asyncio.get_running_loop().create_task(_maintain(app)))

    @app.after_serving
    async def close() -> None:
        for task in purging:
            task.cancel()
        runtime(app).storage.close()
        loader.close()
        front.close()

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        # Only the OAuth endpoints answer with RFC 6749 §5.2 error JSON; anything else is
        # plain HTTP: a 404 is a 404.
        return plain_error(error.code or 500, error.name, getattr(error, "valid_methods", None))

    @app.errorhandler(Exception)
    async def oauth_error(error: Exception) -> Response:
        # OAuth errors, an unreachable store and anything unexpected, rendered the one way.
        answer = error_answer(error, path=request.path, http2=request.http_version == "2")
        log_refusal(request.scope, answer.status, error)
        return to_response(answer)

    return app


CHECKPOINT_INTERVAL = 1.0
PURGE_INTERVAL = 60.0
#: Expired tokens deleted per transaction: each batch holds the write lock briefly, and
#: token requests take it between batches.
PURGE_BATCH = 500
#: Pause between batches, so that waiting token writes get the lock first.
_PURGE_PAUSE = 0.005


async def _maintain(app: Quart) -> None:
    """Checkpoint the store every second, and delete expired tokens at start and then every
    minute, so that the store does not grow without bound; both in a worker thread, off the
    event loop, so that requests go on being served meanwhile."""
    loop = asyncio.get_running_loop()
    next_purge = loop.time()
    while True:
        await asyncio.sleep(CHECKPOINT_INTERVAL)
        storage = runtime(app).storage
        try:
            await asyncio.to_thread(storage.checkpoint)
        except StorageError as exc:
            log.warning("checkpoint failed: %s", exc)
        if loop.time() < next_purge:
            continue
        next_purge = loop.time() + PURGE_INTERVAL
        try:
            removed = await _purge(storage)
        except StorageError as exc:
            log.warning("purging expired tokens failed: %s", exc)
            continue
        if removed:
            log.info("purged %d expired tokens", removed)


async def _purge(storage: Storage) -> int:
    """Delete the tokens expired now, PURGE_BATCH at a time; what a busy store leaves
    undone, the next purge does."""
    before, removed, busy = int(time.time()), 0, 0
    while busy < 100:
        count = await asyncio.to_thread(storage.purge_expired, before, PURGE_BATCH)
        if count is None:
            busy += 1
        else:
            removed += count
            if count < PURGE_BATCH:
                break
        await asyncio.sleep(_PURGE_PAUSE)
    return removed


def inspect_listeners(
    config: Config, identity: IdentitySettings | None = None, unpack_root: Path | None = None
) -> ListenerSet:
    """Load dropins/ and order the listeners as a server would, without serving.

    Used to check a configuration (``plugins list``, and the supervisor's check process
    before the workers start or reload). The plugins are imported into this process.
    """
    identity = identity or config.identity
    loader = DropinLoader(config.server.dropins, unpack_root)
    try:
        return build_listeners(loader.load(identity.allowed_wheels), identity, LISTENER_TYPES)
    finally:
        loader.close()


def one_line(exc: BaseException) -> str:
    """*exc* as one log line: a ``ConfigError``'s message as it is, anything else with its type."""
    text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.splitlines())
    # A bad value quoted whole (a 900 KB attribute) would make every refused reload a 900 KB
    # log line.
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE] + " [...]"


_MAX_LINE = 2000


def reload_app(app: Quart) -> bool:
    """Re-read identity.xml and dropins/ and swap the result in; keep the old one on error.

    Safe to call from a thread: the only shared write is one dict assignment.
    """
    current = runtime(app)
    try:
        identity = load_identity(current.identity.path)
        new = _build_runtime(
            app,
            current.config,
            identity,
            app.extensions[LOADER],
            current.storage,
            current.truststore,
            current.signing,
            current.verified_secrets,
            current.generation + 1,
        )
    except BaseException as exc:  # noqa: B036 - nothing read from disk may stop a running server
        log.error("reload refused, still serving configuration %d: %s", current.generation, one_line(exc))
        metrics().reloads.labels("refused").inc()
        return False
    _warn_about_new_routes(app, new.listeners)
    app.config["MAX_CONTENT_LENGTH"] = identity.max_body_bytes
    app.extensions[RUNTIME] = new
    metrics().reloads.labels("ok").inc()
    log.info(
        "reloaded: configuration %d with %d listeners",
        new.generation,
        sum(1 for item in new.listeners if item.enabled),
    )
    return True


def _warn_about_new_routes(app: Quart, listeners: ListenerSet) -> None:
    """Routes are put on the URL map when the server starts; say so when a reload brings a
    plugin whose routes are not there yet."""
    served = {
        rule.endpoint.split(".")[2]
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("plugin.")
    }
    for listener in listeners:
        if (
            listener.enabled
            and listeners.implements(listener, "register_routes")
            and listener.name not in served
        ):
            log.warning(
                "listener %s/%s adds routes: restart the server to serve them", listener.type, listener.name
            )

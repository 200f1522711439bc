"""Serving the app with Hypercorn, one TLS context per connector.

Hypercorn's own ``serve`` gives every socket the same ``SSLContext`` and does not put the
client certificate into the ASGI scope (its issues #62 and #324). This module starts one
``asyncio`` server per ``<Connector>`` with that connector's context and hands each
connection to Hypercorn's ``TCPServer`` (the per-connection protocol driver, tested with
Hypercorn 0.18), wrapping the app so that every HTTP scope of the connection carries the
ASGI TLS extension: ``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, leaf first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from .asgi import DER_KEY
from .config import Config
from .tls_accept import peer_certificate_chain
from .tlsconf import server_context
from .xmlconf import ConfigError

__all__ = ["serve", "bind", "urls", "tls_extension"]

log = logging.getLogger("tokensmith.server")

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """The ASGI TLS extension dict for one connection, read once after the handshake."""
    if ssl_object is None:
        return None
    chain = tuple(peer_certificate_chain(ssl_object))
    return {
        DER_KEY: chain,
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class _WithTLS:
    """The app as one connection sees it: every scope gets that connection's TLS details."""

    __slots__ = ("app", "tls")

    def __init__(self, app: Any, tls: dict[str, Any] | None):
        self.app = app
        self.tls = tls

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.tls is not None and scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = self.tls
        await self.app(scope, receive, send)


def _hypercorn_config() -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 5
    hc.ssl_handshake_timeout = 5
    hc.graceful_timeout = 5
    return hc


def bind(config: Config) -> list[socket.socket]:
    """One listening socket per connector, in order (bound before any worker starts)."""
    sockets = []
    try:
        for connector in config.server.connectors:
            family = socket.AF_INET6 if ":" in connector.address else socket.AF_INET
            sockets.append(socket.create_server((connector.address, connector.port), family=family,
                                                backlog=1024, reuse_port=False))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"{config.server.path}: cannot listen on {connector.address}:"
                          f"{connector.port}: {exc.strerror or exc}") from None
    return sockets


def urls(sockets: list[socket.socket]) -> list[str]:
    """The https URLs of *sockets* (with the real port where the connector said 0)."""
    result = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        result.append(f"https://{f'[{host}]' if ':' in host else host}:{port}")
    return result


async def serve(
    app: Any,
    config: Config,
    *,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[list[str]], None] | None = None,
    reload: Callable[[], object] | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Serve *app* on every connector of *config* until SIGINT/SIGTERM or *shutdown_trigger*.

    *sockets* are the connectors' listening sockets (``bind`` makes them when None). *ready*
    is called with the URLs once every socket accepts. On SIGHUP, *reload* runs in a thread,
    one at a time, while requests go on being served.
    """
    loop = asyncio.get_running_loop()
    hc = _hypercorn_config()
    stop = asyncio.Event()
    if shutdown_trigger is None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    if reload is not None:
        reload_lock = asyncio.Lock()
        reloads: set[asyncio.Task] = set()

        async def run_reload() -> None:
            async with reload_lock:
                await asyncio.to_thread(reload)

        def on_hangup() -> None:
            task = loop.create_task(run_reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if sockets is None:
        sockets = bind(config)

    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(ASGIWrapper(app), hc, loop, lifespan_state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise lifespan_task.exception()  # type: ignore[misc]

    context = WorkerContext(None)
    connections: set[asyncio.Task] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        tls = tls_extension(writer.get_extra_info("ssl_object"))
        await TCPServer(ASGIWrapper(_WithTLS(app, tls)), loop, hc, context, lifespan_state, reader, writer)

    servers: list[asyncio.Server] = []
    try:
        for connector, sock in zip(config.server.connectors, sockets):
            servers.append(await asyncio.start_server(
                on_connection,
                sock=sock,
                ssl=server_context(config.server, connector),
                ssl_handshake_timeout=hc.ssl_handshake_timeout,
            ))
        extensions = getattr(app, "extensions", None)
        if isinstance(extensions, dict):
            extensions["tokensmith.urls"] = urls(sockets)  # for the metadata's issuer
        if ready is not None:
            ready(urls(sockets))
        await (shutdown_trigger() if shutdown_trigger is not None else stop.wait())
    finally:
        await context.terminated.set()
        for server in servers:
            server.close()
        if connections:
            await asyncio.wait(connections, timeout=hc.graceful_timeout)
        for task in connections:
            task.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        try:
            await lifespan_task
        except asyncio.CancelledError:
            pass

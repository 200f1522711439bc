"""The limit of the stack tokensmith started on: a bare ASGI app (no framework) on Hypercorn over TLS.

POST /oauth2/token       reads the body and returns one fixed token response
POST /oauth2/introspect  reads the body and returns one fixed "active" introspection response
anything else            404

Both responses carry Cache-Control: no-store and Pragma: no-cache, as tokensmith's do. Nothing is
parsed, authenticated, stored or logged. Run it with run.sh (see ../README.md), or directly:

    python app.py            # reads PORT, TLS_CERT, TLS_KEY, CLIENT_CA, TLS_MODE from the env

TLS_MODE=verify (default): Hypercorn's own SSL context with verify_mode CERT_OPTIONAL and
CLIENT_CA as ca_certs. A client certificate is requested on every handshake and must chain to
CLIENT_CA (for self-signed client certificates: be one of them), so list there the certificates
the load generator presents (gen_clients.py writes them to client-certs.pem).

TLS_MODE=accept-any: the TLS policy tokensmith itself uses (tokensmith.http.tls: TLS 1.2+, its
TLS 1.2 suites, ALPN h2/http1.1, no renegotiation) with tokensmith.http.tls_accept's accept-any
verify callback (clientAuth "want"): any certificate the client proves is accepted, with no
chain building. Needs the tokensmith package importable (it is, in /work/main/.venv).

stdout gets one line "ready https://127.0.0.1:PORT" when the socket listens (PORT=0 picks a free
port, and the line names it). SIGTERM or SIGINT shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.logging import Logger

TOKEN_RESPONSE = (b'{"access_token":"bare-hypercorn-fixed-token-2fN3oB7qKx9dR4sLw0Yz",'
                  b'"token_type":"Bearer","expires_in":3600}')
INTROSPECTION_RESPONSE = (b'{"active":true,"client_id":"mtls-000000","token_type":"Bearer",'
                          b'"iat":1795800000,"exp":1795803600,'
                          b'"cnf":{"x5t#S256":"bare-hypercorn-fixed-thumbprint-000000000000"}}')

_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]
_ROUTES = {
    b"/oauth2/token": [*_JSON_HEADERS, (b"content-length", str(len(TOKEN_RESPONSE)).encode())],
    b"/oauth2/introspect": [*_JSON_HEADERS,
                            (b"content-length", str(len(INTROSPECTION_RESPONSE)).encode())],
}
_BODIES = {b"/oauth2/token": TOKEN_RESPONSE, b"/oauth2/introspect": INTROSPECTION_RESPONSE}
_NOT_FOUND = {"type": "http.response.start", "status": 404,
              "headers": [(b"content-length", b"0")]}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        # Read the whole body, as a real endpoint must before it answers.
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        path = scope["raw_path"].split(b"?", 1)[0]
        if scope["method"] == "POST" and path in _ROUTES:
            await send({"type": "http.response.start", "status": 200, "headers": _ROUTES[path]})
            await send({"type": "http.response.body", "body": _BODIES[path]})
        else:
            await send(_NOT_FOUND)
            await send({"type": "http.response.body", "body": b""})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class ReadyLogger(Logger):
    """Hypercorn's logger, plus one "ready URL" line on stdout once a socket listens."""

    async def info(self, message: str, *args, **kwargs) -> None:
        if message.startswith("Running on https://"):
            url = message.split()[2]
            print(f"ready {url}", flush=True)
        await super().info(message, *args, **kwargs)


class AcceptAnyConfig(Config):
    def create_ssl_context(self) -> ssl.SSLContext:
        from tokensmith.http.tls_accept import accept_any_client_certificate
        from tokensmith.http.tls import TLS12_CIPHERS

        # The same policy as tokensmith.http.tls.server_context, keystore from this config.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        context.set_alpn_protocols(["h2", "http/1.1"])
        context.load_cert_chain(self.certfile, self.keyfile)
        accept_any_client_certificate(context, required=False)
        return context


def config_from_env() -> Config:
    mode = os.environ.get("TLS_MODE", "verify")
    cert, key = os.environ.get("TLS_CERT"), os.environ.get("TLS_KEY")
    if not cert or not key:
        sys.exit("app.py: set TLS_CERT and TLS_KEY")
    if mode == "verify":
        config = Config()
        ca = os.environ.get("CLIENT_CA")
        if not ca:
            sys.exit("app.py: TLS_MODE=verify needs CLIENT_CA (the client certificates to accept)")
        config.ca_certs = ca
        config.verify_mode = ssl.CERT_OPTIONAL
    elif mode == "accept-any":
        config = AcceptAnyConfig()
    else:
        sys.exit(f"app.py: TLS_MODE must be verify or accept-any, not {mode!r}")
    config.certfile, config.keyfile = cert, key
    config.bind = [f"127.0.0.1:{int(os.environ.get('PORT', '8445'))}"]
    config.workers = 1
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"  # only problems; "Running on" still reaches ReadyLogger
    config.keep_alive_timeout = 5
    config.ssl_handshake_timeout = 5
    config.graceful_timeout = 5
    config.logger_class = ReadyLogger
    return config


if __name__ == "__main__":
    asyncio.run(serve(app, config_from_env()))

"""The Quart application: ``create_app(config)`` builds one, with its own plugin manager."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from .clientauth import ClientAuthRequest, authenticate_client, challenge
from .config import Config
from .dropins import load_dropins
from .errors import InvalidClientError, InvalidRequestError, OAuth2Error, ServerError, TemporarilyUnavailableError
from .forms import check_content_type, parse_form
from .grants import check_grant_type, grant
from .listeners import ListenerSet, build_listeners
from .sqlite_store import SQLiteStorage
from .storage import Storage, StorageError
from .tokens import TokenIssuer

__all__ = ["create_app", "Runtime", "runtime"]

log = logging.getLogger("tokensmith")

#: RFC 6749 §5.1: token responses "MUST include ... Cache-Control: no-store ... Pragma: no-cache".
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class Runtime:
    """Everything one app instance serves with; lives in ``app.extensions["tokensmith"]``."""

    config: Config
    storage: Storage
    listeners: ListenerSet
    issuer: TokenIssuer


def runtime(app: Quart) -> Runtime:
    return app.extensions["tokensmith"]


def json_response(body: dict[str, object], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def create_app(config: Config, *, unpack_dir: Path | None = None) -> Quart:
    """Build the app for *config*: storage, plugins from dropins/ and the listener order."""
    sources = load_dropins(config.server.dropins, unpack_dir)
    listeners = build_listeners(sources, config.identity)
    storage = SQLiteStorage(config.server.database)
    identity = config.identity

    app = Quart("tokensmith")
    app.config["MAX_CONTENT_LENGTH"] = identity.max_body_bytes
    app.extensions["tokensmith"] = Runtime(
        config, storage, listeners, TokenIssuer(storage, identity.access_token_lifetime)
    )

    @app.after_serving
    async def close_storage() -> None:
        storage.close()

    @app.errorhandler(OAuth2Error)
    async def oauth_error(error: OAuth2Error) -> Response:
        return json_response(error.body(), error.status_code, error.headers)

    @app.errorhandler(StorageError)
    async def storage_error(error: StorageError) -> Response:
        log.error("storage unavailable: %s", error)
        return await oauth_error(TemporarilyUnavailableError("storage is unavailable"))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 400
        headers = {}
        if status == 405:
            headers["Allow"] = ", ".join(
                sorted(set(getattr(error, "valid_methods", None) or ["POST"]))
            )
        code = "invalid_request" if status < 500 else "server_error"
        return json_response({"error": code, "error_description": error.name}, status, headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error")
        return await oauth_error(ServerError("an internal error occurred"))

    @app.post("/oauth2/token")
    async def token() -> Response:
        """The token endpoint (RFC 6749 §3.2)."""
        authorization = request.headers.get("Authorization")
        try:
            if request.query_string:
                # §2.3.1: client credentials "MUST NOT be included in the request URI".
                raise InvalidRequestError("parameters must be sent in the request body")
            check_content_type(request.headers.get("Content-Type"))
            form = parse_form(await request.get_data(cache=False))
            check_grant_type(form)
            auth = await authenticate_client(
                listeners,
                ClientAuthRequest(
                    storage,
                    form,
                    authorization,
                    client_cert_chain(request.scope),
                    request.remote_addr,
                    request.headers,
                ),
            )
            issued = grant(runtime(app).issuer, auth, form)
        except InvalidClientError as error:
            error.headers.update(challenge(authorization, identity.realm))
            raise
        return json_response(issued.response())

    return app


def client_cert_chain(scope: dict) -> tuple[bytes, ...]:
    """DER of the TLS client certificates in *scope* (the ASGI TLS extension), leaf first."""
    tls = scope.get("extensions", {}).get("tls") or {}
    return tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in tls.get("client_cert_chain") or ())

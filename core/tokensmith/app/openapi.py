"""The OpenAPI 3.1 document of the admin API (``/api/openapi.json``), with dynamic client
registration beside it: ``POST /oauth2/register`` (RFC 7591) and the client configuration
endpoint ``/oauth2/register/{client_id}`` (RFC 7592), which authenticate by bearer tokens,
not as ``/api/`` does."""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
_OBJ: dict[str, Any] = {"type": "object"}
_CERT = {
    "type": "object",
    "required": ["sha256", "subject", "not_before", "not_after"],
    "properties": {
        "sha256": {"type": "string"},
        "subject": {"type": "string"},
        "not_before": {"type": "integer"},
        "not_after": {"type": "integer"},
    },
}
_CLIENT = {
    "type": "object",
    "required": ["client_id", "name", "token_endpoint_auth_method", "grant_types", "client_metadata"],
    "properties": {
        "client_id": {"type": "string"},
        "name": {"type": "string"},
        "token_endpoint_auth_method": {"type": "string"},
        "grant_types": {"type": "array", "items": {"type": "string"}},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "bind_tokens": {"type": "boolean"},
        "created_at": {"type": "integer"},
        "certificates": {"type": "array", "items": {"$ref": "#/components/schemas/Certificate"}},
        "client_metadata": {"$ref": "#/components/schemas/ClientMetadata"},
        "client_secret": {"type": "string", "description": "Only in the answer that created it."},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}
_METADATA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 7591 §2 client metadata (and RFC 8705 §2.1.2 tls_client_auth_* members);"
    " a plugin's own members are namespaced, <plugin>.<name>.",
    "properties": {
        "client_name": {"type": "string"},
        "token_endpoint_auth_method": {"type": "string"},
        "grant_types": {"type": "array", "items": {"type": "string"}},
        "scope": {"type": "string"},
        "jwks": {"type": "object"},
        "jwks_uri": {"type": "string"},
        "tls_client_auth_subject_dn": {"type": "string"},
        "tls_client_auth_san_dns": {"type": "string"},
        "tls_client_auth_san_uri": {"type": "string"},
        "tls_client_auth_san_ip": {"type": "string"},
        "tls_client_auth_san_email": {"type": "string"},
        "contacts": {"type": "array", "items": {"type": "string"}},
        "options": {
            "type": "object",
            "description": "Not RFC 7591: what an administrator sets beyond it (creation only).",
            "properties": {
                "bind_tokens": {"type": "boolean"},
                "resource_server": {"type": "boolean"},
                "token_format": {"enum": ["opaque", "jwt"]},
                "access_token_lifetime": {"type": "integer"},
                "refresh_token_lifetime": {"type": "integer"},
                "refresh_token_max_lifetime": {"type": "integer"},
                "force": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
    },
}
_USER = {
    "type": "object",
    "required": ["username", "user_id", "role"],
    "properties": {
        "username": {"type": "string"},
        "user_id": {"type": "string"},
        "role": {"enum": ["admin", "reader", None]},
        "created_at": {"type": "integer"},
        "failed_attempts": {"type": "integer"},
        "locked_until": {"type": "integer"},
    },
}
_ANCHOR = {
    "type": "object",
    "required": ["alias", "subject", "sha256", "not_after"],
    "properties": {
        "alias": {"type": "string"},
        "subject": {"type": "string"},
        "sha256": {"type": "string"},
        "not_after": {"type": "integer"},
    },
}
_KEY = {
    "type": "object",
    "required": ["kid", "alg", "active", "jwk"],
    "properties": {
        "kid": {"type": "string"},
        "alg": {"type": "string"},
        "created": {"type": ["integer", "null"]},
        "active": {"type": "boolean"},
        "jwk": {"type": "object"},
    },
}
_LISTENER = {
    "type": "object",
    "required": ["type", "name", "orderId", "enabled"],
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "orderId": {"type": "integer"},
        "enabled": {"type": "boolean"},
        "wheel": {"type": "string"},
        "version": {"type": "string"},
        "sha256": {"type": "string"},
    },
}
_AUDIT = {
    "type": "object",
    "required": ["id", "at", "actor", "via", "action"],
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "integer"},
        "actor": {"type": "string"},
        "via": {"type": "string"},
        "source": {"type": ["string", "null"]},
        "action": {"type": "string"},
        "target": {"type": ["string", "null"]},
        "details": {"type": "object"},
    },
}


#: RFC 7591 §2: what a client sends to register itself; members the server does not
#: understand are ignored (a plugin's own, <plugin>.<name>, are understood by that plugin).
_REGISTRATION_REQUEST = {
    "type": "object",
    "description": "RFC 7591 §2 client metadata. Defaults (RFC 7591 §3.2.1, shown in the answer):"
    " token_endpoint_auth_method client_secret_basic, grant_types [client_credentials];"
    " response_types must be [code] with authorization_code and empty without it.",
    "properties": {
        **{name: schema for name, schema in _METADATA["properties"].items() if name != "options"},
        "redirect_uris": {"type": "array", "items": {"type": "string"}},
        "response_types": {"type": "array", "items": {"type": "string"}},
    },
}
#: RFC 7591 §3.2.1 / RFC 7592 §3: the registered metadata with what the server assigned.
_REGISTERED = {
    "allOf": [
        _REGISTRATION_REQUEST,
        {
            "type": "object",
            "required": [
                "client_id",
                "client_id_issued_at",
                "registration_client_uri",
                "token_endpoint_auth_method",
                "grant_types",
            ],
            "properties": {
                "client_id": {"type": "string"},
                "client_id_issued_at": {"type": "integer"},
                "client_secret": {
                    "type": "string",
                    "description": "Only in the answer to the registration, for secret methods.",
                },
                "client_secret_expires_at": {"type": "integer", "const": 0},
                "registration_access_token": {
                    "type": "string",
                    "description": "Only in the answer to the registration (RFC 7592 §3).",
                },
                "registration_client_uri": {"type": "string"},
            },
        },
    ]
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input",
        401: "No valid credential (WWW-Authenticate says how)",
        403: "The user's role does not allow this (a client certificate needs the admin role)",
        404: "Not found",
        409: "Conflicts with what exists",
    }
    return {str(code): _json(_ref("Error"), text[code]) for code in (401, 403, *codes)}


def _op(
    summary: str,
    ok: dict[str, Any],
    *codes: int,
    status: int = 200,
    body: dict[str, Any] | None = None,
    params: list[str] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {str(status): ok, **_errors(*codes)},
        "security": [{"basic": []}, {"mutualTLS": [], "userName": []}],
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        operation["responses"].setdefault("400", _json(_ref("Error"), "Invalid input"))

    if params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params
        ]
    return operation


_NO_CONTENT = {"description": "Done"}
_PINNED = {
    "type": "object",
    "required": ["reloading", "pinned"],
    "properties": {
        "reloading": {"type": "boolean"},
        "pinned": {"type": "array", "items": {"type": "string"}, "description": "The digests newly pinned"},
    },
}


def _unchanged(operation: dict[str, Any]) -> dict[str, Any]:
    """A pin operation: 200 when everything named was pinned already (nothing reloads)."""
    operation["responses"]["200"] = _json(_PINNED, "Pinned already; nothing changed")
    return operation


#: RFC 6750 §3: a refused bearer token (initial or registration access token) is answered
#: 401 with a challenge.
_BEARER_REFUSED = {
    "description": "No valid initial or registration access token (RFC 6750 §3)",
    "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": _ERROR}},
}


def _registration(
    summary: str,
    status: int,
    ok: dict[str, Any],
    security: list[dict[str, Any]],
    *,
    body: bool = False,
    conflict: bool = False,
) -> dict[str, Any]:
    """An operation of dynamic registration: authenticated by a bearer token, not as /api/.
    *conflict*: it may be 409, when the client changed meanwhile (``admin.clients``)."""
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": ["registration"],
        "security": security,
        "responses": {
            str(status): ok,
            "401": _BEARER_REFUSED,
            "404": _json(_ref("Error"), "Dynamic registration is disabled (authenticators.xml)"),
        },
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref("RegistrationRequest")}},
        }
        operation["responses"]["400"] = _json(
            _ref("Error"),
            "invalid_client_metadata or invalid_redirect_uri (RFC 7591 §3.2.2)",
        )
    if conflict:
        operation["responses"]["409"] = _json(
            _ref("Error"), "conflict: an administrator changed the client's secret or certificates meanwhile"
        )
    return operation


@functools.cache
def document() -> dict[str, Any]:
    """The whole document: every path under /api/ with its request and response schemas."""
    client_list = {"type": "array", "items": _ref("Client")}
    revoked = {"type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "integer"}}}
    reloading = {"type": "object", "properties": {"reloading": {"type": "boolean"}}}
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "tokensmith admin API",
            "version": "1",
            "description": "Service providers, users, truststore, signing keys, listeners and"
            " dropins of a tokensmith server. Callers authenticate as conf/authenticators.xml"
            " says: HTTP Basic, or a client certificate with the UserName header. With Basic,"
            " reading needs the reader or admin role and changing needs admin; a client"
            " certificate acts only for a user with the admin role (any other is 403)."
            " Against cross-site request forgery, every POST, PUT, PATCH and DELETE under /api/"
            " must send Content-Type: application/json, also without a body (415 otherwise),"
            " and a request whose Origin header is not the server's own origin is refused (403)."
            " Dynamic client registration (RFC 7591, RFC 7592) is described here too; it is"
            " authenticated by bearer tokens instead.",
        },
        "paths": {
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json(_OBJ)},
                }
            },
            "/api/clients": {
                "get": _op("List service providers", _json(client_list)),
                "post": _op(
                    "Register a service provider from its RFC 7591 metadata",
                    _json(_ref("Client"), "Created; client_secret is shown only here"),
                    status=201,
                    body=_ref("ClientMetadata"),
                ),
            },
            "/api/clients/{client_id}": {
                "get": _op("Show a service provider", _json(_ref("Client")), 404, params=["client_id"]),
                "patch": _op(
                    "Change the members given (null removes one)",
                    _json(_ref("Client")),
                    404,
                    409,
                    body=_ref("ClientMetadata"),
                    params=["client_id"],
                ),
                "put": _op(
                    "Replace the metadata",
                    _json(_ref("Client")),
                    404,
                    409,
                    body=_ref("ClientMetadata"),
                    params=["client_id"],
                ),
                "delete": _op(
                    "Remove; its tokens are revoked", _NO_CONTENT, 404, status=204, params=["client_id"]
                ),
            },
            "/api/clients/{client_id}/certificates": {
                "post": _op(
                    "Register a certificate (PEM)",
                    _json(_ref("Client")),
                    404,
                    409,
                    status=201,
                    body={
                        "type": "object",
                        "required": ["certificate"],
                        "properties": {"certificate": {"type": "string"}},
                    },
                    params=["client_id"],
                )
            },
            "/api/clients/{client_id}/certificates/{sha256}": {
                "delete": _op(
                    "Unregister a certificate; tokens bound to it are revoked",
                    _json(_ref("Client")),
                    404,
                    400,
                    409,
                    params=["client_id", "sha256"],
                )
            },
            "/api/clients/{client_id}/secret": {
                "post": _op(
                    "Give the client a new secret, shown once",
                    _json(_ref("Client")),
                    404,
                    409,
                    params=["client_id"],
                )
            },
            "/api/clients/{client_id}/revoke-tokens": {
                "post": _op("Revoke every token of the client", _json(revoked), 404, params=["client_id"])
            },
            "/api/users": {
                "get": _op("List users", _json({"type": "array", "items": _ref("User")})),
                "post": _op(
                    "Add a user",
                    _json(_ref("User")),
                    409,
                    status=201,
                    body={
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            "username": {"type": "string", "pattern": "^[^/]+$"},
                            "password": {"type": "string", "minLength": 8},
                            "role": {"enum": ["admin", "reader", None]},
                        },
                    },
                ),
            },
            "/api/users/{username}": {
                "get": _op("Show a user", _json(_ref("User")), 404, params=["username"]),
                "patch": _op(
                    "Change a user's role or password (either ends their console sessions; a password also their sign-in sessions)",
                    _json(_ref("User")),
                    404,
                    body={
                        "type": "object",
                        "minProperties": 1,
                        "properties": {
                            "role": {"enum": ["admin", "reader", None]},
                            "password": {"type": "string", "minLength": 8},
                        },
                    },
                    params=["username"],
                ),
                "delete": _op(
                    "Remove a user; their tokens are revoked",
                    _NO_CONTENT,
                    404,
                    status=204,
                    params=["username"],
                ),
            },
            "/api/users/{username}/revoke-tokens": {
                "post": _op("Revoke every token of the user", _json(revoked), 404, params=["username"])
            },
            "/api/users/{username}/unlock": {
                "post": _op("Clear the user's failed logins", _json(_OBJ), 404, params=["username"])
            },
            "/api/truststore": {
                "get": _op("List trusted CA certificates", _json({"type": "array", "items": _ref("Anchor")})),
                "post": _op(
                    "Trust a CA certificate (PEM)",
                    _json(_ref("Anchor")),
                    409,
                    status=201,
                    body={
                        "type": "object",
                        "required": ["alias", "certificate"],
                        "properties": {"alias": {"type": "string"}, "certificate": {"type": "string"}},
                    },
                ),
            },
            "/api/truststore/{alias}": {
                "delete": _op("Stop trusting a CA", _NO_CONTENT, 404, 400, status=204, params=["alias"])
            },
            "/api/signing-keys": {
                "get": _op(
                    "List the JWT signing keys", _json({"type": "array", "items": _ref("SigningKey")})
                ),
                "post": _op(
                    "Rotate: a new active key",
                    _json(_ref("SigningKey")),
                    status=201,
                    body={"type": "object", "properties": {"algorithm": {"type": "string"}}},
                ),
            },
            "/api/signing-keys/{kid}": {
                "delete": _op("Retire a key", _NO_CONTENT, 404, 400, status=204, params=["kid"])
            },
            "/api/listeners": {
                "get": _op(
                    "The listeners in calling order", _json({"type": "array", "items": _ref("Listener")})
                )
            },
            "/api/listeners/{type}/{name}": {
                "patch": _op(
                    "Enable, disable or move a listener (rewrites identity.xml, reloads every worker)",
                    _json(reloading, "Accepted; the workers reload"),
                    404,
                    status=202,
                    body={
                        "type": "object",
                        "properties": {"enabled": {"type": "boolean"}, "orderId": {"type": "integer"}},
                    },
                    params=["type", "name"],
                )
            },
            "/api/listeners/order": {
                "put": _op(
                    "Order the listeners (type/name, first called first)",
                    _json(reloading, "Accepted; the workers reload"),
                    404,
                    status=202,
                    body={
                        "type": "object",
                        "required": ["order"],
                        "properties": {"order": {"type": "array", "items": {"type": "string"}}},
                    },
                )
            },
            "/api/dropins": {
                "get": _op(
                    "The wheels in dropins/, their pins and the listeners they provide",
                    _json({"type": "object", "required": ["pinning", "wheels"]}),
                    409,
                )
            },
            "/api/dropins/pins": {
                "post": _unchanged(
                    _op(
                        "Pin several wheels by SHA-256 in identity.xml (<Dropins><AllowedWheel>) and"
                        " reload every worker. Pinning turns on with the first pin; then every wheel"
                        " in dropins/ must be pinned, so turning it on takes all their digests at once",
                        _json(_PINNED, "Accepted; the workers reload"),
                        409,
                        status=202,
                        body={
                            "type": "object",
                            "required": ["sha256"],
                            "properties": {"sha256": {"type": "array", "items": {"type": "string"}}},
                        },
                    )
                ),
            },
            "/api/dropins/{sha256}/pin": {
                "put": _unchanged(
                    _op(
                        "Pin one wheel by SHA-256 (refused if a wheel in dropins/ would be left"
                        " unpinned); reloads every worker",
                        _json(_PINNED, "Accepted; the workers reload"),
                        400,
                        409,
                        status=202,
                        params=["sha256"],
                    )
                ),
                "delete": _op(
                    "Remove a pin from identity.xml (refused while its wheel is in dropins/, or"
                    " when an AllowedWheelsFile holds it); reloads every worker",
                    _json(reloading, "Accepted; the workers reload"),
                    400,
                    404,
                    409,
                    status=202,
                    params=["sha256"],
                ),
            },
            "/api/registration/initial-access-tokens": {
                "post": _op(
                    "Issue an RFC 7591 initial access token, shown once",
                    _json(
                        {
                            "type": "object",
                            "required": ["initial_access_token", "expires_at"],
                            "properties": {
                                "initial_access_token": {"type": "string"},
                                "expires_at": {"type": "integer"},
                            },
                        }
                    ),
                    status=201,
                )
            },
            "/oauth2/register": {
                "post": _registration(
                    "RFC 7591 §3.1: a client registers itself (as <DynamicClientRegistration mode>"
                    " allows: open, or with an initial access token an admin issued), for no scope"
                    " but those its scopes attribute lists",
                    201,
                    _json(_ref("RegisteredClient"), "Registered; the secret and token are shown only here"),
                    [{"initialAccessToken": []}, {}],
                    body=True,
                )
            },
            "/oauth2/register/{client_id}": {
                "parameters": [
                    {"name": "client_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "get": _registration(
                    "RFC 7592 §2.1: read the client's registration",
                    200,
                    _json(_ref("RegisteredClient")),
                    [{"registrationAccessToken": []}],
                ),
                "put": _registration(
                    "RFC 7592 §2.2: replace the client's metadata (client_id in the body must be"
                    " the client's; members left out are removed)",
                    200,
                    _json(_ref("RegisteredClient")),
                    [{"registrationAccessToken": []}],
                    body=True,
                    conflict=True,
                ),
                "delete": _registration(
                    "RFC 7592 §2.3: remove the client; its tokens are revoked",
                    204,
                    _NO_CONTENT,
                    [{"registrationAccessToken": []}],
                ),
            },
            "/api/audit": {
                "get": {
                    **_op(
                        "The audit log, newest first", _json({"type": "array", "items": _ref("AuditEntry")})
                    ),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                        },
                    ],
                }
            },
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "mutualTLS": {"type": "mutualTLS"},
                "userName": {"type": "apiKey", "in": "header", "name": "UserName"},
                "initialAccessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RFC 7591 §3: an initial access token from"
                    " POST /api/registration/initial-access-tokens; each registers one client.",
                },
                "registrationAccessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RFC 7592 §3: the client's registration access token.",
                },
            },
            "schemas": {
                "Error": _ERROR,
                "Certificate": _CERT,
                "Client": _CLIENT,
                "ClientMetadata": _METADATA,
                "User": _USER,
                "Anchor": _ANCHOR,
                "SigningKey": _KEY,
                "Listener": _LISTENER,
                "AuditEntry": _AUDIT,
                "RegistrationRequest": _REGISTRATION_REQUEST,
                "RegisteredClient": _REGISTERED,
            },
        },
    }
    for operations in spec["paths"].values():
        for method, operation in operations.items():
            if method in ("post", "put", "patch", "delete"):
                _forgery_answers(operation)
    return spec


def _forgery_answers(operation: dict[str, Any]) -> None:
    """What a state-changing operation answers a request a cross-site page could have sent
    (``app/admin.forgery_refusal``)."""
    operation["responses"]["403"] = _json(
        _ref("Error"), "The user's role does not allow this, or the request's Origin is another site's"
    )
    operation["responses"]["415"] = _json(
        _ref("Error"), "Not sent with Content-Type: application/json (required also without a body)"
    )

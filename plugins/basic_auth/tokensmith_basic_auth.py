"""client_secret_basic: the client authenticates with HTTP Basic (RFC 6749 §2.3.1).

"The client identifier is encoded using the application/x-www-form-urlencoded encoding
algorithm ..., and the encoded value is used as the username; the client password is encoded
using the same algorithm and used as the password."
"""

from __future__ import annotations

import base64
from urllib.parse import unquote_plus

from tokensmith import AuthenticatedClient, ClientAuthRequest, InvalidClientError, hookimpl

METHOD = "client_secret_basic"


@hookimpl
def listener_default_order() -> int:
    return 100


@hookimpl
def client_auth_methods() -> list[str]:
    return [METHOD]


@hookimpl
async def authenticate_client(request: ClientAuthRequest) -> AuthenticatedClient | None:
    """Engage when the request has ``Authorization: Basic``; otherwise it is not ours."""
    header = request.authorization
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        client_id, colon, secret = decoded.partition(":")
        client_id = unquote_plus(client_id, errors="strict")
        secret = unquote_plus(secret, errors="strict")
    except ValueError:  # binascii.Error, non-ASCII input, UnicodeDecodeError
        raise InvalidClientError(
            "malformed Basic credentials", reason="malformed_basic_credentials"
        ) from None
    if not colon or not client_id:
        raise InvalidClientError("malformed Basic credentials", reason="malformed_basic_credentials")
    body_client_id = request.form.get("client_id")
    if body_client_id is not None and body_client_id != client_id:
        raise InvalidClientError(
            "client_id in the body differs from the Basic credentials", reason="client_id_mismatch"
        )
    return AuthenticatedClient(await request.check_secret(client_id, secret), METHOD)

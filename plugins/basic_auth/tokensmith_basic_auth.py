"""client_secret_basic: the client authenticates with HTTP Basic (RFC 6749 §2.3.1).

"The client identifier is encoded using the application/x-www-form-urlencoded encoding
algorithm ..., and the encoded value is used as the username; the client password is encoded
using the same algorithm and used as the password."
"""

from __future__ import annotations

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
    try:
        credentials = request.basic_credentials()
    except ValueError:
        raise InvalidClientError(
            "malformed Basic credentials", reason="malformed_basic_credentials"
        ) from None
    if credentials is None:
        return None
    client_id, secret = credentials
    body_client_id = request.form.get("client_id")
    if body_client_id is not None and body_client_id != client_id:
        raise InvalidClientError(
            "client_id in the body differs from the Basic credentials", reason="client_id_mismatch"
        )
    return AuthenticatedClient(await request.check_secret(client_id, secret), METHOD)

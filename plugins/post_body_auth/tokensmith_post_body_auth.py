"""client_secret_post: client_id and client_secret in the request body (RFC 6749 §2.3.1).

"Including the client credentials in the request-body using the two parameters is NOT
RECOMMENDED and SHOULD be limited to clients unable to directly utilize the HTTP Basic
authentication scheme." It is still what many clients do, and WSO2 accepts it too.
"""

from __future__ import annotations

from tokensmith import AuthenticatedClient, ClientAuthRequest, InvalidClientError, hookimpl

METHOD = "client_secret_post"


@hookimpl
def listener_default_order() -> int:
    return 110


@hookimpl
def client_auth_methods() -> list[str]:
    return [METHOD]


@hookimpl
async def authenticate_client(request: ClientAuthRequest) -> AuthenticatedClient | None:
    """Engage when the body carries ``client_secret``; a bare client_id is not ours."""
    secret = request.form.get("client_secret")
    if secret is None:
        return None
    client_id = request.form.get("client_id")
    if client_id is None:
        raise InvalidClientError(
            "client_secret was sent without client_id", reason="secret_without_client_id"
        )
    return AuthenticatedClient(await request.check_secret(client_id, secret), METHOD)
